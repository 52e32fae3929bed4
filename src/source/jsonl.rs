//! The `jsonl` source: a JSON Lines file (or standard input) to a topic, one message per line,
//! keyed by a field of the line's object.
//!
//! Delivery semantics: exactly once per (key, version) across restarts. Every message carries
//! its key and version in the `qs-record` header ([`H_RECORD`], `key\u{1f}version` as the `http`
//! source writes it; the version is empty when `version` is unset); at start the source reads
//! the headers back from the topic and skips the lines already there, so a restart, a `kill -9`
//! or a second run over the same file publishes only what is missing. A line whose (key,
//! version) is in the topic or earlier in the file is skipped and counted as a duplicate.
//! Sends are pipelined (a bounded window awaiting acknowledgements), and the producer is
//! idempotent; a failed send fails the run, and the next run's read-back decides again.
//! Lines that cannot be published — not UTF-8, not JSON, not an object, no key, longer than
//! `max_line_bytes`, too large for the cluster — go to the dead-letter topic with their line
//! number, at least once: a restart dead-letters them again. Blank lines are skipped.
//!
//! With `follow = true` the source keeps reading what is appended to the file, like `tail -f`
//! (every 500 ms), until shutdown; an unterminated last line waits for its newline. A file that
//! shrinks is read again from its start (the read-back makes that harmless); a file renamed
//! away is not followed to its successor. Standard input (`file = "-"`) is read until it closes.
//! It cannot be read twice: after a failed run the next one goes on with the rest of the input,
//! and lines whose sends failed are not read again — use a file for exactly once across
//! failures.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::Duration;

use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::sync::CancellationToken;

use super::SourceSettings;
use super::outlet::{H_RECORD, Outlet};
use crate::error::{Error, Result};
use crate::fields::lookup;
use crate::kafka::TopicName;
use crate::metrics::SourceMetrics;
use crate::runtime::{About, Context};

/// How often a followed file is checked for new lines.
const POLL: Duration = Duration::from_millis(500);
/// Bytes read at a time.
const CHUNK: usize = 64 * 1024;
/// The most of a line a dead letter carries (a line may be up to `max_line_bytes`).
const PREVIEW: usize = 16 * 1024;
/// Sends awaiting their acknowledgement, at most: by count, and by payload bytes.
const MAX_IN_FLIGHT: usize = 1000;
const MAX_IN_FLIGHT_BYTES: usize = 16 * 1024 * 1024;
const BOM: &[u8] = b"\xef\xbb\xbf";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JsonlConfig {
    /// Whether `up` runs this source.
    pub enabled: bool,
    /// The JSON Lines file to read, one JSON object per line; `-` reads standard input.
    pub file: PathBuf,
    /// Topic to write.
    pub topic: String,
    /// The field whose value (a text or a number) is the Kafka key: a name, or a dotted path
    /// into the object (`user.id`, `items.0.sku`). Required. Each key is published once, or
    /// once per version when `version` is set.
    pub key: String,
    /// A field (name or dotted path) whose value, with the key, identifies one version of a
    /// record (`updated`, `rev`): each (key, version) pair is published once. Unset: each key
    /// once, and a later line with the same key is a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// A field (name or dotted path) holding the event time, RFC 3339 (`2024-01-30T16:19:44Z`)
    /// or epoch milliseconds (`1706631584000`), used as the Kafka timestamp. Unset: the time
    /// of publication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Keep reading lines appended to the file after its end, like `tail -f` (checked every
    /// 500 ms), until Ctrl+C. Off: stop at the end of the file.
    pub follow: bool,
    /// A longer line (its newline excluded) goes to the dead-letter topic.
    pub max_line_bytes: usize,
}

impl Default for JsonlConfig {
    fn default() -> Self {
        JsonlConfig {
            enabled: false,
            file: PathBuf::new(),
            topic: "jsonl".into(),
            key: String::new(),
            version: None,
            time: None,
            follow: false,
            max_line_bytes: 1024 * 1024,
        }
    }
}

impl JsonlConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.file.as_os_str().is_empty() {
            return Err(
                "[jsonl]: file is empty: name a JSON Lines file, or \"-\" for standard input"
                    .into(),
            );
        }
        if self.key.trim().is_empty() {
            return Err(
                "[jsonl]: key is empty: name the field that identifies a record \
                        (a name, or a dotted path like \"user.id\")"
                    .into(),
            );
        }
        for (name, field) in [("version", &self.version), ("time", &self.time)] {
            if field.as_deref().is_some_and(|f| f.trim().is_empty()) {
                return Err(format!(
                    "[jsonl]: {name} is empty: name a field, or leave {name} out"
                ));
            }
        }
        if self.follow && self.is_stdin() {
            return Err(
                "[jsonl]: follow = true needs a file: standard input (file = \"-\") \
                        is read until it closes anyway"
                    .into(),
            );
        }
        if self.max_line_bytes < 2 {
            return Err(
                "[jsonl]: max_line_bytes must be at least 2 (the shortest object, {})".into(),
            );
        }
        self.topic
            .parse::<TopicName>()
            .map_err(|e| format!("[jsonl]: {e}"))?;
        Ok(())
    }

    fn is_stdin(&self) -> bool {
        self.file.as_os_str() == "-"
    }

    /// The input, as the banner, logs and dead letters name it.
    fn origin(&self) -> String {
        if self.is_stdin() {
            "standard input".into()
        } else {
            self.file.display().to_string()
        }
    }
}

/// One line of input, numbered from 1. `bytes` is the line without its end (`\n`, `\r\n`),
/// or only its start when it is longer than `max_line_bytes`; `len` is its whole length.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub number: u64,
    pub bytes: Vec<u8>,
    pub len: u64,
}

/// Cuts a byte stream, fed in chunks of any size, into [`Line`]s. A UTF-8 byte-order mark at
/// the start of the input is dropped.
#[derive(Debug)]
pub struct Lines {
    max: usize,
    current: Vec<u8>,
    len: u64,
    number: u64,
    ready: VecDeque<Line>,
}

impl Lines {
    pub fn new(max_line_bytes: usize) -> Lines {
        Lines {
            max: max_line_bytes,
            current: Vec::new(),
            len: 0,
            number: 0,
            ready: VecDeque::new(),
        }
    }

    pub fn push(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            self.append(&chunk[..end]);
            self.end_line();
            chunk = &chunk[end + 1..];
        }
        self.append(chunk);
    }

    /// The end of the input: an unterminated last line is a line too.
    pub fn finish(&mut self) {
        if self.len > 0 {
            self.end_line();
        }
    }

    /// The oldest line not yet [`Lines::pop`]ped.
    pub fn front(&self) -> Option<&Line> {
        self.ready.front()
    }

    pub fn pop(&mut self) -> Option<Line> {
        self.ready.pop_front()
    }

    fn append(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        // One byte over the limit is kept, so that a `\r` ending a line of exactly `max`
        // bytes can still be dropped.
        let room = self
            .max
            .saturating_add(1)
            .saturating_sub(self.current.len());
        self.current
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn end_line(&mut self) {
        let mut bytes = std::mem::take(&mut self.current);
        let mut len = std::mem::take(&mut self.len);
        if self.number == 0 && bytes.starts_with(BOM) {
            bytes.drain(..BOM.len());
            len -= BOM.len() as u64;
        }
        if len == bytes.len() as u64 && bytes.last() == Some(&b'\r') {
            bytes.pop();
            len -= 1;
        }
        if len > self.max as u64 {
            bytes.truncate(PREVIEW);
            bytes.shrink_to_fit();
        }
        self.number += 1;
        self.ready.push_back(Line {
            number: self.number,
            bytes,
            len,
        });
    }
}

/// A line ready to publish: its key, version and event time, and the line itself (its
/// object, unchanged) as the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<'l> {
    pub key: String,
    pub version: Option<String>,
    pub time_ms: Option<i64>,
    pub payload: &'l str,
}

impl Record<'_> {
    /// The [`H_RECORD`] header: `key\u{1f}version`, the version empty when unset (as the
    /// `http` source writes it, so neither a key nor a version can pass for the other).
    pub fn id(&self) -> String {
        format!(
            "{}\u{1f}{}",
            self.key,
            self.version.as_deref().unwrap_or("")
        )
    }
}

/// What a line holds: a record, nothing (a blank line), or the reason it cannot be published,
/// naming the line (`line 7: no key field user.id`).
pub fn parse_line<'l>(
    line: &'l Line,
    config: &JsonlConfig,
) -> std::result::Result<Option<Record<'l>>, String> {
    let n = line.number;
    if line.len > config.max_line_bytes as u64 {
        return Err(format!(
            "line {n}: {} bytes, longer than max_line_bytes ({})",
            line.len, config.max_line_bytes
        ));
    }
    let text = std::str::from_utf8(&line.bytes)
        .map_err(|e| format!("line {n}: not UTF-8 (at byte {})", e.valid_up_to() + 1))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("line {n}: {}", json_error(&e)))?;
    if !value.is_object() {
        return Err(format!("line {n}: {}, not a JSON object", kind(&value)));
    }
    let field = |name: &str, path: &str| -> std::result::Result<String, String> {
        let found =
            lookup(&value, path).ok_or_else(|| format!("line {n}: no {name} field {path}"))?;
        identity(found).map_err(|why| format!("line {n}: {name} field {path} {why}"))
    };
    let key = field("key", &config.key)?;
    let version = match &config.version {
        Some(path) => Some(field("version", path)?),
        None => None,
    };
    let time_ms = match &config.time {
        Some(path) => {
            let found =
                lookup(&value, path).ok_or_else(|| format!("line {n}: no time field {path}"))?;
            Some(time_ms(found).ok_or_else(|| {
                format!(
                    "line {n}: time field {path} is not RFC 3339 or epoch milliseconds \
                     from 1970 on: {}",
                    short(found)
                )
            })?)
        }
        None => None,
    };
    Ok(Some(Record {
        key,
        version,
        time_ms,
        payload: text.trim(),
    }))
}

/// A key or version as text: a non-empty string, or a number as JSON writes it.
fn identity(v: &Value) -> std::result::Result<String, &'static str> {
    match v {
        Value::String(s) if s.is_empty() => Err("is empty"),
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Err("is null"),
        _ => Err("is not a text or a number"),
    }
}

/// An event time as epoch milliseconds: RFC 3339 text, or epoch milliseconds (a whole number,
/// or its digits as text). Times before 1970 are refused: a Kafka timestamp cannot be negative.
pub fn time_ms(v: &Value) -> Option<i64> {
    let ms = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e18)
                .map(|f| f as i64)
        })?,
        Value::String(s) => crate::record::parse_millis(s).or_else(|| s.trim().parse().ok())?,
        _ => return None,
    };
    (ms >= 0 && chrono::DateTime::from_timestamp_millis(ms).is_some()).then_some(ms)
}

/// serde_json's message with its column, without its "line 1" (the line number is the file's).
fn json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let what = text
        .split_once(" at line ")
        .map_or(text.as_str(), |(what, _)| what);
    format!("not JSON: {what} at column {}", e.column())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
        Value::Object(_) => "an object",
    }
}

/// A value as JSON, cut to 60 characters.
fn short(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Where the bytes come from.
enum Input {
    /// A file, and how many bytes of it were read (to notice that it shrank).
    File { file: tokio::fs::File, read: u64 },
    /// Chunks of standard input, read by a thread of their own (see [`stdin`]).
    Stdin(tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>),
}

impl Input {
    /// Reads the next chunk into `lines`; `false` at the end of the input (for now, when a
    /// file is followed).
    async fn fill(&mut self, lines: &mut Lines, buf: &mut [u8], path: &Path) -> Result<bool> {
        match self {
            Input::File { file, read } => {
                let n = file.read(buf).await.map_err(Error::io(path))?;
                *read += n as u64;
                lines.push(&buf[..n]);
                Ok(n > 0)
            }
            Input::Stdin(chunks) => match chunks.recv().await {
                Some(Ok(chunk)) => {
                    lines.push(&chunk);
                    Ok(true)
                }
                Some(Err(e)) => Err(Error::io("standard input")(e)),
                None => Ok(false),
            },
        }
    }
}

/// Standard input and its lines not yet published, shared by the runs of the process.
struct Stdin {
    input: Input,
    lines: Lines,
}

/// Standard input cannot be read twice, nor by two readers: one thread reads it for the whole
/// process, and a run after a failure goes on where the failed one stopped.
fn stdin(max_line_bytes: usize) -> &'static tokio::sync::Mutex<Stdin> {
    static STDIN: OnceLock<tokio::sync::Mutex<Stdin>> = OnceLock::new();
    STDIN.get_or_init(|| {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        // A thread that cannot start drops `tx`: the input is then empty.
        let _ = std::thread::Builder::new()
            .name("jsonl-stdin".into())
            .spawn(move || {
                use std::io::Read;
                let mut input = std::io::stdin().lock();
                loop {
                    let mut chunk = vec![0; CHUNK];
                    match input.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            chunk.truncate(n);
                            if tx.blocking_send(Ok(chunk)).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            break;
                        }
                    }
                }
            });
        tokio::sync::Mutex::new(Stdin {
            input: Input::Stdin(rx),
            lines: Lines::new(max_line_bytes),
        })
    })
}

/// A message on its way, with what is needed if it cannot be delivered.
struct Sent {
    number: u64,
    id: String,
    time_ms: Option<i64>,
    payload: Vec<u8>,
}

type Sending = BoxFuture<'static, (Sent, Result<()>)>;

/// Publishes lines: dedupe, the send window, dead letters, counters.
struct Publisher<'c> {
    config: &'c JsonlConfig,
    outlet: Outlet,
    topic: Arc<str>,
    /// The [`H_RECORD`] of every record in the topic or on its way there.
    seen: HashSet<String>,
    in_flight: FuturesUnordered<Sending>,
    in_flight_bytes: usize,
    metrics: Arc<SourceMetrics>,
}

impl Publisher<'_> {
    async fn line(&mut self, line: &Line) -> Result<()> {
        let record = match parse_line(line, self.config) {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(()),
            Err(reason) => return self.dead_letter(reason, &line.bytes).await,
        };
        let id = record.id();
        if !self.seen.insert(id.clone()) {
            self.metrics.duplicates.inc();
            return Ok(());
        }
        let payload = record.payload.as_bytes().to_vec();
        let size = payload.len();
        while !self.in_flight.is_empty()
            && (self.in_flight.len() >= MAX_IN_FLIGHT
                || self.in_flight_bytes + size > MAX_IN_FLIGHT_BYTES)
        {
            self.settle_next().await?;
        }
        let sent = Sent {
            number: line.number,
            id,
            time_ms: record.time_ms,
            payload,
        };
        let (producer, topic, key) = (
            self.outlet.producer().clone(),
            self.topic.clone(),
            record.key,
        );
        let mut sending: Sending = Box::pin(async move {
            let result = producer
                .send_with_headers(
                    &topic,
                    Some(&key),
                    &sent.payload,
                    sent.time_ms,
                    &[(H_RECORD, sent.id.as_bytes())],
                )
                .await
                .map(|_| ());
            (sent, result)
        });
        // The first poll queues the message in the producer: messages are queued in file
        // order, so the versions of one key land in their partition in that order.
        match futures::poll!(&mut sending) {
            Poll::Ready((sent, result)) => self.settle(sent, result).await,
            Poll::Pending => {
                self.in_flight_bytes += size;
                self.in_flight.push(sending);
                Ok(())
            }
        }
    }

    async fn settle_next(&mut self) -> Result<()> {
        match self.in_flight.next().await {
            Some((sent, result)) => {
                self.in_flight_bytes -= sent.payload.len();
                self.settle(sent, result).await
            }
            None => Ok(()),
        }
    }

    /// Waits for every send on its way.
    async fn drain(&mut self) -> Result<()> {
        while !self.in_flight.is_empty() {
            self.settle_next().await?;
        }
        Ok(())
    }

    async fn settle(&mut self, sent: Sent, result: Result<()>) -> Result<()> {
        match result {
            Ok(()) => {
                self.outlet.published(sent.time_ms);
                Ok(())
            }
            // No retry can deliver it: a dead letter, not a failed run (and the same again
            // after each restart).
            Err(Error::Kafka { source, .. }) if too_large(&source) => {
                self.seen.remove(&sent.id);
                let reason = format!(
                    "line {}: {} bytes, more than the cluster takes in one message \
                     (message.max.bytes)",
                    sent.number,
                    sent.payload.len()
                );
                self.dead_letter(reason, &sent.payload).await
            }
            Err(e) => Err(e),
        }
    }

    async fn dead_letter(&mut self, reason: String, raw: &[u8]) -> Result<()> {
        // At least once: a restart dead-letters the same lines again.
        self.outlet
            .dead_letter(None, &reason, &raw[..raw.len().min(PREVIEW)])
            .await
    }
}

fn too_large(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
}

/// Reads `input` to its end (following it when configured) and publishes each line, until
/// `shutdown`. Leaves sends on their way; the caller drains them.
async fn pump(
    input: &mut Input,
    lines: &mut Lines,
    out: &mut Publisher<'_>,
    config: &JsonlConfig,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let mut ended = false;
    loop {
        while let Some(line) = lines.front() {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            out.line(line).await?;
            lines.pop();
        }
        if ended {
            return Ok(());
        }
        let more = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            more = input.fill(lines, &mut buf, &config.file) => more?,
        };
        if more {
            continue;
        }
        // The end of the input, for now.
        out.drain().await?;
        out.metrics.polls.inc();
        out.metrics.succeeded();
        let Input::File { file, read } = &mut *input else {
            lines.finish();
            ended = true;
            continue;
        };
        if !config.follow {
            lines.finish();
            ended = true;
            continue;
        }
        let size = file
            .metadata()
            .await
            .map_err(Error::io(&config.file))?
            .len();
        if size < *read {
            tracing::warn!(file = %config.file.display(), "jsonl: the file shrank; reading it again from its start");
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(Error::io(&config.file))?;
            *read = 0;
            *lines = Lines::new(config.max_line_bytes);
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Opens the file; one that is not there is a configuration error (it names the setting, and
/// stops the start when it is the first run).
async fn open(path: &Path) -> Result<tokio::fs::File> {
    tokio::fs::File::open(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Config {
                origin: "[jsonl]".into(),
                message: format!("file = {:?}: no such file", path.display().to_string()),
            }
        } else {
            Error::io(path)(e)
        }
    })
}

impl SourceSettings for JsonlConfig {
    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("config"))
    }

    fn about(&self) -> About {
        let key = match &self.version {
            Some(v) => format!("key {}, version {v}", self.key),
            None => format!("key {}", self.key),
        };
        let follow = if self.follow { ", followed" } else { "" };
        let line = format!(
            "{} (JSON Lines, {key}{follow}) -> topic {}",
            self.origin(),
            self.topic
        );
        About::source("jsonl", &self.topic, line)
    }

    /// Runs the source until the input is read to its end (with `follow`: until `shutdown`).
    async fn run(&self, ctx: &Context, metrics: Arc<SourceMetrics>) -> Result<()> {
        let config = self;
        let shutdown = ctx.shutdown.clone();
        config.validate().map_err(Error::config("config"))?;
        let file = if config.is_stdin() {
            None
        } else {
            Some(open(&config.file).await?)
        };
        let origin = config.origin();
        let outlet = Outlet::open(ctx, "jsonl", &config.topic, &origin, metrics.clone()).await?;
        let seen = outlet.published_records().await?;
        tracing::info!(input = %origin, topic = %config.topic, published_before = seen.len(), "jsonl source started");
        let mut out = Publisher {
            config,
            topic: Arc::from(outlet.topic()),
            outlet,
            seen,
            in_flight: FuturesUnordered::new(),
            in_flight_bytes: 0,
            metrics: metrics.clone(),
        };
        match file {
            Some(file) => {
                let mut input = Input::File { file, read: 0 };
                let mut lines = Lines::new(config.max_line_bytes);
                pump(&mut input, &mut lines, &mut out, config, &shutdown).await?;
            }
            None => {
                let mut shared = stdin(config.max_line_bytes).lock().await;
                let Stdin { input, lines } = &mut *shared;
                pump(input, lines, &mut out, config, &shutdown).await?;
            }
        }
        out.drain().await?;
        out.outlet.flush()?;
        tracing::info!(
            input = %origin,
            published = metrics.published.get(),
            duplicates = metrics.duplicates.get(),
            dead_letters = metrics.dead_letters.get(),
            "{}",
            if shutdown.is_cancelled() { "jsonl source stopped" } else { "jsonl: input read to its end" }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config() -> JsonlConfig {
        JsonlConfig {
            file: "events.jsonl".into(),
            key: "user.id".into(),
            ..Default::default()
        }
    }

    /// The lines of `input` fed in chunks of `size` bytes.
    fn lines(input: &[u8], size: usize, max: usize) -> Vec<Line> {
        let mut lines = Lines::new(max);
        for chunk in input.chunks(size) {
            lines.push(chunk);
        }
        lines.finish();
        std::iter::from_fn(|| lines.pop()).collect()
    }

    fn line(number: u64, text: &str) -> Line {
        Line {
            number,
            bytes: text.as_bytes().to_vec(),
            len: text.len() as u64,
        }
    }

    fn reason(text: &str, config: &JsonlConfig) -> String {
        parse_line(&line(7, text), config).unwrap_err()
    }

    #[test]
    fn settings() {
        assert_eq!(config().validate(), Ok(()));
        assert!(
            JsonlConfig::default()
                .validate()
                .unwrap_err()
                .starts_with("[jsonl]: file is empty")
        );
        let bad = |change: fn(&mut JsonlConfig)| {
            let mut c = config();
            change(&mut c);
            c.validate().unwrap_err()
        };
        assert!(bad(|c| c.key = " ".into()).starts_with("[jsonl]: key is empty"));
        assert!(bad(|c| c.version = Some(String::new())).starts_with("[jsonl]: version is empty"));
        assert!(bad(|c| c.topic = "no spaces".into()).starts_with("[jsonl]: invalid topic name"));
        let stdin_followed = bad(|c| {
            c.file = "-".into();
            c.follow = true;
        });
        assert!(stdin_followed.contains("follow = true needs a file"));
        assert!(bad(|c| c.max_line_bytes = 1).contains("max_line_bytes"));
        let parsed: JsonlConfig =
            toml::from_str("file = \"-\"\nkey = \"id\"\nversion = \"rev\"\n").unwrap();
        assert_eq!(parsed.topic, "jsonl");
        assert_eq!(parsed.max_line_bytes, 1024 * 1024);
        assert!(toml::from_str::<JsonlConfig>("keys = \"id\"\n").is_err());
    }

    #[test]
    fn a_record_with_its_key_version_and_time() {
        let c = JsonlConfig {
            version: Some("rev".into()),
            time: Some("at".into()),
            ..config()
        };
        let l = line(
            3,
            "  {\"user\":{\"id\":\"u1\"},\"rev\":2,\"at\":\"2024-01-30T16:19:44Z\"}\r",
        );
        let r = parse_line(&l, &c).unwrap().unwrap();
        assert_eq!(r.key, "u1");
        assert_eq!(r.version.as_deref(), Some("2"));
        assert_eq!(r.time_ms, Some(1_706_631_584_000));
        assert_eq!(r.id(), "u1\u{1f}2");
        assert!(r.payload.starts_with('{') && r.payload.ends_with('}'));
        // A number key, no version: the key alone.
        let l = line(4, r#"{"user":{"id":42}}"#);
        let r = parse_line(&l, &config()).unwrap().unwrap();
        assert_eq!((r.key.as_str(), r.id()), ("42", "42\u{1f}".to_string()));
        assert_eq!(parse_line(&line(5, " \t"), &config()), Ok(None));
        assert_eq!(parse_line(&line(5, ""), &config()), Ok(None));
    }

    #[test]
    fn times_are_rfc_3339_or_epoch_milliseconds() {
        assert_eq!(
            time_ms(&json!("2024-01-30T16:19:44Z")),
            Some(1_706_631_584_000)
        );
        assert_eq!(
            time_ms(&json!("2024-01-30T17:19:44.5+01:00")),
            Some(1_706_631_584_500)
        );
        assert_eq!(
            time_ms(&json!(1_706_631_584_000_i64)),
            Some(1_706_631_584_000)
        );
        assert_eq!(time_ms(&json!("1706631584000")), Some(1_706_631_584_000));
        assert_eq!(time_ms(&json!(1.706_631_584e12)), Some(1_706_631_584_000));
        assert_eq!(time_ms(&json!(0)), Some(0));
        assert_eq!(time_ms(&json!(-1)), None);
        assert_eq!(time_ms(&json!(1.5)), None);
        assert_eq!(time_ms(&json!(u64::MAX)), None);
        assert_eq!(time_ms(&json!(1e300)), None);
        assert_eq!(time_ms(&json!("2024-01-30")), None);
        assert_eq!(time_ms(&json!("yesterday")), None);
        assert_eq!(time_ms(&json!(null)), None);
        assert_eq!(time_ms(&json!({"t": 1})), None);
    }

    #[test]
    fn each_bad_line_has_its_reason_and_number() {
        let c = JsonlConfig {
            version: Some("rev".into()),
            time: Some("at".into()),
            max_line_bytes: 64,
            ..config()
        };
        let good = r#"{"user":{"id":"u"},"rev":1,"at":0}"#;
        assert!(parse_line(&line(1, good), &c).unwrap().is_some());
        assert_eq!(
            reason("not json", &c),
            "line 7: not JSON: expected ident at column 2"
        );
        assert!(
            reason(r#"{"user":{"id":"u"}} {"#, &c)
                .starts_with("line 7: not JSON: trailing characters"),
            "{}",
            reason(r#"{"user":{"id":"u"}} {"#, &c)
        );
        assert!(reason(r#"{"user":"#, &c).starts_with("line 7: not JSON: EOF while parsing"));
        assert_eq!(reason("[1,2]", &c), "line 7: an array, not a JSON object");
        assert_eq!(
            reason("\"text\"", &c),
            "line 7: a string, not a JSON object"
        );
        assert_eq!(reason("null", &c), "line 7: null, not a JSON object");
        assert_eq!(reason(r#"{"rev":1}"#, &c), "line 7: no key field user.id");
        assert_eq!(
            reason(r#"{"user":{"id":""},"rev":1}"#, &c),
            "line 7: key field user.id is empty"
        );
        assert_eq!(
            reason(r#"{"user":{"id":{}},"rev":1}"#, &c),
            "line 7: key field user.id is not a text or a number"
        );
        assert_eq!(
            reason(r#"{"user":{"id":"u"}}"#, &c),
            "line 7: no version field rev"
        );
        assert_eq!(
            reason(r#"{"user":{"id":"u"},"rev":1}"#, &c),
            "line 7: no time field at"
        );
        assert_eq!(
            reason(r#"{"user":{"id":"u"},"rev":1,"at":"soon"}"#, &c),
            "line 7: time field at is not RFC 3339 or epoch milliseconds from 1970 on: \"soon\""
        );
        let long = Line {
            number: 9,
            bytes: vec![b'x'; 10],
            len: 65,
        };
        assert_eq!(
            parse_line(&long, &c).unwrap_err(),
            "line 9: 65 bytes, longer than max_line_bytes (64)"
        );
        let latin1 = Line {
            number: 2,
            bytes: b"{\"user\":\"caf\xe9\"}".to_vec(),
            len: 15,
        };
        assert_eq!(
            parse_line(&latin1, &c).unwrap_err(),
            "line 2: not UTF-8 (at byte 13)"
        );
        // Deep nesting is an error, not a stack overflow.
        let deep = "[".repeat(10_000);
        let deep = Line {
            number: 1,
            len: deep.len() as u64,
            bytes: deep.into_bytes(),
        };
        let open = JsonlConfig {
            max_line_bytes: 1 << 20,
            ..c.clone()
        };
        assert!(
            parse_line(&deep, &open)
                .unwrap_err()
                .starts_with("line 1: not JSON")
        );
    }

    #[test]
    fn lines_in_any_chunks() {
        let input = b"\xef\xbb\xbf{\"a\":1}\r\n\n{\"b\":2}\n{\"c\":3}";
        for size in [1, 2, 3, 5, 64] {
            let out = lines(input, size, 100);
            let texts: Vec<(u64, &[u8], u64)> = out
                .iter()
                .map(|l| (l.number, l.bytes.as_slice(), l.len))
                .collect();
            assert_eq!(
                texts,
                [
                    (1, &b"{\"a\":1}"[..], 7),
                    (2, &b""[..], 0),
                    (3, &b"{\"b\":2}"[..], 7),
                    (4, &b"{\"c\":3}"[..], 7),
                ],
                "chunks of {size}"
            );
        }
        // No last line when the input ends with its newline.
        assert_eq!(lines(b"{}\n", 1, 10).len(), 1);
        assert!(lines(b"", 1, 10).is_empty());
    }

    #[test]
    fn a_long_line_keeps_its_length_and_only_its_start() {
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\n{}\r\n");
        let out = lines(&input, 4096, 1000);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len, 100_000);
        assert_eq!(out[0].bytes.len(), 1001);
        assert_eq!((out[1].number, out[1].bytes.as_slice()), (2, &b"{}"[..]));
        // A line of exactly the limit, ended by \r\n, is not too long.
        let out = lines(b"{\"k\":1}\r\n", 2, 7);
        assert_eq!(
            (out[0].len, out[0].bytes.as_slice()),
            (7, &b"{\"k\":1}"[..])
        );
        let c = JsonlConfig {
            key: "k".into(),
            max_line_bytes: 7,
            ..config()
        };
        assert!(parse_line(&out[0], &c).unwrap().is_some());
    }

    #[test]
    fn describe_names_the_input_key_and_topic() {
        use crate::runtime::Component;
        let s = super::super::Source::of(&JsonlConfig {
            file: "-".into(),
            key: "id".into(),
            ..Default::default()
        });
        assert_eq!(
            s.about().line,
            "standard input (JSON Lines, key id) -> topic jsonl"
        );
        let s = super::super::Source::of(&JsonlConfig {
            version: Some("rev".into()),
            follow: true,
            ..config()
        });
        assert_eq!(
            s.about().line,
            "events.jsonl (JSON Lines, key user.id, version rev, followed) -> topic jsonl"
        );
        assert_eq!(s.about().writes, ["jsonl"]);
    }
}
