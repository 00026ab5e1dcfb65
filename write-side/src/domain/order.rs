//! The order aggregate (`order-{uuid}` streams) and the decisions that also touch the order's
//! products.
//!
//! An order is a state machine:
//!
//! ```text
//! (not placed) ──place──► pending ──confirm──► confirmed ──ship──► shipped ──deliver──► delivered
//!                           │                     │
//!                           └──────cancel─────────┴──► cancelled
//! ```
//!
//! A placed order is `pending` until the place-order saga confirms it (ADR 0010). Every other
//! transition is a [`DomainError::Rejected`] naming the current status (an order that was never
//! placed is [`DomainError::NotFound`]); nothing is appended.
//!
//! Placing and cancelling also change stock, which the inventory service owns, so they are not
//! [`Aggregate::decide`] alone. The running services take them one store at a time: inventory
//! decides a `StockReserved` per line (`ProductCommand::ReserveStock`), then the orders service
//! decides `OrderPlaced` from what inventory answered ([`place_reserved_order`]); cancelling is
//! `OrderCommand::Cancel`, then a `ReleaseStock` per line. [`place_order`] and
//! [`cancel_order`] take the same decisions at once, over states held in memory
//! ([`OrderDecision`]: the order's events and each product's): what the shop simulator writes,
//! each service's events to its own store.
//!
//! An order names each product at most once: a [`PlaceOrder`] with two lines for the same
//! product is rejected (not merged), so every line is one reservation of one product for this
//! order, released exactly by [`cancel_order`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use event_schemas::{
    Category, Currency, CustomerSnapshot, DomainEvent, Money, OrderCancelled, OrderConfirmed, OrderDelivered,
    OrderEvent, OrderLine, OrderPlaced, OrderShipped, ProductEvent,
};
use uuid::Uuid;

use super::{
    Aggregate, Customer, DomainError, MAX_ORDER_LINES, MAX_REASON_CHARS, MAX_SHIPPING_CHARS, Product, ProductCommand,
    currency_name, validate,
};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum OrderStatus {
    /// The stream is empty: there is no such order.
    #[default]
    NotPlaced,
    /// Placed, not confirmed yet: the saga reserves its stock and authorizes its payment.
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    /// Stable lower-case name, as read models and the HTTP API show it: `"pending"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotPlaced => "not_placed",
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a shipped order travels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shipment {
    pub carrier: String,
    pub tracking: String,
}

/// An order as its stream tells it. The default is the state of an empty stream: no order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Order {
    /// Nil until placed.
    pub id: Uuid,
    pub status: OrderStatus,
    pub customer_id: Uuid,
    /// The customer's name and email when the order was placed.
    pub customer: Option<CustomerSnapshot>,
    /// The lines with the sku, name and unit price captured at placement.
    pub lines: Vec<OrderLine>,
    /// The currency of every amount of the order; `None` until placed.
    pub currency: Option<Currency>,
    /// Sum of the lines, in minor units of [`currency`](Self::currency).
    pub total_minor: i64,
    /// Set when shipped.
    pub shipment: Option<Shipment>,
    /// Set when cancelled.
    pub cancellation_reason: Option<String>,
    /// Set when cancelled with a reason code (`requested`, `out_of_stock`, ...); `None` for a
    /// cancellation recorded before codes existed.
    pub cancellation_reason_code: Option<String>,
}

impl Order {
    /// The order's total, once placed.
    pub fn total(&self) -> Option<Money> {
        self.currency.map(|currency| Money::new(self.total_minor, currency))
    }

    /// NotFound for an order never placed; a rejection unless the status is one of `allowed`.
    fn require(&self, order_id: Uuid, allowed: &[OrderStatus], only: &str) -> Result<(), DomainError> {
        match self.status {
            OrderStatus::NotPlaced => Err(DomainError::NotFound {
                what: "order",
                id: order_id,
            }),
            status if allowed.contains(&status) => Ok(()),
            status => Err(DomainError::rejected(format!("order is {status}; {only}"))),
        }
    }
}

/// What can be asked of a placed order, on its own stream. Placing is [`place_order`]; a
/// handler cancels with [`cancel_order`], which uses [`OrderCommand::Cancel`] and also releases
/// the stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// pending → confirmed.
    Confirm { order_id: Uuid },
    /// confirmed → shipped. Carrier and tracking are trimmed, non-empty, at most
    /// [`MAX_SHIPPING_CHARS`].
    Ship {
        order_id: Uuid,
        carrier: String,
        tracking: String,
    },
    /// shipped → delivered.
    Deliver { order_id: Uuid },
    /// pending or confirmed → cancelled. The reason is trimmed, non-empty, at most
    /// [`MAX_REASON_CHARS`]; the reason code, when given, is a stable name of at most
    /// [`MAX_REASON_CODE_CHARS`](super::MAX_REASON_CODE_CHARS) lower-case ASCII letters, digits and `_` (`requested`,
    /// `out_of_stock`, ...; the event's `reason_code` is empty without one). Decides the order's
    /// event only: see [`cancel_order`].
    Cancel {
        order_id: Uuid,
        reason: String,
        reason_code: Option<String>,
    },
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;

    const CATEGORY: Category = Category::Order;

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderStatus::{Confirmed, Pending, Shipped};
        match command {
            OrderCommand::Confirm { order_id } => {
                self.require(order_id, &[Pending], "only a pending order can be confirmed")?;
                Ok(vec![OrderEvent::Confirmed(OrderConfirmed { order_id })])
            }
            OrderCommand::Ship {
                order_id,
                carrier,
                tracking,
            } => {
                let carrier = validate::text("carrier", &carrier, MAX_SHIPPING_CHARS)?;
                let tracking = validate::text("tracking", &tracking, MAX_SHIPPING_CHARS)?;
                self.require(order_id, &[Confirmed], "only a confirmed order can be shipped")?;
                Ok(vec![OrderEvent::Shipped(OrderShipped {
                    order_id,
                    carrier,
                    tracking,
                })])
            }
            OrderCommand::Deliver { order_id } => {
                self.require(order_id, &[Shipped], "only a shipped order can be delivered")?;
                Ok(vec![OrderEvent::Delivered(OrderDelivered { order_id })])
            }
            OrderCommand::Cancel {
                order_id,
                reason,
                reason_code,
            } => {
                let reason = validate::text("reason", &reason, MAX_REASON_CHARS)?;
                let reason_code = reason_code
                    .map(|code| validate::reason_code("reason_code", &code))
                    .transpose()?
                    .unwrap_or_default();
                self.require(
                    order_id,
                    &[Pending, Confirmed],
                    "only a pending or confirmed order can be cancelled",
                )?;
                Ok(vec![OrderEvent::Cancelled(OrderCancelled {
                    order_id,
                    reason,
                    reason_code,
                })])
            }
        }
    }

    fn evolve(mut self, event: &OrderEvent) -> Self {
        match event {
            OrderEvent::Placed(e) => {
                self.id = e.order_id;
                self.status = OrderStatus::Pending;
                self.customer_id = e.customer_id;
                self.customer = Some(e.customer.clone());
                self.lines.clone_from(&e.lines);
                self.currency = Some(e.currency);
                self.total_minor = e.total_minor;
            }
            OrderEvent::Confirmed(_) => self.status = OrderStatus::Confirmed,
            OrderEvent::Shipped(e) => {
                self.status = OrderStatus::Shipped;
                self.shipment = Some(Shipment {
                    carrier: e.carrier.clone(),
                    tracking: e.tracking.clone(),
                });
            }
            OrderEvent::Delivered(_) => self.status = OrderStatus::Delivered,
            OrderEvent::Cancelled(e) => {
                self.status = OrderStatus::Cancelled;
                self.cancellation_reason = Some(e.reason.clone());
                self.cancellation_reason_code = (!e.reason_code.is_empty()).then(|| e.reason_code.clone());
            }
        }
        self
    }

    fn event_from(event: DomainEvent) -> Option<OrderEvent> {
        match event {
            DomainEvent::Order(e) => Some(e),
            _ => None,
        }
    }
}

/// One line of an order to place: which product, how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrderLine {
    pub product_id: Uuid,
    /// 1 to [`MAX_QUANTITY`](super::MAX_QUANTITY).
    pub quantity: i64,
}

/// Places an order: see [`place_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// 1 to [`MAX_ORDER_LINES`] lines, each product at most once.
    pub lines: Vec<PlaceOrderLine>,
}

/// Cancels an order and releases its stock: see [`cancel_order`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOrder {
    pub order_id: Uuid,
    /// Trimmed, non-empty, at most [`MAX_REASON_CHARS`] characters.
    pub reason: String,
    /// Why, as a stable name (`requested`, `payment_declined`, ...): see
    /// [`OrderCommand::Cancel`].
    pub reason_code: Option<String>,
}

/// The events of one decision over an order and its products, to append in one atomic commit:
/// the order's stream with its expected version, and each product's stream with the expected
/// version it was loaded at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderDecision {
    /// For the order's stream.
    pub order_events: Vec<OrderEvent>,
    /// Per product stream, in the order of the order's lines; products with nothing to append
    /// are left out.
    pub product_events: Vec<(Uuid, Vec<ProductEvent>)>,
}

/// Decides placing an order: the `OrderPlaced` event and one `StockReserved` per line, or why
/// not; the decisions the inventory and orders services take in turn, taken at once.
///
/// `order` is the state of the order's stream (it must be empty), `customer` the state of the
/// customer's, and `products` the states of the products named by the lines (others are
/// ignored; one that is missing or not added is [`DomainError::NotFound`]). Each line is
/// reserved as inventory would ([`ProductCommand::ReserveStock`]: more than is available is
/// [`DomainError::InsufficientStock`]), and the order is decided from the reservations as the
/// orders service would ([`place_reserved_order`]). Any refusal decides nothing at all.
pub fn place_order<'a>(
    order: &Order,
    customer: &Customer,
    products: impl IntoIterator<Item = &'a Product>,
    command: PlaceOrder,
) -> Result<OrderDecision, DomainError> {
    command.validate()?;
    let PlaceOrder {
        order_id,
        customer_id,
        lines,
    } = command;
    if order.status != OrderStatus::NotPlaced {
        return Err(DomainError::AlreadyExists {
            what: "order",
            id: order_id,
        });
    }
    if !customer.exists || customer.id != customer_id {
        return Err(DomainError::NotFound {
            what: "customer",
            id: customer_id,
        });
    }

    let products = by_id(products);
    let mut reserved = Vec::with_capacity(lines.len());
    let mut product_events = Vec::with_capacity(lines.len());
    for &PlaceOrderLine { product_id, quantity } in &lines {
        let product = products.get(&product_id).ok_or(DomainError::NotFound {
            what: "product",
            id: product_id,
        })?;
        let unit_price = product.require(product_id)?;
        let events = product.decide(ProductCommand::ReserveStock {
            product_id,
            order_id,
            quantity,
        })?;
        reserved.push(ReservedLine {
            product_id,
            quantity,
            sku: product.sku.clone(),
            name: product.name.clone(),
            unit_price,
        });
        if !events.is_empty() {
            product_events.push((product_id, events));
        }
    }
    let command = PlaceOrder {
        order_id,
        customer_id,
        lines,
    };
    Ok(OrderDecision {
        order_events: place_reserved_order(order, &command, customer.snapshot(), &reserved)?,
        product_events,
    })
}

impl PlaceOrder {
    /// Checks the command's own shape, whatever any state: 1 to [`MAX_ORDER_LINES`] lines,
    /// each quantity in range, each product on one line. Checked before anything is reserved.
    pub fn validate(&self) -> Result<(), DomainError> {
        if self.lines.is_empty() {
            return Err(DomainError::invalid("lines", "an order needs at least one line"));
        }
        if self.lines.len() > MAX_ORDER_LINES {
            return Err(DomainError::invalid(
                "lines",
                format!("an order has at most {MAX_ORDER_LINES} lines"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, line) in self.lines.iter().enumerate() {
            validate::quantity(&format!("lines[{i}].quantity"), line.quantity)?;
            if !seen.insert(line.product_id) {
                return Err(DomainError::invalid(
                    format!("lines[{i}].product_id"),
                    format!(
                        "product {} is on an earlier line; put its whole quantity on one line",
                        line.product_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A line's product as the inventory service answered its reservation: the sku, name and unit
/// price the order captures. The inventory's answer is the authority for the price; a copy the
/// orders service keeps of the catalogue may be stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedLine {
    pub product_id: Uuid,
    pub quantity: i64,
    pub sku: String,
    pub name: String,
    pub unit_price: Money,
}

/// Decides placing an order whose stock the inventory service has already reserved, line by
/// line (the services own their stores, so the order and the stock cannot be one commit): the
/// `OrderPlaced` event with `customer`'s name and email, or why not. `reserved` holds one line
/// per line of the command, in its order. The checks are [`place_order`]'s but the stock's:
/// the command's shape, an order not placed yet, one currency for every line, and a total that
/// fits (checked arithmetic).
pub fn place_reserved_order(
    order: &Order,
    command: &PlaceOrder,
    customer: CustomerSnapshot,
    reserved: &[ReservedLine],
) -> Result<Vec<OrderEvent>, DomainError> {
    command.validate()?;
    if order.status != OrderStatus::NotPlaced {
        return Err(DomainError::AlreadyExists {
            what: "order",
            id: command.order_id,
        });
    }
    let same_lines = reserved.len() == command.lines.len()
        && reserved
            .iter()
            .zip(&command.lines)
            .all(|(r, l)| r.product_id == l.product_id && r.quantity == l.quantity);
    if !same_lines {
        return Err(DomainError::rejected(
            "the reserved lines are not the order's lines".to_owned(),
        ));
    }
    let mut currency: Option<Currency> = None;
    let mut total_minor: i64 = 0;
    let mut lines = Vec::with_capacity(reserved.len());
    for line in reserved {
        let order_currency = *currency.get_or_insert(line.unit_price.currency);
        if line.unit_price.currency != order_currency {
            return Err(DomainError::rejected(format!(
                "product {} is priced in {} but the order's first line is in {}; an order has one currency",
                line.product_id,
                line.unit_price.currency,
                currency_name(currency)
            )));
        }
        total_minor = line
            .quantity
            .checked_mul(line.unit_price.amount_minor)
            .and_then(|line_total| total_minor.checked_add(line_total))
            .ok_or_else(|| {
                DomainError::rejected(format!(
                    "the order total exceeds {} minor units, the largest amount an order can hold",
                    i64::MAX
                ))
            })?;
        lines.push(OrderLine {
            product_id: line.product_id,
            sku: line.sku.clone(),
            name: line.name.clone(),
            quantity: line.quantity,
            unit_price_minor: line.unit_price.amount_minor,
        });
    }
    let Some(currency) = currency else {
        return Err(DomainError::invalid("lines", "an order needs at least one line"));
    };
    Ok(vec![OrderEvent::Placed(OrderPlaced {
        order_id: command.order_id,
        customer_id: command.customer_id,
        customer,
        lines,
        currency,
        total_minor,
    })])
}

/// Decides cancelling a pending or confirmed order: the `OrderCancelled` event and one
/// `StockReleased` per line whose product still holds a reservation for the order.
///
/// `products` must hold the state of every product on the order's lines (others are ignored):
/// one that is missing is [`DomainError::NotFound`], because cancelling without it would leave
/// its units reserved for ever. A product that holds no reservation for the order (already
/// released) gets no event.
pub fn cancel_order<'a>(
    order: &Order,
    products: impl IntoIterator<Item = &'a Product>,
    command: CancelOrder,
) -> Result<OrderDecision, DomainError> {
    let CancelOrder {
        order_id,
        reason,
        reason_code,
    } = command;
    let order_events = order.decide(OrderCommand::Cancel {
        order_id,
        reason,
        reason_code,
    })?;
    let products = by_id(products);
    let mut product_events = Vec::with_capacity(order.lines.len());
    for line in &order.lines {
        let product_id = line.product_id;
        let product = products.get(&product_id).ok_or(DomainError::NotFound {
            what: "product",
            id: product_id,
        })?;
        let released = product.decide(ProductCommand::ReleaseStock { product_id, order_id })?;
        if !released.is_empty() {
            product_events.push((product_id, released));
        }
    }
    Ok(OrderDecision {
        order_events,
        product_events,
    })
}

/// The products that exist, by id.
fn by_id<'a>(products: impl IntoIterator<Item = &'a Product>) -> BTreeMap<Uuid, &'a Product> {
    products
        .into_iter()
        .filter(|product| product.exists)
        .map(|product| (product.id, product))
        .collect()
}

#[cfg(test)]
mod tests {
    use event_schemas::{
        CustomerRegistered, ProductAdded, ProductRestocked, ProductStockReleased, ProductStockReserved,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::domain::testing::Given;
    use crate::domain::{CustomerCommand, MAX_QUANTITY};

    const ORDER: Uuid = Uuid::from_u128(0x0a);
    const CUSTOMER: Uuid = Uuid::from_u128(0xc0);
    const TEA: Uuid = Uuid::from_u128(0xb1);
    const CUP: Uuid = Uuid::from_u128(0xb2);
    const DOLLAR_MUG: Uuid = Uuid::from_u128(0xb3);

    fn customer() -> Customer {
        Customer::fold(&[event_schemas::CustomerEvent::Registered(CustomerRegistered {
            customer_id: CUSTOMER,
            name: "Ada Lovelace".to_owned(),
            email: "ada@example.com".to_owned(),
        })])
    }

    fn product(id: Uuid, sku: &str, name: &str, price: Money, stock: i64) -> Product {
        Product::fold(&[ProductEvent::Added(ProductAdded {
            product_id: id,
            sku: sku.to_owned(),
            name: name.to_owned(),
            price,
            stock,
        })])
    }

    fn tea(stock: i64) -> Product {
        product(TEA, "TEA-001", "Green tea", Money::new(450, Currency::EUR), stock)
    }

    fn cup(stock: i64) -> Product {
        product(CUP, "CUP-002", "Tea cup", Money::new(1299, Currency::EUR), stock)
    }

    fn dollar_mug() -> Product {
        product(DOLLAR_MUG, "MUG-003", "Mug", Money::new(800, Currency::USD), 10)
    }

    fn line(product_id: Uuid, quantity: i64) -> PlaceOrderLine {
        PlaceOrderLine { product_id, quantity }
    }

    fn place(lines: Vec<PlaceOrderLine>) -> PlaceOrder {
        PlaceOrder {
            order_id: ORDER,
            customer_id: CUSTOMER,
            lines,
        }
    }

    fn placed_event() -> OrderEvent {
        OrderEvent::Placed(OrderPlaced {
            order_id: ORDER,
            customer_id: CUSTOMER,
            customer: CustomerSnapshot {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            lines: vec![
                OrderLine {
                    product_id: TEA,
                    sku: "TEA-001".to_owned(),
                    name: "Green tea".to_owned(),
                    quantity: 3,
                    unit_price_minor: 450,
                },
                OrderLine {
                    product_id: CUP,
                    sku: "CUP-002".to_owned(),
                    name: "Tea cup".to_owned(),
                    quantity: 2,
                    unit_price_minor: 1299,
                },
            ],
            currency: Currency::EUR,
            total_minor: 3 * 450 + 2 * 1299,
        })
    }

    fn confirmed() -> OrderEvent {
        OrderEvent::Confirmed(OrderConfirmed { order_id: ORDER })
    }

    fn shipped() -> OrderEvent {
        OrderEvent::Shipped(OrderShipped {
            order_id: ORDER,
            carrier: "DHL".to_owned(),
            tracking: "JD0123".to_owned(),
        })
    }

    fn delivered() -> OrderEvent {
        OrderEvent::Delivered(OrderDelivered { order_id: ORDER })
    }

    fn cancelled() -> OrderEvent {
        OrderEvent::Cancelled(OrderCancelled {
            order_id: ORDER,
            reason: "changed my mind".to_owned(),
            reason_code: String::new(),
        })
    }

    fn reserved(product_id: Uuid, quantity: i64) -> ProductEvent {
        ProductEvent::StockReserved(ProductStockReserved {
            product_id,
            order_id: ORDER,
            quantity,
        })
    }

    fn released(product_id: Uuid, quantity: i64) -> ProductEvent {
        ProductEvent::StockReleased(ProductStockReleased {
            product_id,
            order_id: ORDER,
            quantity,
        })
    }

    fn confirm() -> OrderCommand {
        OrderCommand::Confirm { order_id: ORDER }
    }

    fn ship(carrier: &str, tracking: &str) -> OrderCommand {
        OrderCommand::Ship {
            order_id: ORDER,
            carrier: carrier.to_owned(),
            tracking: tracking.to_owned(),
        }
    }

    fn deliver() -> OrderCommand {
        OrderCommand::Deliver { order_id: ORDER }
    }

    fn cancel(reason: &str) -> OrderCommand {
        OrderCommand::Cancel {
            order_id: ORDER,
            reason: reason.to_owned(),
            reason_code: None,
        }
    }

    fn not_found() -> DomainError {
        DomainError::NotFound {
            what: "order",
            id: ORDER,
        }
    }

    // --- the state machine, on the order's own stream ---

    fn reserved_line(product: &Product, quantity: i64) -> ReservedLine {
        ReservedLine {
            product_id: product.id,
            quantity,
            sku: product.sku.clone(),
            name: product.name.clone(),
            unit_price: product.price.expect("a priced product"),
        }
    }

    fn ada() -> CustomerSnapshot {
        customer().snapshot()
    }

    #[test]
    fn an_order_reserved_line_by_line_is_placed_with_the_reserved_prices() {
        let command = place(vec![line(TEA, 3), line(CUP, 2)]);
        let reserved = [reserved_line(&tea(10), 3), reserved_line(&cup(10), 2)];
        let events = place_reserved_order(&Order::default(), &command, ada(), &reserved).expect("placed");
        assert_eq!(events, vec![placed_event()]);
    }

    #[test]
    fn a_reserved_order_is_refused_if_placed_already_mixed_in_currency_or_not_its_lines() {
        let command = place(vec![line(TEA, 3), line(DOLLAR_MUG, 1)]);
        let mixed = [reserved_line(&tea(10), 3), reserved_line(&dollar_mug(), 1)];
        let e = place_reserved_order(&Order::default(), &command, ada(), &mixed).expect_err("one currency");
        assert!(matches!(e, DomainError::Rejected { .. }), "{e:?}");

        let command = place(vec![line(TEA, 3)]);
        let placed = Order::fold(&[placed_event()]);
        let e = place_reserved_order(&placed, &command, ada(), &[reserved_line(&tea(10), 3)]).expect_err("placed");
        assert_eq!(
            e,
            DomainError::AlreadyExists {
                what: "order",
                id: ORDER
            }
        );
        let other_quantity = [reserved_line(&tea(10), 2)];
        let e = place_reserved_order(&Order::default(), &command, ada(), &other_quantity).expect_err("lines");
        assert!(matches!(e, DomainError::Rejected { .. }), "{e:?}");
        let e = place_reserved_order(&Order::default(), &place(vec![]), ada(), &[]).expect_err("no lines");
        assert!(matches!(e, DomainError::Invalid { .. }), "{e:?}");
    }

    #[test]
    fn the_shape_of_an_order_is_checked_before_anything_is_reserved() {
        assert!(place(vec![line(TEA, 1)]).validate().is_ok());
        assert!(place(vec![]).validate().is_err());
        assert!(place(vec![line(TEA, 0)]).validate().is_err());
        assert!(place(vec![line(TEA, MAX_QUANTITY + 1)]).validate().is_err());
        assert!(place(vec![line(TEA, 1), line(TEA, 2)]).validate().is_err());
        let too_many = (0..=MAX_ORDER_LINES as u128)
            .map(|n| line(Uuid::from_u128(n + 1), 1))
            .collect();
        assert!(place(too_many).validate().is_err());
    }

    #[test]
    fn confirms_a_pending_order() {
        let state = Order::given([placed_event()]).when(confirm()).then([confirmed()]);
        assert_eq!(state.status, OrderStatus::Confirmed);
    }

    #[test]
    fn ships_a_confirmed_order_with_trimmed_carrier_and_tracking() {
        let state = Order::given([placed_event(), confirmed()])
            .when(ship(" DHL ", "JD0123\t"))
            .then([shipped()]);
        assert_eq!(state.status, OrderStatus::Shipped);
        assert_eq!(
            state.shipment,
            Some(Shipment {
                carrier: "DHL".to_owned(),
                tracking: "JD0123".to_owned(),
            })
        );
    }

    #[test]
    fn delivers_a_shipped_order() {
        let state = Order::given([placed_event(), confirmed(), shipped()])
            .when(deliver())
            .then([delivered()]);
        assert_eq!(state.status, OrderStatus::Delivered);
    }

    #[test]
    fn cancels_a_pending_or_confirmed_order() {
        let state = Order::given([placed_event()])
            .when(cancel(" changed my mind "))
            .then([cancelled()]);
        assert_eq!(state.status, OrderStatus::Cancelled);
        assert_eq!(state.cancellation_reason.as_deref(), Some("changed my mind"));
        Order::given([placed_event(), confirmed()])
            .when(cancel("changed my mind"))
            .then([cancelled()]);
    }

    #[test]
    fn shipping_needs_a_carrier_and_a_tracking_code() {
        let given = || Order::given([placed_event(), confirmed()]);
        given()
            .when(ship("", "JD0123"))
            .then_rejected(DomainError::invalid("carrier", "must not be empty"));
        given()
            .when(ship("DHL", "  "))
            .then_rejected(DomainError::invalid("tracking", "must not be empty"));
        given()
            .when(ship("DHL", &"9".repeat(101)))
            .then_rejected(DomainError::invalid("tracking", "must be at most 100 characters"));
        given()
            .when(ship(&"D".repeat(101), "JD0123"))
            .then_rejected(DomainError::invalid("carrier", "must be at most 100 characters"));
    }

    #[test]
    fn a_cancellation_carries_its_reason_code() {
        let state = Order::given([placed_event(), confirmed()])
            .when(OrderCommand::Cancel {
                order_id: ORDER,
                reason: "changed my mind".to_owned(),
                reason_code: Some("requested".to_owned()),
            })
            .then([OrderEvent::Cancelled(OrderCancelled {
                order_id: ORDER,
                reason: "changed my mind".to_owned(),
                reason_code: "requested".to_owned(),
            })]);
        assert_eq!(state.cancellation_reason_code.as_deref(), Some("requested"));

        // Without one (and in a cancellation recorded before codes existed): none.
        let state = Order::given([placed_event()])
            .when(cancel("changed my mind"))
            .then([cancelled()]);
        assert_eq!(state.cancellation_reason_code, None);

        for (bad, reason) in [
            ("", "must not be empty"),
            (
                "Out of stock",
                "may only contain lower-case ASCII letters, digits and '_'",
            ),
            (&"x".repeat(65), "must be at most 64 characters"),
        ] {
            Order::given([placed_event()])
                .when(OrderCommand::Cancel {
                    order_id: ORDER,
                    reason: "changed my mind".to_owned(),
                    reason_code: Some(bad.to_owned()),
                })
                .then_rejected(DomainError::invalid("reason_code", reason));
        }
    }

    #[test]
    fn cancelling_needs_a_reason() {
        Order::given([placed_event()])
            .when(cancel(" "))
            .then_rejected(DomainError::invalid("reason", "must not be empty"));
        Order::given([placed_event()])
            .when(cancel(&"r".repeat(501)))
            .then_rejected(DomainError::invalid("reason", "must be at most 500 characters"));
    }

    /// Every command from every status: the allowed transitions are the four above, every
    /// other one is a rejection naming the status, and an order never placed is not found.
    #[test]
    fn every_illegal_transition_is_rejected() {
        let histories: [(OrderStatus, Vec<OrderEvent>); 6] = [
            (OrderStatus::NotPlaced, vec![]),
            (OrderStatus::Pending, vec![placed_event()]),
            (OrderStatus::Confirmed, vec![placed_event(), confirmed()]),
            (OrderStatus::Shipped, vec![placed_event(), confirmed(), shipped()]),
            (
                OrderStatus::Delivered,
                vec![placed_event(), confirmed(), shipped(), delivered()],
            ),
            (OrderStatus::Cancelled, vec![placed_event(), confirmed(), cancelled()]),
        ];
        let commands: [(OrderCommand, OrderEvent, &[OrderStatus], &str); 4] = [
            (
                confirm(),
                confirmed(),
                &[OrderStatus::Pending],
                "only a pending order can be confirmed",
            ),
            (
                ship("DHL", "JD0123"),
                shipped(),
                &[OrderStatus::Confirmed],
                "only a confirmed order can be shipped",
            ),
            (
                deliver(),
                delivered(),
                &[OrderStatus::Shipped],
                "only a shipped order can be delivered",
            ),
            (
                cancel("changed my mind"),
                cancelled(),
                &[OrderStatus::Pending, OrderStatus::Confirmed],
                "only a pending or confirmed order can be cancelled",
            ),
        ];
        let (mut accepted, mut rejected) = (0, 0);
        for (status, history) in &histories {
            assert_eq!(Order::fold(history).status, *status);
            for (command, event, allowed, only) in &commands {
                let outcome = Order::given(history.clone()).when(command.clone());
                if *status == OrderStatus::NotPlaced {
                    outcome.then_rejected(not_found());
                } else if allowed.contains(status) {
                    let state = outcome.then([event.clone()]);
                    assert_ne!(state.status, *status, "{command:?} must change the status");
                    accepted += 1;
                } else {
                    outcome.then_rejected(DomainError::rejected(format!("order is {status}; {only}")));
                    rejected += 1;
                }
            }
        }
        assert_eq!(accepted, 5, "five legal moves");
        assert_eq!(rejected, 5 * 4 - 5, "every other move is rejected");
    }

    #[test]
    fn rejections_read_well() {
        Order::given([placed_event(), confirmed(), shipped()])
            .when(cancel("too late"))
            .then_rejected(DomainError::rejected(
                "order is shipped; only a pending or confirmed order can be cancelled",
            ));
        Order::given([placed_event()])
            .when(ship("DHL", "JD0123"))
            .then_rejected(DomainError::rejected(
                "order is pending; only a confirmed order can be shipped",
            ));
    }

    #[test]
    fn evolve_keeps_everything_the_order_placed_event_captured() {
        let state = Order::fold(&[placed_event()]);
        assert_eq!(state.id, ORDER);
        assert_eq!(state.status, OrderStatus::Pending);
        assert_eq!(state.customer_id, CUSTOMER);
        assert_eq!(
            state.customer,
            Some(CustomerSnapshot {
                name: "Ada Lovelace".to_owned(),
                email: "ada@example.com".to_owned(),
            })
        );
        assert_eq!(state.lines.len(), 2);
        assert_eq!(state.total(), Some(Money::new(3948, Currency::EUR)));
        assert_eq!(Order::default().total(), None);
    }

    // --- placing: the order and its products together ---

    #[test]
    fn placing_captures_names_prices_and_the_customer_and_reserves_every_line() {
        let products = [tea(10), cup(5)];
        let decision = place_order(
            &Order::default(),
            &customer(),
            &products,
            place(vec![line(TEA, 3), line(CUP, 2)]),
        );
        assert_eq!(
            decision,
            Ok(OrderDecision {
                order_events: vec![placed_event()],
                product_events: vec![(TEA, vec![reserved(TEA, 3)]), (CUP, vec![reserved(CUP, 2)])],
            })
        );
        let order = Order::fold(&[placed_event()]);
        assert_eq!(order.total_minor, 3948);
        let tea = products[0].clone().evolve(&reserved(TEA, 3));
        assert_eq!((tea.available, tea.reserved_for(ORDER)), (7, 3));
    }

    #[test]
    fn placed_prices_are_the_prices_at_placement() {
        let repriced = tea(10).evolve(&ProductEvent::PriceChanged(event_schemas::ProductPriceChanged {
            product_id: TEA,
            price: Money::new(999, Currency::EUR),
        }));
        let decision = place_order(&Order::default(), &customer(), [&repriced], place(vec![line(TEA, 1)]));
        let Ok(OrderDecision { order_events, .. }) = decision else {
            panic!("placing was refused: {decision:?}");
        };
        let [OrderEvent::Placed(placed)] = order_events.as_slice() else {
            panic!("expected one OrderPlaced, got {order_events:?}");
        };
        assert_eq!(placed.lines[0].unit_price_minor, 999);
        assert_eq!(placed.total(), Money::new(999, Currency::EUR));
    }

    #[test]
    fn free_products_make_a_zero_total() {
        let free = product(TEA, "TEA-001", "Sample", Money::new(0, Currency::EUR), 1);
        let decision = place_order(&Order::default(), &customer(), [&free], place(vec![line(TEA, 1)]));
        assert!(matches!(
            decision.as_ref().map(|d| &d.order_events[..]),
            Ok([OrderEvent::Placed(OrderPlaced { total_minor: 0, .. })])
        ));
    }

    #[test]
    fn placing_an_existing_order_is_rejected() {
        let order = Order::fold(&[placed_event()]);
        assert_eq!(
            place_order(&order, &customer(), &[tea(10)], place(vec![line(TEA, 1)])),
            Err(DomainError::AlreadyExists {
                what: "order",
                id: ORDER,
            })
        );
    }

    #[test]
    fn placing_for_an_unknown_customer_is_not_found() {
        let expected = Err(DomainError::NotFound {
            what: "customer",
            id: CUSTOMER,
        });
        let products = [tea(10)];
        let command = || place(vec![line(TEA, 1)]);
        assert_eq!(
            place_order(&Order::default(), &Customer::default(), &products, command()),
            expected
        );
        let someone_else = Customer::default()
            .decide(CustomerCommand::Register {
                customer_id: Uuid::from_u128(0xc1),
                name: "Bob".to_owned(),
                email: "bob@example.com".to_owned(),
            })
            .map(|events| Customer::fold(&events))
            .unwrap_or_default();
        assert!(someone_else.exists);
        assert_eq!(
            place_order(&Order::default(), &someone_else, &products, command()),
            expected
        );
    }

    #[test]
    fn placing_an_unknown_product_is_not_found() {
        let expected = Err(DomainError::NotFound {
            what: "product",
            id: CUP,
        });
        let command = || place(vec![line(TEA, 1), line(CUP, 1)]);
        assert_eq!(
            place_order(&Order::default(), &customer(), &[tea(10)], command()),
            expected
        );
        assert_eq!(
            place_order(
                &Order::default(),
                &customer(),
                &[tea(10), Product::default()],
                command()
            ),
            expected
        );
    }

    #[test]
    fn placing_validates_the_lines() {
        let products = [tea(10), cup(10)];
        let attempt = |lines| place_order(&Order::default(), &customer(), &products, place(lines));
        assert_eq!(
            attempt(vec![]),
            Err(DomainError::invalid("lines", "an order needs at least one line"))
        );
        assert_eq!(
            attempt((0..=100).map(|i| line(Uuid::from_u128(i), 1)).collect()),
            Err(DomainError::invalid("lines", "an order has at most 100 lines"))
        );
        assert_eq!(
            attempt(vec![line(TEA, 1), line(CUP, 0)]),
            Err(DomainError::invalid("lines[1].quantity", "must be greater than zero"))
        );
        assert_eq!(
            attempt(vec![line(TEA, -2)]),
            Err(DomainError::invalid("lines[0].quantity", "must be greater than zero"))
        );
        assert_eq!(
            attempt(vec![line(TEA, MAX_QUANTITY + 1)]),
            Err(DomainError::invalid("lines[0].quantity", "must be at most 1000000"))
        );
        assert_eq!(
            attempt(vec![line(TEA, 1), line(CUP, 1), line(TEA, 2)]),
            Err(DomainError::invalid(
                "lines[2].product_id",
                format!("product {TEA} is on an earlier line; put its whole quantity on one line")
            ))
        );
    }

    #[test]
    fn an_order_has_one_currency() {
        assert_eq!(
            place_order(
                &Order::default(),
                &customer(),
                &[tea(10), dollar_mug()],
                place(vec![line(TEA, 1), line(DOLLAR_MUG, 1)])
            ),
            Err(DomainError::rejected(format!(
                "product {DOLLAR_MUG} is priced in USD but the order's first line is in EUR; an order has one \
                 currency"
            )))
        );
    }

    #[test]
    fn insufficient_stock_on_any_line_refuses_the_whole_order() {
        assert_eq!(
            place_order(
                &Order::default(),
                &customer(),
                &[tea(10), cup(1)],
                place(vec![line(TEA, 3), line(CUP, 2)])
            ),
            Err(DomainError::InsufficientStock {
                product_id: CUP,
                requested: 2,
                available: 1,
            })
        );
    }

    #[test]
    fn a_total_that_overflows_is_rejected() {
        let expensive: Vec<Product> = (0..100u128)
            .map(|i| {
                product(
                    Uuid::from_u128(0x1000 + i),
                    "GOLD",
                    "Gold bar",
                    Money::new(crate::domain::MAX_PRICE_MINOR, Currency::EUR),
                    MAX_QUANTITY,
                )
            })
            .collect();
        let lines = expensive.iter().map(|p| line(p.id, MAX_QUANTITY)).collect();
        assert_eq!(
            place_order(&Order::default(), &customer(), &expensive, place(lines)),
            Err(DomainError::rejected(
                "the order total exceeds 9223372036854775807 minor units, the largest amount an order can hold"
            ))
        );
    }

    // --- cancelling: the order and its products together ---

    #[test]
    fn cancelling_releases_every_line() {
        let products = [tea(10).evolve(&reserved(TEA, 3)), cup(5).evolve(&reserved(CUP, 2))];
        for history in [vec![placed_event()], vec![placed_event(), confirmed()]] {
            assert_eq!(
                cancel_order(
                    &Order::fold(&history),
                    &products,
                    CancelOrder {
                        order_id: ORDER,
                        reason: "changed my mind".to_owned(),
                        reason_code: None,
                    }
                ),
                Ok(OrderDecision {
                    order_events: vec![cancelled()],
                    product_events: vec![(TEA, vec![released(TEA, 3)]), (CUP, vec![released(CUP, 2)])],
                })
            );
        }
    }

    #[test]
    fn cancelling_skips_products_already_released() {
        let products = [tea(10), cup(5).evolve(&reserved(CUP, 2))];
        let decision = cancel_order(
            &Order::fold(&[placed_event()]),
            &products,
            CancelOrder {
                order_id: ORDER,
                reason: "changed my mind".to_owned(),
                reason_code: None,
            },
        );
        assert_eq!(
            decision.map(|d| d.product_events),
            Ok(vec![(CUP, vec![released(CUP, 2)])])
        );
    }

    #[test]
    fn cancelling_needs_every_product_of_the_order() {
        let products = [tea(10).evolve(&reserved(TEA, 3))];
        let decision = cancel_order(
            &Order::fold(&[placed_event()]),
            &products,
            CancelOrder {
                order_id: ORDER,
                reason: "changed my mind".to_owned(),
                reason_code: None,
            },
        );
        assert_eq!(
            decision,
            Err(DomainError::NotFound {
                what: "product",
                id: CUP
            })
        );
    }

    #[test]
    fn cancelling_follows_the_state_machine() {
        let command = |reason: &str| CancelOrder {
            order_id: ORDER,
            reason: reason.to_owned(),
            reason_code: None,
        };
        let products = [tea(10), cup(5)];
        assert_eq!(
            cancel_order(&Order::default(), &products, command("x")),
            Err(not_found())
        );
        assert_eq!(
            cancel_order(
                &Order::fold(&[placed_event(), confirmed(), shipped()]),
                &products,
                command("x")
            ),
            Err(DomainError::rejected(
                "order is shipped; only a pending or confirmed order can be cancelled"
            ))
        );
        assert_eq!(
            cancel_order(&Order::fold(&[placed_event(), cancelled()]), &products, command("x")),
            Err(DomainError::rejected(
                "order is cancelled; only a pending or confirmed order can be cancelled"
            ))
        );
        assert_eq!(
            cancel_order(&Order::fold(&[placed_event()]), &products, command("")),
            Err(DomainError::invalid("reason", "must not be empty"))
        );
    }

    // --- stock never goes below zero, whatever the sequence ---

    const ORDERS: usize = 6;

    #[derive(Debug, Clone)]
    enum Step {
        /// Place order `order` with `quantities[p]` units of product `p` (0: not on the order).
        Place {
            order: usize,
            quantities: [i64; 2],
        },
        Confirm {
            order: usize,
        },
        Ship {
            order: usize,
        },
        Deliver {
            order: usize,
        },
        Cancel {
            order: usize,
        },
        Restock {
            product: usize,
            quantity: i64,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        let order = 0..ORDERS;
        prop_oneof![
            4 => (order.clone(), [0..6i64, 0..6i64]).prop_map(|(order, quantities)| Step::Place { order, quantities }),
            1 => order.clone().prop_map(|order| Step::Confirm { order }),
            1 => order.clone().prop_map(|order| Step::Ship { order }),
            1 => order.clone().prop_map(|order| Step::Deliver { order }),
            2 => order.prop_map(|order| Step::Cancel { order }),
            1 => (0..2usize, 1..5i64).prop_map(|(product, quantity)| Step::Restock { product, quantity }),
        ]
    }

    fn apply(orders: &mut [Order], products: &mut [Product], index: usize, decision: OrderDecision) {
        let order = std::mem::take(&mut orders[index]);
        orders[index] = order.evolve_all(&decision.order_events);
        for (product_id, events) in &decision.product_events {
            for product in products.iter_mut().filter(|p| p.id == *product_id) {
                *product = std::mem::take(product).evolve_all(events);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// For random sequences of placing, confirming, shipping, delivering, cancelling and
        /// restocking, each product's available stock never goes below zero and always equals its
        /// initial stock plus its restocks minus what the orders that were not cancelled hold,
        /// exactly as the orders' lines say.
        #[test]
        fn stock_never_goes_below_zero(
            initial in [0..8i64, 0..8i64],
            steps in proptest::collection::vec(step(), 0..60),
        ) {
            check_stock(initial, steps)?;
        }
    }

    /// Runs `steps` against two products with `initial` stock, checking the stock after each.
    fn check_stock(initial: [i64; 2], steps: Vec<Step>) -> Result<(), TestCaseError> {
        let ids = [TEA, CUP];
        let mut products = [tea(initial[0]), cup(initial[1])];
        let mut restocked = [0i64; 2];
        let mut orders: Vec<Order> = vec![Order::default(); ORDERS];
        let order_id = |i: usize| Uuid::from_u128(0x0100 + i as u128);
        let customer = customer();

        for step in steps {
            match step {
                Step::Place { order, quantities } => {
                    let lines = ids
                        .iter()
                        .zip(quantities)
                        .filter(|(_, quantity)| *quantity > 0)
                        .map(|(id, quantity)| line(*id, quantity))
                        .collect();
                    let command = PlaceOrder {
                        order_id: order_id(order),
                        customer_id: CUSTOMER,
                        lines,
                    };
                    match place_order(&orders[order], &customer, &products, command) {
                        Ok(decision) => apply(&mut orders, &mut products, order, decision),
                        Err(DomainError::InsufficientStock {
                            product_id,
                            requested,
                            available,
                        }) => {
                            let product = products.iter().find(|p| p.id == product_id);
                            prop_assert_eq!(product.map(|p| p.available), Some(available));
                            prop_assert!(requested > available);
                        }
                        Err(_) => {}
                    }
                }
                Step::Confirm { order } => {
                    if let Ok(events) = orders[order].decide(OrderCommand::Confirm {
                        order_id: order_id(order),
                    }) {
                        orders[order] = std::mem::take(&mut orders[order]).evolve_all(&events);
                    }
                }
                Step::Ship { order } => {
                    let command = OrderCommand::Ship {
                        order_id: order_id(order),
                        carrier: "DHL".to_owned(),
                        tracking: "1".to_owned(),
                    };
                    if let Ok(events) = orders[order].decide(command) {
                        orders[order] = std::mem::take(&mut orders[order]).evolve_all(&events);
                    }
                }
                Step::Deliver { order } => {
                    if let Ok(events) = orders[order].decide(OrderCommand::Deliver {
                        order_id: order_id(order),
                    }) {
                        orders[order] = std::mem::take(&mut orders[order]).evolve_all(&events);
                    }
                }
                Step::Cancel { order } => {
                    let command = CancelOrder {
                        order_id: order_id(order),
                        reason: "test".to_owned(),
                        reason_code: None,
                    };
                    if let Ok(decision) = cancel_order(&orders[order], &products, command) {
                        apply(&mut orders, &mut products, order, decision);
                    }
                }
                Step::Restock { product, quantity } => {
                    let command = ProductCommand::Restock {
                        product_id: ids[product],
                        quantity,
                    };
                    if let Ok(events) = products[product].decide(command) {
                        prop_assert_eq!(
                            &events,
                            &vec![ProductEvent::Restocked(ProductRestocked {
                                product_id: ids[product],
                                quantity,
                            })]
                        );
                        products[product] = std::mem::take(&mut products[product]).evolve_all(&events);
                        restocked[product] += quantity;
                    }
                }
            }

            for (p, product) in products.iter().enumerate() {
                prop_assert!(product.available >= 0, "{:?}", product);
                prop_assert_eq!(product.available, initial[p] + restocked[p] - product.reserved());
                let live: BTreeMap<Uuid, i64> = orders
                    .iter()
                    .filter(|o| {
                        matches!(
                            o.status,
                            OrderStatus::Pending
                                | OrderStatus::Confirmed
                                | OrderStatus::Shipped
                                | OrderStatus::Delivered
                        )
                    })
                    .flat_map(|o| {
                        o.lines
                            .iter()
                            .filter(|l| l.product_id == product.id)
                            .map(|l| (o.id, l.quantity))
                    })
                    .collect();
                prop_assert_eq!(&product.reservations, &live);
            }
        }
        Ok(())
    }
}
