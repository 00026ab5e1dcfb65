//! The upcaster chain, proven on a pretend schema change: `customer.renamed` as if its v1 had
//! stored a first and a last name, its v2 a full name under another field number, and v3 were
//! today's `CustomerEvent::Renamed`. Each step turns version n into n + 1; `decode` must run
//! them in order from the stored version and decode the result with today's types.

use event_schemas::proto::{self, customer_event};
use event_schemas::{CustomerRenamed, DecodeError, DomainEvent, Upcaster, Upcasters, decode};
use prost::Message;

use crate::samples::CUSTOMER;

const RENAMED: &str = CustomerRenamed::EVENT_TYPE;

/// The pretend v1 payload.
#[derive(Clone, PartialEq, Message)]
struct RenamedV1 {
    #[prost(string, tag = "1")]
    customer_id: String,
    #[prost(string, tag = "2")]
    first_name: String,
    #[prost(string, tag = "3")]
    last_name: String,
}

/// The pretend v2 payload.
#[derive(Clone, PartialEq, Message)]
struct RenamedV2 {
    #[prost(string, tag = "1")]
    customer_id: String,
    #[prost(string, tag = "4")]
    full_name: String,
}

fn malformed(message: &'static str) -> impl FnOnce(prost::DecodeError) -> DecodeError {
    move |source| DecodeError::Protobuf { message, source }
}

struct V1ToV2;

impl Upcaster for V1ToV2 {
    fn event_type(&self) -> &str {
        RENAMED
    }

    fn from_version(&self) -> u32 {
        1
    }

    fn upcast(&self, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let old = RenamedV1::decode(payload).map_err(malformed("RenamedV1"))?;
        Ok(RenamedV2 {
            customer_id: old.customer_id,
            full_name: format!("{} {}", old.first_name, old.last_name),
        }
        .encode_to_vec())
    }
}

struct V2ToV3;

impl Upcaster for V2ToV3 {
    fn event_type(&self) -> &str {
        RENAMED
    }

    fn from_version(&self) -> u32 {
        2
    }

    fn upcast(&self, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let old = RenamedV2::decode(payload).map_err(malformed("RenamedV2"))?;
        Ok(proto::CustomerEvent {
            event: Some(customer_event::Event::Renamed(proto::CustomerRenamed {
                customer_id: old.customer_id,
                name: old.full_name,
            })),
        }
        .encode_to_vec())
    }
}

/// A registry for the pretend world where `customer.renamed` is at version 3.
fn rehearsal() -> Upcasters {
    Upcasters::new()
        .with(V2ToV3)
        .with(V1ToV2)
        .with_current_version(RENAMED, 3)
}

fn v1_payload() -> Vec<u8> {
    RenamedV1 {
        customer_id: CUSTOMER.to_string(),
        first_name: "Ada".into(),
        last_name: "Lovelace".into(),
    }
    .encode_to_vec()
}

fn expected() -> DomainEvent {
    CustomerRenamed {
        customer_id: CUSTOMER,
        name: "Ada Lovelace".into(),
    }
    .into()
}

#[test]
fn every_stored_version_decodes_to_the_current_type() {
    let upcasters = rehearsal();
    assert_eq!(upcasters.current_version(RENAMED), Some(3));

    let v2 = RenamedV2 {
        customer_id: CUSTOMER.to_string(),
        full_name: "Ada Lovelace".into(),
    }
    .encode_to_vec();
    let v3 = expected().encode().payload;

    for (version, payload) in [(1, v1_payload()), (2, v2), (3, v3)] {
        let event = upcasters
            .decode(RENAMED, version, &payload)
            .unwrap_or_else(|err| panic!("version {version}: {err:?}"));
        assert_eq!(event, expected(), "version {version}");
    }
}

#[test]
fn a_version_past_the_current_one_is_still_refused() {
    let err = rehearsal().decode(RENAMED, 4, &[]).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UnsupportedSchemaVersion {
                version: 4,
                current: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_gap_in_the_chain_is_an_error() {
    let upcasters = Upcasters::new().with(V2ToV3).with_current_version(RENAMED, 3);
    let err = upcasters.decode(RENAMED, 1, &v1_payload()).unwrap_err();
    assert!(
        matches!(&err, DecodeError::MissingUpcaster { event_type, from_version: 1 } if event_type == RENAMED),
        "{err:?}"
    );
}

#[test]
fn a_failing_step_says_which_step() {
    let err = rehearsal().decode(RENAMED, 1, &[0x0a, 0x09]).unwrap_err();
    match &err {
        DecodeError::Upcast {
            event_type,
            from_version: 1,
            source,
        } => {
            assert_eq!(event_type, RENAMED);
            assert!(
                matches!(
                    **source,
                    DecodeError::Protobuf {
                        message: "RenamedV1",
                        ..
                    }
                ),
                "{source:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_event_types_are_untouched() {
    let shipped = crate::samples::events()
        .into_iter()
        .find(|e| e.event_type() == "order.shipped")
        .expect("a sample");
    let encoded = shipped.encode();
    let event = rehearsal()
        .decode(encoded.event_type, 1, &encoded.payload)
        .expect("decodes");
    assert_eq!(event, shipped);
}

#[test]
fn the_builtin_registry_is_at_version_one_and_decode_uses_it() {
    let builtin = Upcasters::builtin();
    assert_eq!(builtin.current_version(RENAMED), Some(1));
    assert_eq!(builtin.current_version("order.teleported"), None);
    let payload = expected().encode().payload;
    assert_eq!(decode(RENAMED, 1, &payload).ok(), Some(expected()));
}

#[test]
#[should_panic(expected = "two upcasters")]
fn registering_a_step_twice_is_a_bug() {
    let _ = Upcasters::new().with(V1ToV2).with(V1ToV2);
}
