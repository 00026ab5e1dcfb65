//! The demo shop of `serve --demo`: EMPTY event stores get a simulated history (customers,
//! products, orders through the place-order saga and their lifecycle over four weeks ending
//! today, their payments authorized, captured, declined, voided or refunded, renames,
//! cancellations), each service's events in its own store, with a progress bar on stderr. No
//! seeded saga is left with work to do, and the saga driver's checkpoint is left at the orders
//! store's head. Stores that hold anything are left alone, so a restart never seeds twice.

use chrono::{Days, Utc};
use std::collections::BTreeMap;

use event_schemas::Service;
use event_store::Position;
use projections::ServiceLog;
use tokio_util::sync::CancellationToken;

use crate::seed::{self, SeedError, SeedOptions};

/// Length of the seeded history, in simulated days; it ends at today's midnight (UTC).
const DEMO_DAYS: u32 = 28;

/// The seeder's options for a demo shop of about `events` events: one customer per 50 events and
/// one product per 500, like `bench rebuild`, so orders repeat customers and products sell out.
fn seed_options(events: u64) -> SeedOptions {
    let today = Utc::now().date_naive().and_time(chrono::NaiveTime::MIN).and_utc();
    SeedOptions {
        events,
        days: DEMO_DAYS,
        customers: (events / 50).max(100) as usize,
        products: (events / 500).max(20) as usize,
        start: today
            .checked_sub_days(Days::new(u64::from(DEMO_DAYS)))
            .unwrap_or_else(crate::seed::default_start),
        batch_events: 2_000,
        ..SeedOptions::default()
    }
}

/// Seeds the demo shop if every store of `logs` is empty (head position 0). Answers each
/// service's head after seeding, or `None` when nothing was seeded (a store held events, or
/// `shutdown` came first: the commits made so far stay, a valid shorter history, and the next
/// start will not seed).
pub async fn seed_if_empty(
    logs: &[ServiceLog],
    events: u64,
    shutdown: &CancellationToken,
) -> Result<Option<BTreeMap<Service, Position>>, SeedError> {
    let head = heads(logs).await?.into_values().max().unwrap_or(0);
    if head > 0 {
        tracing::info!(
            head,
            "the event store already holds events: not seeding the demo shop again"
        );
        return Ok(None);
    }
    let options = seed_options(events);
    tracing::info!(
        events,
        customers = options.customers,
        products = options.products,
        days = options.days,
        "seeding the demo shop"
    );
    let seeding = seed::seed_with_progress(logs, &options, "seeding the demo shop");
    let report = tokio::select! {
        report = seeding => report?,
        () = shutdown.cancelled() => {
            tracing::warn!("seeding interrupted by shutdown: the store keeps what was committed, \
                            and will not be seeded again (delete the data directory to start over)");
            return Ok(None);
        }
    };
    tracing::info!(
        events = report.events,
        orders = report.orders,
        customers = report.customers,
        products = report.products,
        delivered = report.delivered,
        cancelled = report.cancelled,
        payments = report.payments,
        declined = report.declined,
        refunded = report.refunded,
        seconds = format_args!("{:.1}", report.seconds),
        events_per_second = format_args!("{:.0}", report.events_per_second),
        "seeded the demo shop; the read models are catching up"
    );
    Ok(Some(heads(logs).await?))
}

/// Each service's head position.
async fn heads(logs: &[ServiceLog]) -> Result<BTreeMap<Service, Position>, SeedError> {
    let mut heads = BTreeMap::new();
    for log in logs {
        let head = log
            .store
            .head_position()
            .await
            .map_err(|e| SeedError::Store(e.into()))?;
        heads.insert(log.service, head);
    }
    Ok(heads)
}
