//! Order events: the `order-{uuid}` streams.

use uuid::Uuid;

use crate::convert::{currency, id, required, uuid};
use crate::{Currency, DecodeError, Money, proto};

/// The customer's name and email as they were when the order was placed. Later renames do not
/// change a placed order; read models that show the current name follow the customer's stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CustomerSnapshot {
    pub name: String,
    pub email: String,
}

/// One line of an order, with the product's sku, name and unit price captured at placement.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderLine {
    pub product_id: Uuid,
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    /// Unit price in minor units of the order's currency.
    pub unit_price_minor: i64,
}

/// An order was accepted: the first event of its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderPlaced {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub customer: CustomerSnapshot,
    pub lines: Vec<OrderLine>,
    /// The currency of every amount in the order.
    pub currency: Currency,
    /// Sum of `quantity * unit_price_minor` over the lines, computed when the order was placed.
    pub total_minor: i64,
}
event_type!(OrderPlaced, "order.placed", version 1);

impl OrderPlaced {
    /// The order's total as [`Money`].
    pub const fn total(&self) -> Money {
        Money::new(self.total_minor, self.currency)
    }
}

/// An order was confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
}
event_type!(OrderConfirmed, "order.confirmed", version 1);

/// An order left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderShipped {
    pub order_id: Uuid,
    pub carrier: String,
    pub tracking: String,
}
event_type!(OrderShipped, "order.shipped", version 1);

/// An order reached the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDelivered {
    pub order_id: Uuid,
}
event_type!(OrderDelivered, "order.delivered", version 1);

/// An order was cancelled; the stock it had reserved is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub reason: String,
    /// Stable: why (`requested`, `out_of_stock`, `payment_declined`, `payment_unavailable`,
    /// `timed_out`, `abandoned`). Empty in a cancellation recorded before it existed.
    pub reason_code: String,
}
event_type!(OrderCancelled, "order.cancelled", version 1);

/// Every event of an order stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    Placed(OrderPlaced),
    Confirmed(OrderConfirmed),
    Shipped(OrderShipped),
    Delivered(OrderDelivered),
    Cancelled(OrderCancelled),
}

impl OrderEvent {
    /// The stable type name of this event.
    pub const fn event_type(&self) -> &'static str {
        match self {
            Self::Placed(_) => OrderPlaced::EVENT_TYPE,
            Self::Confirmed(_) => OrderConfirmed::EVENT_TYPE,
            Self::Shipped(_) => OrderShipped::EVENT_TYPE,
            Self::Delivered(_) => OrderDelivered::EVENT_TYPE,
            Self::Cancelled(_) => OrderCancelled::EVENT_TYPE,
        }
    }

    /// The schema version this build writes for this event.
    pub const fn schema_version(&self) -> u32 {
        match self {
            Self::Placed(_) => OrderPlaced::SCHEMA_VERSION,
            Self::Confirmed(_) => OrderConfirmed::SCHEMA_VERSION,
            Self::Shipped(_) => OrderShipped::SCHEMA_VERSION,
            Self::Delivered(_) => OrderDelivered::SCHEMA_VERSION,
            Self::Cancelled(_) => OrderCancelled::SCHEMA_VERSION,
        }
    }

    /// The order the event belongs to.
    pub const fn order_id(&self) -> Uuid {
        match self {
            Self::Placed(e) => e.order_id,
            Self::Confirmed(e) => e.order_id,
            Self::Shipped(e) => e.order_id,
            Self::Delivered(e) => e.order_id,
            Self::Cancelled(e) => e.order_id,
        }
    }
}

impl From<OrderEvent> for proto::OrderEvent {
    fn from(event: OrderEvent) -> Self {
        use proto::order_event::Event;
        let event = match event {
            OrderEvent::Placed(e) => Event::Placed(proto::OrderPlaced {
                order_id: id(e.order_id),
                customer_id: id(e.customer_id),
                customer: Some(proto::CustomerSnapshot {
                    name: e.customer.name,
                    email: e.customer.email,
                }),
                lines: e
                    .lines
                    .into_iter()
                    .map(|line| proto::OrderLine {
                        product_id: id(line.product_id),
                        sku: line.sku,
                        name: line.name,
                        quantity: line.quantity,
                        unit_price_minor: line.unit_price_minor,
                    })
                    .collect(),
                currency: e.currency.as_str().to_owned(),
                total_minor: e.total_minor,
            }),
            OrderEvent::Confirmed(e) => Event::Confirmed(proto::OrderConfirmed {
                order_id: id(e.order_id),
            }),
            OrderEvent::Shipped(e) => Event::Shipped(proto::OrderShipped {
                order_id: id(e.order_id),
                carrier: e.carrier,
                tracking: e.tracking,
            }),
            OrderEvent::Delivered(e) => Event::Delivered(proto::OrderDelivered {
                order_id: id(e.order_id),
            }),
            OrderEvent::Cancelled(e) => Event::Cancelled(proto::OrderCancelled {
                order_id: id(e.order_id),
                reason: e.reason,
                reason_code: e.reason_code,
            }),
        };
        Self { event: Some(event) }
    }
}

impl From<&OrderEvent> for proto::OrderEvent {
    fn from(event: &OrderEvent) -> Self {
        event.clone().into()
    }
}

impl TryFrom<proto::OrderEvent> for OrderEvent {
    type Error = DecodeError;

    fn try_from(message: proto::OrderEvent) -> Result<Self, Self::Error> {
        use proto::order_event::Event;
        let event = message.event.ok_or(DecodeError::EmptyOneof { message: "OrderEvent" })?;
        Ok(match event {
            Event::Placed(e) => {
                let customer = required("OrderPlaced.customer", e.customer)?;
                let lines = e
                    .lines
                    .into_iter()
                    .map(|line| {
                        Ok(OrderLine {
                            product_id: uuid("OrderPlaced.lines.product_id", &line.product_id)?,
                            sku: line.sku,
                            name: line.name,
                            quantity: line.quantity,
                            unit_price_minor: line.unit_price_minor,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?;
                Self::Placed(OrderPlaced {
                    order_id: uuid("OrderPlaced.order_id", &e.order_id)?,
                    customer_id: uuid("OrderPlaced.customer_id", &e.customer_id)?,
                    customer: CustomerSnapshot {
                        name: customer.name,
                        email: customer.email,
                    },
                    lines,
                    currency: currency("OrderPlaced.currency", &e.currency)?,
                    total_minor: e.total_minor,
                })
            }
            Event::Confirmed(e) => Self::Confirmed(OrderConfirmed {
                order_id: uuid("OrderConfirmed.order_id", &e.order_id)?,
            }),
            Event::Shipped(e) => Self::Shipped(OrderShipped {
                order_id: uuid("OrderShipped.order_id", &e.order_id)?,
                carrier: e.carrier,
                tracking: e.tracking,
            }),
            Event::Delivered(e) => Self::Delivered(OrderDelivered {
                order_id: uuid("OrderDelivered.order_id", &e.order_id)?,
            }),
            Event::Cancelled(e) => Self::Cancelled(OrderCancelled {
                order_id: uuid("OrderCancelled.order_id", &e.order_id)?,
                reason: e.reason,
                reason_code: e.reason_code,
            }),
        })
    }
}
