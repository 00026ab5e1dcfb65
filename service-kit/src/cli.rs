//! A command line's own output: lines on stdout (logs go to stderr) and progress bars for long
//! work (rebuilds, seeding, imports, benchmarks), the same everywhere.

use std::io::Write as _;

use indicatif::{ProgressBar, ProgressStyle};

/// One line on stdout. A reader that went away (`| head`) is not an error.
pub fn write_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// A bar of `len` `unit`s (events, positions, orders) on stderr, with its rate and ETA, labelled
/// `message`. It draws nothing when stderr is not a terminal.
pub fn progress_bar(len: u64, message: &str, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{{msg}} [{{bar:40}}] {{pos}}/{{len}} {unit}, {{per_sec}}, ETA {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message.to_owned());
    bar
}
