//! Leadership among processes that share a PostgreSQL event store.
//!
//! A lease is a session-level advisory lock held on a connection of its own. Exactly one
//! session can hold it; when the holder's process dies, PostgreSQL ends its session and the
//! lock is free at once, so a waiting process takes over within its retry interval. A holder
//! that loses its connection (network, server restart) loses the lease: it must [`check`]
//! before each unit of work and stop when the check fails.
//!
//! [`check`]: PgLease::check

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use crate::{PgEventStore, StoreError};

/// A held lease. Dropping it closes its connection, which releases it.
pub struct PgLease {
    conn: PgConnection,
    name: String,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The advisory-lock key of a lease name: FNV-1a over `orderflow-lease:` + name, stable across
/// builds (unlike `std`'s hasher) so every version of orderflow agrees on it.
pub(crate) fn lease_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "orderflow-lease:".bytes().chain(name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

impl PgEventStore {
    /// Takes the lease `name` if nobody holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<PgLease>, StoreError> {
        let mut conn = self.pool().acquire().await?.detach();
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lease_key(name))
            .fetch_one(&mut conn)
            .await?;
        if held {
            Ok(Some(PgLease {
                conn,
                name: name.to_owned(),
            }))
        } else {
            conn.close().await.ok();
            Ok(None)
        }
    }

    /// Waits until the lease `name` is free and takes it, trying every `retry`.
    pub async fn lease(&self, name: &str, retry: Duration) -> Result<PgLease, StoreError> {
        let mut waiting = false;
        loop {
            if let Some(lease) = self.try_lease(name).await? {
                return Ok(lease);
            }
            if !waiting {
                tracing::info!(lease = name, "another process holds the lease; waiting to take over");
                waiting = true;
            }
            tokio::time::sleep(retry).await;
        }
    }
}

impl PgLease {
    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lease is still held: its connection answers within `timeout`.
    pub async fn check(&mut self, timeout: Duration) -> bool {
        matches!(tokio::time::timeout(timeout, self.conn.ping()).await, Ok(Ok(())))
    }

    /// Gives the lease up.
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await;
        self.conn.close().await.ok();
    }
}
