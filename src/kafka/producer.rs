//! The producer every component publishes with.
//!
//! Delivery semantics: idempotent (`enable.idempotence=true`, which implies `acks=all` and
//! ordered retries), so a retried send never writes a message twice and never reorders a
//! partition. A send resolves only when the broker has acknowledged the message; callers treat
//! their input as handled only after that.

use std::time::Duration;

use rdkafka::{
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};

use super::{Context, KafkaSettings, millis};
use crate::error::{Error, Result};

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<Context>,
    settings: KafkaSettings,
}

impl Producer {
    pub fn new(settings: &KafkaSettings) -> Result<Producer> {
        let inner = settings
            .client_config(&[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("compression.type", settings.compression.clone()),
                ("linger.ms", millis(settings.linger)),
                // A message not acknowledged by then fails instead of waiting forever.
                ("message.timeout.ms", millis(settings.timeout * 3)),
            ])
            .create_with_context(Context::default())
            .map_err(Error::kafka("creating the producer"))?;
        Ok(Producer {
            inner,
            settings: settings.clone(),
        })
    }

    /// Sends one message and waits for the broker's acknowledgement. `timestamp_ms` is the
    /// record's event time (milliseconds since the epoch); `None` lets the producer stamp it.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<Delivery> {
        self.send_with_headers(topic, key, payload, timestamp_ms, &[])
            .await
    }

    /// [`Producer::send`] with message headers (name, value).
    pub async fn send_with_headers(
        &self,
        topic: &str,
        key: Option<&str>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
        headers: &[(&str, &[u8])],
    ) -> Result<Delivery> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(topic).payload(payload).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        // The queue-full wait is bounded by message.timeout.ms.
        match self.inner.send(record, Duration::from_secs(0)).await {
            Ok(d) => Ok(Delivery {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((source, _)) => Err(Error::Kafka {
                what: "delivering a message",
                source,
            }),
        }
    }

    /// Queues one message without waiting for its acknowledgement and returns the wait.
    /// Messages queued in order to one partition land in that order (idempotence keeps retries
    /// in order too). `partition` `None` lets the key choose. Waits only while the local queue
    /// is full.
    pub async fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<impl std::future::Future<Output = Result<Delivery>> + use<>> {
        let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        loop {
            match self.inner.send_result(record) {
                Ok(wait) => {
                    return Ok(async move {
                        match wait.await {
                            Ok(Ok(d)) => Ok(Delivery {
                                partition: d.partition,
                                offset: d.offset,
                            }),
                            Ok(Err((source, _))) => Err(Error::Kafka {
                                what: "delivering a message",
                                source,
                            }),
                            Err(_) => Err(Error::Broker(
                                "the producer was dropped before the message was delivered".into(),
                            )),
                        }
                    });
                }
                Err((e, back))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((source, _)) => {
                    return Err(Error::Kafka {
                        what: "queueing a message",
                        source,
                    });
                }
            }
        }
    }

    /// A fatal error (an idempotence guarantee that can no longer be kept, say after the broker
    /// lost acknowledged state) leaves the producer unusable: the caller must make a new one.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    /// Drops every message still queued or in flight without waiting for them.
    pub fn purge(&self) {
        self.inner
            .purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
    }

    /// Waits until every queued message is delivered (or the timeout passes).
    pub fn flush(&self) -> Result<()> {
        super::off_worker(|| self.inner.flush(self.settings.timeout))
            .map_err(Error::kafka("flushing the producer"))
    }
}
