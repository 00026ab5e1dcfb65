//! The place-order saga's moving parts (ADR 0010; its state machine is the pure
//! [`crate::domain::saga`]): [`runner`] advances one saga by calling inventory and payments and
//! recording what they answered; [`driver`] finds the sagas that have work and paces them.

pub mod driver;
pub mod runner;

pub use driver::{CHECKPOINT, Driver, DriverOptions, SagaHandle, driver};
pub use runner::{Advanced, RunError, Runner};

use uuid::Uuid;

/// The payment id of an order's saga: derived from the order id, so that every attempt, every
/// process and every crash recovery asks payments about the same payment.
pub fn payment_id(order_id: Uuid) -> Uuid {
    /// The namespace of the ids derived from order ids. Never change it.
    const PAYMENTS: Uuid = Uuid::from_u128(0x7061_796d_656e_7473_2d6f_662d_6f72_6472);
    Uuid::new_v5(&PAYMENTS, order_id.as_bytes())
}
