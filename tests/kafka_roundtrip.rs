//! The Kafka plumbing against the embedded broker over TCP: idempotent keyed produce, a
//! two-member consumer group, offsets committed only for handled messages.

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use quakestream::{
    config::BrokerConfig,
    kafka::{
        KafkaSettings, TopicName,
        admin::Admin,
        consumer::{Consumer, StartFrom},
        embedded::EmbeddedBroker,
        producer::Producer,
    },
};
use rdkafka::{Message, consumer::Consumer as _};
use tokio_util::sync::CancellationToken;

const MESSAGES: usize = 10_000;
const GROUP: &str = "roundtrip-readers";

/// What one group member saw: (key, partition, offset) per message.
type Seen = Arc<Mutex<Vec<(String, i32, i64)>>>;

async fn member(
    settings: KafkaSettings,
    topic: TopicName,
    seen: Seen,
    assigned: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let consumer = Consumer::new(&settings, GROUP, StartFrom::Earliest, true).unwrap();
    consumer.subscribe(std::slice::from_ref(&topic)).unwrap();
    while !stop.load(Ordering::SeqCst) {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await;
        assigned.store(
            consumer.raw().assignment().map(|a| a.count()).unwrap_or(0),
            Ordering::SeqCst,
        );
        let Ok(Ok(message)) = next else { continue };
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        seen.lock()
            .unwrap()
            .push((key, message.partition(), message.offset()));
        consumer.handled(&message).unwrap();
    }
    consumer.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_keyed_messages_arrive_exactly_once_through_a_two_member_group() {
    let dir = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let config = BrokerConfig {
        listen: format!("127.0.0.1:{}", common::free_port()),
        ..BrokerConfig::default()
    };
    let broker = EmbeddedBroker::start(&config, dir.path(), shutdown.clone())
        .await
        .unwrap();
    let settings = KafkaSettings::for_bootstrap(broker.bootstrap());
    let admin = Admin::connect(&settings).await.unwrap();
    let topic: TopicName = "roundtrip".parse().unwrap();
    admin.create(&topic, 3, 1).await.unwrap();

    // Two members join before anything is produced, so each owns partitions from the start.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Vec<Seen> = vec![Seen::default(), Seen::default()];
    let assigned: Vec<Arc<AtomicUsize>> = vec![Arc::default(), Arc::default()];
    let members: Vec<_> = (0..2)
        .map(|i| {
            tokio::spawn(member(
                settings.clone(),
                topic.clone(),
                seen[i].clone(),
                assigned[i].clone(),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while assigned
        .iter()
        .map(|a| a.load(Ordering::SeqCst))
        .sum::<usize>()
        < 3
        || assigned.iter().any(|a| a.load(Ordering::SeqCst) == 0)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never split the 3 partitions between its 2 members"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let producer = Producer::new(&settings).unwrap();
    let deliveries: Vec<(String, i32, i64)> = futures::stream::iter(0..MESSAGES)
        .map(|i| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let key = format!("event-{i:05}");
                let payload = format!("{{\"n\":{i}}}");
                let d = producer
                    .send(topic.as_str(), Some(&key), payload.as_bytes(), None)
                    .await
                    .unwrap();
                (key, d.partition, d.offset)
            }
        })
        .buffer_unordered(500)
        .collect()
        .await;
    producer.flush().unwrap();
    let positions: HashSet<(i32, i64)> = deliveries.iter().map(|(_, p, o)| (*p, *o)).collect();
    assert_eq!(positions.len(), MESSAGES, "every send got its own offset");

    let total = || seen.iter().map(|s| s.lock().unwrap().len()).sum::<usize>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while total() < MESSAGES && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a duplicate the chance to show up before stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for m in members {
        m.await.unwrap();
    }

    let all: Vec<(String, i32, i64)> = seen
        .iter()
        .flat_map(|s| s.lock().unwrap().clone())
        .collect();
    assert_eq!(
        all.len(),
        MESSAGES,
        "each message exactly once, no more, no less"
    );
    let by_key: BTreeMap<&str, (i32, i64)> =
        all.iter().map(|(k, p, o)| (k.as_str(), (*p, *o))).collect();
    assert_eq!(by_key.len(), MESSAGES, "no key twice");
    for (key, partition, offset) in &deliveries {
        assert_eq!(
            by_key.get(key.as_str()),
            Some(&(*partition, *offset)),
            "{key}"
        );
    }
    for (i, s) in seen.iter().enumerate() {
        assert!(!s.lock().unwrap().is_empty(), "member {i} received nothing");
    }

    // Every handled message was committed: the group has no lag left.
    let description = admin.describe(&topic).await.unwrap();
    let end: i64 = description.partitions.iter().map(|p| p.end).sum();
    assert_eq!(end, MESSAGES as i64);
    let group = description
        .groups
        .iter()
        .find(|g| g.group == GROUP)
        .expect("the group's committed offsets");
    for p in &group.partitions {
        assert_eq!(p.committed, Some(p.end), "partition {}", p.partition);
    }
    assert_eq!(group.total(), 0);

    shutdown.cancel();
    broker.stopped().await.unwrap();
}
