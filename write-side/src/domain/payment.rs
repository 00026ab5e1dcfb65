//! The payment aggregate (`payment-{uuid}` streams): one attempt to pay for one order.
//!
//! ```text
//! (none) ──authorize──► authorized ──capture──► captured ──refund (all)──► refunded
//!   │ │                    │ │                    └─refund (part)─► captured, partly refunded
//!   │ │                    │ └──void──► voided  (the authorized amount released)
//!   │ └─────decline────────┴──decline──► declined
//!   │
//!   └──void──► voided before authorization ──authorize──► authorized + voided, in one append
//! ```
//!
//! A payment is authorized for an amount, captured once for at most that amount, and refunded
//! in one or more parts up to what was captured; it becomes `refunded` when all of it is. A
//! provider may decline the payment before authorization (the stream then starts with the
//! decline) or instead of capturing an authorization. A new attempt is a new payment id. All
//! amounts are in the currency of the authorization.
//!
//! A void releases an authorization that will not be captured. Once captured, money goes back
//! by refund, never by void. A void may also come *first*: the place-order saga voids with the
//! authorize step's payment id when that step's deadline passes, and the provider's
//! authorization may still arrive afterwards. The stream then starts with a `PaymentVoided`
//! without an amount, and the late `Authorize` appends `PaymentAuthorized` and, in the same
//! append, a `PaymentVoided` of that amount: the provider's hold is released at once and never
//! stays. Voiding again, or voiding a declined payment (nothing to release), appends nothing.

use std::fmt;

use event_schemas::{
    Category, Currency, DomainEvent, Money, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentEvent,
    PaymentRefunded, PaymentVoided,
};
use uuid::Uuid;

use super::{Aggregate, DomainError, MAX_REASON_CHARS, currency_name, validate};

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PaymentStatus {
    /// The stream is empty: there is no such payment.
    #[default]
    NotStarted,
    Authorized,
    /// Captured; possibly partly refunded (see [`Payment::refunded_minor`]).
    Captured,
    /// Everything captured was refunded.
    Refunded,
    Declined,
    /// The authorization was released, or, when
    /// [`voided_before_authorization`](Payment::voided_before_authorization), the payment was
    /// voided before any authorization arrived.
    Voided,
}

impl PaymentStatus {
    /// Stable lower-case name: `"authorized"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Authorized => "authorized",
            Self::Captured => "captured",
            Self::Refunded => "refunded",
            Self::Declined => "declined",
            Self::Voided => "voided",
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A payment as its stream tells it. The default is the state of an empty stream: no payment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    /// Nil until authorized, declined or voided.
    pub id: Uuid,
    pub order_id: Uuid,
    pub status: PaymentStatus,
    /// The currency of every amount; `None` before authorization (and for a payment declined
    /// before it).
    pub currency: Option<Currency>,
    pub authorized_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    /// Set when declined.
    pub decline_reason: Option<String>,
    /// Set when voided.
    #[serde(default)]
    pub void_reason: Option<String>,
    /// The stream starts with the void: it came before any authorization. Stays true once an
    /// authorization arrives later (and is released at once).
    #[serde(default)]
    pub voided_before_authorization: bool,
}

impl Payment {
    /// What is captured and not refunded, in minor units.
    pub fn refundable_minor(&self) -> i64 {
        self.captured_minor.saturating_sub(self.refunded_minor).max(0)
    }

    /// Voided before any authorization, and no authorization has arrived since: the next
    /// `Authorize` is released at once.
    fn awaits_late_authorization(&self) -> bool {
        self.status == PaymentStatus::Voided && self.voided_before_authorization && self.currency.is_none()
    }

    /// A rejection unless the payment is for `order_id`.
    fn check_order(&self, order_id: Uuid) -> Result<(), DomainError> {
        if self.order_id == order_id {
            Ok(())
        } else {
            Err(DomainError::rejected(format!(
                "payment is for order {}, not order {order_id}",
                self.order_id
            )))
        }
    }

    fn money(&self, amount_minor: i64) -> Result<Money, DomainError> {
        self.currency
            .map(|currency| Money::new(amount_minor, currency))
            .ok_or_else(|| DomainError::rejected(format!("payment is {}; it has no currency", self.status)))
    }
}

/// What can be asked of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentCommand {
    /// The provider reserved `amount_minor` (> 0) for the order: starts the payment.
    ///
    /// On a payment voided before authorization (see [`Void`](Self::Void)) this is not an
    /// error: the authorization is recorded and released at once, `PaymentAuthorized` followed
    /// by `PaymentVoided` of the same amount (with the void's reason), so that the provider's
    /// hold never stays. The order must be the void's.
    Authorize {
        payment_id: Uuid,
        order_id: Uuid,
        amount_minor: i64,
        /// ISO 4217 code, e.g. `"EUR"`.
        currency: String,
    },
    /// The provider refused: before authorization (starts the payment), or instead of
    /// capturing an authorization. The reason is trimmed, non-empty, bounded.
    Decline {
        payment_id: Uuid,
        order_id: Uuid,
        reason: String,
    },
    /// Collects `amount_minor` (> 0, at most the authorized amount) of an authorized payment,
    /// once.
    Capture { payment_id: Uuid, amount_minor: i64 },
    /// Pays back `amount_minor` (> 0, at most what is captured and not yet refunded).
    Refund { payment_id: Uuid, amount_minor: i64 },
    /// Releases an authorization that will not be captured: `PaymentVoided` with the authorized
    /// amount. The reason is trimmed, non-empty, bounded.
    ///
    /// The place-order saga voids with the authorize step's payment id when that step's
    /// deadline passes, and the provider's authorization may arrive later. So a void of a
    /// payment that does not exist yet is accepted: the stream starts with a `PaymentVoided`
    /// without an amount, and a later [`Authorize`](Self::Authorize) is released at once.
    ///
    /// Voiding a voided payment, or a declined one (nothing to release), appends nothing. A
    /// captured or refunded payment cannot be voided: refund it instead.
    Void {
        payment_id: Uuid,
        order_id: Uuid,
        reason: String,
    },
}

impl Aggregate for Payment {
    type Command = PaymentCommand;
    type Event = PaymentEvent;

    const CATEGORY: Category = Category::Payment;

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        match command {
            PaymentCommand::Authorize {
                payment_id,
                order_id,
                amount_minor,
                currency,
            } => {
                let amount_minor = validate::amount("amount_minor", amount_minor)?;
                let currency = validate::currency("currency", &currency)?;
                let amount = Money::new(amount_minor, currency);
                let authorized = PaymentEvent::Authorized(PaymentAuthorized {
                    payment_id,
                    order_id,
                    amount,
                });
                if self.awaits_late_authorization() {
                    self.check_order(order_id)?;
                    return Ok(vec![
                        authorized,
                        PaymentEvent::Voided(PaymentVoided {
                            payment_id,
                            order_id,
                            amount: Some(amount),
                            reason: self.void_reason.clone().unwrap_or_default(),
                        }),
                    ]);
                }
                if self.status != PaymentStatus::NotStarted {
                    return Err(DomainError::AlreadyExists {
                        what: "payment",
                        id: payment_id,
                    });
                }
                Ok(vec![authorized])
            }
            PaymentCommand::Decline {
                payment_id,
                order_id,
                reason,
            } => {
                let reason = validate::text("reason", &reason, MAX_REASON_CHARS)?;
                // Voided before the provider answered: the decline releases nothing more.
                if self.awaits_late_authorization() {
                    self.check_order(order_id)?;
                    return Ok(Vec::new());
                }
                match self.status {
                    PaymentStatus::NotStarted => {}
                    PaymentStatus::Authorized => self.check_order(order_id)?,
                    status => {
                        return Err(DomainError::rejected(format!(
                            "payment is {status}; only a new or authorized payment can be declined"
                        )));
                    }
                }
                Ok(vec![PaymentEvent::Declined(PaymentDeclined {
                    payment_id,
                    order_id,
                    reason,
                })])
            }
            PaymentCommand::Capture {
                payment_id,
                amount_minor,
            } => {
                let amount_minor = validate::amount("amount_minor", amount_minor)?;
                self.require(
                    payment_id,
                    PaymentStatus::Authorized,
                    "only an authorized payment can be captured",
                )?;
                if amount_minor > self.authorized_minor {
                    return Err(DomainError::rejected(format!(
                        "cannot capture {amount_minor} {}: only {} is authorized",
                        currency_name(self.currency),
                        self.authorized_minor
                    )));
                }
                Ok(vec![PaymentEvent::Captured(PaymentCaptured {
                    payment_id,
                    order_id: self.order_id,
                    amount: self.money(amount_minor)?,
                })])
            }
            PaymentCommand::Refund {
                payment_id,
                amount_minor,
            } => {
                let amount_minor = validate::amount("amount_minor", amount_minor)?;
                self.require(
                    payment_id,
                    PaymentStatus::Captured,
                    "only a captured payment can be refunded",
                )?;
                if amount_minor > self.refundable_minor() {
                    return Err(DomainError::rejected(format!(
                        "cannot refund {amount_minor} {}: only {} of the captured {} is left to refund",
                        currency_name(self.currency),
                        self.refundable_minor(),
                        self.captured_minor
                    )));
                }
                Ok(vec![PaymentEvent::Refunded(PaymentRefunded {
                    payment_id,
                    order_id: self.order_id,
                    amount: self.money(amount_minor)?,
                })])
            }
            PaymentCommand::Void {
                payment_id,
                order_id,
                reason,
            } => {
                let reason = validate::text("reason", &reason, MAX_REASON_CHARS)?;
                let amount = match self.status {
                    // The authorization may still arrive: `Authorize` will release it.
                    PaymentStatus::NotStarted => None,
                    PaymentStatus::Authorized => {
                        self.check_order(order_id)?;
                        Some(self.money(self.authorized_minor)?)
                    }
                    // Already released, or nothing to release.
                    PaymentStatus::Voided | PaymentStatus::Declined => {
                        self.check_order(order_id)?;
                        return Ok(Vec::new());
                    }
                    status @ (PaymentStatus::Captured | PaymentStatus::Refunded) => {
                        return Err(DomainError::rejected(format!(
                            "payment is {status}; only an authorized payment can be voided: once captured, \
                             refund it instead"
                        )));
                    }
                };
                Ok(vec![PaymentEvent::Voided(PaymentVoided {
                    payment_id,
                    order_id,
                    amount,
                    reason,
                })])
            }
        }
    }

    fn evolve(mut self, event: &PaymentEvent) -> Self {
        match event {
            PaymentEvent::Authorized(e) => {
                self.id = e.payment_id;
                self.order_id = e.order_id;
                self.status = PaymentStatus::Authorized;
                self.currency = Some(e.amount.currency);
                self.authorized_minor = e.amount.amount_minor;
            }
            PaymentEvent::Captured(e) => {
                self.status = PaymentStatus::Captured;
                self.captured_minor = self.captured_minor.saturating_add(e.amount.amount_minor);
            }
            PaymentEvent::Declined(e) => {
                self.id = e.payment_id;
                self.order_id = e.order_id;
                self.status = PaymentStatus::Declined;
                self.decline_reason = Some(e.reason.clone());
            }
            PaymentEvent::Refunded(e) => {
                self.refunded_minor = self.refunded_minor.saturating_add(e.amount.amount_minor);
                if self.refunded_minor >= self.captured_minor {
                    self.status = PaymentStatus::Refunded;
                }
            }
            PaymentEvent::Voided(e) => {
                if self.status == PaymentStatus::NotStarted {
                    self.voided_before_authorization = true;
                }
                self.id = e.payment_id;
                self.order_id = e.order_id;
                self.status = PaymentStatus::Voided;
                self.void_reason = Some(e.reason.clone());
            }
        }
        self
    }

    fn event_from(event: DomainEvent) -> Option<PaymentEvent> {
        match event {
            DomainEvent::Payment(e) => Some(e),
            _ => None,
        }
    }
}

impl Payment {
    /// NotFound for a payment never started; a rejection unless the status is `allowed`.
    fn require(&self, payment_id: Uuid, allowed: PaymentStatus, only: &str) -> Result<(), DomainError> {
        match self.status {
            PaymentStatus::NotStarted => Err(DomainError::NotFound {
                what: "payment",
                id: payment_id,
            }),
            status if status == allowed => Ok(()),
            status => Err(DomainError::rejected(format!("payment is {status}; {only}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::testing::Given;

    const ID: Uuid = Uuid::from_u128(0xd0);
    const ORDER: Uuid = Uuid::from_u128(0x0a);
    const OTHER_ORDER: Uuid = Uuid::from_u128(0x0b);

    fn eur(amount_minor: i64) -> Money {
        Money::new(amount_minor, Currency::EUR)
    }

    fn authorized(amount_minor: i64) -> PaymentEvent {
        PaymentEvent::Authorized(PaymentAuthorized {
            payment_id: ID,
            order_id: ORDER,
            amount: eur(amount_minor),
        })
    }

    fn captured(amount_minor: i64) -> PaymentEvent {
        PaymentEvent::Captured(PaymentCaptured {
            payment_id: ID,
            order_id: ORDER,
            amount: eur(amount_minor),
        })
    }

    fn refunded(amount_minor: i64) -> PaymentEvent {
        PaymentEvent::Refunded(PaymentRefunded {
            payment_id: ID,
            order_id: ORDER,
            amount: eur(amount_minor),
        })
    }

    fn declined() -> PaymentEvent {
        PaymentEvent::Declined(PaymentDeclined {
            payment_id: ID,
            order_id: ORDER,
            reason: "card expired".to_owned(),
        })
    }

    const VOID_REASON: &str = "order not confirmed in time";

    /// Released `amount_minor` of the authorization, or voided before any (`None`).
    fn voided(amount_minor: Option<i64>) -> PaymentEvent {
        PaymentEvent::Voided(PaymentVoided {
            payment_id: ID,
            order_id: ORDER,
            amount: amount_minor.map(eur),
            reason: VOID_REASON.to_owned(),
        })
    }

    fn authorize(amount_minor: i64, currency: &str) -> PaymentCommand {
        PaymentCommand::Authorize {
            payment_id: ID,
            order_id: ORDER,
            amount_minor,
            currency: currency.to_owned(),
        }
    }

    fn decline(order_id: Uuid, reason: &str) -> PaymentCommand {
        PaymentCommand::Decline {
            payment_id: ID,
            order_id,
            reason: reason.to_owned(),
        }
    }

    fn capture(amount_minor: i64) -> PaymentCommand {
        PaymentCommand::Capture {
            payment_id: ID,
            amount_minor,
        }
    }

    fn refund(amount_minor: i64) -> PaymentCommand {
        PaymentCommand::Refund {
            payment_id: ID,
            amount_minor,
        }
    }

    fn void(order_id: Uuid, reason: &str) -> PaymentCommand {
        PaymentCommand::Void {
            payment_id: ID,
            order_id,
            reason: reason.to_owned(),
        }
    }

    fn not_found() -> DomainError {
        DomainError::NotFound {
            what: "payment",
            id: ID,
        }
    }

    #[test]
    fn authorizes_a_payment() {
        let state = Payment::given([]).when(authorize(3948, "EUR")).then([authorized(3948)]);
        assert_eq!(state.status, PaymentStatus::Authorized);
        assert_eq!((state.id, state.order_id), (ID, ORDER));
        assert_eq!((state.currency, state.authorized_minor), (Some(Currency::EUR), 3948));
    }

    #[test]
    fn authorizing_validates_amount_and_currency() {
        Payment::given([])
            .when(authorize(0, "EUR"))
            .then_rejected(DomainError::invalid("amount_minor", "must be greater than zero"));
        Payment::given([])
            .when(authorize(-5, "EUR"))
            .then_rejected(DomainError::invalid("amount_minor", "must be greater than zero"));
        Payment::given([])
            .when(authorize(100, "euro"))
            .then_rejected(DomainError::invalid(
                "currency",
                "must be a three-letter upper-case ISO 4217 code, e.g. EUR",
            ));
    }

    #[test]
    fn authorizing_an_existing_payment_is_rejected() {
        for history in [vec![authorized(100)], vec![declined()]] {
            Payment::given(history)
                .when(authorize(100, "EUR"))
                .then_rejected(DomainError::AlreadyExists {
                    what: "payment",
                    id: ID,
                });
        }
    }

    #[test]
    fn declines_before_or_instead_of_capture() {
        let state = Payment::given([])
            .when(decline(ORDER, " card expired "))
            .then([declined()]);
        assert_eq!(state.status, PaymentStatus::Declined);
        assert_eq!((state.id, state.order_id), (ID, ORDER));
        assert_eq!(state.decline_reason.as_deref(), Some("card expired"));
        Payment::given([authorized(100)])
            .when(decline(ORDER, "card expired"))
            .then([declined()]);
    }

    #[test]
    fn declining_needs_a_reason_and_the_right_order() {
        Payment::given([])
            .when(decline(ORDER, ""))
            .then_rejected(DomainError::invalid("reason", "must not be empty"));
        Payment::given([authorized(100)])
            .when(decline(OTHER_ORDER, "card expired"))
            .then_rejected(DomainError::rejected(format!(
                "payment is for order {ORDER}, not order {OTHER_ORDER}"
            )));
    }

    #[test]
    fn declining_after_capture_or_decline_is_rejected() {
        for (history, status) in [
            (vec![authorized(100), captured(100)], "captured"),
            (vec![authorized(100), captured(100), refunded(100)], "refunded"),
            (vec![declined()], "declined"),
        ] {
            Payment::given(history)
                .when(decline(ORDER, "card expired"))
                .then_rejected(DomainError::rejected(format!(
                    "payment is {status}; only a new or authorized payment can be declined"
                )));
        }
    }

    #[test]
    fn captures_all_or_part_of_the_authorization() {
        let state = Payment::given([authorized(100)])
            .when(capture(100))
            .then([captured(100)]);
        assert_eq!((state.status, state.captured_minor), (PaymentStatus::Captured, 100));
        let state = Payment::given([authorized(100)]).when(capture(60)).then([captured(60)]);
        assert_eq!(state.refundable_minor(), 60);
    }

    #[test]
    fn capturing_more_than_authorized_is_rejected() {
        Payment::given([authorized(100)])
            .when(capture(101))
            .then_rejected(DomainError::rejected("cannot capture 101 EUR: only 100 is authorized"));
        Payment::given([authorized(100)])
            .when(capture(0))
            .then_rejected(DomainError::invalid("amount_minor", "must be greater than zero"));
    }

    #[test]
    fn capturing_needs_an_authorized_payment() {
        Payment::given([]).when(capture(1)).then_rejected(not_found());
        for (history, status) in [
            (vec![authorized(100), captured(100)], "captured"),
            (vec![authorized(100), captured(100), refunded(100)], "refunded"),
            (vec![declined()], "declined"),
        ] {
            Payment::given(history)
                .when(capture(1))
                .then_rejected(DomainError::rejected(format!(
                    "payment is {status}; only an authorized payment can be captured"
                )));
        }
    }

    #[test]
    fn refunds_in_parts_until_all_is_refunded() {
        let state = Payment::given([authorized(100), captured(100)])
            .when(refund(30))
            .then([refunded(30)]);
        assert_eq!(
            (state.status, state.refunded_minor, state.refundable_minor()),
            (PaymentStatus::Captured, 30, 70)
        );
        let state = Payment::given([authorized(100), captured(100), refunded(30)])
            .when(refund(70))
            .then([refunded(70)]);
        assert_eq!((state.status, state.refundable_minor()), (PaymentStatus::Refunded, 0));
    }

    #[test]
    fn refunding_more_than_is_left_is_rejected() {
        Payment::given([authorized(100), captured(80), refunded(50)])
            .when(refund(31))
            .then_rejected(DomainError::rejected(
                "cannot refund 31 EUR: only 30 of the captured 80 is left to refund",
            ));
        Payment::given([authorized(100), captured(80)])
            .when(refund(-1))
            .then_rejected(DomainError::invalid("amount_minor", "must be greater than zero"));
    }

    #[test]
    fn refunding_needs_a_captured_payment() {
        Payment::given([]).when(refund(1)).then_rejected(not_found());
        for (history, status) in [
            (vec![authorized(100)], "authorized"),
            (vec![authorized(100), captured(100), refunded(100)], "refunded"),
            (vec![declined()], "declined"),
        ] {
            Payment::given(history)
                .when(refund(1))
                .then_rejected(DomainError::rejected(format!(
                    "payment is {status}; only a captured payment can be refunded"
                )));
        }
    }

    #[test]
    fn voids_an_authorized_payment_releasing_the_authorized_amount() {
        let state = Payment::given([authorized(100)])
            .when(void(ORDER, " order not confirmed in time "))
            .then([voided(Some(100))]);
        assert_eq!(state.status, PaymentStatus::Voided);
        assert_eq!(state.void_reason.as_deref(), Some(VOID_REASON));
        assert!(!state.voided_before_authorization);
        assert_eq!((state.currency, state.authorized_minor), (Some(Currency::EUR), 100));
    }

    #[test]
    fn a_voided_payment_cannot_be_captured_or_refunded() {
        for history in [
            vec![authorized(100), voided(Some(100))],
            vec![voided(None)],
            vec![voided(None), authorized(100), voided(Some(100))],
        ] {
            Payment::given(history.clone())
                .when(capture(1))
                .then_rejected(DomainError::rejected(
                    "payment is voided; only an authorized payment can be captured",
                ));
            Payment::given(history)
                .when(refund(1))
                .then_rejected(DomainError::rejected(
                    "payment is voided; only a captured payment can be refunded",
                ));
        }
    }

    #[test]
    fn voiding_a_voided_payment_appends_nothing() {
        for history in [
            vec![authorized(100), voided(Some(100))],
            vec![voided(None)],
            vec![voided(None), authorized(100), voided(Some(100))],
        ] {
            let state = Payment::given(history)
                .when(void(ORDER, "another reason"))
                .then_nothing();
            assert_eq!(state.status, PaymentStatus::Voided);
            assert_eq!(state.void_reason.as_deref(), Some(VOID_REASON));
        }
    }

    #[test]
    fn voiding_a_captured_or_refunded_payment_is_rejected() {
        for (history, status) in [
            (vec![authorized(100), captured(100)], "captured"),
            (vec![authorized(100), captured(100), refunded(30)], "captured"),
            (vec![authorized(100), captured(100), refunded(100)], "refunded"),
        ] {
            Payment::given(history)
                .when(void(ORDER, VOID_REASON))
                .then_rejected(DomainError::rejected(format!(
                    "payment is {status}; only an authorized payment can be voided: once captured, refund it \
                     instead"
                )));
        }
    }

    #[test]
    fn voids_before_authorization() {
        let state = Payment::given([]).when(void(ORDER, VOID_REASON)).then([voided(None)]);
        assert_eq!(state.status, PaymentStatus::Voided);
        assert!(state.voided_before_authorization);
        assert_eq!((state.id, state.order_id), (ID, ORDER));
        assert_eq!((state.currency, state.authorized_minor), (None, 0));
        assert_eq!(state.void_reason.as_deref(), Some(VOID_REASON));
    }

    #[test]
    fn a_late_authorization_of_a_voided_payment_is_released_at_once() {
        let state = Payment::given([voided(None)])
            .when(authorize(3948, "EUR"))
            .then([authorized(3948), voided(Some(3948))]);
        assert_eq!(state.status, PaymentStatus::Voided);
        assert!(state.voided_before_authorization);
        assert_eq!((state.currency, state.authorized_minor), (Some(Currency::EUR), 3948));
        assert_eq!(state.void_reason.as_deref(), Some(VOID_REASON));
    }

    #[test]
    fn a_late_authorization_is_checked_like_any_other() {
        Payment::given([voided(None)])
            .when(authorize(0, "EUR"))
            .then_rejected(DomainError::invalid("amount_minor", "must be greater than zero"));
        Payment::given([voided(None)])
            .when(PaymentCommand::Authorize {
                payment_id: ID,
                order_id: OTHER_ORDER,
                amount_minor: 100,
                currency: "EUR".to_owned(),
            })
            .then_rejected(DomainError::rejected(format!(
                "payment is for order {ORDER}, not order {OTHER_ORDER}"
            )));
    }

    #[test]
    fn authorizing_a_voided_authorization_is_rejected() {
        // Only the first authorization after an early void is released; later ones are repeats.
        for history in [
            vec![authorized(100), voided(Some(100))],
            vec![voided(None), authorized(100), voided(Some(100))],
        ] {
            Payment::given(history)
                .when(authorize(100, "EUR"))
                .then_rejected(DomainError::AlreadyExists {
                    what: "payment",
                    id: ID,
                });
        }
    }

    #[test]
    fn declining_a_voided_payment_is_rejected() {
        // A decline that comes after a void that came first (the provider answered late)
        // releases nothing more: it appends nothing.
        let state = Payment::given(vec![voided(None)])
            .when(decline(ORDER, "card expired"))
            .then_nothing();
        assert_eq!(state.status, PaymentStatus::Voided);
        for history in [
            vec![authorized(100), voided(Some(100))],
            vec![voided(None), authorized(100), voided(Some(100))],
        ] {
            Payment::given(history)
                .when(decline(ORDER, "card expired"))
                .then_rejected(DomainError::rejected(
                    "payment is voided; only a new or authorized payment can be declined",
                ));
        }
    }

    #[test]
    fn voiding_a_declined_payment_appends_nothing() {
        for history in [vec![declined()], vec![authorized(100), declined()]] {
            let state = Payment::given(history).when(void(ORDER, VOID_REASON)).then_nothing();
            assert_eq!(state.status, PaymentStatus::Declined);
        }
    }

    #[test]
    fn voiding_needs_a_reason_and_the_right_order() {
        for history in [vec![], vec![authorized(100)]] {
            Payment::given(history.clone())
                .when(void(ORDER, "  "))
                .then_rejected(DomainError::invalid("reason", "must not be empty"));
            Payment::given(history.clone())
                .when(void(ORDER, &"x".repeat(MAX_REASON_CHARS + 1)))
                .then_rejected(DomainError::invalid(
                    "reason",
                    format!("must be at most {MAX_REASON_CHARS} characters"),
                ));
            Payment::given(history)
                .when(void(ORDER, "line\nbreak"))
                .then_rejected(DomainError::invalid("reason", "must not contain control characters"));
        }
        Payment::given([authorized(100)])
            .when(void(ORDER, &"é".repeat(MAX_REASON_CHARS)))
            .then([PaymentEvent::Voided(PaymentVoided {
                payment_id: ID,
                order_id: ORDER,
                amount: Some(eur(100)),
                reason: "é".repeat(MAX_REASON_CHARS),
            })]);
        for history in [
            vec![authorized(100)],
            vec![authorized(100), voided(Some(100))],
            vec![voided(None)],
            vec![declined()],
        ] {
            Payment::given(history)
                .when(void(OTHER_ORDER, VOID_REASON))
                .then_rejected(DomainError::rejected(format!(
                    "payment is for order {ORDER}, not order {OTHER_ORDER}"
                )));
        }
    }

    #[test]
    fn evolve_saturates() {
        let state = Payment::fold(&[
            authorized(i64::MAX),
            captured(i64::MAX),
            captured(i64::MAX),
            refunded(i64::MAX),
        ]);
        assert_eq!(state.captured_minor, i64::MAX);
        assert_eq!(state.status, PaymentStatus::Refunded);
        assert_eq!(state.refundable_minor(), 0);
    }
}
