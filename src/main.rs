//! The `quakestream` binary: parses the command line, sets up logging, runs the library.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicUsize, Ordering},
};

use clap::Parser;
use quakestream::cli::Cli;
use tracing::{Event, Level, Subscriber, field::Field};
use tracing_subscriber::{EnvFilter, Layer, layer::Context, prelude::*};

/// Log filter when neither QUAKESTREAM_LOG nor RUST_LOG is set. Under it, the embedded broker's
/// known-harmless errors are left out too ([`HideHarmless`]).
const DEFAULT_LOG: &str = "warn,quakestream=info";

fn main() -> ExitCode {
    let cli = Cli::parse();

    // A filter the user sets is taken as it is, so that it shows everything it asks for.
    let chosen = std::env::var("QUAKESTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok());
    let quiet = chosen.is_none().then(HideHarmless::default);
    tracing_subscriber::registry()
        .with(chosen.unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG)))
        .with(quiet)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
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

/// Leaves out the ERROR events that tansu, the embedded broker, logs while a healthy pipeline
/// runs, for requests that are answered as they should be or that quakestream makes again
/// another way. Each is matched by its target and its whole error, not by target alone, so a
/// storage failure that matters still shows. docs/configuration.md ("Logging") lists them and
/// says how to see them: set QUAKESTREAM_LOG, which turns this off.
///
/// - `tansu_storage::lite: err=Api(TopicAlreadyExists)`: components create the topics they need
///   side by side at start; all but the first are told the topic exists, which is what they
///   want (`Admin::ensure_topics`).
/// - `tansu_service::stream` and `tansu_broker::broker`: `err=Storage(SerdeJson(… expected
///   struct GroupDetail …))`: tansu 0.6's SQLite storage cannot answer DescribeGroups for a
///   group with members (it reads the stored group as a JSON string). librdkafka's group
///   listing asks it; quakestream's own clients of the embedded broker list groups with
///   ListGroups v1 instead (`Admin::group_names`), but clients given `--brokers` pointing at a
///   separate `quakestream broker` still ask.
/// - `tansu_storage::lite: err=LibSql(NullValue) group_id=…`, and the same failure once more from
///   each of `tansu_service::stream` and `tansu_broker::broker` as
///   `Storage(LibSql(NullValue))`: the same DescribeGroups, for a group with no members yet (as
///   after a restart). Only as many of these two echoes are left out as storage lines were.
/// - `tansu_service::stream` and `tansu_broker::broker`: `err=Join(JoinError::Cancelled(…))`: a
///   request still in flight when `up` stops the broker at exit.
#[derive(Default)]
struct HideHarmless {
    /// Echoes still expected, from `tansu_service::stream` and `tansu_broker::broker`.
    echoes: [AtomicUsize; 2],
}

/// The connection-level targets that log a failed request once more.
const ECHOES: [&str; 2] = ["tansu_service::stream", "tansu_broker::broker"];

impl<S: Subscriber> Layer<S> for HideHarmless {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::ERROR || !meta.target().starts_with("tansu") {
            return true;
        }
        let mut fields = TansuError::default();
        event.record(&mut fields);
        if fields.other {
            return true;
        }
        let err = fields.err.as_str();
        match meta.target() {
            "tansu_storage::lite" if !fields.group_id => err != "Api(TopicAlreadyExists)",
            "tansu_storage::lite" => {
                if err != "LibSql(NullValue)" {
                    return true;
                }
                for pending in &self.echoes {
                    pending.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            target => {
                let Some(echo) = ECHOES.iter().position(|t| *t == target) else {
                    return true;
                };
                let group_detail = err.starts_with("Storage(SerdeJson(")
                    && err.contains("expected struct GroupDetail");
                if group_detail || err.starts_with("Join(JoinError::Cancelled(") {
                    return false;
                }
                // One left out per storage line left out before it, and no more.
                err != "Storage(LibSql(NullValue))"
                    || self.echoes[echo]
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_err()
            }
        }
    }
}

/// The fields of a tansu error event: `err` (or `error`) as its `Debug` text, whether it names
/// a `group_id`, and whether it has any other field.
#[derive(Default)]
struct TansuError {
    err: String,
    group_id: bool,
    other: bool,
}

impl tracing::field::Visit for TansuError {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "err" | "error" => self.err = format!("{value:?}"),
            "group_id" => self.group_id = true,
            _ => self.other = true,
        }
    }
}
