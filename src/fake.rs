//! A fake feed server: replays recorded responses in sequence and injects faults.
//!
//! The remote public APIs are the one part tests cannot run for real, so this server stands in
//! for them, serving the recorded fixtures over real HTTP on loopback. Each request takes the
//! next [`Step`] of a script; when the script runs out, the last body is served again (with its
//! `ETag` and `Last-Modified`, so a conditional request gets `304`). `quakestream replay-server`
//! runs it for offline demos.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, Response, StatusCode, header},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What one request gets.
#[derive(Debug, Clone)]
pub enum Step {
    /// `200` with this JSON body, a new `ETag` and `Last-Modified`.
    Json(Bytes),
    /// An error status, with `Retry-After` seconds when given, and a short body.
    Status { code: u16, retry_after: Option<u64> },
    /// An HTML error page with status 200, as a misconfigured proxy sends.
    Html,
    /// The first half of this body, as a complete response: truncated JSON.
    Truncated(Bytes),
    /// Headers promise the whole body, the connection breaks halfway.
    Cut(Bytes),
    /// Answers only after this long (longer than the client's timeout: a timeout).
    Hang(Duration),
    /// A body of this many bytes (past the client's size cap).
    Oversized(usize),
    /// `200` with bytes that are not JSON.
    Garbage,
}

impl Step {
    /// The step's name in [`FakeServer::served`].
    pub fn name(&self) -> &'static str {
        match self {
            Step::Json(_) => "json",
            Step::Status { .. } => "status",
            Step::Html => "html",
            Step::Truncated(_) => "truncated",
            Step::Cut(_) => "cut",
            Step::Hang(_) => "hang",
            Step::Oversized(_) => "oversized",
            Step::Garbage => "garbage",
        }
    }
}

#[derive(Default)]
struct Script {
    steps: VecDeque<Step>,
    /// The last JSON body served, its ETag and Last-Modified.
    last: Option<(Bytes, String, String)>,
    generation: u64,
    served: Vec<&'static str>,
    /// When each [`Step::Json`] was taken from the script, in order.
    json_served_at: Vec<Instant>,
}

/// A running fake server.
#[derive(Clone)]
pub struct FakeServer {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    requests: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl FakeServer {
    /// Starts serving `steps` on `listen` (port 0 picks a free port).
    pub async fn start(listen: &str, steps: Vec<Step>) -> std::io::Result<FakeServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = FakeServer {
            addr,
            script: Arc::new(Mutex::new(Script {
                steps: steps.into(),
                ..Script::default()
            })),
            requests: Arc::default(),
            stop: CancellationToken::new(),
        };
        let app = {
            let server = server.clone();
            Router::new().fallback(move |headers: HeaderMap| {
                let server = server.clone();
                async move { server.answer(&headers).await }
            })
        };
        let stop = server.stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Ok(server)
    }

    /// Steps made of every `.json`/`.geojson` file in `dir`, in name order.
    pub fn steps_from_dir(dir: &Path) -> std::io::Result<Vec<Step>> {
        let mut files: Vec<_> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "geojson"))
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| std::fs::read(p).map(|b| Step::Json(b.into())))
            .collect()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's URL for `path` (`/earthquakes/feed/v1.0/summary/all_day.geojson`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Appends steps to the script.
    pub fn push(&self, steps: impl IntoIterator<Item = Step>) {
        if let Ok(mut script) = self.script.lock() {
            script.steps.extend(steps);
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The names of the steps served, in order (`"304"` for a not-modified answer, `"repeat"`
    /// for the last body served again).
    pub fn served(&self) -> Vec<&'static str> {
        self.script
            .lock()
            .map(|s| s.served.clone())
            .unwrap_or_default()
    }

    /// When each [`Step::Json`] body was first served, in order (taken from the script, before
    /// its response is written): where a latency measured from the feed's side starts.
    pub fn json_served_at(&self) -> Vec<Instant> {
        self.script
            .lock()
            .map(|s| s.json_served_at.clone())
            .unwrap_or_default()
    }

    /// Steps not served yet.
    pub fn pending(&self) -> usize {
        self.script.lock().map(|s| s.steps.len()).unwrap_or(0)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    async fn answer(&self, headers: &HeaderMap) -> Response<Body> {
        let step = {
            let Ok(mut script) = self.script.lock() else {
                return plain(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
            };
            match script.steps.pop_front() {
                Some(step) => {
                    script.served.push(step.name());
                    if matches!(step, Step::Json(_)) {
                        script.json_served_at.push(Instant::now());
                    }
                    Some(step)
                }
                None => {
                    script.served.push("repeat");
                    None
                }
            }
        };
        let response = match step {
            None => self.repeat(headers),
            Some(Step::Json(body)) => {
                let (etag, modified) = {
                    let Ok(mut script) = self.script.lock() else {
                        return plain(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
                    };
                    script.generation += 1;
                    let etag = format!("\"feed-{}\"", script.generation);
                    let modified = httpdate_now(script.generation);
                    script.last = Some((body.clone(), etag.clone(), modified.clone()));
                    (etag, modified)
                };
                json(body, &etag, &modified)
            }
            Some(Step::Status { code, retry_after }) => {
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let mut response = plain(status, "fake server: injected error\n");
                if let Some(secs) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                }
                response
            }
            Some(Step::Html) => {
                let mut r = Response::new(Body::from(
                    "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>",
                ));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            Some(Step::Truncated(body)) => {
                let half = body.slice(..body.len() / 2);
                json(half, "\"truncated\"", &httpdate_now(0))
            }
            Some(Step::Cut(body)) => {
                let half = body.slice(..body.len() / 2);
                let total = body.len();
                // Headers and half the body go out first; then the connection breaks.
                let stream = futures::stream::unfold(Some(half), |half| async move {
                    match half {
                        Some(half) => Some((Ok::<Bytes, std::io::Error>(half), None)),
                        None => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Some((
                                Err(std::io::Error::other("fake server: connection cut")),
                                None,
                            ))
                        }
                    }
                });
                let mut r = Response::new(Body::from_stream(stream));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Some(Step::Hang(wait)) => {
                tokio::time::sleep(wait).await;
                plain(StatusCode::GATEWAY_TIMEOUT, "fake server: slept\n")
            }
            Some(Step::Oversized(size)) => {
                let mut body = vec![b' '; size];
                body[0] = b'{';
                json(body.into(), "\"big\"", &httpdate_now(0))
            }
            Some(Step::Garbage) => {
                let mut r = Response::new(Body::from(&b"\x00\x9f\x92\x96 not json {{{"[..]));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
        };
        self.requests.fetch_add(1, Ordering::SeqCst);
        response
    }

    fn repeat(&self, headers: &HeaderMap) -> Response<Body> {
        let last = self.script.lock().ok().and_then(|s| s.last.clone());
        let Some((body, etag, modified)) = last else {
            return plain(StatusCode::NOT_FOUND, "404 File Not Found\n");
        };
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == etag)
            || headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == modified);
        if matches {
            if let Ok(mut script) = self.script.lock()
                && let Some(last) = script.served.last_mut()
            {
                *last = "304";
            }
            let mut r = Response::new(Body::empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            return r;
        }
        json(body, &etag, &modified)
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json(body: Bytes, etag: &str, modified: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    r
}

/// A distinct, valid HTTP date per generation.
fn httpdate_now(generation: u64) -> String {
    let t = chrono::DateTime::from_timestamp(1_700_000_000 + generation as i64 * 60, 0)
        .unwrap_or_default();
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}
