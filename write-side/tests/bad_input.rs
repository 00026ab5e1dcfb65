//! Invariant 9 of docs/design.md on every command endpoint of the write side, in both
//! deployments: bad input gets the documented 4xx in the error format
//! (`{"error": {"code", "message", "details"}}`) and changes nothing.
//!
//! - Embedded: the four services in one router over a SQLite store each (`orderflow serve`).
//! - Distributed: one router per service, each hosting only its own service over a PostgreSQL
//!   database of its own; the orders service calls the others through the service kit's client.
//!
//! "Changes nothing" is checked after every request, on every service's store: the head
//! position, every idempotency record and every aggregate snapshot, row for row (snapshots are
//! taken after every event here, so an append that slipped through would also leave one), and
//! the simulated payment provider's settings.
//!
//! A shop is set up first through the same API: a customer, products, an order in each status
//! (pending, confirmed, shipped, delivered, cancelled, taken there by the place-order saga,
//! whose driver is then stopped so that nothing moves while the bad requests are sent), and
//! their payments (authorized, captured, voided). Each route is sent the structural faults every
//! JSON command can have (syntax, shape, types, missing and unknown fields, media type, size,
//! command headers, path ids, methods), then the domain's refusals (422 `invalid`, 404, 409)
//! that are its own. Every bad request is sent twice, the second time with an `Idempotency-Key`
//! of its own: a refusal must not record the key either, which another test shows from the
//! client's side (a key refused once still works for the request that is good). A JSON array
//! instead of the command's object is bad input too (its own test: serde's derived
//! `Deserialize` takes a struct's fields from an array in their declared order).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use common::eventually;
use event_schemas::Service;
use event_store::{EventStore, PgEventStore, SqliteEventStore, StoreOptions};
use projections::ReadDb;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use uuid::Uuid;
use write_side::domain::saga::Saga;
use write_side::domain::{Order, OrderStatus, Payment, PaymentStatus, Product};
use write_side::http::{Auth, HttpConfig, HttpState, router};
use write_side::orders::saga::payment_id;
use write_side::{HandlerOptions, Local, LocalOptions, Services};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployment {
    /// All four services in one router, each over its own SQLite store.
    Embedded,
    /// One router per service, each over its own PostgreSQL database.
    Distributed,
}

/// A store's database, to read its tables as they are.
enum Db {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// Every idempotency record, row for row (the hash in hex, the answer, the time).
const PG_IDEMPOTENCY: &str = "SELECT key || '|' || encode(request_hash, 'hex') || '|' || result::text || '|' || \
                              created_at::text FROM idempotency_keys ORDER BY key";
/// Every snapshot, row for row (the state in hex).
const PG_SNAPSHOTS: &str = "SELECT stream_id || '|' || version || '|' || position || '|' || recorded_at::text || \
                            '|' || state_type || '|' || state_version || '|' || encode(state, 'hex') \
                            FROM snapshots ORDER BY stream_id, version";
const SQLITE_IDEMPOTENCY: &str = "SELECT key || '|' || hex(request_hash) || '|' || result || '|' || created_at \
                                  FROM idempotency_keys ORDER BY key";
const SQLITE_SNAPSHOTS: &str = "SELECT stream_id || '|' || version || '|' || position || '|' || recorded_at || '|' \
                                || state_type || '|' || state_version || '|' || hex(state) \
                                FROM snapshots ORDER BY stream_id, version";

impl Db {
    async fn rows(&self, pg: &'static str, sqlite: &'static str) -> Vec<String> {
        match self {
            Db::Pg(pool) => sqlx::query_scalar(pg).fetch_all(pool).await.unwrap(),
            Db::Sqlite(pool) => sqlx::query_scalar(sqlite).fetch_all(pool).await.unwrap(),
        }
    }

    async fn has_key(&self, key: &str) -> bool {
        let count: i64 = match self {
            Db::Pg(pool) => sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(pool)
                .await
                .unwrap(),
            Db::Sqlite(pool) => sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = ?")
                .bind(key)
                .fetch_one(pool)
                .await
                .unwrap(),
        };
        count > 0
    }
}

/// What one store holds that a command could change.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoreState {
    head: u64,
    idempotency: Vec<String>,
    snapshots: Vec<String>,
}

/// Everything a command could change.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    stores: BTreeMap<Service, StoreState>,
    /// `GET /v1/gateway`.
    gateway: Value,
}

/// Rows of `after` not in `before`, and the other way round, shortened for a message.
fn row_diff(before: &[String], after: &[String]) -> String {
    let short = |row: &String| row.chars().take(160).collect::<String>();
    let (b, a): (BTreeSet<_>, BTreeSet<_>) = (before.iter().collect(), after.iter().collect());
    let added: Vec<String> = a.difference(&b).map(|r| short(r)).collect();
    let removed: Vec<String> = b.difference(&a).map(|r| short(r)).collect();
    format!("added {added:#?}, removed {removed:#?}")
}

/// What changed from `before` to `after`, if anything did.
fn changes(before: &Fingerprint, after: &Fingerprint) -> Option<String> {
    if before == after {
        return None;
    }
    let mut changes = Vec::new();
    for (service, was) in &before.stores {
        let now = &after.stores[service];
        if was.head != now.head {
            changes.push(format!("{service}: head {} -> {}", was.head, now.head));
        }
        if was.idempotency != now.idempotency {
            changes.push(format!(
                "{service}: idempotency records {}",
                row_diff(&was.idempotency, &now.idempotency)
            ));
        }
        if was.snapshots != now.snapshots {
            changes.push(format!(
                "{service}: snapshots {}",
                row_diff(&was.snapshots, &now.snapshots)
            ));
        }
    }
    if before.gateway != after.gateway {
        changes.push(format!("gateway {} -> {}", before.gateway, after.gateway));
    }
    Some(changes.join("\n"))
}

/// Fails with what changed, if anything did.
#[track_caller]
fn assert_unchanged(what: &str, before: &Fingerprint, after: &Fingerprint) {
    if let Some(changes) = changes(before, after) {
        panic!("{what} changed something:\n{changes}");
    }
}

/// An answer, its body read as JSON (`null` if it is not) and as text.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
    text: String,
}

/// The ids the setup made, each in a known state.
#[derive(Debug, Clone, Copy)]
struct Ids {
    customer: Uuid,
    /// 12.50 EUR; stock 10 at first.
    product: Uuid,
    /// 5.00 USD.
    usd_product: Uuid,
    /// As much stock as a product may hold: a restock is refused.
    full_product: Uuid,
    pending: Uuid,
    /// Its payment authorized, one unit of `product` reserved for it.
    confirmed: Uuid,
    /// Its payment captured.
    shipped: Uuid,
    delivered: Uuid,
    /// Its payment voided.
    cancelled: Uuid,
}

/// The key the setup changes the customer's email with.
const SETUP_KEY: &str = "setup-change-email";

/// One deployment's routers over fresh stores.
struct World {
    deployment: Deployment,
    local: Local,
    /// The router a request for each service's routes goes to (embedded: the same one).
    routers: BTreeMap<Service, Router>,
    dbs: BTreeMap<Service, Db>,
    stores: BTreeMap<Service, Arc<dyn EventStore>>,
}

async fn pg_store() -> (Arc<dyn EventStore>, Db) {
    let db = testkit::postgres::fresh_database().await;
    PgEventStore::migrate(&db.pool(1).await).await.unwrap();
    let store = PgEventStore::open(db.pool(4).await, StoreOptions::default())
        .await
        .unwrap();
    let pool = store.pool().clone();
    (Arc::new(store), Db::Pg(pool))
}

async fn sqlite_store(service: Service) -> (Arc<dyn EventStore>, Db) {
    let name = testkit::unique_name(&format!("bad_input_{service}"));
    let path = std::env::temp_dir().join(format!("{name}.db"));
    let pool = sqlx::SqlitePool::connect_with(SqliteEventStore::connect_options(&path))
        .await
        .unwrap();
    SqliteEventStore::migrate(&pool).await.unwrap();
    let store = SqliteEventStore::open(pool.clone(), StoreOptions::default())
        .await
        .unwrap();
    (Arc::new(store), Db::Sqlite(pool))
}

/// The service whose process serves `path` in the distributed deployment (the routes every
/// service has, and unknown ones: the orders service's).
fn owner(path: &str) -> Service {
    let rest = path.strip_prefix("/v1/").unwrap_or(path);
    match rest.split(['/', '?']).next().unwrap_or_default() {
        "customers" => Service::Customers,
        "products" => Service::Inventory,
        "payments" | "gateway" => Service::Payments,
        _ => Service::Orders,
    }
}

impl World {
    async fn new(deployment: Deployment) -> World {
        let (mut stores, mut dbs) = (BTreeMap::new(), BTreeMap::new());
        for service in Service::ALL {
            let (store, db) = match deployment {
                Deployment::Embedded => sqlite_store(service).await,
                Deployment::Distributed => pg_store().await,
            };
            stores.insert(service, store);
            dbs.insert(service, db);
        }
        let replica = std::env::temp_dir().join(format!("{}.db", testkit::unique_name("bad_input_replica")));
        let replica = ReadDb::connect(&format!("sqlite://{}", replica.display()), 2)
            .await
            .unwrap();
        let options = LocalOptions {
            // A snapshot after every event: an append that slipped through leaves one too.
            handler: HandlerOptions {
                snapshot_every: 1,
                ..HandlerOptions::default()
            },
            ..LocalOptions::default()
        };
        let local = Local::with_options(
            stores.iter().map(|(s, store)| (*s, Arc::clone(store))).collect(),
            replica,
            options,
        )
        .await
        .unwrap();
        let config = || HttpConfig::new(Auth::Disabled);
        let routers = match deployment {
            Deployment::Embedded => {
                let one = router(local.http_state(config()));
                Service::ALL.into_iter().map(|s| (s, one.clone())).collect()
            }
            Deployment::Distributed => Service::ALL
                .into_iter()
                .map(|service| {
                    let mut state = HttpState::new(Services::single(service, local.handler(service).clone()), config())
                        .with_simulated_gateway(local.gateway().clone());
                    if service == Service::Orders {
                        state = state.with_orders(local.orders().clone());
                    }
                    (service, router(state))
                })
                .collect(),
        };
        World {
            deployment,
            local,
            routers,
            dbs,
            stores,
        }
    }

    async fn send_to(&self, service: Service, request: Request<Body>) -> Reply {
        let response = self.routers[&service].clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        Reply {
            status,
            headers,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let service = owner(request.uri().path());
        self.send_to(service, request).await
    }

    /// A JSON command, with an `Idempotency-Key` when given; fails unless it answers `status`.
    async fn command(&self, method: Method, path: &str, body: &Value, key: Option<&str>, status: StatusCode) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let reply = self.send(request.body(Body::from(body.to_string())).unwrap()).await;
        assert_eq!(reply.status, status, "{path} {body}: {}", reply.text);
        reply
    }

    async fn post(&self, path: &str, body: Value, status: StatusCode) -> Reply {
        self.command(Method::POST, path, &body, None, status).await
    }

    async fn fingerprint(&self) -> Fingerprint {
        let mut stores = BTreeMap::new();
        for (service, db) in &self.dbs {
            stores.insert(
                *service,
                StoreState {
                    head: self.stores[service].head_position().await.unwrap(),
                    idempotency: db.rows(PG_IDEMPOTENCY, SQLITE_IDEMPOTENCY).await,
                    snapshots: db.rows(PG_SNAPSHOTS, SQLITE_SNAPSHOTS).await,
                },
            );
        }
        let gateway = self
            .send(Request::get("/v1/gateway").body(Body::empty()).unwrap())
            .await;
        assert_eq!(gateway.status, StatusCode::OK, "{}", gateway.text);
        Fingerprint {
            stores,
            gateway: gateway.json,
        }
    }

    async fn saga(&self, order: Uuid) -> Saga {
        self.local
            .handler(Service::Orders)
            .load::<Saga>(order, None)
            .await
            .unwrap()
            .state
    }

    /// Waits until the saga of `order` has confirmed it.
    async fn confirmed(&self, order: Uuid) {
        eventually(format!("the saga of {order} confirms it"), || async move {
            let saga = self.saga(order).await;
            assert!(saga.parked.is_none() && saga.failure.is_none(), "{saga:?}");
            saga.confirmed.then_some(())
        })
        .await;
    }

    /// Waits until the saga of `order` has ended with `outcome`.
    async fn completed(&self, order: Uuid, outcome: &str) {
        eventually(format!("the saga of {order} ends {outcome}"), || async move {
            let saga = self.saga(order).await;
            assert!(saga.parked.is_none(), "{saga:?}");
            let ended = saga.outcome.as_deref()?;
            assert_eq!(ended, outcome, "{saga:?}");
            Some(())
        })
        .await;
    }

    async fn add_product(&self, currency: &str, price_minor: i64, stock: i64) -> Uuid {
        let id = Uuid::now_v7();
        let body = json!({
            "product_id": id,
            "sku": format!("SKU-{}", id.simple()),
            "name": "Analytical Engine",
            "price_minor": price_minor,
            "currency": currency,
            "stock": stock,
        });
        self.post("/v1/products", body, StatusCode::CREATED).await;
        id
    }

    async fn place(&self, customer: Uuid, product: Uuid) -> Uuid {
        let id = Uuid::now_v7();
        let body = json!({"order_id": id, "customer_id": customer, "lines": [{"product_id": product, "quantity": 1}]});
        self.post("/v1/orders", body, StatusCode::CREATED).await;
        id
    }

    /// The shop the bad requests are sent to; see the module doc. The saga driver runs only
    /// during the setup: nothing moves once it returns.
    async fn setup(&self) -> Ids {
        let customer = Uuid::now_v7();
        self.post(
            "/v1/customers",
            json!({"customer_id": customer, "name": "Ada Lovelace", "email": "ada@example.com"}),
            StatusCode::CREATED,
        )
        .await;
        self.command(
            Method::POST,
            &format!("/v1/customers/{customer}/change-email"),
            &json!({"email": "countess@example.com"}),
            Some(SETUP_KEY),
            StatusCode::OK,
        )
        .await;
        let product = self.add_product("EUR", 1250, 10).await;
        let usd_product = self.add_product("USD", 500, 5).await;
        let full_product = self.add_product("EUR", 100, write_side::domain::MAX_STOCK).await;
        let confirmed = self.place(customer, product).await;
        let shipped = self.place(customer, product).await;
        let delivered = self.place(customer, product).await;
        let cancelled = self.place(customer, product).await;

        let stop = CancellationToken::new();
        let driver = {
            let (local, stop) = (self.local.clone(), stop.clone());
            tokio::spawn(async move { local.run_sagas(stop).await })
        };
        for order in [confirmed, shipped, delivered, cancelled] {
            self.confirmed(order).await;
        }
        let shipment = json!({"carrier": "DHL", "tracking": "JD0123"});
        for order in [shipped, delivered] {
            self.post(&format!("/v1/orders/{order}/ship"), shipment.clone(), StatusCode::OK)
                .await;
        }
        self.post(
            &format!("/v1/orders/{cancelled}/cancel"),
            json!({"reason": "changed my mind"}),
            StatusCode::OK,
        )
        .await;
        self.post(&format!("/v1/orders/{delivered}/deliver"), json!({}), StatusCode::OK)
            .await;
        self.completed(shipped, "captured").await;
        self.completed(delivered, "captured").await;
        self.completed(cancelled, "cancelled").await;
        stop.cancel();
        driver.await.unwrap();
        // Placed once the driver has stopped: it stays pending.
        let pending = self.place(customer, product).await;

        let ids = Ids {
            customer,
            product,
            usd_product,
            full_product,
            pending,
            confirmed,
            shipped,
            delivered,
            cancelled,
        };
        self.assert_states(&ids).await;
        ids
    }

    /// The setup left what the cases assume.
    async fn assert_states(&self, ids: &Ids) {
        let orders = self.local.handler(Service::Orders);
        for (order, status) in [
            (ids.pending, OrderStatus::Pending),
            (ids.confirmed, OrderStatus::Confirmed),
            (ids.shipped, OrderStatus::Shipped),
            (ids.delivered, OrderStatus::Delivered),
            (ids.cancelled, OrderStatus::Cancelled),
        ] {
            let loaded = orders.load::<Order>(order, None).await.unwrap();
            assert_eq!(loaded.state.status, status, "order {order}");
        }
        let payments = self.local.handler(Service::Payments);
        for (order, status) in [
            (ids.confirmed, PaymentStatus::Authorized),
            (ids.shipped, PaymentStatus::Captured),
            (ids.delivered, PaymentStatus::Captured),
            (ids.cancelled, PaymentStatus::Voided),
        ] {
            let loaded = payments.load::<Payment>(payment_id(order), None).await.unwrap();
            assert_eq!(loaded.state.status, status, "the payment of order {order}");
            assert_eq!(loaded.state.authorized_minor, 1250, "the payment of order {order}");
        }
        let product = self
            .local
            .handler(Service::Inventory)
            .load::<Product>(ids.product, None)
            .await
            .unwrap()
            .state;
        assert_eq!(product.reserved_for(ids.confirmed), 1);
        assert!(product.available < 1000, "{product:?}");
    }

    /// Sends `case` as it is, then again with an `Idempotency-Key` of its own (unless it has
    /// one): both must get its error and leave everything as `baseline`. Answers what went
    /// wrong; a change becomes the new baseline, so that one case's failure is not reported
    /// again by every case after it.
    async fn check(&self, case: &Case, baseline: &mut Fingerprint) -> Vec<String> {
        assert!(
            case.status.is_client_error(),
            "{}: a bad request expects a 4xx, not {}",
            case.what,
            case.status
        );
        if case.to.is_some() && self.deployment == Deployment::Embedded {
            return Vec::new();
        }
        let has_key = case
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"));
        let keys = if has_key {
            vec![None]
        } else {
            vec![None, Some(format!("bad-{}", Uuid::new_v4().simple()))]
        };
        let mut failures = Vec::new();
        for key in keys {
            let what = match &key {
                Some(key) => format!("{} ({:?}, Idempotency-Key {key})", case.what, self.deployment),
                None => format!("{} ({:?})", case.what, self.deployment),
            };
            let request = case.request(key.as_deref());
            let reply = match case.to {
                Some(service) => self.send_to(service, request).await,
                None => self.send(request).await,
            };
            if let Some(problem) = case.problem(&reply) {
                failures.push(format!("{what}: {problem}"));
            }
            let now = self.fingerprint().await;
            if let Some(changes) = changes(baseline, &now) {
                failures.push(format!("{what} changed something:\n{changes}"));
                *baseline = now;
            }
        }
        failures
    }
}

/// One bad request and the error it must get.
#[derive(Debug, Clone)]
struct Case {
    what: String,
    method: Method,
    path: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &'static str,
    /// Entries the error's `details` must have.
    details: Vec<(&'static str, Value)>,
    /// Distributed only: the process it goes to (one that does not serve the route).
    to: Option<Service>,
    /// A 405's `Allow` must name this method.
    allow: Option<Method>,
}

fn send(what: impl Into<String>, method: Method, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
    Case {
        what: what.into(),
        method,
        path: path.into(),
        headers: Vec::new(),
        content_type: Some("application/json"),
        body: body.into(),
        status: StatusCode::OK,
        code: "",
        details: Vec::new(),
        to: None,
        allow: None,
    }
}

fn post(what: impl Into<String>, path: impl Into<String>, body: Value) -> Case {
    send(what, Method::POST, path, body.to_string())
}

impl Case {
    fn is(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }

    fn detail(mut self, name: &'static str, value: impl Into<Value>) -> Self {
        self.details.push((name, value.into()));
        self
    }

    /// 400 `bad_request` naming `field`.
    fn bad(self, field: &str) -> Self {
        self.is(StatusCode::BAD_REQUEST, "bad_request").detail("field", field)
    }

    fn invalid_json(self) -> Self {
        self.is(StatusCode::BAD_REQUEST, "invalid_json")
    }

    /// 422 `invalid` naming `field`: the domain's check.
    fn invalid(self, field: &str) -> Self {
        self.is(StatusCode::UNPROCESSABLE_ENTITY, "invalid")
            .detail("field", field)
    }

    fn not_found(self, resource: &str, id: Uuid) -> Self {
        self.is(StatusCode::NOT_FOUND, "not_found")
            .detail("resource", resource)
            .detail("id", id.to_string())
    }

    /// 409 `rejected`: not in this state.
    fn rejected(self) -> Self {
        self.is(StatusCode::CONFLICT, "rejected")
    }

    /// 409 `conflict` on a stale `If-Match`.
    fn stale(self, stream_id: String) -> Self {
        self.header("if-match", "99")
            .is(StatusCode::CONFLICT, "conflict")
            .detail("stream_id", stream_id)
            .detail("expected", 99)
    }

    fn header(mut self, name: &'static str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name, value.as_ref().to_vec()));
        self
    }

    fn content_type(mut self, content_type: Option<&'static str>) -> Self {
        self.content_type = content_type;
        self
    }

    fn to(mut self, service: Service) -> Self {
        self.to = Some(service);
        self
    }

    fn request(&self, key: Option<&str>) -> Request<Body> {
        let mut request = Request::builder().method(self.method.clone()).uri(&self.path);
        if let Some(content_type) = self.content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in &self.headers {
            request = request.header(*name, HeaderValue::from_bytes(value).unwrap());
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.body(Body::from(self.body.clone())).unwrap()
    }

    /// What is wrong with `reply`: the status, the error format, the code, the details.
    fn problem(&self, reply: &Reply) -> Option<String> {
        let body = &reply.text;
        if reply.status != self.status {
            return Some(format!("{} instead of {}: {body}", reply.status, self.status));
        }
        let content_type = reply.headers.get("content-type").and_then(|v| v.to_str().ok());
        if content_type != Some("application/json") {
            return Some(format!("Content-Type {content_type:?}: {body}"));
        }
        let Some(error) = reply.json.get("error") else {
            return Some(format!("no error object: {body}"));
        };
        if reply.json.as_object().map(Map::len) != Some(1) {
            return Some(format!("more than `error`: {body}"));
        }
        if error["code"] != self.code {
            return Some(format!("code {} instead of {}: {body}", error["code"], self.code));
        }
        if error["message"].as_str().is_none_or(|m| m.trim().is_empty()) {
            return Some(format!("no message: {body}"));
        }
        if !error["details"].is_object() {
            return Some(format!("details is not an object: {body}"));
        }
        for (name, value) in &self.details {
            if &error["details"][name] != value {
                return Some(format!("details.{name} is not {value}: {body}"));
            }
        }
        if let Some(method) = &self.allow {
            let allow = reply.headers.get("allow").and_then(|v| v.to_str().ok());
            if !allow.is_some_and(|allow| allow.split(',').any(|m| m.trim() == method.as_str())) {
                return Some(format!("Allow {allow:?} does not name {method}"));
            }
        }
        None
    }

    #[track_caller]
    fn assert_answer(&self, what: &str, reply: &Reply) {
        if let Some(problem) = self.problem(reply) {
            panic!("{what}: {problem}");
        }
    }
}

/// A command route with a request that would succeed, from which the structural faults are made.
struct Route {
    method: Method,
    /// With `{id}` where the aggregate's id goes.
    path: String,
    id: Option<Uuid>,
    /// The good JSON body; `None`: a command without fields (`{}` or no body).
    body: Option<Value>,
    /// The body's fields in the order the command's type declares them.
    fields: &'static [&'static str],
    /// Fields the body may leave out.
    optional: &'static [&'static str],
    /// What a 404 names for an id of nothing (`None`: no 404 for it).
    unknown: Option<&'static str>,
    /// Whether it reads the command headers (`Idempotency-Key`, `If-Match`, `X-Causation-Id`).
    meta: bool,
}

impl Route {
    fn at(&self, id: &str) -> String {
        self.path.replace("{id}", id)
    }

    fn good_path(&self) -> String {
        self.at(&self.id.map(|id| id.to_string()).unwrap_or_default())
    }

    fn good_body(&self) -> String {
        self.body.as_ref().map_or_else(String::new, Value::to_string)
    }

    fn case(&self, what: &str, body: impl Into<Vec<u8>>) -> Case {
        send(
            format!("{} {}: {what}", self.method, self.path),
            self.method.clone(),
            self.good_path(),
            body,
        )
    }

    /// 405 for `method` on the route, with `Allow` naming the route's method.
    fn wrong_method(&self, method: Method) -> Case {
        let mut case = self.case(method.as_str(), "").content_type(None);
        case.method = method;
        case.allow = Some(self.method.clone());
        case.is(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    }

    /// A body that is a JSON array, not the object the contract names: empty, and the good
    /// body's values in the order of the command type's fields (what serde's derived
    /// `Deserialize` would take for the struct).
    fn as_arrays(&self) -> Vec<Case> {
        let mut cases = vec![
            self.case("an empty array", "[]")
                .is(StatusCode::BAD_REQUEST, "bad_request"),
        ];
        if let Some(body) = &self.body {
            let values: Vec<Value> = self.fields.iter().map(|f| body[*f].clone()).collect();
            cases.push(
                self.case("the fields as an array", Value::Array(values).to_string())
                    .is(StatusCode::BAD_REQUEST, "bad_request"),
            );
        }
        cases
    }

    /// What every JSON command must refuse, whatever its fields mean.
    fn structural(&self) -> Vec<Case> {
        let good = self.good_body();
        let mut cases = vec![
            self.case("null", "null").is(StatusCode::BAD_REQUEST, "bad_request"),
            self.case("a string", r#""{}""#)
                .is(StatusCode::BAD_REQUEST, "bad_request"),
            self.case("a field it does not have", r#"{"force":true}"#).bad("force"),
            self.case(
                "text/plain",
                if good.is_empty() { "{}".to_owned() } else { good.clone() },
            )
            .content_type(Some("text/plain"))
            .is(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            self.case(
                "no content type",
                if good.is_empty() { "{}".to_owned() } else { good.clone() },
            )
            .content_type(None)
            .is(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            self.case("a form", "a=b")
                .content_type(Some("application/x-www-form-urlencoded"))
                .is(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            self.case("an oversized body", format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024)))
                .is(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
                .detail("limit_bytes", write_side::http::DEFAULT_BODY_LIMIT_BYTES),
            self.case("X-Correlation-Id too long", good.clone())
                .header("x-correlation-id", "c".repeat(300))
                .bad("X-Correlation-Id"),
            self.wrong_method(Method::DELETE),
            // GET where the route is a command; PATCH where GET reads (the gateway).
            self.wrong_method(if self.path == "/v1/gateway" {
                Method::PATCH
            } else {
                Method::GET
            }),
        ];

        match &self.body {
            Some(Value::Object(fields)) => {
                let declared: BTreeSet<&str> = self.fields.iter().copied().collect();
                assert_eq!(
                    fields.keys().map(String::as_str).collect::<BTreeSet<_>>(),
                    declared,
                    "{}",
                    self.path
                );
                cases.extend([
                    self.case("malformed JSON", &good[..good.len() - 1]).invalid_json(),
                    self.case("an empty body", "").invalid_json(),
                    self.case("only whitespace", " \n ").invalid_json(),
                    self.case("trailing data", format!("{good} {{}}")).invalid_json(),
                    self.case("a byte-order mark", format!("\u{feff}{good}")).invalid_json(),
                    self.case("single quotes", good.replace('"', "'")).invalid_json(),
                ]);
                let (first, value) = fields.iter().next().unwrap();
                cases.push(
                    self.case(
                        &format!("{first} twice"),
                        format!("{{\"{first}\":{value},{}", &good[1..]),
                    )
                    .bad(first),
                );
                for (name, value) in fields {
                    let without = |fields: &Map<String, Value>| {
                        let mut fields = fields.clone();
                        fields.remove(name);
                        fields
                    };
                    let with = |replacement: Value| {
                        let mut fields = fields.clone();
                        fields.insert(name.clone(), replacement);
                        Value::Object(fields).to_string()
                    };
                    let wrong = if value.is_boolean() { json!("yes") } else { json!(true) };
                    cases.push(self.case(&format!("{name} of the wrong type"), with(wrong)).bad(name));
                    cases.push(self.case(&format!("{name} an object"), with(json!({}))).bad(name));
                    if !self.optional.contains(&name.as_str()) {
                        cases.push(
                            self.case(&format!("without {name}"), Value::Object(without(fields)).to_string())
                                .bad(name),
                        );
                        cases.push(self.case(&format!("{name} null"), with(Value::Null)).bad(name));
                    }
                }
            }
            Some(other) => panic!("a body is an object: {other}"),
            None => {
                cases.extend([
                    self.case("malformed JSON", "{").invalid_json(),
                    self.case("trailing data", "{} {}").invalid_json(),
                ]);
            }
        }

        if self.meta {
            let header =
                |what: &str, name: &'static str, value: &[u8]| self.case(what, good.clone()).header(name, value);
            cases.extend([
                header("an empty Idempotency-Key", "idempotency-key", b"").bad("Idempotency-Key"),
                header("an Idempotency-Key with a space", "idempotency-key", b"a b").bad("Idempotency-Key"),
                header("a non-ASCII Idempotency-Key", "idempotency-key", "clé".as_bytes()).bad("Idempotency-Key"),
                header("an Idempotency-Key too long", "idempotency-key", &[b'k'; 256]).bad("Idempotency-Key"),
                header("two Idempotency-Keys", "idempotency-key", b"a")
                    .header("idempotency-key", "b")
                    .bad("idempotency-key"),
                header("If-Match not a number", "if-match", b"abc").bad("If-Match"),
                header("If-Match empty", "if-match", b"").bad("If-Match"),
                header("If-Match weak", "if-match", b"W/\"1\"").bad("If-Match"),
                header("If-Match *", "if-match", b"*").bad("If-Match"),
                header("If-Match negative", "if-match", b"-1").bad("If-Match"),
                header("If-Match beyond u64", "if-match", b"99999999999999999999999").bad("If-Match"),
                header("two If-Match", "if-match", b"1")
                    .header("if-match", "2")
                    .bad("if-match"),
                header("X-Causation-Id with a space", "x-causation-id", b"a b").bad("X-Causation-Id"),
            ]);
        }

        if self.id.is_some() {
            let mut case = self.case("an id that is not a UUID", good.clone());
            case.path = self.at("not-a-uuid");
            cases.push(case.bad("id"));
            let mut case = self.case("an id that is not UTF-8", good.clone());
            case.path = self.at("%FF%FE");
            cases.push(case.bad("id"));
            if let Some(resource) = self.unknown {
                let unknown = Uuid::now_v7();
                let mut case = self.case("an id of nothing", good.clone());
                case.path = self.at(&unknown.to_string());
                cases.push(case.not_found(resource, unknown));
                let mut case = self.case("an id of nothing, in upper case", good.clone());
                case.path = self.at(&unknown.to_string().to_uppercase());
                cases.push(case.not_found(resource, unknown));
            }
        }
        cases
    }
}

/// Every command route of the write side, each with a request that would succeed now.
fn routes(ids: &Ids) -> Vec<Route> {
    let route = |path: &str, id: Option<Uuid>, body: Option<Value>| Route {
        method: Method::POST,
        path: path.to_owned(),
        id,
        body,
        fields: &[],
        optional: &[],
        unknown: None,
        meta: true,
    };
    let pay = |order: Uuid| Some(payment_id(order));
    vec![
        Route {
            fields: &["customer_id", "name", "email"],
            optional: &["customer_id"],
            ..route(
                "/v1/customers",
                None,
                Some(json!({"customer_id": Uuid::now_v7(), "name": "Grace", "email": "grace@example.com"})),
            )
        },
        Route {
            fields: &["name"],
            unknown: Some("customer"),
            ..route(
                "/v1/customers/{id}/rename",
                Some(ids.customer),
                Some(json!({"name": "Ada King"})),
            )
        },
        Route {
            fields: &["email"],
            unknown: Some("customer"),
            ..route(
                "/v1/customers/{id}/change-email",
                Some(ids.customer),
                Some(json!({"email": "king@example.com"})),
            )
        },
        Route {
            fields: &["product_id", "sku", "name", "price_minor", "currency", "stock"],
            optional: &["product_id"],
            ..route(
                "/v1/products",
                None,
                Some(json!({
                    "product_id": Uuid::now_v7(), "sku": "SKU-NEW", "name": "Teapot",
                    "price_minor": 100, "currency": "EUR", "stock": 1,
                })),
            )
        },
        Route {
            fields: &["quantity"],
            unknown: Some("product"),
            ..route(
                "/v1/products/{id}/restock",
                Some(ids.product),
                Some(json!({"quantity": 1})),
            )
        },
        Route {
            fields: &["price_minor"],
            unknown: Some("product"),
            ..route(
                "/v1/products/{id}/change-price",
                Some(ids.product),
                Some(json!({"price_minor": 999})),
            )
        },
        Route {
            fields: &["order_id", "quantity"],
            unknown: Some("product"),
            ..route(
                "/v1/products/{id}/reservations",
                Some(ids.product),
                Some(json!({"order_id": Uuid::now_v7(), "quantity": 1})),
            )
        },
        Route {
            unknown: Some("product"),
            ..route(
                &format!("/v1/products/{{id}}/reservations/{}/release", ids.confirmed),
                Some(ids.product),
                None,
            )
        },
        Route {
            fields: &["order_id", "customer_id", "lines"],
            optional: &["order_id"],
            ..route(
                "/v1/orders",
                None,
                Some(json!({
                    "order_id": Uuid::now_v7(), "customer_id": ids.customer,
                    "lines": [{"product_id": ids.product, "quantity": 1}],
                })),
            )
        },
        Route {
            fields: &["reason"],
            unknown: Some("order"),
            ..route(
                "/v1/orders/{id}/cancel",
                Some(ids.pending),
                Some(json!({"reason": "changed my mind"})),
            )
        },
        Route {
            fields: &["carrier", "tracking"],
            unknown: Some("order"),
            ..route(
                "/v1/orders/{id}/ship",
                Some(ids.confirmed),
                Some(json!({"carrier": "DHL", "tracking": "JD0123"})),
            )
        },
        Route {
            unknown: Some("order"),
            ..route("/v1/orders/{id}/deliver", Some(ids.shipped), None)
        },
        // Always refused (409 `confirmed_by_saga`), after its input is read.
        Route {
            meta: false,
            ..route("/v1/orders/{id}/confirm", Some(ids.pending), None)
        },
        // Refused in any case here (no saga is parked), but only once its input is read.
        Route {
            unknown: Some("saga"),
            ..route("/v1/sagas/{id}/retry", Some(ids.confirmed), None)
        },
        Route {
            fields: &["reason"],
            unknown: Some("saga"),
            ..route(
                "/v1/sagas/{id}/abandon",
                Some(ids.confirmed),
                Some(json!({"reason": "stuck"})),
            )
        },
        Route {
            fields: &["payment_id", "order_id", "amount_minor", "currency"],
            optional: &["payment_id"],
            ..route(
                "/v1/payments",
                None,
                Some(
                    json!({"payment_id": Uuid::now_v7(), "order_id": ids.pending, "amount_minor": 1250, "currency": "EUR"}),
                ),
            )
        },
        Route {
            fields: &["amount_minor"],
            unknown: Some("payment"),
            ..route(
                "/v1/payments/{id}/capture",
                pay(ids.confirmed),
                Some(json!({"amount_minor": 100})),
            )
        },
        Route {
            fields: &["amount_minor"],
            unknown: Some("payment"),
            ..route(
                "/v1/payments/{id}/refund",
                pay(ids.shipped),
                Some(json!({"amount_minor": 100})),
            )
        },
        // A void or a decline of a payment not authorized yet is recorded (it may come first):
        // no 404 for them.
        Route {
            fields: &["order_id", "reason"],
            ..route(
                "/v1/payments/{id}/void",
                pay(ids.confirmed),
                Some(json!({"order_id": ids.confirmed, "reason": "cancelled"})),
            )
        },
        Route {
            fields: &["order_id", "reason"],
            ..route(
                "/v1/payments/{id}/decline",
                pay(ids.confirmed),
                Some(json!({"order_id": ids.confirmed, "reason": "card declined"})),
            )
        },
        Route {
            method: Method::PUT,
            fields: &["decline_rate", "latency_ms", "unavailable"],
            meta: false,
            ..route(
                "/v1/gateway",
                None,
                Some(json!({"decline_rate": 0.25, "latency_ms": 5, "unavailable": true})),
            )
        },
    ]
}

/// The refusals that are each route's own: the domain's checks (422), ids of nothing (404),
/// transitions the state does not allow and stale `If-Match` (409), and, distributed, routes of
/// a service the process does not host.
fn domain_cases(ids: &Ids) -> Vec<Case> {
    let c = ids.customer;
    let unknown = Uuid::now_v7();
    let register = |name: &str, email: &str| json!({"name": name, "email": email});
    let rename = format!("/v1/customers/{c}/rename");
    let change_email = format!("/v1/customers/{c}/change-email");
    let product = |sku: &str, name: &str, price: i64, currency: &str, stock: i64| json!({"sku": sku, "name": name, "price_minor": price, "currency": currency, "stock": stock});
    let restock = format!("/v1/products/{}/restock", ids.product);
    let change_price = format!("/v1/products/{}/change-price", ids.product);
    let reserve = format!("/v1/products/{}/reservations", ids.product);
    let order = |lines: Value| json!({"customer_id": c, "lines": lines});
    let line = |product: Uuid, quantity: i64| json!({"product_id": product, "quantity": quantity});
    let cancel = |order: Uuid| format!("/v1/orders/{order}/cancel");
    let ship = |order: Uuid| format!("/v1/orders/{order}/ship");
    let deliver = |order: Uuid| format!("/v1/orders/{order}/deliver");
    let shipment = |carrier: &str, tracking: &str| json!({"carrier": carrier, "tracking": tracking});
    let pay = |order: Uuid, action: &str| format!("/v1/payments/{}/{action}", payment_id(order));
    let amount = |minor: i64| json!({"amount_minor": minor});
    let because = |order: Uuid, reason: &str| json!({"order_id": order, "reason": reason});
    let authorize = |amount: i64, currency: &str| json!({"payment_id": Uuid::now_v7(), "order_id": ids.pending, "amount_minor": amount, "currency": currency});
    let gateway =
        |rate: Value, latency: Value| json!({"decline_rate": rate, "latency_ms": latency, "unavailable": true});
    let put_gateway = |what: &str, body: Value| send(what, Method::PUT, "/v1/gateway", body.to_string());
    let order_stream = |order: Uuid| format!("order-{order}");
    let long = |n: usize| "x".repeat(n);

    let mut cases = vec![
        // Customers.
        post("register: an empty name", "/v1/customers", register("", "g@example.com")).invalid("name"),
        post("register: a blank name", "/v1/customers", register(" \t ", "g@example.com")).invalid("name"),
        post("register: a name too long", "/v1/customers", register(&long(201), "g@example.com")).invalid("name"),
        post("register: a control character", "/v1/customers", register("Ada\u{7}", "g@example.com")).invalid("name"),
        post("register: a line break", "/v1/customers", register("Ada\nKing", "g@example.com")).invalid("name"),
        post("register: an email without @", "/v1/customers", register("Grace", "nope")).invalid("email"),
        post("register: an empty email", "/v1/customers", register("Grace", "")).invalid("email"),
        post("register: an email without a dot", "/v1/customers", register("Grace", "g@example")).invalid("email"),
        post("register: an email without a name", "/v1/customers", register("Grace", "@example.com")).invalid("email"),
        post("register: two @", "/v1/customers", register("Grace", "g@x@example.com")).invalid("email"),
        post("register: a space in the email", "/v1/customers", register("Grace", "g h@example.com")).invalid("email"),
        post("register: an empty label", "/v1/customers", register("Grace", "g@example..com")).invalid("email"),
        post(
            "register: an email too long",
            "/v1/customers",
            register("Grace", &format!("{}@example.com", long(243))),
        )
        .invalid("email"),
        post(
            "register: a customer id that is not a UUID",
            "/v1/customers",
            json!({"customer_id": "nope", "name": "Grace", "email": "g@example.com"}),
        )
        .bad("customer_id"),
        post(
            "register: an existing customer",
            "/v1/customers",
            json!({"customer_id": c, "name": "Grace", "email": "g@example.com"}),
        )
        .is(StatusCode::CONFLICT, "already_exists")
        .detail("resource", "customer")
        .detail("id", c.to_string()),
        post(
            "register: If-Match on a new customer",
            "/v1/customers",
            json!({"customer_id": unknown, "name": "Grace", "email": "g@example.com"}),
        )
        .stale(format!("customer-{unknown}")),
        post("rename: an empty name", &rename, json!({"name": ""})).invalid("name"),
        post("rename: a blank name", &rename, json!({"name": "   "})).invalid("name"),
        post("rename: a name too long", &rename, json!({"name": long(201)})).invalid("name"),
        post("rename: a NUL", &rename, json!({"name": "Ada\u{0}"})).invalid("name"),
        send("rename: invalid UTF-8", Method::POST, &rename, b"{\"name\":\"\xff\xfe\"}".to_vec()).invalid_json(),
        send("rename: a lone surrogate", Method::POST, &rename, r#"{"name":"\ud800"}"#).invalid_json(),
        post("rename: a stale If-Match", &rename, json!({"name": "Ada King"})).stale(format!("customer-{c}")),
        post("change-email: no @", &change_email, json!({"email": "nope"})).invalid("email"),
        post("change-email: empty", &change_email, json!({"email": ""})).invalid("email"),
        post("change-email: blank", &change_email, json!({"email": "  "})).invalid("email"),
        post("change-email: no dot", &change_email, json!({"email": "ada@example"})).invalid("email"),
        post("change-email: two @", &change_email, json!({"email": "ada@@example.com"})).invalid("email"),
        post("change-email: an empty label", &change_email, json!({"email": "ada@.com"})).invalid("email"),
        post(
            "change-email: too long",
            &change_email,
            json!({"email": format!("{}@example.com", long(243))}),
        )
        .invalid("email"),
        post(
            "change-email: a stale If-Match",
            &change_email,
            json!({"email": "king@example.com"}),
        )
        .stale(format!("customer-{c}")),
        post(
            "change-email: the setup's key with another address",
            &change_email,
            json!({"email": "someone@example.com"}),
        )
        .header("idempotency-key", SETUP_KEY)
        .is(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
        .detail("idempotency_key", SETUP_KEY),
        // Inventory.
        post("add: an empty sku", "/v1/products", product("", "Teapot", 1, "EUR", 1)).invalid("sku"),
        post("add: a space in the sku", "/v1/products", product("A B", "Teapot", 1, "EUR", 1)).invalid("sku"),
        post("add: a non-ASCII sku", "/v1/products", product("ÄBC", "Teapot", 1, "EUR", 1)).invalid("sku"),
        post("add: a sku too long", "/v1/products", product(&long(65), "Teapot", 1, "EUR", 1)).invalid("sku"),
        post("add: a blank name", "/v1/products", product("A", "  ", 1, "EUR", 1)).invalid("name"),
        post(
            "add: a price above the maximum",
            "/v1/products",
            product("A", "Teapot", write_side::domain::MAX_PRICE_MINOR + 1, "EUR", 1),
        )
        .invalid("price_minor"),
        post("add: a negative price", "/v1/products", product("A", "Teapot", -1, "EUR", 1)).bad("price_minor"),
        post("add: a lower-case currency", "/v1/products", product("A", "Teapot", 1, "eur", 1)).invalid("currency"),
        post("add: a four-letter currency", "/v1/products", product("A", "Teapot", 1, "EURO", 1)).invalid("currency"),
        post("add: an empty currency", "/v1/products", product("A", "Teapot", 1, "", 1)).invalid("currency"),
        post(
            "add: stock above the maximum",
            "/v1/products",
            product("A", "Teapot", 1, "EUR", write_side::domain::MAX_STOCK + 1),
        )
        .invalid("stock"),
        post("add: negative stock", "/v1/products", product("A", "Teapot", 1, "EUR", -5)).bad("stock"),
        post(
            "add: an existing product",
            "/v1/products",
            json!({"product_id": ids.product, "sku": "A", "name": "Teapot", "price_minor": 1, "currency": "EUR", "stock": 1}),
        )
        .is(StatusCode::CONFLICT, "already_exists")
        .detail("resource", "product")
        .detail("id", ids.product.to_string()),
        post("restock: zero", &restock, json!({"quantity": 0})).invalid("quantity"),
        post("restock: negative", &restock, json!({"quantity": -3})).bad("quantity"),
        post("restock: a fraction", &restock, json!({"quantity": 1.5})).bad("quantity"),
        post("restock: a number in a string", &restock, json!({"quantity": "3"})).bad("quantity"),
        post("restock: beyond i64", &restock, json!({"quantity": 9_223_372_036_854_775_808_u64})).bad("quantity"),
        send("restock: 1e300", Method::POST, &restock, r#"{"quantity":1e300}"#).bad("quantity"),
        post(
            "restock: above the most moved at once",
            &restock,
            json!({"quantity": write_side::domain::MAX_QUANTITY + 1}),
        )
        .invalid("quantity"),
        post(
            "restock: past the most a product holds",
            format!("/v1/products/{}/restock", ids.full_product),
            json!({"quantity": 1}),
        )
        .rejected(),
        post("restock: a stale If-Match", &restock, json!({"quantity": 1})).stale(format!("product-{}", ids.product)),
        post(
            "change-price: above the maximum",
            &change_price,
            json!({"price_minor": write_side::domain::MAX_PRICE_MINOR + 1}),
        )
        .invalid("price_minor"),
        post("change-price: negative", &change_price, json!({"price_minor": -1})).bad("price_minor"),
        post("change-price: a stale If-Match", &change_price, json!({"price_minor": 1})).stale(format!(
            "product-{}",
            ids.product
        )),
        post("reserve: zero", &reserve, json!({"order_id": unknown, "quantity": 0})).invalid("quantity"),
        post(
            "reserve: above the most moved at once",
            &reserve,
            json!({"order_id": unknown, "quantity": write_side::domain::MAX_QUANTITY + 1}),
        )
        .invalid("quantity"),
        post("reserve: more than is available", &reserve, json!({"order_id": unknown, "quantity": 1000}))
            .is(StatusCode::CONFLICT, "insufficient_stock")
            .detail("product_id", ids.product.to_string())
            .detail("requested", 1000),
        post(
            "reserve: another quantity for an order that holds some",
            &reserve,
            json!({"order_id": ids.confirmed, "quantity": 2}),
        )
        .rejected(),
        post("reserve: an order id that is not a UUID", &reserve, json!({"order_id": "nope", "quantity": 1}))
            .bad("order_id"),
        send(
            "release: an order id that is not a UUID",
            Method::POST,
            format!("/v1/products/{}/reservations/nope/release", ids.product),
            "",
        )
        .content_type(None)
        .bad("order_id"),
        // (`details.field` says `id` here today, though the order's id is the one at fault.)
        send(
            "release: an order id that is not UTF-8",
            Method::POST,
            format!("/v1/products/{}/reservations/%FF/release", ids.product),
            "",
        )
        .content_type(None)
        .is(StatusCode::BAD_REQUEST, "bad_request"),
        // Orders.
        post("place: no lines", "/v1/orders", order(json!([]))).invalid("lines"),
        post(
            "place: more lines than an order has",
            "/v1/orders",
            order(Value::Array(vec![line(ids.product, 1); 101])),
        )
        .invalid("lines"),
        post("place: a zero quantity", "/v1/orders", order(json!([line(ids.product, 0)])))
            .invalid("lines[0].quantity"),
        post("place: a negative quantity", "/v1/orders", order(json!([line(ids.product, -1)])))
            .bad("lines[0].quantity"),
        post(
            "place: a quantity above the most moved at once",
            "/v1/orders",
            order(json!([line(ids.product, write_side::domain::MAX_QUANTITY + 1)])),
        )
        .invalid("lines[0].quantity"),
        post(
            "place: a product on two lines",
            "/v1/orders",
            order(json!([line(ids.product, 1), line(ids.product, 2)])),
        )
        .invalid("lines[1].product_id"),
        post(
            "place: a product id that is not a UUID",
            "/v1/orders",
            order(json!([{"product_id": "nope", "quantity": 1}])),
        )
        .bad("lines[0].product_id"),
        post(
            "place: a line without a quantity",
            "/v1/orders",
            order(json!([{"product_id": ids.product}])),
        )
        .bad("lines[0].quantity"),
        post(
            "place: a line with a price",
            "/v1/orders",
            order(json!([{"product_id": ids.product, "quantity": 1, "price": 1}])),
        )
        .bad("lines[0].price"),
        post(
            "place: a customer of nobody",
            "/v1/orders",
            json!({"customer_id": unknown, "lines": [line(ids.product, 1)]}),
        )
        .not_found("customer", unknown),
        post("place: a product of nothing", "/v1/orders", order(json!([line(unknown, 1)])))
            .not_found("product", unknown),
        post(
            "place: a known product after one of nothing",
            "/v1/orders",
            order(json!([line(unknown, 1), line(ids.product, 1)])),
        )
        .not_found("product", unknown),
        post(
            "place: lines in two currencies",
            "/v1/orders",
            order(json!([line(ids.product, 1), line(ids.usd_product, 1)])),
        )
        .rejected(),
        post(
            "place: an existing order",
            "/v1/orders",
            json!({"order_id": ids.confirmed, "customer_id": c, "lines": [line(ids.product, 1)]}),
        )
        .is(StatusCode::CONFLICT, "already_exists")
        .detail("resource", "order")
        .detail("id", ids.confirmed.to_string()),
        post("cancel: an empty reason", cancel(ids.pending), json!({"reason": ""})).invalid("reason"),
        post("cancel: a blank reason", cancel(ids.pending), json!({"reason": " \n "})).invalid("reason"),
        post("cancel: a reason too long", cancel(ids.pending), json!({"reason": long(501)})).invalid("reason"),
        post("cancel: a shipped order", cancel(ids.shipped), json!({"reason": "late"})).rejected(),
        post("cancel: a delivered order", cancel(ids.delivered), json!({"reason": "late"})).rejected(),
        post("cancel: a cancelled order", cancel(ids.cancelled), json!({"reason": "again"})).rejected(),
        post("cancel: a stale If-Match", cancel(ids.pending), json!({"reason": "changed my mind"}))
            .stale(order_stream(ids.pending)),
        post("ship: an empty carrier", ship(ids.confirmed), shipment("", "JD0123")).invalid("carrier"),
        post("ship: a blank tracking", ship(ids.confirmed), shipment("DHL", "  ")).invalid("tracking"),
        post("ship: a carrier too long", ship(ids.confirmed), shipment(&long(101), "JD0123")).invalid("carrier"),
        post("ship: a tracking too long", ship(ids.confirmed), shipment("DHL", &long(101))).invalid("tracking"),
        post("ship: a control character", ship(ids.confirmed), shipment("DHL", "JD\u{1b}0123")).invalid("tracking"),
        post("ship: a pending order", ship(ids.pending), shipment("DHL", "JD0123")).rejected(),
        post("ship: a shipped order", ship(ids.shipped), shipment("DHL", "JD0123")).rejected(),
        post("ship: a delivered order", ship(ids.delivered), shipment("DHL", "JD0123")).rejected(),
        post("ship: a cancelled order", ship(ids.cancelled), shipment("DHL", "JD0123")).rejected(),
        post("ship: a stale If-Match", ship(ids.confirmed), shipment("DHL", "JD0123"))
            .stale(order_stream(ids.confirmed)),
        post("deliver: a pending order", deliver(ids.pending), json!({})).rejected(),
        post("deliver: a confirmed order", deliver(ids.confirmed), json!({})).rejected(),
        post("deliver: a delivered order", deliver(ids.delivered), json!({})).rejected(),
        post("deliver: a cancelled order", deliver(ids.cancelled), json!({})).rejected(),
        post("deliver: a stale If-Match", deliver(ids.shipped), json!({})).stale(order_stream(ids.shipped)),
        post(
            "confirm: a pending order",
            format!("/v1/orders/{}/confirm", ids.pending),
            json!({}),
        )
        .is(StatusCode::CONFLICT, "confirmed_by_saga")
        .detail("order_id", ids.pending.to_string()),
        post("confirm: an order of nothing", format!("/v1/orders/{unknown}/confirm"), json!({}))
            .is(StatusCode::CONFLICT, "confirmed_by_saga"),
        post("retry: a saga not parked", format!("/v1/sagas/{}/retry", ids.confirmed), json!({})).rejected(),
        post(
            "abandon: a saga not parked",
            format!("/v1/sagas/{}/abandon", ids.confirmed),
            json!({"reason": "stuck"}),
        )
        .rejected(),
        post(
            "abandon: a completed saga",
            format!("/v1/sagas/{}/abandon", ids.cancelled),
            json!({"reason": "stuck"}),
        )
        .rejected(),
        // Payments.
        post("authorize: nothing", "/v1/payments", authorize(0, "EUR")).invalid("amount_minor"),
        post("authorize: a negative amount", "/v1/payments", authorize(-1, "EUR")).bad("amount_minor"),
        post("authorize: a lower-case currency", "/v1/payments", authorize(100, "eur")).invalid("currency"),
        post("authorize: no currency", "/v1/payments", authorize(100, "")).invalid("currency"),
        post(
            "authorize: an authorized payment again",
            "/v1/payments",
            json!({"payment_id": payment_id(ids.confirmed), "order_id": ids.confirmed, "amount_minor": 999, "currency": "EUR"}),
        )
        .is(StatusCode::CONFLICT, "already_exists")
        .detail("resource", "payment"),
        post("capture: nothing", pay(ids.confirmed, "capture"), amount(0)).invalid("amount_minor"),
        post("capture: more than authorized", pay(ids.confirmed, "capture"), amount(1251)).rejected(),
        post("capture: a captured payment", pay(ids.shipped, "capture"), amount(1)).rejected(),
        post("capture: a voided payment", pay(ids.cancelled, "capture"), amount(1)).rejected(),
        post("refund: nothing", pay(ids.shipped, "refund"), amount(0)).invalid("amount_minor"),
        post("refund: more than captured", pay(ids.shipped, "refund"), amount(1251)).rejected(),
        post("refund: a payment not captured", pay(ids.confirmed, "refund"), amount(1)).rejected(),
        post("refund: a voided payment", pay(ids.cancelled, "refund"), amount(1)).rejected(),
        post("void: an empty reason", pay(ids.confirmed, "void"), because(ids.confirmed, "")).invalid("reason"),
        post("void: a captured payment", pay(ids.shipped, "void"), because(ids.shipped, "no")).rejected(),
        post("void: another order's payment", pay(ids.confirmed, "void"), because(ids.pending, "no")).rejected(),
        post("void: a voided payment of another order", pay(ids.cancelled, "void"), because(ids.pending, "no"))
            .rejected(),
        post("decline: a blank reason", pay(ids.confirmed, "decline"), because(ids.confirmed, " ")).invalid("reason"),
        post("decline: a captured payment", pay(ids.shipped, "decline"), because(ids.shipped, "no")).rejected(),
        post("decline: a voided payment", pay(ids.cancelled, "decline"), because(ids.cancelled, "no")).rejected(),
        post("decline: another order's payment", pay(ids.confirmed, "decline"), because(ids.pending, "no"))
            .rejected(),
        put_gateway("gateway: a decline rate above 1", gateway(json!(1.5), json!(5)))
            .is(StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        put_gateway("gateway: a negative decline rate", gateway(json!(-0.5), json!(5)))
            .is(StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        put_gateway("gateway: a latency above a minute", gateway(json!(0.5), json!(60_001)))
            .is(StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        put_gateway("gateway: a negative latency", gateway(json!(0.5), json!(-1))).bad("latency_ms"),
        put_gateway("gateway: a fractional latency", gateway(json!(0.5), json!(1.5))).bad("latency_ms"),
        put_gateway("gateway: a decline rate in a string", gateway(json!("0.5"), json!(5))).bad("decline_rate"),
        // Routes.
        send("an unknown route", Method::POST, "/v1/nothing", "{}").is(StatusCode::NOT_FOUND, "not_found"),
        send(
            "an unknown command",
            Method::POST,
            format!("/v1/customers/{c}/delete"),
            "{}",
        )
        .is(StatusCode::NOT_FOUND, "not_found"),
    ];

    // Distributed: a process serves its own service's routes only.
    let placement = json!({"customer_id": c, "lines": [line(ids.product, 1)]});
    cases.extend([
        post("the orders route at the customers service", "/v1/orders", placement)
            .to(Service::Customers)
            .is(StatusCode::NOT_FOUND, "not_found")
            .detail("path", "/v1/orders"),
        post(
            "a customers route at the orders service",
            &rename,
            json!({"name": "Ada King"}),
        )
        .to(Service::Orders)
        .is(StatusCode::NOT_FOUND, "not_found"),
        post(
            "a payments route at the inventory service",
            pay(ids.confirmed, "capture"),
            amount(1),
        )
        .to(Service::Inventory)
        .is(StatusCode::NOT_FOUND, "not_found"),
        put_gateway("the gateway at the orders service", gateway(json!(0.5), json!(5)))
            .to(Service::Orders)
            .is(StatusCode::NOT_FOUND, "not_found"),
    ]);
    cases
}

/// The deployment set up, and the state every case must leave as it is.
async fn set_up(deployment: Deployment) -> (World, Ids, Fingerprint) {
    let world = World::new(deployment).await;
    let ids = world.setup().await;
    let baseline = world.fingerprint().await;
    // The checks can fail: every store has records to lose or gain.
    for (service, state) in &baseline.stores {
        assert!(state.head > 0, "{service}: {state:?}");
        assert!(!state.snapshots.is_empty(), "{service}: no snapshots");
    }
    for service in [Service::Customers, Service::Inventory, Service::Payments] {
        assert!(
            !baseline.stores[&service].idempotency.is_empty(),
            "{service}: no idempotency records"
        );
    }
    (world, ids, baseline)
}

/// Sends every case, failing with every one that got the wrong answer or changed something.
async fn assert_refused(world: &World, cases: &[Case], mut baseline: Fingerprint) {
    let mut failures = Vec::new();
    for case in cases {
        failures.extend(world.check(case, &mut baseline).await);
    }
    assert!(
        failures.is_empty(),
        "{} problems with {} bad requests:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The routes that take a command in the OpenAPI documents of the deployment's processes
/// (`POST /v1/customers/{id}/rename`).
async fn documented_commands(world: &World) -> BTreeSet<String> {
    let services = match world.deployment {
        Deployment::Embedded => vec![Service::Orders],
        Deployment::Distributed => Service::ALL.to_vec(),
    };
    let mut documented = BTreeSet::new();
    for service in services {
        let document = world
            .send_to(service, Request::get("/openapi.json").body(Body::empty()).unwrap())
            .await;
        for (path, item) in document.json["paths"].as_object().unwrap() {
            for method in ["post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    documented.insert(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
    }
    documented
}

async fn bad_input_gets_a_4xx_and_changes_nothing(deployment: Deployment) {
    let (world, ids, baseline) = set_up(deployment).await;
    let routes = routes(&ids);

    // Every command route of the document is sent bad input.
    let tested: BTreeSet<String> = routes
        .iter()
        .map(|r| {
            let path = r.path.replace(&ids.confirmed.to_string(), "{order_id}");
            format!("{} {path}", r.method)
        })
        .collect();
    let documented = documented_commands(&world).await;
    let untested: Vec<&String> = documented.difference(&tested).collect();
    assert!(untested.is_empty(), "command routes without bad input: {untested:?}");

    let mut cases: Vec<Case> = routes.iter().flat_map(Route::structural).collect();
    cases.extend(domain_cases(&ids));
    assert!(cases.len() > 500, "{} cases", cases.len());
    assert_refused(&world, &cases, baseline).await;
}

#[tokio::test]
async fn embedded_bad_input_gets_a_4xx_and_changes_nothing() {
    bad_input_gets_a_4xx_and_changes_nothing(Deployment::Embedded).await;
}

#[tokio::test]
async fn distributed_bad_input_gets_a_4xx_and_changes_nothing() {
    bad_input_gets_a_4xx_and_changes_nothing(Deployment::Distributed).await;
}

/// A command's body is the JSON object of the contract: a JSON array is bad input, also one
/// that lists the command's fields in the order its type declares them, which serde's derived
/// `Deserialize` would take for the struct (`[]` for a command without fields).
async fn a_json_array_is_not_a_command(deployment: Deployment) {
    let (world, ids, baseline) = set_up(deployment).await;
    let mut cases: Vec<Case> = routes(&ids).iter().flat_map(Route::as_arrays).collect();
    cases.push(
        post(
            "place: a line as an array",
            "/v1/orders",
            json!({"customer_id": ids.customer, "lines": [[ids.product, 1]]}),
        )
        .is(StatusCode::BAD_REQUEST, "bad_request"),
    );
    assert_refused(&world, &cases, baseline).await;
}

#[tokio::test]
async fn embedded_a_json_array_is_not_a_command() {
    a_json_array_is_not_a_command(Deployment::Embedded).await;
}

#[tokio::test]
async fn distributed_a_json_array_is_not_a_command() {
    a_json_array_is_not_a_command(Deployment::Distributed).await;
}

/// What repeating a refused request with its key gets once the key is taken by a good one.
enum Again {
    /// This error.
    Refused(StatusCode, &'static str),
    /// The good request's answer (the same request: the key's first answer).
    Replayed,
}

/// A request refused with `key`, then a good one with the same key: the refusal recorded
/// nothing, so the good one is applied (and recorded); repeating it replays it; and the refused
/// one again gets `again`. Nothing changes but by the good request.
async fn refused_then_good(
    world: &World,
    key: &str,
    bad: Case,
    good: (Method, String, Value, StatusCode),
    again: Again,
) {
    let store = owner(&good.1);
    let what = format!("{} ({:?})", bad.what, world.deployment);
    let before = world.fingerprint().await;
    let refused = world.send(bad.request(Some(key))).await;
    bad.assert_answer(&what, &refused);
    assert_unchanged(&what, &before, &world.fingerprint().await);
    assert!(
        !world.dbs[&store].has_key(key).await,
        "{what}: the refusal recorded its key"
    );

    let (method, path, body, status) = good;
    let first = world.command(method.clone(), &path, &body, Some(key), status).await;
    let applied = world.fingerprint().await;
    assert!(
        applied.stores[&store].head > before.stores[&store].head,
        "{what}: the good request with the key appended nothing"
    );
    assert!(
        world.dbs[&store].has_key(key).await,
        "{what}: the good request's key is not recorded"
    );

    let repeat = world.command(method, &path, &body, Some(key), status).await;
    assert_eq!(repeat.json, first.json, "{what}: a repeat answers the first answer");
    assert_unchanged(
        &format!("{what}, the good request repeated"),
        &applied,
        &world.fingerprint().await,
    );

    let refused = world.send(bad.request(Some(key))).await;
    match again {
        Again::Refused(status, code) => Case {
            details: Vec::new(),
            ..bad.clone()
        }
        .is(status, code)
        .assert_answer(&what, &refused),
        Again::Replayed => {
            assert_eq!(refused.status, status, "{what}: {}", refused.text);
            assert_eq!(refused.json, first.json, "{what}");
        }
    }
    assert_unchanged(&format!("{what}, refused again"), &applied, &world.fingerprint().await);
}

async fn a_key_refused_with_bad_input_is_free_for_the_good_request(deployment: Deployment) {
    use StatusCode as S;
    let world = World::new(deployment).await;
    let ids = world.setup().await;
    let c = ids.customer;
    let reused = || Again::Refused(S::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    let key = |n: u32| format!("retry-{n}-{}", Uuid::new_v4().simple());

    // 400: the body is not even read as a command.
    let grace = Uuid::now_v7();
    refused_then_good(
        &world,
        &key(1),
        send("malformed JSON", Method::POST, "/v1/customers", r#"{"name": "Grace""#).invalid_json(),
        (
            Method::POST,
            "/v1/customers".to_owned(),
            json!({"customer_id": grace, "name": "Grace", "email": "grace@example.com"}),
            S::CREATED,
        ),
        Again::Refused(S::BAD_REQUEST, "invalid_json"),
    )
    .await;
    // 422: the domain's check.
    let rename = format!("/v1/customers/{c}/rename");
    refused_then_good(
        &world,
        &key(2),
        post("a blank name", &rename, json!({"name": "  "})).invalid("name"),
        (Method::POST, rename.clone(), json!({"name": "Ada Byron"}), S::OK),
        reused(),
    )
    .await;
    let change_email = format!("/v1/customers/{c}/change-email");
    refused_then_good(
        &world,
        &key(3),
        post("a bad email", &change_email, json!({"email": "nope"})).invalid("email"),
        (Method::POST, change_email, json!({"email": "byron@example.com"}), S::OK),
        reused(),
    )
    .await;
    // 409 on a stale If-Match: the same request with the version fixed is the good one, so
    // the stale one again is a repeat of it.
    let restock = format!("/v1/products/{}/restock", ids.product);
    refused_then_good(
        &world,
        &key(4),
        post("a stale If-Match", &restock, json!({"quantity": 2})).stale(format!("product-{}", ids.product)),
        (Method::POST, restock, json!({"quantity": 2}), S::OK),
        Again::Replayed,
    )
    .await;
    // 404 from another service (the customers one, asked by the orders one).
    let order = Uuid::now_v7();
    refused_then_good(
        &world,
        &key(5),
        post(
            "a customer of nobody",
            "/v1/orders",
            json!({"order_id": order, "customer_id": Uuid::nil(), "lines": [{"product_id": ids.product, "quantity": 1}]}),
        )
        .not_found("customer", Uuid::nil()),
        (
            Method::POST,
            "/v1/orders".to_owned(),
            json!({"order_id": order, "customer_id": c, "lines": [{"product_id": ids.product, "quantity": 1}]}),
            S::CREATED,
        ),
        reused(),
    )
    .await;
    // 409 on the state: the very same request is good once the state allows it.
    let deliver_key = key(6);
    let deliver = format!("/v1/orders/{}/deliver", ids.confirmed);
    let refusal = post("deliver a confirmed order", &deliver, json!({})).rejected();
    let before = world.fingerprint().await;
    let refused = world.send(refusal.request(Some(&deliver_key))).await;
    refusal.assert_answer(&refusal.what, &refused);
    assert_unchanged(&refusal.what, &before, &world.fingerprint().await);
    assert!(!world.dbs[&Service::Orders].has_key(&deliver_key).await);
    let ship = format!("/v1/orders/{}/ship", ids.confirmed);
    refused_then_good(
        &world,
        &key(7),
        post("an empty carrier", &ship, json!({"carrier": "", "tracking": "JD1"})).invalid("carrier"),
        (Method::POST, ship, json!({"carrier": "DHL", "tracking": "JD1"}), S::OK),
        reused(),
    )
    .await;
    let before = world.fingerprint().await;
    let delivered = world
        .command(Method::POST, &deliver, &json!({}), Some(&deliver_key), S::OK)
        .await;
    let after = world.fingerprint().await;
    assert!(after.stores[&Service::Orders].head > before.stores[&Service::Orders].head);
    assert!(world.dbs[&Service::Orders].has_key(&deliver_key).await);
    let repeat = world
        .command(Method::POST, &deliver, &json!({}), Some(&deliver_key), S::OK)
        .await;
    assert_eq!(repeat.json, delivered.json);
    assert_unchanged("the delivery repeated", &after, &world.fingerprint().await);
    // 409 beyond what is authorized.
    let capture = format!("/v1/payments/{}/capture", payment_id(ids.confirmed));
    refused_then_good(
        &world,
        &key(8),
        post("capture more than authorized", &capture, json!({"amount_minor": 1251})).rejected(),
        (Method::POST, capture, json!({"amount_minor": 1250}), S::OK),
        reused(),
    )
    .await;
    // 503: the payment provider did not answer; nothing recorded, the key with it.
    let payment = Uuid::now_v7();
    let authorize = json!({"payment_id": payment, "order_id": ids.pending, "amount_minor": 1250, "currency": "EUR"});
    let down = json!({"decline_rate": 0.0, "latency_ms": 0, "unavailable": true});
    world.command(Method::PUT, "/v1/gateway", &down, None, S::OK).await;
    let before = world.fingerprint().await;
    let authorize_key = key(9);
    let unavailable = world
        .send(post("authorize", "/v1/payments", authorize.clone()).request(Some(&authorize_key)))
        .await;
    post(
        "authorize while the provider is down",
        "/v1/payments",
        authorize.clone(),
    )
    .is(S::SERVICE_UNAVAILABLE, "gateway_unavailable")
    .assert_answer("authorize while the provider is down", &unavailable);
    assert_unchanged(
        "authorize while the provider is down",
        &before,
        &world.fingerprint().await,
    );
    let up = json!({"decline_rate": 0.0, "latency_ms": 0, "unavailable": false});
    world.command(Method::PUT, "/v1/gateway", &up, None, S::OK).await;
    let authorized = world
        .command(
            Method::POST,
            "/v1/payments",
            &authorize,
            Some(&authorize_key),
            S::CREATED,
        )
        .await;
    assert_eq!(authorized.json["payment_status"], "authorized", "{}", authorized.text);
    assert!(world.dbs[&Service::Payments].has_key(&authorize_key).await);
}

#[tokio::test]
async fn embedded_a_key_refused_with_bad_input_is_free_for_the_good_request() {
    a_key_refused_with_bad_input_is_free_for_the_good_request(Deployment::Embedded).await;
}

#[tokio::test]
async fn distributed_a_key_refused_with_bad_input_is_free_for_the_good_request() {
    a_key_refused_with_bad_input_is_free_for_the_good_request(Deployment::Distributed).await;
}
