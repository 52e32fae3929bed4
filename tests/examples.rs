//! Every example in `examples/` parses, and runs end to end offline as `examples/run.sh` runs
//! it: the binary with the example's config, pointed at fake servers replaying the fixtures,
//! producing its tutorial's output.

mod common;

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use common::{Moto, PgServer, Spawned, files_under, fixture, free_port, quakestream};
use quakestream::{
    Config,
    fake::{FakeServer, Step},
};

const LIMIT: Duration = Duration::from_secs(120);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(format!("{name}.toml"))
}

#[test]
fn every_example_parses_and_validates() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")).unwrap()
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = Config::load(Some(&path), Vec::<(String, String)>::new())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            config
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // The sinks check their own settings when they start; check them here too.
            if config.files.enabled {
                config
                    .files
                    .validate(false)
                    .unwrap_or_else(|e| panic!("{}: [files]: {e}", path.display()));
            }
            if !config.object_store.location.is_empty() {
                config
                    .object_store
                    .validate(true)
                    .unwrap_or_else(|e| panic!("{}: [object_store]: {e}", path.display()));
            }
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "apod-s3",
            "course",
            "randomuser-files",
            "turnstile",
            "warehouse"
        ]
    );
    // run.sh knows each of them.
    let script =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/run.sh"))
            .unwrap();
    for name in &names {
        assert!(
            script.contains(name.as_str()),
            "run.sh does not know {name}"
        );
    }
}

/// `quakestream --config examples/<name>.toml up`, from the repository root as run.sh runs it,
/// on a free broker port and a fresh data directory.
fn up(name: &str, data: &Path, extra: &[&str], env: &[(&str, String)]) -> Spawned {
    let broker = format!("127.0.0.1:{}", free_port());
    up_at(&broker, name, data, extra, env)
}

/// [`up`] with its embedded broker at `broker`.
fn up_at(broker: &str, name: &str, data: &Path, extra: &[&str], env: &[(&str, String)]) -> Spawned {
    let mut command = quakestream(data);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--config")
        .arg(example(name))
        .args(["up", "--listen", broker])
        .args(extra);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut up = Spawned::start(&mut command);
    up.wait_for(|l| l.contains("Press Ctrl+C"), LIMIT);
    up
}

fn stop(mut up: Spawned) {
    up.signal("INT");
    let status = up.wait(LIMIT);
    if !status.success() {
        let errors: Vec<String> = up
            .drain_stderr()
            .into_iter()
            .filter(|l| !l.contains("tansu"))
            .collect();
        panic!("Ctrl+C must exit 0, got {status}; stderr: {errors:#?}");
    }
}

/// Waits for `check` to return `Some`, failing with its last complaint past `LIMIT`.
fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + LIMIT;
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn usgs_feed(runtime: &tokio::runtime::Runtime) -> FakeServer {
    let steps = common::revision_sequence()[..2]
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect();
    runtime
        .block_on(FakeServer::start("127.0.0.1:0", steps))
        .unwrap()
}

/// The course end to end from `examples/course.toml`: one `up` gives the course's `sismos`
/// topic (its Spanish layout, plus `updated` and `status`) and, on the same events, the window
/// tables, the Spanish alert boxes, `alertas.log` and the map.
#[test]
fn course_prints_windows_and_alerts_and_serves_the_map() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = usgs_feed(&runtime);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let web = format!("127.0.0.1:{}", free_port());
    let broker = format!("127.0.0.1:{}", free_port());
    let url = feed.url("/earthquakes/feed/v1.0/summary/all_day.geojson");
    let mut up = up_at(
        &broker,
        "course",
        &data,
        &["--usgs-url", &url, "--interval", "1s", "--web", &web],
        &[],
    );
    let alert = up.wait_for(|l| l.contains("ALERTA SÍSMICA · NUEVA"), LIMIT);
    assert!(
        !alert.iter().any(|l| l.contains("EARTHQUAKE ALERT")),
        "the course's alerts are in Spanish"
    );
    let boxed = up.wait_for(|l| l.starts_with("│ Magnitud "), LIMIT);
    assert!(boxed.last().unwrap().contains(" km") || boxed.last().unwrap().contains('.'));
    up.wait_for(|l| l.starts_with("|window_start"), LIMIT);
    let health = eventually("the map has the events", || {
        let body = runtime
            .block_on(async {
                reqwest::get(format!("http://{web}/health"))
                    .await?
                    .text()
                    .await
            })
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        if v["events"].as_u64().unwrap_or(0) >= 190 {
            Ok(v)
        } else {
            Err(body)
        }
    });
    assert_eq!(health["kafka"], true);

    // The same events on both topics: the Quake records and the course's layout.
    let settings = quakestream::kafka::KafkaSettings::for_bootstrap(broker.as_str());
    let (quakes, sismos) = eventually("both topics have both polls", || {
        let (quakes, sismos) = runtime.block_on(async {
            (
                common::read_topic(&settings, "earthquakes").await,
                common::read_topic(&settings, "sismos").await,
            )
        });
        let want = common::expected_revisions(&common::revision_sequence()[..2]).len();
        if quakes.len() == want && sismos.len() == want {
            Ok((quakes, sismos))
        } else {
            Err(format!(
                "{} quakes, {} sismos of {want}",
                quakes.len(),
                sismos.len()
            ))
        }
    });
    let by_revision =
        |records: &[(String, serde_json::Value)]| -> BTreeMap<(String, String), serde_json::Value> {
            records
                .iter()
                .map(|(key, v)| {
                    (
                        (key.clone(), v["updated"].as_str().unwrap_or("").to_string()),
                        v.clone(),
                    )
                })
                .collect()
        };
    let (quakes, sismos) = (by_revision(&quakes), by_revision(&sismos));
    assert_eq!(
        quakes.keys().collect::<Vec<_>>(),
        sismos.keys().collect::<Vec<_>>(),
        "the same revisions on both topics"
    );
    for (revision, sismo) in &sismos {
        let quake = &quakes[revision];
        let mut fields: Vec<&str> = sismo
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "id",
                "latitud",
                "longitud",
                "lugar",
                "magnitud",
                "profundidad_km",
                "status",
                "timestamp",
                "tsunami",
                "updated"
            ]
        );
        assert_eq!(sismo["id"], quake["id"]);
        assert_eq!(sismo["magnitud"], quake["mag"]);
        assert_eq!(sismo["lugar"], quake["place"]);
        assert_eq!(sismo["timestamp"], quake["time"]);
        assert_eq!(sismo["status"], quake["status"]);
    }
    stop(up);

    // `alertas.log`: one Spanish line per alert.
    let log = std::fs::read_to_string(data.join("alertas.log")).expect("alertas.log");
    let lines: Vec<&str> = log.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert!(
            line.contains("\t[NUEVA] M ")
                || line.contains("\t[MAYOR] M ")
                || line.contains("\t[CANCELADA] M "),
            "{line}"
        );
    }
    assert!(!data.join("alerts.log").exists());
}

/// The randomuser tutorial writes its users as JSON, CSV and Parquet side by side: one files
/// sink with `format = ["jsonl", "csv", "parquet"]` does the same, each file set in each format
/// under one name.
#[test]
fn randomuser_lands_users_in_json_lines_csv_and_parquet_side_by_side() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let steps = [
        "randomuser/results200_nat-us_v1.3_seed-624b47c9006a7219.json",
        "randomuser/results1_nat-br_v1.4_seed-6786def1f7fa0850.json",
        "randomuser/results1_nat-dk_v1.4_seed-8095ce78e9c2817d.json",
    ]
    .iter()
    .map(|f| Step::Json(fixture(f).into()))
    .collect();
    let api = runtime
        .block_on(FakeServer::start("127.0.0.1:0", steps))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let lake = data.join("lake/users_created");
    let flag = format!("randomuser={}", api.url("/api/"));
    let up = up(
        "randomuser-files",
        &data,
        &["--http-url", &flag],
        &[("QUAKESTREAM_FILES_ROLL_AGE", "1s".into())],
    );
    // Every file set is finished in all three formats before its offsets are committed, so
    // once the JSON Lines files hold every user, so do the others.
    let users = eventually("202 users in the JSON Lines files", || {
        let mut users = BTreeMap::new();
        for f in files_under(&lake, ".jsonl") {
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                users.insert(v["id"].as_str().unwrap().to_string(), v);
            }
        }
        if users.len() == 202 {
            Ok(users)
        } else {
            Err(format!(
                "{} users; lake: {:?}",
                users.len(),
                files_under(&data.join("lake"), "")
            ))
        }
    });
    let dk = users
        .get("c38f4a89-31ac-4cae-84b8-e2fc84a0abc6")
        .expect("the Danish user");
    assert_eq!(
        dk["address"],
        "9508 Grønnegade, Ryslinge, Nordjylland, Denmark"
    );
    assert_eq!(dk["post_code"], "62067");
    stop(up);

    // The same names, one per format.
    let stems = |suffix: &str| -> Vec<String> {
        files_under(&lake, suffix)
            .iter()
            .map(|f| {
                let name = f
                    .strip_prefix(&lake)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                name.strip_suffix(suffix).unwrap().to_string()
            })
            .collect()
    };
    assert!(!stems(".jsonl").is_empty());
    assert_eq!(stems(".jsonl"), stems(".csv"));
    assert_eq!(stems(".jsonl"), stems(".parquet"));

    // The CSV files: one row per user, the Danish one as the JSON has it.
    let mut csv_users = BTreeMap::new();
    for f in files_under(&lake, ".csv") {
        let mut reader = csv::Reader::from_path(&f).unwrap();
        let header = reader.headers().unwrap().clone();
        let col = |name: &str| header.iter().position(|h| h == name).unwrap();
        let (id, address) = (col("id"), col("address"));
        for row in reader.records() {
            let row = row.unwrap();
            csv_users.insert(row[id].to_string(), row[address].to_string());
        }
    }
    assert_eq!(csv_users.len(), 202);
    assert_eq!(
        csv_users["c38f4a89-31ac-4cae-84b8-e2fc84a0abc6"],
        "9508 Grønnegade, Ryslinge, Nordjylland, Denmark"
    );

    // The Parquet files, read by DuckDB: the same users, snappy-compressed.
    let glob = format!("{}/**/*.parquet", lake.display());
    let out = common::python(
        "import duckdb, sys\n\
         con = duckdb.connect()\n\
         q = \"select count(*), count(distinct id), max(case when id = \
         'c38f4a89-31ac-4cae-84b8-e2fc84a0abc6' then address end) from read_parquet(?)\"\n\
         print(*con.execute(q, [sys.argv[1]]).fetchone(), sep='|')\n\
         c = con.execute(\"select distinct compression from parquet_metadata(?)\", \
         [sys.argv[1]]).fetchall()\n\
         print(*sorted(r[0] for r in c), sep=',')",
        &[&glob],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "202|202|9508 Grønnegade, Ryslinge, Nordjylland, Denmark",
            "SNAPPY"
        ],
        "{out}"
    );
}

/// The MTA tutorial writes completed windows: the example's files sink writes only final
/// results (`finals_only`), and its window processor closes the replayed week's last windows
/// once the input is quiet (`close_after_idle`). Each (window, station) is then in the lake
/// exactly once, final, and the finals add up to the week's totals.
#[test]
fn turnstile_writes_each_final_five_minute_window_once_in_gzip_csv() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let up = up(
        "turnstile",
        &data,
        &[],
        &[("QUAKESTREAM_FILES_ROLL_AGE", "1s".into())],
    );
    let want = BTreeMap::from([
        ("14 ST-UNION SQ".to_string(), (4_484, 14_826)),
        ("59 ST".to_string(), (17_594, 33_298)),
    ]);
    let rows = eventually("every window's final result in the lake", || {
        let mut rows: Vec<(String, String, String, i64, i64)> = Vec::new();
        for f in files_under(&data.join("lake/mta-turnstile-stats"), ".csv.gz") {
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::fs::File::open(&f).unwrap())
                .read_to_string(&mut text)
                .unwrap();
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let header = reader.headers().unwrap().clone();
            let col = |name: &str| header.iter().position(|h| h == name).unwrap();
            let (ws, st, en, ex, fin) = (
                col("window_start"),
                col("STATION"),
                col("ENTRIES"),
                col("EXITS"),
                col("final"),
            );
            for row in reader.records() {
                let row = row.unwrap();
                rows.push((
                    row[ws].to_string(),
                    row[st].to_string(),
                    row[fin].to_string(),
                    row[en].parse::<f64>().unwrap() as i64,
                    row[ex].parse::<f64>().unwrap() as i64,
                ));
            }
        }
        let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for (_, station, _, e, x) in &rows {
            let t = totals.entry(station.clone()).or_default();
            t.0 += e;
            t.1 += x;
        }
        if totals == want {
            Ok(rows)
        } else {
            Err(format!("{totals:?} from {} rows", rows.len()))
        }
    });
    stop(up);
    assert!(
        rows.iter().all(|r| r.2 == "true"),
        "an update that is not final reached the lake: {:?}",
        rows.iter().find(|r| r.2 != "true")
    );
    let cells: std::collections::BTreeSet<(&String, &String)> =
        rows.iter().map(|r| (&r.0, &r.1)).collect();
    assert_eq!(cells.len(), rows.len(), "a (window, station) written twice");
    // The slice's readings fall in 82 distinct (5-minute window, station) cells.
    assert_eq!(rows.len(), 82);
}

#[test]
fn warehouse_loads_events_and_windows_into_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let feed = usgs_feed(&runtime);
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = feed.url("/earthquakes/feed/v1.0/summary/all_day.geojson");
    let up = up(
        "warehouse",
        &dir.path().join("data"),
        &["--usgs-url", &url, "--interval", "1s"],
        &[("QUAKESTREAM_POSTGRES_URL", pg.url())],
    );
    let expected = common::expected_revisions(&common::revision_sequence()[..2]);
    let events: std::collections::BTreeSet<&String> = expected.iter().map(|(id, _)| id).collect();
    let client = runtime.block_on(pg.client());
    eventually("every event and revision in the warehouse", || {
        runtime.block_on(async {
            let count = |sql: &'static str| async {
                client
                    .query_one(sql, &[])
                    .await
                    .map(|r| r.get::<_, i64>(0))
                    .unwrap_or(-1)
            };
            let facts = count("select count(*) from fact_earthquake").await;
            let revisions = count("select count(*) from fact_earthquake_revision").await;
            let windows = count("select count(*) from agg_window").await;
            if facts >= events.len() as i64 && revisions == expected.len() as i64 && windows > 0 {
                Ok(())
            } else {
                Err(format!(
                    "{facts} events, {revisions} revisions, {windows} windows"
                ))
            }
        })
    });
    stop(up);
}

#[test]
fn apod_writes_one_object_per_date_to_s3() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let moto = Moto::start();
    runtime.block_on(moto.create_bucket("nasa-apod"));
    // The example asks for 2022-02-01 to 2022-02-13 (and polls hourly, so once here).
    let steps = vec![Step::Json(
        fixture("apod/range_2022-02-01_to_2022-02-13_thumbs.json").into(),
    )];
    let api = runtime
        .block_on(FakeServer::start("127.0.0.1:0", steps))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flag = format!("nasa-apod={}", api.url("/planetary/apod"));
    let up = up(
        "apod-s3",
        &dir.path().join("data"),
        &["--http-url", &flag],
        &[
            ("QUAKESTREAM_OBJECT_STORE_ENDPOINT", moto.endpoint.clone()),
            ("QUAKESTREAM_OBJECT_STORE_ROLL_AGE", "1s".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ],
    );
    let bucket = moto.bucket("nasa-apod");
    let keys = eventually("13 pictures as objects", || {
        let keys: Vec<String> = runtime.block_on(async {
            use futures::TryStreamExt;
            use object_store::ObjectStore;
            bucket
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect()
                .await
                .unwrap_or_default()
        });
        if keys.len() == 13 {
            Ok(keys)
        } else {
            Err(format!("{keys:?}"))
        }
    });
    // `{date}.json` at the bucket root, as the tutorial's consumer names them.
    assert!(keys.iter().any(|k| k == "2022-02-01.json"), "{keys:?}");
    assert!(keys.iter().any(|k| k == "2022-02-13.json"), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains('/')), "{keys:?}");
    let body = runtime.block_on(async {
        use object_store::ObjectStoreExt;
        let key = keys
            .iter()
            .find(|k| k.ends_with("2022-02-01.json"))
            .unwrap();
        bucket
            .get(&object_store::path::Path::from(key.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let picture: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(picture["media_type"], "video");
    stop(up);
}
