//! The OpenAPI schemas of the dashboard's answers: [`projections::dashboard::OrderRow`],
//! [`projections::dashboard::Page`], [`projections::dashboard::CustomerSummary`] and
//! [`projections::dashboard::CustomerPage`] as JSON, with what each field means. They only
//! document (the handlers answer the projections' own types); a test checks that they name
//! exactly the fields those types serialize.

#![allow(dead_code)] // Read by the OpenAPI derive only.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// An order's lifecycle state: `pending` (placed, not confirmed yet), `confirmed`, `shipped`,
/// `delivered`, `cancelled`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DashboardOrderStatus {
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

/// Where the order's place-order saga stands (the orders service's process manager, which
/// reserves the stock, authorizes the payment and confirms the order, or compensates), as the
/// saga's own events tell it, first match wins: `completed` (nothing left to do), `parked`
/// (stopped on an answer it cannot act on, until an operator retries or abandons it),
/// `compensating` (it failed: voiding or refunding the payment, releasing the stock,
/// cancelling the order), `reserving` (reserving the lines' stock), `authorizing` (every line
/// reserved, authorizing the payment), `confirming` (authorized, confirming the order),
/// `awaiting_shipment` (confirmed; it captures the payment when the order ships, then
/// completes).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DashboardSagaState {
    Reserving,
    Authorizing,
    Confirming,
    AwaitingShipment,
    Compensating,
    Parked,
    Completed,
}

/// Why an order was cancelled, stable: `requested` (a client cancelled it), `out_of_stock` (a
/// line's stock could not be reserved), `payment_declined` (the payment provider refused it),
/// `payment_unavailable` (payments did not answer before the deadline), `timed_out` (the
/// deadline passed before the order was confirmed), `abandoned` (an operator abandoned its
/// parked saga).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DashboardReasonCode {
    Requested,
    OutOfStock,
    PaymentDeclined,
    PaymentUnavailable,
    TimedOut,
    Abandoned,
}

/// Where the order's payment stands: `none` (no payment recorded for the order yet),
/// `authorized` (an amount reserved, nothing collected), `captured` (collected; a partial
/// refund leaves it `captured`, with `refunded_minor` > 0), `refunded` (everything captured was
/// paid back), `declined` (the provider refused it), `voided` (the authorization was released
/// without collecting, or the payment was voided before any authorization).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DashboardPaymentStatus {
    None,
    Authorized,
    Captured,
    Refunded,
    Declined,
    Voided,
}

/// One order as the dashboard shows it. Money is integer minor units (e.g. cents).
///
/// The `payment_*` fields and `authorized_minor`, `captured_minor`, `refunded_minor` are the
/// order's payment, kept from the payments service's events, which may arrive before or after
/// the order's. An order may have several payments (a declined attempt, then another): the row
/// shows one that holds or held money (authorized, captured or refunded) rather than one that
/// failed (declined or voided), and among those the one started latest; `payment_count` counts
/// them all. With no payment: `payment_status` `none`, the ids, currency, reason and time null,
/// the amounts and the count 0. "As of" a time or position, the payment as it was then.
#[derive(Serialize, ToSchema)]
pub(crate) struct DashboardOrder {
    pub(crate) order_id: Uuid,
    pub(crate) customer_id: Uuid,
    /// The customer's current name (as of a past point, the name then); the order's own
    /// snapshot while the customer's events have not been seen.
    pub(crate) customer_name: String,
    pub(crate) customer_email: String,
    pub(crate) status: DashboardOrderStatus,
    /// The sum of the lines' quantities.
    pub(crate) item_count: i64,
    /// The order's total, in minor units of `currency`.
    pub(crate) total_minor: i64,
    /// ISO 4217 code of the order.
    pub(crate) currency: String,
    pub(crate) placed_at: DateTime<Utc>,
    pub(crate) confirmed_at: Option<DateTime<Utc>>,
    pub(crate) shipped_at: Option<DateTime<Utc>>,
    pub(crate) delivered_at: Option<DateTime<Utc>>,
    pub(crate) cancelled_at: Option<DateTime<Utc>>,
    /// Why the order was cancelled, for people (free text).
    pub(crate) cancel_reason: Option<String>,
    /// Why the order was cancelled, stable (filter lists with `reason_code`); null when it is
    /// not cancelled, or its cancellation was recorded without a code (before the saga).
    pub(crate) reason_code: Option<DashboardReasonCode>,
    pub(crate) carrier: Option<String>,
    pub(crate) tracking: Option<String>,
    /// Where the order's place-order saga stands; null for an order without a saga (placed
    /// before the saga existed, or whose saga's events this version of the dashboard has not
    /// seen). "As of" a time or position, the saga's state then.
    pub(crate) saga_state: Option<DashboardSagaState>,
    /// When the orders service recorded the saga's last event; null without a saga.
    pub(crate) saga_updated_at: Option<DateTime<Utc>>,
    pub(crate) payment_status: DashboardPaymentStatus,
    /// The id of the payment shown; null without any payment.
    pub(crate) payment_id: Option<Uuid>,
    /// ISO 4217 code of the payment's amounts (its authorization's); null without a payment, or
    /// while none of it was authorized (declined, or voided before an authorization).
    pub(crate) payment_currency: Option<String>,
    /// The amount the authorization reserved, in minor units of `payment_currency` (kept once
    /// captured, refunded or voided); 0 before an authorization.
    pub(crate) authorized_minor: i64,
    /// The amount collected, in minor units of `payment_currency`.
    pub(crate) captured_minor: i64,
    /// The amount paid back so far (the sum of the refunds), in minor units of
    /// `payment_currency`; what the payment keeps is `captured_minor - refunded_minor`.
    pub(crate) refunded_minor: i64,
    /// Why the payment was declined or voided; null in the other statuses.
    pub(crate) payment_reason: Option<String>,
    /// When the payments service recorded the payment's last event; null without a payment.
    pub(crate) payment_updated_at: Option<DateTime<Utc>>,
    /// How many payments were recorded for the order, failed attempts included.
    pub(crate) payment_count: u64,
    /// The version of the order's own stream this row reflects (payments do not change it).
    pub(crate) stream_version: u64,
    /// The position, in the orders log, of that version's event.
    pub(crate) last_position: u64,
    /// When the store recorded that event.
    pub(crate) updated_at: DateTime<Utc>,
}

/// A page of orders.
#[derive(Serialize, ToSchema)]
pub(crate) struct DashboardOrderPage {
    pub(crate) rows: Vec<DashboardOrder>,
    /// The `cursor` of the next page; null on the last page.
    pub(crate) next_cursor: Option<String>,
}

/// A customer's lifetime value in one currency.
#[derive(Serialize, ToSchema)]
pub(crate) struct DashboardCurrencyTotal {
    /// ISO 4217 code.
    pub(crate) currency: String,
    /// Orders placed in this currency, cancelled or not.
    pub(crate) order_count: u64,
    /// The totals of those orders that are not cancelled, in minor units of `currency`.
    pub(crate) lifetime_value_minor: i64,
}

/// A customer's most recent order (the one placed latest in the orders log).
#[derive(Serialize, ToSchema)]
pub(crate) struct DashboardLastOrder {
    pub(crate) order_id: Uuid,
    pub(crate) placed_at: DateTime<Utc>,
}

/// What the dashboard knows about a customer: the same as `/v1/dashboard/customers/{id}`
/// answers.
#[derive(Serialize, ToSchema)]
pub(crate) struct DashboardCustomer {
    pub(crate) customer_id: Uuid,
    /// The customer's current name; the snapshot of its latest order while the customer's own
    /// events have not been seen.
    pub(crate) name: String,
    pub(crate) email: String,
    /// The customer stream's version applied; 0 while the customer is only known from the
    /// snapshots of its orders.
    pub(crate) stream_version: u64,
    /// Every order placed, cancelled or not, in any currency.
    pub(crate) order_count: u64,
    /// Per currency, sorted by currency code; empty without orders.
    pub(crate) lifetime_value: Vec<DashboardCurrencyTotal>,
    /// Null without orders.
    pub(crate) last_order: Option<DashboardLastOrder>,
}

/// A page of customers, sorted by name (byte-wise, case as stored) then customer id.
#[derive(Serialize, ToSchema)]
pub(crate) struct DashboardCustomerPage {
    pub(crate) rows: Vec<DashboardCustomer>,
    /// The `after` of the next page; null on the last page.
    pub(crate) next_after: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use projections::dashboard::{
        CurrencyTotal, CustomerPage, CustomerSummary, LastOrder, OrderRow, OrderStatus, Page, PaymentStatus, SagaState,
    };
    use utoipa::OpenApi as _;

    use super::*;

    fn row() -> OrderRow {
        OrderRow {
            order_id: Uuid::nil(),
            customer_id: Uuid::nil(),
            customer_name: String::new(),
            customer_email: String::new(),
            status: OrderStatus::Pending,
            item_count: 1,
            total_minor: 1,
            currency: "EUR".into(),
            placed_at: DateTime::UNIX_EPOCH,
            confirmed_at: None,
            shipped_at: None,
            delivered_at: None,
            cancelled_at: None,
            cancel_reason: None,
            reason_code: None,
            carrier: None,
            tracking: None,
            saga_state: None,
            saga_updated_at: None,
            payment_status: PaymentStatus::None,
            payment_id: None,
            payment_currency: None,
            authorized_minor: 0,
            captured_minor: 0,
            refunded_minor: 0,
            payment_reason: None,
            payment_updated_at: None,
            payment_count: 0,
            stream_version: 1,
            last_position: 1,
            updated_at: DateTime::UNIX_EPOCH,
        }
    }

    fn keys(value: &serde_json::Value) -> BTreeSet<String> {
        value.as_object().unwrap().keys().cloned().collect()
    }

    fn names<T: Serialize>(values: impl IntoIterator<Item = T>) -> BTreeSet<String> {
        values
            .into_iter()
            .map(|v| serde_json::to_value(v).unwrap().as_str().unwrap().to_owned())
            .collect()
    }

    /// The documented schemas name exactly what the projections' types serialize, and every
    /// status they can answer.
    #[test]
    fn the_schemas_document_the_answers_exactly() {
        let document = serde_json::to_value(crate::ops::ApiDoc::openapi()).unwrap();
        let schemas = &document["components"]["schemas"];
        let row = serde_json::to_value(row()).unwrap();
        assert_eq!(keys(&schemas["DashboardOrder"]["properties"]), keys(&row));
        let page = serde_json::to_value(Page {
            rows: vec![],
            next_cursor: None,
        })
        .unwrap();
        assert_eq!(keys(&schemas["DashboardOrderPage"]["properties"]), keys(&page));
        let total = CurrencyTotal {
            currency: "EUR".into(),
            order_count: 1,
            lifetime_value_minor: 1,
        };
        let last_order = LastOrder {
            order_id: Uuid::nil(),
            placed_at: DateTime::UNIX_EPOCH,
        };
        let customer = CustomerSummary {
            customer_id: Uuid::nil(),
            name: String::new(),
            email: String::new(),
            stream_version: 1,
            order_count: 1,
            lifetime_value: vec![total.clone()],
            last_order: Some(last_order.clone()),
        };
        for (schema, answer) in [
            ("DashboardCurrencyTotal", serde_json::to_value(total).unwrap()),
            ("DashboardLastOrder", serde_json::to_value(last_order).unwrap()),
            ("DashboardCustomer", serde_json::to_value(customer).unwrap()),
            (
                "DashboardCustomerPage",
                serde_json::to_value(CustomerPage {
                    rows: vec![],
                    next_after: None,
                })
                .unwrap(),
            ),
        ] {
            assert_eq!(keys(&schemas[schema]["properties"]), keys(&answer), "{schema}");
        }
        for (schema, answered) in [
            ("DashboardOrderStatus", names(OrderStatus::ALL)),
            ("DashboardPaymentStatus", names(PaymentStatus::ALL)),
            ("DashboardSagaState", names(SagaState::ALL)),
            ("DashboardReasonCode", names(projections::REASON_CODES)),
        ] {
            let documented: BTreeSet<String> = schemas[schema]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(documented, answered, "{schema}");
        }
        let paths = &document["paths"];
        for (path, schema) in [
            ("/v1/dashboard/orders", "DashboardOrderPage"),
            ("/v1/dashboard/orders/{id}", "DashboardOrder"),
            ("/v1/dashboard/customers", "DashboardCustomerPage"),
        ] {
            let reference = &paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(reference, &format!("#/components/schemas/{schema}"), "{path}");
        }
    }
}
