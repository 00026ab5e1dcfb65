//! `relay`: publishes a PostgreSQL event store's global log to Kafka (one relay publishes at a
//! time across every process; a standby takes over when the leader dies). The same flags as
//! `orderflow relay`; every flag is also an environment variable and a key of the `[relay]`
//! section of the configuration file of `--config`.

use clap::Parser;
use relay::cli::RelayArgs;

/// orderflow's relay: the event store is the outbox, this publishes it to Kafka.
#[derive(Debug, Parser)]
#[command(name = "relay", version, about)]
struct Args {
    #[command(flatten)]
    relay: RelayArgs,
}

/// glibc's allocator took a fifth of a busy process's CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let args: Args = service_kit::parse("relay");
    relay::cli::run(args.relay, service_kit::cancel_on_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/orderflow.example.toml");

    #[test]
    fn the_example_configuration_documents_every_flag_and_configures_the_relay() {
        let args: Args = service_kit::parse_documented_example(EXAMPLE, "relay", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            args.relay.database_url,
            "postgres://orders@postgres:5432/orderflow_orders"
        );
        assert_eq!(args.relay.kafka_brokers, "kafka:19092");
    }
}
