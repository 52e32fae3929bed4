//! Regression: "a restarted window processor waits forever for its partitions".
//!
//! tansu 0.6 kept each group's members and leader in its database across restarts. A member
//! that rejoined after a crash was handed its dead incarnation's assignment; when its first
//! heartbeat then evicted it as timed out, the group kept the dead member as its leader, and
//! every member that joined after was a follower waiting for an assignment no leader would
//! send: no partitions, ever. The broker now forgets group members when it starts: a static
//! member that comes back after a broker restart, and then stalls in its polling (the window
//! processor stops polling while it rebuilds its state), has its partitions and keeps them.

mod common;

use std::time::{Duration, Instant};

use common::free_port;
use quakestream::{
    config::BrokerConfig,
    kafka::{
        KafkaSettings, TopicName,
        admin::Admin,
        consumer::{Consumer, StartFrom},
        embedded::EmbeddedBroker,
    },
};
use rdkafka::consumer::Consumer as _;
use tokio_util::sync::CancellationToken;

const GROUP: &str = "window-like";
/// Partitions of the two topics the member reads, as the window processor reads its input and
/// its repartition topic.
const PARTITIONS: usize = 5;

async fn start(
    config: &BrokerConfig,
    dir: &std::path::Path,
) -> (EmbeddedBroker, CancellationToken) {
    let stop = CancellationToken::new();
    let broker = EmbeddedBroker::start(config, dir, stop.clone())
        .await
        .expect("the broker starts");
    (broker, stop)
}

fn member(settings: &KafkaSettings) -> Consumer {
    let consumer = Consumer::with_properties(
        settings,
        GROUP,
        StartFrom::Earliest,
        false,
        &[("group.instance.id", "window-like-1".into())],
    )
    .unwrap();
    consumer
        .subscribe(&["input".parse().unwrap(), "repartition".parse().unwrap()])
        .unwrap();
    consumer
}

fn assigned(consumer: &Consumer) -> usize {
    consumer.raw().assignment().map(|a| a.count()).unwrap_or(0)
}

/// Polls for up to `limit`; the time it took to hold every partition, if it did.
async fn poll_until_assigned(consumer: &Consumer, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        if assigned(consumer) == PARTITIONS {
            return Some(started.elapsed());
        }
    }
    None
}

/// Polls for `period`: whether it held every partition at its end.
async fn poll_for(consumer: &Consumer, period: Duration) -> usize {
    let started = Instant::now();
    while started.elapsed() < period {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
    }
    assigned(consumer)
}

#[tokio::test(flavor = "multi_thread")]
async fn restarted_static_member_gets_its_partitions_back_and_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        listen: format!("127.0.0.1:{}", free_port()),
        ..Default::default()
    };
    let (broker, stop) = start(&config, dir.path()).await;
    let settings = KafkaSettings::for_bootstrap(broker.bootstrap());
    let admin = Admin::connect(&settings).await.unwrap();
    admin
        .create(&"input".parse::<TopicName>().unwrap(), 3, 1)
        .await
        .unwrap();
    admin
        .create(&"repartition".parse::<TopicName>().unwrap(), 2, 1)
        .await
        .unwrap();
    drop(admin);

    let first = member(&settings);
    assert!(
        poll_until_assigned(&first, Duration::from_secs(60))
            .await
            .is_some(),
        "the first member never got its partitions"
    );
    // The process dies: the member leaves no word (a static member never sends LeaveGroup on
    // close, as after a SIGKILL), then the broker goes.
    drop(first);
    stop.cancel();
    broker.stopped().await.unwrap();
    // Longer than the session timeout, so the dead member counts as timed out.
    tokio::time::sleep(Duration::from_secs(11)).await;

    let (broker, stop) = start(&config, dir.path()).await;
    let second = member(&settings);
    // The restarted window processor did not poll while it rebuilt its state: the group's
    // answer (its dead incarnation's assignment) waited for it while its heartbeats went on,
    // and the first of them evicted it as timed out, leaving the dead member the group's
    // leader for good.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let took = poll_until_assigned(&second, Duration::from_secs(60)).await;
    eprintln!("partitions back {took:?} after the pause");
    assert!(
        took.is_some(),
        "the restarted member never got its partitions"
    );
    assert_eq!(
        poll_for(&second, Duration::from_secs(10)).await,
        PARTITIONS,
        "the restarted member lost its partitions"
    );
    drop(second);
    stop.cancel();
    broker.stopped().await.unwrap();
}
