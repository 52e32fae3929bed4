//! The window engine: event-time tumbling and hopping windows over keyed, versioned records.
//!
//! Pure logic, no Kafka: [`crate::process::window_run`] feeds it. It is split in two stages so
//! that it scales out over a consumer group (docs/windows.md has the whole design):
//!
//! - [`Assigner`], one per *input partition*: keeps each record key's newest version and turns a
//!   record into [`Change`]s: `Upsert` the key's values into each window (and group) its event
//!   time falls in, `Retract` it from the windows its previous version was in. Revisions of one
//!   event share a key, and so a partition, so this needs no coordination.
//! - [`Combiner`], one per *repartition partition*: changes travel keyed by (window, group), so
//!   every change to one window cell meets in one combiner, whatever process assigned it. It
//!   holds each open cell's content (key → values), owns the watermark, decides lateness, and
//!   emits [`WindowResult`]s: coalesced updates and one final result per cell.
//!
//! Semantics, which the property test's oracle restates by brute force:
//! - A record replaces its key's previous record when its version is newer; an older or equal
//!   version is stale and ignored. `deleted` records retract and add nothing.
//! - Each input partition's progress is the largest event time it has seen; the watermark is the
//!   smallest progress over the partitions that are not idle (all idle: the largest), minus the
//!   allowed lateness, and never moves back. There is none until every input partition has
//!   announced progress or idleness. When the input is quiet it is simply the largest
//!   event time seen minus the lateness; while partitions are read at different speeds (a
//!   process restarting, a rebalance, a second process joining) the one behind holds it back,
//!   so its records are not made late by another partition's progress. Partitions announce
//!   after input batches and the combiner advances between its own batches, so a batch (one
//!   poll of a feed carrying a day of events) is never late against itself.
//! - A cell closes when the watermark reaches its window's end: its final result is emitted and
//!   its state dropped. Changes to a closed cell are ignored; an upsert that finds every one of
//!   its record's windows closed makes the record *late* (counted, dead-lettered).
//! - Aggregates are computed from the cell's content when emitted, summing in sorted order, so
//!   that a result never depends on the order records arrived in or on a restart.

use std::{
    cmp::Ordering,
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most windows one record may fall in (`size / slide`): more is almost surely a typo.
pub const MAX_WINDOWS_PER_RECORD: i64 = 1000;

/// Window geometry, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub size: i64,
    pub slide: i64,
    pub lateness: i64,
}

impl Spec {
    /// `slide` absent: tumbling windows (`slide == size`).
    pub fn new(
        size: Duration,
        slide: Option<Duration>,
        lateness: Duration,
    ) -> Result<Spec, String> {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let (size, lateness) = (ms(size), ms(lateness));
        let slide = slide.map_or(size, ms);
        if size <= 0 || slide <= 0 {
            return Err("window size and slide must be at least 1ms".into());
        }
        if slide > size {
            return Err(format!(
                "slide ({slide}ms) is longer than the window ({size}ms): records between windows \
                 would be dropped"
            ));
        }
        if size / slide > MAX_WINDOWS_PER_RECORD {
            return Err(format!(
                "a {size}ms window sliding by {slide}ms puts each record in {} windows; at most \
                 {MAX_WINDOWS_PER_RECORD} are allowed",
                size / slide
            ));
        }
        Ok(Spec {
            size,
            slide,
            lateness,
        })
    }

    /// Starts of the windows that contain event time `t`, newest (last to close) first.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> + use<> {
        let (size, slide) = (self.size, self.slide);
        let newest = t.div_euclid(slide).saturating_mul(slide);
        std::iter::successors(Some(newest), move |s| s.checked_sub(slide))
            .take_while(move |s| s.saturating_add(size) > t)
    }

    pub fn end(&self, start: i64) -> i64 {
        start.saturating_add(self.size)
    }
}

/// A record's version: newer replaces older. Numbers and RFC 3339 times compare as numbers,
/// other strings as text; a missing version is older than any.
#[derive(Debug, Clone)]
pub enum Version {
    Missing,
    Num(f64),
    Text(Box<str>),
}

impl Version {
    fn rank(&self) -> u8 {
        match self {
            Version::Missing => 0,
            Version::Num(_) => 1,
            Version::Text(_) => 2,
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Version::Num(a), Version::Num(b)) => a.total_cmp(b),
            (Version::Text(a), Version::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// One input record, reduced to what windows need.
#[derive(Debug, Clone)]
pub struct Input {
    pub key: Arc<str>,
    pub version: Version,
    /// Event time, epoch milliseconds.
    pub time: i64,
    pub deleted: bool,
    /// The group-by values as a JSON array (`[]` without group-by): the cell's identity.
    pub group: Arc<str>,
    /// The aggregated fields' values, in [`Layout::fields`] order; `None` for null or missing.
    pub values: Arc<[Option<f64>]>,
}

/// What a record does to one window cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Sets the key's values in the cell. `last` marks the record's newest window (the last to
    /// close): if even that one is closed, the record is late.
    Upsert {
        time: i64,
        values: Arc<[Option<f64>]>,
        last: bool,
    },
    Retract,
}

/// A change to one cell, identified by where it came from so that a re-sent change (after a
/// restart of its assigner) is recognised and skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Input partition and offset of the record, and the change's number within the record.
    pub src: i32,
    pub offset: i64,
    pub seq: u32,
    pub start: i64,
    pub group: Arc<str>,
    pub key: Arc<str>,
    pub op: Op,
}

/// What [`Assigner::apply`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    New,
    Revised,
    Deleted,
    /// An older or equal version of what the key already has: ignored.
    Stale,
}

#[derive(Debug, Clone)]
struct Entry {
    version: Version,
    time: i64,
    group: Arc<str>,
    deleted: bool,
    offset: i64,
}

/// Stage one, per input partition: record versions in, cell changes out.
#[derive(Debug, Clone)]
pub struct Assigner {
    spec: Spec,
    partition: i32,
    keys: HashMap<Arc<str>, Entry>,
    max_time: Option<i64>,
    announced: Option<(i64, bool)>,
}

impl Assigner {
    pub fn new(spec: Spec, partition: i32) -> Assigner {
        Assigner {
            spec,
            partition,
            keys: HashMap::new(),
            max_time: None,
            announced: None,
        }
    }

    /// Applies the record at `offset`, appending its changes to `out`.
    pub fn apply(&mut self, offset: i64, input: Input, out: &mut Vec<Change>) -> Applied {
        let spec = self.spec;
        let mut seq = 0u32;
        let mut change = |start: i64, group: &Arc<str>, key: &Arc<str>, op: Op| {
            out.push(Change {
                src: self.partition,
                offset,
                seq,
                start,
                group: group.clone(),
                key: key.clone(),
                op,
            });
            seq += 1;
        };
        let new_starts = || spec.starts(input.time);
        let applied = match self.keys.get_mut(&input.key) {
            Some(entry) if input.version <= entry.version => return Applied::Stale,
            Some(entry) => {
                if !entry.deleted {
                    // Cells the new version upserts into need no retraction: an upsert replaces.
                    let same_group = !input.deleted && entry.group == input.group;
                    for start in spec.starts(entry.time) {
                        if same_group && new_starts().any(|s| s == start) {
                            continue;
                        }
                        change(start, &entry.group, &input.key, Op::Retract);
                    }
                }
                *entry = Entry {
                    version: input.version,
                    time: input.time,
                    group: input.group.clone(),
                    deleted: input.deleted,
                    offset,
                };
                if input.deleted {
                    Applied::Deleted
                } else {
                    Applied::Revised
                }
            }
            None => {
                self.keys.insert(
                    input.key.clone(),
                    Entry {
                        version: input.version,
                        time: input.time,
                        group: input.group.clone(),
                        deleted: input.deleted,
                        offset,
                    },
                );
                if input.deleted {
                    Applied::Deleted
                } else {
                    Applied::New
                }
            }
        };
        if !input.deleted {
            for (i, start) in new_starts().enumerate() {
                change(
                    start,
                    &input.group,
                    &input.key,
                    Op::Upsert {
                        time: input.time,
                        values: input.values.clone(),
                        last: i == 0,
                    },
                );
            }
        }
        self.max_time = self.max_time.max(Some(input.time));
        applied
    }

    /// The partition's progress to announce to the combiners — (largest event time, idle) —
    /// when it changed since the last announcement. The runtime calls it between input batches
    /// once it has caught up with what was in the partitions, so that records published together
    /// (one poll, spread over partitions fetched at slightly different moments) are never late
    /// against each other; `idle` when the partition has had nothing new for a while.
    pub fn end_batch(&mut self, idle: bool) -> Option<(i64, bool)> {
        let now = (self.max_time?, idle);
        if self.announced == Some(now) {
            return None;
        }
        self.announced = Some(now);
        Some(now)
    }

    /// Forgets keys whose every window is closed at `watermark`, one a combiner has reached:
    /// a later version of such a key could only change closed windows.
    pub fn forget_closed(&mut self, watermark: i64) {
        let size = self.spec.size;
        self.keys
            .retain(|_, e| e.time.saturating_add(size) > watermark);
    }

    /// The earliest input offset the current state depends on: a restart re-reads from there.
    pub fn replay_from(&self) -> Option<i64> {
        self.keys.values().map(|e| e.offset).min()
    }

    pub fn max_time(&self) -> Option<i64> {
        self.max_time
    }

    /// After a replay, the largest event time the partition had seen before.
    pub fn restore_max_time(&mut self, max_time: Option<i64>) {
        self.max_time = self.max_time.max(max_time);
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

/// Aggregate functions. `count` without a field counts records; with one, non-null values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggOp {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// How records are read and results written: group-by fields, the aggregated fields, and the
/// aggregates over them.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub group_by: Vec<String>,
    /// Distinct fields that aggregates read, in [`Input::values`] order.
    pub fields: Vec<String>,
    /// (output name, function, index into `fields`).
    pub aggregates: Vec<(String, AggOp, Option<usize>)>,
}

impl Layout {
    /// Checks names and builds the field list. `aggregates` is (name, op, field).
    pub fn new(
        group_by: &[String],
        aggregates: &[(String, AggOp, Option<String>)],
    ) -> Result<Layout, String> {
        let reserved = ["window_start", "window_end", "final", "emitted_at"];
        let mut names: Vec<&str> = Vec::new();
        for name in group_by
            .iter()
            .map(String::as_str)
            .chain(aggregates.iter().map(|a| a.0.as_str()))
        {
            if name.is_empty() {
                return Err("group-by fields and aggregate names must not be empty".into());
            }
            if reserved.contains(&name) {
                return Err(format!("`{name}` is a name the window result uses itself"));
            }
            if names.contains(&name) {
                return Err(format!(
                    "`{name}` appears twice among group-by fields and aggregates"
                ));
            }
            names.push(name);
        }
        if aggregates.is_empty() {
            return Err("at least one aggregate is needed".into());
        }
        let mut fields: Vec<String> = Vec::new();
        let mut compiled = Vec::new();
        for (name, op, field) in aggregates {
            let index = match field {
                Some(f) => Some(match fields.iter().position(|x| x == f) {
                    Some(i) => i,
                    None => {
                        fields.push(f.clone());
                        fields.len() - 1
                    }
                }),
                None if *op == AggOp::Count => None,
                None => return Err(format!("aggregate `{name}` needs a field")),
            };
            compiled.push((name.clone(), *op, index));
        }
        Ok(Layout {
            group_by: group_by.to_vec(),
            fields,
            aggregates: compiled,
        })
    }
}

/// One emission of a window cell.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub start: i64,
    pub end: i64,
    pub group: Arc<str>,
    /// One per [`Layout::aggregates`]; `None` when no record had the field.
    pub values: Vec<Option<f64>>,
    pub is_final: bool,
    pub emitted_at: i64,
}

/// What [`Combiner::apply`] did with a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Already applied (re-sent after a restart upstream).
    Duplicate,
    /// An upsert into the record's last window, which is closed: the record is late.
    Late,
    /// A change to a closed cell that needs no report.
    Ignored,
}

#[derive(Debug, Clone)]
struct Cell {
    content: HashMap<Arc<str>, Arc<[Option<f64>]>>,
    /// Repartition offset of the change that opened the cell.
    first_offset: i64,
    dirty: bool,
    last_emit: Option<i64>,
}

/// Stage two, per repartition partition: cell changes in, window results out.
#[derive(Debug, Clone)]
pub struct Combiner {
    spec: Spec,
    layout: Arc<Layout>,
    cells: BTreeMap<(i64, Arc<str>), Cell>,
    /// Input partitions: their number, and each one's last announcement (largest event time
    /// if it has seen any, idle).
    inputs: i32,
    sources: HashMap<i32, (Option<i64>, bool)>,
    applied: HashMap<i32, (i64, u32)>,
    watermark: Option<i64>,
    scratch: Vec<f64>,
}

impl Combiner {
    /// `inputs`: how many partitions the input topic has.
    pub fn new(spec: Spec, layout: Arc<Layout>, inputs: i32) -> Combiner {
        Combiner {
            spec,
            layout,
            inputs,
            cells: BTreeMap::new(),
            sources: HashMap::new(),
            applied: HashMap::new(),
            watermark: None,
            scratch: Vec::new(),
        }
    }

    fn closed(&self, start: i64) -> bool {
        self.watermark.is_some_and(|w| self.spec.end(start) <= w)
    }

    /// Applies the change read at repartition `offset`.
    pub fn apply(&mut self, offset: i64, change: &Change) -> Outcome {
        let position = (change.offset, change.seq);
        match self.applied.get_mut(&change.src) {
            Some(done) if position <= *done => return Outcome::Duplicate,
            Some(done) => *done = position,
            None => {
                self.applied.insert(change.src, position);
            }
        }
        if self.closed(change.start) {
            return match change.op {
                Op::Upsert { last: true, .. } => Outcome::Late,
                _ => Outcome::Ignored,
            };
        }
        let cell_key = (change.start, change.group.clone());
        match &change.op {
            Op::Upsert { values, .. } => {
                let cell = self.cells.entry(cell_key).or_insert_with(|| Cell {
                    content: HashMap::new(),
                    first_offset: offset,
                    dirty: false,
                    last_emit: None,
                });
                cell.content.insert(change.key.clone(), values.clone());
                cell.dirty = true;
            }
            Op::Retract => {
                if let Some(cell) = self.cells.get_mut(&cell_key)
                    && cell.content.remove(&change.key).is_some()
                {
                    cell.dirty = true;
                }
            }
        }
        Outcome::Applied
    }

    /// An input partition's announcement of the largest event time it has seen, and whether it
    /// is idle.
    pub fn source_time(&mut self, src: i32, max_time: Option<i64>, idle: bool) {
        let known = self.sources.entry(src).or_insert((max_time, idle));
        *known = (known.0.max(max_time), idle);
    }

    /// The watermark the announcements allow: the smallest progress of the partitions that are
    /// not idle (all idle: the largest), minus the lateness; none while a partition is unheard.
    fn candidate(&self) -> Option<i64> {
        if (0..self.inputs).any(|p| !self.sources.contains_key(&p)) {
            return None;
        }
        let busy = self
            .sources
            .values()
            .filter(|(_, idle)| !idle)
            .filter_map(|(t, _)| *t)
            .min();
        let progress = busy.or_else(|| self.sources.values().filter_map(|(t, _)| *t).max())?;
        Some(progress.saturating_sub(self.spec.lateness))
    }

    /// Ends a batch: advances the watermark, emits a final result for every cell it closed and an
    /// update for every changed cell whose last emission is at least `every` ms old.
    pub fn end_batch(&mut self, now: i64, every: i64, out: &mut Vec<WindowResult>) {
        self.watermark = self.watermark.max(self.candidate());
        if let Some(watermark) = self.watermark {
            // Cells are ordered by start; closed ones (end <= watermark) come first.
            let size = self.spec.size;
            while let Some(entry) = self.cells.first_entry() {
                if entry.key().0.saturating_add(size) > watermark {
                    break;
                }
                let ((start, group), cell) = entry.remove_entry();
                let result = self.result(start, group, &cell, true, now);
                out.push(result);
            }
        }
        let due: Vec<(i64, Arc<str>)> = self
            .cells
            .iter()
            .filter(|(_, c)| c.dirty && c.last_emit.is_none_or(|t| now.saturating_sub(t) >= every))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let mut cell = self.cells.remove(&key).expect("the key was just listed");
            out.push(self.result(key.0, key.1.clone(), &cell, false, now));
            cell.dirty = false;
            cell.last_emit = Some(now);
            self.cells.insert(key, cell);
        }
    }

    fn result(
        &mut self,
        start: i64,
        group: Arc<str>,
        cell: &Cell,
        is_final: bool,
        now: i64,
    ) -> WindowResult {
        let mut values = Vec::with_capacity(self.layout.aggregates.len());
        for (_, op, field) in &self.layout.aggregates {
            let Some(field) = *field else {
                values.push(Some(cell.content.len() as f64));
                continue;
            };
            self.scratch.clear();
            self.scratch.extend(
                cell.content
                    .values()
                    .filter_map(|v| v.get(field).copied().flatten()),
            );
            // Summing in sorted order makes the result independent of arrival order.
            self.scratch.sort_unstable_by(f64::total_cmp);
            let n = self.scratch.len();
            let value = match op {
                AggOp::Count => Some(n as f64),
                _ if n == 0 => None,
                AggOp::Sum => Some(self.scratch.iter().sum()),
                AggOp::Avg => Some(self.scratch.iter().sum::<f64>() / n as f64),
                AggOp::Min => self.scratch.first().copied(),
                AggOp::Max => self.scratch.last().copied(),
            };
            values.push(value);
        }
        WindowResult {
            start,
            end: self.spec.end(start),
            group,
            values,
            is_final,
            emitted_at: now,
        }
    }

    /// Whether changed cells are waiting for their coalescing interval.
    pub fn pending(&self) -> bool {
        self.cells.values().any(|c| c.dirty)
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// After a replay: the watermark reached before, and cells it closed dropped without
    /// emitting (their finals were sent). Open cells are not re-sent: updates are previews, and
    /// the next change or the final carries the current value.
    pub fn restore(&mut self, watermark: Option<i64>) {
        self.watermark = self.watermark.max(self.candidate()).max(watermark);
        if let Some(w) = self.watermark {
            let size = self.spec.size;
            self.cells
                .retain(|(start, _), _| start.saturating_add(size) > w);
        }
        for cell in self.cells.values_mut() {
            cell.dirty = false;
        }
    }

    /// The earliest repartition offset an open cell depends on.
    pub fn replay_from(&self) -> Option<i64> {
        self.cells.values().map(|c| c.first_offset).min()
    }

    pub fn open_cells(&self) -> usize {
        self.cells.len()
    }
}

/// Reads [`Input`]s out of JSON records.
#[derive(Debug, Clone)]
pub struct Extractor {
    pub layout: Arc<Layout>,
    pub time_field: String,
    /// `None`: the Kafka message key.
    pub key_field: Option<String>,
    /// `None`: arrival order (the input offset) is the version.
    pub version_field: Option<String>,
}

/// Why a record could not be windowed; static, so the error path does not allocate.
pub type Reject = &'static str;

impl Extractor {
    /// `key` is the message key, `offset` its input offset (the version when none is set).
    pub fn extract(
        &self,
        payload: &[u8],
        message_key: Option<&[u8]>,
        partition: i32,
        offset: i64,
    ) -> Result<Input, Reject> {
        let value: Value =
            serde_json::from_slice(payload).map_err(|_| "the record is not valid JSON")?;
        let Value::Object(record) = &value else {
            return Err("the record is not a JSON object");
        };
        let time = match lookup(record, &self.time_field) {
            Some(Value::String(s)) => {
                crate::record::parse_millis(s).ok_or("the event time is not an RFC 3339 time")?
            }
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
                .ok_or("the event time is out of range")?,
            Some(Value::Null) | None => return Err("the record has no event time"),
            Some(_) => return Err("the event time is neither a string nor a number"),
        };
        let key: Arc<str> = match &self.key_field {
            Some(field) => match lookup(record, field) {
                Some(Value::String(s)) => Arc::from(s.as_str()),
                Some(Value::Number(n)) => Arc::from(n.to_string()),
                _ => return Err("the record has no key field"),
            },
            None => match message_key {
                Some(k) => Arc::from(String::from_utf8_lossy(k).as_ref()),
                None => Arc::from(format!("{partition}:{offset}")),
            },
        };
        let version = match &self.version_field {
            None => Version::Num(offset as f64),
            Some(field) => match lookup(record, field) {
                Some(Value::Number(n)) => n.as_f64().map_or(Version::Missing, Version::Num),
                Some(Value::String(s)) => match crate::record::parse_millis(s) {
                    Some(ms) => Version::Num(ms as f64),
                    None => Version::Text(s.as_str().into()),
                },
                _ => Version::Missing,
            },
        };
        let deleted = matches!(lookup(record, "status"), Some(Value::String(s)) if s == "deleted");
        let group = if self.layout.group_by.is_empty() {
            Arc::from("[]")
        } else {
            let values: Vec<&Value> = self
                .layout
                .group_by
                .iter()
                .map(|f| lookup(record, f).unwrap_or(&Value::Null))
                .collect();
            Arc::from(serde_json::to_string(&values).unwrap_or_else(|_| "[]".into()))
        };
        let values: Arc<[Option<f64>]> = self
            .layout
            .fields
            .iter()
            .map(|f| match lookup(record, f) {
                Some(Value::Number(n)) => n.as_f64().filter(|x| x.is_finite()),
                Some(Value::String(s)) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
                _ => None,
            })
            .collect();
        Ok(Input {
            key,
            version,
            time,
            deleted,
            group,
            values,
        })
    }
}

/// A top-level field, or a nested one written with dots (`properties.mag`).
fn lookup<'a>(record: &'a serde_json::Map<String, Value>, field: &str) -> Option<&'a Value> {
    if let Some(v) = record.get(field) {
        return Some(v);
    }
    let mut parts = field.split('.');
    let mut current = record.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

mod config;
pub mod task;

pub use config::{AggregateConfig, WindowConfig};

#[cfg(test)]
mod tests;
