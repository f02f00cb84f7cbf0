//! `webhook-normalizer config`: the effective settings, secrets masked.

use std::io::{self, Write};
use std::process::ExitCode;

use webhook_normalizer::config::Settings;

use crate::common::{ConfigFile, configuration_error, report, written_to_stdout};

/// The arguments of `config` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct ConfigArgs {
    /// Print only this setting (e.g. `amqp.url`): a string as it is, anything else
    /// as TOML; a key that names no setting exits 2.
    #[arg(long, value_name = "KEY")]
    get: Option<String>,
    #[command(flatten)]
    config: ConfigFile,
}

/// Prints every setting, or the one `--get` names: the settings as a table, secrets
/// masked, read without installing logging.
pub(crate) fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    let ConfigArgs { get, config } = args;
    let table = match Settings::masked_table(config.path.as_deref()) {
        Ok(table) => table,
        Err(e) => return Ok(configuration_error(&e)),
    };
    let text = match get {
        None => toml::to_string(&table)?,
        Some(key) => {
            let mut value = Some(&toml::Value::Table(table.clone()));
            for part in key.split('.') {
                value = value.and_then(|v| v.get(part));
            }
            match value {
                Some(toml::Value::String(s)) => format!("{s}\n"),
                Some(toml::Value::Table(t)) => toml::to_string(t)?,
                Some(other) => format!("{other}\n"),
                None => {
                    report(format_args!("error: no setting named {key:?}"));
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    written_to_stdout(io::stdout().lock().write_all(text.as_bytes()))
}
