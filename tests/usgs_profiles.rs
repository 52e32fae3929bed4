//! The compatibility profiles: the course's `sismos` layout and the Snowflake tutorial's whole
//! FeatureCollections, each deduplicated across restarts like the default records.

mod common;

use std::{sync::Arc, time::Duration};

use common::{expected_revisions, fixture, read_topic, revision_sequence};
use quakestream::{
    fake::{FakeServer, Step},
    metrics::SourceMetrics,
    source::{publish::Profile, usgs::UsgsConfig},
};

/// Runs the source over `files` until the server has served them and one repeat.
async fn run_source(
    settings: &quakestream::kafka::KafkaSettings,
    profile: Profile,
    files: &[String],
) -> Arc<SourceMetrics> {
    let steps = files
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect();
    let server = FakeServer::start("127.0.0.1:0", steps).await.unwrap();
    let config = UsgsConfig {
        url: server.url("/summary/all_day.geojson"),
        interval: Some(Duration::from_millis(100)),
        profile,
        ..UsgsConfig::default()
    };
    let source = common::RunningSource::spawn(config, settings);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while server.pending() > 0 || server.requests() <= files.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            server.served()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = source.stop().await;
    server.stop();
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sismos_profile_writes_the_course_layout_once_per_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(dir.path()).await;
    let files = revision_sequence();

    run_source(&settings, Profile::Sismos, &files[..2]).await;
    // A restart reading the same and the next poll publishes only what is new.
    let second = run_source(&settings, Profile::Sismos, &files[1..3]).await;
    assert!(second.duplicates.get() > 0);

    let records = read_topic(&settings, "sismos").await;
    assert_eq!(records.len(), expected_revisions(&files[..3]).len());
    let feed: serde_json::Value = serde_json::from_slice(&fixture(&files[0])).unwrap();
    let first = &feed["features"][0];
    let (_, sismo) = records
        .iter()
        .find(|(key, _)| key == first["id"].as_str().unwrap())
        .expect("the first event");
    let fields: Vec<&str> = sismo
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields.len(),
        10,
        "{{id, magnitud, lugar, latitud, longitud, profundidad_km, timestamp, tsunami, updated, status}}: {fields:?}"
    );
    assert_eq!(
        sismo["updated"]
            .as_str()
            .and_then(quakestream::record::parse_millis),
        first["properties"]["updated"].as_i64()
    );
    assert_eq!(sismo["status"], first["properties"]["status"]);
    assert_eq!(sismo["magnitud"], first["properties"]["mag"]);
    assert_eq!(sismo["lugar"], first["properties"]["place"]);
    assert_eq!(sismo["longitud"], first["geometry"]["coordinates"][0]);
    assert_eq!(sismo["latitud"], first["geometry"]["coordinates"][1]);
    assert_eq!(sismo["profundidad_km"], first["geometry"]["coordinates"][2]);
    assert_eq!(sismo["tsunami"], false);
    assert!(
        sismo["timestamp"]
            .as_str()
            .unwrap()
            .starts_with("2025-05-0")
    );

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_feed_profile_writes_each_new_collection_whole_once() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(dir.path()).await;
    let files = revision_sequence();

    run_source(&settings, Profile::RawFeed, &files[..2]).await;
    run_source(&settings, Profile::RawFeed, &files[1..3]).await;

    let records = read_topic(&settings, "earthquake").await;
    let generated: Vec<i64> = records
        .iter()
        .map(|(_, feed)| {
            assert_eq!(feed["type"], "FeatureCollection");
            feed["metadata"]["generated"].as_i64().unwrap()
        })
        .collect();
    let expected: Vec<i64> = files[..3]
        .iter()
        .map(|f| {
            let feed: serde_json::Value = serde_json::from_slice(&fixture(f)).unwrap();
            feed["metadata"]["generated"].as_i64().unwrap()
        })
        .collect();
    let mut sorted = generated.clone();
    sorted.sort();
    assert_eq!(
        sorted, expected,
        "each poll's collection once, the repeated one not again"
    );

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}
