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

/// A duration flag: a whole number with a unit, `500ms`, `30s`, `15m` or `2h` (a bare number is
/// seconds). At least 1 ms.
pub fn parse_duration(value: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let value = value.trim();
    let digits = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration: write e.g. 500ms, 30s, 15m or 2h"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        other => return Err(format!("unknown unit {other:?} in {value:?}: use ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err(format!("{value:?} is no time at all: give at least 1ms"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;

    #[test]
    fn durations_take_a_unit_and_refuse_nonsense() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "m", "0s", "-5s", "1.5s", "10d", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
