//! The `wshub` binary: parse flags, set up logging, run the reactor until a signal.

use clap::Parser;

use wshub::config::Config;
use wshub::server::Server;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = Config::parse();
    wshub::sys::raise_open_file_limit();
    let server = match Server::bind(&config, true) {
        Ok(server) => server,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            log::error!("{e}");
            std::process::exit(2);
        }
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.listen);
            std::process::exit(1);
        }
    };
    if let Err(e) = server.run() {
        log::error!("reactor failed: {e}");
        std::process::exit(1);
    }
}
