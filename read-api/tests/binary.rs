//! The `read-api` binary as an operator runs it: it refuses to start with authentication on and
//! no token; with one, it serves `/health` to anyone and the queries to the token's holder
//! only, never writing the token to its log; SIGTERM (what `docker stop` and `scripts/dev-up
//! down` send) drains it and ends it with success rather than killing it.
#![allow(clippy::unwrap_used)]

use std::io::Read as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_read_api_cleanly() {
    let db = testkit::postgres::fresh_database().await;
    // The control tables `/v1/projections` reads (the projections create them, not read-api).
    projections::ReadDb::connect(&db.url, 1)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = std::env::temp_dir().join(format!("{}.log", testkit::unique_name("read-api")));
    let secret = "read-api-test-secret-3e9a0c6d51b7";
    let token = format!("viewer:read:{}", service_kit::auth::hash_token(secret));
    let mut child = Command::new(env!("CARGO_BIN_EXE_read-api"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--read-db-url", &db.url])
        .args(["--token", &token])
        .env_remove("ORDERFLOW_TOKENS")
        .env_remove("ORDERFLOW_NO_AUTH")
        .env("RUST_LOG", "debug")
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
    let get = |path: &str, token: Option<&str>| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let authorization = token.map_or_else(String::new, |t| format!("authorization: Bearer {t}\r\n"));
        std::io::Write::write_all(
            &mut stream,
            format!("GET {path} HTTP/1.1\r\nhost: x\r\n{authorization}connection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = get("/health", None);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = get("/v1/projections", None);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let wrong = "not-the-read-api-secret-7b1f";
    let answer = get("/v1/projections", Some(wrong));
    assert!(
        answer.starts_with("HTTP/1.1 401") && !answer.contains(wrong),
        "{answer}"
    );
    let answer = get("/v1/projections", Some(secret));
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
    let log = log();
    for secret in [secret, wrong, &service_kit::auth::hash_token(secret)] {
        assert!(!log.contains(secret), "the log holds a token or its hash:\n{log}");
    }
    assert!(
        log.contains("viewer"),
        "the token's name is logged, to say who may read:\n{log}"
    );
}

#[test]
fn without_a_token_it_refuses_to_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_read-api"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--read-db-url",
            "postgres://reader@127.0.0.1:1/nothing",
        ])
        .env_remove("ORDERFLOW_TOKENS")
        .env_remove("ORDERFLOW_NO_AUTH")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no token is configured") && stderr.contains("--no-auth"),
        "{stderr}"
    );
}
