//! [`Category`]: the aggregate kinds, their stream ids and their Kafka topics.

use std::fmt;

use uuid::Uuid;

use crate::DecodeError;

/// The kind of aggregate an event belongs to. Each has its own `oneof` message, its own streams
/// (`{name}-{uuid}`) and its own Kafka topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Customer,
    Product,
    Order,
    Payment,
    /// The place-order saga of an order (ADR 0010): `saga-{order id}`, owned by the orders
    /// service.
    Saga,
}

impl Category {
    /// Every category, in a fixed order.
    pub const ALL: [Self; 5] = [Self::Customer, Self::Product, Self::Order, Self::Payment, Self::Saga];

    /// Stable name: the prefix of the category's stream ids and of its event type names.
    /// Stored in every stream id: never rename.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Product => "product",
            Self::Order => "order",
            Self::Payment => "payment",
            Self::Saga => "saga",
        }
    }

    /// The Kafka topic the relay publishes this category's envelopes to (key = stream id).
    /// Consumers subscribe by this name: never rename; a breaking change gets a new `.v2` topic.
    pub const fn topic(self) -> &'static str {
        match self {
            Self::Customer => "orderflow.customers.v1",
            Self::Product => "orderflow.products.v1",
            Self::Order => "orderflow.orders.v1",
            Self::Payment => "orderflow.payments.v1",
            Self::Saga => "orderflow.sagas.v1",
        }
    }

    /// The category whose [`name`](Self::name) is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|category| category.name() == name)
    }

    /// The id of the stream holding the events of aggregate `id`: `{name}-{uuid}`, the UUID
    /// hyphenated and lower-case, e.g. `order-67e55044-10b1-426f-9247-bb680e5fe0c8`.
    pub fn stream_id(self, id: Uuid) -> String {
        format!("{}-{}", self.name(), id.hyphenated())
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Reads a stream id made by [`Category::stream_id`] back into its category and aggregate id.
///
/// Only the canonical spelling is accepted (hyphenated lower-case UUID), so that one aggregate
/// never has two stream ids.
pub fn parse_stream_id(stream_id: &str) -> Result<(Category, Uuid), DecodeError> {
    let invalid = || DecodeError::InvalidStreamId(stream_id.to_owned());
    let (name, id) = stream_id.split_once('-').ok_or_else(invalid)?;
    let category = Category::from_name(name).ok_or_else(invalid)?;
    let uuid = Uuid::try_parse(id).map_err(|_| invalid())?;
    if uuid.hyphenated().to_string() != id {
        return Err(invalid());
    }
    Ok((category, uuid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Uuid = Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);

    #[test]
    fn stream_ids_round_trip() {
        for category in Category::ALL {
            let stream_id = category.stream_id(ID);
            assert_eq!(stream_id, format!("{category}-67e55044-10b1-426f-9247-bb680e5fe0c8"));
            assert_eq!(parse_stream_id(&stream_id).ok(), Some((category, ID)));
        }
    }

    #[test]
    fn names_and_topics_are_stable() {
        let names = Category::ALL.map(Category::name);
        assert_eq!(names, ["customer", "product", "order", "payment", "saga"]);
        let topics = Category::ALL.map(Category::topic);
        assert_eq!(
            topics,
            [
                "orderflow.customers.v1",
                "orderflow.products.v1",
                "orderflow.orders.v1",
                "orderflow.payments.v1",
                "orderflow.sagas.v1"
            ]
        );
    }

    #[test]
    fn rejects_non_canonical_stream_ids() {
        for bad in [
            "",
            "order",
            "order-",
            "invoice-67e55044-10b1-426f-9247-bb680e5fe0c8",
            "Order-67e55044-10b1-426f-9247-bb680e5fe0c8",
            "order-67E55044-10B1-426F-9247-BB680E5FE0C8",
            "order-67e5504410b1426f9247bb680e5fe0c8",
            "order-{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "order-67e55044-10b1-426f-9247-bb680e5fe0c8-",
        ] {
            assert!(
                matches!(parse_stream_id(bad), Err(DecodeError::InvalidStreamId(s)) if s == bad),
                "{bad:?} was accepted"
            );
        }
    }
}
