//! The window processor against the embedded broker: the recorded revision sequence through
//! source → window equals an oracle computed from the fixture files; `kill -9` and two
//! processes in one group give the final results of one uninterrupted process.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use common::{fixture, read_topic, revision_sequence};
use quakestream::{
    fake::{FakeServer, Step},
    kafka::{KafkaSettings, TopicName, admin::Admin, producer::Producer},
    process::window::WindowConfig,
    record::format_millis,
    source::{fetch::HttpConfig, usgs::UsgsConfig},
};

const MINUTE: i64 = 60_000;

/// (count, avg, max) of magnitudes, summed in sorted order like the engine.
fn aggregate(mags: &[Option<f64>]) -> (u64, Option<f64>, Option<f64>) {
    let mut present: Vec<f64> = mags.iter().flatten().copied().collect();
    present.sort_by(f64::total_cmp);
    let n = present.len();
    let sum: f64 = present.iter().sum();
    (
        mags.len() as u64,
        (n > 0).then(|| sum / n as f64),
        present.last().copied(),
    )
}

fn result_of(value: &serde_json::Value) -> (u64, Option<f64>, Option<f64>) {
    (
        value["count"].as_u64().expect("count"),
        value["avg_mag"].as_f64(),
        value["max_mag"].as_f64(),
    )
}

type Results = BTreeMap<String, (u64, Option<f64>, Option<f64>)>;

/// The last result written for each window, and the finals (asserting a window never gets two
/// different finals, and that its last result is its final). A crash between writing a final
/// and committing may repeat it, never change it.
fn results(records: &[(String, serde_json::Value)]) -> (Results, Results) {
    let mut last = BTreeMap::new();
    let mut last_final = BTreeMap::new();
    let mut finals: Results = BTreeMap::new();
    for (key, value) in records {
        let start = value["window_start"].as_str().unwrap().to_string();
        assert_eq!(key, &start, "results are keyed by window start");
        let result = result_of(value);
        let is_final = value["final"] == true;
        if is_final && let Some(before) = finals.insert(start.clone(), result) {
            assert_eq!(before, result, "two different finals for {start}");
        }
        last_final.insert(start.clone(), is_final);
        last.insert(start, result);
    }
    for start in finals.keys() {
        assert!(
            last_final[start],
            "an update is the last result of closed window {start}"
        );
    }
    (last, finals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_sequence_through_source_and_window_equals_the_fixture_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(dir.path()).await;
    let files = revision_sequence();

    // The oracle, straight from the fixture JSON: each event's newest revision, in 5-minute
    // windows by origin time.
    let mut newest: BTreeMap<String, (i64, i64, Option<f64>)> = BTreeMap::new();
    for file in &files {
        let feed: serde_json::Value = serde_json::from_slice(&fixture(file)).unwrap();
        for f in feed["features"].as_array().unwrap() {
            let p = &f["properties"];
            let revision = (
                p["updated"].as_i64().unwrap(),
                p["time"].as_i64().unwrap(),
                p["mag"].as_f64(),
            );
            let id = f["id"].as_str().unwrap().to_string();
            if newest.get(&id).is_none_or(|old| old.0 < revision.0) {
                newest.insert(id, revision);
            }
        }
    }
    let mut by_window: BTreeMap<i64, Vec<Option<f64>>> = BTreeMap::new();
    for (_, time, mag) in newest.values() {
        by_window
            .entry(time.div_euclid(5 * MINUTE) * 5 * MINUTE)
            .or_default()
            .push(*mag);
    }
    let expected: Results = by_window
        .iter()
        .map(|(start, mags)| (format_millis(*start).unwrap(), aggregate(mags)))
        .collect();
    assert!(expected.len() > 100, "the day spans many windows");

    let window_config = WindowConfig {
        // A day of events with revisions hours later: nothing is late with two days.
        lateness: Duration::from_secs(48 * 3600),
        emit_interval: Duration::ZERO,
        ..WindowConfig::default()
    };
    let (window, metrics, stop_window) = common::spawn_stage(&window_config, &settings, dir.path());

    let steps = files
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect();
    let server = FakeServer::start("127.0.0.1:0", steps).await.unwrap();
    let source = common::RunningSource::spawn(
        UsgsConfig {
            url: server.url("/earthquakes/feed/v1.0/summary/all_day.geojson"),
            interval: Some(Duration::from_millis(300)),
            http: HttpConfig {
                timeout: Duration::from_secs(2),
                ..HttpConfig::default()
            },
            ..UsgsConfig::default()
        },
        &settings,
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while server.pending() > 0 || source.metrics.published.get() < 217 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the source did not publish the sequence"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let source_metrics = source.stop().await;
    assert_eq!(source_metrics.published.get(), 217);
    while metrics.records.get() < 217
        || metrics.combined.get() < metrics.changes.get()
        || metrics.changes.get() == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the window processor did not catch up: {} records, {}/{} changes",
            metrics.records.get(),
            metrics.combined.get(),
            metrics.changes.get()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_window.cancel();
    window
        .await
        .unwrap()
        .expect("the window processor ran without error");

    assert_eq!(metrics.records.get(), 217);
    assert_eq!(metrics.late.get(), 0);
    assert_eq!(metrics.bad.get(), 0);
    let records = read_topic(&settings, "earthquake-stats").await;
    let (last, finals) = results(&records);
    assert!(
        finals.is_empty(),
        "no window closes with two days of lateness"
    );
    assert_eq!(last, expected);

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}

/// A quake-shaped record.
fn quake(key: &str, time: i64, updated: i64, mag: Option<f64>, deleted: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": key,
        "time": format_millis(time).unwrap(),
        "updated": format_millis(updated).unwrap(),
        "mag": mag,
        "status": if deleted { "deleted" } else { "reviewed" },
    }))
    .unwrap()
}

/// The test stream, batch by batch: (key, time, updated, mag, deleted). Batch `j` revises,
/// moves and deletes events of batch `j - 1` (all less than 20 minutes before its own events),
/// then adds new events in `[j·30m, (j+1)·30m)` in time order. With one hour of lateness nothing
/// is ever late however batches are split, so every run must give the same finals.
/// (key, time, updated, mag, deleted).
type Event = (String, i64, i64, Option<f64>, bool);

fn stream(batches: usize) -> Vec<Vec<Event>> {
    let base = 1_746_316_800_000i64; // 2025-05-04T00:00Z
    let half_hour = 30 * MINUTE;
    let mut seed = 7u64;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    let mut out: Vec<Vec<Event>> = Vec::new();
    let mut updated = base;
    for j in 0..batches {
        let mut batch = Vec::new();
        let start = base + j as i64 * half_hour;
        if let Some(previous) = out.last() {
            for (key, time, _, mag, deleted) in previous.clone() {
                if deleted || time < start - 20 * MINUTE {
                    continue;
                }
                updated += 1000;
                match next(4) {
                    0 => batch.push((key, time, updated, mag.map(|m| m + 0.3), false)),
                    1 => batch.push((key, time + 3 * MINUTE, updated, mag, false)),
                    2 => batch.push((key, time, updated, None, true)),
                    _ => {}
                }
            }
        }
        let mut time = start;
        for i in 0.. {
            time += 1 + next(2 * MINUTE as u64) as i64;
            if time >= start + half_hour {
                break;
            }
            updated += 1000;
            let mag = (next(10) > 0).then(|| (next(60) as f64) / 10.0);
            batch.push((format!("ev{j}-{i}"), time, updated, mag, false));
        }
        out.push(batch);
    }
    out
}

fn window_command(
    data_dir: &std::path::Path,
    brokers: &str,
    input: &str,
    group: &str,
) -> std::process::Command {
    let mut command = common::quakestream(data_dir);
    command
        .args(["--brokers", brokers, "run", "window"])
        .env("QUAKESTREAM_WINDOW_INPUT", input)
        .env("QUAKESTREAM_WINDOW_OUTPUT", format!("{input}-stats"))
        .env("QUAKESTREAM_WINDOW_GROUP_ID", group)
        .env("QUAKESTREAM_WINDOW_LATENESS", "1h")
        .env("QUAKESTREAM_WINDOW_EMIT_INTERVAL", "0s")
        .env("QUAKESTREAM_LOG", "info");
    command
}

fn started(line: &str) -> bool {
    line.contains("Press Ctrl+C")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_two_processes_give_the_finals_of_one_uninterrupted_process() {
    let dir = tempfile::tempdir().unwrap();
    let broker_dir = dir.path().join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let (_broker, addr) = common::start_broker(&broker_dir);
    let settings = KafkaSettings::for_bootstrap(addr.clone());
    let admin = Admin::connect(&settings).await.unwrap();
    let inputs = ["quakes-solo", "quakes-killed", "quakes-pair"];
    let names: Vec<TopicName> = inputs.iter().map(|t| t.parse().unwrap()).collect();
    admin.ensure_topics(&names).await.unwrap();

    let mkdir = |name: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let (solo_dir, killed_dir, pair_a, pair_b) = (
        mkdir("solo"),
        mkdir("killed"),
        mkdir("pair-a"),
        mkdir("pair-b"),
    );
    let mut solo = common::Spawned::start(&mut window_command(&solo_dir, &addr, inputs[0], "solo"));
    let mut killed =
        common::Spawned::start(&mut window_command(&killed_dir, &addr, inputs[1], "killed"));
    // The pair share a group but not a disk: a partition that moves between them is rebuilt
    // from Kafka alone.
    let mut first = common::Spawned::start(&mut window_command(&pair_a, &addr, inputs[2], "pair"));
    let mut second = common::Spawned::start(&mut window_command(&pair_b, &addr, inputs[2], "pair"));
    for process in [&mut solo, &mut killed, &mut first, &mut second] {
        process.wait_for(started, Duration::from_secs(60));
    }

    let producer = Producer::new(&settings).unwrap();
    let batches = stream(8);
    let flush_time = 1_746_316_800_000 + 8 * 30 * MINUTE + 2 * 3_600_000;
    for (j, batch) in batches.iter().enumerate() {
        for input in inputs {
            for (key, time, updated, mag, deleted) in batch {
                producer
                    .send(
                        input,
                        Some(key),
                        &quake(key, *time, *updated, *mag, *deleted),
                        Some(*time),
                    )
                    .await
                    .unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        if j == 2 || j == 5 {
            killed.signal("KILL");
            killed.wait(Duration::from_secs(10));
            killed = common::Spawned::start(&mut window_command(
                &killed_dir,
                &addr,
                inputs[1],
                "killed",
            ));
            killed.wait_for(started, Duration::from_secs(60));
        }
    }
    // One record far ahead in every partition closes every window of the stream.
    for input in inputs {
        for partition in 0..3 {
            let key = format!("flush-{partition}");
            let record = quake(&key, flush_time, flush_time, Some(1.0), false);
            producer
                .enqueue(
                    input,
                    Some(partition),
                    Some(&key),
                    &record,
                    Some(flush_time),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    // The oracle: each key's newest record, in 5-minute windows; every window of the stream
    // closes (the flush record's watermark is an hour past the last of them).
    let mut newest: BTreeMap<&str, (i64, Option<f64>, bool)> = BTreeMap::new();
    for batch in &batches {
        for (key, time, _, mag, deleted) in batch {
            newest.insert(key, (*time, *mag, *deleted));
        }
    }
    let mut touched: BTreeSet<i64> = BTreeSet::new();
    for batch in &batches {
        for (_, time, _, _, deleted) in batch {
            if !deleted {
                touched.insert(time.div_euclid(5 * MINUTE) * 5 * MINUTE);
            }
        }
    }
    let mut expected: Results = touched
        .iter()
        .map(|s| (format_millis(*s).unwrap(), (0, None, None)))
        .collect();
    let mut mags: BTreeMap<i64, Vec<Option<f64>>> = BTreeMap::new();
    for (time, mag, deleted) in newest.values() {
        if !deleted {
            mags.entry(time.div_euclid(5 * MINUTE) * 5 * MINUTE)
                .or_default()
                .push(*mag);
        }
    }
    for (start, m) in &mags {
        expected.insert(format_millis(*start).unwrap(), aggregate(m));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut got = BTreeMap::new();
    for input in inputs {
        loop {
            let records = read_topic(&settings, &format!("{input}-stats")).await;
            let (_, finals) = results(&records);
            if finals.len() >= expected.len() {
                got.insert(input, finals);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{input}: {} of {} finals",
                finals.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert_eq!(got["quakes-solo"], expected, "one uninterrupted process");
    assert_eq!(got["quakes-killed"], expected, "killed twice with kill -9");
    assert_eq!(got["quakes-pair"], expected, "two processes in one group");
    let dlq = read_topic(&settings, "quakestream-dlq").await;
    assert!(dlq.is_empty(), "nothing is late or bad: {dlq:?}");

    for process in [&solo, &killed, &first, &second] {
        process.signal("INT");
    }
    for process in [&mut solo, &mut killed, &mut first, &mut second] {
        assert!(process.wait(Duration::from_secs(30)).success());
    }
}

/// A record later than the allowed lateness goes to the dead-letter topic with its reason and
/// the record itself, byte for byte, as it was on the input topic (read back from there: the
/// repartition topic carries only the values the windows need).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_record_is_dead_lettered_with_the_record_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, mut settings) = common::embedded_broker(dir.path()).await;
    settings.partitions = 1;
    let base = 1_746_316_800_000i64; // 2025-05-04T00:00Z
    let config = WindowConfig {
        lateness: Duration::from_secs(60),
        emit_interval: Duration::ZERO,
        ..WindowConfig::default()
    };
    let input: TopicName = config.input.parse().unwrap();
    Admin::connect(&settings)
        .await
        .unwrap()
        .ensure_topics(std::slice::from_ref(&input))
        .await
        .unwrap();
    let (window, metrics, stop_window) = common::spawn_stage(&config, &settings, dir.path());
    let producer = Producer::new(&settings).unwrap();
    let send = |key: &'static str, time: i64, mag: f64| {
        let producer = &producer;
        let input = input.clone();
        async move {
            let body = quake(key, time, time + MINUTE, Some(mag), false);
            producer
                .send(input.as_str(), Some(key), &body, Some(time))
                .await
                .unwrap();
            body
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // On time, then two hours later: the watermark passes the first one's window.
    send("on-time", base, 2.0).await;
    send("later", base + 120 * MINUTE, 3.0).await;
    while metrics.watermark_ms.get() < base + 119 * MINUTE {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watermark did not advance: {}",
            metrics.watermark_ms.get()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = send("too-late", base + MINUTE, 4.5).await;
    while metrics.late.get() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late record was not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_window.cancel();
    window.await.unwrap().expect("the window processor ran");

    let letters = read_topic(&settings, "quakestream-dlq").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (key, letter) = &letters[0];
    assert_eq!(key, "too-late");
    let reason = letter["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("late: event time 2025-05-04T00:01:00"),
        "{reason}"
    );
    assert_eq!(letter["source"], "window");
    assert_eq!(letter["topic"], "earthquakes");
    assert_eq!(letter["offset"], 2);
    assert_eq!(
        letter["payload"].as_str().unwrap().as_bytes(),
        &late[..],
        "the letter carries the record as it was written"
    );
    assert_eq!(metrics.late.get(), 1);

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}
