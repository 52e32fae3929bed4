//! The window processor's messages: changes and progress on the repartition topic (JSON, so that
//! `quakestream consume` shows them plainly), and results on the output topic.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Change, Layout, Op, WindowResult};
use crate::{kafka::stable_hash, record::format_millis};

/// The repartition topic's messages: JSON, so that `quakestream consume` shows them plainly.
///
/// Read by hand ([`Flat`]): serde's derive for an internally tagged enum buffers each message
/// whole before it reads the tag, and a pack of thousands of changes went through that buffer
/// twice (a tenth of the window processor's time went to it and its allocations).
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "op", rename_all = "lowercase")]
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

/// Every field a [`Wire`] message may have, each `None` when absent and `Some(None)` when
/// null, so that a message is read in one pass whatever the order of its fields, and checked
/// as the derived reading of the tagged enum checked it: the fields of its `op`, no other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Flat {
    op: Tag,
    #[serde(default, deserialize_with = "present")]
    src: Option<Option<i32>>,
    #[serde(default, deserialize_with = "present")]
    off: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    seq: Option<Option<u32>>,
    #[serde(default, deserialize_with = "present")]
    w: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    g: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    k: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    t: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    v: Option<Option<Vec<Option<f64>>>>,
    #[serde(default, deserialize_with = "present")]
    last: Option<Option<bool>>,
    #[serde(default, deserialize_with = "present")]
    raw: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    changes: Option<Option<Vec<Wire>>>,
    #[serde(default, deserialize_with = "present")]
    max_time: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    idle: Option<Option<bool>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Tag {
    Upsert,
    Retract,
    Pack,
    Time,
}

/// A field that is there: `Some(None)` when it is null.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for Wire {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Wire, D::Error> {
        use serde::de::Error;
        let f = Flat::deserialize(d)?;
        // A field the op needs: there and not null.
        fn need<T, E: Error>(field: Option<Option<T>>, name: &'static str) -> Result<T, E> {
            match field {
                Some(Some(value)) => Ok(value),
                Some(None) => Err(E::custom(format!("`{name}` is null"))),
                None => Err(E::missing_field(name)),
            }
        }
        // The fields the op does not have, by name, each there or not.
        let others = |allowed: &'static [&'static str]| -> Result<(), D::Error> {
            let there = [
                ("src", f.src.is_some()),
                ("off", f.off.is_some()),
                ("seq", f.seq.is_some()),
                ("w", f.w.is_some()),
                ("g", f.g.is_some()),
                ("k", f.k.is_some()),
                ("t", f.t.is_some()),
                ("v", f.v.is_some()),
                ("last", f.last.is_some()),
                ("raw", f.raw.is_some()),
                ("changes", f.changes.is_some()),
                ("max_time", f.max_time.is_some()),
                ("idle", f.idle.is_some()),
            ];
            match there
                .iter()
                .find(|(name, is)| *is && !allowed.contains(name))
            {
                Some((name, _)) => Err(D::Error::unknown_field(name, allowed)),
                None => Ok(()),
            }
        };
        match f.op {
            Tag::Upsert => {
                others(&["src", "off", "seq", "w", "g", "k", "t", "v", "last", "raw"])?;
                Ok(Wire::Upsert {
                    src: need(f.src, "src")?,
                    off: need(f.off, "off")?,
                    seq: need(f.seq, "seq")?,
                    w: need(f.w, "w")?,
                    g: need(f.g, "g")?,
                    k: need(f.k, "k")?,
                    t: need(f.t, "t")?,
                    v: need(f.v, "v")?,
                    last: need(f.last, "last")?,
                    raw: f.raw.flatten(),
                })
            }
            Tag::Retract => {
                others(&["src", "off", "seq", "w", "g", "k"])?;
                Ok(Wire::Retract {
                    src: need(f.src, "src")?,
                    off: need(f.off, "off")?,
                    seq: need(f.seq, "seq")?,
                    w: need(f.w, "w")?,
                    g: need(f.g, "g")?,
                    k: need(f.k, "k")?,
                })
            }
            Tag::Pack => {
                others(&["changes"])?;
                Ok(Wire::Pack {
                    changes: need(f.changes, "changes")?,
                })
            }
            Tag::Time => {
                others(&["src", "max_time", "idle"])?;
                Ok(Wire::Time {
                    src: need(f.src, "src")?,
                    max_time: f.max_time.flatten(),
                    idle: match f.idle {
                        Some(None) => return Err(D::Error::custom("`idle` is null")),
                        idle => idle.flatten().unwrap_or(false),
                    },
                })
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// The reading [`Wire`] had before it was read by hand: serde's derive for the tagged enum.
    #[derive(Debug, Serialize, Deserialize)]
    #[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
    enum Reference {
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
        Pack {
            changes: Vec<Reference>,
        },
        Time {
            src: i32,
            max_time: Option<i64>,
            #[serde(default)]
            idle: bool,
        },
    }

    /// Both readings of `text`, as the JSON they write back (`None`: refused).
    fn both(text: &str) -> (Option<Value>, Option<Value>) {
        let ours = serde_json::from_str::<Wire>(text).ok();
        let reference = serde_json::from_str::<Reference>(text).ok();
        (
            ours.map(|w| serde_json::to_value(w).unwrap()),
            reference.map(|r| serde_json::to_value(r).unwrap()),
        )
    }

    #[test]
    fn every_op_reads_as_the_derived_reading_read_it() {
        for text in [
            r#"{"op":"upsert","src":1,"off":5,"seq":0,"w":0,"g":"[]","k":"us1","t":7,"v":[4.5,null],"last":true}"#,
            r#"{"k":"us1","op":"upsert","src":1,"off":5,"seq":0,"w":0,"g":"[\"a\"]","t":7,"v":[],"last":false,"raw":"{}"}"#,
            r#"{"op":"retract","src":1,"off":5,"seq":2,"w":-300000,"g":"[]","k":"k\u00e9"}"#,
            r#"{"op":"time","src":0,"max_time":1}"#,
            r#"{"op":"time","src":0,"max_time":null,"idle":true}"#,
            r#"{"op":"time","src":0}"#,
            r#"{"op":"pack","changes":[{"op":"time","src":0},{"op":"retract","src":1,"off":5,"seq":2,"w":0,"g":"[]","k":"k"}]}"#,
            r#"{"op":"pack","changes":[]}"#,
        ] {
            let (ours, reference) = both(text);
            assert!(reference.is_some(), "{text}");
            assert_eq!(ours, reference, "{text}");
        }
        for refused in [
            r#"{"op":"upsert"}"#,
            r#"{"op":"upsert","src":1,"off":5,"seq":0,"w":0,"g":"[]","k":"us1","t":7,"v":[4.5],"last":true,"idle":false}"#,
            r#"{"op":"retract","src":1,"off":5,"seq":2,"w":0,"g":"[]","k":"k","raw":null}"#,
            r#"{"op":"time","src":0,"idle":null}"#,
            r#"{"op":"time","src":null}"#,
            r#"{"op":"time","src":0,"src":1}"#,
            r#"{"op":"time","op":"time","src":0}"#,
            r#"{"op":"nothing","src":0}"#,
            r#"{"op":"pack","changes":[{"op":"time"}]}"#,
            r#"{"src":0}"#,
            r#"[1]"#,
        ] {
            let (ours, reference) = both(refused);
            assert_eq!(reference, None, "{refused}");
            assert_eq!(ours, None, "{refused}");
        }
    }

    fn member() -> impl Strategy<Value = (String, Value)> {
        let name = prop_oneof![
            Just("op"),
            Just("src"),
            Just("off"),
            Just("seq"),
            Just("w"),
            Just("g"),
            Just("k"),
            Just("t"),
            Just("v"),
            Just("last"),
            Just("raw"),
            Just("changes"),
            Just("max_time"),
            Just("idle"),
            Just("other"),
        ];
        let value = prop_oneof![
            Just(json!(null)),
            Just(json!("upsert")),
            Just(json!("retract")),
            Just(json!("time")),
            Just(json!("pack")),
            Just(json!("[]")),
            any::<bool>().prop_map(|b| json!(b)),
            (-3i64..3).prop_map(|x| json!(x)),
            Just(json!(-1.5)),
            Just(json!(u64::MAX)),
            Just(json!([1.5, null, 2])),
            Just(json!([])),
            Just(json!([{"op": "time", "src": 1}])),
            Just(json!([{"op": "time"}])),
        ];
        (name, value).prop_map(|(n, v)| (n.to_string(), v))
    }

    proptest! {
        #[test]
        fn any_message_reads_as_the_derived_reading_read_it(
            members in proptest::collection::vec(member(), 0..12),
        ) {
            // Written by hand so that a name may come twice and in any order.
            let body: Vec<String> = members
                .iter()
                .map(|(name, v)| format!("{}: {v}", Value::String(name.clone())))
                .collect();
            let text = format!("{{{}}}", body.join(", "));
            let (ours, reference) = both(&text);
            prop_assert_eq!(ours, reference, "{}", text);
        }
    }
}
