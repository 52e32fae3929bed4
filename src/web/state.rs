//! What the dashboard shows, kept in memory: the newest revision of every event, the newest
//! window results and alerts, and the stream of changes that live browsers follow.
//!
//! Nothing here is trusted across restarts: the web server re-reads its topics from the start
//! each time (Kafka is the source of truth), so this state is a cache that is always safe to
//! lose. Memory is bounded by the `max_*` settings.
//!
//! Every change gets a sequence number. A browser loads `/api/quakes` (which says the sequence
//! it reflects) and then follows `/api/events?since=N`: changes after `N` still in the recent
//! ring are replayed first, so nothing falls between the two requests. A browser too far
//! behind (or too slow to keep up) is told to `resync`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
    sync::{Arc, RwLock},
};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::{
    metrics::{Counter, Gauge, Observe, Samples},
    record::{Quake, parse_millis},
};

/// Changes kept for browsers that connect just after loading the page.
const RECENT: usize = 4096;

/// What a browser is sent: an SSE event name and its JSON data.
#[derive(Debug, Clone)]
pub struct Update {
    pub seq: u64,
    pub event: &'static str,
    pub data: Arc<str>,
}

/// The bounds of what is kept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_windows: usize,
    pub max_alerts: usize,
}

/// The web server's own counters.
#[derive(Debug, Default)]
pub struct WebMetrics {
    pub quakes: Counter,
    pub windows: Counter,
    pub alerts: Counter,
    /// Records that could not be shown (not a quake, no position, unreadable times, …).
    pub bad: Counter,
    /// Revisions older than the one shown.
    pub stale: Counter,
    /// Events dropped to stay within `max_events`.
    pub evicted: Counter,
    pub live_clients: Gauge,
    pub live_rejected: Counter,
    /// Live connections refused because their address held `max_live_per_client`.
    pub live_rejected_per_client: Counter,
    /// Requests refused because their `Host` is not one the server answers.
    pub hosts_refused: Counter,
    pub requests: Counter,
    pub bad_requests: Counter,
}

#[derive(Debug, Clone)]
struct Entry {
    quake: Arc<Quake>,
    time_ms: i64,
    updated_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    seq: u64,
    quakes: HashMap<String, Entry>,
    /// (origin time, id) of every kept event: the oldest is dropped first.
    by_time: BTreeSet<(i64, String)>,
    /// The `updated` of deleted events, so an older revision replayed later stays deleted.
    deleted: HashMap<String, i64>,
    /// Window results by (window start, Kafka key).
    windows: BTreeMap<(i64, String), Arc<Value>>,
    /// Newest first.
    alerts: VecDeque<Arc<Value>>,
    recent: VecDeque<Update>,
    /// Wall-clock time the last record arrived (epoch ms; 0 = none yet).
    last_record_ms: i64,
    caught_up: bool,
}

/// The dashboard's state, shared by the feed (which writes) and the handlers (which read).
pub struct Live {
    inner: RwLock<Inner>,
    updates: broadcast::Sender<Update>,
    limits: Limits,
    /// What is refused as implausible (`[checks]`).
    checks: crate::record::Checks,
    pub metrics: WebMetrics,
}

/// Which quakes a request wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub min_mag: Option<f64>,
    /// Origin time at or after (epoch ms).
    pub since_ms: Option<i64>,
    /// `[min_lon, min_lat, max_lon, max_lat]`; `min_lon > max_lon` crosses the antimeridian.
    pub bbox: Option<[f64; 4]>,
    pub limit: usize,
    /// List only events after this one in the newest-first order (the next page).
    pub after: Option<Cursor>,
}

/// Where a page of `/api/quakes` ended: the origin time and id of its last (oldest) event.
/// The next page starts just after it in the order of the list, so events that arrive between
/// two pages (newer ones) do not shift the pages: none is listed twice or skipped. Written
/// `<ms>_<id>`; clients take it from `next` and need not read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub time_ms: i64,
    pub id: String,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.time_ms, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(text: &str) -> Result<Cursor, ()> {
        let (time, id) = text.split_once('_').ok_or(())?;
        if id.is_empty() {
            return Err(());
        }
        Ok(Cursor {
            time_ms: time.parse().map_err(|_| ())?,
            id: id.to_string(),
        })
    }
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        if let Some(min) = self.min_mag
            && !e.quake.mag.is_some_and(|m| m >= min)
        {
            return false;
        }
        if let Some(since) = self.since_ms
            && e.time_ms < since
        {
            return false;
        }
        if let Some([w, s, east, n]) = self.bbox {
            let (lon, lat) = (e.quake.lon, e.quake.lat);
            let in_lon = if w <= east {
                lon >= w && lon <= east
            } else {
                lon >= w || lon <= east
            };
            if !(in_lon && lat >= s && lat <= n) {
                return false;
            }
        }
        true
    }
}

/// The answer to `/api/quakes`.
#[derive(Debug, Serialize)]
pub struct QuakeList {
    /// The change sequence this list reflects: follow `/api/events?since=` it.
    pub seq: u64,
    /// Events matching the filter, on every page (the list holds at most `limit` of them,
    /// newest first).
    pub matched: usize,
    pub quakes: Vec<Arc<Quake>>,
    /// Where the next page starts; `None` on the last page.
    #[serde(skip)]
    pub rest: Option<Cursor>,
}

/// The answer to `/api/stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    pub seq: u64,
    /// Events on the map.
    pub events: usize,
    pub max_mag: Option<f64>,
    pub avg_mag: Option<f64>,
    /// Events whose origin time is within the hour before `now`.
    pub last_hour: usize,
    /// The newest origin time shown.
    pub newest: Option<String>,
    /// When the last record arrived from Kafka.
    pub last_record_at: Option<String>,
    /// The newest window results, oldest window first.
    pub windows: Vec<Arc<Value>>,
}

/// Why a record was not shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Bad(String),
    Stale,
}

impl Live {
    pub fn new(limits: Limits) -> Live {
        let (updates, _) = broadcast::channel(1024);
        Live {
            inner: RwLock::new(Inner::default()),
            updates,
            limits,
            checks: crate::record::Checks::default(),
            metrics: WebMetrics::default(),
        }
    }

    /// The same, refusing what `checks` says is implausible.
    pub fn with_checks(self, checks: crate::record::Checks) -> Live {
        Live { checks, ..self }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters for a cache; keep serving.
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change and tells live browsers (under the write lock, so a browser that
    /// subscribes under the read lock sees every change exactly once).
    fn publish(&self, inner: &mut Inner, event: &'static str, data: String) {
        inner.seq += 1;
        let update = Update {
            seq: inner.seq,
            event,
            data: data.into(),
        };
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(update.clone());
        let _ = self.updates.send(update);
    }

    /// A quake record from the quakes topic. `key` is the Kafka key (the logical event id).
    pub fn apply_quake(
        &self,
        key: Option<&str>,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(), Rejected> {
        let result = self.quake(key, payload, now_ms);
        match &result {
            Ok(()) => self.metrics.quakes.inc(),
            Err(Rejected::Stale) => self.metrics.stale.inc(),
            Err(Rejected::Bad(_)) => self.metrics.bad.inc(),
        }
        result
    }

    fn quake(&self, key: Option<&str>, payload: &[u8], now_ms: i64) -> Result<(), Rejected> {
        let quake: Quake = serde_json::from_slice(payload)
            .map_err(|e| Rejected::Bad(format!("not a Quake record: {e}")))?;
        quake.check(&self.checks).map_err(Rejected::Bad)?;
        let (time_ms, updated_ms) = (quake.time.0, quake.updated.0);
        let id = key
            .filter(|k| !k.is_empty())
            .unwrap_or(&quake.id)
            .to_string();

        let mut inner = self.write();
        inner.last_record_ms = now_ms;
        let known = inner
            .quakes
            .get(&id)
            .map(|e| e.updated_ms)
            .or_else(|| inner.deleted.get(&id).copied());
        if known.is_some_and(|u| u >= updated_ms) {
            return Err(Rejected::Stale);
        }
        if let Some(old) = inner.quakes.remove(&id) {
            inner.by_time.remove(&(old.time_ms, id.clone()));
        }
        if quake.status == "deleted" {
            inner.deleted.insert(id.clone(), updated_ms);
            if inner.deleted.len() > self.limits.max_events {
                // Forget the oldest-deleted-first is not tracked; any will do for a bound.
                if let Some(k) = inner.deleted.keys().next().cloned() {
                    inner.deleted.remove(&k);
                }
            }
            let data = serde_json::json!({ "id": id }).to_string();
            self.publish(&mut inner, "remove", data);
            return Ok(());
        }
        inner.deleted.remove(&id);
        // The record as it is on the topic (it parsed, so it is UTF-8 JSON): no second
        // serialization per change.
        let data = match std::str::from_utf8(payload) {
            Ok(text) => text.to_string(),
            Err(_) => serde_json::to_string(&quake).unwrap_or_default(),
        };
        inner.by_time.insert((time_ms, id.clone()));
        inner.quakes.insert(
            id,
            Entry {
                quake: Arc::new(quake),
                time_ms,
                updated_ms,
            },
        );
        self.publish(&mut inner, "quake", data);
        while inner.quakes.len() > self.limits.max_events {
            let Some((t, oldest)) = inner.by_time.pop_first() else {
                break;
            };
            inner.quakes.remove(&oldest);
            self.metrics.evicted.inc();
            let data = serde_json::json!({ "id": oldest, "time_ms": t }).to_string();
            self.publish(&mut inner, "remove", data);
        }
        Ok(())
    }

    /// A window result from the stats topic.
    pub fn apply_window(
        &self,
        key: Option<&str>,
        payload: &[u8],
        now_ms: i64,
    ) -> Result<(), Rejected> {
        let value = self.object(payload, "a window result")?;
        let Some(start) = value
            .get("window_start")
            .and_then(Value::as_str)
            .and_then(parse_millis)
        else {
            return self.bad("window_start is missing or not RFC 3339");
        };
        let key = key.unwrap_or_default().to_string();
        let max = self.limits.max_windows;
        self.take(
            now_ms,
            "window",
            value,
            &self.metrics.windows,
            |inner, value| {
                inner.windows.insert((start, key), value);
                while inner.windows.len() > max {
                    inner.windows.pop_first();
                }
            },
        )
    }

    /// An alert from the alerts topic.
    pub fn apply_alert(&self, payload: &[u8], now_ms: i64) -> Result<(), Rejected> {
        let value = self.object(payload, "an alert")?;
        if !value.get("kind").is_some_and(Value::is_string)
            || !value.get("quake").is_some_and(Value::is_object)
        {
            return self.bad("an alert has a kind and a quake");
        }
        let max = self.limits.max_alerts;
        self.take(
            now_ms,
            "alert",
            value,
            &self.metrics.alerts,
            |inner, value| {
                inner.alerts.push_front(value);
                inner.alerts.truncate(max);
            },
        )
    }

    /// `payload` as a JSON object, or a bad record; `what` names what it should be.
    fn object(&self, payload: &[u8], what: &str) -> Result<Value, Rejected> {
        match serde_json::from_slice(payload) {
            Ok(v @ Value::Object(_)) => Ok(v),
            Ok(_) => self.bad(&format!("{what} is a JSON object")),
            Err(e) => self.bad(&format!("not JSON: {e}")),
        }
    }

    /// Takes in a checked record: `store` keeps it (under the write lock), live browsers are
    /// told as `event`, and `counter` counts it.
    fn take(
        &self,
        now_ms: i64,
        event: &'static str,
        value: Value,
        counter: &Counter,
        store: impl FnOnce(&mut Inner, Arc<Value>),
    ) -> Result<(), Rejected> {
        let data = value.to_string();
        let mut inner = self.write();
        inner.last_record_ms = now_ms;
        store(&mut inner, Arc::new(value));
        self.publish(&mut inner, event, data);
        drop(inner);
        counter.inc();
        Ok(())
    }

    fn bad<T>(&self, why: &str) -> Result<T, Rejected> {
        self.metrics.bad.inc();
        Err(Rejected::Bad(why.to_string()))
    }

    /// The feed has read everything that was in its topics when it started.
    pub fn set_caught_up(&self) {
        self.write().caught_up = true;
    }

    pub fn caught_up(&self) -> bool {
        self.read().caught_up
    }

    pub fn quakes(&self, filter: &Filter) -> QuakeList {
        let inner = self.read();
        let mut matched = 0;
        let mut quakes = Vec::new();
        let mut last: Option<(i64, &str)> = None;
        let mut rest = None;
        // Newest first: walk the time index backwards.
        for (time_ms, id) in inner.by_time.iter().rev() {
            let Some(e) = inner.quakes.get(id) else {
                continue;
            };
            if !filter.matches(e) {
                continue;
            }
            matched += 1;
            let on_page = filter
                .after
                .as_ref()
                .is_none_or(|c| (*time_ms, id.as_str()) < (c.time_ms, c.id.as_str()));
            if !on_page {
                continue;
            }
            if quakes.len() < filter.limit {
                quakes.push(e.quake.clone());
                last = Some((*time_ms, id));
            } else if rest.is_none() {
                rest = last.map(|(time_ms, id)| Cursor {
                    time_ms,
                    id: id.to_string(),
                });
            }
        }
        QuakeList {
            seq: inner.seq,
            matched,
            quakes,
            rest,
        }
    }

    pub fn stats(&self, now_ms: i64) -> Stats {
        let inner = self.read();
        let mut max_mag: Option<f64> = None;
        let (mut sum, mut with_mag, mut last_hour) = (0.0, 0usize, 0usize);
        for e in inner.quakes.values() {
            if let Some(m) = e.quake.mag {
                max_mag = Some(max_mag.map_or(m, |x| x.max(m)));
                sum += m;
                with_mag += 1;
            }
            if e.time_ms >= now_ms - 3_600_000 && e.time_ms <= now_ms {
                last_hour += 1;
            }
        }
        Stats {
            seq: inner.seq,
            events: inner.quakes.len(),
            max_mag,
            avg_mag: (with_mag > 0).then(|| sum / with_mag as f64),
            last_hour,
            newest: inner
                .by_time
                .last()
                .and_then(|(t, _)| crate::record::format_millis(*t)),
            last_record_at: (inner.last_record_ms > 0)
                .then(|| crate::record::format_millis(inner.last_record_ms))
                .flatten(),
            windows: inner.windows.values().cloned().collect(),
        }
    }

    /// The newest alerts, newest first.
    pub fn alerts(&self, limit: usize) -> Vec<Arc<Value>> {
        self.read().alerts.iter().take(limit).cloned().collect()
    }

    /// Changes after `since` still remembered, and a receiver for every later one; `None`
    /// when some changes after `since` are forgotten (the browser must reload its data).
    pub fn follow(&self, since: u64) -> (Option<Vec<Update>>, broadcast::Receiver<Update>) {
        let inner = self.read();
        let receiver = self.updates.subscribe();
        let oldest = inner.recent.front().map_or(inner.seq + 1, |u| u.seq);
        let replay = if since > inner.seq {
            None
        } else if since + 1 >= oldest {
            Some(
                inner
                    .recent
                    .iter()
                    .filter(|u| u.seq > since)
                    .cloned()
                    .collect(),
            )
        } else {
            None
        };
        (replay, receiver)
    }

    pub fn seq(&self) -> u64 {
        self.read().seq
    }
}

impl Observe for Live {
    fn observe(&self, out: &mut Samples) {
        let m = &self.metrics;
        let name = "quakestream_web_records_total";
        for (topic, c) in [
            ("quakes", &m.quakes),
            ("windows", &m.windows),
            ("alerts", &m.alerts),
        ] {
            out.counter(
                name,
                "Records the dashboard took in, by kind.",
                &[("kind", topic)],
                c.get(),
            );
        }
        for (name, help, c) in [
            (
                "quakestream_web_bad_records_total",
                "Records the dashboard could not show.",
                &m.bad,
            ),
            (
                "quakestream_web_stale_records_total",
                "Revisions older than the one shown.",
                &m.stale,
            ),
            (
                "quakestream_web_evicted_total",
                "Events dropped to stay within web.max_events.",
                &m.evicted,
            ),
            (
                "quakestream_web_live_rejected_total",
                "Live connections refused (web.max_live_clients reached).",
                &m.live_rejected,
            ),
            (
                "quakestream_web_live_rejected_per_client_total",
                "Live connections refused (web.max_live_per_client reached by their address).",
                &m.live_rejected_per_client,
            ),
            (
                "quakestream_web_hosts_refused_total",
                "Requests refused for a Host not in web.allowed_hosts.",
                &m.hosts_refused,
            ),
            (
                "quakestream_web_requests_total",
                "HTTP requests served.",
                &m.requests,
            ),
            (
                "quakestream_web_bad_requests_total",
                "HTTP requests answered 4xx.",
                &m.bad_requests,
            ),
        ] {
            out.counter(name, help, &[], c.get());
        }
        let inner = self.read();
        out.gauge(
            "quakestream_web_events",
            "Events on the map.",
            &[],
            inner.quakes.len() as f64,
        );
        out.gauge(
            "quakestream_web_live_clients",
            "Browsers following live updates.",
            &[],
            m.live_clients.get() as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(max_events: usize) -> Live {
        Live::new(Limits {
            max_events,
            max_windows: 3,
            max_alerts: 2,
        })
    }

    /// Applies [`quake`] at `now`: a revision that must be taken.
    fn apply(
        l: &Live,
        id: &str,
        minute: u32,
        updated_s: u32,
        mag: Option<f64>,
        status: &str,
        now: i64,
    ) {
        l.apply_quake(Some(id), &quake(id, minute, updated_s, mag, status), now)
            .unwrap();
    }

    fn quake(id: &str, minute: u32, updated_s: u32, mag: Option<f64>, status: &str) -> Vec<u8> {
        serde_json::json!({
            "id": id, "ids": [id], "source": "usgs",
            "time": format!("2025-05-04T13:{minute:02}:00.000Z"),
            "updated": format!("2025-05-04T14:00:{updated_s:02}.000Z"),
            "mag": mag, "mag_type": "ml", "place": "<b>somewhere</b>", "lat": 10.0, "lon": 170.0,
            "depth_km": 5.0, "status": status, "tsunami": false, "alert": null, "sig": 1,
            "felt": null, "cdi": null, "mmi": null, "net": "us", "code": id,
            "event_type": "earthquake", "title": "M", "url": "https://example.org"
        })
        .to_string()
        .into_bytes()
    }

    fn all() -> Filter {
        Filter {
            limit: 100,
            ..Filter::default()
        }
    }

    #[test]
    fn a_revision_replaces_and_an_older_one_is_ignored() {
        let l = live(10);
        apply(&l, "a", 1, 10, Some(2.0), "automatic", 1);
        apply(&l, "a", 1, 20, Some(3.0), "reviewed", 2);
        assert_eq!(
            l.apply_quake(Some("a"), &quake("a", 1, 15, Some(9.0), "reviewed"), 3),
            Err(Rejected::Stale)
        );
        let list = l.quakes(&all());
        assert_eq!(list.matched, 1);
        assert_eq!(list.quakes[0].mag, Some(3.0));
        assert_eq!(list.seq, 2);
    }

    #[test]
    fn deletion_removes_and_stays_deleted() {
        let l = live(10);
        apply(&l, "a", 1, 10, Some(2.0), "automatic", 1);
        apply(&l, "a", 1, 30, Some(2.0), "deleted", 1);
        assert_eq!(l.quakes(&all()).matched, 0);
        // A replayed older revision does not bring it back.
        assert_eq!(
            l.apply_quake(Some("a"), &quake("a", 1, 20, Some(2.0), "reviewed"), 1),
            Err(Rejected::Stale)
        );
        let (replay, _) = l.follow(0);
        let events: Vec<&str> = replay.unwrap().iter().map(|u| u.event).collect();
        assert_eq!(events, ["quake", "remove"]);
    }

    #[test]
    fn the_oldest_events_go_first_past_the_limit() {
        let l = live(2);
        for (id, minute) in [("a", 5), ("b", 1), ("c", 9)] {
            l.apply_quake(Some(id), &quake(id, minute, 1, Some(1.0), "automatic"), 1)
                .unwrap();
        }
        let ids: Vec<String> = l
            .quakes(&all())
            .quakes
            .iter()
            .map(|q| q.id.clone())
            .collect();
        assert_eq!(ids, ["c", "a"]);
        assert_eq!(l.metrics.evicted.get(), 1);
    }

    #[test]
    fn filters_by_magnitude_time_and_box() {
        let l = live(10);
        l.apply_quake(
            Some("small"),
            &quake("small", 1, 1, Some(1.0), "automatic"),
            1,
        )
        .unwrap();
        apply(&l, "big", 2, 1, Some(5.0), "automatic", 1);
        l.apply_quake(Some("none"), &quake("none", 3, 1, None, "automatic"), 1)
            .unwrap();
        let f = |min_mag, since_ms, bbox| Filter {
            min_mag,
            since_ms,
            bbox,
            limit: 10,
            after: None,
        };
        assert_eq!(l.quakes(&f(Some(2.0), None, None)).matched, 1);
        let since = parse_millis("2025-05-04T13:02:00Z");
        assert_eq!(l.quakes(&f(None, since, None)).matched, 2);
        // lon 170 lies in a box across the antimeridian, not in one around Greenwich.
        assert_eq!(
            l.quakes(&f(None, None, Some([160.0, 0.0, -170.0, 20.0])))
                .matched,
            3
        );
        assert_eq!(
            l.quakes(&f(None, None, Some([-10.0, 0.0, 10.0, 20.0])))
                .matched,
            0
        );
        let limited = l.quakes(&Filter { limit: 1, ..all() });
        assert_eq!((limited.matched, limited.quakes.len()), (3, 1));
        assert_eq!(limited.quakes[0].id, "none", "newest first");
    }

    #[test]
    fn hostile_records_are_counted_not_shown() {
        let l = live(10);
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            &[0xff, 0xfe, 0x00][..],
            br#"{"id":"x"}"#,
        ] {
            assert!(matches!(
                l.apply_quake(Some("x"), bad, 1),
                Err(Rejected::Bad(_))
            ));
        }
        let mut off_earth: serde_json::Value =
            serde_json::from_slice(&quake("x", 1, 1, Some(1.0), "automatic")).unwrap();
        off_earth["lat"] = 91.0.into();
        let err = l.apply_quake(Some("x"), off_earth.to_string().as_bytes(), 1);
        assert!(matches!(err, Err(Rejected::Bad(why)) if why.contains("latitude 91 is outside")));
        assert!(l.apply_window(None, b"{\"window_start\": 5}", 1).is_err());
        assert!(l.apply_alert(b"{\"kind\": \"new\"}", 1).is_err());
        assert_eq!(l.metrics.bad.get(), 8);
        assert_eq!(l.quakes(&all()).matched, 0);
    }

    #[test]
    fn windows_and_alerts_are_bounded() {
        let l = live(10);
        for minute in [0, 5, 10, 15] {
            let w = format!(
                "{{\"window_start\":\"2025-05-04T13:{minute:02}:00.000Z\",\"count\":{minute}}}"
            );
            l.apply_window(Some(&minute.to_string()), w.as_bytes(), 1)
                .unwrap();
        }
        // The same window again replaces its result.
        l.apply_window(
            Some("15"),
            b"{\"window_start\":\"2025-05-04T13:15:00.000Z\",\"count\":99}",
            1,
        )
        .unwrap();
        let counts: Vec<i64> = l
            .stats(0)
            .windows
            .iter()
            .map(|w| w["count"].as_i64().unwrap())
            .collect();
        assert_eq!(counts, [5, 10, 99]);
        for n in 0..3 {
            l.apply_alert(
                format!("{{\"kind\":\"new\",\"n\":{n},\"quake\":{{}}}}").as_bytes(),
                1,
            )
            .unwrap();
        }
        let alerts = l.alerts(10);
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["n"], 2);
    }

    #[test]
    fn followers_get_every_change_after_their_list() {
        let l = live(10);
        apply(&l, "a", 1, 1, Some(1.0), "automatic", 1);
        let seq = l.quakes(&all()).seq;
        apply(&l, "b", 2, 1, Some(1.0), "automatic", 1);
        let (replay, mut rx) = l.follow(seq);
        let replay = replay.unwrap();
        assert_eq!(replay.len(), 1);
        assert!(replay[0].data.contains("\"b\""));
        apply(&l, "c", 3, 1, Some(1.0), "automatic", 1);
        assert!(rx.try_recv().unwrap().data.contains("\"c\""));
        // A sequence from before the server's start (or the future) asks for a resync.
        assert!(l.follow(99).0.is_none());
    }

    #[test]
    fn stats_summarize_the_map() {
        let l = live(10);
        apply(&l, "a", 1, 1, Some(1.0), "automatic", 1);
        apply(&l, "b", 2, 1, Some(4.0), "automatic", 1);
        l.apply_quake(Some("c"), &quake("c", 3, 1, None, "automatic"), 1)
            .unwrap();
        let now = parse_millis("2025-05-04T14:02:30Z").unwrap();
        let s = l.stats(now);
        assert_eq!(
            (s.events, s.max_mag, s.avg_mag, s.last_hour),
            (3, Some(4.0), Some(2.5), 1)
        );
        assert_eq!(s.newest.as_deref(), Some("2025-05-04T13:03:00.000Z"));
    }
}
