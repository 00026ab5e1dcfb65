//! What the peers' aggregates share: the order (place → confirm → ship) and the product whose
//! stock is restocked (the contention workload), with events of about [`EVENT_BYTES`] of JSON
//! each, and the values the commands carry. Each peer defines its own types in the shape its
//! framework wants (the id inside the event or beside it); the fields and sizes are the same.

use serde::Serialize;
use uuid::Uuid;

/// The size the peers' events are padded to, serialized as JSON: orderflow's order events
/// encode to 100-300 bytes of protobuf (`OrderPlaced` with one line, about 250).
pub(crate) const EVENT_BYTES: usize = 250;

/// A `note` that brings `build(note)` to [`EVENT_BYTES`] of JSON (as the framework stores it:
/// `build` gives the serialized form, with the id or the enum tag if it keeps them).
pub(crate) fn padding<T: Serialize>(build: impl Fn(String) -> T) -> String {
    let base = serde_json::to_vec(&build(String::new())).map_or(0, |v| v.len());
    "x".repeat(EVENT_BYTES.saturating_sub(base))
}

/// A fixed id of the usual width, to size the padding with.
pub(crate) const SAMPLE_ID: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

/// The values of a placement: one line of one product, as orderflow's benchmark places them
/// (orderflow's own placement prices the line from its catalogue copy; the peers get the
/// price with the command).
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub(crate) customer_id: Uuid,
    pub(crate) product_id: Uuid,
    pub(crate) sku: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price_minor: i64,
}

impl Placement {
    /// Writer `w`'s `seq`-th placement (deterministic, varied).
    pub(crate) fn of(w: usize, seq: u64) -> Self {
        let n = (w as u64).wrapping_mul(7919).wrapping_add(seq);
        Placement {
            customer_id: Uuid::from_u128(0xc000 + u128::from(n % 100)),
            product_id: Uuid::from_u128(0xb000 + u128::from(n % 200)),
            sku: format!("SKU-{:05}", n % 200),
            quantity: 1 + (n % 3) as i64,
            unit_price_minor: 100 + ((n % 200) as i64 * 37) % 10_000,
        }
    }

    pub(crate) fn total_minor(&self) -> i64 {
        self.quantity * self.unit_price_minor
    }
}

pub(crate) const CURRENCY: &str = "EUR";
pub(crate) const CONFIRMED_BY: &str = "bench";
pub(crate) const CARRIER: &str = "DHL";
pub(crate) const TRACKING: &str = "TRK-0000000001";

/// Every writer's order id: new, and time-ordered like orderflow's.
pub(crate) fn new_id() -> Uuid {
    Uuid::now_v7()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Sample {
        id: Uuid,
        note: String,
    }

    #[test]
    fn padding_brings_an_event_to_the_size() {
        let note = padding(|note| Sample { id: SAMPLE_ID, note });
        let len = serde_json::to_vec(&Sample { id: SAMPLE_ID, note }).map_or(0, |v| v.len());
        assert_eq!(len, EVENT_BYTES);
    }
}

/// Where an order is in its lifecycle, in every peer's aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) enum Status {
    #[default]
    New,
    Placed,
    Confirmed,
    Shipped,
}

/// The order's commands, for the peers whose aggregates take one command type.
#[derive(Debug)]
pub(crate) enum OrderCommand {
    Place(Placement),
    Confirm,
    Ship,
}

/// Why a peer's aggregate refuses a command.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DomainError {
    #[error("invalid transition from {0:?}")]
    InvalidTransition(Status),
    #[error("no such product")]
    NoProduct,
    #[error("the product exists already")]
    ProductExists,
}
