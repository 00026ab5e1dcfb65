//! `orderflow bench relay`: a backlog published from a PostgreSQL store to the broker
//! (throughput), then a steady append rate (append → acknowledged latency).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent, PgEventStore};
use hdrhistogram::Histogram;
use relay::{RelayConfig, RelayStatus};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::load::print_json;
use crate::scratch::{Adapter, Target};

#[derive(Debug, Args)]
pub struct RelayBench {
    /// Events in the backlog published first (throughput).
    #[arg(long, default_value_t = 200_000, env = "ORDERFLOW_BENCH_EVENTS")]
    events: usize,
    /// Steady append rate (events/s) for the latency phase.
    #[arg(long, default_value_t = 2_000, env = "ORDERFLOW_BENCH_RATE")]
    rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092", env = "ORDERFLOW_KAFKA_BROKERS")]
    kafka_brokers: String,
    /// A PostgreSQL server URL; the benchmark creates its own database there and drops it after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
}

pub(crate) async fn run(b: RelayBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.events > 0 && b.rate > 0 && b.seconds > 0,
        "--events, --rate and --seconds must be positive"
    );
    let target = Target::create(Adapter::Postgres, &b.pg_url).await?;
    let result = measure(&b, &target).await;
    target.drop_all().await;
    print_json(&result?)
}

/// Appends held until the relay acknowledges them: (position, appended at).
type Appended = Arc<std::sync::Mutex<VecDeque<(u64, Instant)>>>;

/// Both phases on `target`'s store: the backlog's throughput, then the steady rate's latency.
async fn measure(b: &RelayBench, target: &Target) -> anyhow::Result<serde_json::Value> {
    let store = target.open_pg().await?;
    seed_backlog(&store, b.events).await?;
    let head = store.head_position().await?;
    let mut relay = Relay::start(store.clone(), &b.kafka_brokers).await?;
    eprintln!("publishing the backlog …");
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(600),
        relay.status.wait_for(|s| s.checkpoint >= head),
    )
    .await??;
    let backlog_secs = started.elapsed().as_secs_f64();

    eprintln!(
        "steady {} events/s for {}s, measuring append → acknowledged …",
        b.rate, b.seconds
    );
    let appended: Appended = Arc::new(std::sync::Mutex::new(VecDeque::new()));
    let writer = tokio::spawn(append_steadily(store.clone(), appended.clone(), b.rate, b.seconds));
    let (hist, measured) = time_acknowledgements(&writer, &appended, &mut relay.status).await?;
    writer.await??;
    relay.stop.cancel();
    relay.task.await??;
    report(b, head, backlog_secs, &hist, measured)
}

/// Appends `events` registrations, each to its own stream, 64 at a time.
async fn seed_backlog(store: &PgEventStore, events: usize) -> anyhow::Result<()> {
    eprintln!("seeding a backlog of {events} events …");
    let mut left = events;
    while left > 0 {
        let mut batch = Vec::new();
        for _ in 0..left.min(64) {
            let store = store.clone();
            batch.push(tokio::spawn(async move {
                let (stream, event) = registration();
                store.append(&stream, ExpectedVersion::NoStream, vec![event]).await
            }));
        }
        left -= batch.len();
        for t in batch {
            t.await??;
        }
    }
    Ok(())
}

/// The relay under test, running in a task of this process.
struct Relay {
    task: tokio::task::JoinHandle<Result<(), relay::RelayError>>,
    status: tokio::sync::watch::Receiver<RelayStatus>,
    stop: CancellationToken,
}

impl Relay {
    /// Starts a relay on `store` publishing to topics of its own, and waits until it is ready.
    async fn start(store: PgEventStore, brokers: &str) -> anyhow::Result<Self> {
        let config = RelayConfig {
            brokers: brokers.to_owned(),
            topic_prefix: format!("bench_{}.", Uuid::new_v4().simple()),
            ..RelayConfig::default()
        };
        let (status_tx, mut status) = tokio::sync::watch::channel(RelayStatus::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay::run(store, config, status_tx, stop.clone()));
        tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.ready)).await??;
        Ok(Relay { task, status, stop })
    }
}

/// Appends `rate` events/s for `seconds`, in ticks of 10 ms, pushing each one's position and
/// start time into `appended`.
async fn append_steadily(store: PgEventStore, appended: Appended, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tick.tick().await;
        // This tick's appends go out together, as independent clients would send them.
        let appends = (0..per_tick).map(|_| {
            let (stream, event) = registration();
            let store = store.clone();
            async move {
                let at = Instant::now();
                let c = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
                anyhow::Ok((c.last_position(), at))
            }
        });
        for done in futures::future::join_all(appends).await {
            appended
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push_back(done?);
        }
    }
    anyhow::Ok(())
}

/// Until `writer` is done and every append it made is acknowledged: at each move of the relay's
/// checkpoint, the time from append to that moment of every append at or below it. Answers
/// their histogram and how many were timed.
async fn time_acknowledgements(
    writer: &tokio::task::JoinHandle<anyhow::Result<()>>,
    appended: &Appended,
    status: &mut tokio::sync::watch::Receiver<RelayStatus>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut measured = 0_u64;
    while !writer.is_finished() || !appended.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.is_empty() {
        if tokio::time::timeout(Duration::from_secs(30), status.changed())
            .await
            .is_err()
        {
            anyhow::bail!("the relay made no progress for 30 s");
        }
        let checkpoint = status.borrow_and_update().checkpoint;
        let now = Instant::now();
        let mut queue = appended.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        // Appends finish in any order; sort by position before draining what is acknowledged.
        queue.make_contiguous().sort_unstable_by_key(|(p, _)| *p);
        while queue.front().is_some_and(|(p, _)| *p <= checkpoint) {
            if let Some((_, at)) = queue.pop_front() {
                hist.record(now.duration_since(at).as_micros().max(1) as u64)?;
                measured += 1;
            }
        }
    }
    Ok((hist, measured))
}

/// The JSON document, and the summary line on stderr.
fn report(
    b: &RelayBench,
    head: u64,
    backlog_secs: f64,
    hist: &Histogram<u64>,
    measured: u64,
) -> anyhow::Result<serde_json::Value> {
    let out = serde_json::json!({
        "benchmark": "relay",
        "backlog_events": head,
        "backlog_seconds": backlog_secs,
        "backlog_events_per_sec": head as f64 / backlog_secs,
        "steady_rate": b.rate,
        "steady_events_measured": measured,
        "p50_append_to_ack_ms": hist.value_at_quantile(0.50) as f64 / 1000.0,
        "p99_append_to_ack_ms": hist.value_at_quantile(0.99) as f64 / 1000.0,
        "max_append_to_ack_ms": hist.max() as f64 / 1000.0,
    });
    eprintln!(
        "      backlog {:.0} events/s; steady p50 {:.1} ms, p99 {:.1} ms",
        head as f64 / backlog_secs,
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0
    );
    anyhow::Ok(out)
}

/// A customer registration as the write side would store it.
fn registration() -> (String, NewEvent) {
    let id = Uuid::now_v7();
    let registered = event_schemas::CustomerRegistered {
        customer_id: id,
        name: "Ada Lovelace".into(),
        email: "ada@example.com".into(),
    };
    let mut events = write_side::new_events(&EventMetadata::default(), &[registered]);
    (event_schemas::Category::Customer.stream_id(id), events.remove(0))
}
