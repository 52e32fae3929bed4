//! The `postgres` sink: quakes and window results in a warehouse star schema.
//!
//! Each batch of messages is written in one transaction: every revision into
//! `fact_earthquake_revision` (once: `ON CONFLICT DO NOTHING` on (event, updated)), the newest
//! into `fact_earthquake` (an upsert that only replaces a row with an older `updated`), window
//! results into `agg_window` (a later emission replaces an earlier one). Dimension rows are
//! added first, in their own transaction, as new values appear. Offsets are committed only after
//! the transaction commits, so a crash or an outage replays the batch and the guards make the
//! replay change nothing. While the database is down the sink retries with backoff, reading no
//! further and committing nothing. All SQL is parameterized: values travel as arrays, never as
//! text spliced into statements.
//!
//! Poison records are dead-lettered, never retried. A record PostgreSQL could never store is
//! refused when it is parsed: text holding a NUL character (SQLSTATE 22021), an event id or
//! dimension value longer than [`MAX_KEY_BYTES`] (a btree index entry holds about 2700 bytes:
//! SQLSTATE 54000). Whatever else the database refuses *as data* (SQLSTATE class 22, data
//! exception, or 54, program limit exceeded) makes the batch be written again one record at a
//! time: the records refused go to the dead-letter topic with the database's message, the rest
//! are written, and the offsets are committed as usual. Any other error (connection lost, server
//! down or restarting, a serialization failure) is retried as described above. Dead letters are
//! acknowledged before the offsets are committed, so a crash in between sends one again (at
//! least once), never loses one.

pub mod migrations;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Datelike, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, NoTls, Transaction, types::ToSql};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    metrics::{Counter, Observe, Samples},
    record::{Quake, parse_millis},
    runtime::{About, Context, Kind, StageSettings, consume},
};

/// `[postgres]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Run this sink under `up` once `url` is set.
    pub enabled: bool,
    /// Connection URL, `postgres://user@host:5432/db`. Put the password in `PGPASSWORD` (or
    /// `QUAKESTREAM_POSTGRES_URL`), not in a file; `quakestream config` hides it.
    pub url: String,
    /// The quakes topic: `Quake` records into the fact tables.
    pub quakes_topic: String,
    /// The window results topic into `agg_window` (empty: not loaded).
    pub windows_topic: String,
    /// Consumer group; its committed offsets say what is in the warehouse.
    pub group_id: String,
    /// This process's static member id in the group. Unset: derived from the host name and the
    /// data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// At most this many messages per transaction.
    pub batch_size: usize,
    /// The longest pause between retries while the database is unreachable.
    #[serde(with = "crate::config::duration")]
    pub max_backoff: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            enabled: true,
            url: String::new(),
            quakes_topic: "earthquakes".into(),
            windows_topic: "earthquake-stats".into(),
            group_id: "quakestream-postgres".into(),
            instance_id: None,
            batch_size: 2000,
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl PostgresConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.url.trim().is_empty() {
            return Err(
                "url is empty: set it to postgres://user@host:5432/database (password \
                        in PGPASSWORD)"
                    .into(),
            );
        }
        self.connect_config()?;
        if self.quakes_topic.is_empty() {
            return Err("quakes_topic is empty".into());
        }
        if self.batch_size == 0 {
            return Err("batch_size must be above zero".into());
        }
        Ok(())
    }

    fn connect_config(&self) -> std::result::Result<tokio_postgres::Config, String> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| format!("url is not a PostgreSQL connection URL: {e}"))?;
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        config.application_name("quakestream");
        config.connect_timeout(Duration::from_secs(10));
        Ok(config)
    }

    /// The URL with any password replaced, for logs and `quakestream config`.
    pub fn redacted_url(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

#[derive(Debug, Default)]
pub struct PostgresMetrics {
    pub records: Counter,
    pub bad: Counter,
    pub batches: Counter,
    pub revisions_inserted: Counter,
    pub events_upserted: Counter,
    pub windows_upserted: Counter,
    pub retries: Counter,
}

impl Observe for PostgresMetrics {
    fn observe(&self, out: &mut Samples) {
        for (name, help, c) in [
            (
                "quakestream_postgres_records_total",
                "Records read by the PostgreSQL sink.",
                &self.records,
            ),
            (
                "quakestream_postgres_bad_records_total",
                "Records dead-lettered by the PostgreSQL sink.",
                &self.bad,
            ),
            (
                "quakestream_postgres_batches_total",
                "Batches committed to the warehouse.",
                &self.batches,
            ),
            (
                "quakestream_postgres_revisions_inserted_total",
                "Rows inserted into fact_earthquake_revision.",
                &self.revisions_inserted,
            ),
            (
                "quakestream_postgres_events_upserted_total",
                "Rows inserted or updated in fact_earthquake.",
                &self.events_upserted,
            ),
            (
                "quakestream_postgres_windows_upserted_total",
                "Rows inserted or updated in agg_window.",
                &self.windows_upserted,
            ),
            (
                "quakestream_postgres_retries_total",
                "Batches retried after a database error.",
                &self.retries,
            ),
        ] {
            out.counter(name, help, &[], c.get());
        }
    }
}

/// The longest event id or dimension value (`net`, `mag_type`, `event_type`, the region) the
/// sink loads, in bytes. Each is the key of a btree index, and PostgreSQL refuses an index entry
/// above about 2700 bytes (SQLSTATE 54000) at every retry. 1024 leaves room under that cap (the
/// revisions' key holds `updated` too) and is far above any real id or code.
pub const MAX_KEY_BYTES: usize = 1024;

/// Where a row came from: the consumed record, which a dead letter carries.
type Origin = consume::Record;

/// One quake revision ready to load.
#[derive(Debug, Clone)]
struct Row {
    quake: Quake,
    time: DateTime<Utc>,
    updated: DateTime<Utc>,
    region: Option<String>,
    origin: Origin,
}

/// One window result, as parsed.
#[derive(Debug, Clone)]
struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    group_key: String,
    count: Option<i64>,
    aggregates: serde_json::Value,
    is_final: bool,
    emitted_at: DateTime<Utc>,
}

/// One window result ready to load; `agg_window.topic` is the topic it was read from.
#[derive(Debug, Clone)]
struct WindowRow {
    window: Window,
    origin: Origin,
}

/// The region of a USGS `place`: what follows the last comma (`"10 km SSW of Tres Pinos, CA"` →
/// `"CA"`), else the place without its leading distance (`"45 km N of Tobelo"` is not cut,
/// `"south of the Fiji Islands"` stays whole). Blank → none.
pub fn region_of(place: &str) -> Option<String> {
    let place = place.trim();
    let region = match place.rsplit_once(',') {
        Some((_, after)) => after.trim(),
        None => place,
    };
    (!region.is_empty()).then(|| region.chars().take(200).collect())
}

fn timestamp(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// A parsed quake: the record, its time and version, its region.
type ParsedQuake = (Quake, DateTime<Utc>, DateTime<Utc>, Option<String>);

fn parse_quake(payload: &[u8]) -> std::result::Result<ParsedQuake, String> {
    let quake: Quake = serde_json::from_slice(payload).map_err(|e| format!("not a Quake: {e}"))?;
    let time = parse_millis(&quake.time)
        .and_then(timestamp)
        .ok_or_else(|| format!("time {:?} is not an RFC 3339 time", quake.time))?;
    let updated = parse_millis(&quake.updated)
        .and_then(timestamp)
        .ok_or_else(|| format!("updated {:?} is not an RFC 3339 time", quake.updated))?;
    if quake.id.is_empty() {
        return Err("id is empty".into());
    }
    let region = quake.place.as_deref().and_then(region_of);
    check_quake(&quake, region.as_deref())?;
    Ok((quake, time, updated, region))
}

/// Refuses a quake PostgreSQL could never store, so that it is dead-lettered instead of failing
/// its batch at every retry: a NUL in any text the warehouse keeps, an id or a dimension value
/// above [`MAX_KEY_BYTES`].
fn check_quake(quake: &Quake, region: Option<&str>) -> std::result::Result<(), String> {
    let text = [
        ("id", Some(quake.id.as_str())),
        ("source", Some(quake.source.as_str())),
        ("mag_type", quake.mag_type.as_deref()),
        ("place", quake.place.as_deref()),
        ("status", Some(quake.status.as_str())),
        ("alert", quake.alert.as_deref()),
        ("net", Some(quake.net.as_str())),
        ("event_type", Some(quake.event_type.as_str())),
        ("title", Some(quake.title.as_str())),
        ("url", Some(quake.url.as_str())),
    ];
    for (field, value) in text {
        if value.is_some_and(has_nul) {
            return Err(nul_reason(field));
        }
    }
    if quake.ids.iter().any(|id| has_nul(id)) {
        return Err(nul_reason("ids"));
    }
    let keys = [
        ("id", Some(quake.id.as_str())),
        ("net", Some(quake.net.as_str())),
        ("mag_type", quake.mag_type.as_deref()),
        ("event_type", Some(quake.event_type.as_str())),
        ("region", region),
    ];
    for (field, value) in keys {
        if let Some(value) = value
            && value.len() > MAX_KEY_BYTES
        {
            return Err(too_long_reason(field, value.len()));
        }
    }
    Ok(())
}

/// PostgreSQL's `text` cannot hold U+0000 (SQLSTATE 22021), nor `jsonb` a `\u0000` escape.
fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

fn nul_reason(field: &str) -> String {
    format!("field {field} contains a NUL character, which PostgreSQL text cannot store")
}

fn too_long_reason(field: &str, len: usize) -> String {
    format!(
        "field {field} is {len} bytes long, above the limit of {MAX_KEY_BYTES} bytes for an \
         indexed value (PostgreSQL cannot index it)"
    )
}

fn parse_window(payload: &[u8]) -> std::result::Result<Window, String> {
    let value: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let time = |name: &str| {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .and_then(parse_millis)
            .and_then(timestamp)
            .ok_or_else(|| format!("{name} is missing or not an RFC 3339 time"))
    };
    let (start, end, emitted_at) = (
        time("window_start")?,
        time("window_end")?,
        time("emitted_at")?,
    );
    let is_final = object
        .get("final")
        .and_then(|v| v.as_bool())
        .ok_or("final is missing or not a boolean")?;
    let mut aggregates = serde_json::Map::new();
    let mut group = Vec::new();
    for (name, v) in object {
        // Aggregate names are jsonb keys, group values text: neither may hold a NUL.
        if has_nul(name) {
            return Err(nul_reason(&format!("name {name:?}")));
        }
        match name.as_str() {
            "window_start" | "window_end" | "final" | "emitted_at" => {}
            _ if v.is_number() || v.is_null() => {
                aggregates.insert(name.clone(), v.clone());
            }
            _ => {
                let value = match v {
                    serde_json::Value::String(s) => s.clone(),
                    // JSON text escapes a NUL inside an array or object.
                    other => other.to_string(),
                };
                if has_nul(&value) {
                    return Err(nul_reason(name));
                }
                group.push(value);
            }
        }
    }
    let group_key = group.join("|");
    // The group key is part of agg_window's primary key: the same index limit as an event id.
    if group_key.len() > MAX_KEY_BYTES {
        return Err(too_long_reason("group key", group_key.len()));
    }
    Ok(Window {
        start,
        end,
        group_key,
        count: object.get("count").and_then(|v| v.as_i64()),
        aggregates: serde_json::Value::Object(aggregates),
        is_final,
        emitted_at,
    })
}

/// The sink's side of the consume loop: a batch is parsed, written in one transaction (or
/// record by record when the database refuses some of its data), and only then released.
struct Sink<'a> {
    config: &'a PostgresConfig,
    warehouse: Warehouse,
    metrics: Arc<PostgresMetrics>,
    shutdown: CancellationToken,
}

impl consume::Handler for Sink<'_> {
    fn handle<'a>(
        &'a mut self,
        batch: &'a [consume::Record],
        out: &'a mut consume::Outcome,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut rows = Vec::new();
            let mut windows = Vec::new();
            for record in batch {
                self.metrics.records.inc();
                let parsed = if record.topic == self.config.quakes_topic {
                    parse_quake(&record.payload).map(|(quake, time, updated, region)| {
                        rows.push(Row {
                            quake,
                            time,
                            updated,
                            region,
                            origin: record.clone(),
                        })
                    })
                } else {
                    parse_window(&record.payload).map(|window| {
                        windows.push(WindowRow {
                            window,
                            origin: record.clone(),
                        })
                    })
                };
                if let Err(reason) = parsed {
                    self.metrics.bad.inc();
                    out.refuse(record, reason);
                }
            }
            if self.write(&rows, &windows, out).await? {
                self.metrics.batches.inc();
                out.release_all(batch);
            }
            Ok(())
        })
    }
}

impl Sink<'_> {
    /// Writes a batch, retrying with backoff while the database is away (nothing is released
    /// meanwhile). False when shutdown came first.
    async fn write(
        &mut self,
        rows: &[Row],
        windows: &[WindowRow],
        out: &mut consume::Outcome,
    ) -> Result<bool> {
        let mut pause = Duration::from_millis(500);
        loop {
            let e = match self.warehouse.write(rows, windows, &self.metrics).await {
                Ok(()) => return Ok(true),
                Err(WriteError::Poison(e)) => {
                    // Retrying the batch would fail the same way: find the records refused.
                    tracing::warn!(error = %e, rows = rows.len(), windows = windows.len(),
                        "postgres sink: the database refused data in a batch; writing its records one at a time");
                    match self
                        .warehouse
                        .write_each(rows, windows, &self.metrics)
                        .await
                    {
                        Ok(refused) => {
                            for (origin, reason) in refused {
                                self.metrics.bad.inc();
                                out.refuse(
                                    origin,
                                    format!("the database refused the record: {reason}"),
                                );
                            }
                            return Ok(true);
                        }
                        Err(e) => e,
                    }
                }
                Err(WriteError::Other(e)) => e,
            };
            self.metrics.retries.inc();
            tracing::warn!(error = %e, "postgres sink: writing a batch failed; retrying in {pause:?} (nothing is committed meanwhile)");
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(false),
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(self.config.max_backoff);
            if self.warehouse.is_closed() {
                match Warehouse::connect(self.config).await {
                    Ok(w) => {
                        tracing::info!("postgres sink: reconnected");
                        self.warehouse = w;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres sink: reconnecting failed")
                    }
                }
            }
        }
    }
}

/// A connection to the warehouse, with the dimension keys seen so far.
struct Warehouse {
    client: Client,
    keys: Keys,
}

/// Dimension keys by value (dates by key), as read back from the database.
#[derive(Default)]
struct Keys {
    networks: HashMap<String, i32>,
    mag_types: HashMap<String, i32>,
    event_types: HashMap<String, i32>,
    regions: HashMap<String, i32>,
    dates: std::collections::HashSet<i32>,
}

fn db_error(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Sink {
        sink: "postgres",
        message: format!("{what}: {}", describe(&e)),
    }
}

/// Why writing a batch failed, as the retry loop needs to know it.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The database refused the data itself: the same rows fail the same way at every retry.
    #[error("{0}")]
    Poison(String),
    /// Anything else (connection lost, server down or restarting, a serialization failure): the
    /// same write may succeed later.
    #[error(transparent)]
    Other(#[from] Error),
}

/// Whether a SQLSTATE says the data can never be stored: class 22, data exception (a NUL in
/// text, an invalid encoding, a value out of range), or 54, program limit exceeded (an index
/// entry too large). Every other class may pass on a retry: 08 (connection), 40 (serialization,
/// deadlock), 53 (resources), 57 (shutdown, cancelled), …
fn is_poison(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("54")
}

/// [`db_error`] for the write path: sorts the error into poison or retriable.
fn write_error(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WriteError {
    move |e| {
        let message = format!("{what}: {}", describe(&e));
        match e.as_db_error() {
            Some(db) if is_poison(db.code().code()) => WriteError::Poison(message),
            _ => WriteError::Other(Error::Sink {
                sink: "postgres",
                message,
            }),
        }
    }
}

/// The server's message when there is one (`relation … does not exist`), else the client's.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

impl Warehouse {
    async fn connect(config: &PostgresConfig) -> Result<Warehouse> {
        let pg = config.connect_config().map_err(|message| Error::Config {
            origin: "[postgres]".into(),
            message,
        })?;
        let (client, connection) = pg.connect(NoTls).await.map_err(|e| Error::Sink {
            sink: "postgres",
            message: format!(
                "cannot connect to {}: {}",
                config.redacted_url(),
                describe(&e)
            ),
        })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(Warehouse {
            client,
            keys: Keys::default(),
        })
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies the migrations not yet applied, each in its own transaction.
    async fn migrate(&mut self) -> Result<()> {
        self.client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS quakestream_migrations (
                     version integer PRIMARY KEY,
                     name text NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(db_error("creating quakestream_migrations"))?;
        for (version, name, sql) in migrations::MIGRATIONS {
            let tx = self
                .client
                .transaction()
                .await
                .map_err(db_error("starting a migration"))?;
            // One migrator at a time across every process.
            tx.execute("SELECT pg_advisory_xact_lock(7264531)", &[])
                .await
                .map_err(db_error("locking for migrations"))?;
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM quakestream_migrations WHERE version = $1",
                    &[version],
                )
                .await
                .map_err(db_error("reading applied migrations"))?
                .is_some();
            if applied {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| Error::Sink {
                sink: "postgres",
                message: format!("migration {version} ({name}): {}", describe(&e)),
            })?;
            tx.execute(
                "INSERT INTO quakestream_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(db_error("recording a migration"))?;
            tx.commit()
                .await
                .map_err(db_error("committing a migration"))?;
            tracing::info!(version, name, "postgres: migration applied");
        }
        Ok(())
    }

    /// Writes one batch: dimensions, then facts and windows in one transaction.
    async fn write(
        &mut self,
        rows: &[Row],
        windows: &[WindowRow],
        metrics: &PostgresMetrics,
    ) -> Result<(), WriteError> {
        if rows.is_empty() && windows.is_empty() {
            return Ok(());
        }
        self.dimensions(rows).await?;
        let tx = self
            .client
            .transaction()
            .await
            .map_err(write_error("starting a transaction"))?;
        let inserted = insert_revisions(&tx, rows, &self.keys).await?;
        let upserted = upsert_events(&tx, rows, &self.keys).await?;
        let windowed = upsert_windows(&tx, windows).await?;
        tx.commit()
            .await
            .map_err(write_error("committing a batch"))?;
        metrics.revisions_inserted.add(inserted);
        metrics.events_upserted.add(upserted);
        metrics.windows_upserted.add(windowed);
        Ok(())
    }

    /// Writes a batch the database refused as data one record at a time (rows, then windows),
    /// so that only the records it refuses are left out; returns those with the database's
    /// reason. Any other error stops it and is returned: the caller retries the whole batch, and
    /// the part already written changes nothing the second time (the same guards as a replay).
    async fn write_each<'b>(
        &mut self,
        rows: &'b [Row],
        windows: &'b [WindowRow],
        metrics: &PostgresMetrics,
    ) -> Result<Vec<(&'b Origin, String)>> {
        let mut refused = Vec::new();
        for row in rows {
            match self.write(std::slice::from_ref(row), &[], metrics).await {
                Ok(()) => {}
                Err(WriteError::Poison(reason)) => refused.push((&row.origin, reason)),
                Err(WriteError::Other(e)) => return Err(e),
            }
        }
        for window in windows {
            match self.write(&[], std::slice::from_ref(window), metrics).await {
                Ok(()) => {}
                Err(WriteError::Poison(reason)) => refused.push((&window.origin, reason)),
                Err(WriteError::Other(e)) => return Err(e),
            }
        }
        Ok(refused)
    }

    /// Adds the dimension rows the batch needs and learns their keys.
    async fn dimensions(&mut self, rows: &[Row]) -> Result<(), WriteError> {
        let mut dates: Vec<chrono::NaiveDate> = rows
            .iter()
            .map(|r| r.time.date_naive())
            .filter(|d| !self.keys.dates.contains(&date_key(*d)))
            .collect();
        dates.sort();
        dates.dedup();
        if !dates.is_empty() {
            let keys: Vec<i32> = dates.iter().map(|d| date_key(*d)).collect();
            let years: Vec<i16> = dates.iter().map(|d| d.year() as i16).collect();
            let quarters: Vec<i16> = dates.iter().map(|d| d.month0() as i16 / 3 + 1).collect();
            let months: Vec<i16> = dates.iter().map(|d| d.month() as i16).collect();
            let days: Vec<i16> = dates.iter().map(|d| d.day() as i16).collect();
            let weekdays: Vec<i16> = dates
                .iter()
                .map(|d| d.weekday().number_from_monday() as i16)
                .collect();
            let month_names: Vec<String> =
                dates.iter().map(|d| d.format("%B").to_string()).collect();
            let day_names: Vec<String> = dates.iter().map(|d| d.format("%A").to_string()).collect();
            self.client
                .execute(
                    "INSERT INTO dim_date (date_key, date, year, quarter, month, day, day_of_week, month_name, day_name)
                     SELECT * FROM unnest($1::int[], $2::date[], $3::int2[], $4::int2[], $5::int2[], $6::int2[], $7::int2[], $8::text[], $9::text[])
                     ON CONFLICT (date_key) DO NOTHING",
                    &[&keys, &dates, &years, &quarters, &months, &days, &weekdays, &month_names, &day_names],
                )
                .await
                .map_err(write_error("adding dates"))?;
            self.keys.dates.extend(keys);
        }
        let client = &self.client;
        learn(
            client,
            "dim_network",
            "network_key",
            "code",
            &mut self.keys.networks,
            rows.iter().map(|r| Some(r.quake.net.as_str())),
        )
        .await?;
        learn(
            client,
            "dim_magnitude_type",
            "magnitude_type_key",
            "code",
            &mut self.keys.mag_types,
            rows.iter().map(|r| r.quake.mag_type.as_deref()),
        )
        .await?;
        learn(
            client,
            "dim_event_type",
            "event_type_key",
            "name",
            &mut self.keys.event_types,
            rows.iter().map(|r| Some(r.quake.event_type.as_str())),
        )
        .await?;
        learn(
            client,
            "dim_region",
            "region_key",
            "name",
            &mut self.keys.regions,
            rows.iter().map(|r| r.region.as_deref()),
        )
        .await?;
        Ok(())
    }
}

impl Keys {
    fn of(&self, row: &Row) -> (Option<i32>, Option<i32>, Option<i32>, Option<i32>) {
        let get = |map: &HashMap<String, i32>, v: Option<&str>| v.and_then(|v| map.get(v).copied());
        (
            get(&self.networks, Some(&row.quake.net)),
            get(&self.mag_types, row.quake.mag_type.as_deref()),
            get(&self.event_types, Some(&row.quake.event_type)),
            get(&self.regions, row.region.as_deref()),
        )
    }
}

fn date_key(d: chrono::NaiveDate) -> i32 {
    d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32
}

/// Inserts the values a dimension lacks and reads back the keys of all of them. Table and
/// column names are constants of this file, never input.
async fn learn<'a>(
    client: &Client,
    table: &str,
    key: &str,
    column: &str,
    known: &mut HashMap<String, i32>,
    values: impl Iterator<Item = Option<&'a str>>,
) -> Result<(), WriteError> {
    let mut new: Vec<String> = values
        .flatten()
        .filter(|v| !v.is_empty() && !known.contains_key(*v))
        .map(String::from)
        .collect();
    new.sort();
    new.dedup();
    if new.is_empty() {
        return Ok(());
    }
    client
        .execute(
            &format!(
                "INSERT INTO {table} ({column}) SELECT unnest($1::text[]) ON CONFLICT ({column}) DO NOTHING"
            ),
            &[&new],
        )
        .await
        .map_err(write_error("adding dimension values"))?;
    let rows = client
        .query(
            &format!("SELECT {column}, {key} FROM {table} WHERE {column} = ANY($1)"),
            &[&new],
        )
        .await
        .map_err(write_error("reading dimension keys"))?;
    for row in rows {
        known.insert(row.get(0), row.get(1));
    }
    Ok(())
}

/// The columns shared by both fact tables, as parallel arrays.
struct Columns {
    event_id: Vec<String>,
    updated: Vec<DateTime<Utc>>,
    time: Vec<DateTime<Utc>>,
    date_key: Vec<i32>,
    network: Vec<Option<i32>>,
    mag_type: Vec<Option<i32>>,
    event_type: Vec<Option<i32>>,
    region: Vec<Option<i32>>,
    mag: Vec<Option<f64>>,
    lat: Vec<f64>,
    lon: Vec<f64>,
    depth: Vec<f64>,
    status: Vec<String>,
    tsunami: Vec<bool>,
    alert: Vec<Option<String>>,
    sig: Vec<Option<i64>>,
    felt: Vec<Option<i64>>,
    cdi: Vec<Option<f64>>,
    mmi: Vec<Option<f64>>,
    place: Vec<Option<String>>,
    title: Vec<String>,
    url: Vec<String>,
    /// `ids` as JSON arrays: unnest cannot take an array of arrays of different lengths.
    ids: Vec<String>,
    source: Vec<String>,
}

impl Columns {
    /// The arrays as statement parameters `$1`…`$24`, in [`FACT_COLUMNS`] order.
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.event_id,
            &self.updated,
            &self.time,
            &self.date_key,
            &self.network,
            &self.mag_type,
            &self.event_type,
            &self.region,
            &self.mag,
            &self.lat,
            &self.lon,
            &self.depth,
            &self.status,
            &self.tsunami,
            &self.alert,
            &self.sig,
            &self.felt,
            &self.cdi,
            &self.mmi,
            &self.place,
            &self.title,
            &self.url,
            &self.ids,
            &self.source,
        ]
    }

    fn of<'r>(rows: impl Iterator<Item = &'r Row>, keys: &Keys) -> Columns {
        let mut c = Columns {
            event_id: vec![],
            updated: vec![],
            time: vec![],
            date_key: vec![],
            network: vec![],
            mag_type: vec![],
            event_type: vec![],
            region: vec![],
            mag: vec![],
            lat: vec![],
            lon: vec![],
            depth: vec![],
            status: vec![],
            tsunami: vec![],
            alert: vec![],
            sig: vec![],
            felt: vec![],
            cdi: vec![],
            mmi: vec![],
            place: vec![],
            title: vec![],
            url: vec![],
            ids: vec![],
            source: vec![],
        };
        for row in rows {
            let q = &row.quake;
            let (network, mag_type, event_type, region) = keys.of(row);
            c.event_id.push(q.id.clone());
            c.updated.push(row.updated);
            c.time.push(row.time);
            c.date_key.push(date_key(row.time.date_naive()));
            c.network.push(network);
            c.mag_type.push(mag_type);
            c.event_type.push(event_type);
            c.region.push(region);
            c.mag.push(q.mag);
            c.lat.push(q.lat);
            c.lon.push(q.lon);
            c.depth.push(q.depth_km);
            c.status.push(q.status.clone());
            c.tsunami.push(q.tsunami);
            c.alert.push(q.alert.clone());
            c.sig.push(q.sig);
            c.felt.push(q.felt);
            c.cdi.push(q.cdi);
            c.mmi.push(q.mmi);
            c.place.push(q.place.clone());
            c.title.push(q.title.clone());
            c.url.push(q.url.clone());
            c.ids
                .push(serde_json::to_string(&q.ids).unwrap_or_else(|_| "[]".into()));
            c.source.push(q.source.clone());
        }
        c
    }
}

const FACT_COLUMNS: &str = "event_id, updated, time, date_key, network_key, magnitude_type_key, \
    event_type_key, region_key, mag, lat, lon, depth_km, status, tsunami, alert, sig, felt, cdi, \
    mmi, place, title, url, ids, source";

/// The fact columns from parameter arrays `$1`…`$24`, and with `kafka` the message's topic,
/// partition and offset from `$25`…`$27`.
fn fact_select(kafka: bool) -> String {
    let (columns, arrays) = if kafka {
        (
            ", topic, part, off",
            ", $25::text[], $26::int[], $27::int8[]",
        )
    } else {
        ("", "")
    };
    format!(
        "SELECT e, u, t, dk, nk, mk, ek, rk, mag, lat, lon, depth, status, tsunami, alert, sig, \
         felt, cdi, mmi, place, title, url, ARRAY(SELECT jsonb_array_elements_text(ids::jsonb)), \
         source{columns} \
         FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::int[], $5::int[], \
         $6::int[], $7::int[], $8::int[], $9::float8[], $10::float8[], $11::float8[], \
         $12::float8[], $13::text[], $14::bool[], $15::text[], $16::int8[], $17::int8[], \
         $18::float8[], $19::float8[], $20::text[], $21::text[], $22::text[], $23::text[], \
         $24::text[]{arrays}) \
         AS v(e, u, t, dk, nk, mk, ek, rk, mag, lat, lon, depth, status, tsunami, alert, sig, \
         felt, cdi, mmi, place, title, url, ids, source{columns})"
    )
}

async fn insert_revisions(tx: &Transaction<'_>, rows: &[Row], w: &Keys) -> Result<u64, WriteError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let c = Columns::of(rows.iter(), w);
    let topics: Vec<&str> = rows.iter().map(|r| r.origin.topic.as_str()).collect();
    let partitions: Vec<i32> = rows.iter().map(|r| r.origin.partition).collect();
    let offsets: Vec<i64> = rows.iter().map(|r| r.origin.offset).collect();
    let sql = format!(
        "INSERT INTO fact_earthquake_revision ({FACT_COLUMNS}, kafka_topic, kafka_partition, \
         kafka_offset) {} ON CONFLICT (event_id, updated) DO NOTHING",
        fact_select(true)
    );
    tx.execute(
        &sql,
        &[c.params(), vec![&topics, &partitions, &offsets]].concat(),
    )
    .await
    .map_err(write_error("inserting revisions"))
}

async fn upsert_events(tx: &Transaction<'_>, rows: &[Row], w: &Keys) -> Result<u64, WriteError> {
    // One row per event (the newest of the batch): an upsert may not touch a row twice.
    let mut newest: BTreeMap<&str, &Row> = BTreeMap::new();
    for row in rows {
        let entry = newest.entry(row.quake.id.as_str()).or_insert(row);
        if row.updated > entry.updated {
            *entry = row;
        }
    }
    if newest.is_empty() {
        return Ok(0);
    }
    let c = Columns::of(newest.values().copied(), w);
    let updates: Vec<String> = FACT_COLUMNS
        .split(", ")
        .filter(|c| *c != "event_id")
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO fact_earthquake ({FACT_COLUMNS}) {}
         ON CONFLICT (event_id) DO UPDATE SET {}, loaded_at = now()
         WHERE fact_earthquake.updated < EXCLUDED.updated",
        fact_select(false),
        updates.join(", ")
    );
    tx.execute(&sql, &c.params())
        .await
        .map_err(write_error("upserting events"))
}

/// Topic, start, end, group key.
type WindowKey<'a> = (&'a str, DateTime<Utc>, DateTime<Utc>, &'a str);

async fn upsert_windows(tx: &Transaction<'_>, windows: &[WindowRow]) -> Result<u64, WriteError> {
    // One row per window (the latest emission of the batch; a final beats an update).
    let mut latest: BTreeMap<WindowKey<'_>, &Window> = BTreeMap::new();
    for row in windows {
        let w = &row.window;
        let key = (
            row.origin.topic.as_str(),
            w.start,
            w.end,
            w.group_key.as_str(),
        );
        let entry = latest.entry(key).or_insert(w);
        if (w.is_final, w.emitted_at) >= (entry.is_final, entry.emitted_at) {
            *entry = w;
        }
    }
    if latest.is_empty() {
        return Ok(0);
    }
    let (topic, rows): (Vec<&str>, Vec<&Window>) = latest
        .into_iter()
        .map(|((topic, ..), w)| (topic, w))
        .unzip();
    let start: Vec<DateTime<Utc>> = rows.iter().map(|w| w.start).collect();
    let end: Vec<DateTime<Utc>> = rows.iter().map(|w| w.end).collect();
    let group: Vec<&str> = rows.iter().map(|w| w.group_key.as_str()).collect();
    let count: Vec<Option<i64>> = rows.iter().map(|w| w.count).collect();
    let aggregates: Vec<&serde_json::Value> = rows.iter().map(|w| &w.aggregates).collect();
    let is_final: Vec<bool> = rows.iter().map(|w| w.is_final).collect();
    let emitted: Vec<DateTime<Utc>> = rows.iter().map(|w| w.emitted_at).collect();
    tx.execute(
        "INSERT INTO agg_window (topic, window_start, window_end, group_key, record_count, aggregates, is_final, emitted_at)
         SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::int8[], $6::jsonb[], $7::bool[], $8::timestamptz[])
         ON CONFLICT (topic, window_start, window_end, group_key) DO UPDATE SET
             record_count = EXCLUDED.record_count, aggregates = EXCLUDED.aggregates,
             is_final = EXCLUDED.is_final, emitted_at = EXCLUDED.emitted_at, loaded_at = now()
         WHERE (agg_window.is_final, agg_window.emitted_at) <= (EXCLUDED.is_final, EXCLUDED.emitted_at)",
        &[&topic, &start, &end, &group, &count, &aggregates, &is_final, &emitted],
    )
    .await
    .map_err(write_error("upserting windows"))
}

impl StageSettings for PostgresConfig {
    type Counters = PostgresMetrics;

    fn counters(&self) -> PostgresMetrics {
        PostgresMetrics::default()
    }

    fn about(&self, _data_dir: &std::path::Path) -> About {
        let mut reads = vec![self.quakes_topic.clone()];
        if !self.windows_topic.is_empty() {
            reads.push(self.windows_topic.clone());
        }
        let line = format!(
            "{} -> {} (fact_earthquake, fact_earthquake_revision, agg_window)",
            reads.join(", "),
            self.redacted_url()
        );
        About {
            name: "postgres".into(),
            kind: Kind::Sink,
            reads,
            writes: Vec::new(),
            line,
        }
    }

    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("[postgres]"))
    }

    /// Runs the sink until `ctx.shutdown`.
    async fn run(&self, ctx: &Context, metrics: Arc<PostgresMetrics>) -> Result<()> {
        let config = self;
        config.validate().map_err(Error::config("[postgres]"))?;
        let mut topics = vec![config.quakes_topic.clone()];
        if !config.windows_topic.is_empty() {
            topics.push(config.windows_topic.clone());
        }
        // The first connection must work: a wrong URL or password is the user's to fix now.
        let mut warehouse = Warehouse::connect(config).await?;
        warehouse.migrate().await?;
        tracing::info!(url = %config.redacted_url(), topics = ?topics, "postgres sink started");
        let spec = consume::Spec::new(
            "postgres",
            &config.group_id,
            config.instance_id.as_deref(),
            topics,
        )
        .batches(config.batch_size, Duration::from_millis(100));
        let mut sink = Sink {
            config,
            warehouse,
            metrics,
            shutdown: ctx.shutdown.clone(),
        };
        consume::run(ctx, &spec, &mut sink).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_the_place() {
        assert_eq!(
            region_of("10 km SSW of Tres Pinos, CA").as_deref(),
            Some("CA")
        );
        assert_eq!(
            region_of("M 4.5 - 100 km W of Somewhere, Chile").as_deref(),
            Some("Chile")
        );
        assert_eq!(
            region_of("south of the Fiji Islands").as_deref(),
            Some("south of the Fiji Islands")
        );
        assert_eq!(region_of("   "), None);
        assert_eq!(region_of("trailing,"), None);
    }

    #[test]
    fn window_results_parse_with_their_group() {
        let w = parse_window(
            br#"{"window_start":"2024-01-15T10:30:00.000Z","window_end":"2024-01-15T10:35:00.000Z","net":"us","count":3,"avg_mag":4.1,"max_mag":null,"final":true,"emitted_at":"2024-01-15T12:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(w.group_key, "us");
        assert_eq!(w.count, Some(3));
        assert_eq!(
            w.aggregates,
            serde_json::json!({"count": 3, "avg_mag": 4.1, "max_mag": null})
        );
        assert!(w.is_final);
        for bad in [
            &b"[]"[..],
            br#"{"window_start":"x","window_end":"2024-01-15T10:35:00.000Z","final":true,"emitted_at":"2024-01-15T12:00:00.000Z"}"#,
            br#"{"window_start":"2024-01-15T10:30:00.000Z","window_end":"2024-01-15T10:35:00.000Z","emitted_at":"2024-01-15T12:00:00.000Z"}"#,
        ] {
            assert!(parse_window(bad).is_err());
        }
    }

    fn quake_json(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut quake: serde_json::Value = serde_json::from_str(
            r#"{"id":"us1","ids":["us1"],"source":"usgs","time":"2024-01-15T10:30:00.000Z",
            "updated":"2024-01-15T10:45:00.000Z","mag":4.5,"mag_type":"mb",
            "place":"10 km SSW of Tres Pinos, CA","lat":36.6,"lon":-121.3,"depth_km":8.0,
            "status":"reviewed","tsunami":false,"alert":null,"sig":312,"felt":null,"cdi":null,
            "mmi":null,"net":"us","code":"1","event_type":"earthquake","title":"M 4.5",
            "url":"https://x/us1"}"#,
        )
        .unwrap();
        edit(&mut quake);
        serde_json::to_vec(&quake).unwrap()
    }

    #[test]
    fn poison_quakes_are_refused_with_the_field_named() {
        let (_, _, _, region) = parse_quake(&quake_json(|_| {})).unwrap();
        assert_eq!(region.as_deref(), Some("CA"));
        for (field, value) in [
            ("place", serde_json::json!("Tres\u{0}Pinos, CA")),
            ("title", serde_json::json!("M\u{0}4.5")),
            ("id", serde_json::json!("us\u{0}1")),
            ("ids", serde_json::json!(["us1", "x\u{0}"])),
            ("alert", serde_json::json!("\u{0}")),
        ] {
            let payload = quake_json(|q| q[field] = value);
            let reason = parse_quake(&payload).unwrap_err();
            assert_eq!(
                reason,
                format!(
                    "field {field} contains a NUL character, which PostgreSQL text cannot store"
                )
            );
        }
        for field in ["id", "net", "mag_type", "event_type"] {
            let long = "x".repeat(MAX_KEY_BYTES + 1);
            let payload = quake_json(|q| q[field] = serde_json::json!(long));
            let reason = parse_quake(&payload).unwrap_err();
            assert!(
                reason.starts_with(&format!(
                    "field {field} is {} bytes long",
                    MAX_KEY_BYTES + 1
                )),
                "{reason}"
            );
        }
        // At the limit is fine.
        let payload = quake_json(|q| q["id"] = serde_json::json!("x".repeat(MAX_KEY_BYTES)));
        assert!(parse_quake(&payload).is_ok());
    }

    #[test]
    fn poison_windows_are_refused() {
        let window = |extra: &str| {
            format!(
                r#"{{"window_start":"2024-01-15T10:30:00.000Z","window_end":"2024-01-15T10:35:00.000Z",{extra}"final":true,"emitted_at":"2024-01-15T12:00:00.000Z"}}"#
            )
        };
        assert!(parse_window(window(r#""net":"us","count":1,"#).as_bytes()).is_ok());
        let reason = parse_window(window(r#""net":"u\u0000s","#).as_bytes()).unwrap_err();
        assert!(reason.contains("field net contains a NUL"), "{reason}");
        let reason = parse_window(window(r#""c\u0000":1,"#).as_bytes()).unwrap_err();
        assert!(reason.contains("NUL"), "{reason}");
        let long = "n".repeat(MAX_KEY_BYTES + 1);
        let reason = parse_window(window(&format!(r#""net":"{long}","#)).as_bytes()).unwrap_err();
        assert!(reason.starts_with("field group key is"), "{reason}");
    }

    #[test]
    fn data_errors_are_poison_and_the_rest_retriable() {
        for code in ["22021", "22P05", "22003", "54000", "54001"] {
            assert!(is_poison(code), "{code}");
        }
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57014", "23505", "42P01",
        ] {
            assert!(!is_poison(code), "{code}");
        }
    }
}
