//! The USGS source against the embedded broker and the fake feed server replaying recorded
//! polls: every revision exactly once, across faults and `kill -9`.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{expected_revisions, fixture, read_topic, revision_of, revision_sequence};
use quakestream::{
    fake::{FakeServer, Step},
    source::{fetch::HttpConfig, usgs::UsgsConfig},
};

const FEED_PATH: &str = "/earthquakes/feed/v1.0/summary/all_day.geojson";

fn config(url: String) -> UsgsConfig {
    UsgsConfig {
        url,
        interval: Some(Duration::from_millis(150)),
        http: HttpConfig {
            timeout: Duration::from_secs(1),
            max_bytes: 4 << 20,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        },
        ..UsgsConfig::default()
    }
}

fn json_steps(files: &[String]) -> Vec<Step> {
    files
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect()
}

/// Waits until the fake server has served its whole script and `extra` more requests.
async fn served_all(server: &FakeServer, extra: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while server.pending() > 0
        || server
            .served()
            .iter()
            .filter(|s| **s == "304" || **s == "repeat")
            .count()
            < extra
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "served only {:?}",
            server.served()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The published Quake records as (preferred id, updated), asserting none is there twice.
fn published_once(records: &[(String, serde_json::Value)]) -> BTreeSet<(String, i64)> {
    let mut seen = BTreeSet::new();
    for (key, quake) in records {
        let revision = revision_of(quake);
        assert_eq!(
            quake["id"].as_str(),
            Some(key.as_str()),
            "key is the record's id"
        );
        assert!(
            seen.insert(revision.clone()),
            "published twice: {revision:?}"
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revision_sequence_is_published_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(dir.path()).await;
    let files = revision_sequence();
    let server = FakeServer::start("127.0.0.1:0", json_steps(&files))
        .await
        .unwrap();

    let source = common::RunningSource::spawn(config(server.url(FEED_PATH)), &settings);
    served_all(&server, 3).await;
    let metrics = source.stop().await;

    let expected = expected_revisions(&files);
    assert_eq!(
        expected.len(),
        217,
        "the fixtures hold 217 distinct revisions"
    );
    let records = read_topic(&settings, "earthquakes").await;
    assert_eq!(published_once(&records), expected);
    assert_eq!(metrics.published.get(), 217);
    assert!(
        metrics.not_modified.get() >= 3,
        "unchanged polls are answered 304"
    );
    assert_eq!(metrics.errors_total(), 0);
    // The Kafka timestamp is the origin time: checked through a record's fields.
    let (_, first) = &records[0];
    assert!(first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["source"], "usgs");

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_survived_counted_and_followed_by_a_normal_publish() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(dir.path()).await;
    let files = revision_sequence();
    let first = fixture(&files[0]);
    let second = fixture(&files[1]);
    let mut bad_feature: serde_json::Value = serde_json::from_slice(&fixture(&files[2])).unwrap();
    // The recorded empty feed (no bbox), as if generated after the others.
    let mut empty: serde_json::Value = serde_json::from_slice(&fixture(
        "usgs/revision_sequence_2025-05-04/significant_hour_2025-05-04T135345Z.json",
    ))
    .unwrap();
    assert!(empty.get("bbox").is_none());
    empty["metadata"]["generated"] =
        serde_json::json!(bad_feature["metadata"]["generated"].as_i64().unwrap() + 60_000);
    bad_feature["features"][0]["geometry"]["coordinates"] = serde_json::json!(["east", 2]);
    let bad_id = bad_feature["features"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let steps = vec![
        Step::Json(first.clone().into()),
        Step::Status {
            code: 500,
            retry_after: None,
        },
        Step::Status {
            code: 429,
            retry_after: Some(1),
        },
        Step::Status {
            code: 503,
            retry_after: Some(1),
        },
        Step::Html,
        Step::Truncated(second.clone().into()),
        Step::Cut(second.clone().into()),
        Step::Hang(Duration::from_secs(3)),
        Step::Oversized(5 << 20),
        Step::Garbage,
        Step::Json(second.clone().into()),
        // Older than the feed already read: skipped.
        Step::Json(first.clone().into()),
        Step::Json(serde_json::to_vec(&bad_feature).unwrap().into()),
        // An empty feed with no bbox.
        Step::Json(serde_json::to_vec(&empty).unwrap().into()),
    ];
    let server = FakeServer::start("127.0.0.1:0", steps).await.unwrap();
    let source = common::RunningSource::spawn(config(server.url(FEED_PATH)), &settings);
    served_all(&server, 1).await;
    let metrics = source.stop().await;

    for (kind, n) in [
        ("server_error", 2),
        ("rate_limited", 1),
        ("content_type", 1),
        ("malformed", 2),
        ("truncated", 1),
        ("timeout", 1),
        ("too_large", 1),
    ] {
        let mut all = String::new();
        metrics.render(&mut all);
        assert_eq!(metrics.errors(kind), n, "errors of kind {kind}: {all}");
    }
    assert_eq!(metrics.stale_feeds.get(), 1);
    assert_eq!(metrics.dead_letters.get(), 1);

    // Everything good that was served is there exactly once.
    let mut expected = expected_revisions(&files[..3]);
    let bad_revision = (
        bad_id.clone(),
        bad_feature["features"][0]["properties"]["updated"]
            .as_i64()
            .unwrap(),
    );
    let from_first_two = expected_revisions(&files[..2]);
    if !from_first_two.contains(&bad_revision) {
        expected.remove(&bad_revision);
    }
    let records = read_topic(&settings, "earthquakes").await;
    assert_eq!(published_once(&records), expected);

    let letters = read_topic(&settings, "quakestream-dlq").await;
    assert_eq!(letters.len(), 1);
    let (key, letter) = &letters[0];
    assert_eq!(key, &bad_id);
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("\"east\" is not a number"),
        "{letter}"
    );
    assert_eq!(letter["source"], "usgs");
    assert!(letter["payload"].as_str().unwrap().contains("east"));

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}

/// `kill -9` of the source process between polls, then a restart: no duplicate, no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_polls_neither_duplicates_nor_loses() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("broker")).await;
    let files = revision_sequence();
    let server = FakeServer::start("127.0.0.1:0", json_steps(&files))
        .await
        .unwrap();
    let data = dir.path().join("data");
    let source = |server: &FakeServer| {
        let mut command = common::quakestream(&data);
        command.args([
            "--brokers",
            &settings.bootstrap,
            "run",
            "usgs",
            "--usgs-url",
            &server.url(FEED_PATH),
            "--interval",
            "300ms",
        ]);
        command
    };

    let mut first = common::Spawned::start(&mut source(&server));
    first.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    // Three polls published, then the process dies without any chance to clean up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.served().iter().filter(|s| **s == "json").count() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.served()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("KILL");
    first.wait(Duration::from_secs(30));
    let before_restart = read_topic(&settings, "earthquakes").await.len();
    assert!(before_restart > 0);

    let mut second = common::Spawned::start(&mut source(&server));
    second.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    served_all(&server, 3).await;
    second.signal("INT");
    assert!(second.wait(Duration::from_secs(60)).success());

    let records = read_topic(&settings, "earthquakes").await;
    assert_eq!(published_once(&records), expected_revisions(&files));

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}
