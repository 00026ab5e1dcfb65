//! Property tests: any domain value survives encoding, and no input makes decoding panic.

use chrono::{DateTime, Utc};
use event_schemas::{
    Currency, CustomerEmailChanged, CustomerEvent, CustomerRegistered, CustomerRenamed, CustomerSnapshot, DomainEvent,
    EVENT_SCHEMAS, Envelope, Money, OrderCancelled, OrderConfirmed, OrderDelivered, OrderEvent, OrderLine, OrderPlaced,
    OrderShipped, PaymentAuthorized, PaymentCaptured, PaymentDeclined, PaymentEvent, PaymentRefunded, PaymentVoided,
    ProductAdded, ProductEvent, ProductPriceChanged, ProductRestocked, ProductStockReleased, ProductStockReserved,
    SagaCompleted, SagaConfirmed, SagaEvent, SagaFailed, SagaLine, SagaOrderCancelled, SagaParked,
    SagaPaymentAuthorized, SagaPaymentCaptured, SagaPaymentRefunded, SagaPaymentVoided, SagaResumed, SagaStarted,
    SagaStockReleased, SagaStockReserved, decode,
};
use proptest::collection::vec;
use proptest::prelude::*;
use uuid::Uuid;

fn id() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    any::<String>()
}

fn currency() -> impl Strategy<Value = Currency> {
    "[A-Z]{3}".prop_map(|code| Currency::new(&code).expect("three upper-case letters"))
}

fn money() -> impl Strategy<Value = Money> {
    (any::<i64>(), currency()).prop_map(|(amount_minor, currency)| Money::new(amount_minor, currency))
}

fn customer_event() -> impl Strategy<Value = CustomerEvent> {
    prop_oneof![
        (id(), text(), text()).prop_map(|(customer_id, name, email)| {
            CustomerRegistered {
                customer_id,
                name,
                email,
            }
            .into()
        }),
        (id(), text()).prop_map(|(customer_id, name)| CustomerRenamed { customer_id, name }.into()),
        (id(), text()).prop_map(|(customer_id, email)| { CustomerEmailChanged { customer_id, email }.into() }),
    ]
}

fn product_event() -> impl Strategy<Value = ProductEvent> {
    prop_oneof![
        (id(), text(), text(), money(), any::<i64>()).prop_map(|(product_id, sku, name, price, stock)| {
            ProductAdded {
                product_id,
                sku,
                name,
                price,
                stock,
            }
            .into()
        }),
        (id(), money()).prop_map(|(product_id, price)| ProductPriceChanged { product_id, price }.into()),
        (id(), any::<i64>()).prop_map(|(product_id, quantity)| ProductRestocked { product_id, quantity }.into()),
        (id(), id(), any::<i64>()).prop_map(|(product_id, order_id, quantity)| {
            ProductStockReserved {
                product_id,
                order_id,
                quantity,
            }
            .into()
        }),
        (id(), id(), any::<i64>()).prop_map(|(product_id, order_id, quantity)| {
            ProductStockReleased {
                product_id,
                order_id,
                quantity,
            }
            .into()
        }),
    ]
}

fn order_line() -> impl Strategy<Value = OrderLine> {
    (id(), text(), text(), any::<i64>(), any::<i64>()).prop_map(
        |(product_id, sku, name, quantity, unit_price_minor)| OrderLine {
            product_id,
            sku,
            name,
            quantity,
            unit_price_minor,
        },
    )
}

fn order_event() -> impl Strategy<Value = OrderEvent> {
    prop_oneof![
        (
            id(),
            id(),
            text(),
            text(),
            vec(order_line(), 0..5),
            currency(),
            any::<i64>()
        )
            .prop_map(|(order_id, customer_id, name, email, lines, currency, total_minor)| {
                OrderPlaced {
                    order_id,
                    customer_id,
                    customer: CustomerSnapshot { name, email },
                    lines,
                    currency,
                    total_minor,
                }
                .into()
            }),
        id().prop_map(|order_id| OrderConfirmed { order_id }.into()),
        (id(), text(), text()).prop_map(|(order_id, carrier, tracking)| {
            OrderShipped {
                order_id,
                carrier,
                tracking,
            }
            .into()
        }),
        id().prop_map(|order_id| OrderDelivered { order_id }.into()),
        (id(), text(), text()).prop_map(|(order_id, reason, reason_code)| {
            OrderCancelled {
                order_id,
                reason,
                reason_code,
            }
            .into()
        }),
    ]
}

fn payment_event() -> impl Strategy<Value = PaymentEvent> {
    prop_oneof![
        (id(), id(), money()).prop_map(|(payment_id, order_id, amount)| {
            PaymentAuthorized {
                payment_id,
                order_id,
                amount,
            }
            .into()
        }),
        (id(), id(), money()).prop_map(|(payment_id, order_id, amount)| {
            PaymentCaptured {
                payment_id,
                order_id,
                amount,
            }
            .into()
        }),
        (id(), id(), text()).prop_map(|(payment_id, order_id, reason)| {
            PaymentDeclined {
                payment_id,
                order_id,
                reason,
            }
            .into()
        }),
        (id(), id(), money()).prop_map(|(payment_id, order_id, amount)| {
            PaymentRefunded {
                payment_id,
                order_id,
                amount,
            }
            .into()
        }),
        // With and without an amount: a void may come before any authorization.
        (id(), id(), proptest::option::of(money()), text()).prop_map(|(payment_id, order_id, amount, reason)| {
            PaymentVoided {
                payment_id,
                order_id,
                amount,
                reason,
            }
            .into()
        }),
    ]
}

fn saga_line() -> impl Strategy<Value = SagaLine> {
    (id(), any::<i64>()).prop_map(|(product_id, quantity)| SagaLine { product_id, quantity })
}

fn saga_event() -> impl Strategy<Value = SagaEvent> {
    prop_oneof![
        (id(), id(), vec(saga_line(), 0..5), money(), time(), text()).prop_map(
            |(order_id, payment_id, lines, amount, deadline, correlation_id)| {
                SagaStarted {
                    order_id,
                    payment_id,
                    lines,
                    amount,
                    deadline,
                    correlation_id,
                }
                .into()
            }
        ),
        (id(), any::<u32>(), id(), any::<i64>()).prop_map(|(order_id, line, product_id, quantity)| {
            SagaStockReserved {
                order_id,
                line,
                product_id,
                quantity,
            }
            .into()
        }),
        (id(), id(), money()).prop_map(|(order_id, payment_id, amount)| {
            SagaPaymentAuthorized {
                order_id,
                payment_id,
                amount,
            }
            .into()
        }),
        id().prop_map(|order_id| SagaConfirmed { order_id }.into()),
        (id(), text(), text(), text()).prop_map(|(order_id, reason_code, reason, step)| {
            SagaFailed {
                order_id,
                reason_code,
                reason,
                step,
            }
            .into()
        }),
        (id(), any::<u32>(), id()).prop_map(|(order_id, line, product_id)| {
            SagaStockReleased {
                order_id,
                line,
                product_id,
            }
            .into()
        }),
        (id(), id()).prop_map(|(order_id, payment_id)| SagaPaymentVoided { order_id, payment_id }.into()),
        (id(), id(), money()).prop_map(|(order_id, payment_id, amount)| {
            SagaPaymentCaptured {
                order_id,
                payment_id,
                amount,
            }
            .into()
        }),
        (id(), id(), money()).prop_map(|(order_id, payment_id, amount)| {
            SagaPaymentRefunded {
                order_id,
                payment_id,
                amount,
            }
            .into()
        }),
        (id(), text()).prop_map(|(order_id, reason_code)| SagaOrderCancelled { order_id, reason_code }.into()),
        (id(), text()).prop_map(|(order_id, outcome)| SagaCompleted { order_id, outcome }.into()),
        (id(), text(), text()).prop_map(|(order_id, step, error)| SagaParked { order_id, step, error }.into()),
        (id(), text()).prop_map(|(order_id, actor)| SagaResumed { order_id, actor }.into()),
    ]
}

fn domain_event() -> impl Strategy<Value = DomainEvent> {
    prop_oneof![
        customer_event().prop_map(DomainEvent::from),
        product_event().prop_map(DomainEvent::from),
        order_event().prop_map(DomainEvent::from),
        payment_event().prop_map(DomainEvent::from),
        saga_event().prop_map(DomainEvent::from),
    ]
}

/// Any instant chrono represents from year 1 to 9999 (protobuf's range), at microseconds.
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    (-62_135_596_800_000_000_i64..=253_402_300_799_999_999)
        .prop_map(|micros| DateTime::from_timestamp_micros(micros).expect("inside chrono's range"))
}

prop_compose! {
    fn envelope()(
        event_id in id(),
        stream_id in text(),
        stream_version in any::<u64>(),
        global_position in any::<u64>(),
        event_type in text(),
        schema_version in any::<u32>(),
        occurred_at in time(),
        recorded_at in time(),
        correlation_id in text(),
        causation_id in text(),
        actor in text(),
        payload in vec(any::<u8>(), 0..256),
    ) -> Envelope {
        Envelope {
            event_id,
            stream_id,
            stream_version,
            global_position,
            event_type,
            schema_version,
            occurred_at,
            recorded_at,
            correlation_id,
            causation_id,
            actor,
            payload,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn events_round_trip(event in domain_event()) {
        let encoded = event.encode();
        prop_assert_eq!(encoded.event_type, event.event_type());
        prop_assert_eq!(encoded.schema_version, event.schema_version());
        let decoded = decode(encoded.event_type, encoded.schema_version, &encoded.payload);
        prop_assert_eq!(decoded.ok(), Some(event.clone()));
        // The stream id names the category the event belongs to.
        prop_assert!(event.stream_id().starts_with(event.category().name()));
    }

    #[test]
    fn envelopes_round_trip(envelope in envelope()) {
        let bytes = envelope.encode_to_vec();
        prop_assert_eq!(Envelope::decode(&bytes).ok(), Some(envelope));
    }

    #[test]
    fn envelopes_carry_events(event in domain_event(), envelope in envelope()) {
        let encoded = event.encode();
        let envelope = Envelope {
            stream_id: event.stream_id(),
            event_type: encoded.event_type.to_owned(),
            schema_version: encoded.schema_version,
            payload: encoded.payload,
            ..envelope
        };
        let received = Envelope::decode(&envelope.encode_to_vec()).expect("decodes");
        prop_assert_eq!(received.event().ok(), Some(event));
    }

    #[test]
    fn decoding_any_bytes_never_panics(
        schema in proptest::sample::select(EVENT_SCHEMAS),
        bytes in vec(any::<u8>(), 0..128),
    ) {
        let _ = decode(schema.event_type, schema.schema_version, &bytes);
        let _ = Envelope::decode(&bytes);
    }
}
