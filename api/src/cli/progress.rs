//! Progress bars for long CLI work (backup, restore, replay, import, export, verify,
//! stats): drawn on stderr only when stdout is a terminal, so scripts and pipes
//! stay quiet.

use std::io::IsTerminal;

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// A bar counting `unit`s up to `total` (0: unknown total, a spinner with a count).
pub(crate) fn bar(what: &str, total: u64, unit: &str) -> ProgressBar {
    let bar = if total == 0 { ProgressBar::no_length() } else { ProgressBar::new(total) };
    if !std::io::stdout().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
        return bar;
    }
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let template = if total == 0 {
        format!("{{spinner}} {what}: {{human_pos}} {unit} ({{rate}}, {{elapsed}})")
    } else {
        format!("{what} [{{bar:40}}] {{human_pos}}/{{human_len}} {unit} ({{rate}}, eta {{eta}})")
    };
    if let Ok(style) = ProgressStyle::with_template(&template) {
        let style = style.with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = out.write_str(&rate(state.per_sec()));
        });
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// A rate in whole units a second: indicatif's own `{per_sec}` shows four
/// decimals (`14,773.7453/s`).
fn rate(per_sec: f64) -> String {
    format!("{}/s", HumanCount(per_sec.round() as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rate_is_whole_units_a_second() {
        assert_eq!(super::rate(14_773.745_3), "14,774/s");
        assert_eq!(super::rate(0.2), "0/s");
        assert_eq!(super::rate(f64::NAN), "0/s");
    }
}
