//! The `read-api` binary as an operator runs it: it serves, and SIGTERM (what `docker stop` and
//! `scripts/dev-up down` send) drains it and ends it with success rather than killing it.
#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_read_api_cleanly() {
    let db = testkit::postgres::fresh_database().await;
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = std::env::temp_dir().join(format!("{}.log", testkit::unique_name("read-api")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_read-api"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--read-db-url", &db.url])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "read-api exited early:\n{}", log());
        assert!(Instant::now() < deadline, "read-api never listened:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut health = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(
        &mut health,
        b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    health.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "SIGTERM ended read-api with {status}:\n{}", log());
    assert!(
        log().contains("read-api stopped"),
        "no clean stop in the log:\n{}",
        log()
    );
}
