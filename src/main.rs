//! The `webhook-normalizer` binary: parses arguments and hands over to the library.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use webhook_normalizer::{EventType, Limits, normalize};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits.h EX_DATAERR: the input was read but cannot be normalized.
const EXIT_DATA_ERROR: u8 = 65;

#[derive(Parser)]
#[command(version, about = "Vendor webhooks in, one CloudEvents stream out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Normalize one webhook body offline and print its canonical events as JSON Lines.
    ///
    /// Exit 0 with the events on stdout; exit 65 with `error: {kind}: {detail}` on stderr
    /// and nothing on stdout when the body cannot be normalized.
    Normalize {
        /// Vendor key (entuitive, authenticate, deel); detected from the body if omitted.
        #[arg(long)]
        vendor: Option<String>,
        /// Receipt time (RFC 3339), used when the body carries no time; default: now.
        #[arg(long, value_parser = parse_rfc3339)]
        received_at: Option<DateTime<Utc>>,
        /// Largest body accepted, in bytes.
        #[arg(long, default_value_t = Limits::default().max_body_bytes)]
        max_body_bytes: usize,
        /// File holding the raw body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Print the canonical type table: vendor, vendor type, condition, canonical type, subject.
    EventTypes {
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TableFormat {
    /// Aligned columns.
    Text,
    /// One JSON object per line.
    Json,
    /// A Markdown table.
    Markdown,
}

fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 date-time: {e}"))
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Normalize {
            vendor,
            received_at,
            max_body_bytes,
            file,
        } => {
            let body = read_input(file.as_deref())?;
            let limits = Limits { max_body_bytes };
            let received_at = received_at.unwrap_or_else(Utc::now);
            match normalize(&body, vendor.as_deref(), received_at, &limits) {
                Ok(events) => {
                    let mut out = io::stdout().lock();
                    for event in &events {
                        serde_json::to_writer(&mut out, event)?;
                        out.write_all(b"\n")?;
                    }
                    out.flush()?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", e.kind());
                    Ok(ExitCode::from(EXIT_DATA_ERROR))
                }
            }
        }
        Command::EventTypes { format } => {
            print_event_types(format)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_input(file: Option<&std::path::Path>) -> anyhow::Result<Vec<u8>> {
    match file {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {}", p.display())),
    }
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut body)
        .context("cannot read stdin")?;
    Ok(body)
}

fn print_event_types(format: TableFormat) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    if let TableFormat::Markdown = format {
        out.write_all(webhook_normalizer::canonical::markdown_table().as_bytes())?;
    } else if let TableFormat::Json = format {
        for t in EventType::ALL {
            let row = serde_json::json!({
                "vendor": t.vendor(),
                "vendor_event_type": t.vendor_event_type(),
                "condition": (!t.condition().is_empty()).then_some(t.condition()),
                "type": t,
                "subject": t.subject_rule(),
            });
            serde_json::to_writer(&mut out, &row)?;
            out.write_all(b"\n")?;
        }
    } else {
        let header = [
            "VENDOR",
            "VENDOR TYPE",
            "CONDITION",
            "CANONICAL TYPE",
            "SUBJECT",
        ];
        let rows: Vec<[&str; 5]> = EventType::ALL
            .iter()
            .map(|t| {
                [
                    t.vendor().key(),
                    t.vendor_event_type(),
                    t.condition(),
                    t.as_str(),
                    t.subject_rule(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
    }
    out.flush()?;
    Ok(())
}
