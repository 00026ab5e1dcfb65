//! The order domain: the aggregates as pure, synchronous `decide` / `evolve` functions over the
//! shared event types of [`event_schemas`]. No IO, no clock, no randomness: the command handler
//! loads the state, calls the domain, and appends what it decided.
//!
//! # Map
//!
//! - `customer`: [`Customer`] and [`CustomerCommand`] (register, rename, change email).
//! - `product`: [`Product`] with its stock and its reservations per order, and
//!   [`ProductCommand`] (add, change price, restock, reserve and release stock for an order).
//! - `order`: [`Order`], the [`OrderStatus`] state machine and [`OrderCommand`] (confirm, ship,
//!   deliver, cancel); [`place_reserved_order`], placing an order whose stock inventory has
//!   reserved; [`place_order`] and [`cancel_order`], the order's and its products' decisions
//!   taken at once ([`OrderDecision`], for the shop simulator).
//! - `payment`: [`Payment`] and [`PaymentCommand`] (authorize, decline, capture, void, refund).
//! - [`saga`] (public: `domain::saga::...`): the place-order saga's state machine (ADR 0010),
//!   [`saga::Saga`] and [`saga::SagaCommand`] (record what a step did), and [`saga::Saga::next`],
//!   what to do next.
//! - This module: the [`Aggregate`] trait they implement, [`DomainError`], the input limits
//!   (`MAX_*`) and the validation helpers every aggregate shares.
//!
//! # Decide, then evolve
//!
//! [`Aggregate::decide`] takes the current state and a command and returns the events to append,
//! or a [`DomainError`] saying why the command is refused: a refused command appends nothing,
//! ever. [`Aggregate::evolve`] folds one stored event into the state; it never fails and never
//! panics (arithmetic saturates), because stored events are facts that must always load.
//!
//! An `Ok` with no events means the command asks for what is already true (renaming a customer
//! to the name it has, releasing a reservation that is already released): there is nothing to
//! append, and the handler answers with the stream as it is.
//!
//! Every `decide` checks its input first (malformed input is [`DomainError::Invalid`] whatever
//! the state), then the state (absent → [`DomainError::NotFound`], already created →
//! [`DomainError::AlreadyExists`], illegal transition → [`DomainError::Rejected`]).
//!
//! # Placing and cancelling an order: two services, two stores
//!
//! The stock belongs to the inventory service and the order to the orders service, each with
//! its own event store, so no commit holds both (docs/adr/0003). The orders service reserves
//! each line at inventory ([`ProductCommand::ReserveStock`], decided on the product's stream
//! alone, so stock never goes below zero), then appends the order decided from inventory's
//! answers ([`place_reserved_order`]: inventory's price is the one the order captures). A
//! refused line releases what the earlier lines reserved. [`place_order`] and [`cancel_order`]
//! decide the same at once over states in memory, for the shop simulator.

mod customer;
mod order;
mod payment;
mod product;
pub mod saga;
#[cfg(test)]
mod testing;

use event_schemas::{Category, Currency, DomainEvent};
use uuid::Uuid;

pub use customer::{Customer, CustomerCommand};
pub use order::{
    CancelOrder, Order, OrderCommand, OrderDecision, OrderStatus, PlaceOrder, PlaceOrderLine, ReservedLine, Shipment,
    cancel_order, place_order, place_reserved_order,
};
pub use payment::{Payment, PaymentCommand, PaymentStatus};
pub use product::{Product, ProductCommand};

/// An event-sourced aggregate: its state is the fold of its stream's events with
/// [`evolve`](Self::evolve), starting from [`Default`] (the state of an empty stream).
pub trait Aggregate: Default + Clone {
    /// The commands the aggregate decides on, one enum of plain data.
    type Command;
    /// The events of the aggregate's streams: the category enum of [`event_schemas`].
    type Event: Clone + Into<DomainEvent>;

    /// The category of the aggregate's streams (`order-{uuid}`, ...).
    const CATEGORY: Category;

    /// The events that carry out `command` on this state, or why it is refused. Pure and
    /// synchronous: the same state and command always give the same answer.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// The state after `event`. Never fails and never panics, whatever the event.
    #[must_use]
    fn evolve(self, event: &Self::Event) -> Self;

    /// This aggregate's event out of a decoded [`DomainEvent`], or `None` for an event of
    /// another category (which never belongs to this aggregate's streams).
    fn event_from(event: DomainEvent) -> Option<Self::Event>;

    /// The state after every event of `events`, in order, starting from `self` (e.g. a
    /// snapshot).
    #[must_use]
    fn evolve_all<'a, I>(self, events: I) -> Self
    where
        I: IntoIterator<Item = &'a Self::Event>,
        Self::Event: 'a,
    {
        events.into_iter().fold(self, Self::evolve)
    }

    /// The state of a stream holding `events`.
    #[must_use]
    fn fold<'a, I>(events: I) -> Self
    where
        I: IntoIterator<Item = &'a Self::Event>,
        Self::Event: 'a,
    {
        Self::default().evolve_all(events)
    }
}

/// Why the domain refused a command. Carries no IO error: the domain does none. Each variant
/// says how a caller should react and which HTTP status it becomes; [`code`](Self::code) is the
/// machine-readable `error.code` of the HTTP error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A command field is malformed or out of range (an empty name, a zero quantity, a currency
    /// that is not three upper-case letters). No state can make it succeed: fix the input and
    /// send it again. HTTP 422, code `invalid`.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field as the request body names it, e.g. `"email"` or `"lines[2].quantity"`.
        field: String,
        /// What is wrong with it, in words a client can show.
        reason: String,
    },

    /// The aggregate the command acts on, or one it refers to (the customer or a product of an
    /// order), does not exist. HTTP 404, code `not_found`.
    #[error("{what} {id} not found")]
    NotFound {
        /// `"customer"`, `"product"`, `"order"` or `"payment"`.
        what: &'static str,
        id: Uuid,
    },

    /// A command that creates an aggregate names one that already exists. Retrying will not
    /// help; a client that generated the id itself should use a new one. HTTP 409, code
    /// `already_exists`.
    #[error("{what} {id} already exists")]
    AlreadyExists {
        /// `"customer"`, `"product"`, `"order"` or `"payment"`.
        what: &'static str,
        id: Uuid,
    },

    /// The command is well-formed but the aggregate's current state forbids it: an illegal
    /// transition (shipping an order that is not confirmed), an amount larger than what is left
    /// to capture or refund, a total that would overflow. The state may change so that it is
    /// allowed later. HTTP 409, code `rejected`.
    #[error("{reason}")]
    Rejected {
        /// Why, naming the current state and what would be allowed.
        reason: String,
    },

    /// A product has fewer units available than a line of the order asks for. HTTP 409, code
    /// `insufficient_stock`.
    #[error("insufficient stock for product {product_id}: {requested} requested, {available} available")]
    InsufficientStock {
        product_id: Uuid,
        requested: i64,
        available: i64,
    },
}

impl DomainError {
    /// A malformed or out-of-range command field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A command the current state forbids.
    pub fn rejected(reason: impl Into<String>) -> Self {
        Self::Rejected { reason: reason.into() }
    }

    /// Stable, machine-readable name of the variant, for the `error.code` of an HTTP answer.
    /// Clients match on it: never rename.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::NotFound { .. } => "not_found",
            Self::AlreadyExists { .. } => "already_exists",
            Self::Rejected { .. } => "rejected",
            Self::InsufficientStock { .. } => "insufficient_stock",
        }
    }
}

/// Most units one order line, one restock or one reservation may carry.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Most units a product may hold in stock (initial stock, and after a restock).
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Highest unit price, in minor units (a billion major units of a two-decimal currency). With
/// [`MAX_QUANTITY`] and [`MAX_ORDER_LINES`] an order total can still overflow `i64`: that is a
/// rejection, checked when the order is placed.
pub const MAX_PRICE_MINOR: i64 = 100_000_000_000;
/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 100;
/// Longest customer or product name, in characters, after trimming.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest email address, in characters (the SMTP path limit, counted in characters so that
/// the API's published schema, whose `maxLength` counts characters, states it exactly).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest sku, in characters (ASCII letters, digits, `-`, `_` and `.`).
pub const MAX_SKU_CHARS: usize = 64;
/// Longest carrier name or tracking code, in characters, after trimming.
pub const MAX_SHIPPING_CHARS: usize = 100;
/// Longest cancellation or decline reason, in characters, after trimming.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest cancellation reason code (`requested`, `out_of_stock`, ...), in characters.
pub const MAX_REASON_CODE_CHARS: usize = 64;

/// Validation shared by the aggregates. Each helper returns the value to store (trimmed where
/// that is the rule) or [`DomainError::Invalid`] naming `field`.
pub(crate) mod validate {
    use event_schemas::Currency;

    use super::{
        DomainError, MAX_EMAIL_CHARS, MAX_NAME_CHARS, MAX_PRICE_MINOR, MAX_QUANTITY, MAX_REASON_CODE_CHARS,
        MAX_SKU_CHARS, MAX_STOCK,
    };

    /// Free text: trimmed, non-empty, at most `max_chars` characters, no control characters
    /// (no line breaks in a name or a tracking code).
    pub(crate) fn text(field: &str, value: &str, max_chars: usize) -> Result<String, DomainError> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if trimmed.chars().count() > max_chars {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {max_chars} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(DomainError::invalid(field, "must not contain control characters"));
        }
        Ok(trimmed.to_owned())
    }

    /// A customer or product name.
    pub(crate) fn name(field: &str, value: &str) -> Result<String, DomainError> {
        text(field, value, MAX_NAME_CHARS)
    }

    /// A deliberately simple email check: the address must look like `local@domain.tld`. One `@`
    /// with something on both sides, a domain with a dot between non-empty labels, no
    /// whitespace or control characters, at most [`MAX_EMAIL_CHARS`]. Stored as given: the
    /// domain does not trim or re-case addresses.
    pub(crate) fn email(field: &str, value: &str) -> Result<String, DomainError> {
        if value.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if value.chars().count() > MAX_EMAIL_CHARS {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {MAX_EMAIL_CHARS} characters"),
            ));
        }
        if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(DomainError::invalid(field, "must not contain whitespace"));
        }
        let Some((local, domain)) = value.split_once('@') else {
            return Err(DomainError::invalid(field, "must be an address like name@example.com"));
        };
        if domain.contains('@') {
            return Err(DomainError::invalid(field, "must contain exactly one @"));
        }
        if local.is_empty() {
            return Err(DomainError::invalid(field, "needs a name before the @"));
        }
        if domain.is_empty() || domain.split('.').count() < 2 || domain.split('.').any(str::is_empty) {
            return Err(DomainError::invalid(
                field,
                "needs a domain with a dot after the @, like example.com",
            ));
        }
        Ok(value.to_owned())
    }

    /// A stock-keeping unit: 1 to [`MAX_SKU_CHARS`] ASCII letters, digits, `-`, `_` or `.`.
    pub(crate) fn sku(field: &str, value: &str) -> Result<String, DomainError> {
        if value.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if value.len() > MAX_SKU_CHARS {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {MAX_SKU_CHARS} characters"),
            ));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(DomainError::invalid(
                field,
                "may only contain ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(value.to_owned())
    }

    /// A stable reason code (`requested`, `out_of_stock`, ...): 1 to [`MAX_REASON_CODE_CHARS`]
    /// lower-case ASCII letters, digits and `_`.
    pub(crate) fn reason_code(field: &str, value: &str) -> Result<String, DomainError> {
        if value.is_empty() {
            return Err(DomainError::invalid(field, "must not be empty"));
        }
        if value.len() > MAX_REASON_CODE_CHARS {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {MAX_REASON_CODE_CHARS} characters"),
            ));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(DomainError::invalid(
                field,
                "may only contain lower-case ASCII letters, digits and '_'",
            ));
        }
        Ok(value.to_owned())
    }

    /// A number of units moved at once: 1 to [`MAX_QUANTITY`].
    pub(crate) fn quantity(field: &str, value: i64) -> Result<i64, DomainError> {
        if value <= 0 {
            return Err(DomainError::invalid(field, "must be greater than zero"));
        }
        if value > MAX_QUANTITY {
            return Err(DomainError::invalid(field, format!("must be at most {MAX_QUANTITY}")));
        }
        Ok(value)
    }

    /// A product's initial stock: 0 to [`MAX_STOCK`].
    pub(crate) fn stock(field: &str, value: i64) -> Result<i64, DomainError> {
        if value < 0 {
            return Err(DomainError::invalid(field, "must not be negative"));
        }
        if value > MAX_STOCK {
            return Err(DomainError::invalid(field, format!("must be at most {MAX_STOCK}")));
        }
        Ok(value)
    }

    /// A unit price in minor units: 0 (free) to [`MAX_PRICE_MINOR`].
    pub(crate) fn price(field: &str, value: i64) -> Result<i64, DomainError> {
        if value < 0 {
            return Err(DomainError::invalid(field, "must not be negative"));
        }
        if value > MAX_PRICE_MINOR {
            return Err(DomainError::invalid(
                field,
                format!("must be at most {MAX_PRICE_MINOR}"),
            ));
        }
        Ok(value)
    }

    /// An amount of a payment in minor units: greater than zero.
    pub(crate) fn amount(field: &str, value: i64) -> Result<i64, DomainError> {
        if value <= 0 {
            return Err(DomainError::invalid(field, "must be greater than zero"));
        }
        Ok(value)
    }

    /// An ISO 4217 code: three upper-case ASCII letters, see [`Currency::new`].
    pub(crate) fn currency(field: &str, value: &str) -> Result<Currency, DomainError> {
        Currency::new(value)
            .map_err(|_| DomainError::invalid(field, "must be a three-letter upper-case ISO 4217 code, e.g. EUR"))
    }
}

/// The currency of a money amount, for messages: `"EUR"`, or `"no currency"` before one is set.
pub(crate) fn currency_name(currency: Option<Currency>) -> String {
    currency.map_or_else(|| "no currency".to_owned(), |c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(validate::text("name", "  Ada  ", 10), Ok("Ada".to_owned()));
        assert_eq!(validate::text("name", "é".repeat(10).as_str(), 10), Ok("é".repeat(10)));
        for bad in ["", "   ", "\t\n"] {
            assert_eq!(
                validate::text("name", bad, 10),
                Err(DomainError::invalid("name", "must not be empty"))
            );
        }
        assert_eq!(
            validate::text("name", &"x".repeat(11), 10),
            Err(DomainError::invalid("name", "must be at most 10 characters"))
        );
        assert_eq!(
            validate::text("name", "a\nb", 10),
            Err(DomainError::invalid("name", "must not contain control characters"))
        );
    }

    #[test]
    fn names_allow_two_hundred_characters() {
        assert!(validate::name("name", &"n".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(validate::name("name", &"n".repeat(MAX_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn emails_need_one_at_a_local_part_and_a_dotted_domain() {
        for good in ["ada@example.com", "a.b+tag@mail.example.co.uk", "x@y.z"] {
            assert_eq!(validate::email("email", good), Ok(good.to_owned()), "{good}");
        }
        let long = format!("{}@example.com", "a".repeat(MAX_EMAIL_CHARS));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "ada@exa@mple.com",
            "ada@.example.com",
            "ada@example.com.",
            "ada@example..com",
            "ada @example.com",
            " ada@example.com",
            "ada@example.com\n",
            long.as_str(),
        ] {
            let err = validate::email("email", bad).expect_err(bad);
            assert!(
                matches!(&err, DomainError::Invalid { field, .. } if field == "email"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn skus_are_short_and_plain() {
        for good in ["ABC-123", "a_b.c", &"Z".repeat(MAX_SKU_CHARS)] {
            assert!(validate::sku("sku", good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "é", "a/b", &"Z".repeat(MAX_SKU_CHARS + 1)] {
            assert!(validate::sku("sku", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_are_bounded() {
        assert!(validate::quantity("quantity", 1).is_ok());
        assert!(validate::quantity("quantity", MAX_QUANTITY).is_ok());
        for bad in [0, -1, MAX_QUANTITY + 1, i64::MIN, i64::MAX] {
            assert!(validate::quantity("quantity", bad).is_err(), "{bad}");
        }
        assert!(validate::stock("stock", 0).is_ok());
        assert!(validate::stock("stock", -1).is_err());
        assert!(validate::stock("stock", MAX_STOCK + 1).is_err());
        assert!(validate::price("price_minor", 0).is_ok());
        assert!(validate::price("price_minor", MAX_PRICE_MINOR).is_ok());
        assert!(validate::price("price_minor", -1).is_err());
        assert!(validate::price("price_minor", MAX_PRICE_MINOR + 1).is_err());
        assert!(validate::amount("amount_minor", 1).is_ok());
        assert!(validate::amount("amount_minor", 0).is_err());
    }

    #[test]
    fn currencies_are_iso_codes() {
        assert_eq!(validate::currency("currency", "EUR"), Ok(Currency::EUR));
        for bad in ["", "eur", "EURO", "€"] {
            assert_eq!(
                validate::currency("currency", bad),
                Err(DomainError::invalid(
                    "currency",
                    "must be a three-letter upper-case ISO 4217 code, e.g. EUR"
                ))
            );
        }
    }

    #[test]
    fn every_error_has_a_stable_code_and_a_one_line_message() {
        let id = Uuid::nil();
        let cases = [
            (
                DomainError::invalid("email", "must not be empty"),
                "invalid",
                "invalid email: must not be empty",
            ),
            (
                DomainError::NotFound { what: "order", id },
                "not_found",
                "order 00000000-0000-0000-0000-000000000000 not found",
            ),
            (
                DomainError::AlreadyExists { what: "customer", id },
                "already_exists",
                "customer 00000000-0000-0000-0000-000000000000 already exists",
            ),
            (
                DomainError::rejected("order is shipped"),
                "rejected",
                "order is shipped",
            ),
            (
                DomainError::InsufficientStock {
                    product_id: id,
                    requested: 3,
                    available: 2,
                },
                "insufficient_stock",
                "insufficient stock for product 00000000-0000-0000-0000-000000000000: 3 requested, 2 available",
            ),
        ];
        for (error, code, message) in cases {
            assert_eq!(error.code(), code);
            assert_eq!(error.to_string(), message);
        }
    }
}
