//! Progress bars for long CLI work (backup, restore, replay, import, export, verify,
//! stats): drawn on stderr only when stdout is a terminal, so scripts and pipes
//! stay quiet.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar counting `unit`s up to `total` (0: unknown total, a spinner with a count).
pub(crate) fn bar(what: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = if total == 0 { ProgressBar::no_length() } else { ProgressBar::new(total) };
    if !std::io::stdout().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let template = if total == 0 {
        format!("{{spinner}} {what}: {{human_pos}} {unit} ({{per_sec}}, {{elapsed}})")
    } else {
        format!("{what} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, eta {{eta}})")
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
