//! The process's one Prometheus recorder. Every router of a process (the embedded `serve` merges
//! the write side's and the read API's) renders the same handle, so `/metrics` shows everything
//! the process records, whichever router answers it.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::http::REQUEST_DURATION;

/// Buckets of [`REQUEST_DURATION`], in seconds: from half a millisecond (a cached read) to the
/// longest request timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use, with an upkeep thread. If the process
/// already has another global `metrics` recorder (an embedding program installed its own), the
/// handle renders only what it records itself, and says so once in the log.
pub fn prometheus_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(install).clone()
}

fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_owned()), DURATION_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let handle = match builder.install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows only its own");
            PrometheusBuilder::new().build_recorder().handle()
        }
    };
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the metrics upkeep thread; /metrics runs it");
    }
    handle
}
