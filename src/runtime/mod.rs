//! The component runtime: the one contract every source, processor, sink and the web server
//! implement ([`Component`]), what the runtime hands each of them ([`Context`]), and the
//! [`supervisor`] that runs them side by side, restarting one that fails while the others run
//! on. See docs/components.md for how to add a component.
//!
//! - [`status`]: each component's state (running, restarting, failed, …) for `/health`, the
//!   monitor and `/metrics`.
//! - [`supervisor`]: start, restart with backoff, stop.
//! - [`consume`]: the one consume → handle → commit loop of processors and sinks, the one place
//!   where topics are set up, and the dead-letter writer.
//! - [`backoff`]: the one exponential backoff with jitter, for polls, reconnects and restarts.

pub mod backoff;
pub mod consume;
pub mod status;
pub mod supervisor;

use std::{path::PathBuf, sync::Arc};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

pub use self::backoff::Backoff;
pub use self::consume::ensure_topics;
pub use self::status::{ComponentStatus, State};
pub use self::supervisor::Supervisor;
use crate::error::Result;
use crate::kafka::KafkaSettings;
use crate::metrics::{Observe, Registry, Samples, SourceMetrics};

/// What a component does in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Polls or listens to an outside feed and publishes records.
    Source,
    /// Reads topics, computes, writes topics (windows, alerts).
    Processor,
    /// Reads topics and writes them somewhere durable (files, objects, a database).
    Sink,
    /// The dashboard: reads topics and serves them over HTTP.
    Web,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Processor => "processor",
            Kind::Sink => "sink",
            Kind::Web => "web",
        }
    }
}

/// The contract of a pipeline component. A component is a value built from its configuration;
/// the runtime asks it to validate itself before anything starts, prints its banner line,
/// registers its metrics once, then calls [`Component::run`] — again after a failure, with
/// backoff, since a component keeps no state that the topics cannot rebuild.
pub trait Component: Send + Sync {
    /// Its name, kind, topics and banner line.
    fn about(&self) -> &About;

    /// Its name in logs, `/health`, the monitor, `/metrics` and `run NAME`.
    fn name(&self) -> &str {
        &self.about().name
    }

    /// Settings that can never work, found before anything starts: a configuration error
    /// stops the start with a message naming the setting.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// What it counts: registered once, before the first run, so that restarts keep counting
    /// where they were; logged in one line when it stops.
    fn metrics(&self) -> Metrics {
        Metrics::None
    }

    /// Runs until `ctx.shutdown` is cancelled (then drains and commits), or until it is done by
    /// itself (a replayed file read to its end). An error ends this run; the supervisor decides
    /// whether to start another.
    fn run(&self, ctx: Context) -> BoxFuture<'static, Result<()>>;
}

/// What a component is, as the banner, `/health`, the monitor and `run NAME` show it.
#[derive(Debug, Clone)]
pub struct About {
    pub name: String,
    pub kind: Kind,
    /// The topics it reads and writes (dead letters apart).
    pub reads: Vec<String>,
    pub writes: Vec<String>,
    /// What it does, in one line of the start-up banner (after the name column).
    pub line: String,
}

impl About {
    /// A source's: it reads no topic and writes one.
    pub fn source(name: &str, topic: &str, line: String) -> About {
        About {
            name: name.to_string(),
            kind: Kind::Source,
            reads: Vec::new(),
            writes: vec![topic.to_string()],
            line,
        }
    }
}

/// A component's counters.
#[derive(Clone)]
pub enum Metrics {
    None,
    /// Served at `/metrics`.
    Part(Arc<dyn Observe>),
    /// A source's: served at `/metrics` and read by the monitor for the feed's freshness.
    Source(Arc<SourceMetrics>),
}

impl Metrics {
    /// Registers them in `registry`.
    pub fn register(&self, registry: &Registry) {
        match self {
            Metrics::None => {}
            Metrics::Part(part) => registry.register(part.clone()),
            Metrics::Source(source) => registry.register_source(source.clone()),
        }
    }

    /// Every counter and gauge as `name=value`, without the `quakestream_` prefix and the
    /// `_total` suffix: the component's summary line.
    pub fn summary(&self) -> String {
        let mut samples = Samples::default();
        match self {
            Metrics::None => {}
            Metrics::Part(part) => part.observe(&mut samples),
            Metrics::Source(source) => source.observe(&mut samples),
        }
        let mut text = String::new();
        for (name, labels, value) in samples.flat() {
            let name = name.strip_prefix("quakestream_").unwrap_or(name);
            let name = name.strip_suffix("_total").unwrap_or(name);
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(name);
            if !labels.is_empty() {
                text.push_str(&format!("{{{labels}}}"));
            }
            text.push_str(&format!("={value}"));
        }
        text
    }
}

/// What every component needs and none should rebuild.
#[derive(Clone)]
pub struct Context {
    /// How to reach the cluster (bootstrap, client properties, timeouts).
    pub kafka: KafkaSettings,
    /// The dead-letter topic.
    pub dlq: String,
    /// The data directory, absolute (state files, logs and the local lake are under it).
    pub data_dir: PathBuf,
    /// Where metrics are registered (served at `/metrics`).
    pub registry: Arc<Registry>,
    /// Cancelled when the component must stop.
    pub shutdown: CancellationToken,
    /// The plausibility settings every reader of input applies (`[checks]`).
    pub checks: crate::record::Checks,
}

impl Context {
    /// A context with a registry of its own (a component run by a test or a tool).
    pub fn new(
        kafka: &KafkaSettings,
        dlq: &str,
        data_dir: &std::path::Path,
        shutdown: CancellationToken,
    ) -> Context {
        Context {
            kafka: kafka.clone(),
            dlq: dlq.to_string(),
            data_dir: std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf()),
            registry: Arc::default(),
            shutdown,
            checks: crate::record::Checks::default(),
        }
    }

    /// The same context with another shutdown token.
    pub fn with_shutdown(&self, shutdown: CancellationToken) -> Context {
        Context {
            shutdown,
            ..self.clone()
        }
    }
}

/// What a processor or sink tells the runtime; [`Stage`] makes the component of it.
pub trait StageSettings: Clone + Send + Sync + 'static {
    /// Its counters, at `/metrics`.
    type Counters: Observe + 'static;

    /// Its name, kind, topics and banner line (`data_dir` is the absolute data directory,
    /// for paths under it).
    fn about(&self, data_dir: &std::path::Path) -> About;

    /// Settings that can never work.
    fn check(&self) -> Result<()>;

    /// Its counters, made once: restarts keep counting.
    fn counters(&self) -> Self::Counters;

    /// How the counters are registered and summarized.
    fn expose(counters: Arc<Self::Counters>) -> Metrics {
        Metrics::Part(counters)
    }

    /// One run: consumes until `ctx.shutdown` or an error (the supervisor starts another).
    fn run(
        &self,
        ctx: &Context,
        counters: Arc<Self::Counters>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A processor, a sink or (through [`crate::source::Source`]) a source as a pipeline component.
pub struct Stage<S: StageSettings> {
    settings: S,
    about: About,
    counters: Arc<S::Counters>,
}

impl<S: StageSettings> Stage<S> {
    pub fn new(settings: S, data_dir: &std::path::Path) -> Stage<S> {
        Stage {
            about: settings.about(data_dir),
            counters: Arc::new(settings.counters()),
            settings,
        }
    }
}

impl<S: StageSettings> Component for Stage<S> {
    fn about(&self) -> &About {
        &self.about
    }

    fn validate(&self) -> Result<()> {
        self.settings.check()
    }

    fn metrics(&self) -> Metrics {
        S::expose(self.counters.clone())
    }

    fn run(&self, ctx: Context) -> BoxFuture<'static, Result<()>> {
        let (settings, counters) = (self.settings.clone(), self.counters.clone());
        Box::pin(async move { settings.run(&ctx, counters).await })
    }
}
