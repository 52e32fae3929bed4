//! Reading a topic back from the start, without a consumer group: how components rebuild state
//! from Kafka, the source of truth.

use std::{collections::HashMap, time::Instant};

use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::BorrowedMessage,
};

use super::{Context, KafkaSettings};
use crate::error::{Error, Result};

/// Calls `f` for every message of `topic` that exists now (up to the end offsets read at the
/// start), partition by partition in offset order. Blocking: run it on the blocking pool.
/// Returns the number of messages read. A missing topic reads as empty.
pub fn scan(
    settings: &KafkaSettings,
    topic: &str,
    f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64> {
    let consumer = reader(settings)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), settings.timeout)
        .map_err(Error::kafka("reading topic metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ranges = HashMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, settings.timeout)
            .map_err(Error::kafka("reading offsets"))?;
        ranges.insert(partition, (low, high));
    }
    read_ranges(&consumer, settings, topic, ranges, f)
}

/// Calls `f` for every message of one partition in `[from, to)`, in offset order (fewer when
/// the partition's start is past `from`). Blocking: run it on the blocking pool. How a
/// processor rebuilds the state a partition's committed offset stands for.
pub fn scan_partition(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64> {
    if from >= to {
        return Ok(0);
    }
    let consumer = reader(settings)?;
    let (low, _) = consumer
        .fetch_watermarks(topic, partition, settings.timeout)
        .map_err(Error::kafka("reading offsets"))?;
    let ranges = HashMap::from([(partition, (from.max(low), to))]);
    read_ranges(&consumer, settings, topic, ranges, f)
}

/// A consumer that reads assigned partitions without a group's offsets.
fn reader(settings: &KafkaSettings) -> Result<BaseConsumer<Context>> {
    settings
        .client_config(&[
            ("group.id", format!("{}-scan", settings.client_id)),
            ("enable.auto.commit", "false".into()),
            ("enable.auto.offset.store", "false".into()),
            ("enable.partition.eof", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            // quakestream writes no transactions; and the embedded broker's last stable offset
            // can lag behind what it has stored.
            ("isolation.level", "read_uncommitted".into()),
        ])
        .create_with_context(Context::default())
        .map_err(Error::kafka("creating a topic reader"))
}

/// Reads `[start, end)` of each partition in `ranges`, giving up when nothing arrives for three
/// client timeouts.
fn read_ranges(
    consumer: &BaseConsumer<Context>,
    settings: &KafkaSettings,
    topic: &str,
    ranges: HashMap<i32, (i64, i64)>,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<u64> {
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for (partition, (start, end)) in ranges {
        if end > start {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .map_err(Error::kafka("assigning partitions"))?;
            remaining.insert(partition, end);
        }
    }
    if remaining.is_empty() {
        return Ok(0);
    }
    consumer
        .assign(&assignment)
        .map_err(Error::kafka("assigning partitions"))?;

    let mut read = 0;
    let mut last_progress = Instant::now();
    while !remaining.is_empty() {
        match consumer.poll(std::time::Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                let Some(&end) = remaining.get(&partition) else {
                    continue;
                };
                if message.offset() < end {
                    f(&message);
                    read += 1;
                }
                if message.offset() + 1 >= end {
                    remaining.remove(&partition);
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, topic, "error while reading back a topic");
            }
            None => {}
        }
        if last_progress.elapsed() > settings.timeout * 3 {
            return Err(Error::Broker(format!(
                "reading back {topic}: no progress for {:?} with {} partitions unfinished",
                settings.timeout * 3,
                remaining.len()
            )));
        }
    }
    Ok(read)
}
