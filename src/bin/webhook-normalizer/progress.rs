//! A progress bar for long walks: on stderr, only when it is a terminal.

use std::io::IsTerminal;

use webhook_normalizer::tools::walk::Progress;

/// Walks shorter than this finish too soon for a bar to help.
const SHOWN_FROM: u64 = 300;

/// Shown once a walk turns out to be long, cleared when it ends so that the one-line
/// summary stands alone.
pub(crate) struct ProgressBar {
    what: &'static str,
    bar: Option<indicatif::ProgressBar>,
    on_terminal: bool,
}

impl ProgressBar {
    /// `what` the walk reads, e.g. "dead letters".
    pub(crate) fn new(what: &'static str) -> ProgressBar {
        ProgressBar {
            what,
            bar: None,
            on_terminal: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn update(&mut self, p: Progress) {
        if self.bar.is_none() && self.on_terminal && p.at_start >= SHOWN_FROM {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(p.at_start),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{wide_bar} {pos}/{len} {msg} ({per_sec}, {eta} left)",
            ) {
                bar.set_style(style);
            }
            bar.set_message(self.what);
            self.bar = Some(bar);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(p.done);
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
