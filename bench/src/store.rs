//! `orderflow bench store`: appends per second and their latency, N concurrent writers × events
//! per append, per adapter, each run on a database of its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use clap::Args;
use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent};
use hdrhistogram::Histogram;
use serde::Serialize;
use uuid::Uuid;

use crate::load::print_json;
use crate::scratch::{Adapter, Target};

#[derive(Debug, Args)]
pub struct StoreBench {
    /// Adapters to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "postgres,sqlite",
        env = "ORDERFLOW_BENCH_ADAPTERS"
    )]
    adapters: Vec<Adapter>,
    /// Concurrent writers (tasks appending in a loop), one run per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,16,64",
        env = "ORDERFLOW_BENCH_WRITERS"
    )]
    writers: Vec<usize>,
    /// Events per append, one run per value.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10",
        env = "ORDERFLOW_BENCH_EVENTS_PER_APPEND"
    )]
    events_per_append: Vec<usize>,
    /// Seconds each run lasts.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Payload bytes per event (a typical order event encodes to 100-300 bytes).
    #[arg(long, default_value_t = 200, env = "ORDERFLOW_BENCH_PAYLOAD_BYTES")]
    payload_bytes: usize,
    /// A PostgreSQL server URL; the benchmark creates its own database there and drops it after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
}

#[derive(Debug, Serialize)]
struct StoreRun {
    adapter: Adapter,
    writers: usize,
    events_per_append: usize,
    seconds: f64,
    appends: u64,
    events: u64,
    appends_per_sec: f64,
    events_per_sec: f64,
    p50_append_ms: f64,
    p99_append_ms: f64,
    max_append_ms: f64,
}

pub(crate) async fn run(b: StoreBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.seconds > 0, "--seconds must be at least 1");
    anyhow::ensure!(b.writers.iter().all(|&w| w > 0), "--writers must be positive");
    anyhow::ensure!(
        b.events_per_append.iter().all(|&e| e > 0),
        "--events-per-append must be positive"
    );
    let mut runs = Vec::new();
    let total = b.adapters.len() * b.writers.len() * b.events_per_append.len();
    let mut n = 0;
    for &adapter in &b.adapters {
        for &writers in &b.writers {
            for &per_append in &b.events_per_append {
                n += 1;
                eprintln!(
                    "[{n}/{total}] {adapter:?}: {writers} writers × {per_append} events per append, {}s …",
                    b.seconds
                );
                let target = Target::create(adapter, &b.pg_url).await?;
                let store = target.open().await?;
                let run = measure(store, adapter, writers, per_append, &b).await;
                target.drop_all().await;
                let run = run?;
                eprintln!(
                    "      {:>10.0} events/s  p50 {:.2} ms  p99 {:.2} ms",
                    run.events_per_sec, run.p50_append_ms, run.p99_append_ms
                );
                runs.push(run);
            }
        }
    }
    print_json(&serde_json::json!({ "benchmark": "store", "runs": runs }))
}

async fn measure(
    store: Arc<dyn EventStore>,
    adapter: Adapter,
    writers: usize,
    per_append: usize,
    b: &StoreBench,
) -> anyhow::Result<StoreRun> {
    let payload = vec![0x5a_u8; b.payload_bytes];
    let deadline = Instant::now() + Duration::from_secs(b.seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let store = store.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut appends = 0_u64;
            while Instant::now() < deadline {
                // Each writer owns 100 streams, like a client working on many orders.
                let stream = format!("bench-{w}-{}", appends % 100);
                let events = (0..per_append)
                    .map(|_| NewEvent {
                        event_id: Uuid::new_v4(),
                        event_type: "bench.appended".into(),
                        schema_version: 1,
                        payload: payload.clone(),
                        occurred_at: Utc::now(),
                        metadata: EventMetadata::default(),
                    })
                    .collect();
                let t = Instant::now();
                store.append(&stream, ExpectedVersion::Any, events).await?;
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                appends += 1;
            }
            anyhow::Ok((appends, hist))
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut appends = 0;
    for t in tasks {
        let (n, h) = t.await??;
        appends += n;
        hist.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let events = appends * per_append as u64;
    Ok(StoreRun {
        adapter,
        writers,
        events_per_append: per_append,
        seconds: secs,
        appends,
        events,
        appends_per_sec: appends as f64 / secs,
        events_per_sec: events as f64 / secs,
        p50_append_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
        p99_append_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_append_ms: hist.max() as f64 / 1000.0,
    })
}
