//! Poison records: records a store can never accept must be dead-lettered alone, and the sink
//! must keep going. Regression tests for sinks that retried such a record forever:
//!
//! - the PostgreSQL sink, with a NUL character in a text field (SQLSTATE 22021) and a 5000-byte
//!   event id (a btree index entry is at most ~2700 bytes: SQLSTATE 54000), both refused when
//!   parsed; and a record a trigger refuses as data (SQLSTATE 22023), which only the database
//!   can tell, found by writing its batch one record at a time;
//! - the files sink with inferred columns, with an integer above i64::MAX, which failed the
//!   whole Parquet or CSV file when it was finished, so the segment replayed forever.
//!
//! Each test also checks that nothing replays: the consumer group's committed offsets reach the
//! end of the topic.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{fixture_quakes, pg_count, python};
use quakestream::{
    kafka::{KafkaSettings, TopicName, admin::Admin, producer::Producer},
    record::Quake,
    runtime::Context,
    sink::{
        lake::{
            self, LakeConfig, LakeMetrics, Schemas,
            encode::{Compression, FileSchema, Format},
        },
        postgres::{PostgresConfig, PostgresMetrics},
    },
};
use tokio_util::sync::CancellationToken;

async fn setup(settings: &KafkaSettings, topics: &[&str]) -> Producer {
    let names: Vec<TopicName> = topics.iter().map(|t| t.parse().unwrap()).collect();
    Admin::connect(settings)
        .await
        .unwrap()
        .ensure_topics(&names)
        .await
        .unwrap();
    Producer::new(settings).unwrap()
}

async fn publish(producer: &Producer, quakes: &[Quake]) {
    for quake in quakes {
        let body = serde_json::to_vec(quake).unwrap();
        producer
            .send("earthquakes", Some(&quake.id), &body, Some(quake.time.0))
            .await
            .unwrap();
    }
}

/// What `group` has not committed yet on `topic` (`None` before its first commit).
async fn lag(settings: &KafkaSettings, topic: &str, group: &str) -> Option<i64> {
    let topic: TopicName = topic.parse().unwrap();
    let description = Admin::connect(settings)
        .await
        .unwrap()
        .describe(&topic)
        .await
        .unwrap();
    description
        .groups
        .iter()
        .find(|g| g.group == group)
        .map(|g| g.total())
}

/// Waits until `group` has committed every message of `topic`: nothing is left to replay.
async fn wait_caught_up(settings: &KafkaSettings, topic: &str, group: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let lag = lag(settings, topic, group).await;
        if lag == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{group} did not commit to the end of {topic}: lag {lag:?} (a record replayed \
             forever?)"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `len` pseudo-random letters and digits: PostgreSQL compresses a long index entry, so a
/// repeated letter would fit its btree index; this cannot (SQLSTATE 54000).
fn incompressible(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % ALPHABET.len() as u64) as usize] as char
        })
        .collect()
}

/// A quake like `template` under another id.
fn renamed(template: &Quake, id: &str) -> Quake {
    let mut quake = template.clone();
    quake.id = id.to_string();
    quake.ids = vec![id.to_string()];
    quake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_text_and_a_5000_byte_id_are_dead_lettered_and_the_warehouse_keeps_loading() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("b")).await;
    let pg = common::PgServer::start();
    let db = pg.client().await;
    let producer = setup(
        &settings,
        &["earthquakes", "earthquake-stats", "quakestream-dlq"],
    )
    .await;

    let quakes = fixture_quakes();
    let mut nul = renamed(&quakes[0], "poison-nul");
    nul.place = Some("10 km N of Nul\u{0}ville, CA".into());
    let long_id = incompressible(5000);
    let long = renamed(&quakes[0], &long_id);
    let after = renamed(&quakes[0], "after-poison");

    let sink_dir = dir.path().join("sink");
    std::fs::create_dir_all(&sink_dir).unwrap();
    let mut sink = common::Spawned::start(
        common::quakestream(&sink_dir)
            .args(["--brokers", broker.bootstrap(), "run", "postgres"])
            .env("QUAKESTREAM_POSTGRES_URL", pg.url())
            .env("QUAKESTREAM_POSTGRES_MAX_BACKOFF", "1s")
            .env("QUAKESTREAM_LOG", "warn"),
    );
    sink.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));

    publish(&producer, &quakes).await;
    publish(&producer, &[nul, long]).await;
    // Published after the poison: it must land too.
    publish(&producer, std::slice::from_ref(&after)).await;

    let good: Vec<&Quake> = quakes.iter().chain([&after]).collect();
    let events = good.iter().map(|q| &q.id).collect::<BTreeSet<_>>().len() as i64;
    let revisions = good
        .iter()
        .map(|q| (&q.id, &q.updated))
        .collect::<BTreeSet<_>>()
        .len() as i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let loaded = pg_count(&db, "SELECT count(*) FROM fact_earthquake").await;
        if loaded >= events {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the warehouse stalled at {loaded} of {events} events"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_caught_up(&settings, "earthquakes", "quakestream-postgres").await;
    sink.signal("INT");
    assert!(sink.wait(Duration::from_secs(30)).success());
    let log = sink.drain_stderr().join("\n");

    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM fact_earthquake").await,
        events
    );
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM fact_earthquake_revision").await,
        revisions
    );
    assert_eq!(
        pg_count(
            &db,
            "SELECT count(*) FROM fact_earthquake WHERE event_id = 'after-poison'"
        )
        .await,
        1,
        "the record after the poison was loaded"
    );
    assert_eq!(
        pg_count(
            &db,
            "SELECT count(*) FROM fact_earthquake_revision \
             WHERE event_id = 'poison-nul' OR length(event_id) > 1024"
        )
        .await,
        0
    );

    let reasons = common::dead_letter_reasons(&settings, "postgres").await;
    assert_eq!(reasons.len(), 2, "{reasons:#?}");
    assert!(
        reasons.iter().any(|r| r
            == "postgres: field place contains a NUL character, which PostgreSQL text cannot store"),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("postgres: field id is 5000 bytes long")),
        "{reasons:#?}"
    );
    let letters = common::read_topic(&settings, "quakestream-dlq").await;
    let keys: BTreeSet<&str> = letters.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["poison-nul", long_id.as_str()]));
    // Refused when parsed: no batch ever failed, nothing was retried.
    assert!(!log.contains("writing a batch failed"), "{log}");
    stop_broker.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_database_refuses_as_data_is_dead_lettered_and_its_batch_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("b")).await;
    let pg = common::PgServer::start();
    let db = pg.client().await;
    let producer = setup(&settings, &["earthquakes", "quakestream-dlq"]).await;
    let data_dir = dir.path().join("sink");
    std::fs::create_dir_all(&data_dir).unwrap();
    let start = |group: &str, metrics: Arc<PostgresMetrics>, stop: CancellationToken| {
        let config = PostgresConfig {
            url: pg.url(),
            windows_topic: String::new(),
            group_id: group.to_string(),
            max_backoff: Duration::from_secs(1),
            ..PostgresConfig::default()
        };
        let (settings, data_dir) = (settings.clone(), data_dir.clone());
        tokio::spawn(async move {
            let ctx = Context::new(&settings, "quakestream-dlq", &data_dir, stop);
            quakestream::runtime::StageSettings::run(&config, &ctx, metrics).await
        })
    };

    // A first run creates the schema; then a trigger refuses one record the way PostgreSQL
    // refuses data (SQLSTATE class 22), which no check before the database can foresee.
    let stop = CancellationToken::new();
    let first = start("poison-migrate", Arc::default(), stop.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg_count(&db, "SELECT count(*) FROM quakestream_migrations").await < 1 {
        assert!(Instant::now() < deadline, "the sink did not migrate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    first.await.unwrap().expect("first run ends without error");
    db.batch_execute(
        "CREATE FUNCTION refuse_for_test() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.title = 'refused by the database' THEN
                 RAISE EXCEPTION 'this test refuses event %', NEW.event_id USING ERRCODE = '22023';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_for_test BEFORE INSERT ON fact_earthquake_revision
             FOR EACH ROW EXECUTE FUNCTION refuse_for_test();",
    )
    .await
    .unwrap();

    // Everything is published before the sink starts again, so the refused record arrives in
    // one batch with good ones before and after it.
    let quakes: Vec<Quake> = fixture_quakes().into_iter().take(80).collect();
    let mut refused = renamed(&quakes[0], "refused-1");
    refused.title = "refused by the database".into();
    publish(&producer, &quakes[..40]).await;
    publish(&producer, std::slice::from_ref(&refused)).await;
    publish(&producer, &quakes[40..]).await;

    let metrics = Arc::new(PostgresMetrics::default());
    let stop = CancellationToken::new();
    let second = start("poison-net", metrics.clone(), stop.clone());
    wait_caught_up(&settings, "earthquakes", "poison-net").await;
    stop.cancel();
    second.await.unwrap().expect("the sink ran without error");

    let revisions = quakes
        .iter()
        .map(|q| (&q.id, &q.updated))
        .collect::<BTreeSet<_>>()
        .len() as i64;
    let events = quakes.iter().map(|q| &q.id).collect::<BTreeSet<_>>().len() as i64;
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM fact_earthquake_revision").await,
        revisions,
        "every good revision around the refused one was written"
    );
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM fact_earthquake").await,
        events
    );
    assert_eq!(
        pg_count(
            &db,
            "SELECT count(*) FROM fact_earthquake WHERE event_id = 'refused-1'"
        )
        .await,
        0
    );
    assert_eq!(metrics.bad.get(), 1);
    assert_eq!(metrics.retries.get(), 0, "a poison batch is not retried");

    let reasons = common::dead_letter_reasons(&settings, "postgres").await;
    assert_eq!(reasons.len(), 1, "{reasons:#?}");
    assert!(
        reasons[0].starts_with("postgres: the database refused the record: ")
            && reasons[0].contains("this test refuses event refused-1")
            && reasons[0].contains("(22023)"),
        "{}",
        reasons[0]
    );
    stop_broker.cancel();
}

/// (id, n) of every row of a topic's files as DuckDB (Parquet) or Python's `csv` (CSV) reads
/// them, sorted, and the type DuckDB gives `n`.
fn read_lake(topic_dir: &Path, format: Format) -> (String, Vec<(String, i64)>) {
    let script = r#"
import csv, duckdb, glob, json, sys
root, format = sys.argv[1], sys.argv[2]
if format == "parquet":
    con = duckdb.connect()
    files = root + "/*/*/*.parquet"
    ty = [t[1] for t in con.sql(f"DESCRIBE SELECT n FROM read_parquet('{files}')").fetchall()][0]
    rows = con.sql(f"SELECT id, n FROM read_parquet('{files}')").fetchall()
else:
    ty, rows = "csv", []
    for path in sorted(glob.glob(root + "/*/*/*.csv")):
        with open(path, newline="") as f:
            rows.extend([r["id"], int(r["n"])] for r in csv.DictReader(f))
print(json.dumps({"type": ty, "rows": rows}))
"#;
    let format = match format {
        Format::Parquet => "parquet",
        _ => "csv",
    };
    let out: serde_json::Value =
        serde_json::from_str(&python(script, &[topic_dir.to_str().unwrap(), format])).unwrap();
    let mut rows: Vec<(String, i64)> = out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    rows.sort();
    (out["type"].as_str().unwrap().to_string(), rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_integer_above_i64_in_an_inferred_topic_is_dead_lettered_and_the_files_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("b")).await;
    let producer = setup(&settings, &["readings", "quakestream-dlq"]).await;
    let records = [
        r#"{"id":"r1","n":1,"s":"a"}"#,
        r#"{"id":"r2","n":2,"s":"b"}"#,
        r#"{"id":"big","n":18446744073709551616,"s":"c"}"#,
        r#"{"id":"r3","n":3,"s":"d"}"#,
        r#"{"id":"bigger","n":9223372036854775808,"s":"e"}"#,
        r#"{"id":"r4","n":4,"s":"f"}"#,
    ];
    for record in records {
        let value: serde_json::Value = serde_json::from_str(record).unwrap();
        producer
            .send(
                "readings",
                value["id"].as_str(),
                record.as_bytes(),
                Some(1_705_314_600_000),
            )
            .await
            .unwrap();
    }
    let expected: Vec<(String, i64)> = (1..=4).map(|i| (format!("r{i}"), i)).collect();

    let data_dir = dir.path().join("data");
    for (round, (format, location, compression)) in [
        (Format::Parquet, "pq", Compression::Snappy),
        (Format::Csv, "csv", Compression::None),
    ]
    .into_iter()
    .enumerate()
    {
        // As `[files] schemas = { readings = "infer" }` configures it.
        let config = LakeConfig {
            location: location.into(),
            topics: vec!["readings".into()],
            group_id: format!("poison-{location}"),
            format: format.into(),
            compression,
            schemas: [("readings".to_string(), "infer".to_string())]
                .into_iter()
                .collect(),
            roll_age: Duration::from_millis(500),
            ..LakeConfig::files()
        };
        let schemas = Schemas(HashMap::from([("readings".to_string(), FileSchema::Infer)]));
        let metrics = Arc::new(LakeMetrics::new("files"));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (settings, metrics, stop, data_dir) = (
                settings.clone(),
                metrics.clone(),
                stop.clone(),
                data_dir.clone(),
            );
            async move {
                let ctx = quakestream::runtime::Context::new(
                    &settings,
                    "quakestream-dlq",
                    &data_dir,
                    stop,
                );
                let settings = lake::LakeSettings {
                    config: config.clone(),
                    object: false,
                    schemas,
                };
                quakestream::runtime::StageSettings::run(&settings, &ctx, metrics).await
            }
        });
        // Committed to the end: every file was written (the commit follows the files), and
        // nothing is left to replay.
        wait_caught_up(&settings, "readings", &format!("poison-{location}")).await;
        stop.cancel();
        task.await
            .unwrap()
            .expect("the sink ran without error (no file failed)");

        let (ty, rows) = read_lake(&data_dir.join(location).join("readings"), format);
        assert_eq!(rows, expected, "{format:?}: the good records, each once");
        if format == Format::Parquet {
            assert_eq!(ty, "BIGINT", "the column keeps its integer type");
        }
        assert_eq!(metrics.bad.get(), 2, "{format:?}");

        // Each sink dead-letters both records once, naming the field.
        let letters = common::read_topic(&settings, "quakestream-dlq").await;
        assert_eq!(letters.len(), 2 * (round + 1), "{letters:#?}");
        for (key, value) in [
            ("big", "18446744073709551616"),
            ("bigger", "9223372036854775808"),
        ] {
            let reason = format!("files: field `n` = {value} does not fit a 64-bit integer");
            let sent = letters
                .iter()
                .filter(|(k, letter)| k == key && letter["reason"] == reason.as_str())
                .count();
            assert_eq!(sent, round + 1, "{format:?} {key}: {letters:#?}");
        }
    }
    stop_broker.cancel();
}
