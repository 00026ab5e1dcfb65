//! The facts a batch produces, whatever the sink: a pure function of the events, so that a
//! replayed event produces exactly the same rows (the idempotence both sinks rely on).

use std::collections::{BTreeSet, HashMap};

use event_schemas::{DomainEvent, OrderEvent, PaymentEvent};

use crate::{Batch, ProjectedEvent, micros};

/// The statuses an order can reach, one fact row each. The strings are stored: never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Status {
    Placed,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl Status {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Confirmed => "confirmed",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One line of a placed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineFact {
    pub(crate) order_id: String,
    /// From 1, in the order of the event's lines.
    pub(crate) line_no: u32,
    pub(crate) product_id: String,
    pub(crate) sku: String,
    pub(crate) name: String,
    pub(crate) quantity: i64,
    pub(crate) unit_price_minor: i64,
    /// `quantity * unit_price_minor` (saturating: the write side never accepts an overflow).
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    /// The placement's `occurred_at`, microseconds since the epoch.
    pub(crate) placed_at_us: i64,
    pub(crate) position: u64,
    pub(crate) event_id: String,
}

/// An order reaching a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusFact {
    pub(crate) order_id: String,
    pub(crate) status: Status,
    /// The event's `occurred_at`, microseconds since the epoch.
    pub(crate) at_us: i64,
    pub(crate) position: u64,
    /// The order's total and currency as placed; see [`Facts::orders_to_look_up`].
    pub(crate) total_minor: i64,
    pub(crate) currency: String,
    pub(crate) event_id: String,
}

/// An order's cancellation, with its reason code (empty in one recorded before codes existed).
/// Key: (order_id, position); an order's first cancellation (lowest position) is the one the
/// queries count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CancellationFact {
    pub(crate) order_id: String,
    pub(crate) reason_code: String,
    /// The event's `occurred_at`, microseconds since the epoch.
    pub(crate) at_us: i64,
    pub(crate) position: u64,
    pub(crate) event_id: String,
}

/// What a payment event is, as a fact. The strings are stored: never rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PaymentKind {
    Authorized,
    Captured,
    Refunded,
    Declined,
    Voided,
}

impl PaymentKind {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            PaymentKind::Authorized => "authorized",
            PaymentKind::Captured => "captured",
            PaymentKind::Refunded => "refunded",
            PaymentKind::Declined => "declined",
            PaymentKind::Voided => "voided",
        }
    }
}

/// One event of a payment's stream (the payments service's). Key: (payment_id, seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PaymentFact {
    pub(crate) payment_id: String,
    /// The event's version in the payment's stream, from 1: the order of the payment's events.
    pub(crate) seq: u64,
    pub(crate) order_id: String,
    pub(crate) kind: PaymentKind,
    /// The amount authorized, captured, refunded or voided (0 for a decline, or a void before
    /// any authorization), in minor units of `currency` (empty without an amount).
    pub(crate) amount_minor: i64,
    pub(crate) currency: String,
    /// The event's `occurred_at`, microseconds since the epoch.
    pub(crate) at_us: i64,
    pub(crate) position: u64,
    pub(crate) event_id: String,
}

/// The rows of one batch. Events other than order and payment events produce nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) lines: Vec<LineFact>,
    pub(crate) statuses: Vec<StatusFact>,
    pub(crate) cancellations: Vec<CancellationFact>,
    pub(crate) payments: Vec<PaymentFact>,
}

impl Facts {
    /// The facts of a batch. A status change after `placed` carries no amount: its total and
    /// currency are taken from a placement in the same batch when there is one, and otherwise
    /// left empty for the sink to fill from its stored `placed` row ([`Facts::fill_totals`]).
    pub(crate) fn of(batch: &Batch) -> Facts {
        let mut facts = Facts::default();
        for event in &batch.events {
            facts.add(event);
        }
        let placed: HashMap<String, (i64, String)> = facts
            .statuses
            .iter()
            .filter(|s| s.status == Status::Placed)
            .map(|s| (s.order_id.clone(), (s.total_minor, s.currency.clone())))
            .collect();
        facts.fill_totals(&placed);
        facts
    }

    fn add(&mut self, event: &ProjectedEvent) {
        let order_event = match &event.event {
            DomainEvent::Order(order_event) => order_event,
            DomainEvent::Payment(payment) => return self.add_payment(event, payment),
            _ => return,
        };
        let order_id = order_event.order_id().to_string();
        let at_us = micros(event.occurred_at);
        let event_id = event.event_id.to_string();
        let status = match order_event {
            OrderEvent::Placed(placed) => {
                let currency = placed.currency.as_str().to_owned();
                for (index, line) in placed.lines.iter().enumerate() {
                    self.lines.push(LineFact {
                        order_id: order_id.clone(),
                        line_no: u32::try_from(index + 1).unwrap_or(u32::MAX),
                        product_id: line.product_id.to_string(),
                        sku: line.sku.clone(),
                        name: line.name.clone(),
                        quantity: line.quantity,
                        unit_price_minor: line.unit_price_minor,
                        amount_minor: line.quantity.saturating_mul(line.unit_price_minor),
                        currency: currency.clone(),
                        placed_at_us: at_us,
                        position: event.position,
                        event_id: event_id.clone(),
                    });
                }
                self.statuses.push(StatusFact {
                    order_id,
                    status: Status::Placed,
                    at_us,
                    position: event.position,
                    total_minor: placed.total_minor,
                    currency,
                    event_id,
                });
                return;
            }
            OrderEvent::Confirmed(_) => Status::Confirmed,
            OrderEvent::Shipped(_) => Status::Shipped,
            OrderEvent::Delivered(_) => Status::Delivered,
            OrderEvent::Cancelled(cancelled) => {
                self.cancellations.push(CancellationFact {
                    order_id: order_id.clone(),
                    reason_code: cancelled.reason_code.clone(),
                    at_us,
                    position: event.position,
                    event_id: event_id.clone(),
                });
                Status::Cancelled
            }
        };
        self.statuses.push(StatusFact {
            order_id,
            status,
            at_us,
            position: event.position,
            total_minor: 0,
            currency: String::new(),
            event_id,
        });
    }

    fn add_payment(&mut self, event: &ProjectedEvent, payment: &PaymentEvent) {
        let (kind, amount) = match payment {
            PaymentEvent::Authorized(e) => (PaymentKind::Authorized, Some(e.amount)),
            PaymentEvent::Captured(e) => (PaymentKind::Captured, Some(e.amount)),
            PaymentEvent::Refunded(e) => (PaymentKind::Refunded, Some(e.amount)),
            PaymentEvent::Declined(_) => (PaymentKind::Declined, None),
            PaymentEvent::Voided(e) => (PaymentKind::Voided, e.amount),
        };
        self.payments.push(PaymentFact {
            payment_id: payment.payment_id().to_string(),
            seq: event.stream_version,
            order_id: payment.order_id().to_string(),
            kind,
            amount_minor: amount.map_or(0, |a| a.amount_minor),
            currency: amount.map_or_else(String::new, |a| a.currency.as_str().to_owned()),
            at_us: micros(event.occurred_at),
            position: event.position,
            event_id: event.event_id.to_string(),
        });
    }

    /// The orders whose status rows still lack the order's total (no placement in the batch).
    pub(crate) fn orders_to_look_up(&self) -> BTreeSet<String> {
        self.statuses
            .iter()
            .filter(|s| s.currency.is_empty())
            .map(|s| s.order_id.clone())
            .collect()
    }

    /// Fills the total and currency of status rows from `placed` (order id → total, currency).
    /// An order whose placement is unknown (e.g. dead-lettered) keeps 0 and an empty currency.
    pub(crate) fn fill_totals(&mut self, placed: &HashMap<String, (i64, String)>) {
        for status in self.statuses.iter_mut().filter(|s| s.currency.is_empty()) {
            if let Some((total, currency)) = placed.get(&status.order_id) {
                status.total_minor = *total;
                status.currency.clone_from(currency);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use event_schemas::{Currency, CustomerSnapshot, OrderConfirmed, OrderLine, OrderPlaced};
    use uuid::Uuid;

    use super::*;
    use crate::Origin;

    fn event(position: u64, event: OrderEvent) -> ProjectedEvent {
        ProjectedEvent {
            event_id: Uuid::new_v4(),
            stream_id: format!("order-{}", event.order_id()),
            stream_version: 1,
            position,
            occurred_at: DateTime::from_timestamp(1_700_000_000 + i64::try_from(position).unwrap_or(0), 0)
                .expect("in range"),
            recorded_at: DateTime::from_timestamp(1_700_000_000, 0).expect("in range"),
            correlation_id: String::new(),
            event: DomainEvent::Order(event),
            origin: Origin::store(event_schemas::Service::Orders, position),
        }
    }

    #[test]
    fn a_placement_gives_its_lines_and_totals_flow_to_later_statuses() {
        let order_id = Uuid::new_v4();
        let product_id = Uuid::new_v4();
        let placed = OrderEvent::Placed(OrderPlaced {
            order_id,
            customer_id: Uuid::new_v4(),
            customer: CustomerSnapshot {
                name: "Ada".to_owned(),
                email: "ada@example.com".to_owned(),
            },
            lines: vec![
                OrderLine {
                    product_id,
                    sku: "A-1".to_owned(),
                    name: "Anvil".to_owned(),
                    quantity: 3,
                    unit_price_minor: 250,
                },
                OrderLine {
                    product_id,
                    sku: "A-1".to_owned(),
                    name: "Anvil".to_owned(),
                    quantity: 1,
                    unit_price_minor: 250,
                },
            ],
            currency: Currency::EUR,
            total_minor: 1000,
        });
        let confirmed = OrderEvent::Confirmed(OrderConfirmed { order_id });
        let batch = Batch {
            events: vec![event(7, placed), event(9, confirmed.clone())],
            dead_letters: Vec::new(),
            unknown: Vec::new(),
        };
        let facts = Facts::of(&batch);
        assert_eq!(facts.lines.len(), 2);
        assert_eq!(facts.lines[0].amount_minor, 750);
        assert_eq!((facts.lines[0].line_no, facts.lines[1].line_no), (1, 2));
        assert_eq!(facts.statuses.len(), 2);
        assert_eq!(facts.statuses[1].status, Status::Confirmed);
        assert_eq!(facts.statuses[1].total_minor, 1000);
        assert_eq!(facts.statuses[1].currency, "EUR");
        assert!(facts.orders_to_look_up().is_empty());

        let alone = Facts::of(&Batch {
            events: vec![event(9, confirmed)],
            dead_letters: Vec::new(),
            unknown: Vec::new(),
        });
        assert_eq!(
            alone.orders_to_look_up().into_iter().collect::<Vec<_>>(),
            vec![order_id.to_string()]
        );
        assert_eq!(
            Facts::of(&batch),
            Facts::of(&batch),
            "the same batch gives the same rows"
        );
    }
}
