//! Reads the quakes, window-results and alerts topics into the dashboard's [`Live`] state.
//!
//! Delivery semantics: none to keep. The feed is a read-only view: it is assigned every
//! partition from the earliest offset, joins no consumer group and commits nothing, so each
//! start rebuilds the state from Kafka and leaves no trace in `topics describe`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use rdkafka::{Message, Offset, TopicPartitionList, consumer::Consumer as _};
use tokio_util::sync::CancellationToken;

use super::state::{Live, Rejected};
use crate::{
    error::{Error, Result},
    kafka::{
        KafkaSettings, TopicName,
        admin::Admin,
        consumer::{Consumer, StartFrom},
    },
};

/// The topics the dashboard reads.
#[derive(Debug, Clone)]
pub struct Topics {
    pub quakes: TopicName,
    pub stats: TopicName,
    pub alerts: TopicName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Quakes,
    Stats,
    Alerts,
}

/// Reads until `shutdown`. The topics are created when missing (as every component does), so
/// the dashboard can start before the source has published anything.
pub async fn run(
    topics: &Topics,
    settings: &KafkaSettings,
    live: Arc<Live>,
    shutdown: CancellationToken,
) -> Result<()> {
    let admin = Admin::connect(settings).await?;
    let names = [
        topics.quakes.clone(),
        topics.stats.clone(),
        topics.alerts.clone(),
    ];
    admin.ensure_topics(&names).await?;

    let consumer = Consumer::new(
        settings,
        &format!("quakestream-web-{}", uuid::Uuid::new_v4().simple()),
        StartFrom::Earliest,
        false,
    )?;
    let mut assignment = TopicPartitionList::new();
    let mut kinds = HashMap::new();
    // (topic, partition) → the end offset when the feed started: caught up once all are read.
    let mut pending = HashMap::new();
    for (topic, kind) in [
        (&topics.quakes, Kind::Quakes),
        (&topics.stats, Kind::Stats),
        (&topics.alerts, Kind::Alerts),
    ] {
        kinds.insert(topic.as_str().to_string(), kind);
        for p in admin.partitions(topic).await? {
            assignment
                .add_partition_offset(topic.as_str(), p.id, Offset::Beginning)
                .map_err(Error::kafka("assigning partitions"))?;
            if p.end > p.start {
                pending.insert((topic.as_str().to_string(), p.id), p.end);
            }
        }
    }
    consumer
        .raw()
        .assign(&assignment)
        .map_err(Error::kafka("assigning partitions"))?;
    if pending.is_empty() {
        live.set_caught_up();
    }

    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "web feed: consumer error; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let now = chrono::Utc::now().timestamp_millis();
        let key = message.key().and_then(|k| std::str::from_utf8(k).ok());
        let payload = message.payload().unwrap_or_default();
        let result = match kinds.get(message.topic()) {
            Some(Kind::Quakes) => live.apply_quake(key, payload, now),
            Some(Kind::Stats) => live.apply_window(key, payload, now),
            Some(Kind::Alerts) => live.apply_alert(payload, now),
            None => Ok(()),
        };
        if let Err(Rejected::Bad(why)) = result {
            // The producers dead-letter what they cannot read; what reaches this view anyway
            // is counted (quakestream_web_bad_records_total) and named at debug level.
            tracing::debug!(
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                %why,
                "web feed: record not shown"
            );
        }
        if !pending.is_empty() {
            let at = (message.topic().to_string(), message.partition());
            if pending
                .get(&at)
                .is_some_and(|end| message.offset() + 1 >= *end)
            {
                pending.remove(&at);
                if pending.is_empty() {
                    live.set_caught_up();
                    tracing::info!(seq = live.seq(), "web feed: caught up with its topics");
                }
            }
        }
    }
}
