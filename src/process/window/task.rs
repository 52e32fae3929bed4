//! The window processor on Kafka: input topic → [`Assigner`]s → repartition topic →
//! [`Combiner`]s → `WindowResult`s on the output topic.
//!
//! Delivery semantics: effectively once for results. One consumer (group `group_id`) reads the
//! input topic and the repartition topic; a batch's changes, announcements, results and dead
//! letters are all acknowledged by the broker *before* the batch's offsets are committed. After
//! a crash the uncommitted tail is processed again: assigners are deterministic, so they re-send
//! the same changes, which combiners recognise by (input partition, offset, number) and skip.
//!
//! State is rebuilt, never trusted from disk: when a partition is first seen (start, restart,
//! rebalance) its state is rebuilt by re-reading the partition from the earliest offset the
//! state at the committed offset depends on. That offset is remembered in a small file per
//! partition (`<data_dir>/state/<group_id>/<topic>-<partition>.json`), written before each
//! commit; when it is missing or belongs to another committed offset (a crash between the two,
//! another machine), the partition is re-read from its start, which gives the same state.
//!
//! The messages it sends and reads are in `wire.rs`, the checkpoint files in `checkpoint.rs`;
//! this file is the processor and its side of the consume loop.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use rdkafka::Message;

use super::{
    Applied, Assigner, Change, Combiner, Extractor, Layout, Op, Outcome, Spec, WindowConfig,
    checkpoint::{Checkpoint, Checkpoints},
    wire::{Decoded, Packer, Wire, render, route, unpack},
};
use crate::{
    error::{Error, Result},
    kafka::{
        KafkaSettings, TopicName,
        admin::Admin,
        producer::{Delivery, Producer},
        reader,
    },
    metrics::{Counter, Gauge, Observe, Samples},
    record::{DeadLetter, format_millis},
    runtime::{
        About, Context, Kind, StageSettings,
        consume::{self, Handler, Outcome as Released, Record, Session},
    },
};

/// Most messages handled as one batch (between commits). Each batch is held twice while it is
/// handled (the runtime's records and this task's own); at 20,000 the window processor peaked
/// about 20 MiB higher on a 200,000-record backlog and drained it no faster.
const MAX_BATCH: usize = 5_000;

/// A pause in arrivals this long ends a batch.
const BATCH_GAP: Duration = Duration::from_millis(50);

/// Input records after which progress is announced even while behind (a backlog larger than
/// this advances the watermark part-way instead of holding every window of it open).
const MAX_UNANNOUNCED: u64 = 500_000;

/// The window processor's counters, for logs and `/metrics`.
#[derive(Debug, Default)]
pub struct WindowMetrics {
    pub records: Counter,
    pub stale: Counter,
    pub bad: Counter,
    pub late: Counter,
    /// Changes sent to the repartition topic, and changes read back from it.
    pub changes: Counter,
    pub combined: Counter,
    pub updates: Counter,
    pub finals: Counter,
    pub rebuilt: Counter,
    pub batches: Counter,
    pub open_cells: Gauge,
    pub watermark_ms: Gauge,
}

impl Observe for WindowMetrics {
    fn observe(&self, out: &mut Samples) {
        for (name, help, c) in [
            (
                "quakestream_window_records_total",
                "Input records read by the window processor.",
                &self.records,
            ),
            (
                "quakestream_window_stale_total",
                "Input records older than a version already applied.",
                &self.stale,
            ),
            (
                "quakestream_window_bad_records_total",
                "Input records dead-lettered as unreadable.",
                &self.bad,
            ),
            (
                "quakestream_window_late_total",
                "Input records later than the allowed lateness (dead-lettered).",
                &self.late,
            ),
            (
                "quakestream_window_changes_total",
                "Changes sent to the repartition topic.",
                &self.changes,
            ),
            (
                "quakestream_window_combined_total",
                "Changes read back and combined into cells.",
                &self.combined,
            ),
            (
                "quakestream_window_updates_total",
                "Window results emitted before the final one (updates).",
                &self.updates,
            ),
            (
                "quakestream_window_finals_total",
                "Final window results emitted.",
                &self.finals,
            ),
            (
                "quakestream_window_rebuilt_total",
                "Records re-read to rebuild state after a start or rebalance.",
                &self.rebuilt,
            ),
            (
                "quakestream_window_batches_total",
                "Input batches committed.",
                &self.batches,
            ),
        ] {
            out.counter(name, help, &[], c.get());
        }
        out.gauge(
            "quakestream_window_open_cells",
            "Window cells still open.",
            &[],
            self.open_cells.get() as f64,
        );
        out.gauge(
            "quakestream_window_watermark_timestamp_seconds",
            "The event-time watermark.",
            &[],
            self.watermark_ms.get() as f64 / 1000.0,
        );
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Delivery>> + Send>>;

struct Processor {
    config: WindowConfig,
    spec: Spec,
    layout: Arc<Layout>,
    extractor: Extractor,
    settings: KafkaSettings,
    producer: Producer,
    dlq: String,
    repartition: String,
    repartitions: i32,
    checkpoints: Checkpoints,
    assigners: HashMap<i32, Assigner>,
    combiners: HashMap<i32, Combiner>,
    /// When each input partition was assigned here and last had a record: quiet for
    /// `idle_after` means idle. Partitions without records already announced as idle.
    last_record: HashMap<i32, std::time::Instant>,
    assigned_at: HashMap<i32, std::time::Instant>,
    announced_empty: std::collections::HashSet<i32>,
    /// The changes of the batch being handled, by repartition partition.
    packer: Packer,
    /// When each repartition partition last brought a change here (`close_after_idle`).
    last_change: HashMap<i32, std::time::Instant>,
    /// Partitions of the input topic.
    inputs: i32,
    metrics: Arc<WindowMetrics>,
    batch_no: u64,
    changes: Vec<Change>,
}

/// The time a batch is handled at, read once for all its records.
#[derive(Clone, Copy)]
struct Clock {
    instant: std::time::Instant,
    /// Wall-clock epoch milliseconds.
    millis: i64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: std::time::Instant::now(),
            millis: chrono::Utc::now().timestamp_millis(),
        }
    }
}

/// A message taken out of the consumer.
struct Incoming {
    input: bool,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

/// The window processor's side of the consume loop: a batch is taken in, then handled on the
/// tick that follows it (every loop turn has one), when the consumer's positions tell whether
/// this member has caught up with its input partitions.
struct Windows {
    processor: Processor,
    pending: Vec<Incoming>,
    /// The next offset to read of each assigned input partition.
    positions: HashMap<i32, i64>,
    /// Input records since progress was last announced.
    unannounced: u64,
}

impl Handler for Windows {
    async fn handle(&mut self, batch: &[Record], _out: &mut Released) -> Result<()> {
        let input = &self.processor.config.input;
        self.pending.extend(batch.iter().map(|r| Incoming {
            input: r.topic == *input,
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            payload: Some(r.payload.clone()),
        }));
        Ok(())
    }

    async fn tick(&mut self, session: &Session<'_>, out: &mut Released) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        for m in batch.iter().filter(|m| m.input) {
            self.positions.insert(m.partition, m.offset + 1);
            self.unannounced += 1;
        }
        let (caught_up, assigned) =
            caught_up(session, &self.processor.config.input, &mut self.positions);
        let announce = caught_up || self.unannounced >= MAX_UNANNOUNCED;
        if announce {
            self.unannounced = 0;
        }
        let commits = self
            .processor
            .handle(batch, &assigned, announce, false)
            .await?;
        release(out, &commits);
        Ok(())
    }

    fn revoked(&mut self, partitions: &[(String, i32)]) {
        self.processor.forget(partitions);
        for (topic, partition) in partitions {
            if *topic == self.processor.config.input {
                self.positions.remove(partition);
            }
        }
    }

    /// Pending coalesced updates go out before stopping.
    async fn drain(&mut self, out: &mut Released) -> Result<()> {
        let batch = std::mem::take(&mut self.pending);
        let commits = self.processor.handle(batch, &[], false, true).await?;
        release(out, &commits);
        Ok(())
    }
}

/// Whether every input partition assigned to this process has been read up to the end the
/// consumer last saw from the broker. A partition nothing was read from yet starts at its
/// committed offset (asked once), or at its start.
fn caught_up(
    session: &Session<'_>,
    input: &str,
    positions: &mut HashMap<i32, i64>,
) -> (bool, Vec<i32>) {
    let assigned = session.assigned(input);
    let mut caught_up = true;
    for &partition in &assigned {
        let Some((low, high)) = session.watermarks(input, partition) else {
            caught_up = false;
            continue;
        };
        let position = *positions
            .entry(partition)
            .or_insert_with(|| session.committed(input, partition).unwrap_or(low).max(low));
        caught_up &= position >= high;
    }
    (caught_up, assigned)
}

/// Offsets to commit, once everything sent for them is delivered (a failed commit is not lost
/// work: the tail is processed again and its changes are recognised as duplicates).
fn release(out: &mut Released, commits: &[(String, i32, i64)]) {
    for (topic, partition, next) in commits {
        out.release(topic, *partition, *next);
    }
}

impl Processor {
    fn forget(&mut self, revoked: &[(String, i32)]) {
        for (topic, partition) in revoked {
            if *topic == self.config.input {
                self.assigners.remove(partition);
                self.last_record.remove(partition);
                self.assigned_at.remove(partition);
                self.announced_empty.remove(partition);
            } else {
                self.combiners.remove(partition);
                self.last_change.remove(partition);
            }
        }
        self.metrics.open_cells.set(self.open_cells());
    }

    fn open_cells(&self) -> i64 {
        self.combiners.values().map(|c| c.open_cells() as i64).sum()
    }

    /// Handles one batch; returns the offsets to commit once everything it sent is delivered.
    /// Packs the progress of the input partitions assigned here, which moves the watermark: the
    /// largest event time of each, and whether it is idle (nothing new for `idle_after` since
    /// it was assigned). A partition that never had a record is announced once it is idle.
    async fn announce(&mut self, assigned: &[i32], sends: &mut Vec<Pending>) -> Result<()> {
        let now = std::time::Instant::now();
        for p in assigned {
            self.assigned_at.entry(*p).or_insert(now);
        }
        let quiet = now.checked_sub(self.config.idle_after).unwrap_or(now);
        for &partition in assigned {
            let active = self
                .last_record
                .get(&partition)
                .into_iter()
                .chain(self.assigned_at.get(&partition))
                .max();
            let idle = active.is_none_or(|at| *at <= quiet);
            let (max_time, idle) = match self.assigners.get_mut(&partition) {
                Some(assigner) => match assigner.end_batch(idle) {
                    Some((max, idle)) => (Some(max), idle),
                    None => continue,
                },
                None if idle && self.announced_empty.insert(partition) => (None, true),
                None => continue,
            };
            let wire = Wire::Time {
                src: partition,
                max_time,
                idle,
            };
            for q in 0..self.repartitions {
                if let Some(full) = self.packer.add(q, &wire) {
                    sends.push(self.send_pack(q, &full).await?);
                }
            }
        }
        Ok(())
    }

    /// Handles one batch; with `announce`, sends the progress of the `assigned` input
    /// partitions. Returns the offsets to commit, once everything it sent is delivered.
    async fn handle(
        &mut self,
        batch: Vec<Incoming>,
        assigned: &[i32],
        announce: bool,
        draining: bool,
    ) -> Result<Vec<(String, i32, i64)>> {
        let mut sends: Vec<Pending> = Vec::new();
        let mut next: BTreeMap<(bool, i32), i64> = BTreeMap::new();
        // One clock reading for the batch (two per record were 6% of a drain).
        let clock = Clock::now();
        for message in batch {
            next.insert((message.input, message.partition), message.offset + 1);
            if message.input {
                self.on_input(message, &mut sends, clock).await?;
            } else {
                self.on_change(message, &mut sends, clock).await?;
            }
        }
        if announce {
            self.announce(assigned, &mut sends).await?;
        }
        // The batch's changes, then the announcements that may close their windows: one pack
        // per repartition partition.
        for (q, pack) in self.packer.finish() {
            sends.push(self.send_pack(q, &pack).await?);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let every = if draining {
            0
        } else {
            i64::try_from(self.config.emit_interval.as_millis()).unwrap_or(i64::MAX)
        };
        let mut results = Vec::new();
        let mut partitions: Vec<i32> = self.combiners.keys().copied().collect();
        partitions.sort_unstable();
        let mut watermark = None;
        for q in partitions {
            let combiner = self.combiners.get_mut(&q).expect("listed above");
            if let Some(idle) = self.config.close_after_idle
                && combiner.open_cells() > 0
                && self
                    .last_change
                    .get(&q)
                    .is_some_and(|t| t.elapsed() >= idle)
            {
                combiner.close_open();
            }
            combiner.end_batch(now, every, &mut results);
            watermark = watermark.max(combiner.watermark());
        }
        if let Some(w) = watermark {
            self.metrics.watermark_ms.set(w);
            // A watermark a combiner has reached: keys whose windows all closed can go.
            for assigner in self.assigners.values_mut() {
                assigner.forget_closed(w);
            }
        }
        self.metrics.open_cells.set(self.open_cells());
        for result in &results {
            let (key, value) = render(&self.layout, result);
            if result.is_final {
                self.metrics.finals.inc();
            } else {
                self.metrics.updates.inc();
            }
            sends.push(Box::pin(
                self.producer
                    .enqueue(
                        &self.config.output,
                        None,
                        Some(&key),
                        &value,
                        Some(result.start),
                    )
                    .await?,
            ));
        }
        if self.config.console && !results.is_empty() {
            self.batch_no += 1;
            let table =
                crate::process::console::window_table(&self.layout, self.batch_no, &results);
            crate::process::console::print_out(&table)?;
        }
        for delivery in futures::future::join_all(sends).await {
            delivery?;
        }
        if !next.is_empty() {
            self.metrics.batches.inc();
        }
        let mut commits = Vec::new();
        for ((input, partition), offset) in next {
            // Where a restart replays from, and the event time reached there.
            let (topic, replay_from, time) = if input {
                let Some(a) = self.assigners.get(&partition) else {
                    continue;
                };
                (&self.config.input, a.replay_from(), a.max_time())
            } else {
                let Some(c) = self.combiners.get(&partition) else {
                    continue;
                };
                (&self.repartition, c.replay_from(), c.watermark())
            };
            let checkpoint = Checkpoint {
                committed: offset,
                replay_from: replay_from.unwrap_or(offset),
                time,
            };
            let topic = topic.clone();
            self.checkpoints.save(&topic, partition, checkpoint);
            commits.push((topic, partition, offset));
        }
        Ok(commits)
    }

    async fn on_input(
        &mut self,
        message: Incoming,
        sends: &mut Vec<Pending>,
        clock: Clock,
    ) -> Result<()> {
        if !self.assigners.contains_key(&message.partition) {
            let assigner = self
                .rebuild_input(message.partition, message.offset)
                .await?;
            self.assigners.insert(message.partition, assigner);
        }
        self.metrics.records.inc();
        self.last_record.insert(message.partition, clock.instant);
        self.announced_empty.remove(&message.partition);
        let payload = message.payload.as_deref().unwrap_or_default();
        let input = match self.extractor.extract_at(
            payload,
            message.key.as_deref(),
            message.partition,
            message.offset,
            clock.millis,
        ) {
            Ok(input) => input,
            Err(reason) => {
                self.metrics.bad.inc();
                let key = message.key.as_deref().map(String::from_utf8_lossy);
                let reason = format!("bad record: {reason}");
                let at = (message.partition, message.offset);
                let payload = String::from_utf8_lossy(payload).into_owned();
                sends.push(
                    self.dead_letter(key.as_deref(), reason, at, payload)
                        .await?,
                );
                return Ok(());
            }
        };
        let assigner = self
            .assigners
            .get_mut(&message.partition)
            .expect("built above");
        self.changes.clear();
        if assigner.apply(message.offset, input, &mut self.changes) == Applied::Stale {
            self.metrics.stale.inc();
        }
        let changes = std::mem::take(&mut self.changes);
        for change in &changes {
            self.metrics.changes.inc();
            let wire = match &change.op {
                Op::Upsert { time, values, last } => Wire::Upsert {
                    src: change.src,
                    off: change.offset,
                    seq: change.seq,
                    w: change.start,
                    g: change.group.to_string(),
                    k: change.key.to_string(),
                    t: *time,
                    v: values.to_vec(),
                    last: *last,
                    // A late record's dead letter reads its record back from the input topic
                    // (`input_payloads`): carrying it here doubled the repartition bytes.
                    raw: None,
                },
                Op::Retract => Wire::Retract {
                    src: change.src,
                    off: change.offset,
                    seq: change.seq,
                    w: change.start,
                    g: change.group.to_string(),
                    k: change.key.to_string(),
                },
            };
            let q = route(change.start, &change.group, self.repartitions);
            if let Some(full) = self.packer.add(q, &wire) {
                sends.push(self.send_pack(q, &full).await?);
            }
        }
        self.changes = changes;
        Ok(())
    }

    async fn on_change(
        &mut self,
        message: Incoming,
        sends: &mut Vec<Pending>,
        clock: Clock,
    ) -> Result<()> {
        if !self.combiners.contains_key(&message.partition) {
            let combiner = self
                .rebuild_combiner(message.partition, message.offset)
                .await?;
            self.combiners.insert(message.partition, combiner);
            // A rebuilt combiner's quiet time counts from now, not from before a restart.
            self.last_change
                .insert(message.partition, std::time::Instant::now());
        }
        let combiner = self
            .combiners
            .get_mut(&message.partition)
            .expect("built above");
        let payload = message.payload.as_deref().unwrap_or_default();
        let wire = match serde_json::from_slice::<Wire>(payload) {
            Ok(wire) => wire,
            Err(e) => {
                // Only quakestream writes this topic; something else did.
                tracing::warn!(partition = message.partition, offset = message.offset, error = %e,
                    "window processor: unreadable message on the repartition topic, skipped");
                return Ok(());
            }
        };
        let mut late = Vec::new();
        let mut changed = false;
        unpack(wire, &mut |decoded| match decoded {
            Decoded::Time {
                src,
                max_time,
                idle,
            } => combiner.source_time(src, max_time, idle),
            Decoded::Change(change, raw) => {
                changed = true;
                self.metrics.combined.inc();
                if combiner.apply(message.offset, &change) == Outcome::Late {
                    self.metrics.late.inc();
                    if let Op::Upsert { time, .. } = change.op {
                        let watermark = combiner
                            .watermark()
                            .and_then(format_millis)
                            .unwrap_or_default();
                        let reason = format!(
                            "late: event time {} is behind the watermark {watermark} by more \
                             than the allowed lateness",
                            format_millis(time).unwrap_or_default()
                        );
                        late.push((change, reason, raw));
                    }
                }
            }
        });
        if changed {
            self.last_change.insert(message.partition, clock.instant);
        }
        let missing: Vec<(i32, i64)> = late
            .iter()
            .filter(|(_, _, raw)| raw.is_none())
            .map(|(change, _, _)| (change.src, change.offset))
            .collect();
        let mut found = self.input_payloads(&missing).await?;
        for (change, reason, raw) in late {
            let at = (change.src, change.offset);
            // Gone from the input topic (retention): the letter still says where it was.
            let payload = raw.or_else(|| found.remove(&at)).unwrap_or_default();
            sends.push(
                self.dead_letter(Some(&change.key), reason, at, payload)
                    .await?,
            );
        }
        Ok(())
    }

    /// The payloads of the input records at `wanted` (partition, offset), read back from the
    /// input topic: one read per partition, over the range the offsets span.
    async fn input_payloads(&self, wanted: &[(i32, i64)]) -> Result<HashMap<(i32, i64), String>> {
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
        for &(partition, offset) in wanted {
            let range = ranges.entry(partition).or_insert((offset, offset + 1));
            range.0 = range.0.min(offset);
            range.1 = range.1.max(offset + 1);
        }
        let wanted: HashSet<(i32, i64)> = wanted.iter().copied().collect();
        let (settings, topic) = (self.settings.clone(), self.config.input.clone());
        tokio::task::spawn_blocking(move || {
            let mut found = HashMap::new();
            for (partition, (from, to)) in ranges {
                reader::scan_partition(&settings, &topic, partition, from, to, |m| {
                    if wanted.contains(&(partition, m.offset())) {
                        let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
                        found.insert((partition, m.offset()), payload.into_owned());
                    }
                })?;
            }
            Ok::<_, Error>(found)
        })
        .await
        .map_err(|e| Error::Broker(format!("reading back late records: {e}")))?
    }

    /// Queues one pack of changes for repartition partition `q`.
    async fn send_pack(&self, q: i32, pack: &[u8]) -> Result<Pending> {
        Ok(Box::pin(
            self.producer
                .enqueue(&self.repartition, Some(q), None, pack, None)
                .await?,
        ))
    }

    /// Queues a dead letter for the input record at `(partition, offset)`.
    async fn dead_letter(
        &self,
        key: Option<&str>,
        reason: String,
        (partition, offset): (i32, i64),
        payload: String,
    ) -> Result<Pending> {
        let letter = DeadLetter {
            reason,
            source: "window".into(),
            topic: Some(self.config.input.clone()),
            partition: Some(partition),
            offset: Some(offset),
            payload,
        };
        let body = serde_json::to_vec(&letter).unwrap_or_default();
        Ok(Box::pin(
            self.producer
                .enqueue(&self.dlq, None, key, &body, None)
                .await?,
        ))
    }

    /// The assigner of `partition` as it stood at `committed`.
    async fn rebuild_input(&self, partition: i32, committed: i64) -> Result<Assigner> {
        let saved = self
            .checkpoints
            .load(&self.config.input, partition, committed);
        let from = saved.map_or(0, |c| c.replay_from);
        let (settings, topic, extractor, spec) = (
            self.settings.clone(),
            self.config.input.clone(),
            self.extractor.clone(),
            self.spec,
        );
        let (mut assigner, read) = tokio::task::spawn_blocking(move || {
            let mut assigner = Assigner::new(spec, partition);
            let mut scratch = Vec::new();
            let read =
                reader::scan_partition(&settings, &topic, partition, from, committed, |m| {
                    let payload = m.payload().unwrap_or_default();
                    if let Ok(input) = extractor.extract(payload, m.key(), partition, m.offset()) {
                        assigner.apply(m.offset(), input, &mut scratch);
                        scratch.clear();
                    }
                })?;
            Ok::<_, Error>((assigner, read))
        })
        .await
        .map_err(|e| Error::Broker(format!("rebuilding window state: {e}")))??;
        assigner.restore_max_time(saved.and_then(|c| c.time));
        if let Some(w) = self
            .combiners
            .values()
            .filter_map(Combiner::watermark)
            .max()
        {
            assigner.forget_closed(w);
        }
        self.metrics.rebuilt.add(read);
        if read > 0 {
            tracing::info!(topic = %self.config.input, partition, from, committed, read,
                keys = assigner.keys(), "window state rebuilt");
        }
        Ok(assigner)
    }

    /// The combiner of repartition `partition` as it stood at `committed`.
    async fn rebuild_combiner(&self, partition: i32, committed: i64) -> Result<Combiner> {
        let saved = self
            .checkpoints
            .load(&self.repartition, partition, committed);
        let from = saved.map_or(0, |c| c.replay_from);
        let (settings, topic, spec, layout, inputs) = (
            self.settings.clone(),
            self.repartition.clone(),
            self.spec,
            self.layout.clone(),
            self.inputs,
        );
        let (mut combiner, read) = tokio::task::spawn_blocking(move || {
            let mut combiner = Combiner::new(spec, layout, inputs);
            let read =
                reader::scan_partition(&settings, &topic, partition, from, committed, |m| {
                    let Ok(wire) = serde_json::from_slice::<Wire>(m.payload().unwrap_or_default())
                    else {
                        return;
                    };
                    unpack(wire, &mut |decoded| match decoded {
                        Decoded::Time {
                            src,
                            max_time,
                            idle,
                        } => combiner.source_time(src, max_time, idle),
                        Decoded::Change(change, _) => {
                            combiner.apply(m.offset(), &change);
                        }
                    });
                })?;
            Ok::<_, Error>((combiner, read))
        })
        .await
        .map_err(|e| Error::Broker(format!("rebuilding window state: {e}")))??;
        combiner.restore(saved.and_then(|c| c.time));
        self.metrics.rebuilt.add(read);
        if read > 0 {
            tracing::info!(topic = %self.repartition, partition, from, committed, read,
                open_cells = combiner.open_cells(), "window state rebuilt");
        }
        Ok(combiner)
    }
}

impl StageSettings for WindowConfig {
    type Counters = WindowMetrics;

    fn counters(&self) -> WindowMetrics {
        WindowMetrics::default()
    }

    fn about(&self, _data_dir: &std::path::Path) -> About {
        let shape = match self.slide {
            Some(slide) => format!(
                "{} windows sliding by {}",
                humantime::format_duration(self.size),
                humantime::format_duration(slide)
            ),
            None => format!("{} windows", humantime::format_duration(self.size)),
        };
        let aggregates: Vec<&str> = self.aggregates.iter().map(|a| a.name.as_str()).collect();
        About {
            name: "window".into(),
            kind: Kind::Processor,
            reads: vec![self.input.clone(), self.repartition_topic()],
            writes: vec![self.repartition_topic(), self.output.clone()],
            line: format!(
                "{} -> {shape} ({}), lateness {} -> topic {}",
                self.input,
                aggregates.join(", "),
                humantime::format_duration(self.lateness),
                self.output
            ),
        }
    }

    fn check(&self) -> Result<()> {
        let invalid = Error::config("[window]");
        match self.validate() {
            Ok(()) => self.spec().map(drop).map_err(invalid),
            Err(message) => Err(invalid(message)),
        }
    }

    /// Runs the window processor until `shutdown`.
    async fn run(&self, ctx: &Context, metrics: Arc<WindowMetrics>) -> Result<()> {
        let config = self;
        let (dlq, data_dir, settings) = (ctx.dlq.as_str(), ctx.data_dir.as_path(), &ctx.kafka);
        let invalid = |message: String| Error::Config {
            origin: "[window]".into(),
            message,
        };
        config.validate().map_err(invalid)?;
        let tolerance = ctx.checks.future_tolerance;
        let spec = config.spec().map_err(invalid)?.ahead_of_clock(tolerance);
        let mut extractor = config.extractor().map_err(invalid)?;
        extractor.ahead = spec.ahead;
        let names = [
            config.input.as_str(),
            &config.repartition_topic(),
            config.output.as_str(),
            dlq,
        ]
        .iter()
        .map(|t| t.parse::<TopicName>())
        .collect::<Result<Vec<_>>>()?;
        let admin = Admin::connect(settings).await?;
        admin.ensure_topics(&names).await?;
        let inputs = admin.describe(&names[0]).await?.partitions.len() as i32;
        let repartitions = admin.describe(&names[1]).await?.partitions.len() as i32;
        if repartitions == 0 {
            return Err(Error::Broker(format!("{} has no partitions", names[1])));
        }
        let processor = Processor {
            config: config.clone(),
            spec,
            layout: extractor.layout.clone(),
            extractor,
            settings: settings.clone(),
            producer: Producer::new(settings)?,
            dlq: dlq.to_string(),
            repartition: config.repartition_topic(),
            repartitions,
            checkpoints: Checkpoints::new(data_dir.join("state").join(&config.group_id)),
            assigners: HashMap::new(),
            combiners: HashMap::new(),
            last_record: HashMap::new(),
            assigned_at: HashMap::new(),
            announced_empty: std::collections::HashSet::new(),
            last_change: HashMap::new(),
            packer: Packer::default(),
            inputs,
            metrics,
            batch_no: 0,
            changes: Vec::new(),
        };
        tracing::info!(
            input = %config.input, output = %config.output, group = %config.group_id,
            size = ?config.size, lateness = ?config.lateness, "window processor started"
        );
        let topics = vec![config.input.clone(), config.repartition_topic()];
        let spec = consume::Spec::new(
            "window",
            &config.group_id,
            config.instance_id.as_deref(),
            topics,
        )
        .batches(MAX_BATCH, BATCH_GAP)
        .tick(config.emit_interval.max(Duration::from_millis(100)));
        let mut handler = Windows {
            processor,
            pending: Vec::new(),
            positions: HashMap::new(),
            unannounced: 0,
        };
        consume::run(ctx, &spec, &mut handler).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::process::window::AggOp;
    use crate::process::window::WindowResult;

    #[test]
    fn routing_is_stable_and_spread() {
        assert_eq!(route(0, "[]", 3), route(0, "[]", 3));
        let used: BTreeSet<i32> = (0..100).map(|i| route(i * 300_000, "[]", 3)).collect();
        assert_eq!(used.len(), 3);
        assert!((0..100).all(|i| (0..3).contains(&route(i, "[\"us\"]", 3))));
    }

    #[test]
    fn results_render_like_the_contract() {
        let layout = Layout::new(
            &["net".into()],
            &[
                ("count".into(), AggOp::Count, None),
                ("avg_mag".into(), AggOp::Avg, Some("mag".into())),
            ],
        )
        .unwrap();
        let result = WindowResult {
            start: 1_746_366_000_000,
            end: 1_746_366_300_000,
            group: Arc::from(r#"["us"]"#),
            values: vec![Some(2.0), None],
            is_final: true,
            emitted_at: 1_746_366_018_110,
        };
        let (key, value) = render(&layout, &result);
        assert_eq!(key, "2025-05-04T13:40:00.000Z|us");
        assert_eq!(
            String::from_utf8(value).unwrap(),
            r#"{"window_start":"2025-05-04T13:40:00.000Z","window_end":"2025-05-04T13:45:00.000Z","net":"us","count":2,"avg_mag":null,"final":true,"emitted_at":"2025-05-04T13:40:18.110Z"}"#
        );
    }

    /// The one change or announcement a message carries.
    fn decode(text: &str) -> Decoded {
        let mut all = Vec::new();
        unpack(serde_json::from_str(text).unwrap(), &mut |d| all.push(d));
        assert_eq!(all.len(), 1);
        all.pop().unwrap()
    }

    #[test]
    fn wire_messages_round_trip() {
        let text = r#"{"op":"upsert","src":1,"off":5,"seq":0,"w":0,"g":"[]","k":"us1","t":7,"v":[4.5,null],"last":true}"#;
        let Decoded::Change(change, raw) = decode(text) else {
            panic!("a change");
        };
        assert_eq!((change.src, change.offset, &*change.key), (1, 5, "us1"));
        assert_eq!(raw, None);
        assert!(serde_json::from_str::<Wire>(r#"{"op":"upsert"}"#).is_err());
        assert!(matches!(
            decode(r#"{"op":"time","src":0,"max_time":1}"#),
            Decoded::Time { idle: false, .. }
        ));
    }

    #[test]
    fn a_pack_carries_its_changes_in_order_and_splits_when_large() {
        let upsert = |off: i64| Wire::Upsert {
            src: 0,
            off,
            seq: 0,
            w: 0,
            g: "[]".into(),
            k: format!("k{off}"),
            t: 1,
            v: vec![Some(1.0)],
            last: true,
            raw: Some("x".repeat(1000)),
        };
        let mut packer = Packer::default();
        let mut sent = Vec::new();
        for off in 0..600 {
            // Two partitions, interleaved.
            if let Some(full) = packer.add((off % 2) as i32, &upsert(off)) {
                sent.push(full);
            }
        }
        sent.extend(packer.finish().into_iter().map(|(_, pack)| pack));
        assert!(packer.finish().is_empty());
        // About 1.1 kB a change: 600 changes do not fit in one pack per partition.
        assert!(sent.len() > 2, "{} packs", sent.len());
        let mut offsets: [Vec<i64>; 2] = Default::default();
        for pack in &sent {
            assert!(pack.len() < Packer::MAX_BYTES + 2048);
            let wire: Wire = serde_json::from_slice(pack).unwrap();
            unpack(wire, &mut |d| {
                let Decoded::Change(change, raw) = d else {
                    panic!("only changes");
                };
                assert_eq!(raw.map(|r| r.len()), Some(1000));
                offsets[(change.offset % 2) as usize].push(change.offset);
            });
        }
        // Every change once, each partition's in the order they were made.
        for (p, got) in offsets.iter().enumerate() {
            let want: Vec<i64> = (0..600).filter(|o| o % 2 == p as i64).collect();
            assert_eq!(got, &want);
        }
    }
}
