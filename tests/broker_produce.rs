//! What the embedded broker acknowledged survives `kill -9`, once.
//!
//! `quakestream broker` runs as a real process. An idempotent producer (librdkafka, as every
//! quakestream component produces) sends numbered records to a three-partition topic while the
//! broker is killed with SIGKILL at random moments and restarted on the same data directory and
//! address; the producer retries across each restart. Afterwards the topic is read back and
//! compared with the producer's own delivery reports:
//!
//! 1. every record whose delivery was reported as a success is on the topic exactly once;
//! 2. no record is on the topic twice (a batch stored before a kill and sent again after it is
//!    refused as a duplicate, not stored again);
//! 3. on each partition, the acknowledged records are in the order they were sent.
//!
//! The kill moments come from a generator whose seed is printed. `QS_PRODUCE_SEED` replays a
//! run's moments, `QS_PRODUCE_KILLS` sets the kills per run (default 3) and `QS_PRODUCE_RUNS`
//! the runs (default 1; soak it with more).

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use common::{Spawned, SplitMix, env_number, free_port, quakestream};
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::DeliveryResult,
    producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer},
};

const TOPIC: &str = "durable";
const PARTITIONS: i32 = 3;
/// Records sent per run: enough that every kill lands while batches are in flight.
const RECORDS: usize = 30_000;

/// What the producer's delivery reports said of each record (by number).
#[derive(Default)]
struct Reports {
    /// Acknowledged: (partition, offset).
    stored: HashMap<usize, (i32, i64)>,
    failed: HashMap<usize, String>,
}

struct Reporter(Arc<Mutex<Reports>>);

impl ClientContext for Reporter {}

impl ProducerContext for Reporter {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, number: Self::DeliveryOpaque) {
        let mut reports = self.0.lock().unwrap();
        match result {
            Ok(message) => {
                reports
                    .stored
                    .insert(*number, (message.partition(), message.offset()));
            }
            Err((e, _)) => {
                reports.failed.insert(*number, e.to_string());
            }
        }
    }
}

fn start_broker(dir: &Path, addr: &str) -> Spawned {
    let mut broker = Spawned::start(quakestream(dir).args(["broker", "--listen", addr]));
    broker.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    broker
}

fn create_topic(addr: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let settings = quakestream::kafka::KafkaSettings::for_bootstrap(addr);
        let admin = quakestream::kafka::admin::Admin::connect(&settings)
            .await
            .expect("admin");
        admin
            .create(&TOPIC.parse().unwrap(), PARTITIONS, 1)
            .await
            .expect("topic created");
    });
}

/// Every record on the topic: number → the (partition, offset) of each copy.
fn read_back(addr: &str) -> BTreeMap<usize, Vec<(i32, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "broker-produce-test")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut copies: BTreeMap<usize, Vec<(i32, i64)>> = BTreeMap::new();
    let mut at_end = vec![false; PARTITIONS as usize];
    let started = Instant::now();
    while !at_end.iter().all(|&end| end) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "reading back took over 2 minutes"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        match message {
            Ok(message) => {
                let payload = std::str::from_utf8(message.payload().expect("a value")).unwrap();
                let number: usize = payload
                    .strip_prefix("record ")
                    .and_then(|n| n.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("not a record of this test: {payload:?}"));
                copies
                    .entry(number)
                    .or_default()
                    .push((message.partition(), message.offset()));
                at_end[message.partition() as usize] = false;
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                at_end[partition as usize] = true;
            }
            Err(e) => panic!("reading back: {e}"),
        }
    }
    copies
}

#[test]
fn acknowledged_records_survive_broker_kills_exactly_once() {
    let runs = env_number("QS_PRODUCE_RUNS").unwrap_or(1);
    let kills = env_number("QS_PRODUCE_KILLS").unwrap_or(3);
    let first_seed = env_number("QS_PRODUCE_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    for run in 0..runs {
        let seed = first_seed.wrapping_add(run);
        println!("run {run}: QS_PRODUCE_SEED={seed} QS_PRODUCE_KILLS={kills}");
        produce_through_kills(seed, kills);
    }
}

fn produce_through_kills(seed: u64, kills: u64) {
    let mut moments = SplitMix(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut broker = start_broker(&data, &addr);
    create_topic(&addr);

    let reports = Arc::new(Mutex::new(Reports::default()));
    let producer: ThreadedProducer<Reporter> = ClientConfig::new()
        .set("bootstrap.servers", &addr)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        // Long enough to outlast every restart: a record fails only if the broker stays away.
        .set("message.timeout.ms", "180000")
        .set("reconnect.backoff.max.ms", "200")
        .create_with_context(Reporter(Arc::clone(&reports)))
        .expect("producer");
    let producer = Arc::new(producer);

    let sender = thread::spawn({
        let producer = Arc::clone(&producer);
        move || {
            for number in 0..RECORDS {
                let key = format!("key-{}", number % 97);
                let value = format!("record {number} {}", "x".repeat(number % 400));
                let mut record = BaseRecord::with_opaque_to(TOPIC, Box::new(number))
                    .key(&key)
                    .payload(&value);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        // The local queue is full while the broker is away: wait for room.
                        Err((_, back)) => {
                            record = back;
                            thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                // About 10,000 records a second at most: the run lasts a few seconds, and
                // the kills land among them.
                if number % 100 == 99 {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    });

    let mut in_flight_at_kill = Vec::new();
    for _ in 0..kills {
        thread::sleep(Duration::from_millis(100 + moments.below(900)));
        let acknowledged = reports.lock().unwrap().stored.len();
        in_flight_at_kill.push(acknowledged);
        broker.signal("KILL");
        broker.wait(Duration::from_secs(30));
        broker = start_broker(&data, &addr);
    }
    sender.join().unwrap();
    assert_eq!(
        producer
            .flush(Duration::from_secs(180))
            .map_err(|e| e.to_string()),
        Ok(()),
        "every record's delivery reported"
    );
    let reports = reports.lock().unwrap();
    println!(
        "acknowledged when each kill came: {in_flight_at_kill:?} of {RECORDS}; in the end \
         {} acknowledged, {} failed",
        reports.stored.len(),
        reports.failed.len()
    );
    assert!(
        in_flight_at_kill.iter().any(|&n| n < RECORDS),
        "no kill came before the last acknowledgement: the test proved nothing"
    );

    let copies = read_back(&addr);
    let mut problems = Vec::new();
    for (number, at) in &copies {
        if at.len() > 1 {
            problems.push(format!(
                "record {number} is on the topic {} times: {at:?}",
                at.len()
            ));
        }
    }
    for (number, stored) in &reports.stored {
        match copies.get(number) {
            None => problems.push(format!(
                "record {number} was acknowledged at {stored:?} and is lost"
            )),
            Some(at) if !at.contains(stored) => problems.push(format!(
                "record {number} was acknowledged at {stored:?} but is at {at:?}"
            )),
            Some(_) => {}
        }
    }
    // Per partition, acknowledged records in the order they were sent.
    let mut by_partition: BTreeMap<i32, Vec<(usize, i64)>> = BTreeMap::new();
    for (number, (partition, offset)) in &reports.stored {
        by_partition
            .entry(*partition)
            .or_default()
            .push((*number, *offset));
    }
    for (partition, mut records) in by_partition {
        records.sort();
        if let Some(pair) = records.windows(2).find(|pair| pair[0].1 >= pair[1].1) {
            problems.push(format!(
                "partition {partition}: record {} (offset {}) was sent before record {} \
                 (offset {})",
                pair[0].0, pair[0].1, pair[1].0, pair[1].1
            ));
        }
    }
    let failures: Vec<_> = reports.failed.iter().take(5).collect();
    assert!(
        problems.is_empty(),
        "seed {seed}: {} problems, the first: {:#?}\n(failed deliveries, first 5: {failures:?})",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
    drop(reports);
    broker.signal("INT");
    broker.wait(Duration::from_secs(30));
}
