//! An embedded event store in a SQLite file of its own, for the tests that run on the embedded
//! adapter.

use std::path::Path;

use event_store::{SqliteEventStore, StoreOptions};

/// A migrated, open store in a new file under the temporary directory, named after `prefix`.
pub async fn store(prefix: &str) -> SqliteEventStore {
    let path = std::env::temp_dir().join(format!("{}.db", crate::unique_name(prefix)));
    store_at(&path).await
}

/// A migrated, open store in the file at `path` (created if missing).
pub async fn store_at(path: &Path) -> SqliteEventStore {
    let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(path))
        .await
        .unwrap_or_else(|e| panic!("cannot open the SQLite store {}: {e}", path.display()));
    SqliteEventStore::migrate(&pool)
        .await
        .unwrap_or_else(|e| panic!("cannot migrate the SQLite store {}: {e}", path.display()));
    SqliteEventStore::open(pool, StoreOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot open the SQLite store {}: {e}", path.display()))
}
