//! A sink whose endpoint is down must stop nothing else: `quakestream up` runs with an
//! `[object_store]` pointed at an S3 endpoint where nothing listens for the first minute.
//!
//! While it is dead this proves what a user relies on: the process stays up; the USGS source
//! publishes every revision of the recorded feed; the window processor publishes results; the
//! local `files` lake and the map get every revision; and the failure is visible, not silent:
//! `/api/pipeline` shows `object-store` `restarting` with its last error while `usgs`, `window`,
//! `alerts`, `files` and `web` are `running`, `/health` answers `200` and says which component
//! is degraded, and `/metrics` has `quakestream_component_up{…object-store…} 0`.
//!
//! When the endpoint comes back (moto started on the same port, the bucket created) nothing is
//! lost or doubled: the bucket ends up with every revision the quakes topic holds exactly once
//! (nothing was committed while the store was down, so the sink starts from the beginning), the
//! component is `running` again with its restarts counted, and Ctrl+C still exits 0.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use common::{
    Moto, Spawned, expected_revisions, files_under, fixture, free_port, quakestream, read_topic,
    revision_of, revision_sequence,
};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as Key};
use quakestream::{
    fake::{FakeServer, Step},
    kafka::KafkaSettings,
};
use serde_json::Value;

const BUCKET: &str = "quakestream-isolation";
/// How long the endpoint stays dead, counted from the start of `up`.
const DEAD_FOR: Duration = Duration::from_secs(60);
/// How long the sink may take to catch up once the endpoint is back (restart backoff is at
/// most 15 s, plus the object_store client's own retries).
const RECOVERY: Duration = Duration::from_secs(120);
/// The components that must keep running while the object store is down.
const OTHERS: [&str; 5] = ["usgs", "window", "alerts", "files", "web"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_object_store_endpoint_stops_nothing_else_and_everything_lands_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // The feed: the six recorded polls of 2025-05-04, then the last one again and again.
    let files = revision_sequence();
    let expected = expected_revisions(&files);
    let steps = files
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect();
    let feed = FakeServer::start("127.0.0.1:0", steps).await.unwrap();

    // The S3 endpoint: a port where nothing listens yet.
    let s3_port = free_port();
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let config = dir.path().join("isolation.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[files]
roll_age = "1s"

[object_store]
location = "s3://{BUCKET}/lake"
endpoint = "{endpoint}"
format = "jsonl"
compression = "none"
roll_age = "1s"
"#
        ),
    )
    .unwrap();

    let broker = format!("127.0.0.1:{}", free_port());
    let web = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{web}");
    let started = Instant::now();
    let started_ms = chrono::Utc::now().timestamp_millis();
    let dead_until = started + DEAD_FOR;
    let mut command = quakestream(&data);
    command
        .arg("--config")
        .arg(&config)
        .args([
            "up",
            "--listen",
            &broker,
            "--web",
            &web,
            "--usgs-url",
            &feed.url("/earthquakes/feed/v1.0/summary/all_day.geojson"),
            "--interval",
            "1s",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    let mut up = Spawned::start(&mut command);
    up.wait_for(
        |l| l.contains("Press Ctrl+C"),
        dead_until.saturating_duration_since(Instant::now()),
    );
    let settings = KafkaSettings::for_bootstrap(broker.clone());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // ---- the endpoint is dead: everything else works, and the failure shows --------------
    let mut checks = Checks::new(&[
        "quakes topic",
        "stats topic",
        "files lake",
        "map",
        "components",
        "health",
        "metrics",
    ]);
    let mut restarting = None;
    loop {
        alive(&mut up, "while the object store was down");
        if checks.pending("quakes topic") {
            let found = topic_revisions(&settings).await;
            checks.record("quakes topic", exactly(&found, &expected));
        }
        if checks.pending("stats topic") {
            let stats = read_topic(&settings, "earthquake-stats").await;
            checks.record(
                "stats topic",
                if stats.is_empty() {
                    Err("no window result yet".into())
                } else {
                    Ok(())
                },
            );
        }
        if checks.pending("files lake") {
            let rows = parquet_rows(&data.join("lake/earthquakes"));
            checks.record(
                "files lake",
                if rows == expected.len() {
                    Ok(())
                } else {
                    Err(format!("{rows} rows of {}", expected.len()))
                },
            );
        }
        if checks.pending("map") {
            let result = get_json(&http, &format!("{base}/api/quakes?limit=20000"))
                .await
                .and_then(|(_, list)| map_shows_the_feed(&list, &expected));
            checks.record("map", result);
        }
        if checks.pending("components") {
            let result = get_json(&http, &format!("{base}/api/pipeline"))
                .await
                .and_then(|(_, pipeline)| isolated(&pipeline["components"]));
            if let Ok(store) = &result {
                restarting = Some(store.clone());
            }
            checks.record("components", result.map(|_| ()));
        }
        if checks.pending("health") {
            let result = get_json(&http, &format!("{base}/health"))
                .await
                .and_then(|(status, health)| degraded(status, &health));
            checks.record("health", result);
        }
        if checks.pending("metrics") {
            let result = get_text(&http, &format!("{base}/metrics"))
                .await
                .and_then(|(_, text)| store_down_in_metrics(&text));
            checks.record("metrics", result);
        }
        if checks.done() {
            break;
        }
        assert!(
            Instant::now() < dead_until,
            "not seen within {DEAD_FOR:?} of `up` while the object-store endpoint was dead:\n{}",
            checks.report()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The component's entry says what failed and when, for a person reading the monitor.
    let store = restarting.expect("seen restarting");
    assert_eq!(store["kind"], "sink", "{store}");
    let error = store["last_error"].as_str().unwrap();
    assert!(
        error.contains(BUCKET) || error.contains(&endpoint),
        "the last error names the store: {error:?}"
    );
    let error_at = store["last_error_at_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("last_error_at_ms: {store}"));
    assert!(error_at >= started_ms, "{store}");
    assert!(store["since_ms"].as_i64().is_some(), "{store}");

    // The endpoint stays dead for the whole minute; `up` must live through it.
    while Instant::now() < dead_until {
        alive(&mut up, "while the object store was down");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    alive(&mut up, "after a minute without its object store");

    // ---- the endpoint comes back: everything lands, once ----------------------------------
    let moto = Moto::start_on(s3_port);
    moto.create_bucket(BUCKET).await;
    let bucket = moto.bucket(BUCKET);
    let topic = topic_revisions(&settings).await;
    exactly(&topic, &expected).unwrap_or_else(|e| panic!("the quakes topic: {e}"));
    let back_until = Instant::now() + RECOVERY;
    let mut checks = Checks::new(&["objects", "components", "health", "metrics"]);
    loop {
        alive(&mut up, "after the object store came back");
        if checks.pending("objects") {
            // Complete first; duplicates are asserted below, on a listing taken after this.
            let result = object_revisions(&bucket).await.and_then(|found| {
                let distinct: BTreeSet<(String, i64)> = found.iter().cloned().collect();
                let topic: BTreeSet<(String, i64)> = topic.iter().cloned().collect();
                if distinct == topic {
                    Ok(())
                } else {
                    Err(format!(
                        "{} revisions in {} lines, {} on the topic",
                        distinct.len(),
                        found.len(),
                        topic.len()
                    ))
                }
            });
            checks.record("objects", result);
        }
        if checks.pending("components") {
            let result = get_json(&http, &format!("{base}/api/pipeline"))
                .await
                .and_then(|(_, pipeline)| recovered(&pipeline["components"]));
            checks.record("components", result);
        }
        if checks.pending("health") {
            let result =
                get_json(&http, &format!("{base}/health"))
                    .await
                    .and_then(|(status, health)| {
                        if status == 200 && health["status"] == "ok" {
                            Ok(())
                        } else {
                            Err(format!("{status} {health}"))
                        }
                    });
            checks.record("health", result);
        }
        if checks.pending("metrics") {
            let result = get_text(&http, &format!("{base}/metrics"))
                .await
                .and_then(|(_, text)| store_up_in_metrics(&text));
            checks.record("metrics", result);
        }
        if checks.done() {
            break;
        }
        assert!(
            Instant::now() < back_until,
            "not seen within {RECOVERY:?} of the object-store endpoint coming back:\n{}",
            checks.report()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let landed = object_revisions(&bucket)
        .await
        .unwrap_or_else(|e| panic!("reading the bucket: {e}"));
    exactly(&landed, &expected).unwrap_or_else(|e| panic!("the object store: {e}"));

    // Ctrl+C drains and commits everything, the recovered sink included, and exits 0.
    up.signal("INT");
    let status = up.wait(Duration::from_secs(60));
    if !status.success() {
        let stderr = up.drain_stderr();
        let tail = &stderr[stderr.len().saturating_sub(40)..];
        panic!("Ctrl+C must exit 0, got {status}; last stderr lines: {tail:#?}");
    }
    let tail = up.drain_stdout().join("\n");
    assert!(tail.contains("quakestream stopped"), "{tail}");
}

/// Named conditions polled together until each has been seen once: some hold only for a
/// moment (a component is `restarting` only between two attempts).
struct Checks {
    /// Each condition not seen yet, with why it did not hold the last time.
    pending: BTreeMap<&'static str, String>,
}

impl Checks {
    fn new(names: &[&'static str]) -> Checks {
        Checks {
            pending: names.iter().map(|n| (*n, "not checked".into())).collect(),
        }
    }

    fn pending(&self, name: &str) -> bool {
        self.pending.contains_key(name)
    }

    fn record(&mut self, name: &'static str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.pending.remove(name);
            }
            Err(why) => {
                self.pending.insert(name, why);
            }
        }
    }

    fn done(&self) -> bool {
        self.pending.is_empty()
    }

    fn report(&self) -> String {
        self.pending
            .iter()
            .map(|(name, why)| format!("  {name}: {why}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Fails the test, with the end of its log, if `up` has exited.
fn alive(up: &mut Spawned, when: &str) {
    if let Some(status) = up.try_wait() {
        let stderr = up.drain_stderr();
        let tail = &stderr[stderr.len().saturating_sub(40)..];
        panic!("`up` exited ({status}) {when}; last stderr lines: {tail:#?}");
    }
}

/// Every (id, updated) on the quakes topic, in offset order.
async fn topic_revisions(settings: &KafkaSettings) -> Vec<(String, i64)> {
    read_topic(settings, "earthquakes")
        .await
        .iter()
        .map(|(_, quake)| revision_of(quake))
        .collect()
}

/// Whether `found` holds each expected revision exactly once, and nothing else.
fn exactly(found: &[(String, i64)], expected: &BTreeSet<(String, i64)>) -> Result<(), String> {
    let mut counts: BTreeMap<&(String, i64), usize> = BTreeMap::new();
    for revision in found {
        *counts.entry(revision).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let unknown: Vec<_> = counts
        .keys()
        .filter(|r| !expected.contains(**r))
        .take(5)
        .collect();
    let missing = expected.iter().filter(|r| !counts.contains_key(r)).count();
    if doubled.is_empty() && unknown.is_empty() && missing == 0 {
        Ok(())
    } else {
        Err(format!(
            "{} records, {missing} of {} revisions missing; more than once: {doubled:?}; \
             not in the feed: {unknown:?}",
            found.len(),
            expected.len()
        ))
    }
}

/// Rows in the finished Parquet files of a local lake topic.
fn parquet_rows(dir: &Path) -> usize {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    files_under(dir, ".parquet")
        .iter()
        .map(|path| {
            let file = std::fs::File::open(path).unwrap();
            let reader = SerializedFileReader::new(file).unwrap_or_else(|e| {
                panic!("{} is not a finished Parquet file: {e}", path.display())
            });
            reader.metadata().file_metadata().num_rows() as usize
        })
        .sum()
}

/// Every (id, updated) in the bucket's JSON Lines files of the quakes topic.
async fn object_revisions(bucket: &impl ObjectStore) -> Result<Vec<(String, i64)>, String> {
    let keys: Vec<Key> = bucket
        .list(Some(&Key::from("lake/earthquakes")))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await
        .map_err(|e| format!("listing: {e}"))?;
    let mut out = Vec::new();
    for key in keys {
        assert!(
            key.to_string().ends_with(".jsonl"),
            "only finished JSON Lines files under the topic: {key}"
        );
        let body = bucket
            .get(&key)
            .await
            .map_err(|e| format!("{key}: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("{key}: {e}"))?;
        for line in String::from_utf8_lossy(&body).lines() {
            let quake: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{key}: not a JSON line ({e}): {line}"));
            out.push(revision_of(&quake));
        }
    }
    Ok(out)
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let response = http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .text()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok((status, body))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    let (status, body) = get_text(http, url).await?;
    let value = serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}: {body}"))?;
    Ok((status, value))
}

/// The map lists events, each a revision that came from the feed through Kafka.
fn map_shows_the_feed(list: &Value, expected: &BTreeSet<(String, i64)>) -> Result<(), String> {
    let quakes = list["quakes"]
        .as_array()
        .ok_or_else(|| format!("no quakes list: {list}"))?;
    if quakes.is_empty() {
        return Err("no events on the map yet".into());
    }
    for quake in quakes {
        let revision = revision_of(quake);
        if !expected.contains(&revision) {
            return Err(format!("{revision:?} is not in the feed"));
        }
    }
    Ok(())
}

/// One component's entry in a `components` array.
fn component<'a>(components: &'a Value, name: &str) -> Option<&'a Value> {
    components.as_array()?.iter().find(|c| c["name"] == name)
}

/// `object-store` restarting with an error, every other component running. Returns its entry.
fn isolated(components: &Value) -> Result<Value, String> {
    let store = component(components, "object-store")
        .ok_or_else(|| format!("no object-store component: {components}"))?;
    if store["state"] != "restarting" {
        return Err(format!("object-store: {store}"));
    }
    if store["last_error"].as_str().is_none_or(str::is_empty) {
        return Err(format!("object-store restarting without an error: {store}"));
    }
    for name in OTHERS {
        let c = component(components, name)
            .ok_or_else(|| format!("no {name} component: {components}"))?;
        if c["state"] != "running" {
            return Err(format!("{name} is not running: {c}"));
        }
    }
    Ok(store.clone())
}

/// `object-store` running again after at least one restart, and the others still running.
fn recovered(components: &Value) -> Result<(), String> {
    let store = component(components, "object-store")
        .ok_or_else(|| format!("no object-store component: {components}"))?;
    if store["state"] != "running" || store["restarts"].as_u64().unwrap_or(0) < 1 {
        return Err(format!("object-store: {store}"));
    }
    for name in OTHERS {
        let c = component(components, name)
            .ok_or_else(|| format!("no {name} component: {components}"))?;
        if c["state"] != "running" {
            return Err(format!("{name} is not running: {c}"));
        }
    }
    Ok(())
}

/// `/health`: still `200` (the pipeline works), degraded, naming the component.
fn degraded(status: u16, health: &Value) -> Result<(), String> {
    let store_restarting = component(&health["components"], "object-store")
        .is_some_and(|c| c["state"] == "restarting");
    if status == 200 && health["status"] == "degraded: object-store restarting" && store_restarting
    {
        Ok(())
    } else {
        Err(format!("{status} {health}"))
    }
}

/// The value of the sample `name` with exactly these labels in a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
            if series_name != name {
                return None;
            }
            let have: BTreeMap<&str, &str> = rest
                .strip_suffix('}')?
                .split(',')
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            if have == want {
                value.parse().ok()
            } else {
                None
            }
        })
}

const STORE: [(&str, &str); 2] = [("component", "object-store"), ("kind", "sink")];
const FILES: [(&str, &str); 2] = [("component", "files"), ("kind", "sink")];

/// `/metrics`: the object store down, the files sink up, in one scrape.
fn store_down_in_metrics(text: &str) -> Result<(), String> {
    let store = sample(text, "quakestream_component_up", &STORE);
    let files = sample(text, "quakestream_component_up", &FILES);
    if store == Some(0.0) && files == Some(1.0) {
        Ok(())
    } else {
        Err(format!(
            "component_up: object-store {store:?}, files {files:?}"
        ))
    }
}

/// `/metrics`: the object store up again, its restarts counted.
fn store_up_in_metrics(text: &str) -> Result<(), String> {
    let up = sample(text, "quakestream_component_up", &STORE);
    let restarts = sample(text, "quakestream_component_restarts_total", &STORE);
    if up == Some(1.0) && restarts.is_some_and(|n| n >= 1.0) {
        Ok(())
    } else {
        Err(format!("object-store up {up:?}, restarts {restarts:?}"))
    }
}
