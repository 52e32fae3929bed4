//! The router without a server (`Router::oneshot`): headers, parameter checks, the live-client
//! limit, replay after `since`, `/metrics` and `/health`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use tower::ServiceExt;

use super::api::{self, Web};
use super::pipeline::Pipeline;
use super::state::{Limits, Live};
use crate::metrics::{Registry, SourceMetrics};

fn web(max_live_clients: usize) -> (Arc<Web>, Router) {
    let live = Arc::new(Live::new(Limits {
        max_events: 100,
        max_windows: 10,
        max_alerts: 10,
    }));
    let registry = Arc::new(Registry::default());
    let source = Arc::new(SourceMetrics::new("usgs"));
    source.polls.add(7);
    registry.register_source(source);
    let web = Arc::new(Web {
        live,
        pipeline: Arc::new(Pipeline::new("127.0.0.1:1")),
        registry,
        csp: Web::csp_for(None),
        page_config: serde_json::json!({ "topics": { "dlq": "quakestream-dlq" } }),
        live_clients: Arc::new(tokio::sync::Semaphore::new(max_live_clients)),
        max_live_clients,
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    (web.clone(), api::app(web))
}

/// Applies [`quake`] to the live state.
fn add(live: &Live, id: &str, mag: f64, lon: f64) {
    live.apply_quake(Some(id), &quake(id, mag, lon), 1).unwrap();
}

fn quake(id: &str, mag: f64, lon: f64) -> Vec<u8> {
    serde_json::json!({
        "id": id, "ids": [id], "source": "usgs",
        "time": "2025-05-04T13:40:00.000Z", "updated": "2025-05-04T13:50:00.000Z",
        "mag": mag, "mag_type": "ml", "place": "<script>alert(1)</script>", "lat": 10.0, "lon": lon,
        "depth_km": 5.0, "status": "automatic", "tsunami": false, "alert": null, "sig": 1,
        "felt": null, "cdi": null, "mmi": null, "net": "us", "code": id,
        "event_type": "earthquake", "title": "M", "url": "https://example.org"
    })
    .to_string()
    .into_bytes()
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, 16 * 1024 * 1024).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn pages_carry_the_security_headers() {
    let (_, app) = web(1);
    for uri in ["/", "/pipeline", "/api/stats", "/nope"] {
        let (_, headers, _) = get(&app, uri).await;
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{uri}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{uri}: {csp}");
        assert!(csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    }
    let (status, headers, body) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(body.contains("id=\"map\""));
    // No inline script: everything the page runs comes from /assets or /vendor.
    assert!(!body.contains("<script>"));
    let tiles = Web::csp_for(Some("https://tile.example.org"));
    assert!(
        tiles
            .to_str()
            .unwrap()
            .contains("img-src 'self' data: https://tile.example.org;")
    );
}

#[tokio::test]
async fn the_map_libraries_are_bundled() {
    assert_eq!(
        super::assets::missing(),
        Vec::<&str>::new(),
        "build.rs bundles them from npm (scripts/test.sh installs npm)"
    );
    let (_, app) = web(1);
    let (status, headers, body) = get(&app, "/vendor/leaflet.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(body.contains("Leaflet"));
    let (status, _, body) = get(&app, "/vendor/countries-50m.json").await;
    assert_eq!(status, StatusCode::OK);
    let topo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(topo["type"], "Topology");
    for path in [
        "/vendor/../Cargo.toml",
        "/vendor/%2e%2e/build.rs",
        "/assets/../../etc/passwd",
    ] {
        let (status, _, _) = get(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn quakes_are_filtered_and_parameters_checked() {
    let (web, app) = web(1);
    add(&web.live, "a", 1.0, 10.0);
    add(&web.live, "b", 5.0, 10.0);
    add(&web.live, "c", 5.5, -100.0);

    let (status, headers, body) = get(&app, "/api/quakes?min_mag=4&bbox=0,0,20,20").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["matched"], 1);
    assert_eq!(list["quakes"][0]["id"], "b");
    // Text from the feed stays data: JSON-escaped, never rendered here.
    assert_eq!(list["quakes"][0]["place"], "<script>alert(1)</script>");
    let (_, _, body) = get(&app, "/api/quakes?since=2025-05-04&limit=2").await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            list["matched"].as_u64(),
            list["quakes"].as_array().unwrap().len()
        ),
        (Some(3), 2)
    );

    for (query, says) in [
        ("min_mag=abc", "min_mag=\"abc\": expected a number"),
        ("min_mag=NaN", "min_mag=\"NaN\": expected -5 to 12"),
        ("min_mag=1e300", "expected -5 to 12"),
        (
            "bbox=1,2,3",
            "bbox: expected min_lon,min_lat,max_lon,max_lat",
        ),
        ("bbox=0,50,10,40", "min_lat is above max_lat"),
        (
            "bbox=0,0,200,10",
            "bbox max_lon=\"200\": expected -180 to 180",
        ),
        ("limit=0", "limit=\"0\""),
        ("limit=99999999", "expected 1 to 20000"),
        ("since=yesterday", "since=\"yesterday\""),
        (
            "minmag=2",
            "unknown parameter \"minmag\"; known: min_mag, since, bbox, limit",
        ),
        ("min_mag=1&min_mag=2", "min_mag given twice"),
    ] {
        let (status, _, body) = get(&app, &format!("/api/quakes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(says),
            "{query}: {body}"
        );
    }
    let long = format!("/api/quakes?min_mag={}", "1".repeat(2000));
    assert_eq!(get(&app, &long).await.0, StatusCode::URI_TOO_LONG);
    let (status, _, body) = get(&app, "/api/alerts?limit=5000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(web.live.metrics.bad_requests.get() >= 13);
}

/// Reads SSE frames until one contains `want`.
async fn read_until(body: Body, want: &str) -> (String, Body) {
    let mut stream = body.into_data_stream();
    let mut seen = String::new();
    while !seen.contains(want) {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("an SSE frame within 5s")
            .expect("the stream stays open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    (seen, Body::from_stream(stream))
}

#[tokio::test]
async fn live_updates_replay_and_are_limited() {
    let (web, app) = web(1);
    add(&web.live, "a", 1.0, 10.0);
    let seq = web.live.seq();
    add(&web.live, "b", 2.0, 10.0);

    let first = app
        .clone()
        .oneshot(
            Request::get(format!("/api/events?since={seq}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "text/event-stream");
    // The change after `since` is replayed, with its sequence as the event id.
    let (seen, rest) = read_until(first.into_body(), "\"id\":\"b\"").await;
    assert!(seen.contains("event: quake"), "{seen}");
    assert!(seen.contains(&format!("id: {}", seq + 1)), "{seen}");
    assert!(!seen.contains("\"id\":\"a\""), "{seen}");

    // One client is the limit here: a second is refused while the first stays.
    let (status, _, body) = get(&app, "/api/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("web.max_live_clients"));
    assert_eq!(web.live.metrics.live_rejected.get(), 1);

    // Live changes reach the first client.
    add(&web.live, "c", 3.0, 10.0);
    let (seen, rest) = read_until(rest, "\"id\":\"c\"").await;
    assert!(seen.contains("event: quake"));
    drop(rest);
    // Its slot is free again once it left.
    let again = app
        .clone()
        .oneshot(
            Request::get("/api/events?since=9999")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    // A sequence from another server life asks the browser to reload its lists.
    let (seen, _) = read_until(again.into_body(), "event: resync").await;
    assert!(seen.contains("event: resync"));

    let (status, _, body) = get(&app, "/api/events?since=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn metrics_and_health() {
    let (web, app) = web(1);
    add(&web.live, "a", 1.0, 10.0);
    let _ = web.live.apply_quake(Some("x"), b"garbage", 1);
    let (status, headers, body) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        body.contains("quakestream_source_polls_total{source=\"usgs\"} 7\n"),
        "{body}"
    );
    assert!(body.contains("quakestream_web_events 1\n"), "{body}");
    assert!(
        body.contains("quakestream_web_bad_records_total 1\n"),
        "{body}"
    );
    assert!(body.contains("quakestream_kafka_up 0\n"), "{body}");
    // One header per family, even when several components report into it.
    assert_eq!(
        body.matches("# TYPE quakestream_web_records_total counter")
            .count(),
        1
    );

    // Kafka not reached yet: unhealthy.
    let (status, _, body) = get(&app, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("\"kafka\":false"), "{body}");

    let (status, _, body) = get(&app, "/api/pipeline").await;
    assert_eq!(status, StatusCode::OK);
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["sources"][0]["source"], "usgs");
    assert_eq!(p["sources"][0]["polls"], 7);
    assert_eq!(p["map"]["events"], 1);
    assert_eq!(p["dlq"], "quakestream-dlq");
}
