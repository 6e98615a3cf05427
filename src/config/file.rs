//! The TOML config file: the flags' own names as keys, turned into arguments for clap.
//!
//! The rule that maps a key to a flag is the whole contract, so it is short:
//! * a top-level key is the long flag of the same name: `max-message-size = 1048576` is
//!   `--max-message-size 1048576`;
//! * a key inside `[section]` is `section-key`: `[tls] cert = "..."` is `--tls-cert`, `[jwt]
//!   secret` is `--jwt-secret` (deeper tables add more prefixes the same way). Writing
//!   `tls-cert = "..."` at the top level is the same setting;
//! * `true` sets a switch (`echo = true` is `--echo`), `false` leaves it off;
//! * an array gives a repeatable flag several values (`allowed-origin = ["https://a", "https://b"]`);
//! * a flag named after its section is `url` in it: `[redis] url = "redis://..."` is `--redis`
//!   ([`ALIASES`]; a TOML file cannot hold both `redis = ...` and a `[redis]` table);
//! * any other key is an error naming it and the file, with the flag it probably meant.
//!
//! Nothing here knows a single flag: the names come from clap's `Command`, so a flag added
//! tomorrow is a file key tomorrow.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// File keys (flattened) that name a flag of another name.
pub const ALIASES: &[(&str, &str)] = &[("redis-url", "redis")];

/// Flags that make no sense in the file.
const NOT_FILE_KEYS: &[&str] = &["config", "help", "version"];

/// A parsed file: keys flattened to flag names, in file order. `Debug` masks secrets.
#[derive(Debug)]
pub struct FileSettings {
    path: PathBuf,
    entries: Vec<Entry>,
}

struct Entry {
    /// As written, dotted for sections: `tls.cert`.
    key: String,
    /// The flag it names: `tls-cert`.
    flag: String,
    value: toml::Value,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match &self.value {
            toml::Value::String(v) => super::show::masked(&self.flag, v),
            // Not a string, so not a secret (every secret flag takes text).
            other => format!("{other:?}"),
        };
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("flag", &self.flag)
            .field("value", &value)
            .finish()
    }
}

/// The file settings that took effect. `Debug` masks secrets.
#[derive(Default)]
pub struct Applied {
    pub path: PathBuf,
    /// Arguments to put before the command line's own.
    pub args: Vec<String>,
    /// `(argument id, file key)` for each setting taken from the file.
    pub used: Vec<(String, String)>,
    /// `(argument id, file key)` for file settings a flag or variable overrode.
    pub overridden: Vec<(String, String)>,
}

impl fmt::Debug for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each argument is `--flag=value` (see `to_args`).
        let args: Vec<String> = self
            .args
            .iter()
            .map(|arg| match arg.strip_prefix("--").and_then(|a| a.split_once('=')) {
                Some((flag, value)) => format!("--{flag}={}", super::show::masked(flag, value)),
                None => arg.clone(),
            })
            .collect();
        f.debug_struct("Applied")
            .field("path", &self.path)
            .field("args", &args)
            .field("used", &self.used)
            .field("overridden", &self.overridden)
            .finish()
    }
}

impl Applied {
    /// The file key that supplied argument `id`, if one did.
    pub fn key_for(&self, id: &str) -> Option<&str> {
        self.used.iter().find(|(i, _)| i == id).map(|(_, k)| k.as_str())
    }
}

/// Why the file was refused. Each names the file and, where there is one, the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileError {
    Unreadable {
        path: PathBuf,
        error: String,
    },
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    UnknownKey {
        path: PathBuf,
        key: String,
        hint: Option<String>,
    },
    /// An array for a flag that takes one value.
    NotRepeatable {
        path: PathBuf,
        key: String,
    },
    /// A value of a kind no flag takes (a date, a table inside an array, a non-boolean switch).
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    /// The flag's own parser refused the value.
    BadValue {
        path: PathBuf,
        key: String,
        message: String,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Unreadable { path, error } => {
                write!(f, "{}: cannot read config file: {error}", path.display())
            }
            FileError::Syntax { path, line, message } => {
                write!(f, "{}:{line}: not valid TOML: {message}", path.display())
            }
            FileError::UnknownKey { path, key, hint } => {
                write!(f, "{}: unknown key `{key}`", path.display())?;
                match hint {
                    Some(h) => write!(f, " (did you mean `{h}`?)"),
                    None => write!(f, " (keys are the long flag names; see wshub --help)"),
                }
            }
            FileError::NotRepeatable { path, key } => {
                write!(f, "{}: key `{key}` takes one value, not a list", path.display())
            }
            FileError::WrongType { path, key, expected } => {
                write!(f, "{}: key `{key}` must be {expected}", path.display())
            }
            FileError::BadValue { path, key, message } => {
                write!(f, "{}: key `{key}`: {message}", path.display())
            }
        }
    }
}

/// Reads and parses `path` (no flag lookups yet).
pub fn read(path: &Path) -> Result<FileSettings, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::Unreadable { path: path.to_owned(), error: e.to_string() })?;
    parse(path, &text)
}

/// Parses file text; `path` is only for messages.
pub fn parse(path: &Path, text: &str) -> Result<FileSettings, FileError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        FileError::Syntax { path: path.to_owned(), line, message: e.message().trim().to_owned() }
    })?;
    let mut entries = Vec::new();
    flatten(&mut entries, "", "", table);
    Ok(FileSettings { path: path.to_owned(), entries })
}

fn flatten(out: &mut Vec<Entry>, key_prefix: &str, flag_prefix: &str, table: toml::Table) {
    for (k, v) in table {
        let key = format!("{key_prefix}{k}");
        let mut flag = format!("{flag_prefix}{k}");
        if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == flag) {
            flag = (*to).to_owned();
        }
        match v {
            toml::Value::Table(inner) => flatten(out, &format!("{key}."), &format!("{flag}-"), inner),
            value => out.push(Entry { key, flag, value }),
        }
    }
}

impl FileSettings {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks every key against `cmd`, parses every value with its flag's own parser, and
    /// returns the arguments for the settings `first` (the command line and environment alone)
    /// did not already give. Reports every problem, not just the first.
    pub fn apply(&self, cmd: &Command, first: &ArgMatches) -> Result<Applied, Vec<FileError>> {
        let mut errors = Vec::new();
        let mut applied = Applied { path: self.path.clone(), ..Applied::default() };
        for entry in &self.entries {
            let key = || entry.key.clone();
            let path = || self.path.clone();
            let Some(arg) = cmd.get_arguments().find(|a| {
                a.get_long() == Some(entry.flag.as_str()) && !NOT_FILE_KEYS.contains(&entry.flag.as_str())
            }) else {
                errors.push(FileError::UnknownKey { path: path(), key: key(), hint: hint(cmd, &entry.flag) });
                continue;
            };
            let flag = format!("--{}", entry.flag);
            let args = match to_args(&flag, arg.get_action(), &entry.value) {
                Ok(args) => args,
                Err(e) => {
                    errors.push(match e {
                        Unfit::NotRepeatable => FileError::NotRepeatable { path: path(), key: key() },
                        Unfit::WrongType(expected) => {
                            FileError::WrongType { path: path(), key: key(), expected }
                        }
                    });
                    continue;
                }
            };
            // Parse the value alone so a bad one is blamed on its key, not on a flag the user
            // never typed. Alone, a flag that needs another (`--tls-cert` needs `--tls-key`)
            // misses it: that is for the whole parse to judge, not this value.
            let alone = std::iter::once("wshub".to_owned()).chain(args.iter().cloned());
            let refused = cmd.clone().try_get_matches_from(alone).err();
            if let Some(e) = refused.filter(|e| e.kind() != clap::error::ErrorKind::MissingRequiredArgument) {
                errors.push(FileError::BadValue { path: path(), key: key(), message: clap_message(&e) });
                continue;
            }
            let id = arg.get_id().as_str().to_owned();
            let outranked = matches!(
                first.value_source(&id),
                Some(ValueSource::CommandLine) | Some(ValueSource::EnvVariable)
            );
            if outranked {
                applied.overridden.push((id, key()));
            } else {
                applied.args.extend(args);
                applied.used.push((id, key()));
            }
        }
        if errors.is_empty() {
            Ok(applied)
        } else {
            Err(errors)
        }
    }
}

enum Unfit {
    NotRepeatable,
    WrongType(&'static str),
}

fn to_args(flag: &str, action: &ArgAction, value: &toml::Value) -> Result<Vec<String>, Unfit> {
    let switch = matches!(action, ArgAction::SetTrue);
    match value {
        toml::Value::Boolean(b) if switch => Ok(if *b { vec![flag.to_owned()] } else { Vec::new() }),
        _ if switch => Err(Unfit::WrongType("true or false")),
        toml::Value::Array(items) => {
            if !matches!(action, ArgAction::Append) {
                return Err(Unfit::NotRepeatable);
            }
            items.iter().map(|v| scalar(v).map(|s| format!("{flag}={s}"))).collect()
        }
        v => Ok(vec![format!("{flag}={}", scalar(v)?)]),
    }
}

fn scalar(value: &toml::Value) -> Result<String, Unfit> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(Unfit::WrongType("a string, a number or a boolean")),
    }
}

/// A flag close to an unknown key: underscores for dashes, or a section written flat.
fn hint(cmd: &Command, flag: &str) -> Option<String> {
    let dashed = flag.replace(['_', '.'], "-");
    cmd.get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_FILE_KEYS.contains(l))
        .find(|l| *l == dashed || *l == format!("{dashed}s") || format!("{l}s") == dashed)
        .map(str::to_owned)
}

/// clap's message without its `error: ` prefix and usage footer.
pub fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use clap::CommandFactory;

    fn apply(text: &str, cli: &[&str]) -> Result<Applied, Vec<FileError>> {
        let cmd = Config::command();
        let first = cmd.clone().try_get_matches_from(cli).unwrap();
        parse(Path::new("t.toml"), text).map_err(|e| vec![e])?.apply(&cmd, &first)
    }

    #[test]
    fn keys_become_flags_and_sections_prefix_them() {
        let a = apply(
            "max-message-size = 1000\necho = true\nallow-client-broadcast = false\nping-interval = 2.5\n\
             allowed-origin = [\"https://a.example\", \"https://b.example\"]\n[max]\nsubscriptions = 3\n\
             [redis]\nurl = \"redis://h:6379\"\nprefix = \"p:\"\n",
            &["wshub"],
        )
        .unwrap();
        assert_eq!(
            a.args,
            [
                "--max-message-size=1000",
                "--echo",
                "--ping-interval=2.5",
                "--allowed-origin=https://a.example",
                "--allowed-origin=https://b.example",
                "--max-subscriptions=3",
                "--redis=redis://h:6379",
                "--redis-prefix=p:"
            ]
        );
        assert_eq!(a.key_for("max_subscriptions"), Some("max.subscriptions"));
    }

    #[test]
    fn command_line_outranks_the_file() {
        let a = apply("send-queue = 9\nsubprotocol = [\"x\"]\n", &["wshub", "--send-queue", "3"]).unwrap();
        assert_eq!(a.args, ["--subprotocol=x"]);
        assert_eq!(a.overridden, [("send_queue".to_owned(), "send-queue".to_owned())]);
    }

    #[test]
    fn every_bad_key_is_reported() {
        let errors = apply(
            "max_message_size = 1\nbogus = 2\npath = [\"/a\"]\necho = \"yes\"\nsend-queue = \"many\"\nconfig = \"x\"\n",
            &["wshub"],
        )
        .unwrap_err();
        let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 6, "{lines:#?}");
        assert_eq!(lines[0], "t.toml: unknown key `max_message_size` (did you mean `max-message-size`?)");
        assert!(
            lines[1].starts_with("t.toml: unknown key `bogus` (keys are the long flag names"),
            "{}",
            lines[1]
        );
        assert_eq!(lines[2], "t.toml: key `path` takes one value, not a list");
        assert_eq!(lines[3], "t.toml: key `echo` must be true or false");
        assert!(lines[4].starts_with("t.toml: key `send-queue`: invalid value 'many'"), "{}", lines[4]);
        assert!(lines[5].starts_with("t.toml: unknown key `config`"), "{}", lines[5]);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = parse(Path::new("t.toml"), "path = \"/ws\"\nsend-queue = = 3\n").unwrap_err();
        assert!(matches!(e, FileError::Syntax { line: 2, .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
