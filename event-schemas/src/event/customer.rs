//! Customer events: the `customer-{uuid}` streams.

use uuid::Uuid;

use crate::convert::{id, uuid};
use crate::{DecodeError, proto};

/// A customer signed up: the first event of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRegistered {
    pub customer_id: Uuid,
    pub name: String,
    pub email: String,
}
event_type!(CustomerRegistered, "customer.registered", version 1);

/// A customer's display name changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerRenamed {
    pub customer_id: Uuid,
    pub name: String,
}
event_type!(CustomerRenamed, "customer.renamed", version 1);

/// A customer's email address changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerEmailChanged {
    pub customer_id: Uuid,
    pub email: String,
}
event_type!(CustomerEmailChanged, "customer.email_changed", version 1);

/// Every event of a customer stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerEvent {
    Registered(CustomerRegistered),
    Renamed(CustomerRenamed),
    EmailChanged(CustomerEmailChanged),
}

impl CustomerEvent {
    /// The stable type name of this event.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Registered(_) => CustomerRegistered::EVENT_TYPE,
            Self::Renamed(_) => CustomerRenamed::EVENT_TYPE,
            Self::EmailChanged(_) => CustomerEmailChanged::EVENT_TYPE,
        }
    }

    /// The schema version this build writes for this event.
    pub const fn schema_version(&self) -> u32 {
        match self {
            Self::Registered(_) => CustomerRegistered::SCHEMA_VERSION,
            Self::Renamed(_) => CustomerRenamed::SCHEMA_VERSION,
            Self::EmailChanged(_) => CustomerEmailChanged::SCHEMA_VERSION,
        }
    }

    /// The customer the event belongs to.
    pub const fn customer_id(&self) -> Uuid {
        match self {
            Self::Registered(e) => e.customer_id,
            Self::Renamed(e) => e.customer_id,
            Self::EmailChanged(e) => e.customer_id,
        }
    }
}

impl From<CustomerEvent> for proto::CustomerEvent {
    fn from(event: CustomerEvent) -> Self {
        use proto::customer_event::Event;
        let event = match event {
            CustomerEvent::Registered(e) => Event::Registered(proto::CustomerRegistered {
                customer_id: id(e.customer_id),
                name: e.name,
                email: e.email,
            }),
            CustomerEvent::Renamed(e) => Event::Renamed(proto::CustomerRenamed {
                customer_id: id(e.customer_id),
                name: e.name,
            }),
            CustomerEvent::EmailChanged(e) => Event::EmailChanged(proto::CustomerEmailChanged {
                customer_id: id(e.customer_id),
                email: e.email,
            }),
        };
        Self { event: Some(event) }
    }
}

impl From<&CustomerEvent> for proto::CustomerEvent {
    fn from(event: &CustomerEvent) -> Self {
        event.clone().into()
    }
}

impl TryFrom<proto::CustomerEvent> for CustomerEvent {
    type Error = DecodeError;

    fn try_from(message: proto::CustomerEvent) -> Result<Self, Self::Error> {
        use proto::customer_event::Event;
        let event = message.event.ok_or(DecodeError::EmptyOneof {
            message: "CustomerEvent",
        })?;
        Ok(match event {
            Event::Registered(e) => Self::Registered(CustomerRegistered {
                customer_id: uuid("CustomerRegistered.customer_id", &e.customer_id)?,
                name: e.name,
                email: e.email,
            }),
            Event::Renamed(e) => Self::Renamed(CustomerRenamed {
                customer_id: uuid("CustomerRenamed.customer_id", &e.customer_id)?,
                name: e.name,
            }),
            Event::EmailChanged(e) => Self::EmailChanged(CustomerEmailChanged {
                customer_id: uuid("CustomerEmailChanged.customer_id", &e.customer_id)?,
                email: e.email,
            }),
        })
    }
}
