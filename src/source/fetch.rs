//! The HTTP poller every polled source shares.
//!
//! One [`Fetcher`] per URL: it remembers the last `ETag` and `Last-Modified` and sends them back
//! (`If-None-Match`, `If-Modified-Since`), so an unchanged feed costs a `304`. Bodies are
//! requested gzip-compressed, read under a size cap (after decompression, so a gzip bomb stops
//! at the cap), and refused when they are an HTML error page. Every failure is a [`FetchError`]
//! that knows its metric name, whether to retry, and how long the server asked us to wait;
//! The pauses between failed polls come from [`crate::runtime::Backoff`].

use std::time::Duration;

use reqwest::{StatusCode, header};

use crate::config::duration;

/// HTTP settings of a polled source.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Whole-request timeout (connect, headers and body).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Largest response body accepted, in bytes, after decompression.
    pub max_bytes: u64,
    /// First pause after a failure; doubles with each further failure.
    #[serde(with = "duration")]
    pub backoff_initial: Duration,
    /// Longest pause between retries (and the cap on a server's `Retry-After`).
    #[serde(with = "duration")]
    pub backoff_max: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(30),
            max_bytes: 64 << 20,
            backoff_initial: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// What a successful request returned.
#[derive(Debug)]
pub enum Fetched {
    /// A new body.
    Body(Vec<u8>),
    /// `304 Not Modified`: nothing changed since the last body.
    NotModified,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP {status}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("response larger than the {limit}-byte cap (max_bytes)")]
    TooLarge { limit: u64 },
    #[error("unexpected content type {0:?} (an error page?)")]
    ContentType(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("reading the response failed: {0}")]
    Body(String),
}

impl FetchError {
    /// The label of this error in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Status { status: 429, .. } => "rate_limited",
            FetchError::Status { status, .. } if *status >= 500 => "server_error",
            FetchError::Status { .. } => "client_error",
            FetchError::Timeout(_) => "timeout",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::ContentType(_) => "content_type",
            FetchError::Connect(_) => "connect",
            FetchError::Body(_) => "truncated",
        }
    }

    /// The pause the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Polls one URL.
pub struct Fetcher {
    client: reqwest::Client,
    url: String,
    config: HttpConfig,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Validators of the last body, used only once the caller accepted that body.
    pending: Option<(Option<String>, Option<String>)>,
}

impl Fetcher {
    pub fn new(url: &str, config: &HttpConfig) -> Result<Fetcher, FetchError> {
        Fetcher::with_headers(url, config, header::HeaderMap::new())
    }

    /// A fetcher that sends `headers` with every request (API keys, `Accept`).
    pub fn with_headers(
        url: &str,
        config: &HttpConfig,
        headers: header::HeaderMap,
    ) -> Result<Fetcher, FetchError> {
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!(
                "quakestream/",
                env!("CARGO_PKG_VERSION"),
                " (+https://crates.io/crates/quakestream)"
            ))
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .gzip(true)
            .build()
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        Ok(Fetcher {
            client,
            url: url.to_string(),
            config: config.clone(),
            etag: None,
            last_modified: None,
            pending: None,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Forgets the validators, so the next request fetches the body even if it did not change.
    pub fn forget_validators(&mut self) {
        self.etag = None;
        self.last_modified = None;
    }

    /// One conditional GET.
    pub async fn fetch(&mut self) -> Result<Fetched, FetchError> {
        let url = self.url.clone();
        self.get(&url, true).await
    }

    /// One GET of any URL (no conditional headers unless `conditional`).
    pub async fn get(&mut self, url: &str, conditional: bool) -> Result<Fetched, FetchError> {
        let mut request = self.client.get(url).header(
            header::ACCEPT,
            "application/geo+json, application/json;q=0.9, */*;q=0.1",
        );
        if conditional {
            if let Some(etag) = &self.etag {
                request = request.header(header::IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &self.last_modified {
                request = request.header(header::IF_MODIFIED_SINCE, modified);
            }
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| self.classify(e, FetchError::Connect))?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
                .map(|d| d.min(self.config.backoff_max));
            return Err(FetchError::Status {
                status: status.as_u16(),
                retry_after,
            });
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("text/html") || content_type.contains("xml") {
            return Err(FetchError::ContentType(content_type));
        }
        if let Some(length) = response.content_length()
            && length > self.config.max_bytes
        {
            return Err(FetchError::TooLarge {
                limit: self.config.max_bytes,
            });
        }
        let etag = header_text(response.headers(), header::ETAG);
        let last_modified = header_text(response.headers(), header::LAST_MODIFIED);

        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.classify(e, FetchError::Body))?
        {
            if (body.len() + chunk.len()) as u64 > self.config.max_bytes {
                return Err(FetchError::TooLarge {
                    limit: self.config.max_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        if conditional {
            self.pending = Some((etag, last_modified));
        }
        Ok(Fetched::Body(body))
    }

    /// Accepts the last body: its `ETag` and `Last-Modified` are sent with the next request.
    /// A body that turned out unusable is not accepted, so the next poll fetches it in full
    /// instead of being told it has not changed.
    pub fn accept(&mut self) {
        if let Some((etag, last_modified)) = self.pending.take() {
            self.etag = etag;
            self.last_modified = last_modified;
        }
    }

    /// A failed request (`Connect`) or a failed read of its body (`Body`), or a timeout. Errors
    /// never carry the request URL: its query may hold an API key.
    fn classify(&self, e: reqwest::Error, failed: fn(String) -> FetchError) -> FetchError {
        let e = e.without_url();
        if e.is_timeout() {
            FetchError::Timeout(self.config.timeout)
        } else {
            failed(error_chain(&e))
        }
    }
}

fn header_text(headers: &header::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// reqwest's own message is generic ("error sending request"); the cause says what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(wait.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
