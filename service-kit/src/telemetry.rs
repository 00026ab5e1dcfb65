//! The `tracing` subscriber every orderflow binary installs: human-readable lines on stderr
//! (stdout is the CLI's own output), filtered by `RUST_LOG` (default `info`), coloured only on
//! a terminal.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the process's subscriber. Call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
