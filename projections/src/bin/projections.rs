//! `projections`: the projection workers of the distributed deployment, and the projections'
//! other commands (`rebuild`, `list`, `status`). The same commands and flags as `orderflow
//! projections ...`, and the same sections of the configuration file (`[orderflow]`,
//! `[projections]`, `[projections.run]`, ...), without the rest of the CLI linked in.

use projections::cli::ProjectionsCommand;

/// glibc's allocator took a fifth of a busy process's CPU (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let command: ProjectionsCommand = service_kit::parse_subcommand("orderflow", "projections");
    projections::cli::run(command, service_kit::cancel_on_signal()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/orderflow.example.toml");

    fn parse(args: &[&str]) -> Result<ProjectionsCommand, clap::Error> {
        service_kit::try_parse_subcommand_from("orderflow", "projections", args, None)
    }

    /// The binary reads `[orderflow]`, `[projections]` and `[projections.run]` as `orderflow
    /// projections run` does, and refuses what it refuses.
    #[test]
    fn the_binary_reads_the_sections_of_orderflow_projections() {
        let parsed = parse(&["--config", EXAMPLE, "run"]).unwrap_or_else(|e| panic!("{e}"));
        let ProjectionsCommand::Run(run) = parsed else {
            panic!("`run` parses as the run command")
        };
        let debug = format!("{run:?}");
        assert!(debug.contains("kafka:19092"), "[projections.run] applies: {debug}");
        assert!(debug.contains("orderflow.projections."), "{debug}");
        assert!(parse(&["--config", EXAMPLE, "rebuild", "order_dashboard"]).is_ok());
        assert!(parse(&["--config", EXAMPLE, "status"]).is_ok());
        assert!(parse(&["run", "--no-such-flag"]).is_err());
        assert!(parse(&[]).is_err(), "a subcommand is required");

        // Keys of other `orderflow` subcommands in [orderflow] are theirs; a typo in a section of
        // the projections' own is still an error.
        let dir = std::env::temp_dir().join(format!("projections-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let typo = dir.join("typo.toml");
        std::fs::write(
            &typo,
            "[orderflow]\ndata-dir = \"x\"\nread-db-url = \"sqlite://x.db\"\n[projections.run]\nbatch-sise = 3\n",
        )
        .expect("write the file");
        let typo = typo.to_str().expect("a UTF-8 path");
        let e = parse(&["--config", typo, "run"]).expect_err("a typo is refused");
        assert!(e.to_string().contains("batch-sise"), "{e}");
        let shared = dir.join("shared.toml");
        std::fs::write(
            &shared,
            "[orderflow]\ndata-dir = \"x\"\nread-db-url = \"sqlite://x.db\"\n",
        )
        .expect("write the file");
        let shared = shared.to_str().expect("a UTF-8 path");
        assert!(
            parse(&["--config", shared, "status"]).is_ok(),
            "data-dir is another subcommand's"
        );
    }
}
