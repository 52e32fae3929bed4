//! The alert engine: rules over quake revisions, one alert per event, raised again only when the
//! event is upgraded, cancelled when it is deleted or falls below every rule.
//!
//! Pure logic: [`task`] runs it on Kafka and writes the outputs (topic, console box, log file,
//! webhooks).
//!
//! An event's *severity* is what the rules it matches can see: its magnitude step (magnitudes
//! counted in steps of `magnitude_step`, 0.5 by default: 4.5, 5.0, 5.5, …), its PAGER level, its
//! tsunami flag and the set of rules it matches. The first revision that matches a rule raises a
//! `new` alert; a later one raises an `upgrade` only if its severity is above the highest already
//! alerted in some part (magnitude step, level, tsunami, or a rule it did not match before) — so
//! the routine stream of revisions (a tenth of magnitude here, a reviewed status there) raises
//! nothing. A deletion, or a revision that no rule matches any more, raises a `cancel`.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::record::{format_millis, parse_millis};

mod config;
pub mod task;

pub use config::{AlertsConfig, Geofence, RuleConfig};

/// PAGER alert levels, in order.
pub const LEVELS: [&str; 4] = ["green", "yellow", "orange", "red"];

fn level_rank(level: &str) -> Option<u8> {
    LEVELS
        .iter()
        .position(|l| l.eq_ignore_ascii_case(level.trim()))
        .map(|i| i as u8 + 1)
}

/// What rules look at in a quake record, read leniently (any field may be missing or null).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub key: String,
    pub updated: Option<i64>,
    pub time: Option<i64>,
    pub mag: Option<f64>,
    /// PAGER level rank: 0 none, 1 green … 4 red.
    pub level: u8,
    pub tsunami: bool,
    pub lat: Option<f64>,
    pub lon: Option<f64>,
    pub deleted: bool,
}

/// A field's value as the rules read it: a number, a text or a boolean, anything else (or the
/// wrong kind) read as missing.
pub trait FieldValue {
    fn number(&self) -> Option<f64>;
    fn text(&self) -> Option<&str>;
    fn boolean(&self) -> Option<bool>;
}

impl FieldValue for Value {
    fn number(&self) -> Option<f64> {
        self.as_f64()
    }
    fn text(&self) -> Option<&str> {
        self.as_str()
    }
    fn boolean(&self) -> Option<bool> {
        self.as_bool()
    }
}

impl Event {
    /// Reads a quake record. Errors say what is wrong; the caller dead-letters the record.
    pub fn from_json(key: impl Into<String>, record: &Value) -> Result<Event, &'static str> {
        let Value::Object(q) = record else {
            return Err("the record is not a JSON object");
        };
        Event::from_fields(key, |name| q.get(name))
    }

    /// [`Event::from_json`] over a record's fields as `field` gives them by name (`None`: not
    /// there).
    pub fn from_fields<'a, V: FieldValue + 'a>(
        key: impl Into<String>,
        field: impl Fn(&str) -> Option<&'a V>,
    ) -> Result<Event, &'static str> {
        let number = |name: &str| field(name).and_then(V::number).filter(|x| x.is_finite());
        let text = |name: &str| field(name).and_then(V::text);
        let time = |name: &str| text(name).and_then(parse_millis);
        let lat = number("lat").filter(|x| crate::record::LAT_RANGE.contains(x));
        let lon = number("lon").filter(|x| crate::record::LON_RANGE.contains(x));
        let deleted = text("status").is_some_and(|s| s.eq_ignore_ascii_case("deleted"));
        if !deleted && text("time").is_none() {
            return Err("the record has no origin time");
        }
        if number("mag").is_some_and(|m| !crate::record::MAG_RANGE.contains(&m)) {
            return Err("the magnitude is outside [-3, 10]");
        }
        Ok(Event {
            key: key.into(),
            updated: time("updated"),
            time: time("time"),
            mag: number("mag"),
            level: text("alert").and_then(level_rank).unwrap_or(0),
            tsunami: field("tsunami").is_some_and(|t| {
                t.boolean()
                    .or_else(|| t.number().map(|x| x != 0.0))
                    .unwrap_or(false)
            }),
            lat,
            lon,
            deleted,
        })
    }
}

/// One rule, compiled: every condition given must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub min_magnitude: Option<f64>,
    pub min_level: Option<u8>,
    pub tsunami: Option<bool>,
    pub within: Option<Geofence>,
}

impl Rule {
    pub fn matches(&self, e: &Event) -> bool {
        if let Some(min) = self.min_magnitude
            && e.mag.is_none_or(|m| m < min)
        {
            return false;
        }
        if let Some(min) = self.min_level
            && e.level < min
        {
            return false;
        }
        if let Some(want) = self.tsunami
            && e.tsunami != want
        {
            return false;
        }
        if let Some(fence) = &self.within {
            let (Some(lat), Some(lon)) = (e.lat, e.lon) else {
                return false;
            };
            if distance_km(lat, lon, fence.lat, fence.lon) > fence.radius_km {
                return false;
            }
        }
        true
    }

    /// What the rule says, for people: `M ≥ 4.5, PAGER ≥ orange, within 100 km of (34.3, 62.2)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = self.min_magnitude {
            parts.push(format!("M ≥ {m}"));
        }
        if let Some(l) = self.min_level {
            parts.push(format!("PAGER ≥ {}", LEVELS[usize::from(l.max(1)) - 1]));
        }
        match self.tsunami {
            Some(true) => parts.push("tsunami flag".into()),
            Some(false) => parts.push("no tsunami flag".into()),
            None => {}
        }
        if let Some(f) = &self.within {
            parts.push(format!(
                "within {} km of ({}, {})",
                f.radius_km, f.lat, f.lon
            ));
        }
        if parts.is_empty() {
            "every event".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Great-circle distance (haversine, mean Earth radius 6371.0088 km).
pub fn distance_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6371.0088 * a.sqrt().min(1.0).asin()
}

/// What an event has been alerted at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Severity {
    /// Magnitude step index (`floor(mag / step)`), when the event has a magnitude.
    pub step: Option<i64>,
    pub level: u8,
    pub tsunami: bool,
    pub rules: BTreeSet<String>,
}

impl Severity {
    /// Whether `self` is above `before` in some part.
    fn raises(&self, before: &Severity) -> bool {
        self.step > before.step
            || self.level > before.level
            || (self.tsunami && !before.tsunami)
            || !self.rules.is_subset(&before.rules)
    }

    /// The highest of both in every part.
    fn merge(&mut self, other: &Severity) {
        self.step = self.step.max(other.step);
        self.level = self.level.max(other.level);
        self.tsunami |= other.tsunami;
        self.rules.extend(other.rules.iter().cloned());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    New,
    Upgrade,
    Cancel,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::New => "NEW",
            Kind::Upgrade => "UPGRADE",
            Kind::Cancel => "CANCELLED",
        }
    }
}

/// One alert, as written to the alerts topic: the kind, the rules the event matches (none for
/// a cancellation), why, the quake record itself, and when it was raised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: Kind,
    pub rules: Vec<String>,
    pub reason: String,
    pub severity: Severity,
    pub quake: Value,
    pub emitted_at: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Last {
    /// Highest severity alerted since the last `new` (None once cancelled).
    alerted: Option<Severity>,
    updated: Option<i64>,
}

/// The rules and what each event has been alerted at.
#[derive(Debug, Clone)]
pub struct Alerter {
    rules: Vec<Rule>,
    magnitude_step: f64,
    /// By event id; looked up once per record (foldhash: SipHash was 3% of a drain).
    events: HashMap<String, Last, foldhash::fast::RandomState>,
}

impl Alerter {
    pub fn new(rules: Vec<Rule>, magnitude_step: f64) -> Alerter {
        Alerter {
            rules,
            magnitude_step,
            events: HashMap::default(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn severity(&self, e: &Event, matched: &[&Rule]) -> Severity {
        Severity {
            step: e
                .mag
                .map(|m| (m / self.magnitude_step + 1e-9).floor() as i64),
            level: e.level,
            tsunami: e.tsunami,
            rules: matched.iter().map(|r| r.name.clone()).collect(),
        }
    }

    /// Remembers an alert read back from the alerts topic (rebuilding state after a restart).
    pub fn remember(&mut self, key: &str, alert: &Alert) {
        let last = self.events.entry(key.to_string()).or_insert(Last {
            alerted: None,
            updated: None,
        });
        let updated = alert
            .quake
            .get("updated")
            .and_then(Value::as_str)
            .and_then(parse_millis);
        last.updated = last.updated.max(updated);
        match alert.kind {
            Kind::Cancel => last.alerted = None,
            Kind::New | Kind::Upgrade => match &mut last.alerted {
                Some(s) => s.merge(&alert.severity),
                None => last.alerted = Some(alert.severity.clone()),
            },
        }
    }

    /// The alert a revision raises, if any. Older revisions than one already seen raise nothing.
    /// `quake` gives the whole record, asked for only when an alert is raised.
    pub fn decide(
        &mut self,
        e: &Event,
        quake: impl FnOnce() -> Value,
        now_ms: i64,
    ) -> Option<Alert> {
        let last = self.events.get(&e.key);
        if let (Some(last), Some(updated)) = (last, e.updated)
            && last.updated.is_some_and(|seen| updated <= seen)
        {
            return None;
        }
        let matched: Vec<&Rule> = if e.deleted {
            Vec::new()
        } else {
            self.rules.iter().filter(|r| r.matches(e)).collect()
        };
        let severity = self.severity(e, &matched);
        let before = last.and_then(|l| l.alerted.clone());
        let (kind, reason) = match (&before, matched.is_empty()) {
            (None, true) => {
                self.touch(e, None);
                return None;
            }
            (Some(_), true) => (
                Kind::Cancel,
                if e.deleted {
                    "the event was deleted".to_string()
                } else {
                    "the revision no longer matches any rule".to_string()
                },
            ),
            (None, false) => (Kind::New, Self::reason(&matched)),
            (Some(b), false) if severity.raises(b) => (
                Kind::Upgrade,
                format!(
                    "{} (upgraded: {})",
                    Self::reason(&matched),
                    changes(b, &severity, self.magnitude_step)
                ),
            ),
            (Some(_), false) => {
                // Nothing rose above what was alerted: the alerted severity stands.
                self.touch(e, before);
                return None;
            }
        };
        let alerted = match kind {
            Kind::Cancel => None,
            Kind::New => Some(severity.clone()),
            Kind::Upgrade => before.map(|mut b| {
                b.merge(&severity);
                b
            }),
        };
        let rules = matched.iter().map(|r| r.name.clone()).collect();
        self.touch(e, alerted);
        Some(Alert {
            kind,
            rules,
            reason,
            severity,
            quake: quake(),
            emitted_at: format_millis(now_ms).unwrap_or_default(),
        })
    }

    fn touch(&mut self, e: &Event, alerted: Option<Severity>) {
        // Most events are seen again: no copy of the key for those.
        let last = match self.events.get_mut(&e.key) {
            Some(last) => last,
            None => self.events.entry(e.key.clone()).or_insert(Last {
                alerted: None,
                updated: None,
            }),
        };
        last.alerted = alerted;
        last.updated = last.updated.max(e.updated);
    }

    fn reason(matched: &[&Rule]) -> String {
        matched
            .iter()
            .map(|r| format!("{}: {}", r.name, r.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn events(&self) -> usize {
        self.events.len()
    }
}

/// What rose between two severities, for the reason text.
fn changes(before: &Severity, now: &Severity, step: f64) -> String {
    let mut parts = Vec::new();
    if now.step > before.step
        && let Some(s) = now.step
    {
        parts.push(format!("magnitude reached {}", s as f64 * step));
    }
    if now.level > before.level {
        parts.push(format!(
            "PAGER {}",
            LEVELS[usize::from(now.level.max(1)) - 1]
        ));
    }
    if now.tsunami && !before.tsunami {
        parts.push("tsunami flag set".into());
    }
    let new_rules: Vec<&str> = now
        .rules
        .difference(&before.rules)
        .map(String::as_str)
        .collect();
    if !new_rules.is_empty() {
        parts.push(format!("now matches {}", new_rules.join(", ")));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests;
