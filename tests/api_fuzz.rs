//! The embedded `orderflow serve`'s one port fuzzed against its own `/openapi.json` by
//! schemathesis (`scripts/api-fuzz`): no 5xx, every request valid by the document accepted,
//! every invalid one refused, every answer as documented. The distributed services are fuzzed,
//! with their tokens, by the deployment test (`tests/dev_up.rs`).

use std::time::Duration;

use anyhow::ensure;

mod support;

use support::{Api, Server, free_port, fuzz, operations_tested};

/// How long schemathesis generates requests (its phases share the budget).
const FUZZ_SECONDS: u32 = 75;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_api_keeps_its_openapi_document() -> anyhow::Result<()> {
    let root = support::scratch("api_fuzz");
    let port = free_port();
    let api = Api::new(port);
    let mut server = Server::start(&["serve"], &root.join("data"), port, root.join("serve.log"));
    api.wait_ready(&mut server, Duration::from_secs(60)).await?;
    let base = api.base().to_owned();
    let report = tokio::task::spawn_blocking(move || fuzz(&base, &["--seconds", &FUZZ_SECONDS.to_string()])).await??;
    ensure!(server.running(), "serve died while fuzzed:\n{}", server.log());
    // A run that tested nothing would pass too: every operation of the document was exercised.
    let (tested, total) = operations_tested(&report)?;
    ensure!(
        tested == total && total >= 45,
        "schemathesis tested {tested} of {total} operations:\n{report}"
    );
    let status = server.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "serve ended with {status}:\n{}", server.log());
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
