//! The `write-side` binary at start: a store that holds another service's streams (the one
//! store of old, from before every service had its own, or another service's store given by
//! mistake) is refused, naming the command that splits it; its own store starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_store::{EventStore, ExpectedVersion, NewEvent, PgEventStore, StoreOptions};
use uuid::Uuid;

fn write_side(service: &str, database_url: &str, port: u16) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_write-side"))
        .args(["--service", service, "--database-url", database_url])
        .args(["--no-auth", "--no-relay", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--replica-db-url",
            database_url,
            "--inventory-url",
            "http://127.0.0.1:9",
        ])
        .args(["--customers-url", "http://127.0.0.1:9"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start write-side")
}

#[tokio::test]
async fn a_store_with_another_services_streams_is_refused() {
    let database = testkit::postgres::fresh_database().await;
    let pool = database.pool(2).await;
    PgEventStore::migrate(&pool).await.unwrap();
    let store = PgEventStore::open(pool, StoreOptions::default()).await.unwrap();
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "customer.registered".into(),
        schema_version: 1,
        payload: Vec::new(),
        occurred_at: chrono::Utc::now(),
        metadata: Default::default(),
    };
    let customer = format!("customer-{}", Uuid::now_v7());
    store
        .append(&customer, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();

    // The orders service on a store that holds a customer's stream: refused, nothing served.
    let refused = write_side("orders", &database.url, free_port())
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains(&customer), "names the stream: {stderr}");
    assert!(stderr.contains("orderflow split-store"), "names the command: {stderr}");
    assert!(!stderr.contains("postgres://"), "no URL: {stderr}");

    // The customers service on the same store: its own; it serves.
    let port = free_port();
    let mut own = write_side("customers", &database.url, port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(port) {
        assert!(
            own.try_wait().unwrap().is_none(),
            "the customers service stopped on its own store"
        );
        assert!(
            Instant::now() < deadline,
            "the customers service did not serve within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    own.kill().unwrap();
    own.wait().unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET /health` on `port` answers 200.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}
