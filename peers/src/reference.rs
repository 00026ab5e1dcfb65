//! The reference figures measured in the same run: the one-row ceiling (one `INSERT` of one row
//! per transaction, the server's commit rate) from sqlx through the same harness, and from
//! `pgbench` when it is on the PATH (as `scripts/pgbench-ceiling` runs it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

use crate::harness::Outcome;
use crate::pg::Scratch;

/// The ceiling's table and row: `scripts/pgbench-ceiling`'s.
pub(crate) const CEILING_TABLE: &str =
    "CREATE TABLE rows (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bytea NOT NULL)";
pub(crate) const CEILING_PAYLOAD: [u8; 32] = [0x5a; 32];

/// A fresh database with the ceiling's table, and a pool of `writers` + 1 connections on it.
pub(crate) async fn open_ceiling(scratch: &mut Scratch, writers: usize) -> anyhow::Result<(String, sqlx::PgPool)> {
    let name = scratch.create("ceiling").await?;
    scratch.server.execute(&name, CEILING_TABLE).await?;
    let pool = PgPoolOptions::new()
        .max_connections(writers as u32 + 1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&scratch.server.url_of(&name))
        .await?;
    Ok((name, pool))
}

/// One one-row transaction.
pub(crate) async fn insert_row(pool: &sqlx::PgPool) -> Outcome {
    match sqlx::query("INSERT INTO rows (payload) VALUES ($1)")
        .bind(&CEILING_PAYLOAD[..])
        .execute(pool)
        .await
    {
        Ok(_) => Outcome::ok(1),
        Err(e) => Outcome::failed(0, e),
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pgbench {
    pub(crate) clients: usize,
    pub(crate) seconds: u64,
    pub(crate) transactions_per_sec: f64,
    pub(crate) latency_avg_ms: Option<f64>,
    /// Rows the table holds after the run, and the transactions pgbench reports.
    pub(crate) rows: i64,
    pub(crate) transactions: Option<i64>,
}

/// `pgbench` on the PATH, if any.
pub(crate) fn pgbench_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("pgbench"))
        .find(|p| p.is_file())
}

/// pgbench, `clients` clients, one-row transactions for `seconds`, on a fresh database.
pub(crate) async fn pgbench(
    scratch: &mut Scratch,
    program: &std::path::Path,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Pgbench> {
    let name = scratch.create("pgbench").await?;
    scratch.server.execute(&name, CEILING_TABLE).await?;
    let script = std::env::temp_dir().join(format!("{name}.sql"));
    std::fs::write(
        &script,
        "INSERT INTO rows (payload) VALUES ('\\x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a');\n",
    )?;
    let output = tokio::process::Command::new(program)
        .arg("-n")
        .args(["-c", &clients.to_string()])
        .args(["-j", "2"])
        .args(["-T", &seconds.to_string()])
        .arg("-f")
        .arg(&script)
        .arg(scratch.server.url_of(&name))
        .output()
        .await
        .context("running pgbench")?;
    let _ = std::fs::remove_file(&script);
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(output.status.success(), "pgbench failed: {text}");
    let tps = field(&text, "tps = ").context("no `tps =` in pgbench's output")?;
    let latency = field(&text, "latency average = ");
    let transactions = field(&text, "number of transactions actually processed: ").map(|t| t as i64);
    let rows = scratch.server.scalar_i64(&name, "SELECT count(*) FROM rows").await?;
    Ok(Pgbench {
        clients,
        seconds,
        transactions_per_sec: tps,
        latency_avg_ms: latency,
        rows,
        transactions,
    })
}

/// The number after `prefix` on the first line that has it.
fn field(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix(prefix)?;
        let number: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
        number.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_output() {
        let out = "transaction type: x.sql\nnumber of transactions actually processed: 71234\n\
                   latency average = 8.987 ms\ntps = 7123.456789 (without initial connection time)\n";
        assert_eq!(field(out, "tps = "), Some(7123.456789));
        assert_eq!(field(out, "latency average = "), Some(8.987));
        assert_eq!(field(out, "number of transactions actually processed: "), Some(71234.0));
        assert_eq!(field(out, "nothing "), None);
    }
}
