//! The one way a source writes to Kafka: its topic and the dead-letter topic, through one
//! idempotent producer that is replaced after a failed publish, and the read-back of what the
//! source already published (its dedupe state after a restart or a failed publish).
//!
//! Every source opens an [`Outlet`]; polled sources wrap their poll in [`Resuming`], which
//! rebuilds the dedupe state before the first poll and after every failed publish.

use std::{collections::HashSet, sync::Arc};

use super::schedule::{BodyFailure, Poll, PollError};
use crate::{
    error::{Error, Result},
    kafka::{
        KafkaSettings, TopicName,
        producer::{Delivery, Producer},
        reader,
    },
    metrics::SourceMetrics,
    record::DeadLetter,
    runtime::{Context, ensure_topics},
};

/// Header: `key\u{1f}version` of a record published by a generic source (`http`, `jsonl`,
/// `turnstile`): what it reads back to publish each version of each key once.
pub const H_RECORD: &str = "qs-record";

/// A source's way to Kafka.
pub struct Outlet {
    producer: Producer,
    settings: KafkaSettings,
    topic: TopicName,
    dlq: String,
    source: String,
    origin: String,
    metrics: Arc<SourceMetrics>,
}

impl Outlet {
    /// Creates `topic` and the dead-letter topic when missing and opens a producer. `source`
    /// names the component in dead letters; `origin` is where its input comes from (a URL, a
    /// file).
    pub async fn open(
        ctx: &Context,
        source: &str,
        topic: &str,
        origin: &str,
        metrics: Arc<SourceMetrics>,
    ) -> Result<Outlet> {
        let topic: TopicName = topic.parse()?;
        ensure_topics(ctx, &[topic.to_string()]).await?;
        Ok(Outlet {
            producer: Producer::new(&ctx.kafka)?,
            settings: ctx.kafka.clone(),
            topic,
            dlq: ctx.dlq.clone(),
            source: source.to_string(),
            origin: origin.to_string(),
            metrics,
        })
    }

    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &SourceMetrics {
        &self.metrics
    }

    /// The producer, for a source that keeps several sends on their way at once.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }

    /// Sends one message to the topic; it is published once this returns `Ok`.
    pub async fn send(
        &self,
        key: Option<&str>,
        value: &[u8],
        time_ms: Option<i64>,
        headers: &[(&str, &[u8])],
    ) -> Result<Delivery> {
        self.producer
            .send_with_headers(self.topic.as_str(), key, value, time_ms, headers)
            .await
    }

    /// Sends one version of one record, tagged with its [`H_RECORD`] `id`, and counts it.
    pub async fn send_record(
        &self,
        key: &str,
        id: &str,
        value: &[u8],
        time_ms: Option<i64>,
    ) -> Result<()> {
        self.send(Some(key), value, time_ms, &[(H_RECORD, id.as_bytes())])
            .await?;
        self.published(time_ms);
        Ok(())
    }

    /// Counts a message acknowledged, with its delay since `time_ms` when it has one.
    pub fn published(&self, time_ms: Option<i64>) {
        let now = chrono::Utc::now().timestamp_millis();
        self.metrics.published.inc();
        self.metrics.last_success_ms.set(now);
        if let Some(t) = time_ms {
            self.metrics.origin_delay.observe_ms(now - t);
        }
    }

    /// Sends an input that could not be handled to the dead-letter topic with the reason, and
    /// counts it. At least once: a source that reads the same input again after a restart
    /// dead-letters it again.
    pub async fn dead_letter(&self, key: Option<&str>, reason: &str, payload: &[u8]) -> Result<()> {
        self.dead_letter_from(&self.origin, key, reason, payload)
            .await
    }

    /// [`Outlet::dead_letter`] for input from somewhere more precise than the source's origin
    /// (one request of a backfill).
    pub async fn dead_letter_from(
        &self,
        origin: &str,
        key: Option<&str>,
        reason: &str,
        payload: &[u8],
    ) -> Result<()> {
        let letter = DeadLetter {
            reason: reason.to_string(),
            source: self.source.clone(),
            topic: Some(origin.to_string()),
            partition: None,
            offset: None,
            payload: String::from_utf8_lossy(payload).into_owned(),
        };
        let value = serde_json::to_vec(&letter).unwrap_or_default();
        self.producer.send(&self.dlq, key, &value, None).await?;
        self.metrics.dead_letters.inc();
        Ok(())
    }

    /// Waits for everything sent.
    pub fn flush(&self) -> Result<()> {
        self.producer.flush()
    }

    /// Replaces the producer after a failed publish. Every send of the failed batch has
    /// already reported its result, so the old producer holds nothing that could still land;
    /// a new one gets a new producer id, which a broker that lost or never had the old one's
    /// state (a restart, a fatal idempotence error) accepts.
    pub fn reset(&mut self) -> Result<()> {
        if let Some(reason) = self.producer.fatal_error() {
            tracing::warn!(source = %self.source, %reason, "the producer failed fatally");
        }
        self.producer.purge();
        self.producer = Producer::new(&self.settings)?;
        Ok(())
    }

    /// The [`H_RECORD`] of every message in the topic: what the source already published.
    pub async fn published_records(&self) -> Result<HashSet<String>> {
        read_back(&self.settings, self.topic.as_str()).await
    }
}

/// The [`H_RECORD`] header of every message in `topic`.
pub async fn read_back(settings: &KafkaSettings, topic: &str) -> Result<HashSet<String>> {
    let (settings, topic) = (settings.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        reader::scan(&settings, &topic, |m| {
            use rdkafka::message::{Headers, Message};
            if let Some(h) = m.headers() {
                for header in h.iter() {
                    if header.key == H_RECORD
                        && let Some(v) = header.value.and_then(|v| std::str::from_utf8(v).ok())
                    {
                        seen.insert(v.to_string());
                    }
                }
            }
        })?;
        Ok::<_, Error>(seen)
    })
    .await
    .map_err(|e| Error::Broker(format!("read-back task failed: {e}")))?
}

/// A polled source that remembers what it published, in a state it can rebuild from its topic.
pub trait Rebuild: Send {
    type Body: BodyFailure + Send;
    /// A new producer for every outlet of the source ([`Outlet::reset`]).
    fn reset(&mut self) -> Result<()>;
    /// Reads back what the source already published.
    fn rebuild(&mut self) -> impl Future<Output = Result<()>> + Send;
    /// One poll: fetch, normalize, publish what is new.
    fn poll_once(
        &mut self,
    ) -> impl Future<Output = std::result::Result<(), PollError<Self::Body>>> + Send;
}

/// A [`Rebuild`] source as the polling loop runs it: the state is rebuilt before the first poll
/// and after a failed publish (what reached the topic is unknown until it is read back), and a
/// failed publish gets a new producer for the next try.
pub struct Resuming<P> {
    pub source: P,
    needs_rebuild: bool,
}

impl<P> Resuming<P> {
    pub fn new(source: P) -> Resuming<P> {
        Resuming {
            source,
            needs_rebuild: true,
        }
    }
}

impl<P: Rebuild> Resuming<P> {
    async fn poll_or_rebuild(&mut self) -> std::result::Result<(), PollError<P::Body>> {
        if self.needs_rebuild {
            // Kafka may still be away: a failed read-back is retried like a failed poll.
            self.source.rebuild().await.map_err(PollError::Publish)?;
            self.needs_rebuild = false;
        }
        let result = self.source.poll_once().await;
        if matches!(result, Err(PollError::Publish(_))) {
            self.needs_rebuild = true;
            self.source.reset().map_err(PollError::Publish)?;
        }
        result
    }
}

impl<P: Rebuild> Poll for Resuming<P> {
    type Error = PollError<P::Body>;
    fn poll(&mut self) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send {
        self.poll_or_rebuild()
    }
}
