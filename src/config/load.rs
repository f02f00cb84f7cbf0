//! Loading the settings: the layers (the compiled-in defaults, a file, the
//! environment), secrets read from their files, and figment's errors told with where the
//! bad value came from. Checking them is [`super::validate`]'s.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};

use super::{AmqpUrl, ConfigError, Settings};

/// The defaults file, which is also the configuration reference.
pub const DEFAULTS: &str = include_str!("../../config/default.toml");

/// The environment variable prefix; `__` separates section and key.
pub const ENV_PREFIX: &str = "NORMALIZER__";

/// The text of a secret's file: UTF-8, its trailing line ending (`\n` or `\r\n`) taken
/// off. An error names the setting and the path, never what the file holds.
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let fail = |problem: String| ConfigError::SecretFile {
        key: key.to_owned(),
        path: path.display().to_string(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text".into()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(fail("is empty".into()));
    }
    Ok(text.to_owned())
}

/// A secrets file's entries: one a line, blank lines skipped.
fn read_secret_lines(key: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = read_secret_file(key, path)?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(ConfigError::SecretFile {
            key: key.to_owned(),
            path: path.display().to_string(),
            problem: "holds only blank lines".into(),
        });
    }
    Ok(lines)
}

/// `key` and `key_file` both set.
fn both(key: String) -> ConfigError {
    ConfigError::SecretFile {
        problem: format!("set {key} or {key}_file, not both"),
        path: String::from("(both set)"),
        key: format!("{key}_file"),
    }
}

impl Settings {
    /// Loads the layered settings and validates them.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// As [`Settings::load`], with the environment provider given (tests pass their own).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Settings, ConfigError> {
        let mut settings: Settings = layered(file, env)?
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.read_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The compiled-in defaults alone, validated: no file, and not the process
    /// environment, which the configuration tests change meanwhile (in a `figment::Jail`).
    #[cfg(test)]
    pub(crate) fn defaults() -> Settings {
        let settings: Settings = Figment::from(Toml::string(DEFAULTS))
            .extract()
            .expect("the defaults deserialize");
        settings.validate().expect("the defaults are valid");
        settings
    }

    /// The effective settings (defaults, `file`, environment), validated, as a TOML
    /// table with every secret masked: `amqp.url`'s passwords as `****`, and every
    /// string under `signatures` and `ingest.access` (a basic-auth pair keeps its user).
    /// What `webhook-normalizer config` prints.
    pub fn masked_table(file: Option<&Path>) -> Result<toml::Table, ConfigError> {
        Settings::masked_table_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// As [`Settings::masked_table`], with the environment provider given.
    pub fn masked_table_from(file: Option<&Path>, env: Env) -> Result<toml::Table, ConfigError> {
        let settings = Settings::load_from(file, env.clone())?;
        let value: figment::value::Value = layered(file, env)?
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        let mut table = match toml::Value::try_from(value) {
            Ok(toml::Value::Table(table)) => table,
            _ => return Err(ConfigError::Invalid("settings are not a table".into())),
        };
        if let Some(toml::Value::Table(amqp)) = table.get_mut("amqp") {
            amqp.insert(
                "url".into(),
                toml::Value::String(settings.amqp.url.masked()),
            );
        }
        if let Some(signatures) = table.get_mut("signatures") {
            mask_strings(signatures, false);
        }
        if let Some(toml::Value::Table(ingest)) = table.get_mut("ingest")
            && let Some(access) = ingest.get_mut("access")
        {
            mask_strings(access, true);
        }
        Ok(table)
    }
}

/// Replaces every string in `value` by `****`; `user:password` pairs keep the user when
/// `keep_user`.
fn mask_strings(value: &mut toml::Value, keep_user: bool) {
    match value {
        toml::Value::String(s) => {
            *s = match s.split_once(':') {
                Some((user, _)) if keep_user => format!("{user}:****"),
                _ => "****".into(),
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| mask_strings(v, keep_user)),
        toml::Value::Table(table) => table
            .iter_mut()
            .for_each(|(_, v)| mask_strings(v, keep_user)),
        _ => {}
    }
}

/// The layers, last wins: the compiled-in defaults, `file`, the environment.
fn layered(file: Option<&Path>, env: Env) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Toml::string(DEFAULTS));
    if let Some(path) = file {
        if std::fs::metadata(path)
            .map(|m| !m.is_file())
            .unwrap_or(true)
        {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    Ok(figment.merge(env))
}

impl Settings {
    /// Reads every `*_file` secret setting into the setting it stands for. A file and
    /// the value itself both set is refused (which was meant?), except `amqp.url`, which
    /// has a default: `amqp.url_file` replaces it.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        use crate::signatures::Secret;
        if let Some(path) = &self.amqp.url_file {
            self.amqp.url = AmqpUrl::new(read_secret_file("amqp.url_file", path)?.trim());
        }
        let secrets = |lines: Vec<String>| lines.into_iter().map(Secret::new).collect();
        for (vendor, v) in [
            ("entuitive", &mut self.signatures.entuitive),
            ("deel", &mut self.signatures.deel),
        ] {
            let key = format!("signatures.{vendor}.secrets");
            if let Some(path) = &v.secrets_file {
                if !v.secrets.is_empty() {
                    return Err(both(key));
                }
                v.secrets = secrets(read_secret_lines(&format!("{key}_file"), path)?);
            }
            let key = format!("signatures.{vendor}.labels");
            if let Some(path) = &v.labels_file {
                if !v.labels.is_empty() {
                    return Err(both(key));
                }
                let file_key = format!("{key}_file");
                for line in read_secret_lines(&file_key, path)? {
                    let Some((label, secret)) = line.split_once('=') else {
                        return Err(ConfigError::SecretFile {
                            key: file_key,
                            path: path.display().to_string(),
                            problem: "write each line as label=secret".into(),
                        });
                    };
                    v.labels
                        .insert(label.trim().to_owned(), Secret::new(secret));
                }
            }
        }
        for (vendor, v) in self.ingest.access.iter_mut() {
            let key = format!("ingest.access.{vendor}.path_tokens");
            if let Some(path) = &v.path_tokens_file {
                if !v.path_tokens.is_empty() {
                    return Err(both(key));
                }
                v.path_tokens = secrets(read_secret_lines(&format!("{key}_file"), path)?);
            }
            let key = format!("ingest.access.{vendor}.basic");
            if let Some(path) = &v.basic_file {
                if !v.basic.is_empty() {
                    return Err(both(key));
                }
                v.basic = secrets(read_secret_lines(&format!("{key}_file"), path)?);
            }
        }
        Ok(())
    }
}

/// figment's message with the key path, which it already names ("for key
/// `default.input.prefetch`"); its "default." profile prefix is dropped. Where the value
/// came from follows: the file (a TOML syntax error has no key path, only a line) or
/// the environment variable.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let what = e.kind.to_string();
            let what = what.trim_end();
            let origin = match e.metadata.as_ref().map(|m| (m.source.as_ref(), &m.name)) {
                Some((Some(figment::Source::File(file)), _)) => Some(file.display().to_string()),
                Some((_, name)) if name.ends_with("environment variable(s)") && !key.is_empty() => {
                    Some(format!(
                        "{ENV_PREFIX}{}",
                        e.path.join("__").to_ascii_uppercase()
                    ))
                }
                _ => None,
            };
            match (key.is_empty(), origin) {
                (true, Some(origin)) => format!("{origin}: {what}"),
                (true, None) => what.to_owned(),
                (false, Some(origin)) => format!("{key}: {what} (in {origin})"),
                (false, None) => format!("{key}: {what}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use std::path::Path;

    use super::super::{LogFormat, load_env};
    use super::*;
    use crate::normalize::Limits;

    /// `webhook-normalizer config`: the layers merged, and no secret in what it prints.
    #[test]
    fn the_effective_settings_are_printed_with_every_secret_masked() {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "my.toml",
                r#"
[input]
prefetch = 7
[signatures.deel]
secrets = ["deel-secret-aaaaaaaaaaaa"]
labels = { v2 = "deel-label-secret-bbbbbbbb" }
[ingest.access.authenticate]
path_tokens = ["path-token-cccccccccccccc"]
basic = ["gateway:basic-password-dddddddd"]
"#,
            )?;
            jail.set_env(
                "NORMALIZER__AMQP__URL",
                "amqp://team:pa55word@rabbit:5672/team",
            );
            out = Some(Settings::masked_table(Some(Path::new("my.toml"))));
            Ok(())
        });
        let table = out.expect("jail ran").unwrap();
        let text = toml::to_string(&table).unwrap();
        for secret in [
            "pa55word",
            "deel-secret",
            "deel-label",
            "path-token",
            "basic-password",
        ] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
        assert_eq!(
            table["amqp"]["url"].as_str(),
            Some("amqp://team:****@rabbit:5672/team")
        );
        assert_eq!(table["input"]["prefetch"].as_integer(), Some(7));
        assert_eq!(table["input"]["exchange"].as_str(), Some("webhooks.raw"));
        assert_eq!(
            table["ingest"]["access"]["authenticate"]["basic"][0].as_str(),
            Some("gateway:****")
        );
        assert_eq!(
            table["signatures"]["deel"]["labels"]["v2"].as_str(),
            Some("****")
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load_env(&[]).unwrap();
        assert_eq!(s.amqp.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.input.exchange, "webhooks.raw");
        assert_eq!(s.input.queue, "normalizer.raw");
        assert_eq!(s.input.binding_key, "#");
        assert_eq!(s.input.prefetch, 256);
        assert_eq!(s.output.exchange, "events.canonical");
        assert_eq!(s.output.unrouted_exchange, "events.unrouted");
        assert_eq!(s.output.unrouted_queue, "events.unrouted");
        assert_eq!(s.output.unrouted_max_length, 100_000);
        assert_eq!(s.output.unrouted_max_age_secs, 7 * 24 * 3600);
        assert_eq!(s.dead_letter.exchange, "webhooks.dead-letter");
        assert_eq!(s.dead_letter.queue, "normalizer.dead-letter");
        assert_eq!(s.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(s.limits(), Limits::default());
        assert_eq!(s.limits.max_in_flight_bytes, 64 * 1024 * 1024);
        assert_eq!(s.retry.initial_ms, 100);
        assert_eq!(s.retry.max_ms, 5000);
        assert_eq!(s.retry.max_elapsed_secs, 60);
        assert!(!s.input.single_active_consumer);
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn unmapped_types_are_dead_letters_unless_a_vendor_passes_them_through() {
        use crate::canonical::Vendor;
        use crate::vendors::{Unmapped, UnmappedPolicy};
        let s = load_env(&[]).unwrap();
        assert_eq!(s.unmapped, Unmapped::default());
        assert_eq!(s.unmapped.of(Vendor::Deel), UnmappedPolicy::DeadLetter);
        let s = load_env(&[("NORMALIZER__UNMAPPED__DEEL", "passthrough")]).unwrap();
        assert_eq!(s.unmapped.of(Vendor::Deel), UnmappedPolicy::Passthrough);
        assert_eq!(s.unmapped.of(Vendor::Entuitive), UnmappedPolicy::DeadLetter);
        let e = load_env(&[("NORMALIZER__UNMAPPED__DEEL", "pass")]).unwrap_err();
        assert!(e.to_string().contains("unmapped.deel"), "{e}");
        assert!(e.to_string().contains("dead-letter"), "{e}");
        let e = load_env(&[("NORMALIZER__UNMAPPED__ACME", "passthrough")]).unwrap_err();
        assert!(e.to_string().contains("acme"), "{e}");
    }

    #[test]
    fn the_schema_base_is_the_repositorys_unless_set() {
        use crate::canonical::SchemaBase;
        let s = load_env(&[]).unwrap();
        assert_eq!(s.schemas.base_uri, SchemaBase::default());
        let s = load_env(&[(
            "NORMALIZER__SCHEMAS__BASE_URI",
            "https://schemas.example.com/hr/",
        )])
        .unwrap();
        assert_eq!(
            s.schemas.base_uri.data_schema_document(),
            "https://schemas.example.com/hr/event-data.v1.schema.json"
        );
        let e = load_env(&[(
            "NORMALIZER__SCHEMAS__BASE_URI",
            "https://schemas.example.com/hr",
        )])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("schemas.base_uri: "), "{e}");
        assert!(e.contains("NORMALIZER__SCHEMAS__BASE_URI"), "{e}");
    }

    /// A figment error says where the bad value came from: the file (a TOML syntax error
    /// has no key to name) or the environment variable.
    #[test]
    fn errors_name_the_file_or_variable_they_come_from() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("broken.toml", "[amqp\n")?;
            let e = Settings::load(Some(Path::new("broken.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("broken.toml"), "{e}");
            jail.create_file("typo.toml", "[input]\nprefetch = \"many\"\n")?;
            let e = Settings::load(Some(Path::new("typo.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("input.prefetch: "), "{e}");
            assert!(e.contains("typo.toml"), "{e}");
            Ok(())
        });
        let e = load_env(&[("NORMALIZER__INPUT__PREFETCH", "many")]).unwrap_err();
        assert!(e.to_string().starts_with("input.prefetch: "), "{e}");
        assert!(e.to_string().contains("NORMALIZER__INPUT__PREFETCH"), "{e}");
        let e = load_env(&[("NORMALIZER__AMQP__SURPRISE", "1")]).unwrap_err();
        assert!(e.to_string().contains("NORMALIZER__AMQP__SURPRISE"), "{e}");
    }

    #[test]
    fn signature_secrets_come_as_lists_and_are_never_shown() {
        let s = load_env(&[
            (
                "NORMALIZER__SIGNATURES__DEEL__SECRETS",
                r#"["old-s3cret", "new-s3cret"]"#,
            ),
            (
                "NORMALIZER__SIGNATURES__DEEL__LABELS",
                r#"{k1 = "l4bel-s3cret"}"#,
            ),
            (
                "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS",
                r#"["e-s3cret"]"#,
            ),
        ])
        .unwrap();
        assert_eq!(s.signatures.deel.secrets.len(), 2);
        assert!(s.signatures.deel.labels.contains_key("k1"));
        assert_eq!(s.signatures.entuitive.secrets.len(), 1);
        assert!(!format!("{s:?}").contains("s3cret"));
        let e = load_env(&[("NORMALIZER__SIGNATURES__AUTHENTICATE__SECRETS", r#"["x"]"#)])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("signatures.authenticate: Authenticate publishes no signature scheme"),
            "{e}"
        );
        let e = load_env(&[("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"[""]"#)]).unwrap_err();
        assert!(e.to_string().contains("a secret is empty"), "{e}");
    }

    /// Every secret setting can come from a file instead (`*_file`): its trailing line
    /// ending taken off, one secret a line where the setting is a list; the secrets
    /// are never shown, not in `Debug` and not in an error.
    #[test]
    fn secrets_can_come_from_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("url", "amqp://ops:fr0m-a-f1le@rabbit:5672/prod\n")?;
            jail.create_file("deel", "old-s3cret\r\nnew-s3cret\n\n")?;
            jail.create_file("labels", "k1=l4bel=s3cret\n")?;
            jail.create_file("entuitive", "e-s3cret")?;
            jail.create_file("tokens", "t0ken-0123456789abcdef\n")?;
            jail.create_file("basic", "authn:a-long-passw0rd-123\n")?;
            let dir = jail.directory().to_owned();
            let at = |f: &str| dir.join(f).display().to_string();
            jail.set_env("NORMALIZER__AMQP__URL_FILE", at("url"));
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__SECRETS_FILE", at("deel"));
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__LABELS_FILE", at("labels"));
            jail.set_env(
                "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS_FILE",
                at("entuitive"),
            );
            jail.set_env(
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__PATH_TOKENS_FILE",
                at("tokens"),
            );
            jail.set_env(
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__BASIC_FILE",
                at("basic"),
            );
            let s = Settings::load(None).unwrap();
            assert_eq!(
                s.amqp.url.expose(),
                "amqp://ops:fr0m-a-f1le@rabbit:5672/prod"
            );
            let exposed = |list: &[crate::signatures::Secret]| -> Vec<String> {
                list.iter().map(|s| s.expose().to_owned()).collect()
            };
            assert_eq!(
                exposed(&s.signatures.deel.secrets),
                ["old-s3cret", "new-s3cret"]
            );
            assert_eq!(s.signatures.deel.labels["k1"].expose(), "l4bel=s3cret");
            assert_eq!(exposed(&s.signatures.entuitive.secrets), ["e-s3cret"]);
            let access = &s.ingest.access["authenticate"];
            assert_eq!(exposed(&access.path_tokens), ["t0ken-0123456789abcdef"]);
            assert_eq!(exposed(&access.basic), ["authn:a-long-passw0rd-123"]);
            let shown = format!("{s:?}");
            for secret in ["fr0m-a-f1le", "s3cret", "t0ken", "passw0rd"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            Ok(())
        });
    }

    /// A secret's file that cannot be used is named with its setting and path, never its
    /// content; a file and the value both set is refused.
    #[test]
    fn secret_file_errors_name_the_setting_and_the_path() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("empty", "\n")?;
            jail.create_file("blank", "\n  \n\n")?;
            jail.create_file("labels", "no-equals-s3cret\n")?;
            jail.create_file("deel", "s3cret\n")?;
            let dir = jail.directory().to_owned();
            let at = |f: &str| dir.join(f).display().to_string();
            let cases = [
                (
                    "NORMALIZER__AMQP__URL_FILE",
                    at("missing"),
                    format!(
                        "amqp.url_file: {}: cannot be read (No such file",
                        at("missing")
                    ),
                ),
                (
                    "NORMALIZER__AMQP__URL_FILE",
                    at("empty"),
                    format!("amqp.url_file: {}: is empty", at("empty")),
                ),
                (
                    "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS_FILE",
                    at("blank"),
                    format!(
                        "signatures.entuitive.secrets_file: {}: holds only blank lines",
                        at("blank")
                    ),
                ),
                (
                    "NORMALIZER__SIGNATURES__DEEL__LABELS_FILE",
                    at("labels"),
                    format!(
                        "signatures.deel.labels_file: {}: write each line as label=secret",
                        at("labels")
                    ),
                ),
                (
                    "NORMALIZER__INGEST__ACCESS__DEEL__BASIC_FILE",
                    at("missing"),
                    format!(
                        "ingest.access.deel.basic_file: {}: cannot be read",
                        at("missing")
                    ),
                ),
            ];
            for (var, value, want) in cases {
                jail.clear_env();
                jail.set_env(var, &value);
                let e = Settings::load(None).unwrap_err().to_string();
                assert!(e.starts_with(&want), "{e}\nwanted {want}");
                assert!(!e.contains("s3cret"), "{e}");
            }
            jail.clear_env();
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"["inline"]"#);
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__SECRETS_FILE", at("deel"));
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "signatures.deel.secrets_file: (both set): set signatures.deel.secrets or signatures.deel.secrets_file, not both"
                ),
                "{e}"
            );
            // The file's secrets are checked like the setting's.
            jail.clear_env();
            jail.create_file("short", "short\n")?;
            jail.set_env(
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__PATH_TOKENS_FILE",
                at("short"),
            );
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("ingest.access.authenticate.path_tokens"), "{e}");
            assert!(!e.contains("short\n"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn file_overlays_defaults_and_env_overlays_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "normalizer.toml",
                "[input]\nprefetch = 32\nqueue = \"from-file\"\n",
            )?;
            jail.set_env("NORMALIZER__INPUT__QUEUE", "from-env");
            let s = Settings::load(Some(Path::new("normalizer.toml"))).expect("loads");
            assert_eq!(s.input.prefetch, 32);
            assert_eq!(s.input.queue, "from-env");
            assert_eq!(s.input.exchange, "webhooks.raw");
            Ok(())
        });
    }

    /// What the tests that must not see the environment load.
    #[test]
    fn the_defaults_alone_ignore_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("NORMALIZER__INPUT__QUEUE", "from-env");
            assert_eq!(Settings::defaults().input.queue, "normalizer.raw");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let e = Settings::load(Some(Path::new("/nonexistent/normalizer.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::MissingFile(_)), "{e}");
    }
}
