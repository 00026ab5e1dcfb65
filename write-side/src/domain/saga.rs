//! The place-order saga (`saga-{order id}` streams): the process manager of the orders service
//! that reserves an order's stock at inventory, authorizes its payment at payments and confirms
//! it, or compensates in reverse (ADR 0010).
//!
//! The saga's stream records what has been done, never what is about to be: a call is made,
//! then its outcome is appended with the stream's expected version. [`Saga::next`] reads the
//! stream's state (and the order's) and says what to do next; it is pure, so a saga resumed
//! after a crash, or advanced by another process, decides the same thing, and every call it
//! repeats carries the same idempotency key.
//!
//! ```text
//! started ─► reserve line 1..n ─► authorize ─► confirm ─► (order shipped) capture ─► completed
//!    │             │                  │           │
//!    └── failed (out_of_stock | payment_declined | payment_unavailable | timed_out | abandoned
//!        | requested: the order was cancelled) ─► refund or void ─► release lines ─►
//!        cancel the order ─► completed
//! ```
//!
//! A saga whose call got an answer it cannot act on is parked: it does nothing until an
//! operator resumes it (the step is tried again) or abandons it (it compensates).

use std::fmt;

use chrono::{DateTime, SubsecRound as _, Utc};
use event_schemas::{
    Category, DomainEvent, Money, SagaCompleted, SagaConfirmed, SagaEvent, SagaFailed, SagaLine, SagaOrderCancelled,
    SagaParked, SagaPaymentAuthorized, SagaPaymentCaptured, SagaPaymentRefunded, SagaPaymentVoided, SagaResumed,
    SagaStarted, SagaStockReleased, SagaStockReserved,
};
use uuid::Uuid;

use super::{Aggregate, DomainError, OrderStatus};

/// Why a saga compensates; the order's `reason_code` when the saga cancels it. Stable names:
/// read models and clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReasonCode {
    /// A line's stock could not be reserved.
    OutOfStock,
    /// The payment provider refused the payment.
    PaymentDeclined,
    /// The payments service (or its provider) did not answer before the deadline.
    PaymentUnavailable,
    /// The deadline passed before the order was confirmed.
    TimedOut,
    /// An operator abandoned a parked saga.
    Abandoned,
    /// A client cancelled the order.
    Requested,
}

impl ReasonCode {
    pub const ALL: [Self; 6] = [
        Self::OutOfStock,
        Self::PaymentDeclined,
        Self::PaymentUnavailable,
        Self::TimedOut,
        Self::Abandoned,
        Self::Requested,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::OutOfStock => "out_of_stock",
            Self::PaymentDeclined => "payment_declined",
            Self::PaymentUnavailable => "payment_unavailable",
            Self::TimedOut => "timed_out",
            Self::Abandoned => "abandoned",
            Self::Requested => "requested",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == name)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the order, as the saga reserves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    pub product_id: Uuid,
    pub quantity: i64,
    pub reserved: bool,
    pub released: bool,
}

/// Where a saga is, for read models and the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Phase {
    /// The stream is empty: no saga.
    #[default]
    NotStarted,
    Reserving,
    Authorizing,
    Confirming,
    /// Confirmed; waiting for the order to ship (then it captures).
    AwaitingShipment,
    Capturing,
    Compensating,
    Parked,
    Completed,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Reserving => "reserving",
            Self::Authorizing => "authorizing",
            Self::Confirming => "confirming",
            Self::AwaitingShipment => "awaiting_shipment",
            Self::Capturing => "capturing",
            Self::Compensating => "compensating",
            Self::Parked => "parked",
            Self::Completed => "completed",
        }
    }
}

/// A saga as its stream tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saga {
    /// Nil until started.
    pub order_id: Uuid,
    pub payment_id: Uuid,
    pub lines: Vec<Line>,
    /// The order's total: what is authorized.
    pub amount: Option<Money>,
    /// When an order not confirmed by then is cancelled (`timed_out`, or `payment_unavailable`
    /// when it was waiting for payments).
    pub deadline: Option<DateTime<Utc>>,
    /// The correlation id of the request that placed the order: every call of the saga
    /// carries it.
    pub correlation_id: String,
    pub authorized: bool,
    pub confirmed: bool,
    pub captured_minor: i64,
    pub refunded: bool,
    pub voided: bool,
    /// Set when it compensates.
    pub failure: Option<Failure>,
    /// The saga cancelled the order (its compensation's last call).
    pub order_cancelled: bool,
    /// Set while parked.
    pub parked: Option<Parked>,
    /// How it ended.
    pub outcome: Option<String>,
}

/// Why a saga compensates.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub reason_code: ReasonCode,
    pub reason: String,
    /// The step that failed (`reserve`, `authorize`, ...), or `deadline`, `order`, `operator`.
    pub step: String,
}

/// Why a saga is parked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parked {
    pub step: String,
    pub error: String,
}

/// What the saga does next (see [`Saga::next`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Reserve line `line` (0-based) at inventory.
    Reserve { line: usize },
    /// Authorize the order's total at payments.
    Authorize,
    /// Confirm the order (and record it), in one commit.
    Confirm,
    /// Capture the authorized amount (the order shipped).
    Capture,
    /// Pay back what was captured (compensation).
    Refund,
    /// Release the authorization (compensation).
    Void,
    /// Release line `line`'s stock (compensation). `frontier`: the line the saga was reserving
    /// when it failed, not recorded as reserved: its reservation may have been made by a
    /// process that crashed before recording it, so it is released all the same (with a key of
    /// its own, so that a reservation recorded later is still released with the usual key).
    Release { line: usize, frontier: bool },
    /// Cancel the order with the failure's reason code (and record it), in one commit.
    CancelOrder,
    /// Record why it compensates from now on.
    Fail {
        reason_code: ReasonCode,
        reason: String,
        step: String,
    },
    /// Record that nothing is left to do.
    Complete { outcome: &'static str },
    /// Nothing to do until something happens: the order ships or is cancelled, an operator acts.
    Wait,
}

/// What the saga knows of its order when it decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub status: OrderStatus,
    /// The reason a client gave when cancelling.
    pub cancellation_reason: Option<String>,
}

impl Saga {
    /// Whether the saga was started.
    pub fn exists(&self) -> bool {
        !self.order_id.is_nil()
    }

    pub fn phase(&self) -> Phase {
        if !self.exists() {
            Phase::NotStarted
        } else if self.outcome.is_some() {
            Phase::Completed
        } else if self.parked.is_some() {
            Phase::Parked
        } else if self.failure.is_some() {
            Phase::Compensating
        } else if self.lines.iter().any(|l| !l.reserved) {
            Phase::Reserving
        } else if !self.authorized {
            Phase::Authorizing
        } else if !self.confirmed {
            Phase::Confirming
        } else {
            Phase::AwaitingShipment
        }
    }

    /// Whether inventory refused line `line` (out of stock): nothing of it is held.
    fn refused_at(&self, line: usize) -> bool {
        self.failure
            .as_ref()
            .is_some_and(|f| f.reason_code == ReasonCode::OutOfStock && f.step == format!("reserve {line}"))
    }

    /// Whether the authorization may exist or come: the authorize step was reached (every line
    /// reserved) and the provider did not decline it.
    fn authorization_possible(&self) -> bool {
        let declined = self
            .failure
            .as_ref()
            .is_some_and(|f| f.reason_code == ReasonCode::PaymentDeclined);
        (self.authorized || self.lines.iter().all(|l| l.reserved)) && !declined
    }

    /// What to do next, given the order as it is and the time. Pure: see the module doc.
    pub fn next(&self, order: &OrderView, now: DateTime<Utc>) -> Next {
        if !self.exists() || self.outcome.is_some() || self.parked.is_some() {
            return Next::Wait;
        }
        if self.failure.is_none() {
            if order.status == OrderStatus::Cancelled && !self.order_cancelled {
                return Next::Fail {
                    reason_code: ReasonCode::Requested,
                    reason: order
                        .cancellation_reason
                        .clone()
                        .unwrap_or_else(|| "cancelled".to_owned()),
                    step: "order".to_owned(),
                };
            }
            return self.forward(order, now);
        }
        self.compensate(order)
    }

    fn forward(&self, order: &OrderView, now: DateTime<Utc>) -> Next {
        if !self.confirmed && self.deadline.is_some_and(|deadline| now >= deadline) {
            let phase = self.phase();
            // Every line reserved, no answer from payments in time: payments were unavailable.
            let (reason_code, reason) = if phase == Phase::Authorizing {
                (
                    ReasonCode::PaymentUnavailable,
                    "the payment was not authorized before the order's deadline",
                )
            } else {
                (ReasonCode::TimedOut, "the order was not confirmed before its deadline")
            };
            return Next::Fail {
                reason_code,
                reason: reason.to_owned(),
                step: phase.as_str().to_owned(),
            };
        }
        if let Some(line) = self.lines.iter().position(|l| !l.reserved) {
            return Next::Reserve { line };
        }
        if !self.authorized {
            return Next::Authorize;
        }
        if !self.confirmed {
            return Next::Confirm;
        }
        match order.status {
            OrderStatus::Shipped | OrderStatus::Delivered if self.captured_minor == 0 => Next::Capture,
            OrderStatus::Shipped | OrderStatus::Delivered => Next::Complete { outcome: "captured" },
            _ => Next::Wait,
        }
    }

    fn compensate(&self, order: &OrderView) -> Next {
        if self.captured_minor > 0 && !self.refunded {
            return Next::Refund;
        }
        if self.captured_minor == 0 && !self.voided && self.authorization_possible() {
            return Next::Void;
        }
        if let Some(line) = self.lines.iter().rposition(|l| l.reserved && !l.released) {
            return Next::Release { line, frontier: false };
        }
        if let Some(line) = self.lines.iter().position(|l| !l.reserved)
            && !self.lines[line].released
            && !self.refused_at(line)
        {
            return Next::Release { line, frontier: true };
        }
        if order.status != OrderStatus::Cancelled && !self.order_cancelled {
            return Next::CancelOrder;
        }
        Next::Complete { outcome: "cancelled" }
    }

    /// The idempotency key of a step's call: the same for every attempt, whichever process
    /// makes it.
    pub fn key(&self, step: &str) -> String {
        format!("saga-{}-{step}", self.order_id)
    }
}

/// What is recorded in a saga's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaCommand {
    /// The saga of an order just placed: its lines, total, payment id, deadline, and the
    /// correlation id of the request that placed it.
    Start {
        order_id: Uuid,
        payment_id: Uuid,
        lines: Vec<(Uuid, i64)>,
        amount: Money,
        deadline: DateTime<Utc>,
        correlation_id: String,
    },
    Reserved {
        line: usize,
    },
    Authorized,
    Confirmed,
    Captured {
        amount_minor: i64,
    },
    Refunded {
        amount_minor: i64,
    },
    Voided,
    Released {
        line: usize,
    },
    OrderCancelled,
    Fail {
        reason_code: ReasonCode,
        reason: String,
        step: String,
    },
    Complete {
        outcome: String,
    },
    Park {
        step: String,
        error: String,
    },
    Resume {
        actor: String,
    },
}

impl Aggregate for Saga {
    type Command = SagaCommand;
    type Event = SagaEvent;

    const CATEGORY: Category = Category::Saga;

    fn decide(&self, command: SagaCommand) -> Result<Vec<SagaEvent>, DomainError> {
        if let SagaCommand::Start {
            order_id,
            payment_id,
            lines,
            amount,
            deadline,
            correlation_id,
        } = command
        {
            if self.exists() {
                return Err(DomainError::AlreadyExists {
                    what: "saga",
                    id: order_id,
                });
            }
            return Ok(vec![SagaEvent::Started(SagaStarted {
                order_id,
                payment_id,
                lines: lines
                    .into_iter()
                    .map(|(product_id, quantity)| SagaLine { product_id, quantity })
                    .collect(),
                amount,
                // Stored with microseconds: kept so, the state folded from the store is this one.
                deadline: deadline.trunc_subsecs(6),
                correlation_id,
            })]);
        }
        if !self.exists() {
            return Err(DomainError::NotFound {
                what: "saga",
                id: Uuid::nil(),
            });
        }
        let order_id = self.order_id;
        let line_of = |line: usize| {
            self.lines
                .get(line)
                .ok_or_else(|| DomainError::rejected(format!("the saga of order {order_id} has no line {line}")))
        };
        // Recording what is already recorded appends nothing: a step repeated after a crash.
        // What a call did is recorded whatever the saga's phase (compensating, or even
        // completed, which it then reopens): its effect happened, and only a recorded effect is
        // compensated.
        let events = match command {
            SagaCommand::Start { .. } => Vec::new(),
            SagaCommand::Reserved { line } => {
                let held = line_of(line)?;
                if held.reserved {
                    return Ok(Vec::new());
                }
                vec![SagaEvent::StockReserved(SagaStockReserved {
                    order_id,
                    line: line as u32,
                    product_id: held.product_id,
                    quantity: held.quantity,
                })]
            }
            SagaCommand::Authorized if self.authorized => Vec::new(),
            SagaCommand::Authorized => vec![SagaEvent::PaymentAuthorized(SagaPaymentAuthorized {
                order_id,
                payment_id: self.payment_id,
                amount: self
                    .amount
                    .ok_or_else(|| DomainError::rejected("the saga has no amount".to_owned()))?,
            })],
            SagaCommand::Confirmed if self.confirmed => Vec::new(),
            // Another driver failed it meanwhile (its deadline, a cancellation): it compensates.
            SagaCommand::Confirmed if self.failure.is_some() => {
                return Err(DomainError::rejected(format!(
                    "the saga of order {order_id} compensates; it cannot confirm the order"
                )));
            }
            SagaCommand::Confirmed => vec![SagaEvent::Confirmed(SagaConfirmed { order_id })],
            SagaCommand::Captured { .. } if self.captured_minor > 0 => Vec::new(),
            SagaCommand::Captured { amount_minor } => vec![SagaEvent::PaymentCaptured(SagaPaymentCaptured {
                order_id,
                payment_id: self.payment_id,
                amount: self.money(amount_minor)?,
            })],
            SagaCommand::Refunded { .. } if self.refunded => Vec::new(),
            SagaCommand::Refunded { amount_minor } => vec![SagaEvent::PaymentRefunded(SagaPaymentRefunded {
                order_id,
                payment_id: self.payment_id,
                amount: self.money(amount_minor)?,
            })],
            SagaCommand::Voided if self.voided => Vec::new(),
            SagaCommand::Voided => vec![SagaEvent::PaymentVoided(SagaPaymentVoided {
                order_id,
                payment_id: self.payment_id,
            })],
            SagaCommand::Released { line } => {
                let held = line_of(line)?;
                if held.released {
                    return Ok(Vec::new());
                }
                vec![SagaEvent::StockReleased(SagaStockReleased {
                    order_id,
                    line: line as u32,
                    product_id: held.product_id,
                })]
            }
            SagaCommand::OrderCancelled if self.order_cancelled => Vec::new(),
            SagaCommand::OrderCancelled => {
                let reason_code = self.failure.as_ref().map_or(ReasonCode::Requested, |f| f.reason_code);
                vec![SagaEvent::OrderCancelled(SagaOrderCancelled {
                    order_id,
                    reason_code: reason_code.as_str().to_owned(),
                })]
            }
            SagaCommand::Fail { .. } if self.failure.is_some() => Vec::new(),
            SagaCommand::Fail {
                reason_code,
                reason,
                step,
            } => {
                if self.outcome.is_some() {
                    return Err(DomainError::rejected(format!(
                        "the saga of order {order_id} is completed"
                    )));
                }
                // Confirmed in time by another driver: its deadline no longer applies.
                if self.confirmed && matches!(reason_code, ReasonCode::TimedOut | ReasonCode::PaymentUnavailable) {
                    return Err(DomainError::rejected(format!(
                        "the order {order_id} was confirmed before its deadline"
                    )));
                }
                vec![SagaEvent::Failed(SagaFailed {
                    order_id,
                    reason_code: reason_code.as_str().to_owned(),
                    reason,
                    step,
                })]
            }
            SagaCommand::Complete { .. } if self.outcome.is_some() => Vec::new(),
            SagaCommand::Complete { outcome } => vec![SagaEvent::Completed(SagaCompleted { order_id, outcome })],
            SagaCommand::Park { .. } if self.parked.is_some() => Vec::new(),
            SagaCommand::Park { step, error } => vec![SagaEvent::Parked(SagaParked { order_id, step, error })],
            SagaCommand::Resume { actor } => {
                if self.parked.is_none() {
                    return Err(DomainError::rejected(format!(
                        "the saga of order {order_id} is not parked; only a parked saga can be retried"
                    )));
                }
                vec![SagaEvent::Resumed(SagaResumed { order_id, actor })]
            }
        };
        Ok(events)
    }

    fn evolve(mut self, event: &SagaEvent) -> Self {
        match event {
            SagaEvent::Started(e) => {
                self.order_id = e.order_id;
                self.payment_id = e.payment_id;
                self.lines = e
                    .lines
                    .iter()
                    .map(|l| Line {
                        product_id: l.product_id,
                        quantity: l.quantity,
                        reserved: false,
                        released: false,
                    })
                    .collect();
                self.amount = Some(e.amount);
                self.deadline = Some(e.deadline);
                self.correlation_id.clone_from(&e.correlation_id);
            }
            SagaEvent::StockReserved(e) => {
                if let Some(line) = self.lines.get_mut(e.line as usize) {
                    line.reserved = true;
                    // Recorded after the compensation released it as the frontier (a process
                    // that made the call late): released again with the usual key.
                    line.released = false;
                }
                self.reopen();
            }
            SagaEvent::PaymentAuthorized(_) => {
                self.authorized = true;
                self.reopen();
            }
            SagaEvent::Confirmed(_) => self.confirmed = true,
            SagaEvent::PaymentCaptured(e) => {
                self.captured_minor = self.captured_minor.saturating_add(e.amount.amount_minor);
            }
            SagaEvent::PaymentRefunded(_) => self.refunded = true,
            SagaEvent::PaymentVoided(_) => self.voided = true,
            SagaEvent::StockReleased(e) => {
                if let Some(line) = self.lines.get_mut(e.line as usize) {
                    line.released = true;
                }
            }
            SagaEvent::OrderCancelled(_) => self.order_cancelled = true,
            SagaEvent::Failed(e) => {
                // Abandoning a parked saga fails it: it compensates from then on.
                self.parked = None;
                self.failure = Some(Failure {
                    reason_code: ReasonCode::from_name(&e.reason_code).unwrap_or(ReasonCode::Abandoned),
                    reason: e.reason.clone(),
                    step: e.step.clone(),
                });
            }
            SagaEvent::Completed(e) => self.outcome = Some(e.outcome.clone()),
            SagaEvent::Parked(e) => {
                self.parked = Some(Parked {
                    step: e.step.clone(),
                    error: e.error.clone(),
                });
            }
            SagaEvent::Resumed(_) => self.parked = None,
        }
        self
    }

    fn event_from(event: DomainEvent) -> Option<SagaEvent> {
        match event {
            DomainEvent::Saga(e) => Some(e),
            _ => None,
        }
    }
}

impl Saga {
    /// A compensated saga that learns of an effect it had not recorded has work again.
    fn reopen(&mut self) {
        if self.failure.is_some() {
            self.outcome = None;
        }
    }

    fn money(&self, amount_minor: i64) -> Result<Money, DomainError> {
        let amount = self
            .amount
            .ok_or_else(|| DomainError::rejected("the saga has no amount".to_owned()))?;
        Ok(Money::new(amount_minor, amount.currency))
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use event_schemas::Currency;

    use super::*;
    use crate::domain::testing::Given;

    const ORDER: Uuid = Uuid::from_u128(0x0a);
    const PAYMENT: Uuid = Uuid::from_u128(0xd0);
    const TEA: Uuid = Uuid::from_u128(0xb1);
    const CUP: Uuid = Uuid::from_u128(0xb2);
    const TOTAL: i64 = 3 * 450 + 2 * 1299;

    fn deadline() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_226_500, 0).expect("a valid time")
    }

    /// A moment before the deadline.
    fn soon() -> DateTime<Utc> {
        deadline() - Duration::minutes(5)
    }

    /// The deadline itself: an order not confirmed by then is not.
    fn late() -> DateTime<Utc> {
        deadline()
    }

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::EUR)
    }

    fn start() -> SagaCommand {
        SagaCommand::Start {
            order_id: ORDER,
            payment_id: PAYMENT,
            lines: vec![(TEA, 3), (CUP, 2)],
            amount: eur(TOTAL),
            deadline: deadline(),
            correlation_id: "req-7f3a".to_owned(),
        }
    }

    fn started() -> SagaEvent {
        SagaEvent::Started(SagaStarted {
            order_id: ORDER,
            payment_id: PAYMENT,
            lines: vec![
                SagaLine {
                    product_id: TEA,
                    quantity: 3,
                },
                SagaLine {
                    product_id: CUP,
                    quantity: 2,
                },
            ],
            amount: eur(TOTAL),
            deadline: deadline(),
            correlation_id: "req-7f3a".to_owned(),
        })
    }

    fn reserved(line: u32) -> SagaEvent {
        let (product_id, quantity) = [(TEA, 3), (CUP, 2)][line as usize];
        SagaEvent::StockReserved(SagaStockReserved {
            order_id: ORDER,
            line,
            product_id,
            quantity,
        })
    }

    fn authorized() -> SagaEvent {
        SagaEvent::PaymentAuthorized(SagaPaymentAuthorized {
            order_id: ORDER,
            payment_id: PAYMENT,
            amount: eur(TOTAL),
        })
    }

    fn confirmed() -> SagaEvent {
        SagaEvent::Confirmed(SagaConfirmed { order_id: ORDER })
    }

    fn captured() -> SagaEvent {
        SagaEvent::PaymentCaptured(SagaPaymentCaptured {
            order_id: ORDER,
            payment_id: PAYMENT,
            amount: eur(TOTAL),
        })
    }

    fn refunded() -> SagaEvent {
        SagaEvent::PaymentRefunded(SagaPaymentRefunded {
            order_id: ORDER,
            payment_id: PAYMENT,
            amount: eur(TOTAL),
        })
    }

    fn voided() -> SagaEvent {
        SagaEvent::PaymentVoided(SagaPaymentVoided {
            order_id: ORDER,
            payment_id: PAYMENT,
        })
    }

    fn released(line: u32) -> SagaEvent {
        SagaEvent::StockReleased(SagaStockReleased {
            order_id: ORDER,
            line,
            product_id: [TEA, CUP][line as usize],
        })
    }

    fn fail(reason_code: ReasonCode, reason: &str, step: &str) -> SagaCommand {
        SagaCommand::Fail {
            reason_code,
            reason: reason.to_owned(),
            step: step.to_owned(),
        }
    }

    fn failed(reason_code: ReasonCode, reason: &str, step: &str) -> SagaEvent {
        SagaEvent::Failed(SagaFailed {
            order_id: ORDER,
            reason_code: reason_code.as_str().to_owned(),
            reason: reason.to_owned(),
            step: step.to_owned(),
        })
    }

    fn order_cancelled(reason_code: ReasonCode) -> SagaEvent {
        SagaEvent::OrderCancelled(SagaOrderCancelled {
            order_id: ORDER,
            reason_code: reason_code.as_str().to_owned(),
        })
    }

    fn completed(outcome: &str) -> SagaEvent {
        SagaEvent::Completed(SagaCompleted {
            order_id: ORDER,
            outcome: outcome.to_owned(),
        })
    }

    fn complete(outcome: &str) -> SagaCommand {
        SagaCommand::Complete {
            outcome: outcome.to_owned(),
        }
    }

    fn order(status: OrderStatus) -> OrderView {
        OrderView {
            status,
            cancellation_reason: None,
        }
    }

    fn pending() -> OrderView {
        order(OrderStatus::Pending)
    }

    /// Records `command` on the saga of `history` (given/when/then: it must decide exactly
    /// `expected`), appends `expected` to `history`, and returns the state after it.
    #[track_caller]
    fn record(history: &mut Vec<SagaEvent>, command: SagaCommand, expected: SagaEvent) -> Saga {
        let state = Saga::given(history.clone()).when(command).then([expected.clone()]);
        history.push(expected);
        state
    }

    const TIMED_OUT: &str = "the order was not confirmed before its deadline";
    const UNAVAILABLE: &str = "the payment was not authorized before the order's deadline";

    #[test]
    fn starts_with_its_lines_amount_deadline_and_correlation_id() {
        let saga = Saga::given([]).when(start()).then([started()]);
        assert!(saga.exists());
        assert_eq!(saga.order_id, ORDER);
        assert_eq!(saga.payment_id, PAYMENT);
        assert_eq!(saga.amount, Some(eur(TOTAL)));
        assert_eq!(saga.deadline, Some(deadline()));
        assert_eq!(saga.correlation_id, "req-7f3a");
        assert_eq!(saga.lines.len(), 2);
        assert_eq!(saga.phase(), Phase::Reserving);
        assert_eq!(saga.key("reserve 0"), format!("saga-{ORDER}-reserve 0"));

        Saga::given([started()])
            .when(start())
            .then_rejected(DomainError::AlreadyExists {
                what: "saga",
                id: ORDER,
            });
        Saga::given([])
            .when(SagaCommand::Authorized)
            .then_rejected(DomainError::NotFound {
                what: "saga",
                id: Uuid::nil(),
            });
        Saga::given([started()])
            .when(SagaCommand::Reserved { line: 2 })
            .then_rejected(DomainError::rejected(format!(
                "the saga of order {ORDER} has no line 2"
            )));
        assert_eq!(Saga::default().phase(), Phase::NotStarted);
        assert_eq!(Saga::default().next(&pending(), soon()), Next::Wait);
    }

    #[test]
    fn the_happy_path_reserves_authorizes_confirms_then_captures_when_shipped() {
        let mut history = vec![started()];
        let saga = Saga::fold(&history);
        assert_eq!(saga.next(&pending(), soon()), Next::Reserve { line: 0 });
        let saga = record(&mut history, SagaCommand::Reserved { line: 0 }, reserved(0));
        assert_eq!(saga.phase(), Phase::Reserving);
        assert_eq!(saga.next(&pending(), soon()), Next::Reserve { line: 1 });
        let saga = record(&mut history, SagaCommand::Reserved { line: 1 }, reserved(1));
        assert_eq!(saga.phase(), Phase::Authorizing);
        assert_eq!(saga.next(&pending(), soon()), Next::Authorize);
        let saga = record(&mut history, SagaCommand::Authorized, authorized());
        assert_eq!(saga.phase(), Phase::Confirming);
        assert_eq!(saga.next(&pending(), soon()), Next::Confirm);
        let saga = record(&mut history, SagaCommand::Confirmed, confirmed());
        assert_eq!(saga.phase(), Phase::AwaitingShipment);

        // Confirmed: it waits for the order to ship, past the deadline too.
        let confirmed_order = order(OrderStatus::Confirmed);
        assert_eq!(saga.next(&confirmed_order, soon()), Next::Wait);
        assert_eq!(saga.next(&confirmed_order, late() + Duration::days(3)), Next::Wait);

        let shipped = order(OrderStatus::Shipped);
        assert_eq!(saga.next(&shipped, late()), Next::Capture);
        let saga = record(&mut history, SagaCommand::Captured { amount_minor: TOTAL }, captured());
        assert_eq!(saga.captured_minor, TOTAL);
        assert_eq!(saga.next(&shipped, late()), Next::Complete { outcome: "captured" });
        assert_eq!(
            saga.next(&order(OrderStatus::Delivered), late()),
            Next::Complete { outcome: "captured" }
        );
        let saga = record(&mut history, complete("captured"), completed("captured"));
        assert_eq!(saga.phase(), Phase::Completed);
        assert_eq!(saga.outcome.as_deref(), Some("captured"));
        assert_eq!(saga.next(&shipped, late()), Next::Wait);
    }

    #[test]
    fn out_of_stock_at_line_two_releases_line_one_only_voids_nothing_and_cancels_the_order() {
        let mut history = vec![started(), reserved(0)];
        let saga = Saga::fold(&history);
        assert_eq!(saga.next(&pending(), soon()), Next::Reserve { line: 1 });
        let reason = "insufficient stock for product CUP-002: 2 requested, 1 available";
        let saga = record(
            &mut history,
            fail(ReasonCode::OutOfStock, reason, "reserve 1"),
            failed(ReasonCode::OutOfStock, reason, "reserve 1"),
        );
        assert_eq!(saga.phase(), Phase::Compensating);
        // Line 1 was refused: nothing of it is held, so it is not released; nothing was
        // authorized, so nothing is voided.
        assert_eq!(
            saga.next(&pending(), soon()),
            Next::Release {
                line: 0,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 0 }, released(0));
        assert_eq!(saga.next(&pending(), soon()), Next::CancelOrder);
        let saga = record(
            &mut history,
            SagaCommand::OrderCancelled,
            order_cancelled(ReasonCode::OutOfStock),
        );
        let cancelled = order(OrderStatus::Cancelled);
        assert_eq!(saga.next(&cancelled, soon()), Next::Complete { outcome: "cancelled" });
        let saga = record(&mut history, complete("cancelled"), completed("cancelled"));
        assert_eq!(saga.phase(), Phase::Completed);
        assert_eq!(saga.next(&cancelled, late()), Next::Wait);
    }

    #[test]
    fn a_declined_payment_releases_every_line_in_reverse_and_voids_nothing() {
        let mut history = vec![started(), reserved(0), reserved(1)];
        let saga = record(
            &mut history,
            fail(ReasonCode::PaymentDeclined, "insufficient funds", "authorize"),
            failed(ReasonCode::PaymentDeclined, "insufficient funds", "authorize"),
        );
        assert_eq!(
            saga.next(&pending(), soon()),
            Next::Release {
                line: 1,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 1 }, released(1));
        assert_eq!(
            saga.next(&pending(), soon()),
            Next::Release {
                line: 0,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 0 }, released(0));
        assert_eq!(saga.next(&pending(), soon()), Next::CancelOrder);
        let saga = record(
            &mut history,
            SagaCommand::OrderCancelled,
            order_cancelled(ReasonCode::PaymentDeclined),
        );
        assert!(!saga.voided);
        assert_eq!(
            saga.next(&order(OrderStatus::Cancelled), soon()),
            Next::Complete { outcome: "cancelled" }
        );
    }

    #[test]
    fn the_deadline_while_reserving_times_out_and_releases_the_frontier_line() {
        let mut history = vec![started(), reserved(0)];
        let saga = Saga::fold(&history);
        assert_eq!(saga.next(&pending(), soon()), Next::Reserve { line: 1 });
        let expected = Next::Fail {
            reason_code: ReasonCode::TimedOut,
            reason: TIMED_OUT.to_owned(),
            step: "reserving".to_owned(),
        };
        assert_eq!(saga.next(&pending(), late()), expected);
        let saga = record(
            &mut history,
            fail(ReasonCode::TimedOut, TIMED_OUT, "reserving"),
            failed(ReasonCode::TimedOut, TIMED_OUT, "reserving"),
        );
        assert_eq!(
            saga.next(&pending(), late()),
            Next::Release {
                line: 0,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 0 }, released(0));
        // Line 1's reservation may have been made by a process that crashed before recording
        // it: released all the same.
        assert_eq!(
            saga.next(&pending(), late()),
            Next::Release {
                line: 1,
                frontier: true
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 1 }, released(1));
        assert!(!saga.voided);
        assert_eq!(saga.next(&pending(), late()), Next::CancelOrder);
        let saga = record(
            &mut history,
            SagaCommand::OrderCancelled,
            order_cancelled(ReasonCode::TimedOut),
        );
        assert_eq!(
            saga.next(&order(OrderStatus::Cancelled), late()),
            Next::Complete { outcome: "cancelled" }
        );
    }

    #[test]
    fn the_deadline_while_authorizing_is_payment_unavailable_and_voids() {
        let mut history = vec![started(), reserved(0), reserved(1)];
        let saga = Saga::fold(&history);
        assert_eq!(saga.phase(), Phase::Authorizing);
        assert_eq!(saga.next(&pending(), soon()), Next::Authorize);
        assert_eq!(
            saga.next(&pending(), late()),
            Next::Fail {
                reason_code: ReasonCode::PaymentUnavailable,
                reason: UNAVAILABLE.to_owned(),
                step: "authorizing".to_owned(),
            }
        );
        let saga = record(
            &mut history,
            fail(ReasonCode::PaymentUnavailable, UNAVAILABLE, "authorizing"),
            failed(ReasonCode::PaymentUnavailable, UNAVAILABLE, "authorizing"),
        );
        // The authorization may have been made without an answer: voided first.
        assert_eq!(saga.next(&pending(), late()), Next::Void);
        let saga = record(&mut history, SagaCommand::Voided, voided());
        assert_eq!(
            saga.next(&pending(), late()),
            Next::Release {
                line: 1,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 1 }, released(1));
        assert_eq!(
            saga.next(&pending(), late()),
            Next::Release {
                line: 0,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 0 }, released(0));
        assert_eq!(saga.next(&pending(), late()), Next::CancelOrder);
        let saga = record(
            &mut history,
            SagaCommand::OrderCancelled,
            order_cancelled(ReasonCode::PaymentUnavailable),
        );
        assert_eq!(
            saga.next(&order(OrderStatus::Cancelled), late()),
            Next::Complete { outcome: "cancelled" }
        );

        // Confirming after the deadline: timed out, not a payment's fault.
        let saga = Saga::fold(&[started(), reserved(0), reserved(1), authorized()]);
        assert_eq!(
            saga.next(&pending(), late()),
            Next::Fail {
                reason_code: ReasonCode::TimedOut,
                reason: TIMED_OUT.to_owned(),
                step: "confirming".to_owned(),
            }
        );
    }

    #[test]
    fn a_client_cancellation_while_confirmed_voids_releases_and_completes() {
        let mut history = vec![started(), reserved(0), reserved(1), authorized(), confirmed()];
        let saga = Saga::fold(&history);
        let cancelled = OrderView {
            status: OrderStatus::Cancelled,
            cancellation_reason: Some("changed my mind".to_owned()),
        };
        assert_eq!(
            saga.next(&cancelled, soon()),
            Next::Fail {
                reason_code: ReasonCode::Requested,
                reason: "changed my mind".to_owned(),
                step: "order".to_owned(),
            }
        );
        let saga = record(
            &mut history,
            fail(ReasonCode::Requested, "changed my mind", "order"),
            failed(ReasonCode::Requested, "changed my mind", "order"),
        );
        assert_eq!(saga.next(&cancelled, soon()), Next::Void);
        let saga = record(&mut history, SagaCommand::Voided, voided());
        assert_eq!(
            saga.next(&cancelled, soon()),
            Next::Release {
                line: 1,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 1 }, released(1));
        assert_eq!(
            saga.next(&cancelled, soon()),
            Next::Release {
                line: 0,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 0 }, released(0));
        // The order is cancelled already (by the client): nothing to cancel.
        assert_eq!(saga.next(&cancelled, soon()), Next::Complete { outcome: "cancelled" });
        let saga = record(&mut history, complete("cancelled"), completed("cancelled"));
        assert_eq!(saga.phase(), Phase::Completed);
        assert!(!saga.order_cancelled);
    }

    #[test]
    fn a_late_record_after_completion_reopens_the_saga_and_releases() {
        let mut history = vec![
            started(),
            reserved(0),
            failed(ReasonCode::TimedOut, TIMED_OUT, "reserving"),
            released(0),
            released(1),
            order_cancelled(ReasonCode::TimedOut),
            completed("cancelled"),
        ];
        let cancelled = order(OrderStatus::Cancelled);
        let saga = Saga::fold(&history);
        assert_eq!(saga.phase(), Phase::Completed);
        assert_eq!(saga.next(&cancelled, late()), Next::Wait);

        // The reservation of line 1 a crashed process made, recorded at last.
        let saga = record(&mut history, SagaCommand::Reserved { line: 1 }, reserved(1));
        assert_eq!(saga.phase(), Phase::Compensating);
        assert_eq!(saga.outcome, None);
        // Every line now shows reserved, so an authorization may have been asked for: voided
        // (a void before any authorization is harmless, and blocks a late one).
        assert_eq!(saga.next(&cancelled, late()), Next::Void);
        let saga = record(&mut history, SagaCommand::Voided, voided());
        assert_eq!(
            saga.next(&cancelled, late()),
            Next::Release {
                line: 1,
                frontier: false
            }
        );
        let saga = record(&mut history, SagaCommand::Released { line: 1 }, released(1));
        assert_eq!(saga.next(&cancelled, late()), Next::Complete { outcome: "cancelled" });
        let saga = record(&mut history, complete("cancelled"), completed("cancelled"));
        assert_eq!(saga.phase(), Phase::Completed);

        // A late authorization reopens it too; it was voided already.
        let saga = record(&mut history, SagaCommand::Authorized, authorized());
        assert_eq!(saga.phase(), Phase::Compensating);
        assert_eq!(saga.next(&cancelled, late()), Next::Complete { outcome: "cancelled" });
    }

    #[test]
    fn a_parked_saga_waits_until_resumed_or_abandoned() {
        let mut history = vec![started()];
        let park = SagaCommand::Park {
            step: "reserve 0".to_owned(),
            error: "inventory answered 418".to_owned(),
        };
        let parked = SagaEvent::Parked(SagaParked {
            order_id: ORDER,
            step: "reserve 0".to_owned(),
            error: "inventory answered 418".to_owned(),
        });
        let saga = record(&mut history, park.clone(), parked);
        assert_eq!(saga.phase(), Phase::Parked);
        assert_eq!(
            saga.parked,
            Some(Parked {
                step: "reserve 0".to_owned(),
                error: "inventory answered 418".to_owned(),
            })
        );
        // Parked: nothing, whatever the time or the order.
        assert_eq!(saga.next(&pending(), soon()), Next::Wait);
        assert_eq!(saga.next(&pending(), late()), Next::Wait);
        assert_eq!(saga.next(&order(OrderStatus::Cancelled), late()), Next::Wait);
        Saga::given(history.clone()).when(park).then_nothing();

        // Resumed: the step is tried again.
        let resume = SagaCommand::Resume {
            actor: "ops@example.com".to_owned(),
        };
        let mut resumed = history.clone();
        let saga = record(
            &mut resumed,
            resume.clone(),
            SagaEvent::Resumed(SagaResumed {
                order_id: ORDER,
                actor: "ops@example.com".to_owned(),
            }),
        );
        assert_eq!(saga.phase(), Phase::Reserving);
        assert_eq!(saga.next(&pending(), soon()), Next::Reserve { line: 0 });
        Saga::given(resumed)
            .when(resume)
            .then_rejected(DomainError::rejected(format!(
                "the saga of order {ORDER} is not parked; only a parked saga can be retried"
            )));

        // Abandoned: it fails, is no longer parked, and compensates.
        let reason = "abandoned by ops@example.com";
        let saga = record(
            &mut history,
            fail(ReasonCode::Abandoned, reason, "operator"),
            failed(ReasonCode::Abandoned, reason, "operator"),
        );
        assert_eq!(saga.parked, None);
        assert_eq!(saga.phase(), Phase::Compensating);
        assert_eq!(
            saga.failure.as_ref().map(|f| f.reason_code),
            Some(ReasonCode::Abandoned)
        );
        assert_eq!(
            saga.next(&pending(), soon()),
            Next::Release {
                line: 0,
                frontier: true
            }
        );
    }

    #[test]
    fn recording_what_is_recorded_appends_nothing() {
        let happy = [
            started(),
            reserved(0),
            reserved(1),
            authorized(),
            confirmed(),
            captured(),
            completed("captured"),
        ];
        for command in [
            SagaCommand::Reserved { line: 0 },
            SagaCommand::Reserved { line: 1 },
            SagaCommand::Authorized,
            SagaCommand::Confirmed,
            SagaCommand::Captured { amount_minor: TOTAL },
            complete("captured"),
            complete("cancelled"),
        ] {
            Saga::given(happy.clone()).when(command).then_nothing();
        }
        // A completed saga that never failed cannot start failing.
        Saga::given(happy.clone())
            .when(fail(ReasonCode::TimedOut, TIMED_OUT, "deadline"))
            .then_rejected(DomainError::rejected(format!("the saga of order {ORDER} is completed")));

        let compensated = [
            started(),
            reserved(0),
            reserved(1),
            authorized(),
            confirmed(),
            captured(),
            failed(ReasonCode::Abandoned, "abandoned", "operator"),
            refunded(),
            voided(),
            released(1),
            released(0),
            order_cancelled(ReasonCode::Abandoned),
            completed("cancelled"),
        ];
        for command in [
            SagaCommand::Refunded { amount_minor: TOTAL },
            SagaCommand::Voided,
            SagaCommand::Released { line: 0 },
            SagaCommand::Released { line: 1 },
            SagaCommand::OrderCancelled,
            fail(ReasonCode::Requested, "changed my mind", "order"),
            complete("cancelled"),
        ] {
            Saga::given(compensated.clone()).when(command).then_nothing();
        }

        // What a captured saga that compensates does first: refund.
        let saga = Saga::fold(&compensated[..7]);
        assert_eq!(saga.next(&order(OrderStatus::Shipped), late()), Next::Refund);
    }

    #[test]
    fn reason_codes_have_stable_names() {
        for code in ReasonCode::ALL {
            assert_eq!(ReasonCode::from_name(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(
            ReasonCode::ALL.map(ReasonCode::as_str),
            [
                "out_of_stock",
                "payment_declined",
                "payment_unavailable",
                "timed_out",
                "abandoned",
                "requested"
            ]
        );
        assert_eq!(ReasonCode::from_name("placed"), None);
    }
}
