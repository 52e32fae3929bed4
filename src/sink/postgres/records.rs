//! Messages read into rows: quake revisions and window results, checked for what PostgreSQL
//! could never store (refused before the database sees them).

use chrono::{DateTime, Utc};

use crate::{
    record::{Checks, Quake, parse_millis},
    runtime::consume,
};

/// The longest event id or dimension value (`net`, `mag_type`, `event_type`, the region) the
/// sink loads, in bytes. Each is the key of a btree index, and PostgreSQL refuses an index entry
/// above about 2700 bytes (SQLSTATE 54000) at every retry. 1024 leaves room under that cap (the
/// revisions' key holds `updated` too) and is far above any real id or code.
pub const MAX_KEY_BYTES: usize = 1024;

/// Where a row came from: the consumed record, which a dead letter carries.
pub(super) type Origin = consume::Record;

/// One quake revision ready to load.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) quake: Quake,
    pub(super) time: DateTime<Utc>,
    pub(super) updated: DateTime<Utc>,
    pub(super) region: Option<String>,
    pub(super) origin: Origin,
}

/// One window result, as parsed.
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub(super) start: DateTime<Utc>,
    pub(super) end: DateTime<Utc>,
    pub(super) group_key: String,
    pub(super) count: Option<i64>,
    pub(super) aggregates: serde_json::Value,
    pub(super) is_final: bool,
    pub(super) emitted_at: DateTime<Utc>,
}

/// One window result ready to load; `agg_window.topic` is the topic it was read from.
#[derive(Debug, Clone)]
pub(super) struct WindowRow {
    pub(super) window: Window,
    pub(super) origin: Origin,
}

/// The region of a USGS `place`: what follows the last comma (`"10 km SSW of Tres Pinos, CA"` →
/// `"CA"`), else the place without its leading distance (`"45 km N of Tobelo"` is not cut,
/// `"south of the Fiji Islands"` stays whole). Blank → none.
pub fn region_of(place: &str) -> Option<String> {
    let place = place.trim();
    let region = match place.rsplit_once(',') {
        Some((_, after)) => after.trim(),
        None => place,
    };
    (!region.is_empty()).then(|| region.chars().take(200).collect())
}

pub(super) fn timestamp(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// A parsed quake: the record, its time and version, its region.
pub(super) type ParsedQuake = (Quake, DateTime<Utc>, DateTime<Utc>, Option<String>);

pub(super) fn parse_quake(
    payload: &[u8],
    checks: &Checks,
) -> std::result::Result<ParsedQuake, String> {
    let quake: Quake = serde_json::from_slice(payload).map_err(|e| format!("not a Quake: {e}"))?;
    if quake.id.is_empty() {
        return Err("id is empty".into());
    }
    // What PostgreSQL itself could never store first, with its own reasons; then what no reader
    // takes.
    let region = quake.place.as_deref().and_then(region_of);
    check_quake(&quake, region.as_deref())?;
    quake.check(checks)?;
    let time = timestamp(quake.time.0).ok_or("time is out of range")?;
    let updated = timestamp(quake.updated.0).ok_or("updated is out of range")?;
    Ok((quake, time, updated, region))
}

/// Refuses a quake PostgreSQL could never store, so that it is dead-lettered instead of failing
/// its batch at every retry: a NUL in any text the warehouse keeps, an id or a dimension value
/// above [`MAX_KEY_BYTES`].
pub(super) fn check_quake(quake: &Quake, region: Option<&str>) -> std::result::Result<(), String> {
    let text = [
        ("id", Some(quake.id.as_str())),
        ("source", Some(quake.source.as_str())),
        ("mag_type", quake.mag_type.as_deref()),
        ("place", quake.place.as_deref()),
        ("status", Some(quake.status.as_str())),
        ("alert", quake.alert.as_deref()),
        ("net", Some(quake.net.as_str())),
        ("event_type", Some(quake.event_type.as_str())),
        ("title", Some(quake.title.as_str())),
        ("url", Some(quake.url.as_str())),
    ];
    for (field, value) in text {
        if value.is_some_and(has_nul) {
            return Err(nul_reason(field));
        }
    }
    if quake.ids.iter().any(|id| has_nul(id)) {
        return Err(nul_reason("ids"));
    }
    let keys = [
        ("id", Some(quake.id.as_str())),
        ("net", Some(quake.net.as_str())),
        ("mag_type", quake.mag_type.as_deref()),
        ("event_type", Some(quake.event_type.as_str())),
        ("region", region),
    ];
    for (field, value) in keys {
        if let Some(value) = value
            && value.len() > MAX_KEY_BYTES
        {
            return Err(too_long_reason(field, value.len()));
        }
    }
    Ok(())
}

/// PostgreSQL's `text` cannot hold U+0000 (SQLSTATE 22021), nor `jsonb` a `\u0000` escape.
pub(super) fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

pub(super) fn nul_reason(field: &str) -> String {
    format!("field {field} contains a NUL character, which PostgreSQL text cannot store")
}

pub(super) fn too_long_reason(field: &str, len: usize) -> String {
    format!(
        "field {field} is {len} bytes long, above the limit of {MAX_KEY_BYTES} bytes for an \
         indexed value (PostgreSQL cannot index it)"
    )
}

pub(super) fn parse_window(payload: &[u8]) -> std::result::Result<Window, String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let time = |name: &str| {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .and_then(parse_millis)
            .and_then(timestamp)
            .ok_or_else(|| format!("{name} is missing or not an RFC 3339 time"))
    };
    let (start, end, emitted_at) = (
        time("window_start")?,
        time("window_end")?,
        time("emitted_at")?,
    );
    let is_final = object
        .get("final")
        .and_then(|v| v.as_bool())
        .ok_or("final is missing or not a boolean")?;
    let mut aggregates = serde_json::Map::new();
    let mut group = Vec::new();
    for (name, v) in object {
        // Aggregate names are jsonb keys, group values text: neither may hold a NUL.
        if has_nul(name) {
            return Err(nul_reason(&format!("name {name:?}")));
        }
        match name.as_str() {
            "window_start" | "window_end" | "final" | "emitted_at" => {}
            _ if v.is_number() || v.is_null() => {
                aggregates.insert(name.clone(), v.clone());
            }
            _ => {
                let value = match v {
                    serde_json::Value::String(s) => s.clone(),
                    // JSON text escapes a NUL inside an array or object.
                    other => other.to_string(),
                };
                if has_nul(&value) {
                    return Err(nul_reason(name));
                }
                group.push(value);
            }
        }
    }
    let group_key = group.join("|");
    // The group key is part of agg_window's primary key: the same index limit as an event id.
    if group_key.len() > MAX_KEY_BYTES {
        return Err(too_long_reason("group key", group_key.len()));
    }
    Ok(Window {
        start,
        end,
        group_key,
        count: object.get("count").and_then(|v| v.as_i64()),
        aggregates: serde_json::Value::Object(aggregates),
        is_final,
        emitted_at,
    })
}
