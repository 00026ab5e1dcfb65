//! Fixed sample values. The committed fixtures were written from these: changing a sample makes
//! the fixture test fail, which is the point. Add samples, never edit them.

use chrono::{DateTime, Utc};
use event_schemas::{
    Currency, CustomerEmailChanged, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent, Envelope,
    Money, OrderCancelled, OrderConfirmed, OrderDelivered, OrderLine, OrderPlaced, OrderShipped, PaymentAuthorized,
    PaymentCaptured, PaymentDeclined, PaymentRefunded, PaymentVoided, ProductAdded, ProductPriceChanged,
    ProductRestocked, ProductStockReleased, ProductStockReserved, SagaCompleted, SagaConfirmed, SagaFailed, SagaLine,
    SagaOrderCancelled, SagaParked, SagaPaymentAuthorized, SagaPaymentCaptured, SagaPaymentRefunded, SagaPaymentVoided,
    SagaResumed, SagaStarted, SagaStockReleased, SagaStockReserved,
};
use uuid::Uuid;

pub(crate) const CUSTOMER: Uuid = Uuid::from_u128(0x0195_0c2a_1b00_7000_8000_0000_0000_0c01);
pub(crate) const PRODUCT_A: Uuid = Uuid::from_u128(0x0195_0c2a_1b00_7000_8000_0000_0000_0a01);
pub(crate) const PRODUCT_B: Uuid = Uuid::from_u128(0x0195_0c2a_1b00_7000_8000_0000_0000_0a02);
pub(crate) const ORDER: Uuid = Uuid::from_u128(0x0195_0c2a_1b00_7000_8000_0000_0000_0b01);
pub(crate) const PAYMENT: Uuid = Uuid::from_u128(0x0195_0c2a_1b00_7000_8000_0000_0000_0d01);
pub(crate) const EVENT: Uuid = Uuid::from_u128(0x0195_0c2a_1b00_7000_8000_0000_0000_0e01);

fn eur(amount_minor: i64) -> Money {
    Money::new(amount_minor, Currency::EUR)
}

pub(crate) fn order_placed() -> OrderPlaced {
    OrderPlaced {
        order_id: ORDER,
        customer_id: CUSTOMER,
        customer: CustomerSnapshot {
            name: "Ada Lovelace".into(),
            email: "ada@example.com".into(),
        },
        lines: vec![
            OrderLine {
                product_id: PRODUCT_A,
                sku: "TEA-001".into(),
                name: "Assam tea, 250 g".into(),
                quantity: 2,
                unit_price_minor: 1_250,
            },
            OrderLine {
                product_id: PRODUCT_B,
                sku: "MUG-002".into(),
                name: "Mug «Analytical Engine»".into(),
                quantity: 1,
                unit_price_minor: 990,
            },
        ],
        currency: Currency::EUR,
        total_minor: 3_490,
    }
}

/// One event of every type.
pub(crate) fn events() -> Vec<DomainEvent> {
    vec![
        CustomerRegistered {
            customer_id: CUSTOMER,
            name: "Ada Byron".into(),
            email: "ada@example.com".into(),
        }
        .into(),
        CustomerRenamed {
            customer_id: CUSTOMER,
            name: "Ada Lovelace".into(),
        }
        .into(),
        CustomerEmailChanged {
            customer_id: CUSTOMER,
            email: "countess@example.org".into(),
        }
        .into(),
        ProductAdded {
            product_id: PRODUCT_A,
            sku: "TEA-001".into(),
            name: "Assam tea, 250 g".into(),
            price: eur(1_250),
            stock: 40,
        }
        .into(),
        ProductPriceChanged {
            product_id: PRODUCT_A,
            price: eur(1_190),
        }
        .into(),
        ProductRestocked {
            product_id: PRODUCT_A,
            quantity: 25,
        }
        .into(),
        ProductStockReserved {
            product_id: PRODUCT_A,
            order_id: ORDER,
            quantity: 2,
        }
        .into(),
        ProductStockReleased {
            product_id: PRODUCT_A,
            order_id: ORDER,
            quantity: 2,
        }
        .into(),
        order_placed().into(),
        OrderConfirmed { order_id: ORDER }.into(),
        OrderShipped {
            order_id: ORDER,
            carrier: "DHL".into(),
            tracking: "JD014600006281234567".into(),
        }
        .into(),
        OrderDelivered { order_id: ORDER }.into(),
        OrderCancelled {
            order_id: ORDER,
            reason: "customer changed their mind".into(),
            // The v1 fixture predates `reason_code`: it must still decode, with the default.
            reason_code: String::new(),
        }
        .into(),
        PaymentAuthorized {
            payment_id: PAYMENT,
            order_id: ORDER,
            amount: eur(3_490),
        }
        .into(),
        PaymentCaptured {
            payment_id: PAYMENT,
            order_id: ORDER,
            amount: eur(3_490),
        }
        .into(),
        PaymentDeclined {
            payment_id: PAYMENT,
            order_id: ORDER,
            reason: "insufficient funds".into(),
        }
        .into(),
        PaymentRefunded {
            payment_id: PAYMENT,
            order_id: ORDER,
            amount: eur(3_490),
        }
        .into(),
        PaymentVoided {
            payment_id: PAYMENT,
            order_id: ORDER,
            amount: Some(eur(3_490)),
            reason: "order not confirmed in time".into(),
        }
        .into(),
        SagaStarted {
            order_id: ORDER,
            payment_id: PAYMENT,
            lines: vec![
                SagaLine {
                    product_id: PRODUCT_A,
                    quantity: 2,
                },
                SagaLine {
                    product_id: PRODUCT_B,
                    quantity: 1,
                },
            ],
            amount: eur(3_490),
            deadline: at(1_767_226_500, 123_456),
            correlation_id: "req-7f3a".into(),
        }
        .into(),
        SagaStockReserved {
            order_id: ORDER,
            line: 1,
            product_id: PRODUCT_B,
            quantity: 1,
        }
        .into(),
        SagaPaymentAuthorized {
            order_id: ORDER,
            payment_id: PAYMENT,
            amount: eur(3_490),
        }
        .into(),
        SagaConfirmed { order_id: ORDER }.into(),
        SagaFailed {
            order_id: ORDER,
            reason_code: "out_of_stock".into(),
            reason: "insufficient stock for product MUG-002: 1 requested, 0 available".into(),
            step: "reserve 1".into(),
        }
        .into(),
        SagaStockReleased {
            order_id: ORDER,
            line: 0,
            product_id: PRODUCT_A,
        }
        .into(),
        SagaPaymentVoided {
            order_id: ORDER,
            payment_id: PAYMENT,
        }
        .into(),
        SagaPaymentCaptured {
            order_id: ORDER,
            payment_id: PAYMENT,
            amount: eur(3_490),
        }
        .into(),
        SagaPaymentRefunded {
            order_id: ORDER,
            payment_id: PAYMENT,
            amount: eur(3_490),
        }
        .into(),
        SagaOrderCancelled {
            order_id: ORDER,
            reason_code: "payment_declined".into(),
        }
        .into(),
        SagaCompleted {
            order_id: ORDER,
            outcome: "cancelled".into(),
        }
        .into(),
        SagaParked {
            order_id: ORDER,
            step: "authorize".into(),
            error: "payments answered 418 «I'm a teapot»".into(),
        }
        .into(),
        SagaResumed {
            order_id: ORDER,
            actor: "ops@example.com".into(),
        }
        .into(),
    ]
}

fn at(seconds: i64, micros: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, micros * 1_000).expect("a valid sample time")
}

/// The envelope of [`order_placed`] as the store would hand it out.
pub(crate) fn envelope() -> Envelope {
    let event = DomainEvent::from(order_placed());
    let encoded = event.encode();
    Envelope {
        event_id: EVENT,
        stream_id: event.stream_id(),
        stream_version: 1,
        global_position: 42,
        event_type: encoded.event_type.to_owned(),
        schema_version: encoded.schema_version,
        occurred_at: at(1_767_225_600, 123_456),
        recorded_at: at(1_767_225_600, 124_001),
        correlation_id: "req-7f3a".into(),
        causation_id: "cmd-place-order-7f3a".into(),
        // The v1 envelope fixture predates `actor`: it must still decode, with the default.
        actor: String::new(),
        payload: encoded.payload,
    }
}
