//! The HTTP surface: pages, assets, the JSON API, live updates, `/metrics` and `/health`.
//!
//! [`app`] builds the router from the shared state and nothing else, so tests call it with
//! `Router::oneshot` and no server. Every response carries the security headers (a strict
//! Content-Security-Policy: scripts, styles and data only from this server); a request naming a
//! host the server does not answer is refused before anything else (see [`super::limits`]);
//! query strings are bounded and checked, and errors are JSON `{"error": …}` naming what was
//! wrong, never internals.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{
    IntoResponse, Response,
    sse::{Event, KeepAlive, Sse},
};
use axum::routing::get;
use futures::{Stream, StreamExt, stream};
use serde::Serialize;
use serde_json::json;
use tokio::sync::{Semaphore, broadcast::error::RecvError};

use super::assets;
use super::limits::{Connections, Hosts, Peer, PerClient};
use super::pipeline::{Pipeline, SourceView};
use super::state::{Cursor, Filter, Live, QuakeList, Update};
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
    /// Live streams per client address (`web.max_live_per_client`).
    pub live_per_client: Arc<PerClient>,
    /// How often a live stream sends a keep-alive comment: well within `web.idle_timeout`.
    pub keep_alive: Duration,
    /// The host names answered (`web.allowed_hosts`).
    pub hosts: Hosts,
    /// The connection limits, for `/metrics`.
    pub connections: Arc<Connections>,
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

/// Refuses hosts the server does not answer, bounds the query string, counts requests and
/// adds the security headers to every answer.
async fn guard(State(web): State<Arc<Web>>, request: Request, next: Next) -> Response {
    web.live.metrics.requests.inc();
    let too_long = request.uri().query().is_some_and(|q| q.len() > MAX_QUERY);
    let refused_host = request_host(&request)
        .filter(|h| !web.hosts.allows(h))
        .map(|h| h.chars().take(80).collect::<String>());
    let mut response = if let Some(host) = refused_host {
        web.live.metrics.hosts_refused.inc();
        ApiError {
            status: StatusCode::MISDIRECTED_REQUEST,
            message: format!(
                "this server does not answer to the host {host:?}; if that is its name, add it \
                 to web.allowed_hosts"
            ),
        }
        .into_response()
    } else if too_long {
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

/// The host a request names: its `Host` header (HTTP/1), else its URI's authority (HTTP/2);
/// `None` when it names none, which no browser does (so no page can use that to read the API).
fn request_host(request: &Request) -> Option<&str> {
    match request.headers().get(header::HOST) {
        // Not text: no host we answer.
        Some(host) => Some(host.to_str().unwrap_or("")),
        None => request.uri().authority().map(|a| a.host()),
    }
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
    for (k, v) in params(query, &["min_mag", "since", "bbox", "limit", "cursor"])? {
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
            "cursor" => {
                let cursor = v.parse::<Cursor>().map_err(|()| {
                    let shown: String = v.chars().take(40).collect();
                    ApiError::bad(format!(
                        "cursor={shown:?}: expected the cursor of a `next` link"
                    ))
                })?;
                f.after = Some(cursor);
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

/// One page of `/api/quakes`: the list, and the URL of the next page.
#[derive(Serialize)]
struct QuakePage {
    #[serde(flatten)]
    list: QuakeList,
    /// `/api/quakes?…&cursor=…`: the same filter and limit, from where this page ended;
    /// `null` on the last page.
    next: Option<String>,
}

async fn quakes(State(web): State<Arc<Web>>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let f = filter(q.as_deref(), now_ms())?;
    let list = web.live.quakes(&f);
    let next = list.rest.as_ref().map(|cursor| next_page(&f, cursor));
    Ok(Json(QuakePage { list, next }).into_response())
}

/// The URL of the page after `cursor` with the filter `f`. A relative `since` (`1h`) is
/// written as the time it meant, so that every page of one listing has the same bounds.
fn next_page(f: &Filter, cursor: &Cursor) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    if let Some(min_mag) = f.min_mag {
        query.append_pair("min_mag", &min_mag.to_string());
    }
    // A time too far back to write is before every event: leaving it out changes nothing.
    if let Some(since) = f.since_ms.and_then(crate::record::format_millis) {
        query.append_pair("since", &since);
    }
    if let Some([w, s, e, n]) = f.bbox {
        query.append_pair("bbox", &format!("{w},{s},{e},{n}"));
    }
    query.append_pair("limit", &f.limit.to_string());
    query.append_pair("cursor", &cursor.to_string());
    format!("/api/quakes?{}", query.finish())
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
    crate::metrics::Observe::observe(web.connections.as_ref(), &mut samples);
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
///
/// Each stream holds a slot of its client's address (429 past `web.max_live_per_client`) and
/// one of the server's (503 past `web.max_live_clients`) until it ends.
async fn events(
    State(web): State<Arc<Web>>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
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
    // Served by `run`, every request knows its client; a router driven without a server (a
    // benchmark) counts its requests as one client's.
    let ip = extensions
        .get::<ConnectInfo<Peer>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip());
    let Some(client) = web.live_per_client.try_take(ip) else {
        web.live.metrics.live_rejected_per_client.inc();
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "{ip} already follows live updates {} times (web.max_live_per_client); close a \
                 tab or try again later",
                web.live_per_client.max()
            ),
        });
    };
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
    let tail = follow(receiver, last, (permit, client));
    let body = stream::iter(first)
        .chain(tail)
        .take_until(web.shutdown.clone().cancelled_owned());
    let mut response = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(web.keep_alive))
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

/// The changes after `after`; `slots` (the client's places under the limits) are held until
/// the stream is dropped.
fn follow<T: Send>(
    receiver: tokio::sync::broadcast::Receiver<Update>,
    after: u64,
    slots: T,
) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(
        (receiver, after, slots, false),
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
