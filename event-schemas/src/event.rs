//! [`DomainEvent`] and its categories, the table of known event types, and encoding and
//! decoding of event payloads.

use prost::Message;
use uuid::Uuid;

use crate::{Category, DecodeError, Upcasters, proto};

/// Gives an event struct its stable type name and current schema version. Defined before the
/// category modules so that they see it.
macro_rules! event_type {
    ($event:ident, $name:literal, version $version:literal) => {
        impl $event {
            #[doc = concat!("`\"", $name, "\"`: the stable type name, stored with every event of this kind.")]
            /// Never rename it, never reuse it for another event.
            pub const EVENT_TYPE: &'static str = $name;

            /// The schema version this build writes, and decodes every stored version to.
            /// Raising it needs an upcaster from the previous version and a fixture of the new one.
            pub const SCHEMA_VERSION: u32 = $version;
        }
    };
}

mod customer;
mod order;
mod payment;
mod product;
mod saga;

pub use customer::{CustomerEmailChanged, CustomerEvent, CustomerRegistered, CustomerRenamed};
pub use order::{
    CustomerSnapshot, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine, OrderPlaced, OrderShipped,
};
pub use payment::{PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentEvent, PaymentRefunded, PaymentVoided};
pub use product::{
    ProductAdded, ProductEvent, ProductPriceChanged, ProductRestocked, ProductStockReleased, ProductStockReserved,
};
pub use saga::{
    SagaCompleted, SagaConfirmed, SagaEvent, SagaFailed, SagaLine, SagaOrderCancelled, SagaParked,
    SagaPaymentAuthorized, SagaPaymentCaptured, SagaPaymentRefunded, SagaPaymentVoided, SagaResumed, SagaStarted,
    SagaStockReleased, SagaStockReserved,
};

/// Any orderflow event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    Customer(CustomerEvent),
    Product(ProductEvent),
    Order(OrderEvent),
    Payment(PaymentEvent),
    Saga(SagaEvent),
}

impl DomainEvent {
    /// The kind of aggregate the event belongs to.
    pub const fn category(&self) -> Category {
        match self {
            Self::Customer(_) => Category::Customer,
            Self::Product(_) => Category::Product,
            Self::Order(_) => Category::Order,
            Self::Payment(_) => Category::Payment,
            Self::Saga(_) => Category::Saga,
        }
    }

    /// The stable type name, e.g. `"order.placed"`.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Customer(e) => e.event_type(),
            Self::Product(e) => e.event_type(),
            Self::Order(e) => e.event_type(),
            Self::Payment(e) => e.event_type(),
            Self::Saga(e) => e.event_type(),
        }
    }

    /// The schema version [`encode`](Self::encode) writes.
    pub const fn schema_version(&self) -> u32 {
        match self {
            Self::Customer(e) => e.schema_version(),
            Self::Product(e) => e.schema_version(),
            Self::Order(e) => e.schema_version(),
            Self::Payment(e) => e.schema_version(),
            Self::Saga(e) => e.schema_version(),
        }
    }

    /// The id of the aggregate the event belongs to: the customer of a customer event, the
    /// product of a product event (also for stock reserved for an order), and so on; the order of
    /// a saga event (a saga's stream is `saga-{order id}`).
    pub const fn aggregate_id(&self) -> Uuid {
        match self {
            Self::Customer(e) => e.customer_id(),
            Self::Product(e) => e.product_id(),
            Self::Order(e) => e.order_id(),
            Self::Payment(e) => e.payment_id(),
            Self::Saga(e) => e.order_id(),
        }
    }

    /// The stream the event is appended to, e.g. `order-67e55044-10b1-426f-9247-bb680e5fe0c8`.
    pub fn stream_id(&self) -> String {
        self.category().stream_id(self.aggregate_id())
    }

    /// The payload as the event store holds it (the encoded category message), with the type
    /// name and schema version to store beside it.
    pub fn encode(&self) -> EncodedEvent {
        let payload = match self {
            Self::Customer(e) => proto::CustomerEvent::from(e).encode_to_vec(),
            Self::Product(e) => proto::ProductEvent::from(e).encode_to_vec(),
            Self::Order(e) => proto::OrderEvent::from(e).encode_to_vec(),
            Self::Payment(e) => proto::PaymentEvent::from(e).encode_to_vec(),
            Self::Saga(e) => proto::SagaEvent::from(e).encode_to_vec(),
        };
        EncodedEvent {
            event_type: self.event_type(),
            schema_version: self.schema_version(),
            payload,
        }
    }
}

/// An event ready to store: the three columns [`decode`] takes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    pub event_type: &'static str,
    pub schema_version: u32,
    /// The encoded category message (`proto::OrderEvent`, ...).
    pub payload: Vec<u8>,
}

/// Reads a stored event: the payload of `schema_version` is upcast step by step to the current
/// version of `event_type` ([`Upcasters::builtin`]), decoded, and checked to hold an event of
/// that type.
///
/// Fails on an unknown type name, a version newer than this build knows (or 0), malformed bytes,
/// an empty `oneof`, a payload that holds another type than `event_type`, and any field that is
/// not what its type requires (see [`DecodeError`]).
pub fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<DomainEvent, DecodeError> {
    Upcasters::builtin().decode(event_type, schema_version, payload)
}

/// Decodes a payload already at the current schema version of its type, as `category`'s message.
pub(crate) fn decode_current(category: Category, payload: &[u8]) -> Result<DomainEvent, DecodeError> {
    fn decode_as<M, E>(message: &'static str, payload: &[u8]) -> Result<E, DecodeError>
    where
        M: Message + Default,
        E: TryFrom<M, Error = DecodeError>,
    {
        let decoded = M::decode(payload).map_err(|source| DecodeError::Protobuf { message, source })?;
        E::try_from(decoded)
    }

    Ok(match category {
        Category::Customer => DomainEvent::Customer(decode_as::<proto::CustomerEvent, _>("CustomerEvent", payload)?),
        Category::Product => DomainEvent::Product(decode_as::<proto::ProductEvent, _>("ProductEvent", payload)?),
        Category::Order => DomainEvent::Order(decode_as::<proto::OrderEvent, _>("OrderEvent", payload)?),
        Category::Payment => DomainEvent::Payment(decode_as::<proto::PaymentEvent, _>("PaymentEvent", payload)?),
        Category::Saga => DomainEvent::Saga(decode_as::<proto::SagaEvent, _>("SagaEvent", payload)?),
    })
}

/// What this build knows about one event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSchema {
    /// Stable type name, e.g. `"order.placed"`.
    pub event_type: &'static str,
    /// The category message its payload is encoded as.
    pub category: Category,
    /// The current schema version: what this build writes and decodes to.
    pub schema_version: u32,
}

impl EventSchema {
    /// The schema of a known event type.
    pub fn find(event_type: &str) -> Option<&'static Self> {
        EVENT_SCHEMAS.iter().find(|schema| schema.event_type == event_type)
    }
}

/// Lists every event type once: builds [`EVENT_SCHEMAS`] and the `From` conversions that wrap an
/// event struct into its category enum and into [`DomainEvent`].
macro_rules! schemas {
    ($($category:ident($category_event:ident) { $($variant:ident($event:ident)),+ $(,)? })+) => {
        /// Every event type this build knows, with its category and current schema version.
        /// Entries are only ever added: a type name stays known as long as stored events use it.
        pub const EVENT_SCHEMAS: &[EventSchema] = &[$($(
            EventSchema {
                event_type: $event::EVENT_TYPE,
                category: Category::$category,
                schema_version: $event::SCHEMA_VERSION,
            },
        )+)+];

        $(
            impl From<$category_event> for DomainEvent {
                fn from(event: $category_event) -> Self {
                    Self::$category(event)
                }
            }

            $(
                impl From<$event> for $category_event {
                    fn from(event: $event) -> Self {
                        Self::$variant(event)
                    }
                }

                impl From<$event> for DomainEvent {
                    fn from(event: $event) -> Self {
                        Self::$category($category_event::$variant(event))
                    }
                }
            )+
        )+
    };
}

schemas! {
    Customer(CustomerEvent) {
        Registered(CustomerRegistered),
        Renamed(CustomerRenamed),
        EmailChanged(CustomerEmailChanged),
    }
    Product(ProductEvent) {
        Added(ProductAdded),
        PriceChanged(ProductPriceChanged),
        Restocked(ProductRestocked),
        StockReserved(ProductStockReserved),
        StockReleased(ProductStockReleased),
    }
    Order(OrderEvent) {
        Placed(OrderPlaced),
        Confirmed(OrderConfirmed),
        Shipped(OrderShipped),
        Delivered(OrderDelivered),
        Cancelled(OrderCancelled),
    }
    Payment(PaymentEvent) {
        Authorized(PaymentAuthorized),
        Captured(PaymentCaptured),
        Declined(PaymentDeclined),
        Refunded(PaymentRefunded),
        Voided(PaymentVoided),
    }
    Saga(SagaEvent) {
        Started(SagaStarted),
        StockReserved(SagaStockReserved),
        PaymentAuthorized(SagaPaymentAuthorized),
        Confirmed(SagaConfirmed),
        Failed(SagaFailed),
        StockReleased(SagaStockReleased),
        PaymentVoided(SagaPaymentVoided),
        PaymentCaptured(SagaPaymentCaptured),
        PaymentRefunded(SagaPaymentRefunded),
        OrderCancelled(SagaOrderCancelled),
        Completed(SagaCompleted),
        Parked(SagaParked),
        Resumed(SagaResumed),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn event_types_are_unique_and_prefixed_by_their_category() {
        let mut seen = BTreeSet::new();
        for schema in EVENT_SCHEMAS {
            assert!(seen.insert(schema.event_type), "{} twice", schema.event_type);
            let prefix = format!("{}.", schema.category.name());
            assert!(schema.event_type.starts_with(&prefix), "{}", schema.event_type);
            assert!(schema.schema_version >= 1);
        }
        assert_eq!(seen.len(), 31);
    }
}
