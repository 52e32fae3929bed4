//! Kafka plumbing: client settings, the producer, the consumer, the admin helper and the
//! embedded broker.
//!
//! Every client is built from [`KafkaSettings`]: quakestream's own properties first, then the
//! user's `[kafka]` properties verbatim, so SASL/SSL or any tuning needs no code.

pub mod admin;
pub mod consumer;
pub mod embedded;
pub mod front;
pub mod producer;
pub mod reader;
pub mod store;
pub mod topic;
mod wire;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rdkafka::{
    ClientConfig, ClientContext,
    client::OAuthToken,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

pub use topic::TopicName;

use crate::{config::Config, error::Error};

/// Everything a client needs to reach the cluster.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Whether `bootstrap` is quakestream's embedded broker (error messages; group listing).
    pub embedded: bool,
    /// Whether that broker runs in this very process (`up`): it starts and dies with its
    /// clients, so group members join dynamically (see `Consumer::with_properties`).
    pub in_process_broker: bool,
    pub client_id: String,
    pub timeout: Duration,
    pub compression: String,
    pub linger: Duration,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The user's librdkafka properties, applied last.
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    pub fn from_config(config: &Config) -> KafkaSettings {
        KafkaSettings {
            bootstrap: config.bootstrap(),
            embedded: config.embedded(),
            in_process_broker: false,
            client_id: config.client.id.clone(),
            timeout: config.client.timeout,
            compression: config.compression(),
            linger: config.client.linger,
            partitions: config.topics.partitions,
            replication_factor: config.topics.replication_factor,
            properties: config.kafka.clone(),
        }
    }

    /// Settings for a test or a tool that talks to one broker with defaults.
    pub fn for_bootstrap(bootstrap: impl Into<String>) -> KafkaSettings {
        KafkaSettings::from_config(&Config {
            brokers: Some(bootstrap.into()),
            ..Config::default()
        })
    }

    /// The properties every client shares, with the user's applied on top.
    pub(crate) fn client_config(&self, own: &[(&str, String)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id)
            .set("socket.connection.setup.timeout.ms", millis(self.timeout))
            .set("log.connection.close", "false");
        for (key, value) in own {
            config.set(*key, value);
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    /// A one-line error for a cluster that did not answer, naming the address and the way out.
    pub(crate) fn unreachable(&self, detail: Option<String>) -> Error {
        let detail = detail.unwrap_or_else(|| {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        });
        Error::Unreachable(if self.embedded {
            format!(
                "cannot reach the embedded broker at {} ({detail}): start it with \
                 `quakestream up` or `quakestream broker`, or point --brokers at a Kafka cluster",
                self.bootstrap
            )
        } else {
            format!(
                "cannot reach Kafka at {} ({detail}): check --brokers (or `brokers` \
                 in the config), or leave it unset to use the embedded broker",
                self.bootstrap
            )
        })
    }
}

/// FNV-1a: a hash that is the same in every process and release, for names and routing that
/// several processes must agree on (not for hash tables).
pub(crate) fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub(crate) fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// The client context: librdkafka's log lines go to `tracing` at debug level (its connection
/// chatter is noise for a user; our own errors say what went wrong), and the last global error is
/// kept so that a timeout can say *why* the cluster did not answer.
#[derive(Debug, Clone, Default)]
pub struct Context {
    last_error: Arc<Mutex<Option<String>>>,
    revoked: Arc<Mutex<Vec<(String, i32)>>>,
    /// A consumer's group, for its log lines.
    group: Option<Arc<str>>,
}

impl Context {
    /// The context of a consumer in `group`.
    pub fn for_group(group: &str) -> Context {
        Context {
            group: Some(group.into()),
            ..Context::default()
        }
    }

    /// Partitions taken away by rebalances since the last call: a stateful processor drops
    /// what it built for them (the next owner rebuilds it).
    pub fn take_revoked(&self) -> Vec<(String, i32)> {
        self.revoked
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}")
            }
            _ => tracing::debug!(target: "librdkafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason.to_string());
        }
    }

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        Err("OAUTHBEARER tokens come from librdkafka's own `sasl.oauthbearer.*` properties".into())
    }
}

impl ConsumerContext for Context {
    /// One line per assignment: when a member gets its partitions is what a restart waits for.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance
            && partitions.count() > 0
        {
            tracing::info!(
                group = self.group.as_deref().unwrap_or(""),
                partitions = partitions.count(),
                "partitions assigned"
            );
        }
    }

    /// Before partitions are taken away, commit what has been handled, so the next owner starts
    /// right after it instead of re-reading it.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance
            && partitions.count() > 0
        {
            if let Ok(mut revoked) = self.revoked.lock() {
                revoked.extend(
                    partitions
                        .elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition())),
                );
            }
            match off_worker(|| consumer.commit_consumer_state(CommitMode::Sync)) {
                Ok(()) => tracing::debug!("committed stored offsets before a rebalance"),
                // Nothing stored since the last commit.
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
                Err(e) => tracing::warn!(error = %e, "commit before a rebalance failed"),
            }
        }
    }
}

/// Runs a blocking Kafka call (a synchronous commit, a consumer's close) that may be made from
/// async code. On a multi-thread runtime it goes through `block_in_place`, so the worker's
/// other tasks move to another thread meanwhile: the embedded broker runs in the same runtime,
/// and a wait for its answer that held a worker could leave no thread to give that answer
/// (on this two-core machine, two such waits at once did). Elsewhere it simply runs.
pub(crate) fn off_worker<T>(call: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(call)
    } else {
        call()
    }
}
