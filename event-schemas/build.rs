//! Compiles `proto/orderflow/v1/*.proto` into Rust with prost, using protox as a pure-Rust
//! protobuf compiler so that no system `protoc` is needed.

use std::error::Error;

/// The include root: imports are written relative to it (`orderflow/v1/money.proto`).
const PROTO_ROOT: &str = "proto";

/// Every file of the `orderflow.v1` package. prost writes the package to `orderflow.v1.rs`.
const PROTO_FILES: &[&str] = &[
    "orderflow/v1/money.proto",
    "orderflow/v1/customer.proto",
    "orderflow/v1/product.proto",
    "orderflow/v1/order.proto",
    "orderflow/v1/payment.proto",
    "orderflow/v1/saga.proto",
    "orderflow/v1/envelope.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // A directory makes cargo rerun this script when any file below it changes (or is added).
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }

    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    // The descriptors themselves too: the contract tests read every message's fields from them.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
