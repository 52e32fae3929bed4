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
    collections::{BTreeMap, HashMap, hash_map::Entry as Slot},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fields::lookup_in;

/// Most windows one record may fall in (`size / slide`): more is almost surely a typo.
pub const MAX_WINDOWS_PER_RECORD: i64 = 1000;

/// Window geometry, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub size: i64,
    pub slide: i64,
    pub lateness: i64,
    /// How far ahead of the clock the watermark may go ([`Spec::ahead_of_clock`]).
    pub ahead: i64,
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
            ahead: i64::MAX,
        })
    }

    /// The same windows, whose watermark never passes the clock plus `tolerance`, whatever
    /// event times arrive (`[checks] future_tolerance`).
    pub fn ahead_of_clock(self, tolerance: Duration) -> Spec {
        Spec {
            ahead: i64::try_from(tolerance.as_millis()).unwrap_or(i64::MAX),
            ..self
        }
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
    keys: FastMap<Arc<str>, Entry>,
    max_time: Option<i64>,
    announced: Option<(i64, bool)>,
    /// The watermark of the last sweep of forgotten keys.
    swept: Option<i64>,
}

impl Assigner {
    pub fn new(spec: Spec, partition: i32) -> Assigner {
        Assigner {
            spec,
            partition,
            keys: FastMap::default(),
            max_time: None,
            announced: None,
            swept: None,
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
        let fresh = Entry {
            version: input.version,
            time: input.time,
            group: input.group.clone(),
            deleted: input.deleted,
            offset,
        };
        let revised = match self.keys.entry(input.key.clone()) {
            Slot::Occupied(o) if fresh.version <= o.get().version => return Applied::Stale,
            Slot::Occupied(mut o) => {
                let old = o.get();
                if !old.deleted {
                    // Cells the new version upserts into need no retraction: an upsert replaces.
                    let same_group = !input.deleted && old.group == input.group;
                    for start in spec.starts(old.time) {
                        if same_group && new_starts().any(|s| s == start) {
                            continue;
                        }
                        change(start, &old.group, &input.key, Op::Retract);
                    }
                }
                *o.get_mut() = fresh;
                true
            }
            Slot::Vacant(v) => {
                v.insert(fresh);
                false
            }
        };
        let applied = match (input.deleted, revised) {
            (true, _) => Applied::Deleted,
            (false, true) => Applied::Revised,
            (false, false) => Applied::New,
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
    /// a later version of such a key could only change closed windows. The sweep runs once the
    /// watermark has moved a window length (or the lateness, if longer) since the last one:
    /// keeping a key longer changes nothing but memory.
    pub fn forget_closed(&mut self, watermark: i64) {
        let size = self.spec.size;
        let every = size.max(self.spec.lateness);
        if self
            .swept
            .is_some_and(|at| watermark < at.saturating_add(every))
        {
            return;
        }
        self.swept = Some(watermark);
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

/// Hash maps keyed by record keys and groups: foldhash is several times faster than the
/// standard SipHash on short strings and still randomly seeded, so keys taken from external
/// data cannot be chosen to collide.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A cell's records, dense: keys and their values side by side (values `width` per key), so
/// computing a result reads contiguous memory. Small cells (most: a few quakes in five minutes)
/// find a key by scanning; larger ones keep a hash index.
#[derive(Debug, Clone, Default)]
struct Content {
    /// Each key with a short hash of it, so that a scan compares strings only on a likely match.
    keys: Vec<(u32, Arc<str>)>,
    values: Vec<Option<f64>>,
    index: Option<FastMap<Arc<str>, u32>>,
}

/// A fixed-seed hash tag for scanning small cells (a collision costs one string compare).
fn tag(key: &str) -> u32 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key) as u32
}

/// Cells up to this many records find keys by scanning.
const SCAN: usize = 8;

impl Content {
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn position(&self, key: &Arc<str>) -> Option<usize> {
        self.find(key, tag(key))
    }

    fn find(&self, key: &Arc<str>, tag: u32) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).map(|i| *i as usize),
            None => self
                .keys
                .iter()
                .position(|(t, k)| *t == tag && (Arc::ptr_eq(k, key) || **k == **key)),
        }
    }

    fn insert(&mut self, key: &Arc<str>, values: &[Option<f64>], width: usize) {
        let mut row = values
            .iter()
            .copied()
            .chain(std::iter::repeat(None))
            .take(width);
        let key_tag = tag(key);
        if let Some(i) = self.find(key, key_tag) {
            for slot in &mut self.values[i * width..(i + 1) * width] {
                *slot = row.next().flatten();
            }
            return;
        }
        if self.keys.is_empty() {
            self.keys.reserve(4);
            self.values.reserve(4 * width);
        }
        self.keys.push((key_tag, key.clone()));
        self.values.extend(row);
        let i = self.keys.len() - 1;
        match &mut self.index {
            Some(index) => {
                index.insert(key.clone(), i as u32);
            }
            None if self.keys.len() > SCAN => {
                let index = self
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, (_, k))| (k.clone(), i as u32))
                    .collect();
                self.index = Some(index);
            }
            None => {}
        }
    }

    fn remove(&mut self, key: &Arc<str>, width: usize) -> bool {
        let Some(i) = self.position(key) else {
            return false;
        };
        if let Some(index) = &mut self.index {
            index.remove(key);
        }
        let last = self.keys.len() - 1;
        self.keys.swap_remove(i);
        if i != last {
            for f in 0..width {
                self.values[i * width + f] = self.values[last * width + f];
            }
            if let Some(index) = &mut self.index {
                index.insert(self.keys[i].1.clone(), i as u32);
            }
        }
        self.values.truncate(last * width);
        true
    }

    /// The non-null values of field `f`.
    fn field(&self, f: usize, width: usize) -> impl Iterator<Item = f64> + '_ {
        self.values
            .iter()
            .skip(f)
            .step_by(width.max(1))
            .filter_map(|v| *v)
    }
}

#[derive(Debug, Clone)]
struct Cell {
    content: Content,
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
    /// Open cells: windows by start (so closed ones come first), then groups.
    cells: BTreeMap<i64, FastMap<Arc<str>, Cell>>,
    /// Input partitions: their number, and each one's last announcement (largest event time
    /// if it has seen any, idle).
    inputs: i32,
    sources: HashMap<i32, (Option<i64>, bool)>,
    /// The last change applied from each input partition, by partition number.
    applied: Vec<Option<(i64, u32)>>,
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
            applied: Vec::new(),
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
        let src = usize::try_from(change.src).unwrap_or(0);
        if self.applied.len() <= src {
            self.applied.resize(src + 1, None);
        }
        match &mut self.applied[src] {
            Some(done) if position <= *done => return Outcome::Duplicate,
            slot => *slot = Some(position),
        }
        if self.closed(change.start) {
            return match change.op {
                Op::Upsert { last: true, .. } => Outcome::Late,
                _ => Outcome::Ignored,
            };
        }
        let width = self.layout.fields.len();
        match &change.op {
            Op::Upsert { values, .. } => {
                if !self.cells.contains_key(&change.start) {
                    // A new window is sized like the largest open one: no rehashing as it fills.
                    let expected = self.cells.values().map(FastMap::len).max().unwrap_or(0);
                    let window = FastMap::with_capacity_and_hasher(expected, Default::default());
                    self.cells.insert(change.start, window);
                }
                let window = self
                    .cells
                    .get_mut(&change.start)
                    .expect("inserted above when missing");
                let cell = match window.get_mut(&change.group) {
                    Some(cell) => cell,
                    None => window.entry(change.group.clone()).or_insert(Cell {
                        content: Content::default(),
                        first_offset: offset,
                        dirty: false,
                        last_emit: None,
                    }),
                };
                cell.content.insert(&change.key, values, width);
                cell.dirty = true;
            }
            Op::Retract => {
                if let Some(cell) = self
                    .cells
                    .get_mut(&change.start)
                    .and_then(|w| w.get_mut(&change.group))
                    && cell.content.remove(&change.key, width)
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
    /// update for every changed cell whose last emission is at least `every` ms old. Results
    /// come in window order, then group order.
    pub fn end_batch(&mut self, now: i64, every: i64, out: &mut Vec<WindowResult>) {
        let cap = now.saturating_add(self.spec.ahead);
        self.watermark = self.watermark.max(self.candidate().map(|c| c.min(cap)));
        let (spec, layout, scratch) = (self.spec, &self.layout, &mut self.scratch);
        if let Some(watermark) = self.watermark {
            while let Some(entry) = self.cells.first_entry() {
                if spec.end(*entry.key()) > watermark {
                    break;
                }
                let (start, window) = entry.remove_entry();
                let mut groups: Vec<(Arc<str>, Cell)> = window.into_iter().collect();
                groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (group, cell) in groups {
                    out.push(compute(
                        spec, layout, scratch, start, group, &cell, true, now,
                    ));
                }
            }
        }
        for (&start, window) in &mut self.cells {
            let first = out.len();
            for (group, cell) in window.iter_mut() {
                if cell.dirty
                    && cell
                        .last_emit
                        .is_none_or(|t| now.saturating_sub(t) >= every)
                {
                    out.push(compute(
                        spec,
                        layout,
                        scratch,
                        start,
                        group.clone(),
                        cell,
                        false,
                        now,
                    ));
                    cell.dirty = false;
                    cell.last_emit = Some(now);
                }
            }
            out[first..].sort_unstable_by(|a, b| a.group.cmp(&b.group));
        }
    }

    /// Closes every open cell at the next [`Combiner::end_batch`]: the watermark moves to the
    /// end of the last open window (and never back). The input has gone quiet (a replayed file
    /// came to its end): what is open is all there will be.
    pub fn close_open(&mut self) {
        let spec = self.spec;
        if let Some(end) = self
            .cells
            .last_key_value()
            .map(|(start, _)| spec.end(*start))
        {
            self.watermark = self.watermark.max(Some(end));
        }
    }

    /// Whether changed cells are waiting for their coalescing interval.
    pub fn pending(&self) -> bool {
        self.cells
            .values()
            .flat_map(|w| w.values())
            .any(|c| c.dirty)
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// After a replay: the watermark reached before, and cells it closed dropped without
    /// emitting (their finals were sent). Open cells are not re-sent: updates are previews, and
    /// the next change or the final carries the current value.
    pub fn restore(&mut self, watermark: Option<i64>) {
        let cap = chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(self.spec.ahead);
        let restored = self.watermark.max(self.candidate()).max(watermark);
        self.watermark = restored.map(|w| w.min(cap));
        if let Some(w) = self.watermark {
            let spec = self.spec;
            self.cells.retain(|start, _| spec.end(*start) > w);
        }
        for cell in self.cells.values_mut().flat_map(|w| w.values_mut()) {
            cell.dirty = false;
        }
    }

    /// The earliest repartition offset an open cell depends on.
    pub fn replay_from(&self) -> Option<i64> {
        self.cells
            .values()
            .flat_map(|w| w.values())
            .map(|c| c.first_offset)
            .min()
    }

    pub fn open_cells(&self) -> usize {
        self.cells.values().map(FastMap::len).sum()
    }
}

/// A cell's result: aggregates computed from its contents, summing in sorted order so that the
/// result is independent of arrival order.
#[allow(clippy::too_many_arguments)]
fn compute(
    spec: Spec,
    layout: &Layout,
    scratch: &mut Vec<f64>,
    start: i64,
    group: Arc<str>,
    cell: &Cell,
    is_final: bool,
    now: i64,
) -> WindowResult {
    let mut values = vec![None; layout.aggregates.len()];
    for field in 0..layout.fields.len() {
        scratch.clear();
        scratch.extend(cell.content.field(field, layout.fields.len()));
        scratch.sort_unstable_by(f64::total_cmp);
        let n = scratch.len();
        let sum = || scratch.iter().sum::<f64>();
        for (slot, (_, op, f)) in values.iter_mut().zip(&layout.aggregates) {
            if *f != Some(field) {
                continue;
            }
            *slot = match op {
                AggOp::Count => Some(n as f64),
                _ if n == 0 => None,
                AggOp::Sum => Some(sum()),
                AggOp::Avg => Some(sum() / n as f64),
                AggOp::Min => scratch.first().copied(),
                AggOp::Max => scratch.last().copied(),
            };
        }
    }
    for (slot, (_, _, f)) in values.iter_mut().zip(&layout.aggregates) {
        if f.is_none() {
            *slot = Some(cell.content.len() as f64);
        }
    }
    WindowResult {
        start,
        end: spec.end(start),
        group,
        values,
        is_final,
        emitted_at: now,
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
    /// How far ahead of the clock an event time may be, in ms: a later one is refused.
    pub ahead: i64,
}

/// Why a record could not be windowed; static, so the error path does not allocate.
pub type Reject = &'static str;

impl Extractor {
    /// Whether a record's top-level member `name` is one of the fields read.
    fn reads(&self, name: &str) -> bool {
        let reaches = |path: &String| crate::fields::reaches(path, name);
        name == "status"
            || reaches(&self.time_field)
            || self.key_field.as_ref().is_some_and(reaches)
            || self.version_field.as_ref().is_some_and(reaches)
            || self.layout.group_by.iter().any(reaches)
            || self.layout.fields.iter().any(reaches)
    }

    /// `key` is the message key, `offset` its input offset (the version when none is set).
    pub fn extract(
        &self,
        payload: &[u8],
        message_key: Option<&[u8]>,
        partition: i32,
        offset: i64,
    ) -> Result<Input, Reject> {
        let now = chrono::Utc::now().timestamp_millis();
        self.extract_at(payload, message_key, partition, offset, now)
    }

    /// [`Extractor::extract`] with the clock read by the caller (`now_ms`, epoch milliseconds;
    /// what an event time may not be ahead of by more than the tolerance).
    pub fn extract_at(
        &self,
        payload: &[u8],
        message_key: Option<&[u8]>,
        partition: i32,
        offset: i64,
        now_ms: i64,
    ) -> Result<Input, Reject> {
        // Only the members the paths reach are built (the whole-record parse was a fifth of the
        // window processor's time, most of it on fields no window reads).
        let record = crate::fields::parse_picking(payload, |name| self.reads(name))
            .map_err(|_| "the record is not valid JSON")?
            .ok_or("the record is not a JSON object")?;
        let record = &record;
        let time = match lookup_in(record, &self.time_field) {
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
        let latest = now_ms.saturating_add(self.ahead);
        if time > latest {
            return Err(
                "the event time is ahead of the clock by more than [checks] future_tolerance",
            );
        }
        let key: Arc<str> = match &self.key_field {
            Some(field) => match lookup_in(record, field) {
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
            Some(field) => match lookup_in(record, field) {
                Some(Value::Number(n)) => n.as_f64().map_or(Version::Missing, Version::Num),
                Some(Value::String(s)) => match crate::record::parse_millis(s) {
                    Some(ms) => Version::Num(ms as f64),
                    None => Version::Text(s.as_str().into()),
                },
                _ => Version::Missing,
            },
        };
        let deleted =
            matches!(lookup_in(record, "status"), Some(Value::String(s)) if s == "deleted");
        let group = if self.layout.group_by.is_empty() {
            Arc::from("[]")
        } else {
            let values: Vec<&Value> = self
                .layout
                .group_by
                .iter()
                .map(|f| lookup_in(record, f).unwrap_or(&Value::Null))
                .collect();
            Arc::from(serde_json::to_string(&values).unwrap_or_else(|_| "[]".into()))
        };
        let values: Arc<[Option<f64>]> = self
            .layout
            .fields
            .iter()
            .map(|f| match lookup_in(record, f) {
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

mod checkpoint;
mod config;
pub mod task;
mod wire;

pub use config::{AggregateConfig, WindowConfig};

#[cfg(test)]
mod tests;
