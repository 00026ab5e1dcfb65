//! [`DecodeError`]: everything that can be wrong with stored or received bytes.

use crate::money::InvalidCurrency;

/// Why bytes could not be read as an orderflow event, envelope or stream id.
///
/// Every variant means the same thing to a caller: *this build cannot read this data*. Retrying
/// does not help. A projection or relay that meets one should stop at that position and report it
/// (the event is still in the store, nothing is lost) rather than skip it; an HTTP edge that
/// decodes client input answers 400. `Display` names what was wrong; the underlying error, if
/// any, is in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a protobuf encoding of the expected message.
    #[error("malformed {message} protobuf")]
    Protobuf {
        /// The message that was being decoded, e.g. `"OrderEvent"`.
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },

    /// A category message has no event in its `oneof`: the producer set none, or the payload
    /// holds an event this build does not know, or an event of another category (their field
    /// numbers never overlap).
    #[error("{message} holds no event this build knows")]
    EmptyOneof {
        /// The category message, e.g. `"OrderEvent"`.
        message: &'static str,
    },

    /// The event type name is not one of [`crate::EVENT_SCHEMAS`].
    #[error("unknown event type {0:?}")]
    UnknownEventType(String),

    /// The payload decodes to an event of another type than the one it was stored under.
    #[error("payload holds a {actual:?} event but is labelled {declared:?}")]
    EventTypeMismatch {
        /// The type the caller (the envelope, the store row) said the payload has.
        declared: String,
        /// The type the payload actually holds.
        actual: &'static str,
    },

    /// The schema version is 0 or newer than this build's: the data was written by a newer
    /// build, so this one must be upgraded before it can read it.
    #[error("{event_type:?} schema version {version} is not supported (current is {current})")]
    UnsupportedSchemaVersion {
        event_type: String,
        version: u32,
        current: u32,
    },

    /// A stored payload is older than the current version and no upcaster takes it one step
    /// further.
    #[error("no upcaster for {event_type:?} from schema version {from_version}")]
    MissingUpcaster { event_type: String, from_version: u32 },

    /// An upcaster rejected a stored payload.
    #[error("upcasting {event_type:?} from schema version {from_version} failed")]
    Upcast {
        event_type: String,
        from_version: u32,
        #[source]
        source: Box<DecodeError>,
    },

    /// A required sub-message is absent, e.g. `ProductAdded.price`.
    #[error("missing {field}")]
    MissingField { field: &'static str },

    /// A field that carries a UUID does not hold one.
    #[error("invalid UUID in {field}")]
    InvalidUuid {
        field: &'static str,
        #[source]
        source: uuid::Error,
    },

    /// A field that carries a currency code does not hold three upper-case letters.
    #[error("invalid currency code in {field}")]
    InvalidCurrency {
        field: &'static str,
        #[source]
        source: InvalidCurrency,
    },

    /// A timestamp is outside the range `chrono` represents, or its nanoseconds are not in
    /// `0..1_000_000_000`.
    #[error("invalid timestamp in {field}")]
    InvalidTimestamp { field: &'static str },

    /// A stream id is not `{category}-{uuid}` with a known category and a hyphenated lower-case
    /// UUID.
    #[error("invalid stream id {0:?}: expected {{category}}-{{uuid}}")]
    InvalidStreamId(String),
}
