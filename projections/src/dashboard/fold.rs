//! The pure part of [`super::OrderDashboard::apply`]: a batch folded in memory over the rows it
//! touches, loaded beforehand. Nothing here does IO; `write` stores what the fold produced.

use std::collections::HashMap;

use event_schemas::{CustomerEvent, DomainEvent, OrderEvent, OrderPlaced, PaymentEvent, SagaEvent};
use uuid::Uuid;

use super::{OrderStatus, PaymentStatus, SagaState};
use crate::{ProjectedEvent, ProjectionError, micros, to_i64};

/// An order row as stored in `orders` (and, with validity, in `order_history`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OrderState {
    pub(super) order_id: Uuid,
    pub(super) customer_id: Uuid,
    pub(super) customer_name: String,
    pub(super) customer_email: String,
    pub(super) snapshot_name: String,
    pub(super) snapshot_email: String,
    pub(super) status: OrderStatus,
    pub(super) item_count: i64,
    pub(super) total_minor: i64,
    pub(super) currency: String,
    pub(super) placed_at_us: i64,
    pub(super) confirmed_at_us: Option<i64>,
    pub(super) shipped_at_us: Option<i64>,
    pub(super) delivered_at_us: Option<i64>,
    pub(super) cancelled_at_us: Option<i64>,
    pub(super) cancel_reason: Option<String>,
    pub(super) carrier: Option<String>,
    pub(super) tracking: Option<String>,
    pub(super) stream_version: i64,
    pub(super) last_position: i64,
    pub(super) updated_at_us: i64,
    /// The last cancellation's reason code; `None` when not cancelled or recorded without one.
    pub(super) cancel_reason_code: Option<String>,
}

/// A customer row as stored in `customers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CustomerState {
    pub(super) customer_id: Uuid,
    pub(super) name: String,
    pub(super) email: String,
    pub(super) stream_version: i64,
    pub(super) last_position: i64,
    pub(super) order_count: i64,
    pub(super) last_order_id: Option<Uuid>,
    pub(super) last_order_at_us: Option<i64>,
    pub(super) last_order_position: Option<i64>,
}

/// A payment row as stored in `payments` (and, with validity, in `payment_history`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PaymentState {
    pub(super) payment_id: Uuid,
    pub(super) order_id: Uuid,
    pub(super) status: PaymentStatus,
    /// The authorization's currency; `None` before it.
    pub(super) currency: Option<String>,
    pub(super) authorized_minor: i64,
    pub(super) captured_minor: i64,
    pub(super) refunded_minor: i64,
    /// Why it was declined or voided; `None` in the other statuses.
    pub(super) reason: Option<String>,
    /// The position of the stream's first event (in the payments log).
    pub(super) started_position: i64,
    pub(super) stream_version: i64,
    pub(super) last_position: i64,
    pub(super) updated_at_us: i64,
}

/// A saga row as stored in `sagas` (keyed by its order's id, the id in `saga-{order id}`): what
/// [`SagaState`] is derived from (see its doc for the mapping), kept as its events applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SagaProgress {
    pub(super) order_id: Uuid,
    /// Derived from the fields below by [`SagaProgress::derive`] after every event.
    pub(super) state: SagaState,
    /// The lines `saga.started` listed (0 when its start was not seen: an upgraded version).
    pub(super) line_count: i64,
    /// The `saga.stock_reserved` events applied (one per line: the saga reserves each once).
    pub(super) lines_reserved: i64,
    pub(super) authorized: bool,
    pub(super) confirmed: bool,
    pub(super) failed: bool,
    pub(super) parked: bool,
    pub(super) completed: bool,
    pub(super) stream_version: i64,
    pub(super) last_position: i64,
    pub(super) updated_at_us: i64,
}

impl SagaProgress {
    /// The saga's state, from what its events recorded (the write side's `Saga::phase`).
    pub(super) fn derive(&self) -> SagaState {
        if self.completed {
            SagaState::Completed
        } else if self.parked {
            SagaState::Parked
        } else if self.failed {
            SagaState::Compensating
        } else if self.lines_reserved < self.line_count {
            SagaState::Reserving
        } else if !self.authorized {
            SagaState::Authorizing
        } else if !self.confirmed {
            SagaState::Confirming
        } else {
            SagaState::AwaitingShipment
        }
    }
}

/// One version of a saga's state, valid from its event up to the next one's (`None`: still
/// valid).
#[derive(Debug, Clone)]
pub(super) struct SagaVersion {
    pub(super) order_id: Uuid,
    pub(super) stream_version: i64,
    pub(super) state: SagaState,
    pub(super) valid_from: (i64, i64),
    pub(super) valid_to: Option<(i64, i64)>,
}

impl SagaVersion {
    /// The version `saga` starts, valid from its last event.
    pub(super) fn of(saga: &SagaProgress, valid_to: Option<(i64, i64)>) -> Self {
        SagaVersion {
            order_id: saga.order_id,
            stream_version: saga.stream_version,
            state: saga.state,
            valid_from: (saga.last_position, saga.updated_at_us),
            valid_to,
        }
    }
}

/// One version of a payment, valid from its event up to the next one's (`None`: still valid).
#[derive(Debug, Clone)]
pub(super) struct PaymentVersion {
    pub(super) payment: PaymentState,
    pub(super) valid_from: (i64, i64),
    pub(super) valid_to: Option<(i64, i64)>,
}

/// One version of an order, valid from its event up to the next one's (`None`: still valid).
#[derive(Debug, Clone)]
pub(super) struct OrderVersion {
    pub(super) order: OrderState,
    pub(super) valid_from: (i64, i64),
    pub(super) valid_to: Option<(i64, i64)>,
}

/// One version of a customer's name and email.
#[derive(Debug, Clone)]
pub(super) struct CustomerVersion {
    pub(super) customer_id: Uuid,
    pub(super) stream_version: i64,
    pub(super) name: String,
    pub(super) email: String,
    pub(super) valid_from: (i64, i64),
    pub(super) valid_to: Option<(i64, i64)>,
}

/// A row in memory, with what the write-back needs to know about it.
#[derive(Debug)]
pub(super) struct Entry<T> {
    pub(super) state: T,
    /// The row as loaded, `None` when the batch created it.
    pub(super) loaded: Option<T>,
    /// Whether the batch changed it.
    pub(super) dirty: bool,
    /// Whether an event of the row's own stream applied in this batch.
    pub(super) advanced: bool,
    /// Index in the batch's history rows of this row's latest version, if the batch made one.
    latest_version: Option<usize>,
}

impl<T: Clone> Entry<T> {
    fn loaded(state: T) -> Self {
        Entry {
            loaded: Some(state.clone()),
            state,
            dirty: false,
            advanced: false,
            latest_version: None,
        }
    }

    fn created(state: T) -> Self {
        Entry {
            state,
            loaded: None,
            dirty: true,
            advanced: false,
            latest_version: None,
        }
    }
}

/// The outcome of folding one batch.
#[derive(Debug, Default)]
pub(super) struct Fold {
    pub(super) orders: HashMap<Uuid, Entry<OrderState>>,
    pub(super) customers: HashMap<Uuid, Entry<CustomerState>>,
    pub(super) payments: HashMap<Uuid, Entry<PaymentState>>,
    pub(super) sagas: HashMap<Uuid, Entry<SagaProgress>>,
    /// New order versions, in batch order.
    pub(super) order_versions: Vec<OrderVersion>,
    pub(super) customer_versions: Vec<CustomerVersion>,
    pub(super) payment_versions: Vec<PaymentVersion>,
    pub(super) saga_versions: Vec<SagaVersion>,
    /// Stored versions to close (valid_to = the first applied event's position and time).
    pub(super) close_orders: Vec<(Uuid, (i64, i64))>,
    pub(super) close_customers: Vec<(Uuid, (i64, i64))>,
    pub(super) close_payments: Vec<(Uuid, (i64, i64))>,
    pub(super) close_sagas: Vec<(Uuid, (i64, i64))>,
    /// Per (customer, currency): orders placed and lifetime value to add.
    pub(super) totals: Totals,
}

/// The ids of the rows a batch touches, to load before folding.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Affected {
    pub(super) orders: Vec<Uuid>,
    pub(super) customers: Vec<Uuid>,
    pub(super) payments: Vec<Uuid>,
    /// Sagas, by their order's id.
    pub(super) sagas: Vec<Uuid>,
}

/// The ids of the orders, customers, payments and sagas a batch touches: the rows to load
/// before folding.
pub(super) fn affected(events: &[ProjectedEvent]) -> Affected {
    let mut orders = Vec::new();
    let mut customers = Vec::new();
    let mut payments = Vec::new();
    let mut sagas = Vec::new();
    for event in events {
        match &event.event {
            DomainEvent::Order(order) => {
                orders.push(order.order_id());
                if let OrderEvent::Placed(placed) = order {
                    customers.push(placed.customer_id);
                }
            }
            DomainEvent::Customer(customer) => customers.push(customer.customer_id()),
            DomainEvent::Payment(payment) => payments.push(payment.payment_id()),
            DomainEvent::Saga(saga) => sagas.push(saga.order_id()),
            // Nothing of the dashboard comes from them.
            DomainEvent::Product(_) => {}
        }
    }
    for ids in [&mut orders, &mut customers, &mut payments, &mut sagas] {
        ids.sort_unstable();
        ids.dedup();
    }
    Affected {
        orders,
        customers,
        payments,
        sagas,
    }
}

impl Fold {
    /// Folds `events` in batch order over the loaded rows.
    pub(super) fn run(
        orders: Vec<OrderState>,
        customers: Vec<CustomerState>,
        payments: Vec<PaymentState>,
        sagas: Vec<SagaProgress>,
        events: &[ProjectedEvent],
    ) -> Result<Self, ProjectionError> {
        let mut fold = Fold {
            orders: orders.into_iter().map(|o| (o.order_id, Entry::loaded(o))).collect(),
            customers: customers
                .into_iter()
                .map(|c| (c.customer_id, Entry::loaded(c)))
                .collect(),
            payments: payments.into_iter().map(|p| (p.payment_id, Entry::loaded(p))).collect(),
            sagas: sagas.into_iter().map(|g| (g.order_id, Entry::loaded(g))).collect(),
            ..Fold::default()
        };
        for event in events {
            match &event.event {
                DomainEvent::Order(order) => fold.order_event(event, order)?,
                DomainEvent::Customer(customer) => fold.customer_event(event, customer)?,
                DomainEvent::Payment(payment) => fold.payment_event(event, payment)?,
                DomainEvent::Saga(saga) => fold.saga_event(event, saga),
                DomainEvent::Product(_) => {}
            }
        }
        // Orders whose customer is known from its own stream show the customer's current name,
        // whatever the batch order was (the stored orders of a customer that changed are
        // updated by `write`).
        for entry in fold.orders.values_mut().filter(|entry| entry.dirty) {
            let order = &mut entry.state;
            if let Some(customer) = fold.customers.get(&order.customer_id)
                && customer.state.stream_version > 0
            {
                order.customer_name.clone_from(&customer.state.name);
                order.customer_email.clone_from(&customer.state.email);
            }
        }
        Ok(fold)
    }

    fn customer_event(&mut self, event: &ProjectedEvent, customer: &CustomerEvent) -> Result<(), ProjectionError> {
        let id = customer.customer_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        if !customer_event_applies(self.customers.get(&id).map(|entry| &entry.state), customer, version)? {
            return Ok(()); // applied before: a replay
        }
        let entry = self
            .customers
            .entry(id)
            .or_insert_with(|| Entry::created(blank_customer(id)));
        apply_customer_event(&mut entry.state, customer, version, at);
        entry.dirty = true;
        entry.advanced = true;
        match entry.latest_version {
            Some(index) => {
                if let Some(previous) = self.customer_versions.get_mut(index) {
                    previous.valid_to = Some(at);
                }
            }
            None => {
                if entry.loaded.as_ref().is_some_and(|loaded| loaded.stream_version > 0) {
                    self.close_customers.push((id, at));
                }
            }
        }
        entry.latest_version = Some(self.customer_versions.len());
        let state = &entry.state;
        self.customer_versions.push(CustomerVersion {
            customer_id: id,
            stream_version: version,
            name: state.name.clone(),
            email: state.email.clone(),
            valid_from: at,
            valid_to: None,
        });
        Ok(())
    }

    /// A payment's own stream: its row (version-guarded) and its history. Independent of the
    /// order's rows (joined when read), so it applies whether or not the order is known.
    fn payment_event(&mut self, event: &ProjectedEvent, payment: &PaymentEvent) -> Result<(), ProjectionError> {
        let id = payment.payment_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        if !payment_event_applies(self.payments.get(&id).map(|entry| &entry.state), payment, version)? {
            return Ok(()); // applied before: a replay
        }
        let entry = self
            .payments
            .entry(id)
            .or_insert_with(|| Entry::created(blank_payment(payment, at)));
        apply_payment_event(&mut entry.state, payment, version, at);
        entry.dirty = true;
        entry.advanced = true;
        match entry.latest_version {
            Some(index) => {
                if let Some(previous) = self.payment_versions.get_mut(index) {
                    previous.valid_to = Some(at);
                }
            }
            None => {
                if entry.loaded.is_some() {
                    self.close_payments.push((id, at));
                }
            }
        }
        entry.latest_version = Some(self.payment_versions.len());
        self.payment_versions.push(PaymentVersion {
            payment: entry.state.clone(),
            valid_from: at,
            valid_to: None,
        });
        Ok(())
    }

    /// A saga's own stream: its row (version-guarded) and its history. Independent of the
    /// order's rows (joined when read; the saga's topic is not the orders'), so it applies
    /// whether or not the order is known. Never fails (see [`saga_event_applies`]).
    fn saga_event(&mut self, event: &ProjectedEvent, saga: &SagaEvent) {
        let id = saga.order_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        if !saga_event_applies(self.sagas.get(&id).map(|entry| &entry.state), version) {
            return; // applied before: a replay
        }
        let entry = self.sagas.entry(id).or_insert_with(|| Entry::created(blank_saga(id)));
        apply_saga_event(&mut entry.state, saga, version, at);
        entry.dirty = true;
        entry.advanced = true;
        match entry.latest_version {
            Some(index) => {
                if let Some(previous) = self.saga_versions.get_mut(index) {
                    previous.valid_to = Some(at);
                }
            }
            None => {
                if entry.loaded.is_some() {
                    self.close_sagas.push((id, at));
                }
            }
        }
        entry.latest_version = Some(self.saga_versions.len());
        self.saga_versions.push(SagaVersion::of(&entry.state, None));
    }

    fn order_event(&mut self, event: &ProjectedEvent, order: &OrderEvent) -> Result<(), ProjectionError> {
        let id = order.order_id();
        let version = to_i64(event.stream_version);
        let at = at_of(event);
        let occurred_us = micros(event.occurred_at);
        if let OrderEvent::Placed(placed) = order
            && !self.orders.contains_key(&id)
        {
            let customer = self
                .customers
                .entry(placed.customer_id)
                .or_insert_with(|| Entry::created(snapshot_customer(placed, at)));
            let state = place_order(&mut customer.state, &mut self.totals, placed, version, at, occurred_us);
            customer.dirty = true;
            let entry = self.orders.entry(id).or_insert_with(|| Entry::created(state));
            entry.advanced = true;
            entry.latest_version = Some(self.order_versions.len());
            self.order_versions.push(OrderVersion {
                order: entry.state.clone(),
                valid_from: at,
                valid_to: None,
            });
            return Ok(());
        }
        let Some(entry) = self.orders.get_mut(&id) else {
            return Err(never_placed(id, order));
        };
        if !order_event_applies(&entry.state, order, version)? {
            return Ok(()); // applied before: a replay
        }
        apply_order_event(&mut entry.state, &mut self.totals, order, version, at, occurred_us);
        entry.dirty = true;
        entry.advanced = true;
        match entry.latest_version {
            Some(index) => {
                if let Some(previous) = self.order_versions.get_mut(index) {
                    previous.valid_to = Some(at);
                }
            }
            None => self.close_orders.push((id, at)),
        }
        entry.latest_version = Some(self.order_versions.len());
        self.order_versions.push(OrderVersion {
            order: entry.state.clone(),
            valid_from: at,
            valid_to: None,
        });
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// What one event does to the rows it touches: shared by the batch fold above and the bulk fold
// of a rebuild (`bulk`), so that both make exactly the same rows.

/// A customer and a currency: what `customer_totals` holds a row for.
pub(super) type TotalKey = (Uuid, String);

/// Per (customer, currency): orders placed and lifetime value (sums, or a batch's deltas).
pub(super) type Totals = HashMap<TotalKey, (i64, i64)>;

/// The position and recorded time (microseconds) of an event: where a row version starts or ends.
pub(super) fn at_of(event: &ProjectedEvent) -> (i64, i64) {
    (to_i64(event.position), micros(event.recorded_at))
}

/// The copy of a customer first seen through its own registration (filled by the event).
pub(super) fn blank_customer(customer_id: Uuid) -> CustomerState {
    CustomerState {
        customer_id,
        name: String::new(),
        email: String::new(),
        stream_version: 0,
        last_position: 0,
        order_count: 0,
        last_order_id: None,
        last_order_at_us: None,
        last_order_position: None,
    }
}

/// The copy of a customer first seen through an order's snapshot (at position `at`); the
/// placement is then counted by [`place_order`].
pub(super) fn snapshot_customer(placed: &OrderPlaced, at: (i64, i64)) -> CustomerState {
    CustomerState {
        customer_id: placed.customer_id,
        name: placed.customer.name.clone(),
        email: placed.customer.email.clone(),
        stream_version: 0,
        last_position: at.0,
        order_count: 0,
        last_order_id: None,
        last_order_at_us: None,
        last_order_position: None,
    }
}

/// Whether a customer event at stream `version` applies to the copy (`None`: no copy yet):
/// `Ok(false)` for a replay, an error for a change to a customer never registered. Changes
/// nothing, so that a failing event leaves every row as it was.
pub(super) fn customer_event_applies(
    copy: Option<&CustomerState>,
    customer: &CustomerEvent,
    version: i64,
) -> Result<bool, ProjectionError> {
    match (copy, customer) {
        (Some(copy), _) => Ok(version > copy.stream_version),
        (None, CustomerEvent::Registered(_)) => Ok(true),
        (None, _) => Err(ProjectionError::Inconsistent(format!(
            "{} for customer {}, which is not registered",
            customer.event_type(),
            customer.customer_id()
        ))),
    }
}

/// Applies a customer event that [`customer_event_applies`] to its copy.
pub(super) fn apply_customer_event(copy: &mut CustomerState, customer: &CustomerEvent, version: i64, at: (i64, i64)) {
    match customer {
        CustomerEvent::Registered(e) => {
            copy.name.clone_from(&e.name);
            copy.email.clone_from(&e.email);
        }
        CustomerEvent::Renamed(e) => copy.name.clone_from(&e.name),
        CustomerEvent::EmailChanged(e) => copy.email.clone_from(&e.email),
    }
    copy.stream_version = version;
    copy.last_position = at.0;
}

/// A payment's row before its first event (at `at`) applies; [`apply_payment_event`] fills it.
pub(super) fn blank_payment(payment: &PaymentEvent, at: (i64, i64)) -> PaymentState {
    PaymentState {
        payment_id: payment.payment_id(),
        order_id: payment.order_id(),
        status: PaymentStatus::Authorized,
        currency: None,
        authorized_minor: 0,
        captured_minor: 0,
        refunded_minor: 0,
        reason: None,
        started_position: at.0,
        stream_version: 0,
        last_position: 0,
        updated_at_us: 0,
    }
}

/// Whether a payment event at stream `version` applies to its row (`None`: no row yet):
/// `Ok(false)` for a replay, an error for a capture or refund of a payment never started (a
/// stream starts with an authorization, a decline or a void). Changes nothing.
pub(super) fn payment_event_applies(
    row: Option<&PaymentState>,
    payment: &PaymentEvent,
    version: i64,
) -> Result<bool, ProjectionError> {
    match (row, payment) {
        (Some(row), _) => Ok(version > row.stream_version),
        (None, PaymentEvent::Authorized(_) | PaymentEvent::Declined(_) | PaymentEvent::Voided(_)) => Ok(true),
        (None, PaymentEvent::Captured(_) | PaymentEvent::Refunded(_)) => Err(ProjectionError::Inconsistent(format!(
            "{} for payment {}, which was never authorized",
            payment.event_type(),
            payment.payment_id()
        ))),
    }
}

/// Applies a payment event that [`payment_event_applies`] to its row: what the payments
/// service's own fold does (a refund of everything captured makes it `refunded`, a partial one
/// leaves it `captured`).
pub(super) fn apply_payment_event(row: &mut PaymentState, payment: &PaymentEvent, version: i64, at: (i64, i64)) {
    match payment {
        PaymentEvent::Authorized(e) => {
            row.order_id = e.order_id;
            row.status = PaymentStatus::Authorized;
            row.currency = Some(e.amount.currency.as_str().to_owned());
            row.authorized_minor = e.amount.amount_minor;
            row.reason = None;
        }
        PaymentEvent::Captured(e) => {
            row.status = PaymentStatus::Captured;
            row.captured_minor = row.captured_minor.saturating_add(e.amount.amount_minor);
            row.reason = None;
        }
        PaymentEvent::Declined(e) => {
            row.order_id = e.order_id;
            row.status = PaymentStatus::Declined;
            row.reason = Some(e.reason.clone());
        }
        PaymentEvent::Refunded(e) => {
            row.refunded_minor = row.refunded_minor.saturating_add(e.amount.amount_minor);
            if row.refunded_minor >= row.captured_minor {
                row.status = PaymentStatus::Refunded;
            }
            row.reason = None;
        }
        PaymentEvent::Voided(e) => {
            row.order_id = e.order_id;
            row.status = PaymentStatus::Voided;
            row.reason = Some(e.reason.clone());
        }
    }
    row.stream_version = version;
    row.last_position = at.0;
    row.updated_at_us = at.1;
}

/// A saga's row before its first event applies; [`apply_saga_event`] fills it.
pub(super) fn blank_saga(order_id: Uuid) -> SagaProgress {
    SagaProgress {
        order_id,
        state: SagaState::Reserving,
        line_count: 0,
        lines_reserved: 0,
        authorized: false,
        confirmed: false,
        failed: false,
        parked: false,
        completed: false,
        stream_version: 0,
        last_position: 0,
        updated_at_us: 0,
    }
}

/// Whether a saga event at stream `version` applies to its row (`None`: no row yet): `false`
/// for a replay. Unlike the other streams', a saga's events never fail: a stream whose start
/// this version did not see (events applied before the upgrade that added sagas) starts a row
/// from what follows, with no lines to reserve.
pub(super) fn saga_event_applies(row: Option<&SagaProgress>, version: i64) -> bool {
    row.is_none_or(|row| version > row.stream_version)
}

/// Applies a saga event that [`saga_event_applies`] to its row, as the write side's saga folds
/// it, and derives the state.
pub(super) fn apply_saga_event(row: &mut SagaProgress, saga: &SagaEvent, version: i64, at: (i64, i64)) {
    match saga {
        SagaEvent::Started(e) => row.line_count = i64::try_from(e.lines.len()).unwrap_or(i64::MAX),
        SagaEvent::StockReserved(_) => {
            row.lines_reserved = row.lines_reserved.saturating_add(1);
            // A compensated saga that learns of an effect it had not recorded has work again.
            if row.failed {
                row.completed = false;
            }
        }
        SagaEvent::PaymentAuthorized(_) => {
            row.authorized = true;
            if row.failed {
                row.completed = false;
            }
        }
        SagaEvent::Confirmed(_) => row.confirmed = true,
        SagaEvent::Failed(_) => {
            // Abandoning a parked saga fails it: it compensates from then on.
            row.parked = false;
            row.failed = true;
        }
        SagaEvent::Parked(_) => row.parked = true,
        SagaEvent::Resumed(_) => row.parked = false,
        SagaEvent::Completed(_) => row.completed = true,
        SagaEvent::StockReleased(_)
        | SagaEvent::PaymentVoided(_)
        | SagaEvent::PaymentCaptured(_)
        | SagaEvent::PaymentRefunded(_)
        | SagaEvent::OrderCancelled(_) => {}
    }
    row.state = row.derive();
    row.stream_version = version;
    row.last_position = at.0;
    row.updated_at_us = at.1;
}

/// The error of an order event for an order that is not there.
pub(super) fn never_placed(order_id: Uuid, order: &OrderEvent) -> ProjectionError {
    ProjectionError::Inconsistent(format!(
        "{} for order {order_id}, which was never placed",
        order.event_type()
    ))
}

/// Whether an event of an existing order's stream at `version` applies to it: `Ok(false)` for
/// a replay, an error for a second placement. Changes nothing.
pub(super) fn order_event_applies(
    state: &OrderState,
    order: &OrderEvent,
    version: i64,
) -> Result<bool, ProjectionError> {
    if version <= state.stream_version {
        return Ok(false);
    }
    if matches!(order, OrderEvent::Placed(_)) {
        return Err(ProjectionError::Inconsistent(format!(
            "order {} placed again at stream version {version}",
            state.order_id
        )));
    }
    Ok(true)
}

/// Applies an event of an existing order that [`order_event_applies`] to it (a cancellation
/// also takes the order's total off its customer's lifetime value in `totals`).
pub(super) fn apply_order_event(
    state: &mut OrderState,
    totals: &mut Totals,
    order: &OrderEvent,
    version: i64,
    at: (i64, i64),
    occurred_us: i64,
) {
    match order {
        // Refused by `order_event_applies`.
        OrderEvent::Placed(_) => return,
        OrderEvent::Confirmed(_) => {
            state.status = OrderStatus::Confirmed;
            state.confirmed_at_us = Some(occurred_us);
        }
        OrderEvent::Shipped(e) => {
            state.status = OrderStatus::Shipped;
            state.shipped_at_us = Some(occurred_us);
            state.carrier = Some(e.carrier.clone());
            state.tracking = Some(e.tracking.clone());
        }
        OrderEvent::Delivered(_) => {
            state.status = OrderStatus::Delivered;
            state.delivered_at_us = Some(occurred_us);
        }
        OrderEvent::Cancelled(e) => {
            if state.status != OrderStatus::Cancelled {
                let total = totals
                    .entry((state.customer_id, state.currency.clone()))
                    .or_insert((0, 0));
                total.1 -= state.total_minor;
            }
            state.status = OrderStatus::Cancelled;
            state.cancelled_at_us = Some(occurred_us);
            state.cancel_reason = Some(e.reason.clone());
            state.cancel_reason_code = (!e.reason_code.is_empty()).then(|| e.reason_code.clone());
        }
    }
    state.stream_version = version;
    state.last_position = at.0;
    state.updated_at_us = at.1;
}

/// The new order row of `placed` (stream `version`, at `at`), and its effect on its customer's
/// copy and on `totals`.
pub(super) fn place_order(
    copy: &mut CustomerState,
    totals: &mut Totals,
    placed: &OrderPlaced,
    version: i64,
    at: (i64, i64),
    occurred_us: i64,
) -> OrderState {
    let snapshot = &placed.customer;
    // Known only from snapshots: the latest snapshot in the log wins, whatever the order
    // the batches brought them in.
    if copy.stream_version == 0 && at.0 > copy.last_position {
        copy.name.clone_from(&snapshot.name);
        copy.email.clone_from(&snapshot.email);
        copy.last_position = at.0;
    }
    copy.order_count += 1;
    if copy.last_order_position.is_none_or(|last| at.0 > last) {
        copy.last_order_id = Some(placed.order_id);
        copy.last_order_at_us = Some(occurred_us);
        copy.last_order_position = Some(at.0);
    }
    let (name, email) = if copy.stream_version > 0 {
        (copy.name.clone(), copy.email.clone())
    } else {
        (snapshot.name.clone(), snapshot.email.clone())
    };
    let currency = placed.currency.as_str().to_owned();
    let total = totals.entry((placed.customer_id, currency.clone())).or_insert((0, 0));
    total.0 += 1;
    total.1 += placed.total_minor;
    OrderState {
        order_id: placed.order_id,
        customer_id: placed.customer_id,
        customer_name: name,
        customer_email: email,
        snapshot_name: snapshot.name.clone(),
        snapshot_email: snapshot.email.clone(),
        status: OrderStatus::Pending,
        item_count: placed.lines.iter().map(|line| line.quantity).sum(),
        total_minor: placed.total_minor,
        currency,
        placed_at_us: occurred_us,
        confirmed_at_us: None,
        shipped_at_us: None,
        delivered_at_us: None,
        cancelled_at_us: None,
        cancel_reason: None,
        carrier: None,
        tracking: None,
        stream_version: version,
        last_position: at.0,
        updated_at_us: at.1,
        cancel_reason_code: None,
    }
}
