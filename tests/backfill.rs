//! Backfill against a fake FDSN event service that, like the real one, answers 400 to a query
//! matching more than 20,000 events.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use quakestream::{
    metrics::SourceMetrics,
    source::backfill::{self, BackfillConfig, Request, Target},
};
use tokio_util::sync::CancellationToken;

const EVENTS: i64 = 45_000;
const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
const SPAN: i64 = 10 * 86_400_000;
const LIMIT: usize = 20_000;

#[derive(Clone)]
struct Event {
    id: String,
    time: i64,
    updated: i64,
    mag: f64,
    deleted: bool,
}

fn catalog() -> Vec<Event> {
    (0..EVENTS)
        .map(|i| {
            let deleted = i % 1_000 == 999;
            let time = T0 + i * (SPAN / EVENTS);
            Event {
                id: format!("fd{i:06}"),
                time,
                updated: if deleted {
                    T0 + 20 * 86_400_000
                } else {
                    time + 60_000
                },
                mag: (i % 60) as f64 / 10.0,
                deleted,
            }
        })
        .collect()
}

#[derive(Default)]
struct Log {
    queries: Vec<(String, String)>,
    refused: usize,
}

#[derive(Clone)]
struct Fdsn {
    events: Arc<Vec<Event>>,
    log: Arc<Mutex<Log>>,
}

fn time_param(q: &HashMap<String, String>, name: &str) -> Option<i64> {
    let text = q.get(name)?;
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

impl Fdsn {
    fn matching(&self, q: &HashMap<String, String>) -> Vec<Event> {
        let start = time_param(q, "starttime").unwrap_or(i64::MIN);
        let end = time_param(q, "endtime").unwrap_or(i64::MAX);
        let updated_after = time_param(q, "updatedafter").unwrap_or(i64::MIN);
        let min_mag: f64 = q
            .get("minmagnitude")
            .and_then(|m| m.parse().ok())
            .unwrap_or(f64::MIN);
        let deleted_too = q.get("includedeleted").is_some_and(|v| v == "true");
        self.events
            .iter()
            .filter(|e| e.time >= start && e.time <= end && e.updated >= updated_after)
            .filter(|e| e.mag >= min_mag && (deleted_too || !e.deleted))
            .cloned()
            .collect()
    }
}

async fn count(State(fdsn): State<Fdsn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let n = fdsn.matching(&q).len();
    axum::Json(serde_json::json!({"count": n, "maxAllowed": LIMIT})).into_response()
}

async fn query(State(fdsn): State<Fdsn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let events = fdsn.matching(&q);
    let mut log = fdsn.log.lock().unwrap();
    if !q.contains_key("limit") && events.len() > LIMIT {
        log.refused += 1;
        let text = format!(
            "Error 400: Bad Request\n\n{} matching events exceeds search limit of {LIMIT}. Modify the search to match fewer events.\n",
            events.len()
        );
        return (StatusCode::BAD_REQUEST, text).into_response();
    }
    log.queries.push((
        q.get("starttime").cloned().unwrap_or_default(),
        q.get("endtime").cloned().unwrap_or_default(),
    ));
    let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(1);
    let limit: usize = q.get("limit").and_then(|o| o.parse().ok()).unwrap_or(LIMIT);
    let features: Vec<serde_json::Value> = events
        .iter()
        .skip(offset - 1)
        .take(limit)
        .map(|e| {
            serde_json::json!({
                "type": "Feature",
                "properties": {
                    "mag": e.mag, "place": "Somewhere", "time": e.time, "updated": e.updated,
                    "tz": null, "url": format!("https://example/{}", e.id), "felt": null,
                    "cdi": null, "mmi": null, "alert": null,
                    "status": if e.deleted { "deleted" } else { "reviewed" },
                    "tsunami": 0, "sig": 10, "net": "fd", "code": &e.id[2..],
                    "ids": format!(",{},", e.id), "sources": ",fd,", "types": ",origin,",
                    "magType": "ml", "type": "earthquake", "title": "M - Somewhere"
                },
                "geometry": {"type": "Point", "coordinates": [10.0, 20.0, 5.0]},
                "id": e.id
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "type": "FeatureCollection",
        "metadata": {"generated": T0 + 30 * 86_400_000, "count": features.len(), "status": 200},
        "features": features
    }))
    .into_response()
}

async fn start_fdsn() -> (String, Arc<Mutex<Log>>) {
    let fdsn = Fdsn {
        events: Arc::new(catalog()),
        log: Arc::default(),
    };
    let log = fdsn.log.clone();
    let app = Router::new()
        .route("/fdsnws/event/1/count", get(count))
        .route("/fdsnws/event/1/query", get(query))
        .with_state(fdsn);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/fdsnws/event/1"), log)
}

fn target<'a>(
    data: &'a std::path::Path,
    settings: &'a quakestream::kafka::KafkaSettings,
    metrics: &Arc<SourceMetrics>,
) -> Target<'a> {
    Target {
        settings,
        dlq: "quakestream-dlq",
        data_dir: data,
        metrics: metrics.clone(),
        checks: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_splits_under_the_limit_resumes_and_sweeps_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("broker")).await;
    let (url, log) = start_fdsn().await;
    let config = BackfillConfig {
        url,
        ..BackfillConfig::default()
    };
    let request = Request {
        start_ms: T0,
        end_ms: T0 + SPAN,
        min_magnitude: None,
        updated_after_ms: None,
    };
    let data = dir.path().join("data");
    let metrics = Arc::new(SourceMetrics::new("backfill"));

    // The first run is interrupted after two windows.
    let stop = CancellationToken::new();
    let first = backfill::run(
        &config,
        request.clone(),
        target(&data, &settings, &metrics),
        stop.clone(),
        |report, _| {
            if report.windows >= 2 {
                stop.cancel();
            }
        },
    )
    .await
    .unwrap();
    assert!(!first.complete);
    assert_eq!(first.windows, 2);
    let queried_first = log.lock().unwrap().queries.len();

    // Run again: it resumes, and finishes.
    let mut fractions = Vec::new();
    let second = backfill::run(
        &config,
        request.clone(),
        target(&data, &settings, &metrics),
        CancellationToken::new(),
        |_, done| fractions.push(done),
    )
    .await
    .unwrap();
    assert!(second.complete);
    assert!(
        fractions.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {fractions:?}"
    );
    assert_eq!(fractions.last().copied(), Some(1.0));
    assert_eq!(
        second.duplicates, 0,
        "finished windows are not fetched again"
    );
    let live = EVENTS - EVENTS / 1_000;
    assert_eq!(first.published + second.published, live as u64);
    {
        let log = log.lock().unwrap();
        assert_eq!(log.refused, 0, "no query over the limit was sent");
        assert!(
            log.queries.len() >= 3,
            "45,000 events need at least 3 queries"
        );
        let mut unique = log.queries.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), log.queries.len(), "no window queried twice");
        assert!(log.queries.len() > queried_first);
    }

    let records = common::read_topic(&settings, "earthquakes").await;
    assert_eq!(records.len(), live as usize);
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for (key, quake) in &records {
        *ids.entry(key.clone()).or_default() += 1;
        assert_eq!(quake["status"], "reviewed");
    }
    assert!(ids.values().all(|n| *n == 1), "each event once");

    // A sweep for revisions: deletions since day 15 arrive as status "deleted".
    let sweep = Request {
        updated_after_ms: Some(T0 + 15 * 86_400_000),
        ..request
    };
    let report = backfill::run(
        &config,
        sweep,
        target(&data, &settings, &metrics),
        CancellationToken::new(),
        |_, _| {},
    )
    .await
    .unwrap();
    assert!(report.complete);
    assert_eq!(report.published, (EVENTS / 1_000) as u64);
    let records = common::read_topic(&settings, "earthquakes").await;
    let deleted: Vec<_> = records
        .iter()
        .filter(|(_, q)| q["status"] == "deleted")
        .collect();
    assert_eq!(deleted.len(), (EVENTS / 1_000) as usize);
    assert!(deleted.iter().all(|(k, _)| k.ends_with("999")));

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}
