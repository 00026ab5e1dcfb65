//! Committed binary fixtures: the payload of every event type at every schema version, plus an
//! envelope, in `fixtures/v{n}/`. They stand for events already in somebody's store, so they are
//! written once and never regenerated: a change to the `.proto` files or the conversions that
//! stops one from decoding to its sample is a change that breaks stored events.
//!
//! A missing fixture is written from its sample only when `ORDERFLOW_WRITE_FIXTURES=1`, and an
//! existing one is never overwritten. When an event type moves to version n + 1, add
//! `fixtures/v{n+1}/` files for it the same way; its `v{n}` fixture stays and must still decode
//! (through the upcaster) to what the new build makes of the old sample.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use event_schemas::{DomainEvent, EVENT_SCHEMAS, Envelope, decode};

use crate::samples;

/// The environment variable that allows writing missing fixtures.
const WRITE_FIXTURES: &str = "ORDERFLOW_WRITE_FIXTURES";

/// The envelope fixture's file name, beside the event payloads.
const ENVELOPE: &str = "envelope.bin";

fn fixture_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("v{version}"))
}

fn fixture_path(version: u32, event_type: &str) -> PathBuf {
    fixture_dir(version).join(format!("{event_type}.bin"))
}

/// The bytes of the fixture at `path`, first written from `bytes()` if it is missing and
/// writing is allowed.
fn load(path: &Path, bytes: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    if !path.exists() {
        assert!(
            std::env::var(WRITE_FIXTURES).as_deref() == Ok("1"),
            "missing fixture {}: run `{WRITE_FIXTURES}=1 cargo test -p event-schemas` once to \
             write it from its sample, then commit it",
            path.display()
        );
        let dir = path.parent().expect("a fixture path has a directory");
        fs::create_dir_all(dir).expect("create the fixture directory");
        // `create_new`: never overwrite. Another test may have written it meanwhile: fine.
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut file) => file.write_all(&bytes()).expect("write the fixture"),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => {}
            Err(err) => panic!("create {}: {err}", path.display()),
        }
    }
    fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
}

fn load_event(event: &DomainEvent) -> Vec<u8> {
    let encoded = event.encode();
    assert_eq!(encoded.schema_version, 1, "samples are of version 1");
    load(&fixture_path(1, encoded.event_type), || encoded.payload)
}

#[test]
fn every_v1_fixture_decodes_to_its_sample() {
    for sample in samples::events() {
        let bytes = load_event(&sample);
        let decoded = decode(sample.event_type(), 1, &bytes)
            .unwrap_or_else(|err| panic!("fixture of {}: {err:?}", sample.event_type()));
        assert_eq!(decoded, sample);
    }
}

#[test]
fn every_known_event_type_has_a_sample_and_a_fixture_of_every_version() {
    let samples = samples::events();
    let sampled: BTreeSet<_> = samples.iter().map(DomainEvent::event_type).collect();
    let known: BTreeSet<_> = EVENT_SCHEMAS.iter().map(|s| s.event_type).collect();
    assert_eq!(sampled, known, "one sample per known event type");
    assert_eq!(sampled.len(), samples.len(), "one sample per known event type");

    for sample in &samples {
        load_event(sample);
    }
    for schema in EVENT_SCHEMAS {
        for version in 1..=schema.schema_version {
            let path = fixture_path(version, schema.event_type);
            assert!(path.is_file(), "no fixture {}", path.display());
        }
    }
}

#[test]
fn fixture_directories_hold_nothing_unknown() {
    let known: BTreeSet<String> = EVENT_SCHEMAS
        .iter()
        .map(|s| format!("{}.bin", s.event_type))
        .chain([ENVELOPE.to_owned()])
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let Ok(dirs) = fs::read_dir(&root) else {
        return; // nothing written yet: the other tests say what is missing
    };
    for dir in dirs {
        let dir = dir.expect("list fixtures").path();
        if !dir.is_dir() {
            continue; // README.md
        }
        for file in fs::read_dir(&dir).expect("list a fixture directory") {
            let name = file.expect("list a fixture").file_name();
            let name = name.to_string_lossy();
            assert!(
                known.contains(name.as_ref()),
                "unexpected fixture {}/{name}",
                dir.display()
            );
        }
    }
}

#[test]
fn the_envelope_fixture_decodes_to_its_sample() {
    let sample = samples::envelope();
    let bytes = load(&fixture_dir(1).join(ENVELOPE), || sample.encode_to_vec());
    let decoded = Envelope::decode(&bytes).expect("the envelope fixture decodes");

    // The payload is compared as the event it holds, not byte for byte: re-encoding the sample
    // may lay the bytes out differently and still mean the same event.
    let without_payload = |envelope: &Envelope| Envelope {
        payload: Vec::new(),
        ..envelope.clone()
    };
    assert_eq!(without_payload(&decoded), without_payload(&sample));
    assert_eq!(
        decoded.event().expect("the payload decodes"),
        DomainEvent::from(samples::order_placed())
    );
}
