//! The embedded broker's read path (kafka/store.rs and the front's fetch hold, kafka/front.rs),
//! seen by a plain librdkafka consumer over TCP: records come back exactly as they were
//! written, from any offset, and a fetch that waits for records is answered when one arrives,
//! not when its wait runs out.

mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use quakestream::kafka::{TopicName, admin::Admin, producer::Producer};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
};

/// What a consumer got back of one record.
#[derive(Debug, PartialEq)]
struct Read {
    offset: i64,
    payload: Option<Vec<u8>>,
    timestamp: Option<i64>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn consumer(bootstrap: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "broker-fetch-test")
        .set("enable.auto.commit", "false");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    config.create().expect("consumer")
}

/// Reads `want` records of `topic`'s partition 0 from `from`, keyed.
fn read(bootstrap: &str, topic: &str, from: Offset, want: usize) -> BTreeMap<String, Read> {
    let consumer = consumer(bootstrap, &[]);
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, from).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut out = BTreeMap::new();
    let start = Instant::now();
    while out.len() < want {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "read {} of {want}",
            out.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.expect("no consumer error");
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        let key = String::from_utf8(message.key().expect("key").to_vec()).unwrap();
        let read = Read {
            offset: message.offset(),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp: message.timestamp().to_millis(),
            headers,
        };
        assert!(out.insert(key, read).is_none(), "a record read twice");
    }
    out
}

fn payload(i: usize) -> Vec<u8> {
    // Mostly small, some large enough that a fetch answer is cut by its byte limit.
    let len = if i.is_multiple_of(97) {
        300_000
    } else {
        40 + i % 600
    };
    (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect()
}

/// An embedded broker with a topic of one partition, and settings for its clients.
async fn one_partition_topic(
    dir: &std::path::Path,
    name: &str,
) -> (
    quakestream::kafka::embedded::EmbeddedBroker,
    tokio_util::sync::CancellationToken,
    quakestream::kafka::KafkaSettings,
    TopicName,
) {
    let (broker, shutdown, mut settings) = common::embedded_broker(dir).await;
    settings.partitions = 1;
    let topic: TopicName = name.parse().unwrap();
    Admin::connect(&settings)
        .await
        .unwrap()
        .ensure_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    (broker, shutdown, settings, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_back_exactly_as_written_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, shutdown, settings, topic) = one_partition_topic(dir.path(), "fetch-check").await;
    let producer = Producer::new(&settings).unwrap();
    const N: usize = 1_500;
    let base_time = 1_700_000_000_000i64;
    for i in 0..N {
        let key = format!("k{i:05}");
        let time = i.to_string();
        let headers: Vec<(&str, &[u8])> = match i % 3 {
            0 => vec![],
            1 => vec![("ids", key.as_bytes())],
            _ => vec![
                ("ids", key.as_bytes()),
                ("updated", b""),
                ("time", time.as_bytes()),
            ],
        };
        // Timestamps not in offset order, as revisions arrive.
        let timestamp = base_time + ((i * 7919) % 5000) as i64;
        producer
            .send_with_headers(
                topic.as_str(),
                Some(&key),
                &payload(i),
                Some(timestamp),
                &headers,
            )
            .await
            .unwrap();
    }

    let bootstrap = broker.bootstrap().to_string();
    let all = tokio::task::spawn_blocking({
        let bootstrap = bootstrap.clone();
        move || read(&bootstrap, "fetch-check", Offset::Beginning, N)
    })
    .await
    .unwrap();
    for (n, (key, read)) in all.iter().enumerate() {
        let i = n;
        assert_eq!(key, &format!("k{i:05}"));
        assert_eq!(read.offset, i as i64, "{key}");
        assert_eq!(read.payload.as_deref(), Some(&payload(i)[..]), "{key}");
        assert_eq!(
            read.timestamp,
            Some(base_time + ((i * 7919) % 5000) as i64),
            "{key}"
        );
        let names: Vec<&str> = read.headers.iter().map(|(k, _)| k.as_str()).collect();
        let expected: &[&str] = match i % 3 {
            0 => &[],
            1 => &["ids"],
            _ => &["ids", "updated", "time"],
        };
        assert_eq!(names, expected, "{key}: headers in the order written");
        if i % 3 == 2 {
            assert_eq!(read.headers[1].1.as_deref().unwrap_or_default(), b"");
            assert_eq!(read.headers[2].1.as_deref(), Some(i.to_string().as_bytes()));
        }
    }

    // From an offset in the middle: that record first, and all that follow.
    let from = 1_234;
    let rest = tokio::task::spawn_blocking(move || {
        read(
            &bootstrap,
            "fetch-check",
            Offset::Offset(from),
            N - from as usize,
        )
    })
    .await
    .unwrap();
    let offsets: Vec<i64> = rest.values().map(|r| r.offset).collect();
    assert_eq!(offsets, (from..N as i64).collect::<Vec<_>>());

    shutdown.cancel();
    broker.stopped().await.unwrap();
}

/// Without the front's hold, tansu answers a fetch after sleeping half of its `max_wait_ms`
/// whatever it found: a record produced while a consumer waits with a 20 s wait reached it
/// after 10 s at the earliest. Held, the fetch is answered once the record is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_is_answered_when_a_record_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, shutdown, settings, topic) = one_partition_topic(dir.path(), "fetch-wait").await;
    let producer = Producer::new(&settings).unwrap();
    producer
        .send(topic.as_str(), Some("before"), b"{}", None)
        .await
        .unwrap();

    let bootstrap = broker.bootstrap().to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let waiting = tokio::task::spawn_blocking(move || {
        let consumer = consumer(&bootstrap, &[("fetch.wait.max.ms", "20000")]);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("fetch-wait", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
        // The record already there, then a fetch that waits.
        loop {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                assert_eq!(message.unwrap().key(), Some(&b"before"[..]));
                break;
            }
        }
        ready_tx.send(()).unwrap();
        loop {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                return (message.key().map(<[u8]>::to_vec), Instant::now());
            }
        }
    });
    ready_rx.recv().unwrap();
    // Let the consumer's next fetch reach the broker and start waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = Instant::now();
    producer
        .send(topic.as_str(), Some("after"), b"{}", None)
        .await
        .unwrap();
    let (key, arrived) = waiting.await.unwrap();
    assert_eq!(key.as_deref(), Some(&b"after"[..]));
    let took = arrived.duration_since(sent);
    assert!(
        took < Duration::from_secs(8),
        "the record reached the waiting consumer after {took:?}: the fetch was answered at its \
         deadline, not when the record arrived"
    );

    shutdown.cancel();
    broker.stopped().await.unwrap();
}
