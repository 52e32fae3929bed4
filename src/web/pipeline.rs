//! The pipeline monitor's data: topics, offsets, consumer lag and throughput sampled from Kafka
//! every `web.refresh`, with the freshness of the sources running in this process.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::{
    kafka::{KafkaSettings, admin::Admin},
    metrics::{Observe, Samples, SourceMetrics},
    record::format_millis,
};

/// One topic as the monitor shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TopicView {
    pub name: String,
    pub partitions: Vec<PartitionView>,
    /// Messages stored (end minus start, summed over partitions).
    pub messages: i64,
    /// Sum of end offsets: every message ever written.
    pub end: i64,
    /// Messages per second written since the previous sample (`None` on the first).
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionView {
    pub id: i32,
    pub start: i64,
    pub end: i64,
}

/// One consumer group's position on one topic.
#[derive(Debug, Clone, Serialize)]
pub struct GroupView {
    pub group: String,
    pub topic: String,
    pub lag: i64,
    pub partitions: Vec<GroupPartitionView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupPartitionView {
    pub partition: i32,
    pub committed: Option<i64>,
    pub end: i64,
    pub lag: i64,
}

/// What the last sample found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub sampled_at: Option<String>,
    /// Why the last sample failed (the previous topics stay shown).
    pub error: Option<String>,
    pub topics: Vec<TopicView>,
    pub groups: Vec<GroupView>,
}

/// A source's freshness and counters.
#[derive(Debug, Clone, Serialize)]
pub struct SourceView {
    pub source: String,
    pub polls: u64,
    pub not_modified: u64,
    pub published: u64,
    pub duplicates: u64,
    pub dead_letters: u64,
    pub errors: u64,
    pub last_success: Option<String>,
    /// Seconds since the last successful poll.
    pub last_success_age_s: Option<f64>,
    /// `metadata.generated` of the newest feed read.
    pub feed_generated: Option<String>,
    pub feed_age_s: Option<f64>,
    pub origin_to_publish: Delay,
    pub update_to_publish: Delay,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delay {
    pub count: u64,
    pub mean_s: Option<f64>,
    /// Upper bounds from the histogram's buckets.
    pub p50_s: Option<f64>,
    pub p95_s: Option<f64>,
}

impl SourceView {
    pub fn of(m: &SourceMetrics, now_ms: i64) -> SourceView {
        let time = |ms: i64| (ms > 0).then(|| format_millis(ms)).flatten();
        let age = |ms: i64| (ms > 0).then(|| (now_ms - ms) as f64 / 1000.0);
        let delay = |h: &crate::metrics::Histogram| Delay {
            count: h.count(),
            mean_s: h.mean_secs(),
            p50_s: h.quantile_secs(0.5).filter(|v| v.is_finite()),
            p95_s: h.quantile_secs(0.95).filter(|v| v.is_finite()),
        };
        SourceView {
            source: m.source.clone(),
            polls: m.polls.get(),
            not_modified: m.not_modified.get(),
            published: m.published.get(),
            duplicates: m.duplicates.get(),
            dead_letters: m.dead_letters.get(),
            errors: m.errors_total(),
            last_success: time(m.last_success_ms.get()),
            last_success_age_s: age(m.last_success_ms.get()),
            feed_generated: time(m.feed_generated_ms.get()),
            feed_age_s: age(m.feed_generated_ms.get()),
            origin_to_publish: delay(&m.origin_delay),
            update_to_publish: delay(&m.update_delay),
        }
    }
}

/// The sampler's state, read by the handlers.
pub struct Pipeline {
    bootstrap: String,
    snapshot: RwLock<Snapshot>,
    /// Whether the last sample reached Kafka.
    healthy: std::sync::atomic::AtomicBool,
}

impl Pipeline {
    pub fn new(bootstrap: &str) -> Pipeline {
        Pipeline {
            bootstrap: bootstrap.to_string(),
            snapshot: RwLock::new(Snapshot::default()),
            healthy: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.read().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Samples every `every` until `shutdown`. A failed sample keeps the previous topics and
    /// says why; the next one tries again.
    pub async fn sample(
        self: Arc<Self>,
        settings: KafkaSettings,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut admin: Option<Admin> = None;
        let mut previous: Option<(Instant, HashMap<String, i64>)> = None;
        loop {
            if admin.is_none() {
                admin = Admin::connect(&settings).await.ok();
            }
            let result = match &admin {
                Some(a) => a.overview().await,
                None => Err(crate::Error::Broker(format!(
                    "cannot reach Kafka at {}",
                    settings.bootstrap
                ))),
            };
            let now = Instant::now();
            match result {
                Ok(described) => {
                    let ends: HashMap<String, i64> = described
                        .iter()
                        .map(|t| (t.name.clone(), t.partitions.iter().map(|p| p.end).sum()))
                        .collect();
                    let rate = |name: &str, end: i64| {
                        let (at, before) = previous.as_ref()?;
                        let secs = now.duration_since(*at).as_secs_f64();
                        let before = before.get(name)?;
                        (secs > 0.0).then(|| (end - before).max(0) as f64 / secs)
                    };
                    let mut snapshot = Snapshot {
                        sampled_at: format_millis(chrono::Utc::now().timestamp_millis()),
                        error: None,
                        topics: Vec::new(),
                        groups: Vec::new(),
                    };
                    for t in &described {
                        let end = ends[&t.name];
                        snapshot.topics.push(TopicView {
                            name: t.name.clone(),
                            messages: t.partitions.iter().map(|p| p.end - p.start).sum(),
                            end,
                            rate: rate(&t.name, end),
                            partitions: t
                                .partitions
                                .iter()
                                .map(|p| PartitionView {
                                    id: p.id,
                                    start: p.start,
                                    end: p.end,
                                })
                                .collect(),
                        });
                        for g in &t.groups {
                            snapshot.groups.push(GroupView {
                                group: g.group.clone(),
                                topic: t.name.clone(),
                                lag: g.total(),
                                partitions: g
                                    .partitions
                                    .iter()
                                    .map(|p| GroupPartitionView {
                                        partition: p.partition,
                                        committed: p.committed,
                                        end: p.end,
                                        lag: p.lag,
                                    })
                                    .collect(),
                            });
                        }
                    }
                    snapshot
                        .groups
                        .sort_by(|a, b| (&a.group, &a.topic).cmp(&(&b.group, &b.topic)));
                    previous = Some((now, ends));
                    if let Ok(mut s) = self.snapshot.write() {
                        *s = snapshot;
                    }
                    self.healthy
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pipeline monitor: sample failed");
                    if let Ok(mut s) = self.snapshot.write() {
                        s.error = Some(e.to_string());
                    }
                    self.healthy
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    admin = None;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

impl Observe for Pipeline {
    fn observe(&self, out: &mut Samples) {
        let s = self.snapshot();
        for t in &s.topics {
            out.gauge(
                "quakestream_topic_end_offset",
                "Sum of a topic's end offsets (messages ever written), as last sampled.",
                &[("topic", &t.name)],
                t.end as f64,
            );
            out.gauge(
                "quakestream_topic_messages",
                "Messages a topic stores, as last sampled.",
                &[("topic", &t.name)],
                t.messages as f64,
            );
        }
        for g in &s.groups {
            out.gauge(
                "quakestream_consumer_group_lag",
                "Messages a consumer group has not committed yet, as last sampled.",
                &[("group", &g.group), ("topic", &g.topic)],
                g.lag as f64,
            );
        }
        out.gauge(
            "quakestream_kafka_up",
            "Whether the last sample reached Kafka.",
            &[],
            if self.healthy() { 1.0 } else { 0.0 },
        );
    }
}
