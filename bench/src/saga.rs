//! `orderflow bench saga`: orders through the whole place-order saga (placed → stock reserved →
//! payment authorized at the simulated provider, zero latency → confirmed), beside the placement
//! alone in the same run.
//!
//! Three phases per mode, each on fresh databases:
//!
//! 1. the placement alone: C HTTP clients place orders in a closed loop for S seconds with no
//!    saga driver running (the command's throughput and latency);
//! 2. saturation: the same with the driver running, then the run waits for every saga to
//!    settle; the saga's throughput is the orders confirmed per second from the first
//!    placement to the last confirmation;
//! 3. latency: orders placed at a fixed rate, half the throughput of phase 2, so that no
//!    queue builds: placed → confirmed p50 and p99, read from the orders store (the
//!    `order.placed` event's commit time to the `saga.confirmed` event's).
//!
//! Modes: `embedded` (the four services in one process over SQLite files, calling each other
//! in-process, as `orderflow serve`) and `distributed` (each service over its own PostgreSQL
//! database and its own HTTP listener on loopback, the orders service calling the others over
//! HTTP with the service kit's client; one OS process, so no kill or network beyond loopback).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use event_schemas::Service;
use event_store::EventStore;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use write_side::http::{Auth, HttpConfig, HttpState};
use write_side::orders::replica::{self, LiveReplica};
use write_side::orders::{Directory, Orders, Peers, SagaOptions};
use write_side::{CommandHandler, HandlerOptions, Local, LocalOptions, Services};

use crate::commands::{CommandsRun, Load, serve_and_drive, serve_at_rate};
use crate::load::print_json;
use crate::scratch::{Adapter, Target, add_customers, add_products};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    Embedded,
    Distributed,
}

#[derive(Debug, Args)]
pub struct SagaBench {
    /// The deployments measured, one after the other.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "embedded,distributed",
        env = "ORDERFLOW_BENCH_MODES"
    )]
    modes: Vec<Mode>,
    /// Concurrent HTTP clients placing orders.
    #[arg(long, default_value_t = 16, env = "ORDERFLOW_BENCH_CLIENTS")]
    clients: usize,
    /// Seconds each phase places orders.
    #[arg(long, default_value_t = 10, env = "ORDERFLOW_BENCH_SECONDS")]
    seconds: u64,
    /// Products in the catalogue (stock never runs out).
    #[arg(long, default_value_t = 200, env = "ORDERFLOW_BENCH_PRODUCTS")]
    products: usize,
    /// Customers placing the orders.
    #[arg(long, default_value_t = 100, env = "ORDERFLOW_BENCH_CUSTOMERS")]
    customers: usize,
    /// A PostgreSQL server URL (distributed mode); the benchmark creates its databases there
    /// and drops them after.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        env = "ORDERFLOW_BENCH_PG_URL"
    )]
    pg_url: String,
}

#[derive(Debug, Serialize)]
struct SagaRun {
    /// Orders placed while the driver ran.
    placed: u64,
    /// Of those, confirmed by their saga (the rest were cancelled: none should be here).
    confirmed: u64,
    /// Orders confirmed per second, from the first placement to the last confirmation.
    confirmed_per_sec: f64,
    placed_to_confirmed_p50_ms: f64,
    placed_to_confirmed_p99_ms: f64,
    placed_to_confirmed_max_ms: f64,
    /// How long the sagas took to settle after the clients stopped.
    drain_seconds: f64,
    /// The placement command while the driver runs.
    placement: CommandsRun,
}

#[derive(Debug, Serialize)]
struct ModeReport {
    mode: Mode,
    /// The reference: placing orders with no saga running.
    placement_alone: CommandsRun,
    /// Closed loop, the driver running: the saga's throughput.
    saturation: SagaRun,
    /// At half the saturation throughput: the saga's latency.
    at_fixed_rate: SagaRun,
    /// The offered rate of `at_fixed_rate`, orders per second.
    fixed_rate: f64,
    /// Saga throughput ÷ placement alone (target ≥ 0.5).
    throughput_ratio: f64,
    /// Placed → confirmed p99 at the fixed rate ÷ the placement command's own p99 alone
    /// (target ≤ 5).
    p99_ratio: f64,
}

pub(crate) async fn run(b: SagaBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        b.seconds > 0 && b.products > 0 && b.customers > 0 && b.clients > 0,
        "--seconds, --products, --customers and --clients must be positive"
    );
    let mut reports = Vec::new();
    for &mode in &b.modes {
        eprintln!("[{mode:?}] placement alone: {} clients, {}s …", b.clients, b.seconds);
        let alone = placement_alone(&b, mode).await?;
        eprintln!(
            "      {:>8.0} orders/s  p50 {:.2} ms  p99 {:.2} ms",
            alone.commands_per_sec, alone.p50_ms, alone.p99_ms
        );
        eprintln!(
            "[{mode:?}] through the saga, saturated: {} clients, {}s, then the drain …",
            b.clients, b.seconds
        );
        let saturation = phase(&b, mode, Drive::Closed).await?;
        eprintln!(
            "      {:>8.0} confirmed/s  placed→confirmed p50 {:.2} ms  p99 {:.2} ms  (drain {:.1}s)",
            saturation.confirmed_per_sec,
            saturation.placed_to_confirmed_p50_ms,
            saturation.placed_to_confirmed_p99_ms,
            saturation.drain_seconds
        );
        let rate = (saturation.confirmed_per_sec / 2.0).max(1.0);
        eprintln!("[{mode:?}] through the saga at {rate:.0} orders/s, {}s …", b.seconds);
        let at_rate = phase(&b, mode, Drive::Rate(rate)).await?;
        eprintln!(
            "      {:>8.0} confirmed/s  placed→confirmed p50 {:.2} ms  p99 {:.2} ms",
            at_rate.confirmed_per_sec, at_rate.placed_to_confirmed_p50_ms, at_rate.placed_to_confirmed_p99_ms
        );
        reports.push(ModeReport {
            mode,
            throughput_ratio: saturation.confirmed_per_sec / alone.commands_per_sec,
            p99_ratio: at_rate.placed_to_confirmed_p99_ms / alone.p99_ms,
            placement_alone: alone,
            saturation,
            at_fixed_rate: at_rate,
            fixed_rate: rate,
        });
    }
    print_json(&serde_json::json!({
        "benchmark": "saga",
        "clients": b.clients,
        "seconds": b.seconds,
        "gateway": "simulated, zero latency, no declines",
        "modes": reports,
    }))
}

/// How a phase places its orders.
#[derive(Debug, Clone, Copy)]
enum Drive {
    /// No saga driver: the placement alone, closed loop.
    Alone,
    /// The driver running, closed loop.
    Closed,
    /// The driver running, this many orders per second.
    Rate(f64),
}

async fn placement_alone(b: &SagaBench, mode: Mode) -> anyhow::Result<CommandsRun> {
    Ok(phase_targets(b, mode, Drive::Alone).await?.0)
}

async fn phase(b: &SagaBench, mode: Mode, drive: Drive) -> anyhow::Result<SagaRun> {
    phase_targets(b, mode, drive)
        .await?
        .1
        .ok_or_else(|| anyhow::anyhow!("the saga phase measured no saga"))
}

/// One phase on fresh databases: the placement's figures, and with a driver the sagas'.
async fn phase_targets(b: &SagaBench, mode: Mode, drive: Drive) -> anyhow::Result<(CommandsRun, Option<SagaRun>)> {
    let adapter = match mode {
        Mode::Embedded => Adapter::Sqlite,
        Mode::Distributed => Adapter::Postgres,
    };
    let mut targets = Vec::new();
    for _ in 0..=Service::ALL.len() {
        targets.push(Target::create(adapter, &b.pg_url).await?);
    }
    let result = phase_on(b, mode, drive, &targets).await;
    for target in &targets {
        target.drop_all().await;
    }
    result
}

async fn phase_on(
    b: &SagaBench,
    mode: Mode,
    drive: Drive,
    targets: &[Target],
) -> anyhow::Result<(CommandsRun, Option<SagaRun>)> {
    let driver = !matches!(drive, Drive::Alone);
    let mut stores: Vec<(Service, Arc<dyn EventStore>)> = Vec::new();
    for (service, target) in Service::ALL.into_iter().zip(targets) {
        stores.push((service, target.open().await?));
    }
    let store_of = |service: Service| {
        stores
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, store)| Arc::clone(store))
            .expect("a store per service")
    };
    let orders_store = store_of(Service::Orders);
    let replica_db = projections::ReadDb::open(
        &targets[Service::ALL.len()].url(),
        service_kit::db::PoolSettings::READ_DB,
    )
    .await?;
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut tasks = tokio::task::JoinSet::new();
    let (app, customers_handler, inventory_handler) = match mode {
        Mode::Embedded => {
            let local = Local::with_options(stores.clone(), replica_db.clone(), LocalOptions::default()).await?;
            if driver {
                let (local, stop) = (local.clone(), stop.clone());
                tasks.spawn(async move { local.run_sagas(stop).await });
            }
            let app = write_side::http::router(local.http_state(HttpConfig::new(Auth::Disabled)));
            (
                app,
                local.handler(Service::Customers).clone(),
                local.handler(Service::Inventory).clone(),
            )
        }
        Mode::Distributed => {
            let handler = |service| CommandHandler::new(store_of(service), HandlerOptions::default());
            let mut peers = HashMap::new();
            for service in [Service::Customers, Service::Inventory, Service::Payments] {
                let state = HttpState::new(
                    Services::single(service, handler(service)),
                    HttpConfig::new(Auth::Disabled),
                );
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let address = listener.local_addr()?;
                let stopped = stop.clone();
                tasks.spawn(async move {
                    let _ = write_side::http::serve_on(
                        listener,
                        write_side::http::router(state),
                        Duration::from_secs(1),
                        stopped.cancelled_owned(),
                    )
                    .await;
                });
                let settings = service_kit::client::ClientSettings::new(
                    service.name(),
                    service_kit::client::Target::http(&format!("http://{address}"))?,
                );
                peers.insert(service, service_kit::client::ServiceClient::new(settings)?);
            }
            replica_db.migrate().await?;
            let version = replica_db.ensure_live(replica::NAME, 1).await?;
            projections::Projection::prepare(&replica::Replica::new(replica_db.clone(), version)).await?;
            let peers = Peers {
                customers: peers[&Service::Customers].clone(),
                inventory: peers[&Service::Inventory].clone(),
                payments: peers[&Service::Payments].clone(),
            };
            let directory = Directory::new(
                LiveReplica::new(replica_db.clone()),
                peers.customers.clone(),
                peers.inventory.clone(),
            );
            let orders_handler = CommandHandler::new(Arc::clone(&orders_store), HandlerOptions::default());
            let (orders, saga_driver) = Orders::new(orders_handler.clone(), directory, peers, SagaOptions::default());
            if driver {
                let stop = stop.clone();
                tasks.spawn(async move { saga_driver.run(stop).await });
            }
            let state = HttpState::new(
                Services::single(Service::Orders, orders_handler),
                HttpConfig::new(Auth::Disabled),
            )
            .with_orders(orders);
            // The commands below go to the owners' stores directly, as seeding.
            (
                write_side::http::router(state),
                handler(Service::Customers),
                handler(Service::Inventory),
            )
        }
    };
    eprintln!("      seeding {} customers and {} products …", b.customers, b.products);
    let customers = add_customers(&customers_handler, b.customers).await?;
    let products = add_products(&inventory_handler, b.products).await?;
    // The orders service's copy caught up, as in steady state (a miss costs a call).
    let logs: Vec<projections::ServiceLog> = [Service::Customers, Service::Inventory]
        .into_iter()
        .map(|s| projections::ServiceLog::new(s, store_of(s)))
        .collect();
    {
        let (logs, db, stop) = (logs.clone(), replica_db.clone(), stop.clone());
        tasks.spawn(async move {
            let _ = projections::run_from_stores(
                logs,
                db.clone(),
                replica::factory(db),
                projections::RunOptions::default(),
                stop,
            )
            .await;
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let progress = replica_db.progress(replica::NAME, 1).await?;
        let mut caught_up = true;
        for log in &logs {
            caught_up &= projections::applied_position(&progress, log.service) >= log.store.head_position().await?;
        }
        if caught_up {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the orders service's copy did not catch up in 60s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let head = orders_store.head_position().await?;
    let load = Load::orders(customers, products);
    let placement = match drive {
        Drive::Rate(rate) => serve_at_rate(app, rate, &load, b.seconds).await?,
        Drive::Alone | Drive::Closed => serve_and_drive(app, b.clients, &load, b.seconds).await?,
    };
    if !driver {
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        return Ok((placement, None));
    }
    let clients_stopped = Instant::now();
    let (placed, settled) = wait_settled(&orders_store, head).await?;
    let drain_seconds = clients_stopped.elapsed().as_secs_f64();
    stop.cancel();
    while tasks.join_next().await.is_some() {}

    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut first_placed: Option<DateTime<Utc>> = None;
    let mut last_confirmed: Option<DateTime<Utc>> = None;
    let mut confirmed = 0_u64;
    for (order, at) in &placed {
        first_placed = Some(first_placed.map_or(*at, |f| f.min(*at)));
        if let Some(done) = settled.get(order) {
            confirmed += 1;
            last_confirmed = Some(last_confirmed.map_or(*done, |l| l.max(*done)));
            let micros = (*done - *at).num_microseconds().unwrap_or(0).max(1);
            hist.record(micros as u64)?;
        }
    }
    let span = match (first_placed, last_confirmed) {
        (Some(first), Some(last)) => (last - first).num_microseconds().unwrap_or(1).max(1) as f64 / 1e6,
        _ => anyhow::bail!("no order was confirmed"),
    };
    Ok((
        placement.clone(),
        Some(SagaRun {
            placed: placed.len() as u64,
            confirmed,
            confirmed_per_sec: confirmed as f64 / span,
            placed_to_confirmed_p50_ms: hist.value_at_quantile(0.50) as f64 / 1000.0,
            placed_to_confirmed_p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
            placed_to_confirmed_max_ms: hist.max() as f64 / 1000.0,
            drain_seconds,
            placement,
        }),
    ))
}

/// Reads the orders log after `head` until every order placed has its saga confirmed or
/// completed (at most five minutes): each order's placement time, and its confirmation time.
#[allow(clippy::type_complexity)]
async fn wait_settled(
    store: &Arc<dyn EventStore>,
    head: u64,
) -> anyhow::Result<(HashMap<Uuid, DateTime<Utc>>, HashMap<Uuid, DateTime<Utc>>)> {
    let mut placed = HashMap::new();
    let mut confirmed = HashMap::new();
    let mut ended = 0_usize;
    let mut after = head;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let events = store.read_all(after, 5_000).await?;
        for e in &events {
            after = e.position;
            let Ok((_, id)) = event_schemas::parse_stream_id(&e.stream_id) else {
                continue;
            };
            match e.event_type.as_str() {
                "order.placed" => {
                    placed.insert(id, e.recorded_at);
                }
                "saga.confirmed" => {
                    confirmed.insert(id, e.recorded_at);
                }
                // A saga that ends without a confirmation (none expected here) ends all the same.
                "saga.completed" if !confirmed.contains_key(&id) => ended += 1,
                _ => {}
            }
        }
        if !placed.is_empty() && confirmed.len() + ended >= placed.len() {
            return Ok((placed, confirmed));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sagas did not settle within 5 minutes: {} of {} confirmed",
            confirmed.len(),
            placed.len()
        );
        if events.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
