//! The `wshub` binary: load and validate the settings, set up logging, run the reactor until a
//! signal. `wshub check-config [FLAGS]` stops after validation and prints the settings.

use wshub::config::{self, Mode};
use wshub::server::Server;

fn main() {
    // The limit is raised first so the connection limit is fitted to what we really have.
    let open_files = wshub::sys::raise_open_file_limit();
    let loaded = config::load(std::env::args_os(), open_files).unwrap_or_else(|e| e.exit());
    wshub::logging::init(loaded.config.log_format);
    for adjustment in &loaded.adjustments {
        log::warn!("{adjustment}");
    }
    if loaded.mode == Mode::Check {
        // The certificate and key are loaded as the server would (PEM, matching pair), so a
        // check that passes is a start that passes.
        if let Some(Err(e)) = loaded.config.tls_files().map(|files| files.load()) {
            eprintln!("wshub: error: {e}");
            std::process::exit(2);
        }
        print!("{}", config::show::render(&loaded));
        return;
    }
    let config = &loaded.config;
    let server = match Server::bind(config, true) {
        Ok(server) => server,
        Err(e) => {
            log::error!("cannot start on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    if let Err(e) = server.run() {
        log::error!("reactor failed: {e}");
        std::process::exit(1);
    }
}
