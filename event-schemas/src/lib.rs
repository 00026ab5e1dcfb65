//! The contract every orderflow service shares: the events, their protobuf encoding, the
//! envelope that carries them, and the rules that keep stored events readable for ever.
//!
//! # Map
//!
//! - `proto/orderflow/v1/*.proto` define the wire format (package `orderflow.v1`); `build.rs`
//!   compiles them with prost and protox (no system `protoc`). The generated messages are in
//!   [`proto`] and stay at the edge.
//! - The domain types, re-exported here: [`DomainEvent`] with one enum per [`Category`]
//!   ([`CustomerEvent`], [`ProductEvent`], [`OrderEvent`], [`PaymentEvent`], [`SagaEvent`]) of one struct per
//!   event ([`OrderPlaced`], ...); ids are [`uuid::Uuid`]s and amounts are [`Money`] in integer
//!   minor units with a validated [`Currency`]. Encoding is `From` (infallible), decoding is
//!   `TryFrom` (fallible, never a panic on input).
//! - [`DomainEvent::encode`] gives the payload to store with its type name and schema version;
//!   [`decode`] reads it back, through the [`Upcasters`] for payloads of older versions.
//! - [`Category`] names the aggregate kinds, their stream ids (`order-{uuid}`, see
//!   [`parse_stream_id`]) and their Kafka topics (`orderflow.orders.v1`, ...).
//! - [`Service`] names the write services and the categories each owns; a
//!   [`ConsistencyToken`] (`orders:12`) is a position in one service's log.
//! - [`Envelope`] is an event with its metadata (ids, positions, times), the value of every Kafka
//!   record.
//! - [`DecodeError`] is the one error of this crate.
//!
//! # Compatibility rules
//!
//! Events are stored for ever and read by builds newer (and, on Kafka, older) than the one that
//! wrote them. So:
//!
//! - **Names are never reused or renamed**: event type names (`OrderPlaced::EVENT_TYPE`, listed
//!   in [`EVENT_SCHEMAS`]), category names, stream-id prefixes and topic names are stored data.
//! - **Field numbers are never reused**, and a field's type never changes. A removed field's
//!   number and name go to `reserved`. Adding a field is compatible (old payloads read as the
//!   default); anything old payloads cannot satisfy is a new schema version.
//! - **A new schema version needs an upcaster** from the previous one, registered in
//!   [`Upcasters::builtin`], so every stored version still decodes to today's types.
//! - **Fixtures must keep decoding**: `fixtures/v{n}/{event_type}.bin` holds a payload of every
//!   event type at every version, committed once and never regenerated; the tests decode them
//!   all. A change that breaks one breaks stored events.
//! - Each category's `oneof` uses its own range of field numbers (customer 100-199, product
//!   200-299, order 300-399, payment 400-499, saga 500-599), so a payload read as the wrong
//!   category is an empty `oneof` ([`DecodeError::EmptyOneof`]), never a plausible wrong event.

mod category;
mod convert;
mod envelope;
mod error;
mod event;
mod money;
pub mod proto;
mod service;
mod upcast;

pub use category::{Category, parse_stream_id};
pub use envelope::Envelope;
pub use error::DecodeError;
pub use event::{
    CustomerEmailChanged, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent,
    EVENT_SCHEMAS, EncodedEvent, EventSchema, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine,
    OrderPlaced, OrderShipped, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentEvent, PaymentRefunded,
    PaymentVoided, ProductAdded, ProductEvent, ProductPriceChanged, ProductRestocked, ProductStockReleased,
    ProductStockReserved, SagaCompleted, SagaConfirmed, SagaEvent, SagaFailed, SagaLine, SagaOrderCancelled,
    SagaParked, SagaPaymentAuthorized, SagaPaymentCaptured, SagaPaymentRefunded, SagaPaymentVoided, SagaResumed,
    SagaStarted, SagaStockReleased, SagaStockReserved, decode,
};
pub use money::{Currency, InvalidCurrency, Money};
pub use service::{ConsistencyToken, InvalidToken, Service, UnknownService};
pub use upcast::{Upcaster, Upcasters};
