//! The projections this build knows, by name, with the sinks they write and the topics they
//! read: what the CLI, the embedded server and the workers share to build them.

use std::sync::Arc;

use event_schemas::Category;

use crate::analytics::{self, SalesAnalytics};
use crate::dashboard::{self, OrderDashboard};
use crate::{Projection, ProjectionError, ProjectionFactory, ReadDb};

/// Every projection name, in the order they are listed.
pub const NAMES: [&str; 2] = [dashboard::NAME, analytics::NAME];

/// Where the projections write.
#[derive(Clone)]
pub struct Sinks {
    /// The SQL read database: the dashboard's tables and every projection's control tables
    /// (and, embedded, the analytics tables too).
    pub read_db: ReadDb,
    /// ClickHouse for the analytics (distributed); `None` keeps them in `read_db` (embedded).
    pub clickhouse: Option<clickhouse::Client>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sinks")
            .field("read_db", &self.read_db.kind())
            .field("clickhouse", &self.clickhouse.is_some())
            .finish()
    }
}

/// Builds the projection called `name` over `sinks`.
pub fn factory(name: &str, sinks: &Sinks) -> Result<ProjectionFactory, ProjectionError> {
    let db = sinks.read_db.clone();
    match name {
        dashboard::NAME => Ok(Arc::new(move |version| {
            Arc::new(OrderDashboard::new(db.clone(), version)) as Arc<dyn Projection>
        })),
        analytics::NAME => match sinks.clickhouse.clone() {
            Some(client) => Ok(Arc::new(move |version| {
                Arc::new(SalesAnalytics::clickhouse(client.clone(), db.clone(), version)) as Arc<dyn Projection>
            })),
            None => Ok(Arc::new(move |version| {
                Arc::new(SalesAnalytics::sqlite(db.clone(), version)) as Arc<dyn Projection>
            })),
        },
        other => Err(ProjectionError::Invalid(format!(
            "unknown projection {other:?}; known: {}",
            NAMES.join(", ")
        ))),
    }
}

/// The categories whose topics a projection's workers read: all of them, for every projection.
///
/// A projection ignores the events it has no use for (the dashboard has none for products, the
/// analytics none for products or the place-order saga's), but it still reads them: "applied
/// position N" (see [`crate::applied_position`]) must be provable for every position the store
/// hands out, and a command's answer may carry the position of a product or saga event (the
/// orders log holds both orders and sagas). A projection that skipped a topic could never show
/// it has gone past such a position, and a read with that `min_position` would wait in vain.
pub fn categories(name: &str) -> &'static [Category] {
    match name {
        dashboard::NAME | analytics::NAME => &Category::ALL,
        _ => &[],
    }
}

/// How long a Kafka worker's batch waits for more events, unless configured: none for the
/// dashboard, whose freshness the read API promises; 500 ms for the analytics, because
/// ClickHouse wants few large inserts (every insert is a part that background merges must
/// fold again; small frequent ones cost ClickHouse more CPU than the rest of the pipeline).
pub fn default_linger(name: &str) -> std::time::Duration {
    match name {
        analytics::NAME => std::time::Duration::from_millis(500),
        _ => std::time::Duration::ZERO,
    }
}
