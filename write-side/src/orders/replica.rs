//! The orders service's copy of what it needs of the customers and the catalogue: each
//! customer's name and email, each product's sku, name and price. It is a projection of the
//! customers' and the inventory's events (event-driven data sync) into the orders service's own
//! database, kept like any projection: rows and checkpoints in one transaction, each row guarded
//! by its stream's version, so redelivery and any interleaving of the two logs converge; and
//! rebuildable from the two logs.
//!
//! A copy lags its source by the time the events take to arrive. [`super::CustomerDirectory`] says what
//! placing an order does when the copy has not seen a customer yet; the inventory's answer to a
//! reservation, not this copy, is the authority for a product's price.

use async_trait::async_trait;
use event_schemas::{Currency, CustomerEvent, CustomerSnapshot, DomainEvent, Money, ProductEvent};
use projections::{
    Batch, Checkpoint, Projection, ProjectionError, ReadDb, save_checkpoints, save_dead_letters, to_i64,
};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

/// The projection's name: part of the stored data (tables, checkpoints). Never rename.
pub const NAME: &str = "orders_replica";

/// What the copy knows of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductCopy {
    pub sku: String,
    pub name: String,
    pub price: Money,
}

/// The copy as reads see it: its live version, looked up at each read (a rebuild switches it).
#[derive(Debug, Clone)]
pub struct LiveReplica {
    db: ReadDb,
}

impl LiveReplica {
    pub fn new(db: ReadDb) -> Self {
        LiveReplica { db }
    }

    async fn live(&self) -> Result<Option<Replica>, ProjectionError> {
        Ok(self
            .db
            .live_version(NAME)
            .await?
            .map(|version| Replica::new(self.db.clone(), version)))
    }

    /// See [`Replica::customer`]; `None` too while the copy has no live version.
    pub async fn customer(&self, id: Uuid) -> Result<Option<CustomerSnapshot>, ProjectionError> {
        match self.live().await? {
            Some(replica) => replica.customer(id).await,
            None => Ok(None),
        }
    }

    /// See [`Replica::product`]; `None` too while the copy has no live version.
    pub async fn product(&self, id: Uuid) -> Result<Option<ProductCopy>, ProjectionError> {
        match self.live().await? {
            Some(replica) => replica.product(id).await,
            None => Ok(None),
        }
    }
}

/// The copy's factory, for the projection runtime and rebuilds.
pub fn factory(db: ReadDb) -> projections::ProjectionFactory {
    std::sync::Arc::new(move |version| {
        std::sync::Arc::new(Replica::new(db.clone(), version)) as std::sync::Arc<dyn Projection>
    })
}

/// One version of the copy, in `db` (the orders service's database).
#[derive(Debug, Clone)]
pub struct Replica {
    db: ReadDb,
    version: u32,
    customers: String,
    products: String,
}

impl Replica {
    pub fn new(db: ReadDb, version: u32) -> Self {
        Replica {
            db,
            version,
            customers: format!("{NAME}_v{version}_customers"),
            products: format!("{NAME}_v{version}_products"),
        }
    }

    /// The customer's name and email, if the copy has seen the customer registered.
    pub async fn customer(&self, id: Uuid) -> Result<Option<CustomerSnapshot>, ProjectionError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT name, email FROM {} WHERE customer_id = $1",
            self.customers
        )))
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| {
            Ok(CustomerSnapshot {
                name: row.try_get(0)?,
                email: row.try_get(1)?,
            })
        })
        .transpose()
    }

    /// The product's sku, name and price, if the copy has seen it added.
    pub async fn product(&self, id: Uuid) -> Result<Option<ProductCopy>, ProjectionError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT sku, name, price_minor, currency FROM {} WHERE product_id = $1",
            self.products
        )))
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let currency: String = row.try_get(3)?;
        let currency: Currency = currency
            .parse()
            .map_err(|_| ProjectionError::Inconsistent(format!("product {id} has currency {currency:?}")))?;
        Ok(Some(ProductCopy {
            sku: row.try_get(0)?,
            name: row.try_get(1)?,
            price: Money::new(row.try_get(2)?, currency),
        }))
    }

    /// The statements that apply one event (none for the events the copy has no use for).
    fn statements(&self, event: &DomainEvent, version: i64) -> Vec<(String, Vec<Value>)> {
        let guard = "WHERE excluded.stream_version > {table}.stream_version";
        match event {
            DomainEvent::Customer(CustomerEvent::Registered(e)) => vec![(
                format!(
                    "INSERT INTO {t} (customer_id, name, email, stream_version) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (customer_id) DO UPDATE SET name = excluded.name, email = excluded.email, \
                     stream_version = excluded.stream_version {g}",
                    t = self.customers,
                    g = guard.replace("{table}", &self.customers)
                ),
                vec![
                    Value::Text(e.customer_id.to_string()),
                    Value::Text(e.name.clone()),
                    Value::Text(e.email.clone()),
                    Value::Int(version),
                ],
            )],
            DomainEvent::Customer(CustomerEvent::Renamed(e)) => vec![self.update(
                &self.customers,
                "customer_id",
                "name = $3",
                e.customer_id,
                version,
                vec![Value::Text(e.name.clone())],
            )],
            DomainEvent::Customer(CustomerEvent::EmailChanged(e)) => vec![self.update(
                &self.customers,
                "customer_id",
                "email = $3",
                e.customer_id,
                version,
                vec![Value::Text(e.email.clone())],
            )],
            DomainEvent::Product(ProductEvent::Added(e)) => vec![(
                format!(
                    "INSERT INTO {t} (product_id, sku, name, price_minor, currency, stream_version) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (product_id) DO UPDATE SET sku = excluded.sku, name = excluded.name, \
                     price_minor = excluded.price_minor, currency = excluded.currency, \
                     stream_version = excluded.stream_version {g}",
                    t = self.products,
                    g = guard.replace("{table}", &self.products)
                ),
                vec![
                    Value::Text(e.product_id.to_string()),
                    Value::Text(e.sku.clone()),
                    Value::Text(e.name.clone()),
                    Value::Int(e.price.amount_minor),
                    Value::Text(e.price.currency.as_str().to_owned()),
                    Value::Int(version),
                ],
            )],
            DomainEvent::Product(ProductEvent::PriceChanged(e)) => vec![self.update(
                &self.products,
                "product_id",
                "price_minor = $3",
                e.product_id,
                version,
                vec![Value::Int(e.price.amount_minor)],
            )],
            // A later event of the same stream also moves the guard, so that a replayed older
            // event never overwrites a newer value.
            DomainEvent::Product(other) => vec![self.touch(&self.products, "product_id", other.product_id(), version)],
            _ => Vec::new(),
        }
    }

    /// `UPDATE table SET <set>, stream_version = $2 WHERE key = $1 AND stream_version < $2`.
    fn update(
        &self,
        table: &str,
        key: &str,
        set: &str,
        id: Uuid,
        version: i64,
        values: Vec<Value>,
    ) -> (String, Vec<Value>) {
        let mut binds = vec![Value::Text(id.to_string()), Value::Int(version)];
        binds.extend(values);
        (
            format!("UPDATE {table} SET {set}, stream_version = $2 WHERE {key} = $1 AND stream_version < $2"),
            binds,
        )
    }

    fn touch(&self, table: &str, key: &str, id: Uuid, version: i64) -> (String, Vec<Value>) {
        (
            format!("UPDATE {table} SET stream_version = $2 WHERE {key} = $1 AND stream_version < $2"),
            vec![Value::Text(id.to_string()), Value::Int(version)],
        )
    }
}

/// A bound value of the copy's statements.
enum Value {
    Text(String),
    Int(i64),
}

#[async_trait]
impl Projection for Replica {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn prepare(&self) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, \
                 email TEXT NOT NULL, stream_version BIGINT NOT NULL)",
                self.customers
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (product_id TEXT PRIMARY KEY, sku TEXT NOT NULL, name TEXT NOT NULL, \
                 price_minor BIGINT NOT NULL, currency TEXT NOT NULL, stream_version BIGINT NOT NULL)",
                self.products
            ),
        ] {
            sqlx::query(AssertSqlSafe(statement)).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn drop_version(&self) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        for table in [&self.customers, &self.products] {
            sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn checkpoints(&self) -> Result<Vec<Checkpoint>, ProjectionError> {
        self.db.checkpoints(NAME, self.version).await
    }

    async fn apply(&self, batch: &Batch) -> Result<(), ProjectionError> {
        let mut tx = self.db.begin_write().await?;
        for event in &batch.events {
            for (sql, values) in self.statements(&event.event, to_i64(event.stream_version)) {
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for value in values {
                    query = match value {
                        Value::Text(text) => query.bind(text),
                        Value::Int(int) => query.bind(int),
                    };
                }
                query.execute(&mut *tx).await?;
            }
        }
        save_checkpoints(&mut tx, NAME, self.version, &batch.checkpoints()).await?;
        save_dead_letters(&mut tx, NAME, self.version, &batch.dead_letters).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn healthy(&self) -> bool {
        let probe = sqlx::query("SELECT 1").execute(self.db.pool());
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), probe).await,
            Ok(Ok(_))
        )
    }
}
