//! The USGS source through an outage of the broker: polls that cannot be published are retried
//! once the broker is back, and the topic ends with every revision exactly once.

mod common;

use std::time::Duration;

use common::{expected_revisions, fixture, read_topic, revision_of, revision_sequence};
use quakestream::{
    config::BrokerConfig,
    fake::{FakeServer, Step},
    kafka::embedded::EmbeddedBroker,
    source::{fetch::HttpConfig, usgs::UsgsConfig},
};
use tokio_util::sync::CancellationToken;

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let broker_config = BrokerConfig {
        listen: format!("127.0.0.1:{}", common::free_port()),
        ..BrokerConfig::default()
    };
    let stop_first = CancellationToken::new();
    let first = EmbeddedBroker::start(&broker_config, dir.path(), stop_first.clone())
        .await
        .unwrap();
    let mut settings = quakestream::kafka::KafkaSettings::for_bootstrap(first.bootstrap());
    settings.timeout = Duration::from_secs(2);

    let files = revision_sequence();
    let json = |f: &String| Step::Json(fixture(f).into());
    let server = FakeServer::start("127.0.0.1:0", files[..2].iter().map(json).collect())
        .await
        .unwrap();
    let config = UsgsConfig {
        url: server.url("/summary/all_day.geojson"),
        interval: Some(Duration::from_millis(150)),
        http: HttpConfig {
            timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..HttpConfig::default()
        },
        ..UsgsConfig::default()
    };
    let source = common::RunningSource::spawn(config, &settings);
    let metrics = source.metrics.clone();
    let before = expected_revisions(&files[..2]).len() as u64;
    until("the first two polls", || metrics.published.get() >= before).await;

    // The broker goes away; a new feed arrives meanwhile and cannot be published.
    stop_first.cancel();
    first.stopped().await.unwrap();
    server.push([json(&files[2])]);
    until("a failed publish", || metrics.errors("publish") >= 1).await;

    // The broker comes back on the same address and storage.
    let stop_second = CancellationToken::new();
    let second = EmbeddedBroker::start(&broker_config, dir.path(), stop_second.clone())
        .await
        .unwrap();
    let through_three = expected_revisions(&files[..3]).len() as u64;
    until("the third poll published after the outage", || {
        metrics.published.get() >= through_three
    })
    .await;
    server.push(files[3..].iter().map(json));
    until("the rest of the polls", || {
        server.pending() == 0 && metrics.published.get() >= expected_revisions(&files).len() as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    source.stop().await;

    let records = read_topic(&settings, "earthquakes").await;
    let mut seen = std::collections::BTreeSet::new();
    for (_, quake) in &records {
        assert!(seen.insert(revision_of(quake)), "published twice: {quake}");
    }
    assert_eq!(seen, expected_revisions(&files));

    stop_second.cancel();
    second.stopped().await.unwrap();
}
