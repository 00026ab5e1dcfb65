//! Where the orders service finds a customer's name and email, and a product's sku, name and
//! price, when an order is placed.
//!
//! First in its own copy ([`LiveReplica`]), fed by the customers' events. A customer registered a
//! moment ago may not be in the copy yet (the event is on its way): then it asks the customers
//! service itself, `GET /v1/customers/{id}`, through the service kit's client (a timeout,
//! retries for transient failures, a circuit breaker). We chose asking over waiting: a wait
//! would hold every order for an unknown customer for its whole bound, where one call answers
//! at once; and a customer that does not exist is known for sure only by its owner.
//!
//! - found in the copy: used, whatever the customers service's state (it may be down);
//! - not in the copy, and the customers service says 404: the order is refused, 404 customer;
//! - not in the copy, and the customers service is down (or its breaker open): 503 naming the
//!   customers service; nothing was appended.
//!
//! Products the same way, from inventory's `GET /v1/products/{id}`: the copy's price is the
//! price the order shows and the customer pays (ADR 0010); a price changed a moment ago may not
//! be in it yet, as in any shop whose page was loaded before the change.

use event_schemas::{Category, Currency, CustomerSnapshot, Money};
use serde::Deserialize;
use service_kit::client::{CallContext, ClientError, ServiceClient};
use service_kit::http::StatusCode;
use uuid::Uuid;

use super::OrdersError;
use super::replica::{LiveReplica, ProductCopy};
use crate::domain::DomainError;

/// The customer and product lookups of the orders service.
#[derive(Clone)]
pub struct Directory {
    replica: LiveReplica,
    customers: ServiceClient,
    inventory: ServiceClient,
}

/// What inventory answers (`GET /v1/products/{id}`), as far as orders needs it.
#[derive(Debug, Deserialize)]
struct ProductAnswer {
    sku: String,
    name: String,
    price_minor: i64,
    currency: String,
}

/// What the customers service answers (`GET /v1/customers/{id}`), as far as orders needs it.
#[derive(Debug, Deserialize)]
struct CustomerAnswer {
    name: String,
    email: String,
}

impl Directory {
    pub fn new(replica: LiveReplica, customers: ServiceClient, inventory: ServiceClient) -> Self {
        Directory {
            replica,
            customers,
            inventory,
        }
    }

    /// The product's sku, name and price now, or why not; see the module doc.
    pub async fn product(&self, id: Uuid, call: &CallContext) -> Result<ProductCopy, OrdersError> {
        match self.replica.product(id).await {
            Ok(Some(product)) => {
                metrics::counter!("orderflow_orders_product_lookups_total", "found_in" => "replica").increment(1);
                return Ok(product);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %service_kit::error_chain(&e), "the products copy cannot be read; asking the inventory service")
            }
        }
        metrics::counter!("orderflow_orders_product_lookups_total", "found_in" => "inventory_service").increment(1);
        match self
            .inventory
            .get_json::<ProductAnswer>(&format!("/v1/products/{id}"), call)
            .await
        {
            Ok(answer) => {
                let currency: Currency = answer.currency.parse().map_err(|_| {
                    OrdersError::Dependency(ClientError::Failed {
                        service: "inventory".to_owned(),
                        status: None,
                        reason: format!("currency {:?} of product {id}", answer.currency),
                    })
                })?;
                Ok(ProductCopy {
                    sku: answer.sku,
                    name: answer.name,
                    price: Money::new(answer.price_minor, currency),
                })
            }
            Err(ClientError::Rejected { status, .. }) if status == StatusCode::NOT_FOUND => {
                Err(OrdersError::Rejected(DomainError::NotFound {
                    what: Category::Product.name(),
                    id,
                }))
            }
            Err(e) => Err(OrdersError::Dependency(e)),
        }
    }

    /// The customer's name and email now, or why not; see the module doc.
    pub async fn customer(&self, id: Uuid, call: &CallContext) -> Result<CustomerSnapshot, OrdersError> {
        match self.replica.customer(id).await {
            Ok(Some(snapshot)) => {
                metrics::counter!("orderflow_orders_customer_lookups_total", "found_in" => "replica").increment(1);
                return Ok(snapshot);
            }
            Ok(None) => {}
            // The copy is a cache of the owner's answer: when it cannot be read, ask the owner.
            Err(e) => {
                tracing::warn!(error = %service_kit::error_chain(&e), "the customers copy cannot be read; asking the customers service")
            }
        }
        metrics::counter!("orderflow_orders_customer_lookups_total", "found_in" => "customers_service").increment(1);
        match self
            .customers
            .get_json::<CustomerAnswer>(&format!("/v1/customers/{id}"), call)
            .await
        {
            Ok(answer) => Ok(CustomerSnapshot {
                name: answer.name,
                email: answer.email,
            }),
            Err(ClientError::Rejected { status, .. }) if status == StatusCode::NOT_FOUND => {
                Err(OrdersError::Rejected(DomainError::NotFound {
                    what: Category::Customer.name(),
                    id,
                }))
            }
            Err(e) => Err(OrdersError::Dependency(e)),
        }
    }
}
