//! What the harness asks of each system measured: orderflow and the three peers.

use std::future::Future;

use clap::ValueEnum;
use serde::Serialize;

use crate::harness::{ConflictProbe, Outcome};
use crate::pg::Scratch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SystemName {
    Orderflow,
    CqrsEs,
    Disintegrate,
    Esrs,
}

impl SystemName {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SystemName::Orderflow => "orderflow",
            SystemName::CqrsEs => "cqrs-es",
            SystemName::Disintegrate => "disintegrate",
            SystemName::Esrs => "esrs",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Workload {
    /// One command, one event (orderflow: two, see the notes), on a new aggregate.
    Place,
    /// Place, confirm and ship the same order: one operation is the three commands.
    Lifecycle,
    /// Writers restocking one product, all at once.
    Contention,
    /// Reading N seeded events in global order.
    CatchUp,
    /// orderflow's store alone: one event of 250 bytes per commit.
    Appends,
    /// The one-row INSERT from sqlx and pgbench: what the server's commits allow.
    Ceiling,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Place => "place",
            Workload::Lifecycle => "lifecycle",
            Workload::Contention => "contention",
            Workload::CatchUp => "catch-up",
            Workload::Appends => "appends",
            Workload::Ceiling => "ceiling",
        }
    }
}

/// What a catch-up run measured.
pub(crate) struct CatchUp {
    pub(crate) database: String,
    pub(crate) seeded: u64,
    pub(crate) seed_seconds: f64,
    pub(crate) read: u64,
    pub(crate) read_seconds: f64,
}

/// Settings every system opens with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Snapshot frequency, in events, for those that have snapshots: orderflow's default.
    pub(crate) snapshot_every: u64,
}

/// A system on databases of its own, ready for one run of one workload.
pub(crate) trait System: Sized + Send + Sync + 'static {
    /// Creates its databases in `scratch` and whatever the workload needs before it starts
    /// (orderflow's customers and products, the hot product of the contention workload).
    /// `writers` sizes its pools: writers plus a few.
    fn open(
        scratch: &mut Scratch,
        workload: Workload,
        writers: usize,
        settings: Settings,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Places a new order (`place`).
    fn place(&self, writer: usize, seq: u64) -> impl Future<Output = Outcome> + Send;

    /// Places, confirms and ships a new order (`lifecycle`).
    fn lifecycle(&self, writer: usize, seq: u64) -> impl Future<Output = Outcome> + Send;

    /// Restocks the hot product by one unit (`contention`).
    fn restock(&self, writer: usize, seq: u64) -> impl Future<Output = Outcome> + Send;

    /// Conflicts it counts itself (orderflow's handler retries where the harness cannot see).
    fn probe(&self) -> ConflictProbe {
        None
    }

    /// The databases to `ANALYZE` between warm-up and measurement.
    fn databases(&self) -> Vec<String>;

    /// Events stored by `open` that the workload's count includes (the hot product's first).
    fn seeded_events(&self) -> u64;

    /// Events its tables hold now, for the row check: (database, SQL answering one bigint).
    fn count_query(&self) -> (String, String);

    /// The average stored size of its events' payloads: (database, SQL answering one float8).
    fn payload_query(&self) -> (String, String);

    /// Events one successful operation of `workload` stores: one per command.
    fn events_per_op(&self, workload: Workload) -> u64 {
        match workload {
            Workload::Lifecycle => 3,
            _ => 1,
        }
    }

    /// Closes its pools (before its databases are dropped).
    fn close(self) -> impl Future<Output = ()> + Send;
}
