//! The offline `normalize` and `event-types` commands, run as a user would.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::{RECEIVED_AT, fixtures_dir};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
}

/// The binary as `run` or `topology` would start in production, with no broker to
/// reach (port 1 refuses at once) and the health port free; no `RUST_LOG` of the
/// caller's.
fn worker(command: &str, env: &[(&str, &str)]) -> Command {
    let mut c = bin();
    c.arg(command)
        .env(
            "NORMALIZER__AMQP__URL",
            "amqp://guest:s3cret@127.0.0.1:1/%2f",
        )
        .env("NORMALIZER__HTTP__LISTEN", "127.0.0.1:0")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Runs the command to its end, failing the test (not hanging it) after `within`.
fn finish(mut command: Command, within: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    testkit::output_within(child, within)
}

/// Exit 78 (EX_CONFIG) with one line on stderr naming `key`, no panic, no password.
fn assert_config_error(out: &Output, key: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.starts_with("error: configuration: "), "{err}");
    assert!(err.contains(key), "{key} not named: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// Durations that used to overflow `Duration`/`Instant` arithmetic and panic (exit 101)
/// are refused at start.
#[test]
fn absurd_durations_are_configuration_errors() {
    for (var, key) in [
        (
            "NORMALIZER__SHUTDOWN__DRAIN_TIMEOUT_SECS",
            "shutdown.drain_timeout_secs",
        ),
        ("NORMALIZER__RETRY__MAX_MS", "retry.max_ms"),
        (
            "NORMALIZER__AMQP__CONFIRM_TIMEOUT_SECS",
            "amqp.confirm_timeout_secs",
        ),
    ] {
        let max = u64::MAX.to_string();
        let out = finish(worker("run", &[(var, &max)]), Duration::from_secs(30));
        assert_config_error(&out, key);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("must be between"),
            "{var}"
        );
    }
    let out = finish(
        worker("run", &[("NORMALIZER__LIMITS__MAX_BODY_BYTES", "0")]),
        Duration::from_secs(30),
    );
    assert_config_error(&out, "limits.max_body_bytes");
}

#[test]
fn normalize_prints_json_lines_and_exits_0() {
    let out = bin()
        .args(["normalize", "--received-at", RECEIVED_AT])
        .arg(fixtures_dir().join("deel/timesheet.reviewed__two_items.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    for line in lines {
        let event: webhook_normalizer::CanonicalEvent = serde_json::from_str(line).unwrap();
        assert_eq!(event.event_type.as_str(), "deel.timesheet.reviewed");
    }
}

#[test]
fn normalize_reads_stdin_with_dash_and_honours_vendor() {
    let body = std::fs::read(fixtures_dir().join("authenticate/USER_PII_UPDATE__numeric_id.json"))
        .unwrap();
    let mut child = bin()
        .args(["normalize", "--vendor", "authenticate", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let event: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["type"], "authenticate.user.updated");
    assert_eq!(event["vendoreventid"], "90817263");
}

#[test]
fn failure_prints_kind_and_detail_to_stderr_only_and_exits_65() {
    let out = bin()
        .args(["normalize", "--vendor", "deel"])
        .arg(fixtures_dir().join("deel/invoice-adjustment.created__missing_resource_id.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: invalid_payload: $.data.resource.id: missing\n"
    );

    let out = bin()
        .args(["normalize", "--vendor", "stripe"])
        .arg(fixtures_dir().join("deel/contract.created.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .starts_with("error: unknown_vendor: ")
    );
}

#[test]
fn bad_received_at_is_a_usage_error() {
    // Unparseable, or a time RFC 3339 cannot write in UTC (it could become `time`).
    for at in [
        "yesterday",
        "0000-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "2024-01-01T00:00:60Z",
    ] {
        let out = bin()
            .args(["normalize", "--received-at", at, "-"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{at}: {err}");
        assert!(err.contains("--received-at"), "{at}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn event_types_lists_the_table() {
    let out = bin()
        .args(["event-types", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 27);
    assert!(rows.contains(&serde_json::json!({
        "vendor": "authenticate",
        "vendor_event_type": "USER_PDF_REPORT_GENERATION",
        "condition": "order.status = FAILED",
        "type": "authenticate.report.failed",
        "subject": "report/{order.reportUUID}, else user/{order.userAccessCode}",
    })));

    let table = bin().arg("event-types").output().unwrap();
    let text = String::from_utf8(table.stdout).unwrap();
    assert_eq!(text.lines().count(), 28);
    assert!(text.lines().any(|l| l.starts_with("deel")
        && l.contains("time-off.updated")
        && l.contains("deel.time_off.updated")));
}

#[test]
fn the_documented_type_table_is_the_code_table() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let start = page
        .find("<!-- event-types:start -->\n")
        .expect("start marker")
        + 27;
    let end = page.find("<!-- event-types:end -->").expect("end marker");
    assert_eq!(
        &page[start..end],
        webhook_normalizer::canonical::markdown_table(),
        "regenerate with `webhook-normalizer event-types --format markdown`"
    );
}

/// A body that would fan out into 10,000 events (90 KB in, 900 MB out before bounds)
/// fails fast with the fan-out limit, printing nothing; a smaller limit on output bytes
/// stops a legitimate fan-out the same way.
#[test]
fn normalize_bounds_fan_out_before_writing_anything() {
    let items: Vec<_> = (0..10_000).map(|_| serde_json::json!({"id": 1})).collect();
    let body = serde_json::json!({
        "data": {"meta": {"event_type": "timesheet.reviewed"}, "resource": items},
        "timestamp": "2023-05-11T15:12:41.663Z"
    });
    let run = |args: &[&str]| {
        let mut child = bin()
            .arg("normalize")
            .args(args)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(&body).unwrap())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(65));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: too_many_events: $.data.resource has 10000 elements, over the limit of 1000 events per message\n"
    );

    let out = run(&[
        "--max-events-per-message",
        "20000",
        "--max-output-bytes",
        "1048576",
    ]);
    assert_eq!(out.status.code(), Some(65));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: output_too_large: the canonical events would exceed the output limit of 1048576 bytes at event "),
        "{stderr}"
    );
}

/// A log filter that does not parse is a configuration error naming where it came from:
/// `log.filter`, or `RUST_LOG`, which wins over it.
#[test]
fn an_invalid_log_filter_is_a_configuration_error() {
    for command in ["run", "topology"] {
        let out = finish(
            worker(command, &[("NORMALIZER__LOG__FILTER", "info,[[[")]),
            Duration::from_secs(30),
        );
        assert_config_error(&out, "log.filter");
        let out = finish(
            worker(command, &[("RUST_LOG", "info,[[[")]),
            Duration::from_secs(30),
        );
        assert_config_error(&out, "RUST_LOG");
    }
}

/// `normalize` reads at most one byte more than `--max-body-bytes`, then refuses: an
/// endless stdin or file (`/dev/zero`) ends promptly with `body_too_large` instead of
/// being read into memory. The timeout detects a reader that does not stop; it is not a
/// performance bound.
#[test]
fn normalize_stops_reading_past_the_size_limit() {
    let zero = || std::fs::File::open("/dev/zero").unwrap();
    let mut from_stdin = bin();
    from_stdin
        .args(["normalize", "--max-body-bytes", "1024", "-"])
        .stdin(zero());
    let mut from_file = bin();
    from_file
        .args(["normalize", "--max-body-bytes", "1024", "/dev/zero"])
        .stdin(Stdio::null());
    for command in [from_stdin, from_file] {
        let out = finish(command, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(65));
        assert!(out.stdout.is_empty());
        assert_eq!(
            String::from_utf8(out.stderr).unwrap(),
            "error: body_too_large: body is over the limit of 1024 bytes (reading stopped there)\n"
        );
    }
}

/// A regular file over the limit is refused by its size, which the message gives, without
/// reading it.
#[test]
fn normalize_refuses_a_large_file_by_its_size() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-large-body.json");
    // Sparse: 10 GiB that take no disk.
    std::fs::File::create(&path)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();
    let mut command = bin();
    command
        .args(["normalize", "--max-body-bytes", "1024"])
        .arg(&path)
        .stdin(Stdio::null());
    let out = finish(command, Duration::from_secs(10));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(65));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: body_too_large: body is 10737418240 bytes, over the limit of 1024\n"
    );
}

/// A limit of 0 would refuse every body: a usage error (exit 2, as for every bad
/// argument), naming the option. The same limits in the configuration file are
/// configuration errors (exit 78; `absurd_durations_are_configuration_errors`).
#[test]
fn zero_limits_are_usage_errors() {
    for option in [
        "--max-body-bytes",
        "--max-events-per-message",
        "--max-output-bytes",
    ] {
        let mut command = bin();
        command
            .args(["normalize", option, "0", "-"])
            .stdin(Stdio::null());
        let out = finish(command, Duration::from_secs(10));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{option}: {err}");
        assert!(out.stdout.is_empty());
        assert!(err.contains(option) && err.contains("at least 1"), "{err}");
    }
}

/// Runs the command with its stdout a pipe whose reader is gone (`… | head -1` after
/// head has exited); its output is large or written line by line, so it meets the
/// closed pipe whatever the timing.
fn with_closed_stdout(mut command: Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    testkit::output_within(child, Duration::from_secs(30))
}

/// `event-types | head -1`: a reader that stops reading is not an error. Every command
/// that writes to stdout ends quietly with exit 0.
#[test]
fn a_closed_stdout_ends_quietly_with_success() {
    let fan_out: Vec<_> = (0..1000).map(|i| serde_json::json!({"id": i})).collect();
    let body = serde_json::json!({
        "data": {"meta": {"event_type": "timesheet.reviewed"}, "resource": fan_out},
        "timestamp": "2023-05-11T15:12:41.663Z"
    });
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-fan-out.json");
    std::fs::write(&path, serde_json::to_vec(&body).unwrap()).unwrap();

    let mut commands: Vec<Command> = ["text", "json", "markdown"]
        .into_iter()
        .map(|format| {
            let mut c = bin();
            c.args(["event-types", "--format", format]);
            c
        })
        .collect();
    let mut normalize = bin();
    normalize.arg("normalize").arg(&path);
    commands.push(normalize);
    let mut help = bin();
    help.arg("--help");
    commands.push(help);
    for command in commands {
        let what = format!("{:?}", command.get_args().collect::<Vec<_>>());
        let out = with_closed_stdout(command);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{what}: {err}");
        assert!(err.is_empty(), "{what}: {err}");
    }
}

/// User errors are one line on stderr, never a stack trace, even with the backtrace
/// variables many development machines set.
#[test]
fn user_errors_never_print_backtraces() {
    let backtraces = [("RUST_BACKTRACE", "1"), ("RUST_LIB_BACKTRACE", "1")];
    let mut missing_file = bin();
    missing_file
        .args(["normalize", "/nonexistent/body.json"])
        .envs(backtraces)
        .stdin(Stdio::null());
    let out = finish(missing_file, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: cannot read /nonexistent/body.json: No such file or directory (os error 2)\n"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let mut command = worker("run", &[("NORMALIZER__HTTP__LISTEN", &listen)]);
    command.envs(backtraces);
    let out = finish(command, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: http.listen: "), "{err}");
    assert!(
        !err.contains("acktrace") && !err.contains("Caused by"),
        "{err}"
    );

    for config_error in [
        worker("run", &[("NORMALIZER__INPUT__PREFETCH", "0")]),
        worker("topology", &[("RUST_LOG", "[[[")]),
    ] {
        let mut command = config_error;
        command.envs(backtraces);
        let out = finish(command, Duration::from_secs(30));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// Text logs to a file or pipe carry no ANSI colour codes (the test's stderr pipe is not
/// a terminal). The choice for a terminal, and `NO_COLOR`, are unit-tested in telemetry.
#[test]
fn text_logs_to_a_pipe_have_no_colour_codes() {
    let mut command = worker("topology", &[("NORMALIZER__LOG__FORMAT", "text")]);
    command.env_remove("NO_COLOR");
    let out = finish(command, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("cannot declare the topology"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

/// `GET path` over plain HTTP/1.0: the status code.
fn http_status(addr: std::net::SocketAddr, path: &str) -> u16 {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// `http.listen` may name a host: the worker listens on what it resolves to (here
/// `localhost`, so 127.0.0.1). Garbage is still a configuration error.
#[test]
fn health_endpoints_listen_on_a_host_name() {
    use std::io::BufRead;
    let mut child = worker(
        "run",
        &[
            ("NORMALIZER__HTTP__LISTEN", "localhost:0"),
            ("NORMALIZER__LOG__FORMAT", "json"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut addresses: Vec<std::net::SocketAddr> = Vec::new();
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        seen.push(line.clone());
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if log["message"] == "health and metrics on /healthz, /readyz and /metrics" {
            addresses.push(log["address"].as_str().unwrap().parse().unwrap());
        } else if log["message"] == "starting" {
            break;
        }
    }
    let ipv4: Vec<std::net::SocketAddr> =
        addresses.iter().copied().filter(|a| a.is_ipv4()).collect();
    let status = ipv4.first().map(|a| http_status(*a, "/healthz"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(ipv4.len(), 1, "{seen:#?}");
    assert!(ipv4[0].ip().is_loopback());
    assert_eq!(status, Some(200));

    let out = finish(
        worker("run", &[("NORMALIZER__HTTP__LISTEN", "localhost")]),
        Duration::from_secs(30),
    );
    assert_config_error(&out, "http.listen");
}

/// `amqp.url` ending in `/` names the empty vhost, which RabbitMQ never has: refused at
/// start with the way to name the default one, and without the password.
#[test]
fn an_amqp_url_naming_the_empty_vhost_is_refused_at_start() {
    for command in ["run", "topology"] {
        let out = finish(
            worker(
                command,
                &[("NORMALIZER__AMQP__URL", "amqp://guest:s3cret@127.0.0.1:1/")],
            ),
            Duration::from_secs(10),
        );
        assert_config_error(&out, "amqp.url");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("empty vhost") && err.contains("%2f"), "{err}");
    }
}

/// `normalize --passthrough VENDOR` shows what `unmapped.{vendor} = "passthrough"` makes;
/// without it, or for another vendor, the type stays unknown.
#[test]
fn normalize_passthrough_shows_the_generic_event() {
    let fixture = crate::fixtures_dir().join("deel/payslip.available.json");
    let run = |args: &[&str]| {
        bin()
            .arg("normalize")
            .args(args)
            .arg(&fixture)
            .output()
            .unwrap()
    };

    let out = run(&["--passthrough", "deel"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(event["type"], "deel.unmapped.payslip_available");
    assert_eq!(
        event["subject"],
        format!("event/{}", event["id"].as_str().unwrap())
    );

    for args in [&[][..], &["--passthrough", "entuitive"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(65), "{args:?}");
        assert!(out.stdout.is_empty());
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: unknown_event_type: "),
            "{args:?}"
        );
    }
    let out = run(&["--passthrough", "acme"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a vendor we do not know is a usage error"
    );
}

/// The worker logs its effective settings at start, as `config` prints them: choices
/// such as `unmapped.deel = "passthrough"` shown, secrets masked.
#[test]
fn the_worker_logs_its_effective_settings_with_secrets_masked() {
    let command = worker(
        "run",
        &[
            ("NORMALIZER__UNMAPPED__DEEL", "passthrough"),
            (
                "NORMALIZER__SIGNATURES__DEEL__SECRETS",
                r#"["d-s3cret-key"]"#,
            ),
            ("NORMALIZER__LOG__FORMAT", "json"),
            ("NORMALIZER__INPUT__PREFETCH", "7"),
        ],
    );
    let mut child = {
        let mut c = command;
        c.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("effective settings") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("an effective settings line");
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    let settings: serde_json::Value =
        serde_json::from_str(log["settings"].as_str().unwrap()).unwrap();
    assert_eq!(settings["unmapped"]["deel"], "passthrough", "{settings}");
    assert_eq!(settings["input"]["prefetch"], 7, "{settings}");
    assert_eq!(
        settings["signatures"]["deel"]["secrets"][0], "****",
        "{settings}"
    );
    assert!(!line.contains("s3cret"), "{line}");
}

/// `--schema-base-uri` moves the `$id` of the schema documents and every event's
/// `dataschema` together; without it, the documents are the checked-in files byte for
/// byte and the events name them.
#[test]
fn a_schema_base_uri_moves_ids_and_dataschema_together() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let print = |format: &str, base: Option<&str>| {
        let mut c = bin();
        c.args(["event-types", "--format", format]);
        if let Some(base) = base {
            c.args(["--schema-base-uri", base]);
        }
        let out = c.output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let normalize = |base: Option<&str>| {
        let mut c = bin();
        c.args(["normalize", "--received-at", RECEIVED_AT]);
        if let Some(base) = base {
            c.args(["--schema-base-uri", base]);
        }
        let out = c
            .arg(fixtures_dir().join("deel/contract.created.json"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let files = [
        ("data-schema", "schema/event-data.v1.schema.json"),
        ("event-schema", "schema/canonical-event.schema.json"),
        ("asyncapi", "docs/asyncapi.json"),
    ];
    for (format, file) in files {
        assert!(
            print(format, None) == std::fs::read(repo.join(file)).unwrap(),
            "{format} is not {file}"
        );
    }
    let default = normalize(None);
    assert_eq!(
        default["dataschema"],
        "https://github.com/webhook-normalizer/webhook-normalizer/schema/event-data.v1.schema.json#/$defs/deel.contract.created"
    );

    let base = "https://schemas.example.com/hr/";
    let json = |bytes: Vec<u8>| serde_json::from_slice::<serde_json::Value>(&bytes).unwrap();
    let data = json(print("data-schema", Some(base)));
    let envelope = json(print("event-schema", Some(base)));
    assert_eq!(data["$id"], format!("{base}event-data.v1.schema.json"));
    assert_eq!(
        envelope["$id"],
        format!("{base}canonical-event.schema.json")
    );
    let event = normalize(Some(base));
    let dataschema = event["dataschema"].as_str().unwrap();
    let (document, pointer) = dataschema.split_once('#').unwrap();
    assert_eq!(document, data["$id"]);
    assert_eq!(
        data.pointer(pointer).unwrap()["title"],
        "data of deel.contract.created"
    );
    // Only the identifiers moved.
    let mut same = event.clone();
    same["dataschema"] = default["dataschema"].clone();
    assert_eq!(same, default);
    let asyncapi = json(print("asyncapi", Some(base)));
    assert_eq!(
        asyncapi["components"]["messages"]["deel_contract_created"]["payload"]["allOf"][1]["properties"]
            ["dataschema"]["const"],
        dataschema
    );
    // The envelope schema takes the event with its own base, not the default's.
    let validator = jsonschema::validator_for(&envelope).unwrap();
    assert!(validator.is_valid(&event));
    assert!(!validator.is_valid(&default));

    for bad in [
        "schemas.example.com/hr/",
        "https://schemas.example.com/hr",
        "https://schemas.example.com/hr/#x",
        "https://schemas.example.com/h r/",
        "",
    ] {
        let out = bin()
            .args([
                "event-types",
                "--format",
                "data-schema",
                "--schema-base-uri",
                bad,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?} is a usage error");
        assert!(out.stdout.is_empty());
    }
}
