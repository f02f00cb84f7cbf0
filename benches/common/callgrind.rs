//! Reading callgrind's output files, for the benchmarks that count instructions
//! (`instructions`, and `normalize -- --instructions`).

use std::path::Path;

/// The `summary:` (or `totals:`) line of a callgrind output file: Ir, the one event
/// callgrind collects by default.
pub fn total_ir(out_file: &Path) -> u64 {
    let text = std::fs::read_to_string(out_file)
        .unwrap_or_else(|e| panic!("callgrind output {}: {e}", out_file.display()));
    text.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary line in {}", out_file.display()))
}
