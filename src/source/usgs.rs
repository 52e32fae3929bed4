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
    /// How long past the feed's window an event is remembered for dedupe.
    #[serde(with = "duration")]
    pub forget_margin: Duration,
    /// Timeouts, size cap and backoff.
    pub http: HttpConfig,
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
    publisher: Publisher,
    dedupe: Dedupe,
    /// `metadata.generated` of the newest feed handled.
    last_generated: Option<i64>,
    checks: Checks,
    metrics: Arc<SourceMetrics>,
}

impl Rebuild for Poller {
    type Body = FeedError;

    fn outlet(&mut self) -> &mut Outlet {
        self.publisher.outlet_mut()
    }

    /// Reads back what the source already published.
    async fn rebuild(&mut self) -> Result<()> {
        let topic = self.publisher.topic();
        let settings = self.publisher.outlet().settings().clone();
        let (mut dedupe, generated, read) = publish::rebuild_dedupe(&settings, topic).await?;
        if let Some(g) = generated {
            dedupe.forget_before(g - self.horizon_ms());
        }
        self.last_generated = generated.max(self.last_generated);
        tracing::info!(
            records = read,
            events = dedupe.len(),
            "usgs: dedupe state rebuilt from {}",
            self.publisher.topic()
        );
        self.dedupe = dedupe;
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

        if self.config.profile == Profile::RawFeed {
            self.publish_raw(&body, generated).await?;
        } else {
            self.publish_records(parsed, generated).await?;
        }

        if let Some(g) = generated {
            self.dedupe.forget_before(g - self.horizon_ms());
            self.last_generated = Some(g);
        }
        self.fetcher.accept();
        self.metrics.succeeded();
        Ok(())
    }

    async fn publish_raw(
        &mut self,
        body: &[u8],
        generated: Option<i64>,
    ) -> std::result::Result<(), PollError> {
        let generated = generated.unwrap_or_else(now_ms);
        if self.last_generated == Some(generated) {
            self.metrics.duplicates.inc();
            return Ok(());
        }
        let key = self.config.feed.clone();
        self.publisher
            .publish_raw(&key, body, generated)
            .await
            .map_err(PollError::Publish)?;
        self.metrics.published.inc();
        Ok(())
    }

    async fn publish_records(
        &mut self,
        parsed: geojson::Parsed,
        generated: Option<i64>,
    ) -> std::result::Result<(), PollError> {
        for rejected in &parsed.rejected {
            let key = serde_json::from_str::<serde_json::Value>(&rejected.raw)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
            self.publisher
                .outlet()
                .dead_letter(key.as_deref(), &rejected.reason, rejected.raw.as_bytes())
                .await
                .map_err(PollError::Publish)?;
        }

        let features = parsed.quakes.len();
        let plan = publish::plan(&mut self.dedupe, parsed.quakes, generated);
        self.metrics.duplicates.add(plan.duplicates);
        let outgoing = plan.outgoing;
        self.publisher
            .publish(&outgoing)
            .await
            .map_err(PollError::Publish)?;
        let published = outgoing.len();
        if published > 0 || !parsed.rejected.is_empty() {
            tracing::info!(
                features,
                published,
                rejected = parsed.rejected.len(),
                events = self.dedupe.len(),
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
        let line = format!(
            "{} every {} -> topic {}",
            self.url(),
            humantime::format_duration(self.interval()),
            UsgsConfig::topic(self)
        );
        About::source("usgs", UsgsConfig::topic(self), line)
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
        let outlet = Outlet::open(ctx, "usgs", config.topic(), &url, metrics.clone()).await?;
        let mut poller = Resuming::new(Poller {
            config: config.clone(),
            fetcher,
            url,
            publisher: Publisher::new(outlet, config.profile),
            dedupe: Dedupe::new(),
            last_generated: None,
            checks: ctx.checks,
            metrics,
        });
        tracing::info!(
            url = %poller.source.url,
            topic = %poller.source.publisher.topic(),
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
        poller.source.publisher.outlet().flush()?;
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
