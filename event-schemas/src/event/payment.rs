//! Payment events: the `payment-{uuid}` streams.

use uuid::Uuid;

use crate::convert::{id, money, uuid};
use crate::{DecodeError, Money, proto};

/// The payment provider reserved an amount for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAuthorized {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
}
event_type!(PaymentAuthorized, "payment.authorized", version 1);

/// An authorized amount was collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentCaptured {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
}
event_type!(PaymentCaptured, "payment.captured", version 1);

/// The payment provider refused the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentDeclined {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub reason: String,
}
event_type!(PaymentDeclined, "payment.declined", version 1);

/// A captured amount was paid back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRefunded {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount: Money,
}
event_type!(PaymentRefunded, "payment.refunded", version 1);

/// An authorization was released without collecting it. The stream may start with it: a void
/// that arrived before the authorization it releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentVoided {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// The authorized amount released; `None` when nothing was authorized yet (the void came
    /// first, so there is no amount and no currency).
    pub amount: Option<Money>,
    pub reason: String,
}
event_type!(PaymentVoided, "payment.voided", version 1);

/// Every event of a payment stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEvent {
    Authorized(PaymentAuthorized),
    Captured(PaymentCaptured),
    Declined(PaymentDeclined),
    Refunded(PaymentRefunded),
    Voided(PaymentVoided),
}

impl PaymentEvent {
    /// The stable type name of this event.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Authorized(_) => PaymentAuthorized::EVENT_TYPE,
            Self::Captured(_) => PaymentCaptured::EVENT_TYPE,
            Self::Declined(_) => PaymentDeclined::EVENT_TYPE,
            Self::Refunded(_) => PaymentRefunded::EVENT_TYPE,
            Self::Voided(_) => PaymentVoided::EVENT_TYPE,
        }
    }

    /// The schema version this build writes for this event.
    pub const fn schema_version(&self) -> u32 {
        match self {
            Self::Authorized(_) => PaymentAuthorized::SCHEMA_VERSION,
            Self::Captured(_) => PaymentCaptured::SCHEMA_VERSION,
            Self::Declined(_) => PaymentDeclined::SCHEMA_VERSION,
            Self::Refunded(_) => PaymentRefunded::SCHEMA_VERSION,
            Self::Voided(_) => PaymentVoided::SCHEMA_VERSION,
        }
    }

    /// The payment the event belongs to.
    pub const fn payment_id(&self) -> Uuid {
        match self {
            Self::Authorized(e) => e.payment_id,
            Self::Captured(e) => e.payment_id,
            Self::Declined(e) => e.payment_id,
            Self::Refunded(e) => e.payment_id,
            Self::Voided(e) => e.payment_id,
        }
    }

    /// The order the payment is for.
    pub const fn order_id(&self) -> Uuid {
        match self {
            Self::Authorized(e) => e.order_id,
            Self::Captured(e) => e.order_id,
            Self::Declined(e) => e.order_id,
            Self::Refunded(e) => e.order_id,
            Self::Voided(e) => e.order_id,
        }
    }
}

impl From<PaymentEvent> for proto::PaymentEvent {
    fn from(event: PaymentEvent) -> Self {
        use proto::payment_event::Event;
        let event = match event {
            PaymentEvent::Authorized(e) => Event::Authorized(proto::PaymentAuthorized {
                payment_id: id(e.payment_id),
                order_id: id(e.order_id),
                amount: Some(e.amount.into()),
            }),
            PaymentEvent::Captured(e) => Event::Captured(proto::PaymentCaptured {
                payment_id: id(e.payment_id),
                order_id: id(e.order_id),
                amount: Some(e.amount.into()),
            }),
            PaymentEvent::Declined(e) => Event::Declined(proto::PaymentDeclined {
                payment_id: id(e.payment_id),
                order_id: id(e.order_id),
                reason: e.reason,
            }),
            PaymentEvent::Refunded(e) => Event::Refunded(proto::PaymentRefunded {
                payment_id: id(e.payment_id),
                order_id: id(e.order_id),
                amount: Some(e.amount.into()),
            }),
            PaymentEvent::Voided(e) => Event::Voided(proto::PaymentVoided {
                payment_id: id(e.payment_id),
                order_id: id(e.order_id),
                amount: e.amount.map(Into::into),
                reason: e.reason,
            }),
        };
        Self { event: Some(event) }
    }
}

impl From<&PaymentEvent> for proto::PaymentEvent {
    fn from(event: &PaymentEvent) -> Self {
        event.clone().into()
    }
}

impl TryFrom<proto::PaymentEvent> for PaymentEvent {
    type Error = DecodeError;

    fn try_from(message: proto::PaymentEvent) -> Result<Self, Self::Error> {
        use proto::payment_event::Event;
        let event = message.event.ok_or(DecodeError::EmptyOneof {
            message: "PaymentEvent",
        })?;
        Ok(match event {
            Event::Authorized(e) => Self::Authorized(PaymentAuthorized {
                payment_id: uuid("PaymentAuthorized.payment_id", &e.payment_id)?,
                order_id: uuid("PaymentAuthorized.order_id", &e.order_id)?,
                amount: money("PaymentAuthorized.amount", e.amount)?,
            }),
            Event::Captured(e) => Self::Captured(PaymentCaptured {
                payment_id: uuid("PaymentCaptured.payment_id", &e.payment_id)?,
                order_id: uuid("PaymentCaptured.order_id", &e.order_id)?,
                amount: money("PaymentCaptured.amount", e.amount)?,
            }),
            Event::Declined(e) => Self::Declined(PaymentDeclined {
                payment_id: uuid("PaymentDeclined.payment_id", &e.payment_id)?,
                order_id: uuid("PaymentDeclined.order_id", &e.order_id)?,
                reason: e.reason,
            }),
            Event::Refunded(e) => Self::Refunded(PaymentRefunded {
                payment_id: uuid("PaymentRefunded.payment_id", &e.payment_id)?,
                order_id: uuid("PaymentRefunded.order_id", &e.order_id)?,
                amount: money("PaymentRefunded.amount", e.amount)?,
            }),
            Event::Voided(e) => Self::Voided(PaymentVoided {
                payment_id: uuid("PaymentVoided.payment_id", &e.payment_id)?,
                order_id: uuid("PaymentVoided.order_id", &e.order_id)?,
                // Optional: absent when the void came before any authorization.
                amount: e
                    .amount
                    .map(|amount| money("PaymentVoided.amount", Some(amount)))
                    .transpose()?,
                reason: e.reason,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Currency;

    fn voided(amount: Option<proto::Money>) -> proto::PaymentEvent {
        proto::PaymentEvent {
            event: Some(proto::payment_event::Event::Voided(proto::PaymentVoided {
                payment_id: id(Uuid::from_u128(0xd0)),
                order_id: id(Uuid::from_u128(0x0a)),
                amount,
                reason: "order not confirmed in time".into(),
            })),
        }
    }

    #[test]
    fn a_void_carries_an_amount_only_when_something_was_authorized() {
        let Ok(PaymentEvent::Voided(released)) = PaymentEvent::try_from(voided(Some(proto::Money {
            amount_minor: 3_490,
            currency: "EUR".into(),
        }))) else {
            panic!("a void with an amount decodes");
        };
        assert_eq!(released.amount, Some(Money::new(3_490, Currency::EUR)));

        let Ok(PaymentEvent::Voided(early)) = PaymentEvent::try_from(voided(None)) else {
            panic!("a void without an amount decodes");
        };
        assert_eq!(early.amount, None);
        assert_eq!(proto::PaymentEvent::from(PaymentEvent::Voided(early)), voided(None));
    }

    #[test]
    fn a_void_amount_that_is_present_must_be_valid() {
        let bad = voided(Some(proto::Money {
            amount_minor: 1,
            currency: "euro".into(),
        }));
        assert!(matches!(
            PaymentEvent::try_from(bad),
            Err(DecodeError::InvalidCurrency {
                field: "PaymentVoided.amount",
                ..
            })
        ));
    }
}
