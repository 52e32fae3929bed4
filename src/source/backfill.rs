//! `backfill`: history (and late revisions and deletions) from the FDSN event service.
//!
//! Delivery semantics: the same as the live source, exactly once per (event, `updated`) in the
//! topic: the dedupe state is rebuilt from the topic first, and only what is newer is
//! published.
//!
//! The service answers at most 20,000 events per query (more is a `400`), so each time window is
//! counted first (`/count`) and split in halves until it fits; a window that cannot be split
//! further (one second) is paged with `limit`/`offset`. Completed windows are written to a
//! checkpoint file under `<data_dir>/state/`, replaced atomically, so an interrupted backfill
//! run again with the same arguments skips what it finished. `--updated-after` sweeps for
//! revisions with `includedeleted=true`, publishing deletions as `status: "deleted"`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::dedupe::Dedupe;
use super::fetch::{FetchError, Fetched, Fetcher, HttpConfig};
use super::geojson;
use super::outlet::Outlet;
use super::publish::{self, Profile, Publisher, published_of};
use crate::error::{Error, Result};
use crate::kafka::{KafkaSettings, reader};
use crate::metrics::SourceMetrics;
use crate::record::{Checks, format_millis, parse_millis};
use crate::runtime::{Backoff, Context};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackfillConfig {
    /// Base URL of the FDSN event service (`…/query` and `…/count` are appended).
    pub url: String,
    /// The service's per-query event limit.
    pub limit: u64,
    /// Topic to write (the `Quake` record).
    pub topic: String,
    /// Attempts per request before the backfill stops with an error (it can be resumed).
    pub attempts: u32,
    pub http: HttpConfig,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        BackfillConfig {
            url: "https://earthquake.usgs.gov/fdsnws/event/1".into(),
            limit: 20_000,
            topic: "earthquakes".into(),
            attempts: 8,
            http: HttpConfig {
                timeout: Duration::from_secs(120),
                max_bytes: 256 << 20,
                ..HttpConfig::default()
            },
        }
    }
}

/// One backfill run's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Origin time range, epoch ms, start inclusive, end exclusive.
    pub start_ms: i64,
    pub end_ms: i64,
    pub min_magnitude: Option<f64>,
    /// Only events updated at or after this time, deletions included.
    pub updated_after_ms: Option<i64>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub windows: usize,
    pub events: u64,
    pub published: u64,
    pub duplicates: u64,
    /// False when interrupted (the checkpoint keeps what was finished).
    pub complete: bool,
}

/// The checkpoint of one request: the origin-time ranges already finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    request: String,
    done: Vec<(i64, i64)>,
}

/// Parses `2024-01-15`, `2024-01-15T10:30:00` (UTC) or RFC 3339 into epoch ms.
pub fn parse_time(text: &str) -> std::result::Result<i64, String> {
    let text = text.trim();
    if let Some(ms) = parse_millis(text) {
        return Ok(ms);
    }
    if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc()
            .timestamp_millis());
    }
    Err(format!(
        "invalid time {text:?}: write it like 2024-01-15, 2024-01-15T10:30:00 or 2024-01-15T10:30:00Z"
    ))
}

/// FDSN time parameter: UTC, millisecond precision, no zone (UTC is the service's default).
fn fdsn_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

impl Request {
    fn validate(&self) -> Result<()> {
        if self.end_ms <= self.start_ms {
            return Err(Error::Config {
                origin: "backfill".into(),
                message: "--end must be after --start".into(),
            });
        }
        Ok(())
    }

    /// Identifies the request in its checkpoint file name.
    fn fingerprint(&self, url: &str) -> String {
        format!(
            "{url}|{}|{}|{:?}|{:?}",
            self.start_ms, self.end_ms, self.min_magnitude, self.updated_after_ms
        )
    }

    /// Query parameters for a window [start, end), end exclusive.
    fn params(&self, start: i64, end: i64) -> String {
        let mut q = format!(
            "format=geojson&starttime={}&endtime={}",
            fdsn_time(start),
            fdsn_time(end - 1)
        );
        if let Some(m) = self.min_magnitude {
            q.push_str(&format!("&minmagnitude={m}"));
        }
        if let Some(u) = self.updated_after_ms {
            q.push_str(&format!(
                "&updatedafter={}&includedeleted=true",
                fdsn_time(u)
            ));
        }
        q
    }
}

fn checkpoint_path(data_dir: &Path, fingerprint: &str) -> PathBuf {
    // FNV-1a: a stable short name; the fingerprint itself is stored inside.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in fingerprint.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    data_dir
        .join("state")
        .join(format!("backfill-{hash:016x}.json"))
}

fn load_checkpoint(path: &Path, fingerprint: &str) -> Checkpoint {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok())
        .filter(|c| c.request == fingerprint)
        .unwrap_or_else(|| Checkpoint {
            request: fingerprint.to_string(),
            done: Vec::new(),
        })
}

fn save_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(checkpoint).unwrap_or_default();
    std::fs::write(&tmp, bytes).map_err(Error::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

/// The parts of [start, end) not covered by `done`.
fn remaining(start: i64, end: i64, done: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut done = done.to_vec();
    done.sort_unstable();
    let mut out = Vec::new();
    let mut at = start;
    for (s, e) in done {
        if e <= at || s >= end {
            continue;
        }
        if s > at {
            out.push((at, s.min(end)));
        }
        at = at.max(e);
        if at >= end {
            break;
        }
    }
    if at < end {
        out.push((at, end));
    }
    out
}

#[derive(Deserialize)]
struct CountAnswer {
    count: u64,
}

struct Run {
    config: BackfillConfig,
    request: Request,
    fetcher: Fetcher,
    publisher: Publisher,
    dedupe: Dedupe,
    checks: Checks,
    metrics: Arc<SourceMetrics>,
    report: Report,
}

/// Where a backfill writes and keeps its checkpoint.
#[derive(Clone)]
pub struct Target<'a> {
    pub settings: &'a KafkaSettings,
    pub dlq: &'a str,
    /// The checkpoint lives under `<data_dir>/state/`.
    pub data_dir: &'a Path,
    pub metrics: Arc<SourceMetrics>,
    /// What is refused as implausible (`[checks]`).
    pub checks: Checks,
}

/// Runs a backfill. `progress` is called after each window with the report so far and the
/// fraction of the time range finished.
pub async fn run(
    config: &BackfillConfig,
    request: Request,
    target: Target<'_>,
    shutdown: CancellationToken,
    mut progress: impl FnMut(&Report, f64),
) -> Result<Report> {
    let Target {
        settings,
        dlq,
        data_dir,
        metrics,
        checks,
    } = target;
    request.validate()?;
    let ctx = Context::new(settings, dlq, data_dir, shutdown.clone());
    let outlet = Outlet::open(
        &ctx,
        "backfill",
        &config.topic,
        &config.url,
        metrics.clone(),
    )
    .await?;

    let fingerprint = request.fingerprint(&config.url);
    let path = checkpoint_path(data_dir, &fingerprint);
    let mut checkpoint = load_checkpoint(&path, &fingerprint);

    let dedupe = rebuild(settings, outlet.topic(), &request).await?;
    let mut run = Run {
        fetcher: Fetcher::new(&config.url, &config.http).map_err(|e| Error::Config {
            origin: "backfill.url".into(),
            message: e.to_string(),
        })?,
        publisher: Publisher::new(outlet, Profile::Quakes),
        config: config.clone(),
        request: request.clone(),
        dedupe,
        checks,
        metrics,
        report: Report::default(),
    };

    let total = (request.end_ms - request.start_ms) as f64;
    let mut queue: VecDeque<(i64, i64)> =
        remaining(request.start_ms, request.end_ms, &checkpoint.done).into();
    let finished = |checkpoint: &Checkpoint| {
        checkpoint
            .done
            .iter()
            .map(|(s, e)| (e.min(&request.end_ms) - s.max(&request.start_ms)).max(0) as f64)
            .sum::<f64>()
            / total
    };
    progress(&run.report, finished(&checkpoint));

    while let Some((start, end)) = queue.pop_front() {
        if shutdown.is_cancelled() {
            run.publisher.outlet().flush()?;
            return Ok(run.report);
        }
        let count = tokio::select! {
            () = shutdown.cancelled() => continue,
            count = run.count(start, end) => count?,
        };
        if count > run.config.limit && end - start > 1_000 {
            let mid = start + (end - start) / 2 / 1_000 * 1_000;
            let mid = if mid <= start { start + 1_000 } else { mid };
            queue.push_front((mid, end));
            queue.push_front((start, mid));
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => continue,
            done = run.window(start, end, count) => done?,
        }
        run.report.windows += 1;
        checkpoint.done.push((start, end));
        save_checkpoint(&path, &checkpoint)?;
        progress(&run.report, finished(&checkpoint));
    }
    run.publisher.outlet().flush()?;
    run.report.complete = true;
    Ok(run.report)
}

/// Reads back what the topic holds for the requested time range.
async fn rebuild(settings: &KafkaSettings, topic: &str, request: &Request) -> Result<Dedupe> {
    let settings = settings.clone();
    let topic = topic.to_string();
    let (start, end) = (request.start_ms, request.end_ms);
    let published = tokio::task::spawn_blocking(move || {
        let mut published = Vec::new();
        reader::scan(&settings, &topic, |message| {
            if let Some(p) = published_of(message)
                && p.revision.time_ms >= start
                && p.revision.time_ms < end
            {
                published.push(p);
            }
        })?;
        Ok::<_, Error>(published)
    })
    .await
    .map_err(|e| Error::Broker(format!("rebuild task failed: {e}")))??;
    let mut dedupe = Dedupe::new();
    dedupe.rebuild(published);
    Ok(dedupe)
}

impl Run {
    /// GETs a URL, retrying failures with backoff.
    async fn get(&mut self, url: &str) -> Result<Vec<u8>> {
        let mut backoff = Backoff::new(
            self.config.http.backoff_initial,
            self.config.http.backoff_max,
        );
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.metrics.polls.inc();
            let error = match self.fetcher.get(url, false).await {
                Ok(Fetched::Body(body)) => return Ok(body),
                Ok(Fetched::NotModified) => FetchError::Status {
                    status: 304,
                    retry_after: None,
                },
                Err(e) => e,
            };
            self.metrics.error(error.kind());
            // A 400 is the service refusing the query itself: retrying cannot help.
            let final_error = matches!(
                error,
                FetchError::Status {
                    status: 400..=499,
                    ..
                }
            ) && !matches!(error, FetchError::Status { status: 429, .. });
            if final_error || attempt >= self.config.attempts {
                return Err(Error::Broker(format!("FDSN request {url} failed: {error}")));
            }
            let wait = backoff.next(error.retry_after());
            tracing::warn!(url, error = %error, attempt, "FDSN request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn count(&mut self, start: i64, end: i64) -> Result<u64> {
        let url = format!(
            "{}/count?{}",
            self.config.url,
            self.request.params(start, end)
        );
        let body = self.get(&url).await?;
        serde_json::from_slice::<CountAnswer>(&body)
            .map(|a| a.count)
            .map_err(|e| {
                Error::Broker(format!(
                    "FDSN count answer from {url} is not {{\"count\": N}}: {e}"
                ))
            })
    }

    /// Fetches every event of one window (paged when it holds more than the limit).
    async fn window(&mut self, start: i64, end: i64, count: u64) -> Result<()> {
        let mut offset = 1;
        loop {
            let mut url = format!(
                "{}/query?{}&orderby=time-asc",
                self.config.url,
                self.request.params(start, end)
            );
            let paged = count > self.config.limit;
            if paged {
                url.push_str(&format!("&limit={}&offset={offset}", self.config.limit));
            }
            let body = self.get(&url).await?;
            let parsed = geojson::parse_collection(&body, "usgs", &self.checks)
                .map_err(|e| Error::Broker(format!("FDSN answer from {url}: {e}")))?;
            let returned = parsed.quakes.len() + parsed.rejected.len();
            self.publish(parsed, &url).await?;
            if !paged || returned == 0 || (offset - 1 + returned as u64) >= count {
                return Ok(());
            }
            offset += returned as u64;
        }
    }

    async fn publish(&mut self, parsed: geojson::Parsed, url: &str) -> Result<()> {
        for rejected in &parsed.rejected {
            self.publisher
                .outlet()
                .dead_letter_from(url, None, &rejected.reason, rejected.raw.as_bytes())
                .await?;
        }
        self.report.events += parsed.quakes.len() as u64;
        let plan = publish::plan(&mut self.dedupe, parsed.quakes, parsed.metadata.generated);
        self.report.duplicates += plan.duplicates;
        self.metrics.duplicates.add(plan.duplicates);
        self.publisher.publish(&plan.outgoing).await?;
        self.report.published += plan.outgoing.len() as u64;
        Ok(())
    }
}

/// A human description of a time, for progress output.
pub fn describe(ms: i64) -> String {
    format_millis(ms).unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_forms_people_type() {
        assert_eq!(parse_time("2024-01-15").unwrap(), 1_705_276_800_000);
        assert_eq!(
            parse_time("2024-01-15T00:00:01").unwrap(),
            1_705_276_801_000
        );
        assert_eq!(
            parse_time("2024-01-15T00:00:01Z").unwrap(),
            1_705_276_801_000
        );
        assert_eq!(
            parse_time("2024-01-15T01:00:01+01:00").unwrap(),
            1_705_276_801_000
        );
        assert!(
            parse_time("last tuesday")
                .unwrap_err()
                .contains("2024-01-15")
        );
        assert_eq!(fdsn_time(1_705_276_801_234), "2024-01-15T00:00:01.234");
    }

    #[test]
    fn remaining_ranges_skip_what_is_done() {
        assert_eq!(remaining(0, 100, &[]), [(0, 100)]);
        assert_eq!(remaining(0, 100, &[(0, 100)]), []);
        assert_eq!(
            remaining(0, 100, &[(50, 75), (0, 10)]),
            [(10, 50), (75, 100)]
        );
        assert_eq!(remaining(0, 100, &[(90, 200), (-5, 5)]), [(5, 90)]);
    }

    #[test]
    fn windows_do_not_overlap_at_their_edges() {
        let r = Request {
            start_ms: 0,
            end_ms: 10_000,
            min_magnitude: Some(2.5),
            updated_after_ms: Some(5_000),
        };
        let q = r.params(0, 2_000);
        assert!(q.contains("starttime=1970-01-01T00:00:00.000"), "{q}");
        assert!(q.contains("endtime=1970-01-01T00:00:01.999"), "{q}");
        assert!(q.contains("minmagnitude=2.5"), "{q}");
        assert!(
            q.contains("updatedafter=1970-01-01T00:00:05.000&includedeleted=true"),
            "{q}"
        );
    }

    #[test]
    fn checkpoints_survive_and_belong_to_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = checkpoint_path(dir.path(), "a");
        let mut c = load_checkpoint(&path, "a");
        c.done.push((1, 2));
        save_checkpoint(&path, &c).unwrap();
        assert_eq!(load_checkpoint(&path, "a").done, [(1, 2)]);
        assert_ne!(checkpoint_path(dir.path(), "b"), path);
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(
            load_checkpoint(&path, "a").done.is_empty(),
            "a damaged checkpoint restarts"
        );
    }
}
