//! The `usgs` source: polls a USGS real-time summary feed and publishes every new revision of
//! every event, once.
//!
//! Delivery semantics: exactly once per (event, `updated`) in the topic. A revision is
//! published through the idempotent producer; the dedupe state is rebuilt from the topic at
//! start and after any failed publish, so neither a `kill -9` nor a broker outage makes it
//! republish or skip a revision (see [`super::dedupe`]).
//!
//! Each poll: a conditional GET (a `304` costs nothing), the feed parsed (a bad feature goes to
//! the dead-letter topic with its reason, the rest goes on), a feed older than the last one
//! read is skipped, new revisions are published, old events are forgotten. A failed poll is
//! counted by kind and retried with exponential backoff and jitter, honouring `Retry-After`.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    SourceSettings,
    dedupe::Dedupe,
    fetch::{Fetcher, HttpConfig},
    geojson::{self, FeedError},
    outlet::{Outlet, Rebuild, Resuming},
    publish::{self, Profile, Publisher},
    schedule,
};
use crate::{
    config::duration,
    error::{Error, Result},
    metrics::SourceMetrics,
    record::Checks,
    runtime::{About, Context},
};

/// The summary feeds' base URL.
pub const FEED_BASE: &str = "https://earthquake.usgs.gov/earthquakes/feed/v1.0/summary";

const SIZES: &[&str] = &["all", "1.0", "2.5", "4.5", "significant"];
const AGES: &[(&str, u64)] = &[
    ("hour", 3_600),
    ("day", 86_400),
    ("week", 604_800),
    ("month", 2_592_000),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsgsConfig {
    /// Whether `up` runs this source.
    pub enabled: bool,
    /// One of the 20 summary feeds: `{all,1.0,2.5,4.5,significant}_{hour,day,week,month}`.
    pub feed: String,
    /// The feed's URL; empty means the USGS URL of `feed`. Set it to poll a mirror or a replay
    /// server. Flag: `--usgs-url`.
    pub url: String,
    /// Time between polls. Default 60 s (30 s with the `sismos` profile): the feed refreshes
    /// every minute and is cached for 60 s, so polling faster gains nothing. Flag: `--interval`.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// What to write: `quakes` (the Quake record), `sismos` (the course's layout) or `raw-feed`
    /// (each FeatureCollection whole).
    pub profile: Profile,
    /// Topic to write; empty means the profile's (`earthquakes`, `sismos`, `earthquake`).
    pub topic: String,
    /// More topics the same polls are written to, each under its own profile and exactly once:
    /// `also = [{ profile = "sismos" }]` gives the course's topic beside the Quake records that
    /// the windows, alerts and map read.
    pub also: Vec<Output>,
    /// How long past the feed's window an event is remembered for dedupe.
    #[serde(with = "duration")]
    pub forget_margin: Duration,
    /// Timeouts, size cap and backoff.
    pub http: HttpConfig,
}

/// One more topic a source writes ([`UsgsConfig::also`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    pub profile: Profile,
    /// Empty: the profile's topic.
    #[serde(default)]
    pub topic: String,
}

impl Output {
    pub fn topic(&self) -> &str {
        if self.topic.is_empty() {
            self.profile.default_topic()
        } else {
            &self.topic
        }
    }
}

impl Default for UsgsConfig {
    fn default() -> Self {
        UsgsConfig {
            enabled: true,
            feed: "all_hour".into(),
            url: String::new(),
            interval: None,
            profile: Profile::Quakes,
            topic: String::new(),
            also: Vec::new(),
            forget_margin: Duration::from_secs(3_600),
            http: HttpConfig::default(),
        }
    }
}

impl UsgsConfig {
    pub fn url(&self) -> String {
        if self.url.is_empty() {
            format!("{FEED_BASE}/{}.geojson", self.feed)
        } else {
            self.url.clone()
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(match self.profile {
            Profile::Sismos => Duration::from_secs(30),
            _ => Duration::from_secs(60),
        })
    }

    pub fn topic(&self) -> &str {
        if self.topic.is_empty() {
            self.profile.default_topic()
        } else {
            &self.topic
        }
    }

    /// Every topic written, with its profile: the main one first.
    pub fn outputs(&self) -> Vec<Output> {
        let main = Output {
            profile: self.profile,
            topic: self.topic().to_string(),
        };
        std::iter::once(main)
            .chain(self.also.iter().cloned())
            .collect()
    }

    /// How far back the polled feed reaches: the age in its name, or a month when unknown.
    pub fn window(&self) -> Duration {
        let name = if self.url.is_empty() {
            self.feed.as_str()
        } else {
            self.url.as_str()
        };
        AGES.iter()
            .find(|(age, _)| name.contains(&format!("_{age}")))
            .map_or(Duration::from_secs(2_592_000), |(_, secs)| {
                Duration::from_secs(*secs)
            })
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        let valid = SIZES
            .iter()
            .any(|s| AGES.iter().any(|(a, _)| format!("{s}_{a}") == self.feed));
        if !valid {
            return Err(format!(
                "usgs.feed = {:?}: expected SIZE_AGE with SIZE one of all, 1.0, 2.5, 4.5, \
                 significant and AGE one of hour, day, week, month (like \"all_hour\")",
                self.feed
            ));
        }
        if !self.url.is_empty() && url::Url::parse(&self.url).is_err() {
            return Err(format!("usgs.url = {:?} is not a URL", self.url));
        }
        if self.interval() < Duration::from_millis(100) {
            return Err("usgs.interval must be at least 100ms".into());
        }
        let mut topics = std::collections::BTreeSet::new();
        for output in self.outputs() {
            let topic = output.topic().to_string();
            topic
                .parse::<crate::kafka::TopicName>()
                .map_err(|e| format!("usgs: {e}"))?;
            if !topics.insert(topic.clone()) {
                return Err(format!(
                    "usgs.also: topic {topic:?} is written twice; give each output its own topic"
                ));
            }
        }
        Ok(())
    }
}

impl schedule::BodyFailure for FeedError {
    fn kind(&self) -> &'static str {
        match self {
            FeedError::NotJson(_) => "malformed",
            FeedError::NotCollection(_) => "not_a_feed",
        }
    }
}

type PollError = schedule::PollError<FeedError>;

/// The running source's state.
struct Poller {
    config: UsgsConfig,
    url: String,
    fetcher: Fetcher,
    /// The main topic first.
    outputs: Vec<Written>,
    /// `metadata.generated` of the newest feed handled.
    last_generated: Option<i64>,
    checks: Checks,
    metrics: Arc<SourceMetrics>,
}

/// A topic the source writes, and what is already in it.
struct Written {
    publisher: Publisher,
    dedupe: Dedupe,
}

impl Rebuild for Poller {
    type Body = FeedError;

    fn reset(&mut self) -> Result<()> {
        for output in &mut self.outputs {
            output.publisher.outlet_mut().reset()?;
        }
        Ok(())
    }

    /// Reads back what the source already published, topic by topic: each is exactly once on
    /// its own.
    async fn rebuild(&mut self) -> Result<()> {
        let horizon = self.horizon_ms();
        for output in &mut self.outputs {
            let topic = output.publisher.topic().to_string();
            let settings = output.publisher.outlet().settings().clone();
            let (mut dedupe, generated, read) = publish::rebuild_dedupe(&settings, &topic).await?;
            if let Some(g) = generated {
                dedupe.forget_before(g - horizon);
            }
            self.last_generated = generated.max(self.last_generated);
            tracing::info!(
                records = read,
                events = dedupe.len(),
                "usgs: dedupe state rebuilt from {topic}"
            );
            output.dedupe = dedupe;
        }
        Ok(())
    }

    fn poll_once(&mut self) -> impl Future<Output = std::result::Result<(), PollError>> + Send {
        self.poll()
    }
}

impl Poller {
    fn horizon_ms(&self) -> i64 {
        (self.config.window() + self.config.forget_margin).as_millis() as i64
    }

    async fn poll(&mut self) -> std::result::Result<(), PollError> {
        let Some(body) = schedule::fetch(&mut self.fetcher, &self.metrics).await? else {
            return Ok(());
        };
        let parsed =
            geojson::parse_collection(&body, "usgs", &self.checks).map_err(PollError::Body)?;
        let generated = parsed.metadata.generated;
        if let (Some(g), Some(last)) = (generated, self.last_generated)
            && g < last
        {
            self.metrics.stale_feeds.inc();
            tracing::warn!(
                generated = g,
                newest = last,
                "usgs: feed older than one already read; skipped"
            );
            self.fetcher.accept();
            return Ok(());
        }
        if let Some(g) = generated {
            self.metrics.feed_generated_ms.set(g);
        }

        self.dead_letters(&parsed).await?;
        for k in 0..self.outputs.len() {
            if self.outputs[k].publisher.profile() == Profile::RawFeed {
                self.publish_raw(k, &body, generated).await?;
            } else {
                self.publish_records(k, &parsed, generated).await?;
            }
        }

        if let Some(g) = generated {
            let horizon = self.horizon_ms();
            for output in &mut self.outputs {
                output.dedupe.forget_before(g - horizon);
            }
            self.last_generated = Some(g);
        }
        self.fetcher.accept();
        self.metrics.succeeded();
        Ok(())
    }

    async fn publish_raw(
        &mut self,
        k: usize,
        body: &[u8],
        generated: Option<i64>,
    ) -> std::result::Result<(), PollError> {
        let generated = generated.unwrap_or_else(now_ms);
        if self.last_generated == Some(generated) {
            self.metrics.duplicates.inc();
            return Ok(());
        }
        let key = self.config.feed.clone();
        self.outputs[k]
            .publisher
            .publish_raw(&key, body, generated)
            .await
            .map_err(PollError::Publish)?;
        self.metrics.published.inc();
        Ok(())
    }

    /// The features that could not be read, once (through the main topic's outlet).
    async fn dead_letters(&self, parsed: &geojson::Parsed) -> std::result::Result<(), PollError> {
        for rejected in &parsed.rejected {
            let key = serde_json::from_str::<serde_json::Value>(&rejected.raw)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
            self.outputs[0]
                .publisher
                .outlet()
                .dead_letter(key.as_deref(), &rejected.reason, rejected.raw.as_bytes())
                .await
                .map_err(PollError::Publish)?;
        }
        Ok(())
    }

    async fn publish_records(
        &mut self,
        k: usize,
        parsed: &geojson::Parsed,
        generated: Option<i64>,
    ) -> std::result::Result<(), PollError> {
        let output = &mut self.outputs[k];
        let features = parsed.quakes.len();
        let plan = publish::plan(&mut output.dedupe, parsed.quakes.clone(), generated);
        self.metrics.duplicates.add(plan.duplicates);
        let outgoing = plan.outgoing;
        output
            .publisher
            .publish(&outgoing)
            .await
            .map_err(PollError::Publish)?;
        let published = outgoing.len();
        if published > 0 || !parsed.rejected.is_empty() {
            tracing::info!(
                features,
                published,
                rejected = parsed.rejected.len(),
                events = output.dedupe.len(),
                topic = output.publisher.topic(),
                "usgs: poll published new revisions"
            );
        } else {
            tracing::debug!(features, "usgs: poll had nothing new");
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SourceSettings for UsgsConfig {
    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("usgs"))
    }

    fn about(&self) -> About {
        let topics: Vec<String> = self
            .outputs()
            .iter()
            .map(|o| o.topic().to_string())
            .collect();
        let line = format!(
            "{} every {} -> topic {}",
            self.url(),
            humantime::format_duration(self.interval()),
            topics.join(", ")
        );
        let mut about = About::source("usgs", UsgsConfig::topic(self), line);
        about.writes = topics;
        about
    }

    /// Runs the source until `shutdown` is cancelled.
    async fn run(&self, ctx: &Context, metrics: Arc<SourceMetrics>) -> Result<()> {
        let config = self;
        config.validate().map_err(Error::config("usgs"))?;
        let url = config.url();
        let fetcher = Fetcher::new(&url, &config.http).map_err(|e| Error::Config {
            origin: "usgs.url".into(),
            message: e.to_string(),
        })?;
        let mut outputs = Vec::new();
        for output in config.outputs() {
            let outlet = Outlet::open(ctx, "usgs", output.topic(), &url, metrics.clone()).await?;
            outputs.push(Written {
                publisher: Publisher::new(outlet, output.profile),
                dedupe: Dedupe::new(),
            });
        }
        let topics: Vec<&str> = outputs.iter().map(|o| o.publisher.topic()).collect();
        let topics = topics.join(", ");
        let mut poller = Resuming::new(Poller {
            config: config.clone(),
            fetcher,
            url,
            outputs,
            last_generated: None,
            checks: ctx.checks,
            metrics,
        });
        tracing::info!(
            url = %poller.source.url,
            topics = %topics,
            profile = ?config.profile,
            interval = %humantime::format_duration(config.interval()),
            "usgs source started"
        );

        // A poll is abandoned on shutdown: what it published is in the topic, and the next start
        // reads it back, so nothing is lost or published twice.
        let metrics = poller.source.metrics.clone();
        schedule::every(
            "usgs",
            config.interval(),
            &config.http,
            None,
            &metrics,
            &ctx.shutdown,
            &mut poller,
        )
        .await;
        for output in &poller.source.outputs {
            output.publisher.outlet().flush()?;
        }
        tracing::info!("usgs source stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_names_urls_and_windows() {
        let mut c = UsgsConfig::default();
        assert_eq!(c.url(), format!("{FEED_BASE}/all_hour.geojson"));
        assert_eq!(c.window(), Duration::from_secs(3600));
        assert_eq!(c.interval(), Duration::from_secs(60));
        assert_eq!(c.topic(), "earthquakes");
        c.feed = "2.5_week".into();
        assert!(c.validate().is_ok());
        assert_eq!(c.window(), Duration::from_secs(604_800));
        c.feed = "3.0_day".into();
        assert!(c.validate().unwrap_err().contains("usgs.feed"));
        c.feed = "all_day".into();
        c.profile = Profile::Sismos;
        assert_eq!(c.interval(), Duration::from_secs(30));
        assert_eq!(c.topic(), "sismos");
        c.url = "http://127.0.0.1:9/feed/significant_month.geojson".into();
        assert_eq!(c.window(), Duration::from_secs(2_592_000));
    }
}
