//! The polling loop every polled source shares: poll, then wait the interval, or back off after
//! a failure (exponentially, with jitter, honouring the server's `Retry-After`), until shutdown
//! or an optional deadline. A poll in progress is abandoned on shutdown; each source makes that
//! safe (what it published is in its topic and is read back at the next start).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fetch::{FetchError, Fetched, Fetcher, HttpConfig};
use crate::metrics::SourceMetrics;
use crate::runtime::Backoff;

/// What the loop needs to know about a failed poll.
pub trait PollFailure: std::fmt::Display {
    /// The label of the failure in `quakestream_source_errors_total{kind}`.
    fn kind(&self) -> &'static str;
    /// The pause the server asked for, if any.
    fn retry_after(&self) -> Option<Duration>;
}

/// What can go wrong with a body: it has a metric label like any failure.
pub trait BodyFailure: std::fmt::Display {
    fn kind(&self) -> &'static str;
}

/// Why a poll failed: the request, the body it brought, or publishing what it held.
#[derive(Debug, thiserror::Error)]
pub enum PollError<B: BodyFailure> {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Body(B),
    #[error("{0}")]
    Publish(crate::Error),
}

impl<B: BodyFailure> PollFailure for PollError<B> {
    fn kind(&self) -> &'static str {
        match self {
            PollError::Fetch(e) => e.kind(),
            PollError::Body(b) => b.kind(),
            PollError::Publish(_) => "publish",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            PollError::Fetch(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// A source's poll, as the loop calls it.
pub trait Poll {
    type Error: PollFailure;
    fn poll(&mut self) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// The request of one poll, counted: the new body, or `None` when the server answered that
/// nothing changed (which is a successful poll).
pub async fn fetch(
    fetcher: &mut Fetcher,
    metrics: &SourceMetrics,
) -> Result<Option<Vec<u8>>, FetchError> {
    metrics.polls.inc();
    match fetcher.fetch().await? {
        Fetched::NotModified => {
            metrics.not_modified.inc();
            metrics.succeeded();
            Ok(None)
        }
        Fetched::Body(body) => Ok(Some(body)),
    }
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// The source's `duration` ran out.
    Deadline,
}

/// Polls `source` every `interval` until `shutdown` (or `deadline`, when given).
pub async fn every<P: Poll>(
    name: &str,
    interval: Duration,
    http: &HttpConfig,
    deadline: Option<tokio::time::Instant>,
    metrics: &SourceMetrics,
    shutdown: &CancellationToken,
    source: &mut P,
) -> Ended {
    let mut backoff = Backoff::new(http.backoff_initial, http.backoff_max);
    let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let deadline_at = deadline.unwrap_or(far);
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            () = tokio::time::sleep_until(deadline_at) => return Ended::Deadline,
            polled = source.poll() => polled,
        };
        let wait = match polled {
            Ok(()) => {
                backoff.reset();
                interval
            }
            Err(e) => {
                metrics.error(e.kind());
                let wait = backoff.next(e.retry_after());
                tracing::warn!(
                    source = name,
                    error = %e,
                    kind = e.kind(),
                    failures = backoff.failures(),
                    retry_in = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)),
                    "poll failed"
                );
                wait
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            () = tokio::time::sleep_until(deadline_at) => return Ended::Deadline,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
