//! Place-order saga events: the `saga-{uuid}` streams, one per order (the uuid is the order's
//! id). The saga is the orders service's process manager (ADR 0010); its stream records what
//! it has done.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::convert::{date_time, id, money, timestamp, uuid};
use crate::{DecodeError, Money, proto};

/// One line of the order, as the saga reserves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaLine {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// The saga of an order just placed: the first event of its stream, committed with the order's
/// `OrderPlaced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStarted {
    pub order_id: Uuid,
    /// The payment the saga authorizes, derived from the order id.
    pub payment_id: Uuid,
    pub lines: Vec<SagaLine>,
    /// The order's total: what is authorized.
    pub amount: Money,
    /// When an order not confirmed by then is cancelled. Microsecond precision.
    pub deadline: DateTime<Utc>,
    /// The correlation id of the request that placed the order.
    pub correlation_id: String,
}
event_type!(SagaStarted, "saga.started", version 1);

/// Inventory reserved the stock of line `line` (0-based) for the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStockReserved {
    pub order_id: Uuid,
    pub line: u32,
    pub product_id: Uuid,
    pub quantity: i64,
}
event_type!(SagaStockReserved, "saga.stock_reserved", version 1);

/// Payments authorized the order's total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaPaymentAuthorized {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
}
event_type!(SagaPaymentAuthorized, "saga.payment_authorized", version 1);

/// The order was confirmed (committed with its `OrderConfirmed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaConfirmed {
    pub order_id: Uuid,
}
event_type!(SagaConfirmed, "saga.confirmed", version 1);

/// The saga compensates from now on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaFailed {
    pub order_id: Uuid,
    /// Stable: `out_of_stock`, `payment_declined`, `payment_unavailable`, `timed_out`,
    /// `abandoned`, `requested`.
    pub reason_code: String,
    /// For people.
    pub reason: String,
    /// The step that failed (`reserve 0`, `authorize`, ...), or `deadline`, `order`, `operator`.
    pub step: String,
}
event_type!(SagaFailed, "saga.failed", version 1);

/// Inventory released the stock of line `line` (0-based): compensation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStockReleased {
    pub order_id: Uuid,
    pub line: u32,
    pub product_id: Uuid,
}
event_type!(SagaStockReleased, "saga.stock_released", version 1);

/// Payments voided the authorization: compensation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaPaymentVoided {
    pub order_id: Uuid,
    pub payment_id: Uuid,
}
event_type!(SagaPaymentVoided, "saga.payment_voided", version 1);

/// Payments captured the authorized amount (the order shipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaPaymentCaptured {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
}
event_type!(SagaPaymentCaptured, "saga.payment_captured", version 1);

/// Payments paid back what was captured: compensation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaPaymentRefunded {
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub amount: Money,
}
event_type!(SagaPaymentRefunded, "saga.payment_refunded", version 1);

/// The saga cancelled the order (committed with its `OrderCancelled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaOrderCancelled {
    pub order_id: Uuid,
    pub reason_code: String,
}
event_type!(SagaOrderCancelled, "saga.order_cancelled", version 1);

/// Nothing is left to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaCompleted {
    pub order_id: Uuid,
    /// How it ended: `captured`, `cancelled`.
    pub outcome: String,
}
event_type!(SagaCompleted, "saga.completed", version 1);

/// A call got an answer the saga cannot act on: it does nothing until an operator resumes or
/// abandons it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaParked {
    pub order_id: Uuid,
    pub step: String,
    pub error: String,
}
event_type!(SagaParked, "saga.parked", version 1);

/// An operator resumed a parked saga: the step is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaResumed {
    pub order_id: Uuid,
    pub actor: String,
}
event_type!(SagaResumed, "saga.resumed", version 1);

/// Every event of a saga stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaEvent {
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

impl SagaEvent {
    /// The stable type name of this event.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Started(_) => SagaStarted::EVENT_TYPE,
            Self::StockReserved(_) => SagaStockReserved::EVENT_TYPE,
            Self::PaymentAuthorized(_) => SagaPaymentAuthorized::EVENT_TYPE,
            Self::Confirmed(_) => SagaConfirmed::EVENT_TYPE,
            Self::Failed(_) => SagaFailed::EVENT_TYPE,
            Self::StockReleased(_) => SagaStockReleased::EVENT_TYPE,
            Self::PaymentVoided(_) => SagaPaymentVoided::EVENT_TYPE,
            Self::PaymentCaptured(_) => SagaPaymentCaptured::EVENT_TYPE,
            Self::PaymentRefunded(_) => SagaPaymentRefunded::EVENT_TYPE,
            Self::OrderCancelled(_) => SagaOrderCancelled::EVENT_TYPE,
            Self::Completed(_) => SagaCompleted::EVENT_TYPE,
            Self::Parked(_) => SagaParked::EVENT_TYPE,
            Self::Resumed(_) => SagaResumed::EVENT_TYPE,
        }
    }

    /// The schema version this build writes for this event.
    pub const fn schema_version(&self) -> u32 {
        match self {
            Self::Started(_) => SagaStarted::SCHEMA_VERSION,
            Self::StockReserved(_) => SagaStockReserved::SCHEMA_VERSION,
            Self::PaymentAuthorized(_) => SagaPaymentAuthorized::SCHEMA_VERSION,
            Self::Confirmed(_) => SagaConfirmed::SCHEMA_VERSION,
            Self::Failed(_) => SagaFailed::SCHEMA_VERSION,
            Self::StockReleased(_) => SagaStockReleased::SCHEMA_VERSION,
            Self::PaymentVoided(_) => SagaPaymentVoided::SCHEMA_VERSION,
            Self::PaymentCaptured(_) => SagaPaymentCaptured::SCHEMA_VERSION,
            Self::PaymentRefunded(_) => SagaPaymentRefunded::SCHEMA_VERSION,
            Self::OrderCancelled(_) => SagaOrderCancelled::SCHEMA_VERSION,
            Self::Completed(_) => SagaCompleted::SCHEMA_VERSION,
            Self::Parked(_) => SagaParked::SCHEMA_VERSION,
            Self::Resumed(_) => SagaResumed::SCHEMA_VERSION,
        }
    }

    /// The order the saga belongs to: its stream is `saga-{order id}`.
    pub const fn order_id(&self) -> Uuid {
        match self {
            Self::Started(e) => e.order_id,
            Self::StockReserved(e) => e.order_id,
            Self::PaymentAuthorized(e) => e.order_id,
            Self::Confirmed(e) => e.order_id,
            Self::Failed(e) => e.order_id,
            Self::StockReleased(e) => e.order_id,
            Self::PaymentVoided(e) => e.order_id,
            Self::PaymentCaptured(e) => e.order_id,
            Self::PaymentRefunded(e) => e.order_id,
            Self::OrderCancelled(e) => e.order_id,
            Self::Completed(e) => e.order_id,
            Self::Parked(e) => e.order_id,
            Self::Resumed(e) => e.order_id,
        }
    }
}

impl From<SagaEvent> for proto::SagaEvent {
    fn from(event: SagaEvent) -> Self {
        use proto::saga_event::Event;
        let event = match event {
            SagaEvent::Started(e) => Event::Started(proto::SagaStarted {
                order_id: id(e.order_id),
                payment_id: id(e.payment_id),
                lines: e
                    .lines
                    .into_iter()
                    .map(|line| proto::SagaLine {
                        product_id: id(line.product_id),
                        quantity: line.quantity,
                    })
                    .collect(),
                amount: Some(e.amount.into()),
                deadline: Some(timestamp(e.deadline)),
                correlation_id: e.correlation_id,
            }),
            SagaEvent::StockReserved(e) => Event::StockReserved(proto::SagaStockReserved {
                order_id: id(e.order_id),
                line: e.line,
                product_id: id(e.product_id),
                quantity: e.quantity,
            }),
            SagaEvent::PaymentAuthorized(e) => Event::PaymentAuthorized(proto::SagaPaymentAuthorized {
                order_id: id(e.order_id),
                payment_id: id(e.payment_id),
                amount: Some(e.amount.into()),
            }),
            SagaEvent::Confirmed(e) => Event::Confirmed(proto::SagaConfirmed {
                order_id: id(e.order_id),
            }),
            SagaEvent::Failed(e) => Event::Failed(proto::SagaFailed {
                order_id: id(e.order_id),
                reason_code: e.reason_code,
                reason: e.reason,
                step: e.step,
            }),
            SagaEvent::StockReleased(e) => Event::StockReleased(proto::SagaStockReleased {
                order_id: id(e.order_id),
                line: e.line,
                product_id: id(e.product_id),
            }),
            SagaEvent::PaymentVoided(e) => Event::PaymentVoided(proto::SagaPaymentVoided {
                order_id: id(e.order_id),
                payment_id: id(e.payment_id),
            }),
            SagaEvent::PaymentCaptured(e) => Event::PaymentCaptured(proto::SagaPaymentCaptured {
                order_id: id(e.order_id),
                payment_id: id(e.payment_id),
                amount: Some(e.amount.into()),
            }),
            SagaEvent::PaymentRefunded(e) => Event::PaymentRefunded(proto::SagaPaymentRefunded {
                order_id: id(e.order_id),
                payment_id: id(e.payment_id),
                amount: Some(e.amount.into()),
            }),
            SagaEvent::OrderCancelled(e) => Event::OrderCancelled(proto::SagaOrderCancelled {
                order_id: id(e.order_id),
                reason_code: e.reason_code,
            }),
            SagaEvent::Completed(e) => Event::Completed(proto::SagaCompleted {
                order_id: id(e.order_id),
                outcome: e.outcome,
            }),
            SagaEvent::Parked(e) => Event::Parked(proto::SagaParked {
                order_id: id(e.order_id),
                step: e.step,
                error: e.error,
            }),
            SagaEvent::Resumed(e) => Event::Resumed(proto::SagaResumed {
                order_id: id(e.order_id),
                actor: e.actor,
            }),
        };
        Self { event: Some(event) }
    }
}

impl From<&SagaEvent> for proto::SagaEvent {
    fn from(event: &SagaEvent) -> Self {
        event.clone().into()
    }
}

impl TryFrom<proto::SagaEvent> for SagaEvent {
    type Error = DecodeError;

    fn try_from(message: proto::SagaEvent) -> Result<Self, Self::Error> {
        use proto::saga_event::Event;
        let event = message.event.ok_or(DecodeError::EmptyOneof { message: "SagaEvent" })?;
        Ok(match event {
            Event::Started(e) => {
                let lines = e
                    .lines
                    .into_iter()
                    .map(|line| {
                        Ok(SagaLine {
                            product_id: uuid("SagaStarted.lines.product_id", &line.product_id)?,
                            quantity: line.quantity,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Self::Started(SagaStarted {
                    order_id: uuid("SagaStarted.order_id", &e.order_id)?,
                    payment_id: uuid("SagaStarted.payment_id", &e.payment_id)?,
                    lines,
                    amount: money("SagaStarted.amount", e.amount)?,
                    deadline: date_time("SagaStarted.deadline", e.deadline)?,
                    correlation_id: e.correlation_id,
                })
            }
            Event::StockReserved(e) => Self::StockReserved(SagaStockReserved {
                order_id: uuid("SagaStockReserved.order_id", &e.order_id)?,
                line: e.line,
                product_id: uuid("SagaStockReserved.product_id", &e.product_id)?,
                quantity: e.quantity,
            }),
            Event::PaymentAuthorized(e) => Self::PaymentAuthorized(SagaPaymentAuthorized {
                order_id: uuid("SagaPaymentAuthorized.order_id", &e.order_id)?,
                payment_id: uuid("SagaPaymentAuthorized.payment_id", &e.payment_id)?,
                amount: money("SagaPaymentAuthorized.amount", e.amount)?,
            }),
            Event::Confirmed(e) => Self::Confirmed(SagaConfirmed {
                order_id: uuid("SagaConfirmed.order_id", &e.order_id)?,
            }),
            Event::Failed(e) => Self::Failed(SagaFailed {
                order_id: uuid("SagaFailed.order_id", &e.order_id)?,
                reason_code: e.reason_code,
                reason: e.reason,
                step: e.step,
            }),
            Event::StockReleased(e) => Self::StockReleased(SagaStockReleased {
                order_id: uuid("SagaStockReleased.order_id", &e.order_id)?,
                line: e.line,
                product_id: uuid("SagaStockReleased.product_id", &e.product_id)?,
            }),
            Event::PaymentVoided(e) => Self::PaymentVoided(SagaPaymentVoided {
                order_id: uuid("SagaPaymentVoided.order_id", &e.order_id)?,
                payment_id: uuid("SagaPaymentVoided.payment_id", &e.payment_id)?,
            }),
            Event::PaymentCaptured(e) => Self::PaymentCaptured(SagaPaymentCaptured {
                order_id: uuid("SagaPaymentCaptured.order_id", &e.order_id)?,
                payment_id: uuid("SagaPaymentCaptured.payment_id", &e.payment_id)?,
                amount: money("SagaPaymentCaptured.amount", e.amount)?,
            }),
            Event::PaymentRefunded(e) => Self::PaymentRefunded(SagaPaymentRefunded {
                order_id: uuid("SagaPaymentRefunded.order_id", &e.order_id)?,
                payment_id: uuid("SagaPaymentRefunded.payment_id", &e.payment_id)?,
                amount: money("SagaPaymentRefunded.amount", e.amount)?,
            }),
            Event::OrderCancelled(e) => Self::OrderCancelled(SagaOrderCancelled {
                order_id: uuid("SagaOrderCancelled.order_id", &e.order_id)?,
                reason_code: e.reason_code,
            }),
            Event::Completed(e) => Self::Completed(SagaCompleted {
                order_id: uuid("SagaCompleted.order_id", &e.order_id)?,
                outcome: e.outcome,
            }),
            Event::Parked(e) => Self::Parked(SagaParked {
                order_id: uuid("SagaParked.order_id", &e.order_id)?,
                step: e.step,
                error: e.error,
            }),
            Event::Resumed(e) => Self::Resumed(SagaResumed {
                order_id: uuid("SagaResumed.order_id", &e.order_id)?,
                actor: e.actor,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started(deadline: Option<prost_types::Timestamp>) -> proto::SagaEvent {
        proto::SagaEvent {
            event: Some(proto::saga_event::Event::Started(proto::SagaStarted {
                order_id: id(Uuid::from_u128(0x0a)),
                payment_id: id(Uuid::from_u128(0xd0)),
                lines: vec![proto::SagaLine {
                    product_id: id(Uuid::from_u128(0xa1)),
                    quantity: 2,
                }],
                amount: Some(proto::Money {
                    amount_minor: 2_500,
                    currency: "EUR".into(),
                }),
                deadline,
                correlation_id: "req-1".into(),
            })),
        }
    }

    #[test]
    fn a_start_needs_its_deadline() {
        assert!(matches!(
            SagaEvent::try_from(started(None)),
            Err(DecodeError::MissingField {
                field: "SagaStarted.deadline"
            })
        ));
        let bad = prost_types::Timestamp { seconds: 0, nanos: -1 };
        assert!(matches!(
            SagaEvent::try_from(started(Some(bad))),
            Err(DecodeError::InvalidTimestamp {
                field: "SagaStarted.deadline"
            })
        ));
        let Ok(SagaEvent::Started(ok)) = SagaEvent::try_from(started(Some(prost_types::Timestamp {
            seconds: 1_767_225_600,
            nanos: 123_456_789,
        }))) else {
            panic!("a start with a deadline decodes");
        };
        // Microseconds are kept, nanoseconds dropped (as in the envelope).
        assert_eq!(ok.deadline.timestamp_subsec_nanos(), 123_456_000);
    }
}
