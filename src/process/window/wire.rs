//! The window processor's messages: changes and progress on the repartition topic (JSON, so that
//! `quakestream consume` shows them plainly), and results on the output topic.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Change, Layout, Op, WindowResult};
use crate::{kafka::stable_hash, record::format_millis};

/// The repartition topic's messages: JSON, so that `quakestream consume` shows them plainly.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum Wire {
    Upsert {
        src: i32,
        off: i64,
        seq: u32,
        w: i64,
        g: String,
        k: String,
        t: i64,
        v: Vec<Option<f64>>,
        last: bool,
        /// The input record, on the record's last window only: what a late record's dead
        /// letter carries. No longer written (the letter reads the record back from the input
        /// topic); read when a repartition topic written before holds it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw: Option<String>,
    },
    Retract {
        src: i32,
        off: i64,
        seq: u32,
        w: i64,
        g: String,
        k: String,
    },
    /// The changes one batch sends to one repartition partition, in order, as one message:
    /// the broker then carries one message per partition and batch instead of one per change.
    Pack { changes: Vec<Wire> },
    /// An input partition's largest event time so far, and whether it is idle.
    Time {
        src: i32,
        max_time: Option<i64>,
        #[serde(default)]
        idle: bool,
    },
}

pub(super) enum Decoded {
    Change(Change, Option<String>),
    Time {
        src: i32,
        max_time: Option<i64>,
        idle: bool,
    },
}

/// Builds the packs of one batch: one per repartition partition, in the order the changes were
/// made. A pack that grows past [`Packer::MAX_BYTES`] is handed out at once and a new one begun,
/// keeping every message far below the broker's size limit.
#[derive(Default)]
pub(super) struct Packer {
    /// Per partition, the changes so far as JSON objects joined by commas.
    open: std::collections::BTreeMap<i32, Vec<u8>>,
}

impl Packer {
    pub(super) const MAX_BYTES: usize = 256 << 10;

    /// Adds one change for partition `q`; returns a full pack to send now, if any.
    pub(super) fn add(&mut self, q: i32, change: &Wire) -> Option<Vec<u8>> {
        let body = self.open.entry(q).or_default();
        body.push(if body.is_empty() { b'[' } else { b',' });
        // A `Wire` always serializes: its fields are numbers, strings and lists of numbers.
        let _ = serde_json::to_writer(&mut *body, change);
        (body.len() >= Self::MAX_BYTES).then(|| pack(std::mem::take(body)))
    }

    /// The packs still open, by partition, leaving the packer empty.
    pub(super) fn finish(&mut self) -> Vec<(i32, Vec<u8>)> {
        std::mem::take(&mut self.open)
            .into_iter()
            .filter(|(_, body)| !body.is_empty())
            .map(|(q, body)| (q, pack(body)))
            .collect()
    }
}

/// `{"op":"pack","changes":[…]}` around the joined changes (which begin with `[`).
fn pack(mut joined: Vec<u8>) -> Vec<u8> {
    joined.extend_from_slice(b"]}");
    let mut message = br#"{"op":"pack","changes":"#.to_vec();
    message.append(&mut joined);
    message
}

/// Every change and announcement a repartition message carries, in order: the message itself,
/// or the contents of a pack.
pub(super) fn unpack(wire: Wire, each: &mut impl FnMut(Decoded)) {
    let decoded = match wire {
        Wire::Pack { changes } => {
            for wire in changes {
                unpack(wire, each);
            }
            return;
        }
        Wire::Upsert {
            src,
            off,
            seq,
            w,
            g,
            k,
            t,
            v,
            last,
            raw,
        } => {
            let op = Op::Upsert {
                time: t,
                values: Arc::from(v),
                last,
            };
            Decoded::Change(change(src, off, seq, w, &g, &k, op), raw)
        }
        Wire::Retract {
            src,
            off,
            seq,
            w,
            g,
            k,
        } => Decoded::Change(change(src, off, seq, w, &g, &k, Op::Retract), None),
        Wire::Time {
            src,
            max_time,
            idle,
        } => Decoded::Time {
            src,
            max_time,
            idle,
        },
    };
    each(decoded);
}

fn change(src: i32, offset: i64, seq: u32, start: i64, group: &str, key: &str, op: Op) -> Change {
    Change {
        src,
        offset,
        seq,
        start,
        group: Arc::from(group),
        key: Arc::from(key),
        op,
    }
}

/// The repartition partition of a cell, the same in every process.
pub(super) fn route(start: i64, group: &str, partitions: i32) -> i32 {
    let hash = stable_hash(start.to_be_bytes().into_iter().chain(group.bytes()));
    (hash % partitions.max(1) as u64) as i32
}

/// A result as its Kafka key and JSON value: `window_start`, `window_end`, the group-by fields,
/// the aggregates, `final`, `emitted_at`.
pub fn render(layout: &Layout, result: &WindowResult) -> (String, Vec<u8>) {
    let mut record = serde_json::Map::new();
    let start = format_millis(result.start).unwrap_or_default();
    record.insert("window_start".into(), start.clone().into());
    record.insert(
        "window_end".into(),
        format_millis(result.end).unwrap_or_default().into(),
    );
    let group: Vec<serde_json::Value> = serde_json::from_str(&result.group).unwrap_or_default();
    let mut key = start;
    for (name, value) in layout.group_by.iter().zip(&group) {
        key.push('|');
        match value {
            serde_json::Value::String(s) => key.push_str(s),
            other => key.push_str(&other.to_string()),
        }
        record.insert(name.clone(), value.clone());
    }
    for ((name, op, _), value) in layout.aggregates.iter().zip(&result.values) {
        let json = match (op, value) {
            (super::AggOp::Count, Some(n)) => serde_json::Value::from(*n as u64),
            (_, Some(x)) => serde_json::Value::from(*x),
            (_, None) => serde_json::Value::Null,
        };
        record.insert(name.clone(), json);
    }
    record.insert("final".into(), result.is_final.into());
    record.insert(
        "emitted_at".into(),
        format_millis(result.emitted_at).unwrap_or_default().into(),
    );
    let value = serde_json::to_vec(&serde_json::Value::Object(record)).unwrap_or_default();
    (key, value)
}
