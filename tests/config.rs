//! The configuration file of `--config` / `ORDERFLOW_CONFIG`, with the real `orderflow` binary:
//! a flag wins over its variable, the variable over the file, the file over the built-in
//! default, and within the file the most specific section wins; a typo in the file is an error
//! naming the key and the file, before anything runs.
//!
//! Which store `orderflow state` read is visible in its error for an unknown stream ("no stream
//! ... in the event store (SQLite <path>)"), so each candidate store is an empty one made by
//! `orderflow migrate`, and the probe asks each for a stream that none has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use uuid::Uuid;

mod support;
use support::{orderflow, scratch, stderr};

/// The store `orderflow <command> <unknown stream>` read: the path in its error.
fn store_read(dir: &Path, command: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let stream = format!("order-{}", Uuid::now_v7());
    let mut all = vec![command, stream.as_str()];
    all.extend_from_slice(args);
    let output = orderflow(dir, &all, env);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    let Some((_, rest)) = message.split_once("in the event store (SQLite ") else {
        panic!("not an unknown-stream error: {message}")
    };
    rest.split_once(')').map(|(path, _)| path.to_owned()).unwrap()
}

/// Empty, migrated SQLite stores (the orders service's) at these paths under `dir`.
fn stores(dir: &Path, paths: &[&str]) {
    for path in paths {
        let output = orderflow(dir, &["migrate", "--service", "orders", "--event-store-url", path], &[]);
        assert!(output.status.success(), "migrate {path}: {}", stderr(&output));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_flag_beats_its_variable_beats_the_file_beats_the_default() {
    let dir = scratch("config");
    stores(&dir, &["data/orders.db", "file.db", "section.db", "env.db", "flag.db"]);
    // The built-in default: orderflow-data/orders.db, which is not there.
    let output = orderflow(&dir, &["state", &format!("order-{}", Uuid::now_v7())], &[]);
    assert!(
        stderr(&output).contains("no event store at orderflow-data/orders.db"),
        "{}",
        stderr(&output)
    );

    // The file over the default.
    let data_dir = write(&dir, "data-dir.toml", "[orderflow]\ndata-dir = \"data\"\n");
    assert_eq!(
        store_read(&dir, "state", &["--config", &data_dir], &[]),
        "data/orders.db"
    );

    // Within the file, [state] over [orderflow]; `events` has no section, so [orderflow].
    // Another program's section ([write-side]) is that program's business.
    let config = write(
        &dir,
        "orderflow.toml",
        "[orderflow]\nevent-store-url = \"file.db\"\n\n[state]\nevent-store-url = \"section.db\"\n\n\
         [write-side]\nlisten = \"127.0.0.1:8081\"\ndatabase-max-connections = 4\n",
    );
    assert_eq!(store_read(&dir, "state", &["--config", &config], &[]), "section.db");
    assert_eq!(store_read(&dir, "events", &["--config", &config], &[]), "file.db");
    let inline = format!("--config={config}");
    assert_eq!(store_read(&dir, "events", &[&inline], &[]), "file.db");
    // The file from ORDERFLOW_CONFIG rather than --config.
    assert_eq!(
        store_read(&dir, "state", &[], &[("ORDERFLOW_CONFIG", &config)]),
        "section.db"
    );

    // The variable over the file, the flag over the variable.
    let env = [
        ("ORDERFLOW_CONFIG", config.as_str()),
        ("ORDERFLOW_EVENT_STORE_URL", "env.db"),
    ];
    assert_eq!(store_read(&dir, "state", &[], &env), "env.db");
    assert_eq!(
        store_read(&dir, "state", &["--event-store-url", "flag.db"], &env),
        "flag.db"
    );
}

#[test]
fn help_shows_the_files_values_but_not_its_secrets() {
    let dir = scratch("config");
    let config = write(
        &dir,
        "secret.toml",
        "[state]\nevent-store-url = \"postgres://reader:hunter2@db.internal:5432/orderflow\"\ndata-dir = \"from-the-file\"\n",
    );
    let output = orderflow(&dir, &["--config", &config, "state", "--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(help.contains("[default: from-the-file]"), "{help}");
    assert!(!help.contains("hunter2") && !help.contains("db.internal"), "{help}");
    assert!(
        help.contains("--config <FILE>") && help.contains("ORDERFLOW_CONFIG"),
        "{help}"
    );
}

#[test]
fn a_bad_file_is_refused_before_anything_runs() {
    let dir = scratch("config");
    let stream = format!("order-{}", Uuid::now_v7());
    let refused = |name: &str, text: &str, expected: &[&str]| {
        let path = write(&dir, name, text);
        let output = orderflow(&dir, &["--config", &path, "state", &stream], &[]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {message}");
        for needle in expected {
            assert!(message.contains(needle), "{name}: no `{needle}` in {message}");
        }
        assert!(
            !message.contains("reading the event store"),
            "{name}: it ran: {message}"
        );
        message
    };

    let message = refused(
        "typo.toml",
        "[state]\nevent-store-ulr = \"postgres://u:hunter2@db/x\"\n",
        &[
            "unknown key `event-store-ulr` in [state]",
            "typo.toml",
            "did you mean `event-store-url`?",
        ],
    );
    assert!(!message.contains("hunter2"), "{message}");
    refused(
        "section.toml",
        "[sate]\nat = 3\n",
        &["unknown section [sate]", "section.toml"],
    );
    // A key at the top of the file is for every program reading it: a write-side flag there
    // is no flag of orderflow's.
    refused(
        "top.toml",
        "database-max-connections = 4\n",
        &["unknown key `database-max-connections` at the top level", "top.toml"],
    );
    refused("value.toml", "[state]\nat = \"soon\"\n", &["--at"]);
    let message = refused(
        "syntax.toml",
        "[state]\nevent-store-url = postgres://u:hunter2@db/x\n",
        &["syntax.toml is not valid TOML: line 2"],
    );
    assert!(!message.contains("hunter2"), "{message}");

    let output = orderflow(&dir, &["state", &stream], &[("ORDERFLOW_CONFIG", "missing.toml")]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("cannot read the configuration file missing.toml"),
        "{}",
        stderr(&output)
    );
}
