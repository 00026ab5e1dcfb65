//! Sets `cfg(kurrentdb_server)` when `KURRENTDB_URL` is set, so that the tests against a KurrentDB
//! server (`tests/contract.rs` and the server tests of `src/lib.rs`) exist only when there is a
//! server to run them against: without one they are not compiled at all, rather than compiled
//! into tests that pass having checked nothing.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kurrentdb_server)");
    println!("cargo::rerun-if-env-changed=KURRENTDB_URL");
    if std::env::var_os("KURRENTDB_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=kurrentdb_server");
    }
}
