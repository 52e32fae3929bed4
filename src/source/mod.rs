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

use futures::future::BoxFuture;

use crate::{
    error::Result,
    metrics::SourceMetrics,
    runtime::{About, Component, Context, Metrics},
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

/// A source as a pipeline component.
pub struct Source<C> {
    config: C,
    about: About,
    metrics: Arc<SourceMetrics>,
}

impl<C: SourceSettings> Source<C> {
    pub fn new(config: &C) -> Source<C> {
        let about = config.about();
        Source {
            config: config.clone(),
            metrics: Arc::new(SourceMetrics::new(&about.name)),
            about,
        }
    }
}

impl<C: SourceSettings> Component for Source<C> {
    fn about(&self) -> &About {
        &self.about
    }

    fn validate(&self) -> Result<()> {
        self.config.check()
    }

    fn metrics(&self) -> Metrics {
        Metrics::Source(self.metrics.clone())
    }

    fn run(&self, ctx: Context) -> BoxFuture<'static, Result<()>> {
        let (config, metrics) = (self.config.clone(), self.metrics.clone());
        Box::pin(async move { config.run(&ctx, metrics).await })
    }
}
