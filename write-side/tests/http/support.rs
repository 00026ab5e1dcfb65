//! Helpers of the HTTP tests: an [`App`] (the four services' router over a real event store, a
//! fresh PostgreSQL database per test or a fresh SQLite file, which every service's streams share
//! so that a test sees all that was appended in one log; the orders service calls the inventory,
//! customers and payments services in-process as in `orderflow serve`, and its saga driver runs
//! once a test starts it: [`App::run_sagas`]), requests through `oneshot`, waiting on a
//! condition with a deadline ([`eventually`]), and a [`FaultyStore`] that makes the store slow,
//! failing or corrupt.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use chrono::Utc;
use event_schemas::Service;
use event_store::{
    AppendError, Commit, Committed, EventMetadata, EventStore, IdempotentResult, PgEventStore, Position, RecordedEvent,
    Snapshot, SqliteEventStore, StoreError, StoreOptions, Until,
};
use projections::ReadDb;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use uuid::Uuid;
use write_side::domain::saga::Saga;
use write_side::http::{Auth, HttpConfig, router};
use write_side::{CommandHandler, HandlerOptions, Local};

#[path = "../common/mod.rs"]
mod common;

pub(crate) use common::eventually;

/// The API over a store, and the store to check what was appended.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) router: Router,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) handler: CommandHandler,
    /// The four services behind the router (their saga driver, the simulated payment
    /// provider).
    pub(crate) local: Local,
    /// The saga driver's, cancelled never: it runs until the test's runtime ends.
    stop: CancellationToken,
}

/// A fresh PostgreSQL event store (from `scripts/services up`).
pub(crate) async fn pg_store() -> Arc<dyn EventStore> {
    let db = testkit::postgres::fresh_database().await;
    PgEventStore::migrate(&db.pool(1).await).await.unwrap();
    Arc::new(
        PgEventStore::open(db.pool(16).await, StoreOptions::default())
            .await
            .unwrap(),
    )
}

/// A fresh SQLite event store in a temporary file.
pub(crate) async fn sqlite_store() -> (Arc<dyn EventStore>, sqlx::SqlitePool) {
    let path = std::env::temp_dir().join(format!("orderflow-http-{}.db", Uuid::new_v4().simple()));
    let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(&path))
        .await
        .unwrap();
    SqliteEventStore::migrate(&pool).await.unwrap();
    let store = SqliteEventStore::open(pool.clone(), StoreOptions::default())
        .await
        .unwrap();
    (Arc::new(store), pool)
}

impl App {
    /// Auth off, default limits, PostgreSQL.
    pub(crate) async fn new() -> App {
        App::with(pg_store().await, HttpConfig::new(Auth::Disabled)).await
    }

    /// The four services over `store`; the orders service's copy of customers and products in
    /// a SQLite file of its own (so that a faulty `store` leaves it working).
    pub(crate) async fn with(store: Arc<dyn EventStore>, config: HttpConfig) -> App {
        let replica = std::env::temp_dir().join(format!("orderflow-http-replica-{}.db", Uuid::new_v4().simple()));
        let replica = ReadDb::connect(&format!("sqlite://{}", replica.display()), 2)
            .await
            .unwrap();
        let stores = Service::ALL.into_iter().map(|s| (s, store.clone())).collect();
        let local = Local::new(stores, replica, HandlerOptions::default()).await.unwrap();
        App {
            router: router(local.http_state(config)),
            store: store.clone(),
            handler: CommandHandler::new(store, HandlerOptions::default()),
            local,
            stop: CancellationToken::new(),
        }
    }

    /// Runs the orders service's saga driver (once per app) until the end of the test (the
    /// runtime's): orders placed before it starts are found in the log.
    pub(crate) fn run_sagas(&self) {
        let (local, stop) = (self.local.clone(), self.stop.clone());
        tokio::spawn(async move { local.run_sagas(stop).await });
    }

    /// The saga of order `order_id` as the store holds it.
    pub(crate) async fn saga(&self, order_id: Uuid) -> Saga {
        self.local
            .handler(Service::Orders)
            .load::<Saga>(order_id, None)
            .await
            .unwrap()
            .state
    }

    /// Waits until the saga of `order_id` has settled: its order confirmed (waiting for the
    /// shipment), or the saga completed. A parked saga fails the test.
    pub(crate) async fn settled(&self, order_id: Uuid) -> Saga {
        eventually(format!("the saga of {order_id} settles"), || async move {
            let saga = self.saga(order_id).await;
            assert!(saga.parked.is_none(), "parked: {saga:?}");
            (saga.outcome.is_some() || (saga.confirmed && saga.failure.is_none())).then_some(saga)
        })
        .await
    }

    /// Waits until the saga of `order_id` has completed with `outcome` (`captured`,
    /// `cancelled`).
    pub(crate) async fn completed(&self, order_id: Uuid, outcome: &str) -> Saga {
        eventually(format!("the saga of {order_id} ends {outcome}"), || async move {
            let saga = self.saga(order_id).await;
            assert!(saga.parked.is_none(), "parked: {saga:?}");
            let ended = saga.outcome.as_deref()?;
            assert_eq!(ended, outcome, "{saga:?}");
            Some(saga)
        })
        .await
    }

    pub(crate) async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(post(path).body(Body::from(body.to_string())).unwrap()).await
    }

    pub(crate) async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap()).await
    }

    pub(crate) async fn head(&self) -> Position {
        self.store.head_position().await.unwrap()
    }

    /// Registers a customer, answering its id.
    pub(crate) async fn customer(&self) -> Uuid {
        let id = Uuid::now_v7();
        let reply = self
            .post(
                "/v1/customers",
                json!({"customer_id": id, "name": "Ada Lovelace", "email": "ada@example.com"}),
            )
            .await;
        reply.expect(StatusCode::CREATED);
        id
    }

    /// Adds a product with `stock` units at 12.50 EUR, answering its id.
    pub(crate) async fn product(&self, stock: i64) -> Uuid {
        let id = Uuid::now_v7();
        let reply = self
            .post(
                "/v1/products",
                json!({
                    "product_id": id,
                    "sku": format!("SKU-{}", id.simple()),
                    "name": "Analytical Engine",
                    "price_minor": 1250,
                    "currency": "EUR",
                    "stock": stock,
                }),
            )
            .await;
        reply.expect(StatusCode::CREATED);
        id
    }

    /// Places an order of `quantity` units of `product`, answering its id and the answer.
    pub(crate) async fn order(&self, customer: Uuid, product: Uuid, quantity: i64) -> (Uuid, Reply) {
        let id = Uuid::now_v7();
        let reply = self
            .post(
                "/v1/orders",
                json!({
                    "order_id": id,
                    "customer_id": customer,
                    "lines": [{"product_id": product, "quantity": quantity}],
                }),
            )
            .await;
        reply.expect(StatusCode::CREATED);
        (id, reply)
    }
}

/// A `POST` with `Content-Type: application/json`.
pub(crate) fn post(path: &str) -> axum::http::request::Builder {
    Request::post(path).header("content-type", "application/json")
}

/// An answer, its body read as JSON (`null` if it is not JSON) and as text.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) json: Value,
    pub(crate) text: String,
}

impl Reply {
    /// Checks the status, answering the JSON body.
    #[track_caller]
    pub(crate) fn expect(&self, status: StatusCode) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        &self.json
    }

    /// Checks an error answer: status, the error format and its code; answers `details`.
    #[track_caller]
    pub(crate) fn expect_error(&self, status: StatusCode, code: &str) -> &Value {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(
            self.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{}",
            self.text
        );
        let error = self
            .json
            .get("error")
            .unwrap_or_else(|| panic!("no error object: {}", self.text));
        assert_eq!(error["code"], code, "body: {}", self.text);
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.text
        );
        assert!(error["details"].is_object(), "details is not an object: {}", self.text);
        assert_eq!(
            self.json.as_object().map(|o| o.len()),
            Some(1),
            "more than `error`: {}",
            self.text
        );
        &error["details"]
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a [`FaultyStore`] misbehaves on reads of streams.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fault {
    /// Every call sleeps this long first.
    Slow(Duration),
    /// Every call fails as if the database were gone.
    Down,
    /// Stream reads return an event whose payload does not decode.
    Garbage,
}

/// An [`EventStore`] that delegates to a real one, with a [`Fault`].
pub(crate) struct FaultyStore {
    pub(crate) inner: Arc<dyn EventStore>,
    pub(crate) fault: Fault,
}

impl FaultyStore {
    async fn before(&self) -> Result<(), StoreError> {
        match self.fault {
            Fault::Slow(delay) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Fault::Down => Err(StoreError::Database(sqlx::Error::PoolTimedOut)),
            Fault::Garbage => Ok(()),
        }
    }
}

#[async_trait]
impl EventStore for FaultyStore {
    async fn commit(&self, commit: Commit) -> Result<Committed, AppendError> {
        self.before().await?;
        self.inner.commit(commit).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.before().await?;
        if let Fault::Garbage = self.fault {
            return Ok(vec![RecordedEvent {
                position: 1,
                stream_id: stream_id.to_owned(),
                stream_version: from_version,
                event_id: Uuid::now_v7(),
                event_type: "order.placed".to_owned(),
                schema_version: 1,
                payload: vec![0xff, 0xff, 0xff],
                occurred_at: Utc::now(),
                recorded_at: Utc::now(),
                metadata: EventMetadata::default(),
            }]);
        }
        self.inner.read_stream(stream_id, from_version, limit).await
    }

    async fn read_stream_until(
        &self,
        stream_id: &str,
        from_version: u64,
        until: Until,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.before().await?;
        self.inner.read_stream_until(stream_id, from_version, until).await
    }

    async fn read_all(&self, after: Position, limit: usize) -> Result<Vec<RecordedEvent>, StoreError> {
        self.before().await?;
        self.inner.read_all(after, limit).await
    }

    async fn head_position(&self) -> Result<Position, StoreError> {
        self.before().await?;
        self.inner.head_position().await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.before().await?;
        self.inner.stream_version(stream_id).await
    }

    fn changes(&self) -> watch::Receiver<Position> {
        self.inner.changes()
    }

    async fn idempotent_result(&self, key: &str) -> Result<Option<IdempotentResult>, StoreError> {
        self.before().await?;
        self.inner.idempotent_result(key).await
    }

    async fn load_checkpoint(&self, name: &str) -> Result<Position, StoreError> {
        self.inner.load_checkpoint(name).await
    }

    async fn save_checkpoint(&self, name: &str, position: Position) -> Result<(), StoreError> {
        self.inner.save_checkpoint(name, position).await
    }

    async fn save_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream_id: &str, until: Option<Until>) -> Result<Option<Snapshot>, StoreError> {
        self.before().await?;
        self.inner.load_snapshot(stream_id, until).await
    }

    async fn delete_snapshots(&self, stream_id: Option<&str>) -> Result<u64, StoreError> {
        self.inner.delete_snapshots(stream_id).await
    }
}
