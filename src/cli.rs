//! The command line: raw flags, parsed by clap. Commands live in [`crate::command`].

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "A real-time earthquake data pipeline on Apache Kafka, in one binary.";

const LONG_ABOUT: &str = "\
A real-time earthquake data pipeline on Apache Kafka, in one binary.

With no Kafka cluster configured, quakestream runs its own embedded Kafka-compatible broker
(data in ./data/broker), so `quakestream up` needs no infrastructure. Point --brokers at a real
Kafka, Redpanda or MSK cluster and nothing else changes.

Quick start:
  quakestream up                                        # start the pipeline (leave it running)
  quakestream produce --topic mensajes-test --count 10  # in another terminal
  quakestream consume --topic mensajes-test --from-beginning

Configuration layers, each overriding the one before: built-in defaults, quakestream.toml (or
--config FILE), QUAKESTREAM_* environment variables, flags. `quakestream config` prints the result.";

#[derive(Debug, Parser)]
#[command(name = "quakestream", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// Config file (TOML). Default: ./quakestream.toml when it exists.
    #[arg(long, global = true, value_name = "FILE", env = "QUAKESTREAM_CONFIG")]
    pub config: Option<PathBuf>,

    /// Kafka bootstrap servers of an external cluster. Leave unset to use the embedded broker.
    #[arg(long, global = true, value_name = "HOST:PORT[,...]")]
    pub brokers: Option<String>,

    /// Directory for broker storage, component state, the lake and logs. Default: ./data
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every configured component in this process, and the embedded broker when no
    /// --brokers are configured. Prints where everything runs; Ctrl+C stops it cleanly.
    Up(UpArgs),

    /// Run only the embedded Kafka-compatible broker, in the foreground. Messages are kept in
    /// <data-dir>/broker and survive restarts.
    Broker(ListenArgs),

    /// Run one component alone, so a pipeline can be spread over processes and machines.
    Run(RunArgs),

    /// List, create and describe topics: partitions, end offsets, consumer group lag.
    #[command(subcommand)]
    Topics(TopicsCommand),

    /// Send test messages `{id, texto, timestamp}` keyed by id, printing a delivery report
    /// (partition and offset, or the error) for each. Creates the topic if it is missing.
    Produce(ProduceArgs),

    /// Print messages of a topic: partition, offset, key and value, one per line. Ctrl+C commits
    /// the group's offsets and exits.
    Consume(ConsumeArgs),

    /// Load history from the FDSN event service into the quakes topic: counted first, split
    /// under the service's 20,000-event limit, resumable (run the same command again after an
    /// interruption), deduplicated against what the topic already holds.
    Backfill(BackfillArgs),

    /// Print the effective configuration (all layers applied) as TOML, secrets redacted.
    Config,

    /// Serve recorded feed files over HTTP, one per request in name order (then the last one
    /// again, answering conditional requests with 304): an offline USGS for demos and tests.
    /// Point the source at it with `--usgs-url`.
    ReplayServer(ReplayArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// First origin time to load: 2024-01-15, 2024-01-15T10:30:00 (UTC) or RFC 3339.
    #[arg(long)]
    pub start: String,

    /// End of the range (exclusive). Default: now.
    #[arg(long)]
    pub end: Option<String>,

    /// Only events of at least this magnitude.
    #[arg(long, value_name = "M")]
    pub min_magnitude: Option<f64>,

    /// Only events updated since this time, deleted ones included (published with status
    /// "deleted"): a sweep for revisions of events that left the live feed.
    #[arg(long, value_name = "TIME")]
    pub updated_after: Option<String>,

    /// Base URL of the FDSN event service (backfill.url).
    #[arg(long, value_name = "URL")]
    pub fdsn_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Directory of `.json` / `.geojson` feed files.
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Address to serve on.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8090")]
    pub listen: String,
}

/// Source settings that can be given on the command line as well as in the config.
#[derive(Debug, Clone, Default, Args)]
pub struct SourceArgs {
    /// URL of the USGS feed to poll (usgs.url), e.g. a replay server's.
    #[arg(long, value_name = "URL")]
    pub usgs_url: Option<String>,

    /// Time between polls (usgs.interval), like "60s".
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Option<Duration>,

    /// The URL of the [[http]] source NAME, e.g. a replay server's (repeatable):
    /// `--http-url randomuser=http://127.0.0.1:8091/api/`.
    #[arg(long = "http-url", value_name = "NAME=URL")]
    pub http_url: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// Address the embedded broker listens on. Default: 127.0.0.1:9092 (broker.listen)
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
}

/// Web server settings that can be given on the command line as well as in the config.
#[derive(Debug, Clone, Default, Args)]
pub struct WebArgs {
    /// Address of the map, the pipeline monitor, the API and /metrics (web.listen). Default:
    /// 127.0.0.1:8080. Port 0 picks a free port (printed at start).
    #[arg(long = "web", value_name = "HOST:PORT")]
    pub web: Option<String>,
}

/// Processor settings that can be given on the command line as well as in the config.
#[derive(Debug, Clone, Default, Args)]
pub struct ProcessArgs {
    /// Print window results as tables (window.console) and alerts as boxes (alerts.console)
    /// on standard output.
    #[arg(long)]
    pub console: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub process: ProcessArgs,

    #[command(flatten)]
    pub web: WebArgs,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The component to run.
    pub component: Component,

    /// With `run http`: only the [[http]] source of this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Serve this component's counters in Prometheus text format at
    /// http://HOST:PORT/metrics (and /health), as `up` does on its web port. `run web` serves
    /// /metrics on its own address already.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,

    /// The flags `up` takes.
    #[command(flatten)]
    pub up: UpArgs,
}

/// Components that `run` can start alone. Sources, processors, sinks and the web dashboard join
/// this list as they are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// The embedded Kafka-compatible broker (same as `quakestream broker`).
    Broker,
    /// The USGS real-time feed source: polls the feed, publishes each new revision once.
    Usgs,
    /// The window processor: event-time windows over the quakes topic ([window]), results to
    /// earthquake-stats. Run several with the same window.group_id to share the work.
    Window,
    /// The alert processor: rules over the quakes topic ([alerts]), alerts to
    /// earthquake-alerts, the log file and webhooks.
    Alerts,
    /// The files sink: topics landed as Parquet, CSV or JSON Lines files in a local lake
    /// ([files], default <data-dir>/lake), exactly once.
    Files,
    /// The object-store sink: the same lake on S3, GCS or Azure ([object_store]).
    ObjectStore,
    /// The PostgreSQL sink: quakes and window results in a star schema ([postgres], url
    /// required), migrations applied at start.
    Postgres,
    /// The EMSC real-time WebSocket source ([emsc]): Quake records from seismicportal.eu.
    Emsc,
    /// The turnstile source ([turnstile]): an MTA file replayed as intervals, or synthetic.
    Turnstile,
    /// The JSON Lines source ([jsonl]): a file or standard input to a topic, one message per
    /// line, keyed by a field, exactly once.
    Jsonl,
    /// The [[http]] sources (randomuser, NASA APOD, any JSON API); `--name` picks one.
    Http,
    /// The web server ([web]): the live map on http://127.0.0.1:8080, the pipeline monitor
    /// at /pipeline, the JSON API, /metrics and /health.
    Web,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// List topics with their partition and message counts.
    List,
    /// Create a topic.
    Create {
        /// Topic name: letters, digits, `.`, `_` and `-`, at most 249 characters.
        topic: String,
        /// Partitions. Default: topics.partitions (3)
        #[arg(long)]
        partitions: Option<i32>,
        /// Replication factor. Default: topics.replication_factor (1)
        #[arg(long)]
        replication_factor: Option<i32>,
    },
    /// Show a topic's partitions with start and end offsets, and each consumer group's committed
    /// offsets and lag on it.
    Describe {
        /// Topic name.
        topic: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ProduceArgs {
    /// Topic to write to (created with the configured partitions when missing).
    #[arg(long, short)]
    pub topic: String,

    /// How many messages to send.
    #[arg(long, short, default_value_t = 10)]
    pub count: u64,

    /// Pause between messages, like "1s" or "250ms". Default: none.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    #[arg(long, short)]
    pub topic: String,

    /// Consumer group. Its offsets are committed as messages are printed and at exit, so the
    /// next run resumes after them. Default: a throw-away group that commits nothing.
    #[arg(long, short)]
    pub group: Option<String>,

    /// Start at the oldest message when the group has no committed offset (default: only new
    /// messages).
    #[arg(long)]
    pub from_beginning: bool,

    /// Exit after this many messages.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse(text)
}
