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
//!
//! - [`config`]: `[postgres]`; [`records`]: messages read into rows and checked;
//!   [`warehouse`]: the connection and the SQL; [`migrations`]: the schema.

mod config;
pub mod migrations;
mod records;
pub mod tls;
mod warehouse;

#[cfg(test)]
use self::warehouse::is_poison;
pub use self::{
    config::PostgresConfig,
    records::{MAX_KEY_BYTES, region_of},
};
use self::{
    records::*,
    warehouse::{Warehouse, WriteError},
};

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    record::Checks,
    runtime::{
        About, Context, Kind, StageSettings,
        consume::{self, Handler, Outcome, Record},
    },
};

crate::macros::counters! {
    pub struct PostgresMetrics {
        records:
            "quakestream_postgres_records_total",
            "Records read by the PostgreSQL sink.";
        bad:
            "quakestream_postgres_bad_records_total",
            "Records dead-lettered by the PostgreSQL sink.";
        batches:
            "quakestream_postgres_batches_total",
            "Batches committed to the warehouse.";
        revisions_inserted:
            "quakestream_postgres_revisions_inserted_total",
            "Rows inserted into fact_earthquake_revision.";
        events_upserted:
            "quakestream_postgres_events_upserted_total",
            "Rows inserted or updated in fact_earthquake.";
        windows_upserted:
            "quakestream_postgres_windows_upserted_total",
            "Rows inserted or updated in agg_window.";
        retries:
            "quakestream_postgres_retries_total",
            "Batches retried after a database error.";
    }
}

/// The sink's side of the consume loop: a batch is parsed, written in one transaction (or
/// record by record when the database refuses some of its data), and only then released.
struct Sink<'a> {
    config: &'a PostgresConfig,
    warehouse: Warehouse,
    metrics: Arc<PostgresMetrics>,
    shutdown: CancellationToken,
    checks: Checks,
}

impl Handler for Sink<'_> {
    async fn handle(&mut self, batch: &[Record], out: &mut Outcome) -> Result<()> {
        let mut rows = Vec::new();
        let mut windows = Vec::new();
        for record in batch {
            self.metrics.records.inc();
            let parsed = if record.topic == self.config.quakes_topic {
                parse_quake(&record.payload, &self.checks).map(|(quake, time, updated, region)| {
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
    }
}

impl Sink<'_> {
    /// Writes a batch, retrying with backoff while the database is away (nothing is released
    /// meanwhile). False when shutdown came first.
    async fn write(
        &mut self,
        rows: &[Row],
        windows: &[WindowRow],
        out: &mut Outcome,
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
            checks: ctx.checks,
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
        let (_, _, _, region) = parse_quake(&quake_json(|_| {}), &Checks::default()).unwrap();
        assert_eq!(region.as_deref(), Some("CA"));
        for (field, value) in [
            ("place", serde_json::json!("Tres\u{0}Pinos, CA")),
            ("title", serde_json::json!("M\u{0}4.5")),
            ("id", serde_json::json!("us\u{0}1")),
            ("ids", serde_json::json!(["us1", "x\u{0}"])),
            ("alert", serde_json::json!("\u{0}")),
        ] {
            let payload = quake_json(|q| q[field] = value);
            let reason = parse_quake(&payload, &Checks::default()).unwrap_err();
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
            let reason = parse_quake(&payload, &Checks::default()).unwrap_err();
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
        assert!(parse_quake(&payload, &Checks::default()).is_ok());
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
