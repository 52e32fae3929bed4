//! Sources: poll an API, normalize, dedupe, produce.
//!
//! - [`usgs`]: the USGS real-time summary feeds.
//! - [`backfill`]: the FDSN event service, for history and for revisions and deletions of events
//!   that left the feeds.
//! - [`geojson`]: USGS GeoJSON parsed and normalized to [`crate::record::Quake`].
//! - [`emsc`]: the EMSC real-time WebSocket, normalized to `Quake`.
//! - [`http`]: any JSON API, and the `randomuser` and `nasa-apod` presets.
//! - [`jsonl`]: a JSON Lines file (or standard input) to a topic, one message per line, exactly
//!   once.
//! - [`turnstile`]: MTA turnstile counters (a weekly file replayed as deltas, or synthetic).
//! - [`schedule`]: the polling loop they share (interval, backoff, `Retry-After`, deadline).
//! - [`fetch`]: the HTTP poller every source shares (conditional requests, gzip, size cap,
//!   timeouts, retries with backoff and jitter, `Retry-After`).
//! - [`dedupe`]: one message per (event, revision), state rebuilt from the topic.
//! - [`outlet`]: the one way a source writes (its topic, dead letters, a new producer after a
//!   failed publish) and the rebuild of what it published.
//! - [`publish`]: quakes under their output profiles, through the outlet.

pub mod backfill;
pub mod dedupe;
pub mod emsc;
pub mod fetch;
pub mod geojson;
pub mod http;
pub mod jsonl;
pub mod outlet;
pub mod publish;
pub mod schedule;
pub mod turnstile;
pub mod usgs;

use std::sync::Arc;

use crate::{
    error::Result,
    metrics::SourceMetrics,
    runtime::{About, Context, Metrics, Stage, StageSettings},
};

/// What the runtime needs of a source's settings; [`Source`] makes the component of them. A new
/// source implements this for its configuration and needs nothing else from the runtime.
pub trait SourceSettings: Clone + Send + Sync + 'static {
    /// Its name (`usgs`, an `[[http]]` source's own name, …), the topic it publishes to and
    /// what it does: [`About::source`].
    fn about(&self) -> About;
    /// Settings that can never work.
    fn check(&self) -> Result<()>;
    /// Polls and publishes until `ctx.shutdown` (or until its input is done): one run, started
    /// again by the supervisor after a failure.
    fn run(
        &self,
        ctx: &Context,
        metrics: Arc<SourceMetrics>,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// A source as a pipeline component: its settings run as a [`Stage`] whose counters are the
/// source's (`/metrics`, and the monitor's view of the feed's freshness).
pub type Source<C> = Stage<Polled<C>>;

/// The [`StageSettings`] of a source.
#[derive(Clone)]
pub struct Polled<C>(C);

impl<C: SourceSettings> Source<C> {
    pub fn of(config: &C) -> Source<C> {
        Stage::new(Polled(config.clone()), std::path::Path::new(""))
    }
}

impl<C: SourceSettings> StageSettings for Polled<C> {
    type Counters = SourceMetrics;

    fn about(&self, _data_dir: &std::path::Path) -> About {
        self.0.about()
    }

    fn check(&self) -> Result<()> {
        self.0.check()
    }

    fn counters(&self) -> SourceMetrics {
        SourceMetrics::new(&self.0.about().name)
    }

    fn expose(counters: Arc<SourceMetrics>) -> Metrics {
        Metrics::Source(counters)
    }

    fn run(
        &self,
        ctx: &Context,
        counters: Arc<SourceMetrics>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.0.run(ctx, counters)
    }
}
