//! The warehouse: the connection, migrations, dimensions and the fact and window upserts. All
//! SQL is parameterized: values travel as arrays, never as text spliced into statements.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, Utc};
use tokio_postgres::{Client, NoTls, Transaction, types::ToSql};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::SslMode;

use crate::error::{Error, Result};

use super::{Origin, PostgresConfig, PostgresMetrics, Row, Window, WindowRow, migrations};
/// A connection to the warehouse, with the dimension keys seen so far.
pub(super) struct Warehouse {
    client: Client,
    keys: Keys,
}

/// Dimension keys by value (dates by key), as read back from the database.
#[derive(Default)]
pub(super) struct Keys {
    networks: HashMap<String, i32>,
    mag_types: HashMap<String, i32>,
    event_types: HashMap<String, i32>,
    regions: HashMap<String, i32>,
    dates: std::collections::HashSet<i32>,
}

pub(super) fn db_error(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Sink {
        sink: "postgres",
        message: format!("{what}: {}", describe(&e)),
    }
}

/// Why writing a batch failed, as the retry loop needs to know it.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
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
pub(super) fn is_poison(sqlstate: &str) -> bool {
    sqlstate.starts_with("22") || sqlstate.starts_with("54")
}

/// [`db_error`] for the write path: sorts the error into poison or retriable.
pub(super) fn write_error(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> WriteError {
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
pub(super) fn describe(e: &tokio_postgres::Error) -> String {
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

/// Drives a connection until it ends.
fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
}

impl Warehouse {
    pub(super) async fn connect(config: &PostgresConfig) -> Result<Warehouse> {
        let invalid = |message| Error::Config {
            origin: "[postgres]".into(),
            message,
        };
        let (pg, tls) = config.connect_config().map_err(invalid)?;
        let failed = |e: tokio_postgres::Error| Error::Sink {
            sink: "postgres",
            message: format!(
                "cannot connect to {}: {}",
                config.redacted_url(),
                describe(&e)
            ),
        };
        let client = if tls.mode == SslMode::Disable {
            let (client, connection) = pg.connect(NoTls).await.map_err(failed)?;
            spawn_connection(connection);
            client
        } else {
            let connector = MakeRustlsConnect::new(tls.client_config().map_err(invalid)?);
            let (client, connection) = pg.connect(connector).await.map_err(failed)?;
            spawn_connection(connection);
            client
        };
        Ok(Warehouse {
            client,
            keys: Keys::default(),
        })
    }

    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Applies the migrations not yet applied, each in its own transaction.
    pub(super) async fn migrate(&mut self) -> Result<()> {
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
    pub(super) async fn write(
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
    pub(super) async fn write_each<'b>(
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
        let (client, keys) = (&self.client, &mut self.keys);
        let nets = rows.iter().map(|r| Some(r.quake.net.as_str()));
        learn(client, &NETWORK, &mut keys.networks, nets).await?;
        let mag_types = rows.iter().map(|r| r.quake.mag_type.as_deref());
        learn(client, &MAGNITUDE_TYPE, &mut keys.mag_types, mag_types).await?;
        let event_types = rows.iter().map(|r| Some(r.quake.event_type.as_str()));
        learn(client, &EVENT_TYPE, &mut keys.event_types, event_types).await?;
        let regions = rows.iter().map(|r| r.region.as_deref());
        learn(client, &REGION, &mut keys.regions, regions).await?;
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

pub(super) fn date_key(d: chrono::NaiveDate) -> i32 {
    d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32
}

/// A dimension table: its name, its key column and its value column (constants of this file,
/// never input).
pub(super) struct Dimension {
    table: &'static str,
    key: &'static str,
    column: &'static str,
}

impl Dimension {
    const fn new(table: &'static str, key: &'static str, column: &'static str) -> Dimension {
        Dimension { table, key, column }
    }
}

const NETWORK: Dimension = Dimension::new("dim_network", "network_key", "code");
const MAGNITUDE_TYPE: Dimension =
    Dimension::new("dim_magnitude_type", "magnitude_type_key", "code");
const EVENT_TYPE: Dimension = Dimension::new("dim_event_type", "event_type_key", "name");
const REGION: Dimension = Dimension::new("dim_region", "region_key", "name");

/// Inserts the values a dimension lacks and reads back the keys of all of them.
pub(super) async fn learn<'a>(
    client: &Client,
    dimension: &Dimension,
    known: &mut HashMap<String, i32>,
    values: impl Iterator<Item = Option<&'a str>>,
) -> Result<(), WriteError> {
    let Dimension { table, key, column } = dimension;
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

/// Declares [`Columns`] from one table of the fact columns, in [`FACT_COLUMNS`] order: each
/// column's element type and what a row puts in it, given the row, its quake and its dimension
/// keys. The struct, its statement parameters and the filling of its arrays come from that
/// table, so that they cannot fall out of order with one another.
macro_rules! columns {
    (
        |$row:ident, $q:ident, $keys:pat_param| {
            $( $(#[$doc:meta])* $field:ident: $ty:ty = $value:expr, )*
        }
    ) => {
        /// The columns shared by both fact tables, as parallel arrays.
        #[derive(Default)]
        pub(super) struct Columns {
            $( $(#[$doc])* $field: Vec<$ty>, )*
        }

        impl Columns {
            /// The arrays as statement parameters `$1`…`$24`, in [`FACT_COLUMNS`] order.
            fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
                vec![$( &self.$field ),*]
            }

            fn of<'r>(rows: impl Iterator<Item = &'r Row>, keys: &Keys) -> Columns {
                let mut c = Columns::default();
                for $row in rows {
                    let $q = &$row.quake;
                    let $keys = keys.of($row);
                    $( c.$field.push($value); )*
                }
                c
            }
        }
    };
}

columns! {
    |row, q, (network, mag_type, event_type, region)| {
        event_id: String = q.id.clone(),
        updated: DateTime<Utc> = row.updated,
        time: DateTime<Utc> = row.time,
        date_key: i32 = date_key(row.time.date_naive()),
        network: Option<i32> = network,
        mag_type: Option<i32> = mag_type,
        event_type: Option<i32> = event_type,
        region: Option<i32> = region,
        mag: Option<f64> = q.mag,
        lat: f64 = q.lat,
        lon: f64 = q.lon,
        depth: f64 = q.depth_km,
        status: String = q.status.clone(),
        tsunami: bool = q.tsunami,
        alert: Option<String> = q.alert.clone(),
        sig: Option<i64> = q.sig,
        felt: Option<i64> = q.felt,
        cdi: Option<f64> = q.cdi,
        mmi: Option<f64> = q.mmi,
        place: Option<String> = q.place.clone(),
        title: String = q.title.clone(),
        url: String = q.url.clone(),
        /// `ids` as JSON arrays: unnest cannot take an array of arrays of different lengths.
        ids: String = serde_json::to_string(&q.ids).unwrap_or_else(|_| "[]".into()),
        source: String = q.source.clone(),
    }
}

pub(super) const FACT_COLUMNS: &str = "event_id, updated, time, date_key, network_key, magnitude_type_key, \
    event_type_key, region_key, mag, lat, lon, depth_km, status, tsunami, alert, sig, felt, cdi, \
    mmi, place, title, url, ids, source";

/// The fact columns from parameter arrays `$1`…`$24`, and with `kafka` the message's topic,
/// partition and offset from `$25`…`$27`.
pub(super) fn fact_select(kafka: bool) -> String {
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

pub(super) async fn insert_revisions(
    tx: &Transaction<'_>,
    rows: &[Row],
    w: &Keys,
) -> Result<u64, WriteError> {
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

pub(super) async fn upsert_events(
    tx: &Transaction<'_>,
    rows: &[Row],
    w: &Keys,
) -> Result<u64, WriteError> {
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
pub(super) type WindowKey<'a> = (&'a str, DateTime<Utc>, DateTime<Utc>, &'a str);

pub(super) async fn upsert_windows(
    tx: &Transaction<'_>,
    windows: &[WindowRow],
) -> Result<u64, WriteError> {
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
