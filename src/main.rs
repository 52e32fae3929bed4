//! The `quakestream` binary: parses the command line, sets up logging, runs the library.

use std::process::ExitCode;

use clap::Parser;
use quakestream::cli::Cli;
use tracing_subscriber::EnvFilter;

/// Log filter when neither QUAKESTREAM_LOG nor RUST_LOG is set.
const DEFAULT_LOG: &str = "warn,quakestream=info";

fn main() -> ExitCode {
    let cli = Cli::parse();

    let filter = std::env::var("QUAKESTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = quakestream::shutdown::on_signals()
            .map_err(quakestream::Error::io("<signal handlers>"))?;
        quakestream::command::run(cli, shutdown).await
    });
    // Background tasks (the broker's storage workers, librdkafka threads) must not delay exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
