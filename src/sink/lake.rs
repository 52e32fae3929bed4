//! The lake sinks, `files` (a local directory) and `object-store` (S3, GCS, Azure, …): topics
//! landed as JSON Lines, CSV or Parquet files in Hive-style partitions.
//!
//! Exactly-once output. The records of one Kafka partition since its last commit form a
//! *segment*: one open file per partition directory, written under a temporary name. When the
//! segment rolls (records, bytes or age) every file of it is finished, synced and renamed (or
//! uploaded) to `<topic>/<dir>/<topic>-<partition>-<first offset>.<ext>`, and only then is the
//! partition's offset committed. A crash before the commit replays the segment from the last
//! commit: each directory's first record is the same record again, so each file gets the same
//! name and the new file replaces the old one, whatever the roll point. Files of earlier
//! segments hold only offsets before the commit and are never touched again.
//!
//! - [`config`]: `[files]` and `[object_store]`; [`partition`]: the Hive-style directories;
//!   [`template`]: object names from fields.
//! - [`encode`]: one lake file being written; [`schema`]: typed columns and reading a JSON
//!   record into them.

pub mod config;
pub mod encode;
pub mod partition;
pub mod schema;
pub mod template;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, path::Path as Key};

pub use self::config::LakeConfig;
use self::encode::{FileEncoder, FileSchema};
use self::partition::Partitioner;
use self::schema::parse_time;
use self::template::Template;
use crate::error::{Error, Result};
use crate::metrics::{Counter, Observe, Samples};
use crate::runtime::{
    About, Context, Kind, StageSettings,
    consume::{self, Handler, Outcome, Record, Session},
};

#[derive(Debug, Default)]
pub struct LakeMetrics {
    /// `files` or `object-store`: the `sink` label at `/metrics`.
    pub sink: &'static str,
    pub records: Counter,
    pub bad: Counter,
    pub files: Counter,
    pub objects: Counter,
    pub commits: Counter,
}

impl LakeMetrics {
    pub fn new(sink: &'static str) -> LakeMetrics {
        LakeMetrics {
            sink,
            ..LakeMetrics::default()
        }
    }
}

impl Observe for LakeMetrics {
    fn observe(&self, out: &mut Samples) {
        let l: &[(&str, &str)] = &[("sink", self.sink)];
        for (name, help, c) in [
            (
                "quakestream_lake_records_total",
                "Records written to lake files.",
                &self.records,
            ),
            (
                "quakestream_lake_bad_records_total",
                "Records dead-lettered by the lake sink.",
                &self.bad,
            ),
            (
                "quakestream_lake_files_total",
                "Lake files published (renamed into place or uploaded).",
                &self.files,
            ),
            (
                "quakestream_lake_objects_total",
                "Objects written one per record.",
                &self.objects,
            ),
            (
                "quakestream_lake_commits_total",
                "Offset commits after published files.",
                &self.commits,
            ),
        ] {
            out.counter(name, help, l, c.get());
        }
    }
}

/// Where finished files go.
pub enum Store {
    /// A local directory: files are renamed into place.
    Local { root: PathBuf },
    /// Object storage: files are uploaded (multipart when large) from a local staging area.
    Object {
        store: Arc<dyn ObjectStore>,
        prefix: Key,
        url: String,
    },
}

/// Files up to this size are uploaded in one request; larger ones in parts of this size.
const PART_SIZE: usize = 8 * 1024 * 1024;

impl Store {
    /// Opens the store and checks that it can be listed (a missing bucket is an error here, not
    /// at the first upload).
    pub async fn open(config: &LakeConfig, object: bool, data_dir: &Path) -> Result<Store> {
        if !object {
            let root = data_dir.join(&config.location);
            std::fs::create_dir_all(&root).map_err(Error::io(&root))?;
            return Ok(Store::Local { root });
        }
        let fail = |message: String| Error::Sink {
            sink: "object-store",
            message,
        };
        let url = url::Url::parse(&config.location)
            .map_err(|e| fail(format!("location {:?} is not a URL: {e}", config.location)))?;
        let (store, prefix): (Arc<dyn ObjectStore>, Key) = match url.scheme() {
            "s3" | "s3a" => {
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
                if let Some(endpoint) = &config.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let store = builder.build().map_err(|e| fail(e.to_string()))?;
                (
                    Arc::new(store),
                    Key::from(url.path().trim_start_matches('/')),
                )
            }
            _ => {
                let (store, prefix) = object_store::parse_url_opts(&url, std::env::vars())
                    .map_err(|e| fail(format!("{}: {e}", config.location)))?;
                (Arc::from(store), prefix)
            }
        };
        store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| fail(format!("cannot list {}: {}", config.location, one_line(&e))))?;
        Ok(Store::Object {
            store,
            prefix,
            url: config.location.clone(),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Local { root } => root.display().to_string(),
            Store::Object { url, .. } => url.clone(),
        }
    }

    /// Where a partition's files are written before they are finished.
    fn staging(&self, data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
        match self {
            Store::Local { root } => root.join(topic).join("_tmp").join(format!("p{partition}")),
            Store::Object { .. } => data_dir
                .join("tmp")
                .join("object-store")
                .join(topic)
                .join(format!("p{partition}")),
        }
    }

    /// Moves a finished file to its name `name` (relative to the lake root).
    async fn publish(&self, temp: &Path, name: &str) -> Result<()> {
        match self {
            Store::Local { root } => {
                let target = root.join(name);
                let dir = target.parent().expect("names have a directory");
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
                std::fs::rename(temp, &target).map_err(Error::io(&target))?;
                // The rename itself must be durable before the offset is committed.
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io(dir))
            }
            Store::Object { store, prefix, url } => {
                let key = Key::from_iter(prefix.parts().chain(Key::from(name).parts()));
                let fail = |e: object_store::Error| Error::Sink {
                    sink: "object-store",
                    message: format!("uploading {url}/{name}: {}", one_line(&e)),
                };
                let size = std::fs::metadata(temp).map_err(Error::io(temp))?.len() as usize;
                if size <= PART_SIZE {
                    let body = tokio::fs::read(temp).await.map_err(Error::io(temp))?;
                    store
                        .put(&key, PutPayload::from(body))
                        .await
                        .map_err(fail)?;
                } else {
                    use tokio::io::AsyncReadExt;
                    let upload = store.put_multipart(&key).await.map_err(fail)?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                    let mut file = tokio::fs::File::open(temp).await.map_err(Error::io(temp))?;
                    let mut chunk = vec![0; PART_SIZE];
                    loop {
                        let n = file.read(&mut chunk).await.map_err(Error::io(temp))?;
                        if n == 0 {
                            break;
                        }
                        writer.wait_for_capacity(4).await.map_err(fail)?;
                        writer.write(&chunk[..n]);
                    }
                    writer.finish().await.map_err(fail)?;
                }
                std::fs::remove_file(temp).map_err(Error::io(temp))
            }
        }
    }

    /// Writes one record as one object (object-per-record mode).
    async fn put_object(&self, name: &str, body: Vec<u8>) -> Result<()> {
        match self {
            Store::Object { store, prefix, url } => {
                let key = Key::from_iter(prefix.parts().chain(Key::from(name).parts()));
                store
                    .put(&key, PutPayload::from(body))
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Sink {
                        sink: "object-store",
                        message: format!("writing {url}/{name}: {}", one_line(&e)),
                    })
            }
            Store::Local { root } => {
                let target = root.join(name);
                let dir = target.parent().expect("names have a directory");
                std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
                std::fs::write(&target, body).map_err(Error::io(&target))
            }
        }
    }
}

/// object_store errors carry the HTTP response over several lines; logs want one.
fn one_line(e: &object_store::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a lake sink needs besides its config: the columns per topic.
#[derive(Debug, Clone, Default)]
pub struct Schemas(pub HashMap<String, FileSchema>);

impl Schemas {
    fn of(&self, topic: &str) -> FileSchema {
        self.0.get(topic).cloned().unwrap_or(FileSchema::Infer)
    }
}

struct OpenFile {
    encoder: FileEncoder,
    first_offset: i64,
    /// The file name's extension: its format's, compression included.
    ext: &'static str,
}

/// One Kafka partition's segment: what was read since its last commit.
struct Segment {
    topic: String,
    partition: i32,
    staging: PathBuf,
    schema: FileSchema,
    /// The open files by partition directory: one per configured format, in their order.
    files: BTreeMap<String, Vec<OpenFile>>,
    objects: Vec<(String, Vec<u8>)>,
    first_offset: Option<i64>,
    next_offset: i64,
    records: u64,
    bytes: u64,
    opened: Instant,
}

impl Segment {
    fn new(topic: &str, partition: i32, staging: PathBuf, schema: FileSchema) -> Result<Segment> {
        // Whatever a crashed run left half-written for this partition is replayed anyway.
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(Error::io(&staging))?;
        }
        std::fs::create_dir_all(&staging).map_err(Error::io(&staging))?;
        Ok(Segment {
            topic: topic.to_string(),
            partition,
            staging,
            schema,
            files: BTreeMap::new(),
            objects: Vec::new(),
            first_offset: None,
            next_offset: 0,
            records: 0,
            bytes: 0,
            opened: Instant::now(),
        })
    }

    fn discard(self) {
        drop(self.files);
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// The lake's side of the consume loop. Offsets are released per partition when its segment's
/// files are in place (rolled by records, bytes or age, or at shutdown), never before.
impl Handler for Lake<'_> {
    async fn handle(&mut self, batch: &[Record], out: &mut Outcome) -> Result<()> {
        for record in batch {
            let key = (record.topic.clone(), record.partition);
            if self.take(&key, record, out)? {
                self.flush(&key, out).await?;
            }
        }
        Ok(())
    }

    async fn tick(&mut self, _session: &Session<'_>, out: &mut Outcome) -> Result<()> {
        let old: Vec<(String, i32)> = self
            .segments
            .iter()
            .filter(|(_, s)| s.first_offset.is_some() && s.opened.elapsed() >= self.config.roll_age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in old {
            self.flush(&key, out).await?;
        }
        Ok(())
    }

    fn revoked(&mut self, partitions: &[(String, i32)]) {
        for key in partitions {
            if let Some(segment) = self.segments.remove(key) {
                tracing::debug!(topic = %segment.topic, partition = segment.partition,
                    "partition revoked: its open files are dropped, the next owner rewrites them");
                segment.discard();
            }
        }
    }

    /// Shutdown: everything read is finished and released.
    async fn drain(&mut self, out: &mut Outcome) -> Result<()> {
        let keys: Vec<(String, i32)> = self.segments.keys().cloned().collect();
        for key in keys {
            self.flush(&key, out).await?;
        }
        Ok(())
    }
}

struct Lake<'a> {
    name: &'static str,
    config: &'a LakeConfig,
    store: Store,
    schemas: Schemas,
    template: Option<Template>,
    partitioner: Partitioner,
    data_dir: PathBuf,
    segments: HashMap<(String, i32), Segment>,
    metrics: Arc<LakeMetrics>,
}

impl Lake<'_> {
    /// Adds one record to its partition's segment (or refuses it, to the dead-letter topic).
    /// Returns whether the segment should roll.
    fn take(&mut self, key: &(String, i32), record: &Record, out: &mut Outcome) -> Result<bool> {
        let (offset, timestamp, payload) = (record.offset, record.timestamp, &record.payload[..]);
        if !self.segments.contains_key(key) {
            let staging = self.store.staging(&self.data_dir, &key.0, key.1);
            let segment = Segment::new(&key.0, key.1, staging, self.schemas.of(&key.0))?;
            self.segments.insert(key.clone(), segment);
        }
        let segment = self.segments.get_mut(key).expect("just inserted");
        self.metrics.records.inc();
        let outcome = match &self.template {
            Some(template) => serde_json::from_slice::<serde_json::Value>(payload)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|v| template.render(&v))
                .map(|name| segment.objects.push((name, payload.to_vec()))),
            None if self.config.finals_only && !is_final(payload) => Ok(()),
            None => {
                let time = match &self.config.time_field {
                    None => timestamp,
                    Some(field) => event_time(payload, field),
                };
                let dir = self.partitioner.dir(time);
                if !segment.files.contains_key(dir) {
                    let mut open = Vec::new();
                    for format in self.config.format.iter() {
                        let compression = self
                            .config
                            .format
                            .compression(format, self.config.compression);
                        let ext = format.extension(compression);
                        let temp = segment.staging.join(format!("{offset:020}.{ext}.tmp"));
                        let encoder =
                            FileEncoder::create(&temp, format, compression, &segment.schema)?
                                .keep_raw_text(self.config.csv_raw_text);
                        open.push(OpenFile {
                            encoder,
                            first_offset: offset,
                            ext,
                        });
                    }
                    segment.files.insert(dir.to_string(), open);
                }
                let mut outcome = Ok(());
                for file in segment.files.get_mut(dir).expect("just inserted") {
                    // A record one format cannot hold (a CSV or Parquet column type it does
                    // not fit) is refused; the formats that could hold it keep it.
                    if let Err(reason) = file.encoder.push(payload)? {
                        outcome = Err(reason);
                    }
                }
                outcome
            }
        };
        if let Err(reason) = outcome {
            // Sent and acknowledged before the offset can be committed: never lost.
            self.metrics.bad.inc();
            out.refuse(record, reason);
        }
        segment.first_offset.get_or_insert(offset);
        if segment.records == 0 {
            segment.opened = Instant::now();
        }
        segment.next_offset = offset + 1;
        segment.records += 1;
        segment.bytes += payload.len() as u64;
        Ok(segment.records >= self.config.roll_records || segment.bytes >= self.config.roll_bytes)
    }

    /// Finishes and publishes the segment's files, then commits its offset.
    async fn flush(&mut self, key: &(String, i32), out: &mut Outcome) -> Result<()> {
        let Some(segment) = self.segments.get_mut(key) else {
            return Ok(());
        };
        if segment.first_offset.is_none() {
            return Ok(());
        }
        let (topic, partition) = (segment.topic.clone(), segment.partition);
        let mut files = 0;
        for (dir, open) in std::mem::take(&mut segment.files) {
            for file in open {
                if file.encoder.records() == 0 {
                    let temp = file.encoder.finish()?;
                    let _ = std::fs::remove_file(temp);
                    continue;
                }
                let temp = file.encoder.finish()?;
                let name = format!(
                    "{topic}/{dir}/{topic}-{partition}-{:020}.{}",
                    file.first_offset, file.ext
                );
                retry(|| self.store.publish(&temp, &name)).await?;
                files += 1;
                crash_point();
            }
        }
        let objects = std::mem::take(&mut segment.objects);
        let count = objects.len();
        let store = &self.store;
        let at_root = self.config.object_at_root;
        futures::stream::iter(objects)
            .map(|(name, body)| {
                let name = if at_root {
                    name
                } else {
                    format!("{topic}/{name}")
                };
                async move { retry(|| store.put_object(&name, body.clone())).await }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        self.metrics.files.add(files);
        self.metrics.objects.add(count as u64);

        let next = segment.next_offset;
        let records = segment.records;
        segment.first_offset = None;
        segment.records = 0;
        segment.bytes = 0;
        out.release(&topic, partition, next);
        self.metrics.commits.inc();
        tracing::debug!(sink = self.name, %topic, partition, files, objects = count, records,
            next_offset = next, "segment written");
        Ok(())
    }
}

/// Whether a record is a final result, or no window result at all (no `final` field): what a
/// `finals_only` sink writes. A window update (`"final": false`) is not.
fn is_final(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Flag {
        #[serde(rename = "final")]
        is_final: Option<bool>,
    }
    serde_json::from_slice::<Flag>(payload).map_or(true, |flag| flag.is_final != Some(false))
}

/// Retries a store write a few times with growing pauses; a store down for longer fails the
/// sink (nothing is committed, so nothing is lost).
async fn retry<F, Fut>(mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut pause = Duration::from_millis(500);
    for _ in 0..5 {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(e @ (Error::Sink { .. } | Error::Io { .. })) => {
                tracing::warn!(error = %e, "write failed; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(e),
        }
    }
    attempt().await
}

/// The crash tests' way to die at the worst moment: with `QS_TEST_CRASH_AFTER_FILES=N` set,
/// the process aborts right after publishing its N-th file, before the segment is committed.
fn crash_point() {
    static PUBLISHED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let limit = LIMIT.get_or_init(|| {
        std::env::var("QS_TEST_CRASH_AFTER_FILES")
            .ok()
            .and_then(|v| v.parse().ok())
    });
    if let Some(limit) = limit
        && PUBLISHED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 >= *limit
    {
        eprintln!("QS_TEST_CRASH_AFTER_FILES={limit}: aborting between publish and commit");
        std::process::abort();
    }
}

/// A record's event time from a named field: RFC 3339 text or epoch milliseconds.
fn event_time(payload: &[u8], field: &str) -> Option<i64> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    match value.get(field)? {
        serde_json::Value::String(s) => parse_time(s),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// A lake sink's settings: `[files]`, or `[object_store]` with `object`, and the columns of
/// its topics.
#[derive(Debug, Clone)]
pub struct LakeSettings {
    pub config: LakeConfig,
    pub object: bool,
    pub schemas: Schemas,
}

impl StageSettings for LakeSettings {
    type Counters = LakeMetrics;

    fn counters(&self) -> LakeMetrics {
        LakeMetrics::new(self.name())
    }

    fn about(&self, data_dir: &Path) -> About {
        let c = &self.config;
        let location = if self.object {
            c.location.clone()
        } else {
            data_dir.join(&c.location).display().to_string()
        };
        let what = match &c.object_per_record {
            Some(template) => format!("one object per record ({template})"),
            None => {
                let formats: Vec<String> = c.format.iter().map(|f| format!("{f:?}")).collect();
                let finals = if c.finals_only {
                    ", final windows only"
                } else {
                    ""
                };
                format!(
                    "{} {}{finals}",
                    formats.join(" + "),
                    c.partition_by.replace('%', "")
                )
                .to_lowercase()
            }
        };
        About {
            name: self.name().into(),
            kind: Kind::Sink,
            reads: c.topics.clone(),
            writes: Vec::new(),
            line: format!("{} -> {location} ({what})", c.topics.join(", ")),
        }
    }

    fn check(&self) -> Result<()> {
        let section = if self.object {
            "[object_store]"
        } else {
            "[files]"
        };
        self.config
            .validate(self.object)
            .map_err(Error::config(section))
    }

    /// Runs a lake sink until `ctx.shutdown`, then finishes and commits what it holds.
    async fn run(&self, ctx: &Context, metrics: Arc<LakeMetrics>) -> Result<()> {
        let (config, object, schemas) = (&self.config, self.object, self.schemas.clone());
        let name = if object { "object-store" } else { "files" };
        let section = if object { "[object_store]" } else { "[files]" };
        let invalid = || Error::config(section);
        config.validate(object).map_err(invalid())?;
        let store = Store::open(config, object, &ctx.data_dir).await?;
        let template = config
            .object_per_record
            .as_deref()
            .map(Template::parse)
            .transpose()
            .map_err(invalid())?;
        let mut sink = Lake {
            name,
            config,
            store,
            schemas,
            template,
            partitioner: Partitioner::new(&config.partition_by).map_err(invalid())?,
            data_dir: ctx.data_dir.clone(),
            segments: HashMap::new(),
            metrics,
        };
        tracing::info!(sink = name, to = %sink.store.describe(), format = ?config.format,
            topics = ?config.topics, "lake sink started");
        let spec = consume::Spec::new(
            name,
            &config.group_id,
            config.instance_id.as_deref(),
            config.topics.clone(),
        )
        .tick(Duration::from_millis(250).min(config.roll_age));
        let result = consume::run(ctx, &spec, &mut sink).await;
        if result.is_err() {
            for (_, segment) in sink.segments.drain() {
                segment.discard();
            }
        }
        result
    }
}

impl LakeSettings {
    fn name(&self) -> &'static str {
        if self.object { "object-store" } else { "files" }
    }
}
