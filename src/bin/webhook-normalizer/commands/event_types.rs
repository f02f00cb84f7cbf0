//! `webhook-normalizer event-types`: the canonical type table, and the documents made from it.

use std::io::{self, Write};
use std::process::ExitCode;

use webhook_normalizer::EventType;
use webhook_normalizer::canonical::SchemaBase;

use crate::common::{SchemaBaseArg, written_to_stdout};

/// The arguments of `event-types` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct EventTypesArgs {
    /// What to print: the table, or a document made from it.
    #[arg(long, value_enum, default_value_t = TableFormat::Text)]
    format: TableFormat,
    #[command(flatten)]
    schemas: SchemaBaseArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TableFormat {
    /// Aligned columns.
    Text,
    /// One JSON object per line.
    Json,
    /// A Markdown table.
    Markdown,
    /// The AsyncAPI 3.0 document of every channel (as `docs/asyncapi.json`).
    Asyncapi,
    /// The JSON Schema of each type's `data` (as `schema/event-data.v1.schema.json`),
    /// which every event's `dataschema` points into.
    DataSchema,
    /// The JSON Schema of the envelope (as `schema/canonical-event.schema.json`).
    EventSchema,
}

/// Prints the table (or document) `--format` names.
pub(crate) fn run(args: EventTypesArgs) -> anyhow::Result<ExitCode> {
    written_to_stdout(print_event_types(args.format, args.schemas.base))
}

fn print_event_types(format: TableFormat, base: SchemaBase) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if let TableFormat::DataSchema = format {
        let doc = webhook_normalizer::canonical::data_schema_document(base);
        serde_json::to_writer_pretty(&mut out, &doc).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    } else if let TableFormat::EventSchema = format {
        let doc = webhook_normalizer::canonical::event_schema(base);
        serde_json::to_writer_pretty(&mut out, &doc).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    } else if let TableFormat::Asyncapi = format {
        let doc = webhook_normalizer::asyncapi::document(env!("CARGO_PKG_VERSION"), base);
        serde_json::to_writer_pretty(&mut out, &doc).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    } else if let TableFormat::Markdown = format {
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
            // An I/O error comes back as itself, so a broken pipe is still one.
            serde_json::to_writer(&mut out, &row).map_err(io::Error::from)?;
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
