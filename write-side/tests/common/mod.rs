//! What several of the write side's test binaries share: waiting on a condition with a
//! deadline. Included by `bad_input.rs` (`mod common;`) and by the HTTP tests' support module
//! (`http/support.rs`, which re-exports [`eventually`]).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for something to happen (a saga to settle) before it fails.
pub(crate) const SETTLE: Duration = Duration::from_secs(30);

/// Polls `probe` every 20 ms until it answers, failing the test after [`SETTLE`].
pub(crate) async fn eventually<T, F, Fut>(what: impl Display, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {SETTLE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
