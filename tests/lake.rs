//! The files sink against the embedded broker: `kill -9` at 20 random moments while quakes
//! stream leaves each (id, updated) in the lake exactly once; DuckDB reads the Parquet files
//! with the expected types; CSV files have a header and parse with Python's `csv`; bad records
//! go to the dead-letter topic, counted, and nothing else is lost.

mod common;

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{fixture_quakes, python, read_topic};
use quakestream::{
    kafka::{KafkaSettings, TopicName, admin::Admin, producer::Producer},
    record::Quake,
    sink::lake::{
        self, LakeConfig, LakeMetrics, Schemas,
        encode::{Compression, FileSchema, Format},
        schema::Columns,
    },
};

/// What DuckDB sees in a topic's Parquet files: column types, and each row's (id, updated ms).
/// (column name, DuckDB type) of a set of files.
type ColumnTypes = Vec<(String, String)>;

fn duckdb_parquet(dir: &Path) -> (ColumnTypes, Vec<(String, i64)>) {
    let script = r#"
import duckdb, glob as g, json, sys
glob = sys.argv[1] + "/*/*/*.parquet"
if not g.glob(glob):
    print(json.dumps({"types": [], "rows": []}))
    sys.exit(0)
con = duckdb.connect()
types = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{glob}', hive_partitioning = true)").fetchall()
rows = con.sql(f"SELECT id, epoch_ms(updated) FROM read_parquet('{glob}')").fetchall()
print(json.dumps({"types": [[t[0], t[1]] for t in types], "rows": rows}))
"#;
    let out: serde_json::Value =
        serde_json::from_str(&python(script, &[dir.to_str().unwrap()])).unwrap();
    let types = out["types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[0].as_str().unwrap().to_string(),
                t[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let rows = out["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    (types, rows)
}

/// A small xorshift generator: the test prints its seed, so a failing run can be repeated.
struct Random(u64);

impl Random {
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

fn files_sink(data_dir: &Path, brokers: &str, crash_after_files: Option<u64>) -> Command {
    let mut command = common::quakestream(data_dir);
    if let Some(n) = crash_after_files {
        command.env("QS_TEST_CRASH_AFTER_FILES", n.to_string());
    }
    command
        .args(["--brokers", brokers, "run", "files"])
        .env("QUAKESTREAM_FILES_TOPICS", "earthquakes")
        .env("QUAKESTREAM_FILES_ROLL_RECORDS", "25")
        .env("QUAKESTREAM_FILES_ROLL_AGE", "700ms");
    command
}

fn postgres_sink(data_dir: &Path, brokers: &str, url: &str) -> Command {
    let mut command = common::quakestream(data_dir);
    command
        .args(["--brokers", brokers, "run", "postgres"])
        .env("QUAKESTREAM_POSTGRES_URL", url)
        .env("QUAKESTREAM_POSTGRES_WINDOWS_TOPIC", "");
    command
}

fn lake_files(dir: &Path, extension: &str) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    walk(dir, &mut all);
    all.retain(|p| p.to_string_lossy().ends_with(extension));
    all.sort();
    all
}

/// (event id, updated ms) of every revision in the warehouse, and of every event's row.
async fn warehouse(client: &tokio_postgres::Client) -> (Vec<(String, i64)>, Vec<(String, i64)>) {
    let read = |sql: &'static str| async move {
        client
            .query(sql, &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>()
            })
            // Before the sink's first start the tables do not exist yet.
            .unwrap_or_else(|e| {
                eprintln!("warehouse query: {e}");
                Vec::new()
            })
    };
    (
        read("SELECT event_id, (extract(epoch FROM updated) * 1000)::int8 FROM fact_earthquake_revision").await,
        read("SELECT event_id, (extract(epoch FROM updated) * 1000)::int8 FROM fact_earthquake").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_20_random_moments_leaves_each_revision_in_lake_and_warehouse_once() {
    let pg = common::PgServer::start();
    let db = pg.client().await;
    let url = pg.url();
    tokio::task::spawn_blocking(move || crash_test(url))
        .await
        .unwrap();
    let quakes = fixture_quakes();
    let revisions: BTreeSet<(String, i64)> =
        quakes.iter().map(|q| (q.id.clone(), q.updated.0)).collect();
    let mut newest = std::collections::BTreeMap::new();
    for (id, updated) in &revisions {
        let entry = newest.entry(id.clone()).or_insert(*updated);
        *entry = (*entry).max(*updated);
    }
    let newest: BTreeSet<(String, i64)> = newest.into_iter().collect();
    let (got_revisions, got_events) = warehouse(&db).await;
    assert_eq!(got_revisions.len(), revisions.len(), "every revision once");
    assert_eq!(
        got_revisions.into_iter().collect::<BTreeSet<_>>(),
        revisions
    );
    assert_eq!(got_events.len(), newest.len(), "one row per event");
    let got_events: BTreeSet<(String, i64)> = got_events.into_iter().collect();
    let wrong: Vec<_> = newest.difference(&got_events).take(5).collect();
    assert!(
        wrong.is_empty(),
        "events not at their newest revision: {wrong:?}"
    );
}

/// The lake half of the crash test (blocking: child processes and Python); the warehouse sink
/// is killed at the same moments and left caught up.
fn crash_test(pg_url: String) {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, addr) = common::start_broker(&dir.path().join("broker"));
    let sink_dir = dir.path().join("sink");
    std::fs::create_dir_all(&sink_dir).unwrap();
    let pg_dir = dir.path().join("pg-sink");
    std::fs::create_dir_all(&pg_dir).unwrap();
    let quakes = fixture_quakes();
    assert!(quakes.len() > 500, "{} fixture revisions", quakes.len());
    let expected: BTreeSet<(String, i64)> =
        quakes.iter().map(|q| (q.id.clone(), q.updated.0)).collect();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("random seed {seed}");
    let mut random = Random(seed);

    // The quakes stream in from another thread, one part before each kill, so that every run
    // has work in hand when it dies.
    let (feed, parts) = std::sync::mpsc::channel::<Vec<Quake>>();
    let publisher = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let settings = KafkaSettings::for_bootstrap(&addr);
                let topic: TopicName = "earthquakes".parse().unwrap();
                Admin::connect(&settings)
                    .await
                    .unwrap()
                    .ensure_topics(&[topic])
                    .await
                    .unwrap();
                let producer = Producer::new(&settings).unwrap();
                while let Ok(part) = parts.recv() {
                    for quake in part {
                        let body = serde_json::to_vec(&quake).unwrap();
                        producer
                            .send("earthquakes", Some(&quake.id), &body, Some(quake.time.0))
                            .await
                            .unwrap();
                    }
                }
            });
        })
    };

    // Every other run also aborts itself between publishing files and committing them (the
    // moment a random kill rarely hits): the next run must rewrite those very files.
    let started = |l: &str| l.contains("Press Ctrl+C");
    let mut sink = common::Spawned::start(&mut files_sink(&sink_dir, &addr, None));
    sink.wait_for(started, Duration::from_secs(60));
    let mut pg_sink = common::Spawned::start(&mut postgres_sink(&pg_dir, &addr, &pg_url));
    pg_sink.wait_for(started, Duration::from_secs(60));
    let mut aborted = 0;
    let lake = sink_dir.join("lake/earthquakes");
    let mut parts = quakes.chunks(quakes.len().div_ceil(20));
    for kill in 0..20 {
        // Kill while it works: once it has written a file of the new part (at most 15 s), at
        // a random moment within the next 1.5 s.
        let before = lake_files(&lake, "").len();
        feed.send(parts.next().unwrap_or_default().to_vec())
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while lake_files(&lake, "").len() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(random.between(0, 1500)));
        if sink.try_wait().is_some() {
            aborted += 1;
        } else {
            sink.signal("KILL");
            sink.wait(Duration::from_secs(10));
        }
        pg_sink.signal("KILL");
        pg_sink.wait(Duration::from_secs(10));
        pg_sink = common::Spawned::start(&mut postgres_sink(&pg_dir, &addr, &pg_url));
        eprintln!("kill -9 number {} done", kill + 1);
        let crash = (kill % 2 == 0).then(|| random.between(1, 5));
        sink = common::Spawned::start(&mut files_sink(&sink_dir, &addr, crash));
        sink.wait_for(started, Duration::from_secs(60));
        pg_sink.wait_for(started, Duration::from_secs(60));
    }
    drop(feed);
    publisher.join().unwrap();
    eprintln!("{aborted} runs aborted themselves between publish and commit");
    assert!(aborted > 0, "no run reached its crash point");

    // The last run catches up; then the lake must hold every revision exactly once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let rows = loop {
        let (_, rows) = duckdb_parquet(&lake);
        let distinct: BTreeSet<(String, i64)> = rows.iter().cloned().collect();
        if distinct == expected || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    sink.signal("INT");
    assert!(sink.wait(Duration::from_secs(30)).success());
    // The warehouse sink catches up too (the caller checks what it wrote).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let deadline = Instant::now() + Duration::from_secs(90);
        while warehouse(&client).await.0.len() < expected.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    pg_sink.signal("INT");
    assert!(pg_sink.wait(Duration::from_secs(30)).success());

    let distinct: BTreeSet<(String, i64)> = rows.iter().cloned().collect();
    let missing: Vec<_> = expected.difference(&distinct).take(5).collect();
    let extra: Vec<_> = distinct.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    assert_eq!(
        rows.len(),
        expected.len(),
        "every revision exactly once (duplicates found)"
    );
    // Nothing half-written is visible: only finished files carry the extension.
    assert!(
        lake_files(&lake, ".tmp")
            .iter()
            .all(|p| p.to_string_lossy().contains("/_tmp/"))
    );
}

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

/// Runs a lake sink in this process until `done` says the lake is complete.
async fn run_sink(
    config: LakeConfig,
    schemas: Schemas,
    data_dir: &Path,
    settings: &KafkaSettings,
    done: impl Fn() -> bool,
) -> Arc<LakeMetrics> {
    let metrics = Arc::new(LakeMetrics::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (settings, metrics, stop, data_dir) = (
            settings.clone(),
            metrics.clone(),
            stop.clone(),
            data_dir.to_path_buf(),
        );
        async move {
            let ctx =
                quakestream::runtime::Context::new(&settings, "quakestream-dlq", &data_dir, stop);
            let settings = lake::LakeSettings {
                config: config.clone(),
                object: false,
                schemas,
            };
            quakestream::runtime::StageSettings::run(&settings, &ctx, metrics).await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    task.await.unwrap().expect("sink ran without error");
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parquet_types_csv_headers_and_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("b")).await;
    let producer = setup(&settings, &["quakes-a", "users-b", "quakestream-dlq"]).await;
    let quakes: Vec<Quake> = fixture_quakes().into_iter().take(120).collect();
    for quake in &quakes {
        let body = serde_json::to_vec(quake).unwrap();
        producer
            .send("quakes-a", Some(&quake.id), &body, Some(quake.time.0))
            .await
            .unwrap();
    }
    // Hostile records: each must end on the dead-letter topic with a reason, none may stop the
    // sink or lose the good records around it.
    let huge = format!(
        r#"{{"id":"huge","time":"2024-01-15T10:30:00.000Z","updated":"2024-01-15T10:30:00.000Z","place":"{}"}}"#,
        "x".repeat(900_000)
    );
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"not json at all".to_vec()),
        ("array", b"[1,2,3]".to_vec()),
        ("non-utf8", vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
        ("no id", br#"{"time":"2024-01-15T10:30:00.000Z","updated":"2024-01-15T10:30:00.000Z"}"#.to_vec()),
        ("mag text", br#"{"id":"m","time":"2024-01-15T10:30:00.000Z","updated":"2024-01-15T10:30:00.000Z","mag":"big"}"#.to_vec()),
        ("bad time", br#"{"id":"t","time":"yesterday","updated":"2024-01-15T10:30:00.000Z"}"#.to_vec()),
        ("empty", Vec::new()),
    ];
    for (key, body) in &bad {
        producer
            .send("quakes-a", Some(key), body, Some(1_705_314_600_000))
            .await
            .unwrap();
    }
    // A huge but valid record is kept.
    producer
        .send(
            "quakes-a",
            Some("huge"),
            huge.as_bytes(),
            Some(1_705_314_600_000),
        )
        .await
        .unwrap();
    let users = [
        r#"{"id":"u1","first_name":"Ana","post_code":"08001","dob":"1990-02-03T00:00:00.000Z","n":1,"tags":["a"]}"#,
        r#"{"id":"u2","first_name":"Li, \"Jr\"\nsecond line","post_code":12345,"dob":"1985-12-31T00:00:00.000Z","n":2.5}"#,
    ];
    for (i, user) in users.iter().enumerate() {
        producer
            .send(
                "users-b",
                Some(&format!("u{i}")),
                user.as_bytes(),
                Some(1_705_314_600_000),
            )
            .await
            .unwrap();
    }

    // Parquet (zstd) for the quakes, gzip CSV for both topics in a second lake.
    let schemas = Schemas(
        [(
            "quakes-a".to_string(),
            FileSchema::Fixed(Arc::new(Columns::quake())),
        )]
        .into_iter()
        .collect(),
    );
    let parquet = LakeConfig {
        location: "pq".into(),
        topics: vec!["quakes-a".into()],
        group_id: "lake-pq".into(),
        compression: Compression::Zstd,
        roll_age: Duration::from_millis(500),
        ..LakeConfig::files()
    };
    let data_dir = dir.path().join("data");
    let good = quakes.len() as u64 + 1;
    let metrics = {
        let lake = data_dir.join("pq/quakes-a");
        run_sink(parquet, schemas.clone(), &data_dir, &settings, || {
            lake_files(&lake, ".parquet").len() > 3 && duckdb_parquet(&lake).1.len() as u64 == good
        })
        .await
    };
    assert_eq!(metrics.bad.get(), bad.len() as u64);
    let (types, rows) = duckdb_parquet(&data_dir.join("pq/quakes-a"));
    assert_eq!(rows.len() as u64, good);
    let ty = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
            .unwrap_or("absent")
    };
    assert_eq!(ty("id"), "VARCHAR");
    assert_eq!(ty("ids"), "VARCHAR[]");
    assert_eq!(ty("time"), "TIMESTAMP WITH TIME ZONE");
    assert_eq!(ty("updated"), "TIMESTAMP WITH TIME ZONE");
    assert_eq!(ty("mag"), "DOUBLE");
    assert_eq!(ty("depth_km"), "DOUBLE");
    assert_eq!(ty("tsunami"), "BOOLEAN");
    assert_eq!(ty("sig"), "BIGINT");
    assert_eq!(ty("felt"), "BIGINT");
    assert_eq!(ty("dt"), "DATE");

    let letters = read_topic(&settings, "quakestream-dlq").await;
    let reasons: Vec<(String, String)> = letters
        .iter()
        .map(|(k, v)| (k.clone(), v["reason"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(reasons.len(), bad.len(), "{reasons:#?}");
    for (key, _) in &bad {
        assert!(
            reasons.iter().any(|(k, _)| k == key),
            "{key} not dead-lettered: {reasons:#?}"
        );
    }
    let reason_of = |key: &str| &reasons.iter().find(|(k, _)| k == key).unwrap().1;
    assert!(
        reason_of("mag text").contains("field `mag`"),
        "{}",
        reason_of("mag text")
    );
    assert!(
        reason_of("no id").contains("`id`"),
        "{}",
        reason_of("no id")
    );
    assert!(reason_of("bad time").contains("field `time`"));

    let csv = LakeConfig {
        location: "csv".into(),
        topics: vec!["quakes-a".into(), "users-b".into()],
        group_id: "lake-csv".into(),
        format: Format::Csv.into(),
        compression: Compression::Gzip,
        partition_by: "date=%Y-%m-%d".into(),
        roll_age: Duration::from_millis(500),
        ..LakeConfig::files()
    };
    let csv_root = data_dir.join("csv");
    run_sink(csv, schemas, &data_dir, &settings, || {
        let files = lake_files(&csv_root, ".csv.gz");
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("users-b"))
            && count_csv_rows(&csv_root.join("quakes-a")) == good
    })
    .await;
    let script = r#"
import csv, glob, gzip, io, json, sys
csv.field_size_limit(10_000_000)
out = {}
for path in sorted(glob.glob(sys.argv[1] + "/*/*/*.csv.gz")):
    topic = path.split("/")[-3]
    with gzip.open(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    entry = out.setdefault(topic, {"headers": [], "rows": []})
    entry["headers"].append(rows[0])
    entry["rows"].extend(dict(zip(rows[0], r)) for r in rows[1:])
print(json.dumps(out))
"#;
    let parsed: serde_json::Value =
        serde_json::from_str(&python(script, &[csv_root.to_str().unwrap()])).unwrap();
    let quake_columns: Vec<String> = Columns::quake().iter().map(|c| c.name.clone()).collect();
    for header in parsed["quakes-a"]["headers"].as_array().unwrap() {
        let header: Vec<String> = serde_json::from_value(header.clone()).unwrap();
        assert_eq!(header, quake_columns);
    }
    let rows = parsed["quakes-a"]["rows"].as_array().unwrap();
    assert_eq!(rows.len() as u64, good);
    let first = &quakes[0];
    let row = rows.iter().find(|r| r["id"] == first.id.as_str()).unwrap();
    assert_eq!(row["updated"], first.updated.to_string());
    assert_eq!(
        row["mag"].as_str().unwrap().parse::<f64>().ok(),
        first.mag,
        "magnitudes survive CSV exactly"
    );
    assert_eq!(
        row["ids"],
        serde_json::to_string(&first.ids).unwrap().as_str()
    );
    let users = parsed["users-b"]["rows"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    let u2 = users.iter().find(|r| r["id"] == "u2").unwrap();
    assert_eq!(u2["first_name"], "Li, \"Jr\"\nsecond line");
    // Text and numbers mixed in one column: the values are kept as JSON text.
    assert_eq!(u2["post_code"], "12345");
    assert_eq!(
        users.iter().find(|r| r["id"] == "u1").unwrap()["post_code"],
        "\"08001\""
    );
    stop_broker.cancel();
}

fn count_csv_rows(dir: &Path) -> u64 {
    lake_files(dir, ".csv.gz")
        .iter()
        .map(|path| {
            use std::io::Read;
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            csv::Reader::from_reader(text.as_bytes()).records().count() as u64
        })
        .sum()
}
