//! The HTTP surface: pages, assets, the JSON API, live updates, `/metrics` and `/health`.
//!
//! [`app`] builds the router from the shared state and nothing else, so tests call it with
//! `Router::oneshot` and no server. Every response carries the security headers (a strict
//! Content-Security-Policy: scripts, styles and data only from this server); query strings are
//! bounded and checked, and errors are JSON `{"error": …}` naming what was wrong, never
//! internals.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{
    IntoResponse, Response,
    sse::{Event, KeepAlive, Sse},
};
use axum::routing::get;
use futures::{Stream, StreamExt, stream};
use serde_json::json;
use tokio::sync::{Semaphore, broadcast::error::RecvError};

use super::assets;
use super::pipeline::{Pipeline, SourceView};
use super::state::{Filter, Live, Update};
use crate::metrics::{Registry, Samples};
use crate::record::parse_millis;

/// Longest query string accepted.
const MAX_QUERY: usize = 1024;

/// Most quakes one `/api/quakes` answer lists.
pub const MAX_LIMIT: usize = 20_000;

/// Default number of quakes listed.
const DEFAULT_LIMIT: usize = 5_000;

/// Everything the handlers share.
pub struct Web {
    pub live: Arc<Live>,
    pub pipeline: Arc<Pipeline>,
    pub registry: Arc<Registry>,
    /// The Content-Security-Policy header value.
    pub csp: HeaderValue,
    /// What the page needs to know: tiles, topics, limits.
    pub page_config: serde_json::Value,
    pub live_clients: Arc<Semaphore>,
    pub max_live_clients: usize,
    /// Ends live streams when the server stops.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl Web {
    /// The CSP for an optional tile server origin.
    pub fn csp_for(tile_origin: Option<&str>) -> HeaderValue {
        let img = match tile_origin {
            Some(origin) => format!("'self' data: {origin}"),
            None => "'self' data:".into(),
        };
        let policy = format!(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src {img}; \
             connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        );
        HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
    }
}

/// An error answer: a status and a message for the user.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

pub fn app(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(|| async { assets::page(assets::INDEX) }))
        .route(
            "/pipeline",
            get(|| async { assets::page(assets::PIPELINE) }),
        )
        .route("/assets/{file}", get(own_asset))
        .route("/vendor/{*path}", get(vendor_asset))
        .route("/api/config", get(page_config))
        .route("/api/quakes", get(quakes))
        .route("/api/stats", get(stats))
        .route("/api/alerts", get(alerts))
        .route("/api/pipeline", get(pipeline))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                message: "no such page; try / (the map), /pipeline or /api/quakes".into(),
            }
        })
        .layer(middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

/// Bounds the query string, counts requests and adds the security headers to every answer.
async fn guard(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    web.live.metrics.requests.inc();
    let too_long = request.uri().query().is_some_and(|q| q.len() > MAX_QUERY);
    let mut response = if too_long {
        ApiError {
            status: StatusCode::URI_TOO_LONG,
            message: format!("query string longer than {MAX_QUERY} bytes"),
        }
        .into_response()
    } else {
        next.run(request).await
    };
    if response.status().is_client_error() {
        web.live.metrics.bad_requests.inc();
    }
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, web.csp.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn own_asset(Path(file): Path<String>) -> Response {
    match assets::own(&file) {
        Some((mime, body)) => asset_response(mime, body, false),
        None => not_found(&file),
    }
}

async fn vendor_asset(Path(path): Path<String>) -> Response {
    match assets::vendor(&path) {
        Some((mime, body)) => asset_response(mime, body, true),
        None => not_found(&path),
    }
}

fn asset_response(mime: &'static str, body: &'static [u8], immutable: bool) -> Response {
    let cache = if immutable {
        "public, max-age=86400"
    } else {
        "no-cache"
    };
    (
        [(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, cache)],
        body,
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    let what: String = what.chars().take(80).collect();
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no asset {what:?}"),
    }
    .into_response()
}

async fn page_config(State(web): State<Arc<Web>>) -> Json<serde_json::Value> {
    Json(web.page_config.clone())
}

/// Query parameters as (name, value), each name allowed once and known.
fn params(query: Option<&str>, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if !known.contains(&k.as_ref()) {
            let k: String = k.chars().take(40).collect();
            return Err(ApiError::bad(format!(
                "unknown parameter {k:?}; known: {}",
                known.join(", ")
            )));
        }
        if out.iter().any(|(seen, _)| seen == &k) {
            return Err(ApiError::bad(format!("parameter {k} given twice")));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn number(name: &str, text: &str, range: std::ops::RangeInclusive<f64>) -> Result<f64, ApiError> {
    let shown: String = text.chars().take(40).collect();
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| ApiError::bad(format!("{name}={shown:?}: expected a number")))?;
    if !v.is_finite() || !range.contains(&v) {
        return Err(ApiError::bad(format!(
            "{name}={shown:?}: expected {} to {}",
            range.start(),
            range.end()
        )));
    }
    Ok(v)
}

/// `since`: RFC 3339, a date, or a duration back from now (`1h`, `7d`).
fn since(text: &str, now_ms: i64) -> Result<i64, ApiError> {
    let text = text.trim();
    if let Some(ms) = parse_millis(text) {
        return Ok(ms);
    }
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day
            .and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis());
    }
    if let Ok(d) = crate::config::duration::parse(text) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ms));
    }
    let shown: String = text.chars().take(40).collect();
    Err(ApiError::bad(format!(
        "since={shown:?}: expected an RFC 3339 time, a date (2025-05-04) or a duration back from now (1h, 7d)"
    )))
}

/// The filter of `/api/quakes`.
pub fn filter(query: Option<&str>, now_ms: i64) -> Result<Filter, ApiError> {
    let mut f = Filter {
        limit: DEFAULT_LIMIT,
        ..Filter::default()
    };
    for (k, v) in params(query, &["min_mag", "since", "bbox", "limit"])? {
        match k.as_str() {
            "min_mag" => f.min_mag = Some(number("min_mag", &v, -5.0..=12.0)?),
            "since" => f.since_ms = Some(since(&v, now_ms)?),
            "bbox" => {
                let parts: Vec<&str> = v.split(',').collect();
                if parts.len() != 4 {
                    return Err(ApiError::bad(
                        "bbox: expected min_lon,min_lat,max_lon,max_lat",
                    ));
                }
                let w = number("bbox min_lon", parts[0], -180.0..=180.0)?;
                let s = number("bbox min_lat", parts[1], -90.0..=90.0)?;
                let e = number("bbox max_lon", parts[2], -180.0..=180.0)?;
                let n = number("bbox max_lat", parts[3], -90.0..=90.0)?;
                if s > n {
                    return Err(ApiError::bad("bbox: min_lat is above max_lat"));
                }
                f.bbox = Some([w, s, e, n]);
            }
            _ => {
                f.limit = number("limit", &v, 1.0..=MAX_LIMIT as f64)? as usize;
            }
        }
    }
    Ok(f)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn quakes(State(web): State<Arc<Web>>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let f = filter(q.as_deref(), now_ms())?;
    Ok(Json(web.live.quakes(&f)).into_response())
}

async fn stats(State(web): State<Arc<Web>>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    params(q.as_deref(), &[])?;
    Ok(Json(web.live.stats(now_ms())).into_response())
}

async fn alerts(State(web): State<Arc<Web>>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let mut limit = 50;
    for (_, v) in params(q.as_deref(), &["limit"])? {
        limit = number("limit", &v, 1.0..=1000.0)? as usize;
    }
    Ok(Json(json!({ "alerts": web.live.alerts(limit) })).into_response())
}

/// Every counter and gauge of every component in this process.
fn samples(web: &Web) -> Samples {
    let mut samples = Samples::default();
    let in_use = web.max_live_clients - web.live_clients.available_permits();
    web.live.metrics.live_clients.set(in_use as i64);
    web.registry.observe(&mut samples);
    crate::metrics::Observe::observe(web.live.as_ref(), &mut samples);
    crate::metrics::Observe::observe(web.pipeline.as_ref(), &mut samples);
    samples
}

async fn pipeline(State(web): State<Arc<Web>>) -> Json<serde_json::Value> {
    let now = now_ms();
    let snapshot = web.pipeline.snapshot();
    let sources: Vec<SourceView> = web
        .registry
        .sources()
        .iter()
        .map(|m| SourceView::of(m, now))
        .collect();
    let stats = web.live.stats(now);
    let counters: Vec<serde_json::Value> = samples(&web)
        .flat()
        .iter()
        .map(|(name, labels, value)| json!({ "name": name, "labels": labels, "value": value }))
        .collect();
    Json(json!({
        "kafka": {
            "bootstrap": web.pipeline.bootstrap(),
            "up": web.pipeline.healthy(),
        },
        "sampled_at": snapshot.sampled_at,
        "error": snapshot.error,
        "topics": snapshot.topics,
        "groups": snapshot.groups,
        "dlq": web.page_config["topics"]["dlq"],
        "sources": sources,
        "components": components(&web),
        "map": {
            "events": stats.events,
            "newest": stats.newest,
            "last_record_at": stats.last_record_at,
            "caught_up": web.live.caught_up(),
        },
        "counters": counters,
    }))
}

async fn metrics(State(web): State<Arc<Web>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        samples(&web).render(),
    )
        .into_response()
}

/// Each supervised component of this process: state, restarts, last error.
fn components(web: &Web) -> Vec<crate::runtime::status::StatusView> {
    web.registry.components().iter().map(|c| c.view()).collect()
}

/// `200` while Kafka answers and every component runs (`"status": "ok"`), still `200` but
/// `"degraded: NAME restarting"` (or `failing`: it failed within the last 45 s) while one is
/// in trouble and the rest of the pipeline works, and `503` when Kafka does not answer or a
/// component has failed for good.
async fn health(State(web): State<Arc<Web>>) -> Response {
    let kafka = web.pipeline.healthy();
    let caught_up = web.live.caught_up();
    let components = components(&web);
    let failed: Vec<&str> = components
        .iter()
        .filter(|c| c.state == crate::runtime::State::Failed)
        .map(|c| c.name.as_str())
        .collect();
    let unwell: Vec<String> = components
        .iter()
        .filter(|c| c.state != crate::runtime::State::Failed && c.unwell())
        .map(|c| {
            let how = if c.state == crate::runtime::State::Restarting {
                "restarting"
            } else {
                "failing"
            };
            format!("{} {how}", c.name)
        })
        .collect();
    let (status, text) = if !kafka {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "kafka unreachable".to_string(),
        )
    } else if !failed.is_empty() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("failed: {}", failed.join(", ")),
        )
    } else if !unwell.is_empty() {
        (StatusCode::OK, format!("degraded: {}", unwell.join(", ")))
    } else {
        (StatusCode::OK, "ok".to_string())
    };
    (
        status,
        Json(json!({
            "status": text,
            "kafka": kafka,
            "caught_up": caught_up,
            "events": web.live.stats(now_ms()).events,
            "components": components,
        })),
    )
        .into_response()
}

/// Live updates as Server-Sent Events: `quake`, `remove`, `window`, `alert`, and `resync` when
/// the browser must reload its lists. `?since=N` replays the changes after sequence `N`.
async fn events(
    State(web): State<Arc<Web>>,
    headers: axum::http::HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    // A browser reconnecting on its own says the last event it got; that beats the URL.
    let mut since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    for (_, v) in params(q.as_deref(), &["since"])? {
        let shown: String = v.chars().take(40).collect();
        let asked = v
            .parse::<u64>()
            .map_err(|_| ApiError::bad(format!("since={shown:?}: expected a sequence number")))?;
        since = Some(since.map_or(asked, |s| s.max(asked)));
    }
    let Ok(permit) = web.live_clients.clone().try_acquire_owned() else {
        web.live.metrics.live_rejected.inc();
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "{} browsers already follow live updates (web.max_live_clients); try again later",
                web.max_live_clients
            ),
        });
    };
    let since = since.unwrap_or_else(|| web.live.seq());
    let (replay, receiver) = web.live.follow(since);
    let first: Vec<Result<Event, Infallible>> = match &replay {
        Some(updates) => updates.iter().map(|u| Ok(event(u))).collect(),
        None => vec![Ok(Event::default().event("resync").data("{}"))],
    };
    let last = replay
        .and_then(|u| u.last().map(|u| u.seq))
        .unwrap_or(since);
    // The stream holds the client's slot until the browser goes away, and ends at shutdown
    // so that the server can stop.
    let tail = follow(receiver, last, permit);
    let body = stream::iter(first)
        .chain(tail)
        .take_until(web.shutdown.clone().cancelled_owned());
    let mut response = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn event(u: &Update) -> Event {
    Event::default()
        .event(u.event)
        .id(u.seq.to_string())
        .data(u.data.as_ref())
}

fn follow(
    receiver: tokio::sync::broadcast::Receiver<Update>,
    after: u64,
    client: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(
        (receiver, after, client, false),
        |(mut rx, after, client, done)| async move {
            if done {
                return None;
            }
            loop {
                match rx.recv().await {
                    Ok(u) if u.seq <= after => continue,
                    Ok(u) => {
                        let seq = u.seq;
                        return Some((Ok(event(&u)), (rx, seq, client, false)));
                    }
                    // Too slow to keep up: the browser reloads its lists and reconnects.
                    Err(RecvError::Lagged(_)) => {
                        let resync = Event::default().event("resync").data("{}");
                        return Some((Ok(resync), (rx, after, client, true)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    )
}

/// A response body from static bytes (pages).
pub(super) fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(body),
    )
        .into_response()
}
