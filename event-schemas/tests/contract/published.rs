//! What each service publishes, pinned: `contracts/<service>.txt` lists every event type the
//! service's streams hold (its topic's messages), with its schema version, its field number in
//! the category message, and every field of it and of the messages it contains (number, name,
//! type). Consumers in other services rely on exactly that.
//!
//! The test reads the contract from the compiled `.proto` descriptors and compares:
//! - a pinned line that is gone (an event or field removed, renamed, renumbered, retyped) is a
//!   break for consumers and fails, whatever else changed;
//! - a new line (an event or a field added) is compatible, but must be pinned on purpose:
//!   `ORDERFLOW_WRITE_CONTRACTS=1 cargo test -p event-schemas` appends it, then commit the file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use event_schemas::{EVENT_SCHEMAS, Service};
use prost::Message as _;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

const WRITE_CONTRACTS: &str = "ORDERFLOW_WRITE_CONTRACTS";

fn descriptors() -> FileDescriptorSet {
    FileDescriptorSet::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..])
        .expect("the build's descriptor set")
}

fn message<'a>(set: &'a FileDescriptorSet, name: &str) -> &'a DescriptorProto {
    set.file
        .iter()
        .flat_map(|file| &file.message_type)
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("no message {name} in the .proto files"))
}

/// A field's type as a contract line says it: `string`, `int64`, `Money`, `repeated OrderLine`.
fn field_type(field: &prost_types::FieldDescriptorProto) -> String {
    let base = match field.r#type() {
        Type::Message | Type::Enum => field.type_name().rsplit('.').next().unwrap_or_default().to_owned(),
        other => format!("{other:?}").to_lowercase(),
    };
    if field.label() == Label::Repeated {
        format!("repeated {base}")
    } else {
        base
    }
}

/// The lines of `message`'s fields, and of the messages they contain (each once).
fn fields(set: &FileDescriptorSet, name: &str, seen: &mut BTreeSet<String>, lines: &mut Vec<String>) {
    if !seen.insert(name.to_owned()) {
        return;
    }
    let message = message(set, name);
    for field in &message.field {
        lines.push(format!(
            "  {name}.{} = {}: {}",
            field.name(),
            field.number(),
            field_type(field)
        ));
    }
    for field in &message.field {
        if field.r#type() == Type::Message {
            let inner = field.type_name().rsplit('.').next().unwrap_or_default().to_owned();
            fields(set, &inner, seen, lines);
        }
    }
}

/// The contract of `service`, as the code defines it now.
fn contract(service: Service) -> Vec<String> {
    let set = descriptors();
    let mut lines = Vec::new();
    let mut seen = BTreeSet::new();
    for category in service.categories() {
        let envelope = format!("{}Event", capitalized(category.name()));
        let oneof = message(&set, &envelope);
        lines.push(format!("topic {}: {envelope}", category.topic()));
        for schema in EVENT_SCHEMAS.iter().filter(|s| s.category == *category) {
            let (_, case) = schema
                .event_type
                .split_once('.')
                .expect("event types are category.name");
            let field = oneof
                .field
                .iter()
                .find(|f| f.name() == case)
                .unwrap_or_else(|| panic!("{envelope} has no case {case} for {}", schema.event_type));
            let payload = field.type_name().rsplit('.').next().unwrap_or_default();
            lines.push(format!(
                "event {} v{}: {envelope}.{case} = {}: {payload}",
                schema.event_type,
                schema.schema_version,
                field.number()
            ));
            fields(&set, payload, &mut seen, &mut lines);
        }
    }
    lines
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn contract_path(service: Service) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contracts")
        .join(format!("{service}.txt"))
}

const HEADER: &str = "# What this service publishes: its topics, event types and their fields. Pinned by\n\
# event-schemas/tests/contract/published.rs: never change or remove a line (consumers rely on it);\n\
# a new event or field adds lines.\n";

#[test]
fn every_service_publishes_what_its_contract_pins() {
    for service in Service::ALL {
        let path = contract_path(service);
        let now = contract(service);
        let pinned_text = std::fs::read_to_string(&path).unwrap_or_default();
        let pinned: Vec<&str> = pinned_text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .collect();
        let current: BTreeSet<&str> = now.iter().map(String::as_str).collect();
        let gone: Vec<&&str> = pinned.iter().filter(|line| !current.contains(**line)).collect();
        assert!(
            gone.is_empty(),
            "the {service} service no longer publishes what {} pins, which breaks its consumers:\n{}\n\
             Add a new event type or field instead (field numbers and type names are never reused).",
            path.display(),
            gone.iter().map(|l| format!("  - {l}")).collect::<Vec<_>>().join("\n")
        );
        let pinned_set: BTreeSet<&str> = pinned.iter().copied().collect();
        let added: Vec<&String> = now.iter().filter(|line| !pinned_set.contains(line.as_str())).collect();
        if added.is_empty() {
            continue;
        }
        assert!(
            std::env::var(WRITE_CONTRACTS).as_deref() == Ok("1"),
            "the {service} service publishes more than {} pins:\n{}\nIf that is meant, run \
             `{WRITE_CONTRACTS}=1 cargo test -p event-schemas` and commit the file.",
            path.display(),
            added.iter().map(|l| format!("  + {l}")).collect::<Vec<_>>().join("\n")
        );
        let mut text = if pinned_text.is_empty() {
            HEADER.to_owned()
        } else {
            pinned_text.clone()
        };
        for line in added {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::create_dir_all(path.parent().expect("a directory")).expect("create contracts/");
        std::fs::write(&path, text).expect("write the contract");
    }
}

#[test]
fn every_event_type_is_one_services() {
    for schema in EVENT_SCHEMAS {
        let owners: Vec<Service> = Service::ALL
            .into_iter()
            .filter(|s| s.categories().contains(&schema.category))
            .collect();
        assert_eq!(owners.len(), 1, "{}: published by {owners:?}", schema.event_type);
    }
}
