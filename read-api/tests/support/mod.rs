//! What several of the read API's tests share.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses part of it

use projections::analytics::SalesAnalytics;
use projections::dashboard::OrderDashboard;
use projections::{Projection, ReadDb};

/// A read database of its own (SQLite, named after `name`), migrated, with version 1 of the
/// dashboard and of the analytics prepared and live: every read route answers from it.
pub(crate) async fn live_read_db(name: &str) -> ReadDb {
    let path = std::env::temp_dir().join(format!("{}.db", testkit::unique_name(name)));
    let db = ReadDb::connect(&format!("sqlite://{}", path.display()), 2)
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let dashboard = OrderDashboard::new(db.clone(), 1);
    let analytics = SalesAnalytics::sqlite(db.clone(), 1);
    for projection in [&dashboard as &dyn Projection, &analytics] {
        projection.prepare().await.unwrap();
        db.ensure_live(projection.name(), 1).await.unwrap();
    }
    db
}
