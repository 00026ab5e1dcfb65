//! Where the orders service finds a customer's name and email when an order is placed.
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
//!   customers service; nothing was reserved, nothing appended.

use event_schemas::{Category, CustomerSnapshot};
use serde::Deserialize;
use service_kit::client::{CallContext, ClientError, ServiceClient};
use service_kit::http::StatusCode;
use uuid::Uuid;

use super::OrdersError;
use super::replica::LiveReplica;
use crate::domain::DomainError;

/// The customer lookups of the orders service.
#[derive(Clone)]
pub struct CustomerDirectory {
    replica: LiveReplica,
    customers: ServiceClient,
}

/// What the customers service answers (`GET /v1/customers/{id}`), as far as orders needs it.
#[derive(Debug, Deserialize)]
struct CustomerAnswer {
    name: String,
    email: String,
}

impl CustomerDirectory {
    pub fn new(replica: LiveReplica, customers: ServiceClient) -> Self {
        CustomerDirectory { replica, customers }
    }

    /// The customer's name and email now, or why not; see the module doc.
    pub async fn snapshot(&self, id: Uuid, call: &CallContext) -> Result<CustomerSnapshot, OrdersError> {
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
