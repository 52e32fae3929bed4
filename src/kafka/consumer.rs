//! The consumer every component reads with.
//!
//! Delivery semantics: at least once. Offsets are *stored* only when the caller says a message
//! has been handled ([`Consumer::handled`]); librdkafka commits stored offsets in the background,
//! before a rebalance takes partitions away, and [`Consumer::commit`] commits them synchronously
//! at shutdown. A crash therefore re-delivers what was not handled and skips nothing.

use rdkafka::{
    consumer::{CommitMode, Consumer as _, StreamConsumer},
    message::BorrowedMessage,
    types::RDKafkaErrorCode,
};

use super::{Context, KafkaSettings, TopicName};
use crate::error::{Error, Result};

/// Where a new group starts reading when it has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
}

/// A static group member id (`group.instance.id`): the same for a process restarted on the same
/// machine with the same data directory, different for every other process. A restarted
/// processor takes over its old membership at once instead of waiting for it to time out (and
/// the embedded broker, tansu 0.6, never hands partitions to a newcomer while a killed leader is
/// still a member).
pub fn static_member_id(group: &str, data_dir: &std::path::Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = super::stable_hash(host.bytes().chain(dir.to_string_lossy().bytes()));
    format!("{group}-{hash:016x}")
}

/// Kilobytes of prefetched messages a consumer holds at most (`queued.max.messages.kbytes`).
const QUEUED_KB: &str = "4096";

/// How long closing a consumer (leaving its group) may take before it is abandoned.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Consumer {
    /// Always `Some` until dropped; taken by `Drop` to close it on another thread.
    inner: Option<StreamConsumer<Context>>,
    settings: KafkaSettings,
    commits: bool,
}

impl Consumer {
    /// A member of `group`. With `commits` false the group's offsets are never committed (a
    /// throw-away group, as the console consumer uses).
    pub fn new(
        settings: &KafkaSettings,
        group: &str,
        start: StartFrom,
        commits: bool,
    ) -> Result<Consumer> {
        Consumer::with_properties(settings, group, start, commits, &[])
    }

    /// [`Consumer::new`] with extra librdkafka properties (the user's `[kafka]` ones still win).
    pub fn with_properties(
        settings: &KafkaSettings,
        group: &str,
        start: StartFrom,
        commits: bool,
        extra: &[(&str, String)],
    ) -> Result<Consumer> {
        let reset = match start {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        let mut own = vec![
            ("group.id", group.to_string()),
            ("enable.auto.commit", commits.to_string()),
            ("enable.auto.offset.store", "false".into()),
            ("auto.offset.reset", reset.into()),
            ("auto.commit.interval.ms", "1000".into()),
            ("session.timeout.ms", "10000".into()),
            ("heartbeat.interval.ms", "1000".into()),
            // librdkafka prefetches up to 64 MiB per consumer by default, which a component
            // catching up on a long topic fills and keeps (the window processor, with two
            // consumers, peaked at 347 MiB on 200,000 records). At 4 MiB a component catching
            // up reads as fast as at 16 MiB (the store answers a fetch at once when records
            // are there) and holds about 20-35 MiB less; at 2 MiB it read slower.
            ("queued.max.messages.kbytes", QUEUED_KB.into()),
            // Once the queue is over that, librdkafka waits `fetch.queue.backoff.ms` (1 s by
            // default) before it fetches again, whether or not the queue has drained
            // meanwhile: a component catching up idled for most of each second.
            ("fetch.queue.backoff.ms", "10".into()),
        ];
        // A static member id lets a restarted process take its old place in the group at once.
        // With the broker in this same process there is no old place to take: it restarted
        // too and forgot its members (`embedded::prepare_storage`). There a static member only
        // costs time: tansu 0.6 holds every static join and sync for 3 s, so a restart waited
        // about 7 s for its partitions. Dynamic members form the group in about a second. Their
        // session is long, so that a broker busy for a few seconds (a large fetch on SQLite)
        // does not evict them; a member that stops leaves the group itself (LeaveGroup).
        if settings.in_process_broker {
            own.push(("session.timeout.ms", "30000".into()));
            own.extend(
                extra
                    .iter()
                    .filter(|(key, _)| *key != "group.instance.id")
                    .cloned(),
            );
        } else {
            own.extend(extra.iter().cloned());
        }
        let inner = settings
            .client_config(&own)
            .create_with_context(Context::for_group(group))
            .map_err(Error::kafka("creating the consumer"))?;
        Ok(Consumer {
            inner: Some(inner),
            settings: settings.clone(),
            commits,
        })
    }

    /// A committing member of `group` under a static member id: `instance_id` when given, else
    /// [`static_member_id`] of the group and data directory. New groups start at the earliest
    /// offset. What the sinks read with.
    pub fn static_member(
        settings: &KafkaSettings,
        group: &str,
        instance_id: Option<&str>,
        data_dir: &std::path::Path,
    ) -> Result<Consumer> {
        let instance = instance_id
            .map(String::from)
            .unwrap_or_else(|| static_member_id(group, data_dir));
        Consumer::with_properties(
            settings,
            group,
            StartFrom::Earliest,
            false,
            &[("group.instance.id", instance)],
        )
    }

    pub fn subscribe(&self, topics: &[TopicName]) -> Result<()> {
        let names: Vec<&str> = topics.iter().map(TopicName::as_str).collect();
        self.raw()
            .subscribe(&names)
            .map_err(Error::kafka("subscribing"))
    }

    /// The next message. Errors are the consumer's, not a message's: the caller logs them and
    /// calls again, since librdkafka recovers from transient ones itself.
    pub async fn recv(&self) -> Result<BorrowedMessage<'_>> {
        self.raw().recv().await.map_err(Error::kafka("consuming"))
    }

    /// Marks a message as handled: its offset will be committed.
    pub fn handled(&self, message: &BorrowedMessage<'_>) -> Result<()> {
        self.raw()
            .store_offset_from_message(message)
            .map_err(Error::kafka("storing an offset"))
    }

    /// Commits every handled message now and waits for the broker's answer.
    pub fn commit(&self) -> Result<()> {
        if !self.commits {
            return Ok(());
        }
        match super::off_worker(|| self.raw().commit_consumer_state(CommitMode::Sync)) {
            Ok(()) => Ok(()),
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => Ok(()),
            // A rebalance took the partitions first (another member left or joined as this
            // one stopped): they are no longer ours to commit, and their new owner resumes
            // from the last commit, re-reading what this member handled since (at least once).
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AssignmentLost) => {
                tracing::warn!(
                    "final commit skipped: the partitions were reassigned first; their new owner \
                     re-reads from the last commit"
                );
                Ok(())
            }
            Err(e) => Err(Error::Kafka {
                what: "committing offsets",
                source: e,
            }),
        }
    }

    /// The partition's low and high watermarks as of the last fetch answer, without asking the
    /// broker (librdkafka keeps them from fetch responses). `None` before the first answer.
    pub fn cached_watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer lives as long as `self`; librdkafka only reads `topic` and
        // writes the two integers, which outlive the call. rdkafka 0.39 does not wrap this
        // cache-only variant of `fetch_watermarks`.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.raw().client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
            .then_some((low, high))
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// The underlying librdkafka consumer, for calls this wrapper does not cover.
    pub fn raw(&self) -> &StreamConsumer<Context> {
        self.inner
            .as_ref()
            .expect("the consumer is only taken when dropped")
    }
}

/// librdkafka's close leaves the group and waits for the group's answer; a coordinator that
/// never answers would hang the shutdown. The close runs on its own thread and is abandoned
/// after [`CLOSE_TIMEOUT`]: the group then drops the member when its session times out.
/// Offsets were committed before.
///
/// The wait must not hold a runtime worker: with the embedded broker in the same runtime, two
/// consumers dropped at once on a two-worker runtime left no thread to answer their
/// LeaveGroup, and every `up` took 10 s to stop with a warning. The wait therefore runs
/// [`off_worker`](super::off_worker).
impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let (done, closed) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("consumer-close".into())
            .spawn(move || {
                drop(inner);
                let _ = done.send(());
            });
        if spawned.is_err() {
            return;
        }
        if !super::off_worker(|| closed.recv_timeout(CLOSE_TIMEOUT).is_ok()) {
            tracing::warn!(
                "the consumer did not leave its group within {CLOSE_TIMEOUT:?}; abandoned (the \
                 group drops it when its session times out)"
            );
        }
    }
}
