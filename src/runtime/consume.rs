//! The one consume → handle → commit loop that processors and sinks run on.
//!
//! Delivery semantics: at least once, effects first. Messages are read in batches (what arrives
//! without a pause, up to a size) and handed to the component's [`Handler`]. The records it
//! refuses go to the dead-letter topic with its reason and are acknowledged by the broker; only
//! then are the offsets it *released* committed. A crash, a failed run or a rebalance re-delivers
//! everything after the last commit, so a handler's effects must be idempotent for a replayed
//! tail (deterministic file names, upserts guarded by `updated`, alerts rebuilt from their
//! topic). Offsets of partitions taken away by a rebalance are left to their new owner.
//!
//! Errors: a handler's error ends the run (the supervisor starts another, which resumes from the
//! last commit); a record it cannot use is *refused*, never an error, so one poison record
//! cannot stall a partition.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer as _},
};

use super::Context;
use crate::{
    error::{Error, Result},
    kafka::{TopicName, admin::Admin, consumer::Consumer, producer::Producer},
    record::DeadLetter,
};

/// What a component consumes, and how.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The component's name: the `source` of its dead letters, the prefix of their reasons.
    pub name: &'static str,
    /// The consumer group.
    pub group: String,
    /// A static member id; `None` derives one from the group and the data directory.
    pub instance_id: Option<String>,
    pub topics: Vec<String>,
    /// Most messages in one batch.
    pub batch_size: usize,
    /// A pause in arrivals this long ends a batch.
    pub batch_gap: Duration,
    /// How often [`Handler::tick`] is called while nothing arrives.
    pub tick: Duration,
}

impl Spec {
    /// `topics` in `group` (a static member: `instance_id`, or one derived from the group and
    /// the data directory), in batches of up to 5,000 messages ended by a 20 ms pause, ticking
    /// every second. A batch is one wait for the handler's acknowledgements (alerts, dead
    /// letters): with 500 a component catching up spent most of its time waiting for them.
    pub fn new(
        name: &'static str,
        group: &str,
        instance_id: Option<&str>,
        topics: Vec<String>,
    ) -> Spec {
        Spec {
            name,
            group: group.to_string(),
            instance_id: instance_id.map(String::from),
            topics,
            batch_size: 5_000,
            batch_gap: Duration::from_millis(20),
            tick: Duration::from_secs(1),
        }
    }

    /// Batches of up to `size` messages, ended by a pause of `gap`.
    pub fn batches(self, size: usize, gap: Duration) -> Spec {
        Spec {
            batch_size: size,
            batch_gap: gap,
            ..self
        }
    }

    /// [`Handler::tick`] at least this often.
    pub fn tick(self, every: Duration) -> Spec {
        Spec {
            tick: every,
            ..self
        }
    }
}

/// One consumed message, owned (a handler may keep it past the batch).
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The Kafka timestamp (event time), epoch milliseconds.
    pub timestamp: Option<i64>,
}

impl Record {
    /// The key as text (lossy), as dead letters and logs show it.
    pub fn key_text(&self) -> Option<String> {
        self.key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
    }

    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        Record {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp: m.timestamp().to_millis(),
        }
    }
}

/// What a handler did with a batch: the records it refused and the offsets it released.
#[derive(Debug, Default)]
pub struct Outcome {
    refused: Vec<(Record, String)>,
    release: BTreeMap<(String, i32), i64>,
}

impl Outcome {
    /// A record the component cannot use, ever: it goes to the dead-letter topic with `reason`.
    pub fn refuse(&mut self, record: &Record, reason: impl Into<String>) {
        self.refused.push((record.clone(), reason.into()));
    }

    /// Everything of `topic`/`partition` before `next` is durably handled: commit it.
    pub fn release(&mut self, topic: &str, partition: i32, next: i64) {
        let at = self
            .release
            .entry((topic.to_string(), partition))
            .or_insert(next);
        *at = (*at).max(next);
    }

    /// Every record of the batch is durably handled.
    pub fn release_all(&mut self, batch: &[Record]) {
        for r in batch {
            self.release(&r.topic, r.partition, r.offset + 1);
        }
    }

    pub fn refused(&self) -> usize {
        self.refused.len()
    }
}

/// A processor's or sink's side of the loop.
pub trait Handler: Send {
    /// Handles one batch (in offset order within each partition): refuses what it cannot use,
    /// and releases the offsets whose effects are durable when it returns. An error ends the
    /// run with nothing of the batch committed.
    fn handle(
        &mut self,
        batch: &[Record],
        out: &mut Outcome,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Called after every batch and at least every [`Spec::tick`] (timers, rolling by age,
    /// progress that depends on how far the partitions go: `session` tells).
    fn tick(
        &mut self,
        _session: &Session<'_>,
        _out: &mut Outcome,
    ) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Partitions taken away by a rebalance: forget what was built for them (their next owner
    /// re-reads them from the last commit).
    fn revoked(&mut self, _partitions: &[(String, i32)]) {}

    /// At shutdown: finish and release what is held.
    fn drain(&mut self, _out: &mut Outcome) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// What a handler may ask of the consumer between batches.
pub struct Session<'a> {
    consumer: &'a Consumer,
}

impl Session<'_> {
    /// The partitions of `topic` assigned to this member.
    pub fn assigned(&self, topic: &str) -> Vec<i32> {
        self.consumer
            .raw()
            .assignment()
            .map(|a| {
                a.elements()
                    .iter()
                    .filter(|e| e.topic() == topic)
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The partition's low and high watermarks as of the last fetch (no broker round trip).
    pub fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        self.consumer.cached_watermarks(topic, partition)
    }

    /// The group's committed offset of the partition (asks the broker, 2 s at most).
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        self.consumer
            .raw()
            .committed_offsets(tpl, Duration::from_secs(2))
            .ok()
            .and_then(|t| {
                t.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            })
            .filter(|o| *o >= 0)
    }
}

/// Creates `topics` (and the dead-letter topic) when they are missing: the one place where
/// components set up topics.
pub async fn ensure_topics(ctx: &Context, topics: &[String]) -> Result<Vec<TopicName>> {
    let mut names = topics
        .iter()
        .map(|t| t.parse::<TopicName>())
        .collect::<Result<Vec<_>>>()?;
    let dlq: TopicName = ctx.dlq.parse()?;
    Admin::connect(&ctx.kafka)
        .await?
        .ensure_topics(&[names.clone(), vec![dlq]].concat())
        .await?;
    names.dedup();
    Ok(names)
}

/// Writes dead letters: one record each, keyed like its input, acknowledged before returning.
pub struct DeadLetters {
    producer: Producer,
    topic: String,
    source: &'static str,
}

impl DeadLetters {
    pub fn new(ctx: &Context, source: &'static str) -> Result<DeadLetters> {
        Ok(DeadLetters {
            producer: Producer::new(&ctx.kafka)?,
            topic: ctx.dlq.clone(),
            source,
        })
    }

    /// `record` refused for `reason` (prefixed with the component's name).
    pub async fn send(&self, record: &Record, reason: &str) -> Result<()> {
        let letter = DeadLetter {
            reason: format!("{}: {reason}", self.source),
            source: self.source.into(),
            topic: Some(record.topic.clone()),
            partition: Some(record.partition),
            offset: Some(record.offset),
            payload: String::from_utf8_lossy(&record.payload).into_owned(),
        };
        let body = serde_json::to_vec(&letter).unwrap_or_default();
        self.producer
            .send(
                &self.topic,
                record.key_text().as_deref(),
                &body,
                record.timestamp,
            )
            .await?;
        Ok(())
    }
}

/// Consumes `spec.topics` in `spec.group` until `ctx.shutdown`, then drains the handler and
/// commits what it released.
pub async fn run<H: Handler>(ctx: &Context, spec: &Spec, handler: &mut H) -> Result<()> {
    let topics = ensure_topics(ctx, &spec.topics).await?;
    let consumer = Consumer::static_member(
        &ctx.kafka,
        &spec.group,
        spec.instance_id.as_deref(),
        &ctx.data_dir,
    )?;
    consumer.subscribe(&topics)?;
    let dead = DeadLetters::new(ctx, spec.name)?;
    let mut tick = tokio::time::interval(spec.tick.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            () = ctx.shutdown.cancelled() => break,
            _ = tick.tick() => {}
            first = consumer.recv() => match first {
                Ok(m) => batch.push(Record::of(&m)),
                Err(e) => tracing::warn!(component = spec.name, error = %e, "consumer error"),
            },
        }
        // What arrives without a pause joins the batch.
        while !batch.is_empty() && batch.len() < spec.batch_size {
            match tokio::time::timeout(spec.batch_gap, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(Record::of(&m)),
                Ok(Err(e)) => {
                    tracing::warn!(component = spec.name, error = %e, "consumer error");
                    break;
                }
                Err(_pause) => break,
            }
        }
        let revoked = consumer.raw().context().take_revoked();
        if !revoked.is_empty() {
            handler.revoked(&revoked);
        }
        let mut out = Outcome::default();
        if !batch.is_empty() {
            handler.handle(&batch, &mut out).await?;
        }
        handler
            .tick(
                &Session {
                    consumer: &consumer,
                },
                &mut out,
            )
            .await?;
        settle(&consumer, &dead, out, &revoked, CommitMode::Async).await?;
    }
    let mut out = Outcome::default();
    handler.drain(&mut out).await?;
    let revoked = consumer.raw().context().take_revoked();
    settle(&consumer, &dead, out, &revoked, CommitMode::Async).await
}

/// Dead letters first, acknowledged; then the released offsets (not those of `revoked`
/// partitions: they are their new owner's to commit).
async fn settle(
    consumer: &Consumer,
    dead: &DeadLetters,
    out: Outcome,
    revoked: &[(String, i32)],
    mode: CommitMode,
) -> Result<()> {
    for (record, reason) in &out.refused {
        dead.send(record, reason).await?;
    }
    let revoked: HashSet<&(String, i32)> = revoked.iter().collect();
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in &out.release {
        if revoked.contains(&(topic.clone(), *partition)) {
            continue;
        }
        offsets
            .add_partition_offset(topic, *partition, Offset::Offset(*next))
            .map_err(Error::kafka("committing offsets"))?;
    }
    // A commit that does not arrive (a rebalance under way) only makes the next owner handle
    // the tail again, which the handlers' effects tolerate.
    if offsets.count() > 0
        && let Err(e) = consumer.raw().commit(&offsets, mode)
    {
        tracing::warn!(error = %e, "committing offsets failed; the tail will be handled again");
    }
    Ok(())
}
