//! What the HTTP benchmarks share: the client, latency histograms, the JSON report on stdout,
//! and the freshness probe (orders placed at a fixed rate, each watched until the read side
//! shows it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;
use shop_sim::Rng;
use uuid::Uuid;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;
/// The `lines` of a new order: 1 to 3 distinct products of `products`, 1 to 3 units each.
pub(crate) fn order_lines(rng: &mut Rng, products: &[Uuid]) -> serde_json::Value {
    let wanted = (1 + rng.below(3)).min(products.len());
    let mut picked: Vec<Uuid> = Vec::with_capacity(wanted);
    while picked.len() < wanted {
        let p = *rng.pick(products);
        if !picked.contains(&p) {
            picked.push(p);
        }
    }
    picked
        .iter()
        .map(|p| serde_json::json!({ "product_id": p, "quantity": 1 + rng.below(3) }))
        .collect()
}

/// The benchmark's result, one JSON document on stdout.
pub(crate) fn print_json(report: &impl Serialize) -> anyhow::Result<()> {
    Ok(service_kit::cli::write_line(&serde_json::to_string_pretty(report)?)?)
}

pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

pub(crate) fn ms(hist: &Histogram<u64>, quantile: f64) -> f64 {
    hist.value_at_quantile(quantile) as f64 / 1000.0
}

/// What a freshness run measured (`bench reads` and `bench freshness`).
#[derive(Debug, Serialize)]
pub(crate) struct Freshness {
    pub(crate) target_rate: u64,
    pub(crate) seconds: f64,
    pub(crate) sent: u64,
    /// Answered 201.
    pub(crate) placed: u64,
    /// Other answers and transport errors.
    pub(crate) failed: u64,
    pub(crate) achieved_rate: f64,
    pub(crate) command_p50_ms: f64,
    pub(crate) command_p99_ms: f64,
    /// From the command's answer to the read API's 200 for the order.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// The same, from the command's send time.
    pub(crate) from_send_p50_ms: f64,
    pub(crate) from_send_p99_ms: f64,
    /// Placed orders never seen within the wait after the run.
    pub(crate) never_seen: u64,
    pub(crate) probe_every_ms: u64,
}

/// Requests in flight at most; beyond it, orders wait (still timed from their scheduled send).
pub(crate) const MAX_IN_FLIGHT: usize = 1024;
/// How often the list is read.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long the probe keeps looking after the last order was answered.
pub(crate) const DRAIN: Duration = Duration::from_secs(30);
/// Placed orders not seen yet: id → (sent at, answered at).
pub(crate) type Pending = Arc<Mutex<HashMap<Uuid, (Instant, Instant)>>>;

/// What the order writer of a run reports: orders placed, orders refused, the seconds it took,
/// and the commands' latency.
pub(crate) type Written = (u64, u64, f64, hdrhistogram::Histogram<u64>);

/// A run's orders as the probe saw them.
pub(crate) struct Watched {
    pub(crate) written: Written,
    /// From each order's answer to the answer that showed it.
    pub(crate) fresh: hdrhistogram::Histogram<u64>,
    /// From each order's scheduled send to the answer that showed it.
    pub(crate) from_send: hdrhistogram::Histogram<u64>,
    pub(crate) never_seen: u64,
}

/// Watches the orders `writer` places (it puts each into `pending`) until the probe has seen
/// them all, or for [`DRAIN`] after the writer finished. Every [`PROBE_EVERY`] `probe` gets the
/// orders still waiting (id, sent, answered) and answers those it saw, each stamped with the
/// moment of the answer that showed it.
pub(crate) async fn watch<P>(
    writer: tokio::task::JoinHandle<anyhow::Result<Written>>,
    pending: &Pending,
    mut probe: P,
) -> anyhow::Result<Watched>
where
    P: AsyncFnMut(&[(Uuid, Instant, Instant)]) -> anyhow::Result<Vec<(Uuid, Instant)>>,
{
    let (mut fresh, mut from_send) = (histogram()?, histogram()?);
    let mut writer = Some(writer);
    let mut written = None;
    let mut drained_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if writer.as_ref().is_some_and(|w| w.is_finished())
            && let Some(w) = writer.take()
        {
            written = Some(w.await??);
            drained_since = Some(Instant::now());
        }
        let waiting: Vec<(Uuid, Instant, Instant)> = {
            let pending = pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            pending
                .iter()
                .map(|(id, (sent, answered))| (*id, *sent, *answered))
                .collect()
        };
        if waiting.is_empty() {
            if written.is_some() {
                break;
            }
            continue;
        }
        let seen = probe(&waiting).await?;
        let mut pending = pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for (order, at) in seen {
            if let Some((sent, answered)) = pending.remove(&order) {
                fresh.record(at.duration_since(answered).as_micros().max(1) as u64)?;
                from_send.record(at.duration_since(sent).as_micros().max(1) as u64)?;
            }
        }
        if drained_since.is_some_and(|t| t.elapsed() > DRAIN) {
            break;
        }
    }
    let never_seen = pending.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.len() as u64;
    Ok(Watched {
        written: written.context("the writer did not finish")?,
        fresh,
        from_send,
        never_seen,
    })
}

/// Places `total` orders at `rate` with `place` (given a random source; answers the order's id
/// and whether it was created), each timed from its scheduled send, so that a slow answer
/// delays no later measurement. Created orders go into `pending` with their send and answer
/// times. Answers how many were created and refused, the seconds it took, and the commands'
/// latency.
pub(crate) async fn place_at_rate<F, Fut>(
    place: F,
    pending: Pending,
    rate: u64,
    total: u64,
    seed: u64,
) -> anyhow::Result<Written>
where
    F: Fn(Rng) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Uuid, bool)>> + Send + 'static,
{
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut rng = Rng::new(seed ^ 0x5eed);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + period.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        let placing = place(Rng::new(rng.below(usize::MAX) as u64));
        let (pending, slots) = (pending.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = slots.acquire_owned().await?;
            let sent = scheduled.into_std();
            let placed = placing.await;
            let answered = Instant::now();
            if let Ok((order, true)) = placed {
                pending
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .insert(order, (sent, answered));
                return anyhow::Ok(Some(answered - sent));
            }
            anyhow::Ok(None)
        }));
    }
    let mut hist = histogram()?;
    let (mut placed, mut failed) = (0_u64, 0_u64);
    for t in tasks {
        match t.await?? {
            Some(latency) => {
                placed += 1;
                hist.record(latency.as_micros().max(1) as u64)?;
            }
            None => failed += 1,
        }
    }
    Ok((placed, failed, started.elapsed().as_secs_f64(), hist))
}
