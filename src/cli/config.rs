//! The config file of `vimanad serve` (`--config FILE`, TOML).
//!
//! Every `serve` flag has a key of the same name (`start-timeout = "30s"`,
//! `insecure-registry = ["a:5000"]`). The file fills in what neither the
//! command line nor the environment set, so flags override the file. Keys are
//! checked against `serve`'s own flag definitions and values through the same
//! value parsers clap uses, so the file and the flags can never disagree on
//! what is valid; errors name the file, the line and the key. Owns nothing
//! but that translation: what a setting means stays with its flag.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

/// The flag that names the file; it cannot be set from the file itself.
pub const FLAG: &str = "config";

/// Flags that are not settings: clap's own, hidden internals, the file.
fn is_setting(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !arg.is_hide_set()
        && !matches!(arg.get_id().as_str(), "help" | "version" | FLAG)
}

/// One `key = value` of the file, as flag values, with its line.
struct Entry {
    key: String,
    values: Vec<String>,
}

/// Reads FILE and checks every key and value against `serve`'s flags.
fn load(serve: &Command, path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the config file {}", path.display()))?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table: std::collections::BTreeMap<toml::Spanned<String>, toml::Value> =
        toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(s.start));
            anyhow::anyhow!("{}:{line}: {}", path.display(), e.message().trim_end())
        })?;
    let mut entries = Vec::new();
    for (key, value) in table {
        let line = line_of(key.span().start);
        let key = key.into_inner();
        let at = format!("{}:{line}: {key}", path.display());
        let Some(arg) = serve
            .get_arguments()
            .find(|a| is_setting(a) && a.get_long() == Some(key.as_str()))
        else {
            bail!("{at}: unknown key (every key is a `vimanad serve` flag; `vimanad config default` lists them)");
        };
        let values = flag_values(arg, &value).with_context(|| at.clone())?;
        check_values(serve, &key, &values).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
        entries.push(Entry { key, values });
    }
    Ok(entries)
}

/// A TOML value as the strings the flag would be given.
fn flag_values(arg: &Arg, value: &toml::Value) -> anyhow::Result<Vec<String>> {
    let scalar = |v: &toml::Value| -> anyhow::Result<String> {
        Ok(match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => bail!("expected a string or number, not a {}", other.type_str()),
        })
    };
    let many = matches!(arg.get_action(), ArgAction::Append);
    match value {
        toml::Value::Array(items) if many => items.iter().map(scalar).collect(),
        toml::Value::Array(_) => bail!("takes one value, not an array"),
        v => Ok(vec![scalar(v)?]),
    }
}

/// Runs the values through `serve`'s own parser for that flag alone; a
/// flag it requires (`tls-cert` needs `tls-key`) is checked once the whole
/// file is merged.
fn check_values(serve: &Command, key: &str, values: &[String]) -> Result<(), String> {
    let argv = values.iter().map(|v| format!("--{key}={v}"));
    match serve
        .clone()
        .no_binary_name(true)
        .try_get_matches_from(argv)
    {
        Err(e) if e.kind() != clap::error::ErrorKind::MissingRequiredArgument => {
            Err(clap_message(&e))
        }
        _ => Ok(()),
    }
}

/// clap's message for an error on one line, without its "error: " prefix
/// and the usage that follows.
pub fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    message.join(" ").trim_start_matches("error: ").to_owned()
}

/// The command line with the file's settings added for every flag that the
/// command line and the environment left unset. `matches` are `serve`'s.
pub fn merge(
    serve: &Command,
    matches: &ArgMatches,
    path: &Path,
    mut argv: Vec<OsString>,
) -> anyhow::Result<Vec<OsString>> {
    for entry in load(serve, path)? {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(entry.key.as_str()))
            .expect("load checked the key");
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        for value in entry.values {
            argv.push(format!("--{}={value}", entry.key).into());
        }
    }
    Ok(argv)
}

/// A complete config file: every setting, commented out, with its help and
/// its default.
pub fn default_file(serve: &Command) -> String {
    let mut out = String::from(
        "# vimanad serve configuration (TOML). Every key is a `vimanad serve` flag;\n\
         # flags and environment variables override the file. Uncomment to change.\n",
    );
    for arg in serve.get_arguments().filter(|a| is_setting(a)) {
        let long = arg.get_long().unwrap_or_default();
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in help.lines() {
            out.push_str(&format!("# {line}\n").replace("# \n", "#\n"));
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| toml_value(&v.to_string_lossy()))
            .collect();
        let many = matches!(arg.get_action(), ArgAction::Append);
        match (defaults.as_slice(), many) {
            (_, true) => out.push_str(&format!("# {long} = [{}]\n", defaults.join(", "))),
            ([one], false) => out.push_str(&format!("# {long} = {one}\n")),
            _ => out.push_str(&format!("# {long} =   (no default)\n")),
        }
    }
    out
}

/// How a flag value is best written in TOML: numbers bare, the rest quoted.
fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() || v == "true" || v == "false" {
        v.to_owned()
    } else {
        toml::Value::String(v.to_owned()).to_string()
    }
}

/// `key=value` for every setting `serve` runs with, secrets elided: the one
/// line `serve` logs at start.
pub fn effective(serve: &Command, matches: &ArgMatches) -> String {
    let mut parts = Vec::new();
    for arg in serve.get_arguments().filter(|a| is_setting(a)) {
        let id = arg.get_id().as_str();
        let Ok(Some(raw)) = matches.try_get_raw(id) else {
            continue;
        };
        let values: Vec<String> = if arg.is_hide_env_values_set() {
            vec!["<elided>".into()]
        } else {
            raw.map(|v| v.to_string_lossy().into_owned()).collect()
        };
        parts.push(format!(
            "{}={}",
            arg.get_long().unwrap_or(id),
            values.join(",")
        ));
    }
    parts.join(" ")
}
