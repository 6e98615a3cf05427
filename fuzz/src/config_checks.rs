//! Checks for the config file path: TOML text through `config::file::parse`, `apply` (every key
//! checked against the flags, every value parsed by its flag's parser), the merged command line
//! and `validate` with its messages, as `config::load` does minus the file read. Whatever the
//! file says, nothing panics and a syntax error names a line within the text.

use std::path::Path;

use clap::FromArgMatches;
use wshub::config::{self, file, validate, Config};

pub fn check_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.toml");
    let settings = match file::parse(path, text) {
        Ok(s) => s,
        Err(file::FileError::Syntax { line, .. }) => {
            assert!(line <= text.matches('\n').count() + 1, "syntax error past the last line");
            return;
        }
        Err(_) => return,
    };
    let cmd = config::command();
    let first = cmd.clone().try_get_matches_from(["wshub"]).expect("no arguments parse");
    let Ok(applied) = settings.apply(&cmd, &first) else { return };
    let mut args = vec!["wshub".to_string()];
    args.extend(applied.args.iter().cloned());
    // Every file value was parsed alone by apply; together they may still clash (clap's call).
    let Ok(matches) = config::command().try_get_matches_from(&args) else { return };
    let Ok(mut cfg) = Config::from_arg_matches(&matches) else { return };
    let outcome = validate::validate(&mut cfg, &cmd, &matches, 20_000);
    for p in &outcome.problems {
        let _ = validate::describe(&cmd, &matches, Some(&applied), p);
    }
}
