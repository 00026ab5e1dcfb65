//! Bad input gives the `DecodeError` that says what is wrong, never a panic or a wrong event.

use std::error::Error as _;

use event_schemas::proto::{self, customer_event, order_event, product_event};
use event_schemas::{
    Category, DecodeError, DomainEvent, Envelope, OrderConfirmed, OrderEvent, decode, parse_stream_id,
};
use prost::Message;

use crate::samples;

fn order_payload(event: order_event::Event) -> Vec<u8> {
    proto::OrderEvent { event: Some(event) }.encode_to_vec()
}

fn product_added(currency: &str) -> Vec<u8> {
    proto::ProductEvent {
        event: Some(product_event::Event::Added(proto::ProductAdded {
            product_id: samples::PRODUCT_A.to_string(),
            sku: "TEA-001".into(),
            name: "Assam tea".into(),
            price: Some(proto::Money {
                amount_minor: 1_250,
                currency: currency.into(),
            }),
            stock: 1,
        })),
    }
    .encode_to_vec()
}

#[test]
fn an_empty_oneof_is_an_error() {
    let empty = proto::OrderEvent { event: None }.encode_to_vec();
    assert!(empty.is_empty(), "proto3 encodes an empty message as no bytes");
    for payload in [&empty[..], &[]] {
        let err = decode("order.confirmed", 1, payload).unwrap_err();
        assert!(
            matches!(err, DecodeError::EmptyOneof { message: "OrderEvent" }),
            "{err:?}"
        );
    }
}

#[test]
fn a_payload_of_another_category_is_an_empty_oneof() {
    let customer = proto::CustomerEvent {
        event: Some(customer_event::Event::Renamed(proto::CustomerRenamed {
            customer_id: samples::CUSTOMER.to_string(),
            name: "Ada".into(),
        })),
    }
    .encode_to_vec();
    let err = decode("order.placed", 1, &customer).unwrap_err();
    assert!(
        matches!(err, DecodeError::EmptyOneof { message: "OrderEvent" }),
        "{err:?}"
    );
}

#[test]
fn a_payload_of_another_type_is_a_mismatch() {
    let confirmed = DomainEvent::from(OrderConfirmed {
        order_id: samples::ORDER,
    })
    .encode();
    let err = decode("order.shipped", 1, &confirmed.payload).unwrap_err();
    match err {
        DecodeError::EventTypeMismatch { declared, actual } => {
            assert_eq!(declared, "order.shipped");
            assert_eq!(actual, "order.confirmed");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unknown_event_type_is_an_error() {
    let confirmed = DomainEvent::from(OrderConfirmed {
        order_id: samples::ORDER,
    })
    .encode();
    for event_type in ["order.teleported", "", "Order.Confirmed", "order.confirmed "] {
        let err = decode(event_type, 1, &confirmed.payload).unwrap_err();
        assert!(
            matches!(&err, DecodeError::UnknownEventType(t) if t == event_type),
            "{err:?}"
        );
    }
}

#[test]
fn a_future_or_zero_schema_version_is_an_error() {
    let confirmed = DomainEvent::from(OrderConfirmed {
        order_id: samples::ORDER,
    })
    .encode();
    for version in [0, 2, u32::MAX] {
        let err = decode("order.confirmed", version, &confirmed.payload).unwrap_err();
        assert!(
            matches!(
                &err,
                DecodeError::UnsupportedSchemaVersion { event_type, version: v, current: 1 }
                    if event_type == "order.confirmed" && *v == version
            ),
            "{err:?}"
        );
    }
}

#[test]
fn a_bad_uuid_is_an_error_that_names_the_field() {
    for bad in ["", "not-a-uuid", "0195-0c2a", "zz950c2a-1b00-7000-8000-000000000b01"] {
        let payload = order_payload(order_event::Event::Confirmed(proto::OrderConfirmed {
            order_id: bad.into(),
        }));
        let err = decode("order.confirmed", 1, &payload).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::InvalidUuid {
                    field: "OrderConfirmed.order_id",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.source().is_some(), "the uuid error is the source");
    }

    // Inside a repeated sub-message too.
    let mut placed = proto::OrderEvent::from(OrderEvent::from(samples::order_placed()));
    if let Some(order_event::Event::Placed(p)) = &mut placed.event {
        p.lines[1].product_id = "nope".into();
    }
    let err = decode("order.placed", 1, &placed.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InvalidUuid {
                field: "OrderPlaced.lines.product_id",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_bad_currency_is_an_error_that_names_the_field() {
    for bad in ["", "eur", "EURO", "E1R"] {
        let err = decode("product.added", 1, &product_added(bad)).unwrap_err();
        match &err {
            DecodeError::InvalidCurrency { field, source } => {
                assert_eq!(*field, "ProductAdded.price");
                assert_eq!(source.code, bad);
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(decode("product.added", 1, &product_added("EUR")).is_ok());

    let mut placed = proto::OrderEvent::from(OrderEvent::from(samples::order_placed()));
    if let Some(order_event::Event::Placed(p)) = &mut placed.event {
        p.currency = "usd".into();
    }
    let err = decode("order.placed", 1, &placed.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InvalidCurrency {
                field: "OrderPlaced.currency",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_missing_sub_message_is_an_error() {
    let mut placed = proto::OrderEvent::from(OrderEvent::from(samples::order_placed()));
    if let Some(order_event::Event::Placed(p)) = &mut placed.event {
        p.customer = None;
    }
    let err = decode("order.placed", 1, &placed.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MissingField {
                field: "OrderPlaced.customer"
            }
        ),
        "{err:?}"
    );

    let no_price = proto::ProductEvent {
        event: Some(product_event::Event::PriceChanged(proto::ProductPriceChanged {
            product_id: samples::PRODUCT_A.to_string(),
            price: None,
        })),
    };
    let err = decode("product.price_changed", 1, &no_price.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MissingField {
                field: "ProductPriceChanged.price"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_bytes_are_an_error() {
    // A length-delimited field 300 whose length runs past the end.
    let err = decode("order.placed", 1, &[0xe2, 0x12, 0x7f, 0x01]).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Protobuf {
                message: "OrderEvent",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.source().is_some(), "the prost error is the source");

    let err = Envelope::decode(&[0x0a, 0x05, b'x']).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Protobuf {
                message: "Envelope",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_bad_envelope_is_an_error() {
    let good = proto::Envelope::from(samples::envelope());

    let mut bad = good.clone();
    bad.event_id = "42".into();
    let err = Envelope::decode(&bad.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InvalidUuid {
                field: "Envelope.event_id",
                ..
            }
        ),
        "{err:?}"
    );

    let mut bad = good.clone();
    bad.recorded_at = None;
    let err = Envelope::decode(&bad.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::MissingField {
                field: "Envelope.recorded_at"
            }
        ),
        "{err:?}"
    );

    let mut bad = good;
    if let Some(t) = &mut bad.occurred_at {
        t.nanos = -1;
    }
    let err = Envelope::decode(&bad.encode_to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::InvalidTimestamp {
                field: "Envelope.occurred_at"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn an_envelope_with_a_bad_payload_decodes_but_its_event_does_not() {
    let mut envelope = samples::envelope();
    envelope.event_type = "order.delivered".into();
    let received = Envelope::decode(&envelope.encode_to_vec()).expect("the envelope is fine");
    let err = received.event().unwrap_err();
    assert!(matches!(err, DecodeError::EventTypeMismatch { .. }), "{err:?}");
}

#[test]
fn display_says_one_level_and_the_cause_is_the_source() {
    let err = decode("product.added", 1, &product_added("eur")).unwrap_err();
    assert_eq!(err.to_string(), "invalid currency code in ProductAdded.price");
    let source = err.source().expect("a source");
    assert_eq!(
        source.to_string(),
        "\"eur\" is not a currency code (three upper-case letters, e.g. \"EUR\")"
    );
    assert!(source.source().is_none());
}

#[test]
fn stream_ids_parse_back() {
    let event = DomainEvent::from(samples::order_placed());
    let (category, id) = parse_stream_id(&event.stream_id()).expect("a valid stream id");
    assert_eq!((category, id), (Category::Order, samples::ORDER));
    assert_eq!(category.topic(), "orderflow.orders.v1");
    let err = parse_stream_id("order-not-a-uuid").unwrap_err();
    assert!(matches!(err, DecodeError::InvalidStreamId(_)), "{err:?}");
}
