//! Load shedding: a bound on the requests a process works on at once, and past it an immediate
//! 503 `overloaded` with `Retry-After`, instead of a queue that grows until requests time out.
//!
//! Offered more than it can do, a service that admits everything makes every request slow: each
//! waits behind all the others (for a database connection, the append lock, the CPU) until the
//! request timeout, and the work done for the ones that time out is wasted. Bounding what is in
//! flight keeps the admitted requests about as fast as at capacity and tells the rest at once to
//! come back (a client that honours `Retry-After` spreads its retries). Commands queue only as
//! requests in flight, so the bound is also the bound on queued commands.
//!
//! Only `/v1/...` routes count and are shed: `/health`, `/ready` and `/metrics` must keep
//! answering an overloaded process, or an orchestrator would restart it for being busy.
//!
//! The [`edge`](super::edge) admits each `/v1` request through the process's [`InFlightLimit`].
//! Metrics: [`IN_FLIGHT`] (gauge), [`IN_FLIGHT_LIMIT`] (gauge), [`SHED_TOTAL`] (counter).

use std::sync::Arc;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ApiError;

/// Gauge: `/v1` requests being worked on now.
pub const IN_FLIGHT: &str = "http_requests_in_flight";
/// Gauge: the bound on [`IN_FLIGHT`].
pub const IN_FLIGHT_LIMIT: &str = "http_requests_in_flight_limit";
/// Counter: requests answered 503 `overloaded` at once.
pub const SHED_TOTAL: &str = "http_requests_shed_total";

/// The bound, in the [`Edge`](super::Edge) of every router of a process; one value shared by
/// all of them when they serve from one port (the embedded `serve` merges several).
#[derive(Debug, Clone)]
pub struct InFlightLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl InFlightLimit {
    /// At most `max` requests at once (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        metrics::gauge!(IN_FLIGHT_LIMIT).set(max as f64);
        InFlightLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// The flag of every HTTP service: `--max-in-flight` (`ORDERFLOW_MAX_IN_FLIGHT`).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// At most this many `/v1` requests worked on at once; past it a request is answered 503
    /// `overloaded` with `Retry-After` at once, rather than queued until it times out.
    #[arg(long, env = "ORDERFLOW_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_in_flight: u32,
}

impl LoadArgs {
    pub fn limit(&self) -> InFlightLimit {
        InFlightLimit::new(self.max_in_flight as usize)
    }
}

/// The default bound. At the embedded `serve`'s ~680 commands/s, 128 requests in flight wait
/// about 0.2 s in all: far under the request timeout, and enough that a burst is absorbed
/// rather than refused (BENCHMARKS.md, overload).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 128;

/// A place among the requests in flight, given back when dropped (also when the handler
/// panics or the client goes away and the request's future is dropped).
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    limit: InFlightLimit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        // The gauge is read from the semaphore, never counted up and down, so it cannot drift.
        metrics::gauge!(IN_FLIGHT).set(self.limit.in_flight().saturating_sub(1) as f64);
    }
}

impl InFlightLimit {
    /// A place for one request, or 503 `overloaded` (with `Retry-After`, as every 503) when the
    /// bound is reached: the request is then answered without any of its work done.
    pub fn admit(&self) -> Result<Admitted, ApiError> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics::counter!(SHED_TOTAL).increment(1);
            return Err(overloaded(self.max));
        };
        metrics::gauge!(IN_FLIGHT).set(self.in_flight() as f64);
        Ok(Admitted {
            _permit: permit,
            limit: self.clone(),
        })
    }
}

fn overloaded(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        format!("the service is working on as many requests as it takes ({max}); retry later"),
    )
    .with_detail("max_in_flight", max)
}
