//! The router without a server (`Router::oneshot`): headers, parameter checks, pages of
//! `/api/quakes`, the host names answered, the live-client limits, replay after `since`,
//! `/metrics` and `/health`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use tower::ServiceExt;

use super::api::{self, Web};
use super::limits::{Connections, Hosts, Peer, PerClient};
use super::pipeline::Pipeline;
use super::state::{Limits, Live};
use crate::metrics::{Registry, SourceMetrics};

fn web(max_live_clients: usize) -> (Arc<Web>, Router) {
    // Every request here comes from one address: no per-client limit unless a test sets one.
    limited(max_live_clients, 1000, &[])
}

/// A router with `max_live_per_client` and `allowed_hosts` as `[web]` would set them.
fn limited(
    max_live_clients: usize,
    max_live_per_client: usize,
    allowed_hosts: &[&str],
) -> (Arc<Web>, Router) {
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
        live_per_client: Arc::new(PerClient::new(max_live_per_client)),
        keep_alive: Duration::from_secs(15),
        hosts: Hosts::new(
            &allowed_hosts
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
            "127.0.0.1",
        ),
        connections: Arc::new(Connections::new(
            512,
            Duration::from_secs(10),
            Duration::from_secs(60),
        )),
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    (web.clone(), api::app(web))
}

/// Applies [`quake`] to the live state.
fn add(live: &Live, id: &str, mag: f64, lon: f64) {
    live.apply_quake(Some(id), &quake(id, mag, lon), 1).unwrap();
}

fn quake(id: &str, mag: f64, lon: f64) -> Vec<u8> {
    quake_at(id, mag, lon, "2025-05-04T13:40:00.000Z")
}

/// A quake record with origin time `time`.
fn quake_at(id: &str, mag: f64, lon: f64, time: &str) -> Vec<u8> {
    serde_json::json!({
        "id": id, "ids": [id], "source": "usgs",
        "time": time, "updated": "2025-05-04T13:50:00.000Z",
        "mag": mag, "mag_type": "ml", "place": "<script>alert(1)</script>", "lat": 10.0, "lon": lon,
        "depth_km": 5.0, "status": "automatic", "tsunami": false, "alert": null, "sig": 1,
        "felt": null, "cdi": null, "mmi": null, "net": "us", "code": id,
        "event_type": "earthquake", "title": "M", "url": "https://example.org"
    })
    .to_string()
    .into_bytes()
}

/// A plain GET of `uri`: no `Host`, no client address.
fn plain(uri: impl AsRef<str>) -> Request<Body> {
    Request::get(uri.as_ref()).body(Body::empty()).unwrap()
}

async fn get(app: &Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    send(app, plain(uri)).await
}

/// The `Content-Type` of an answer.
fn content_type(headers: &axum::http::HeaderMap) -> &str {
    headers[header::CONTENT_TYPE].to_str().unwrap()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap()
}

/// The text of a JSON error answer (`{"error": …}`).
fn error_text(body: &str) -> String {
    json(body)["error"].as_str().unwrap().to_string()
}

/// Opens a live stream (`/api/events`) and holds it: it must be accepted.
async fn open(app: &Router, request: Request<Body>) -> axum::response::Response {
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response
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
    assert!(content_type(&headers).starts_with("text/html"));
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
    assert!(content_type(&headers).starts_with("text/javascript"));
    assert!(body.contains("Leaflet"));
    let (status, _, body) = get(&app, "/vendor/countries-50m.json").await;
    assert_eq!(status, StatusCode::OK);
    let topo = json(&body);
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
    let list = json(&body);
    assert_eq!(list["matched"], 1);
    assert_eq!(list["quakes"][0]["id"], "b");
    // Text from the feed stays data: JSON-escaped, never rendered here.
    assert_eq!(list["quakes"][0]["place"], "<script>alert(1)</script>");
    let (_, _, body) = get(&app, "/api/quakes?since=2025-05-04&limit=2").await;
    let list = json(&body);
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
            "unknown parameter \"minmag\"; known: min_mag, since, bbox, limit, cursor",
        ),
        ("min_mag=1&min_mag=2", "min_mag given twice"),
        (
            "cursor=abc",
            "cursor=\"abc\": expected the cursor of a `next` link",
        ),
        ("cursor=12_", "expected the cursor of a `next` link"),
    ] {
        let (status, _, body) = get(&app, &format!("/api/quakes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert!(error_text(&body).contains(says), "{query}: {body}");
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

    let first = open(&app, plain(format!("/api/events?since={seq}"))).await;
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
    let again = open(&app, plain("/api/events?since=9999")).await;
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
    assert!(content_type(&headers).starts_with("text/plain; version=0.0.4"));
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
    let p = json(&body);
    assert_eq!(p["sources"][0]["source"], "usgs");
    assert_eq!(p["sources"][0]["polls"], 7);
    assert_eq!(p["map"]["events"], 1);
    assert_eq!(p["dlq"], "quakestream-dlq");
}

/// A GET from `client` naming `host`, as a browser sends it.
fn request(uri: &str, host: Option<&str>, client: &str) -> Request<Body> {
    let mut r = Request::get(uri);
    if let Some(host) = host {
        r = r.header(header::HOST, host);
    }
    let mut r = r.body(Body::empty()).unwrap();
    let addr: SocketAddr = format!("{client}:50000").parse().unwrap();
    r.extensions_mut().insert(ConnectInfo(Peer(addr)));
    r
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, 16 * 1024 * 1024).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// DNS rebinding: a page at `http://rebind.attacker.example:8080/` whose name now resolves to
/// 127.0.0.1 is same-origin with this server in the browser, but its requests still say
/// `Host: rebind.attacker.example:8080`. Those are refused, whatever the path.
#[tokio::test]
async fn requests_for_other_host_names_are_refused() {
    let (web, app) = limited(4, 4, &[]);
    for path in ["/api/pipeline", "/metrics", "/api/quakes", "/", "/health"] {
        let (status, headers, body) = send(
            &app,
            request(path, Some("rebind.attacker.example:8080"), "127.0.0.1"),
        )
        .await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{path}: {body}");
        let error = error_text(&body);
        assert!(
            error.contains("\"rebind.attacker.example:8080\""),
            "{error}"
        );
        assert!(error.contains("web.allowed_hosts"), "{error}");
        assert!(
            !body.contains("quakestream_"),
            "{path}: nothing of the answer leaks"
        );
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    assert_eq!(web.live.metrics.hosts_refused.get(), 5);
    // The names of this machine and addresses are answered, with any port; so are clients that
    // name no host (no browser does that).
    for host in [
        Some("localhost:8080"),
        Some("127.0.0.1:8080"),
        Some("[::1]:8080"),
        Some("192.168.1.20:8080"),
        None,
    ] {
        let (status, _, body) = send(&app, request("/api/pipeline", host, "127.0.0.1")).await;
        assert_eq!(status, StatusCode::OK, "{host:?}: {body}");
    }
    // A Host that is not text names nothing answered.
    let mut garbled = request("/", None, "127.0.0.1");
    garbled.headers_mut().insert(
        header::HOST,
        axum::http::HeaderValue::from_bytes(b"\xfflocalhost").unwrap(),
    );
    assert_eq!(send(&app, garbled).await.0, StatusCode::MISDIRECTED_REQUEST);

    // A name set in `web.allowed_hosts` is answered; "*" answers any.
    for (allowed, host, answer) in [
        ("map.example.org", "Map.Example.org:443", StatusCode::OK),
        (
            "map.example.org",
            "other.example.org",
            StatusCode::MISDIRECTED_REQUEST,
        ),
        ("*", "other.example.org", StatusCode::OK),
    ] {
        let (_, app) = limited(4, 4, &[allowed]);
        let (status, _, _) = send(&app, request("/metrics", Some(host), "10.0.0.1")).await;
        assert_eq!(
            status, answer,
            "allowed_hosts = [{allowed:?}], Host: {host}"
        );
    }
}

/// Ids of a `/api/quakes` answer, in order.
fn ids(list: &serde_json::Value) -> Vec<String> {
    list["quakes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn quakes_come_in_pages_that_follow_next() {
    let (web, app) = web(1);
    // Seven events at five origin times, two pairs sharing one (pages may end inside a pair).
    for (id, minute) in [
        ("e1", 1),
        ("e2", 2),
        ("e3a", 3),
        ("e3b", 3),
        ("e4", 4),
        ("e5a", 5),
        ("e5b", 5),
    ] {
        let time = format!("2025-05-04T13:{minute:02}:00.000Z");
        web.live
            .apply_quake(Some(id), &quake_at(id, 2.0, 10.0, &time), 1)
            .unwrap();
    }
    let newest_first = ["e5b", "e5a", "e4", "e3b", "e3a", "e2", "e1"];

    // The whole list fits the default page: no next page, as the map has always loaded it.
    let (_, _, body) = get(&app, "/api/quakes").await;
    let all = json(&body);
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all["next"], serde_json::Value::Null);

    // Pages of two: each `next` carries the filter on, and the pages add up to the list.
    let mut uri = "/api/quakes?limit=2&min_mag=1.5&since=2025-05-04".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, _, body) = get(&app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let page = json(&body);
        // `matched` counts every event the filter takes now, whatever the page.
        let matched = if pages == 0 { 7 } else { 8 };
        assert_eq!(page["matched"], matched, "{uri}: {body}");
        let got = ids(&page);
        assert!(got.len() <= 2, "{uri}: {got:?}");
        seen.extend(got);
        pages += 1;
        if pages == 1 {
            // A newer event arriving between two pages shifts nothing.
            add(&web.live, "newer", 2.0, 10.0);
        }
        match page["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with("/api/quakes?"), "{next}");
                assert!(
                    next.contains("min_mag=1.5") && next.contains("limit=2"),
                    "{next}"
                );
                uri = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(seen, newest_first, "no event twice, none skipped");
    assert_eq!(pages, 4);

    // A duration back from now is written into `next` as the time it meant.
    let (_, _, body) = get(&app, "/api/quakes?limit=1&since=100000d").await;
    let page = json(&body);
    let next = page["next"].as_str().unwrap();
    assert!(!next.contains("100000d"), "{next}");
    let (status, _, body) = get(&app, next).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page = json(&body);
    assert_eq!(page["quakes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn one_client_cannot_take_every_live_slot() {
    let (web, app) = limited(4, 2, &[]);
    let follow = |client: &str| request("/api/events", Some("localhost:8080"), client);
    let first = open(&app, follow("10.0.0.1")).await;
    let second = open(&app, follow("10.0.0.1")).await;

    // A third from the same address: 429, naming the limit; the server still has room.
    let (status, _, body) = send(&app, follow("10.0.0.1")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let error = error_text(&body);
    assert!(error.contains("web.max_live_per_client"), "{error}");
    assert!(error.contains("10.0.0.1"), "{error}");
    assert_eq!(web.live.metrics.live_rejected_per_client.get(), 1);
    assert_eq!(web.live.metrics.live_rejected.get(), 0);

    // Another address is served.
    let other = open(&app, follow("10.0.0.2")).await;

    // The first client's slot comes back when one of its streams ends.
    drop(first);
    let again = open(&app, follow("10.0.0.1")).await;

    // The server's own limit still holds over all addresses: 503 past it.
    let fourth = open(&app, follow("10.0.0.3")).await;
    let (status, _, body) = send(&app, follow("10.0.0.4")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("web.max_live_clients"), "{body}");
    drop((second, other, again, fourth));
}
