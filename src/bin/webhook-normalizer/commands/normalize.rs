//! `webhook-normalizer normalize`: one webhook body to its canonical events, offline.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use webhook_normalizer::normalize::{OutgoingEvent, normalize_json};
use webhook_normalizer::{DeadLetterKind, Limits, Unmapped, UnmappedPolicy, Vendor};

use crate::common::{EXIT_DATA_ERROR, SchemaBaseArg, parse_rfc3339, report, written_to_stdout};

/// The arguments of `normalize` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct NormalizeArgs {
    /// Vendor key (entuitive, authenticate, deel); detected from the body if omitted.
    #[arg(long)]
    vendor: Option<String>,
    /// Receipt time (RFC 3339), used when the body carries no time; default: now.
    #[arg(long, value_parser = parse_rfc3339)]
    received_at: Option<DateTime<Utc>>,
    /// Largest body accepted, in bytes (at least 1). No more than this and one byte
    /// is read.
    #[arg(long, default_value_t = Limits::default().max_body_bytes, value_parser = at_least_1)]
    max_body_bytes: usize,
    /// Most events one body may fan out into (at least 1).
    #[arg(long, default_value_t = Limits::default().max_events_per_message, value_parser = at_least_1)]
    max_events_per_message: usize,
    /// Most bytes of event JSON one body may make, all its events together (at least 1).
    #[arg(long, default_value_t = Limits::default().max_output_bytes, value_parser = at_least_1)]
    max_output_bytes: usize,
    /// Pass this vendor's unmapped types through as generic events, as the setting
    /// `unmapped.{vendor} = "passthrough"` does (repeatable); otherwise they fail as
    /// unknown_event_type.
    #[arg(long, value_name = "VENDOR")]
    passthrough: Vec<Vendor>,
    #[command(flatten)]
    schemas: SchemaBaseArg,
    /// File holding the raw body; `-` or nothing reads stdin.
    file: Option<PathBuf>,
}

/// A limit: 0 would refuse every body.
fn at_least_1(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; must be a whole number, at least 1")),
    }
}

/// Exit 0 with the events on stdout; 65 with the error on stderr and nothing on stdout.
pub(crate) fn run(args: NormalizeArgs) -> anyhow::Result<ExitCode> {
    let NormalizeArgs {
        vendor,
        received_at,
        max_body_bytes,
        max_events_per_message,
        max_output_bytes,
        passthrough,
        schemas,
        file,
    } = args;
    let body = match read_input(file.as_deref(), max_body_bytes)? {
        Input::Body(body) => body,
        Input::TooLarge { size } => {
            let kind = DeadLetterKind::BodyTooLarge;
            match size {
                Some(size) => report(format_args!(
                    "error: {kind}: body is {size} bytes, over the limit of {max_body_bytes}"
                )),
                None => report(format_args!(
                    "error: {kind}: body is over the limit of {max_body_bytes} bytes (reading stopped there)"
                )),
            }
            return Ok(ExitCode::from(EXIT_DATA_ERROR));
        }
    };
    let limits = Limits {
        max_body_bytes,
        max_events_per_message,
        max_output_bytes,
    };
    let received_at = received_at.unwrap_or_else(Utc::now);
    let mut unmapped = Unmapped::default();
    for vendor in passthrough {
        *unmapped.of_mut(vendor) = UnmappedPolicy::Passthrough;
    }
    // Serialized (and bounded) before anything is printed: an error prints nothing
    // on stdout.
    match normalize_json(
        &body,
        vendor.as_deref(),
        received_at,
        &limits,
        &unmapped,
        schemas.base,
    ) {
        Ok(events) => written_to_stdout(print_events(&events)),
        Err(e) => {
            report(format_args!("error: {}: {e}", e.kind()));
            Ok(ExitCode::from(EXIT_DATA_ERROR))
        }
    }
}

/// The body `normalize` reads, or the fact that it is over the limit.
enum Input {
    Body(Vec<u8>),
    /// Over the limit; `size` when known without reading (a regular file).
    TooLarge {
        size: Option<u64>,
    },
}

/// Reads the body from `file` (`-` or nothing: stdin), at most `limit + 1` bytes: enough
/// to know it is over the limit without reading, or holding, an endless stream or a
/// huge file. A regular file is measured before it is read.
fn read_input(file: Option<&std::path::Path>, limit: usize) -> anyhow::Result<Input> {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let (reader, name): (Box<dyn Read>, String) = match file {
        None => (Box::new(io::stdin().lock()), "stdin".into()),
        Some(p) if p.as_os_str() == "-" => (Box::new(io::stdin().lock()), "stdin".into()),
        Some(p) => {
            let file =
                std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            if let Ok(meta) = file.metadata()
                && meta.is_file()
                && meta.len() > limit
            {
                return Ok(Input::TooLarge {
                    size: Some(meta.len()),
                });
            }
            (Box::new(file), p.display().to_string())
        }
    };
    let mut body = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .with_context(|| format!("cannot read {name}"))?;
    if body.len() as u64 > limit {
        return Ok(Input::TooLarge { size: None });
    }
    Ok(Input::Body(body))
}

/// JSON Lines.
fn print_events(events: &[OutgoingEvent]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for event in events {
        out.write_all(&event.body)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
