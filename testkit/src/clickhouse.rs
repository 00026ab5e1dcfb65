//! A fresh ClickHouse database per test, over ClickHouse's HTTP interface.
//!
//! The helpers speak just enough HTTP/1.1 over a [`tokio::net::TcpStream`] to send one statement
//! and read its answer, so testkit needs no HTTP client. The code under test uses the real
//! `clickhouse` client; these helpers only prepare and inspect its server.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a statement may take before the helper fails the test.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The server's HTTP URL: `ORDERFLOW_TEST_CLICKHOUSE_URL`, or the loopback server of
/// `scripts/services`. User `default` with no password.
pub fn url() -> String {
    std::env::var("ORDERFLOW_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// Creates an empty database with a unique name ([`crate::database_name`]) and returns its name.
/// It is left behind on purpose (a failed test's data is worth reading) until `scripts/test`
/// runs again half an hour later or more (`scripts/clean-test-databases`).
pub async fn fresh_database() -> String {
    let name = crate::database_name();
    // The name is generated from [a-z0-9_] only, so it is safe to splice into DDL.
    query(&format!("CREATE DATABASE {name}")).await;
    name
}

/// Runs one statement and returns the body of the answer (the rows in ClickHouse's default
/// `TabSeparated` format for a `SELECT`, empty for DDL). Panics with the server's message when
/// the statement fails, and with a message naming [`crate::START_SERVICES`] when the server
/// cannot be reached.
pub async fn query(sql: &str) -> String {
    let url = url();
    let authority = authority(&url);
    let stream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => panic!(
            "cannot reach ClickHouse at {url}: {e}\nstart it with `{}`",
            crate::START_SERVICES
        ),
        Err(_) => panic!(
            "ClickHouse at {url} did not accept a connection in 10 s\nstart it with `{}`",
            crate::START_SERVICES
        ),
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, post(stream, authority, sql))
        .await
        .unwrap_or_else(|_| panic!("ClickHouse at {url} did not answer in {} s: {sql}", TIMEOUT.as_secs()))
        .unwrap_or_else(|e| panic!("talk to ClickHouse at {url}: {e}"));
    if status != 200 {
        panic!("ClickHouse at {url} answered {status} to `{sql}`: {}", body.trim());
    }
    body
}

/// `host:port` of an `http://host:port[/]` URL.
fn authority(url: &str) -> &str {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("ORDERFLOW_TEST_CLICKHOUSE_URL={url} must be a plain http://host:port URL"));
    rest.trim_end_matches('/')
}

/// Sends `sql` as the body of `POST /` and returns the status code and the decoded body.
async fn post(mut stream: TcpStream, host: &str, sql: &str) -> std::io::Result<(u16, String)> {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{sql}",
        sql.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Splits an HTTP/1.1 response into its status code and body, undoing chunked encoding.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split =
        find(raw, b"\r\n\r\n").ok_or_else(|| format!("no end of headers in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    String::from_utf8(body)
        .map(|body| (status, body))
        .map_err(|e| format!("answer is not UTF-8: {e}"))
}

/// Decodes a `Transfer-Encoding: chunked` body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = find(rest, b"\r\n").ok_or_else(|| "truncated chunk header".to_owned())?;
        let size_line = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|e| format!("bad chunk size {size_hex:?}: {e}"))?;
        if size == 0 {
            return Ok(body);
        }
        let after = &rest[eol + 2..];
        let chunk = after
            .get(..size)
            .ok_or_else(|| format!("truncated chunk of {size} bytes"))?;
        body.extend_from_slice(chunk);
        rest = after
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or_else(|| "missing CRLF after a chunk".to_owned())?;
    }
}

/// The index of the first occurrence of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_chunked_answer() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n1\t\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(raw).expect("a valid response"),
            (200, "1\tabc".to_owned())
        );
    }

    #[test]
    fn parses_a_plain_error_answer() {
        let raw = b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 9\r\n\r\nCode: 62.";
        assert_eq!(
            parse_response(raw).expect("a valid response"),
            (500, "Code: 62.".to_owned())
        );
    }

    #[tokio::test]
    async fn fresh_database_is_empty_and_takes_the_sql_orderflow_uses() {
        let db = fresh_database().await;
        assert_eq!(query(&format!("SHOW TABLES FROM {db}")).await, "");
        query(&format!(
            "CREATE TABLE {db}.t (id UInt64, v String) ENGINE = ReplacingMergeTree ORDER BY id"
        ))
        .await;
        query(&format!("INSERT INTO {db}.t VALUES (1, 'a'), (1, 'b'), (2, 'é')")).await;
        assert_eq!(query(&format!("SELECT count() FROM {db}.t FINAL")).await, "2\n");
        assert_ne!(fresh_database().await, db, "database names repeat");
    }

    #[tokio::test]
    #[should_panic(expected = "Code: 60")]
    async fn a_failing_statement_panics_with_the_server_message() {
        query("SELECT * FROM system.no_such_table").await;
    }

    #[test]
    fn takes_host_and_port_from_the_url() {
        assert_eq!(authority("http://127.0.0.1:8123/"), "127.0.0.1:8123");
    }
}
