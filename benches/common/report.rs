//! Medians, percentiles and Markdown tables.

use super::runs::Run;

pub fn median(values: &[f64]) -> f64 {
    let mut values: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The nearest-rank `p`-th percentile (0 < p ≤ 100) of sorted values.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A Markdown table printed to stdout.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self) {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .chain(std::iter::once(&self.header[c]))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (s, w))| {
                    if i == 0 {
                        format!("{s:<w$}")
                    } else {
                        format!("{s:>w$}")
                    }
                })
                .collect();
            println!("| {} |", cells.join(" | "));
        };
        line(&self.header);
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w.saturating_sub(1)))
                }
            })
            .collect();
        println!("| {} |", rule.join(" | "));
        for row in &self.rows {
            line(row);
        }
        println!();
    }
}

pub fn f0(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.0}")
    }
}
pub fn f1(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.1}")
    }
}
pub fn f2(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.2}")
    }
}

/// Every run of every round, then the median of each side, as one table.
pub fn runs_table(rounds: &[Vec<Run>]) {
    let mut table = Table::new(&[
        "round",
        "side",
        "wall s",
        "msg/s",
        "client CPU µs/msg",
        "broker CPU µs/msg",
        "peak RSS MiB",
        "stored out",
    ]);
    let cells = |round: String, r: &Run| {
        vec![
            round,
            r.side.name(),
            f2(r.wall.as_secs_f64()),
            f0(r.rate()),
            f1(r.cpu_us()),
            f1(r.broker_cpu_us()),
            f1(r.peak_rss_mib()),
            format!(
                "{}{}",
                r.events + r.dead_letters,
                if r.as_expected { "" } else { " (!)" }
            ),
        ]
    };
    for (i, runs) in rounds.iter().enumerate() {
        for r in runs {
            table.row(cells((i + 1).to_string(), r));
        }
    }
    if let Some(first) = rounds.first() {
        for side in 0..first.len() {
            let of = |f: &dyn Fn(&Run) -> f64| {
                median(&rounds.iter().map(|runs| f(&runs[side])).collect::<Vec<_>>())
            };
            table.row(vec![
                "**median**".into(),
                first[side].side.name(),
                f2(of(&|r| r.wall.as_secs_f64())),
                f0(of(&Run::rate)),
                f1(of(&Run::cpu_us)),
                f1(of(&Run::broker_cpu_us)),
                f1(of(&Run::peak_rss_mib)),
                String::new(),
            ]);
        }
    }
    table.print();
}

/// `side a ÷ side b` of msg/s: the median of the per-round ratios, and each round's.
pub fn rate_ratio(rounds: &[Vec<Run>], a: usize, b: usize) -> (f64, String) {
    let ratios: Vec<f64> = rounds
        .iter()
        .map(|runs| runs[a].rate() / runs[b].rate())
        .collect();
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
    (median(&ratios), each.join(", "))
}
