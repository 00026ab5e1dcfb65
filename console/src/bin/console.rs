//! The `console` binary: the operations console of the distributed deployment, one origin in
//! front of the read API, the services and the projections worker (see the crate's docs).
//!
//! Every flag is also an environment variable and a key of the `[console]` section of the
//! configuration file of `--config` (command line > variable > file > default).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::middleware::from_fn_with_state;
use clap::Parser;
use service_kit::http::Edge;
use web_console::proxy::{self, Upstreams};

/// orderflow's operations console: serves the browser pages and forwards their reads to the
/// read API and the services, and rebuilds to the projections worker. It holds no credential:
/// the browser's token goes to each upstream as it came.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "ORDERFLOW_CONSOLE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The read API's base URL.
    #[arg(
        long,
        env = "ORDERFLOW_CONSOLE_READ_API_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    read_api_url: String,
    /// The base URL of the projections worker that serves rebuilds (`projections run --listen`).
    #[arg(long, env = "ORDERFLOW_CONSOLE_PROJECTIONS_URL")]
    projections_url: Option<String>,
    /// The customers service's base URL.
    #[arg(
        long,
        env = "ORDERFLOW_CONSOLE_CUSTOMERS_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    customers_url: String,
    /// The inventory service's base URL.
    #[arg(
        long,
        env = "ORDERFLOW_CONSOLE_INVENTORY_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    inventory_url: String,
    /// The orders service's base URL.
    #[arg(long, env = "ORDERFLOW_CONSOLE_ORDERS_URL", default_value = "http://127.0.0.1:8081")]
    orders_url: String,
    /// The payments service's base URL.
    #[arg(
        long,
        env = "ORDERFLOW_CONSOLE_PAYMENTS_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    payments_url: String,
    /// Longest a proxied request may take, in milliseconds.
    #[arg(long, env = "ORDERFLOW_CONSOLE_TIMEOUT_MS", default_value_t = 15_000)]
    timeout_ms: u64,
    #[command(flatten)]
    load: service_kit::http::LoadArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let args: Args = service_kit::parse("console");
    let timeout = Duration::from_millis(args.timeout_ms);
    let upstreams = Upstreams {
        read_api: args.read_api_url,
        projections: args.projections_url,
        customers: args.customers_url,
        inventory: args.inventory_url,
        orders: args.orders_url,
        payments: args.payments_url,
    };
    tracing::info!(?upstreams, "forwarding the console's requests");
    let app = proxy::router(upstreams).layer(from_fn_with_state(
        Edge {
            request_timeout: timeout,
            in_flight: Some(args.load.limit()),
        },
        service_kit::http::edge,
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let shutdown = service_kit::cancel_on_signal();
    service_kit::http::serve_on(
        listener,
        app,
        timeout + Duration::from_secs(1),
        shutdown.cancelled_owned(),
    )
    .await?;
    tracing::info!("console stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/orderflow.example.toml");

    #[test]
    fn the_example_configuration_documents_every_flag_and_configures_the_console() {
        let args: Args =
            service_kit::parse_documented_example(EXAMPLE, "console", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.listen, "0.0.0.0:8080".parse().expect("an address"));
        assert_eq!(args.read_api_url, "http://read-api:8082");
        assert_eq!(args.projections_url.as_deref(), Some("http://projections:8086"));
    }
}
