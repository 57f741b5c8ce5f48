//! Progress reporting for long work. The CLI shows bars; the storage node and tests pass
//! [`Progress::hidden`] and pay nothing.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A source of progress bars, visible or not.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Bars that draw nothing.
    pub fn hidden() -> Self {
        Progress { multi: None }
    }

    /// Bars drawn on stderr (indicatif hides them when stderr is not a terminal).
    pub fn stderr() -> Self {
        Progress {
            multi: Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// A new bar labelled `msg`; its length is set by the work itself.
    pub fn bar(&self, msg: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            return ProgressBar::hidden();
        };
        let style = ProgressStyle::with_template(
            "{msg:>24} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = multi.add(ProgressBar::new(0).with_style(style));
        bar.set_message(msg.to_string());
        bar
    }
}
