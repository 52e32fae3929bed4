//! Topic administration: make sure topics exist, list them, describe partitions and group lag.
//!
//! librdkafka's metadata and offset calls block, so they run on tokio's blocking pool.

use std::{collections::BTreeMap, sync::Arc};

use rdkafka::{
    Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    consumer::{BaseConsumer, Consumer},
    types::RDKafkaErrorCode,
};

use super::{Context, KafkaSettings, TopicName};
use crate::error::{Error, Result};

/// An admin connection to the cluster.
#[derive(Clone)]
pub struct Admin {
    client: Arc<AdminClient<Context>>,
    context: Context,
    settings: KafkaSettings,
}

/// One topic as `topics list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: usize,
    /// Messages currently stored: the sum over partitions of end minus start offset.
    pub messages: i64,
}

/// One partition of a described topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub id: i32,
    pub leader: i32,
    /// The first offset still stored.
    pub start: i64,
    /// The offset the next message will get (the high watermark).
    pub end: i64,
}

/// What one consumer group has committed on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartition {
    pub partition: i32,
    /// `None` when the group has committed nothing on this partition.
    pub committed: Option<i64>,
    pub end: i64,
    /// Messages the group has not committed yet.
    pub lag: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLag {
    pub group: String,
    pub partitions: Vec<GroupPartition>,
}

impl GroupLag {
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    /// Groups that have committed offsets on this topic.
    pub groups: Vec<GroupLag>,
}

impl Admin {
    /// Connects and checks that the cluster answers within the configured timeout.
    pub async fn connect(settings: &KafkaSettings) -> Result<Admin> {
        let context = Context::default();
        let client: AdminClient<Context> = settings
            .client_config(&[])
            .create_with_context(context.clone())
            .map_err(Error::kafka("creating the admin client"))?;
        let admin = Admin {
            client: Arc::new(client),
            context,
            settings: settings.clone(),
        };
        probe(settings).await?;
        admin.topic_names().await?;
        Ok(admin)
    }

    pub fn settings(&self) -> &KafkaSettings {
        &self.settings
    }

    /// Runs a blocking librdkafka call on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&AdminClient<Context>, &KafkaSettings) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let client = self.client.clone();
        let settings = self.settings.clone();
        tokio::task::spawn_blocking(move || f(&client, &settings))
            .await
            .map_err(|e| Error::Broker(format!("admin task failed: {e}")))?
    }

    /// Partition counts of every topic, or an [`Error::Unreachable`] naming the address.
    async fn topic_names(&self) -> Result<BTreeMap<String, Vec<(i32, i32)>>> {
        let context = self.context.clone();
        self.blocking(move |client, settings| {
            let metadata = client
                .inner()
                .fetch_metadata(None, settings.timeout)
                .map_err(|e| match e.rdkafka_error_code() {
                    Some(
                        RDKafkaErrorCode::OperationTimedOut
                        | RDKafkaErrorCode::BrokerTransportFailure
                        | RDKafkaErrorCode::AllBrokersDown
                        | RDKafkaErrorCode::Resolve,
                    ) => settings.unreachable(context.last_error().map(|e| {
                        format!(
                            "no answer within {}: {e}",
                            humantime::format_duration(settings.timeout)
                        )
                    })),
                    _ => Error::Kafka {
                        what: "reading cluster metadata",
                        source: e,
                    },
                })?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| !t.name().starts_with("__"))
                .map(|t| {
                    let partitions = t
                        .partitions()
                        .iter()
                        .map(|p| (p.id(), p.leader()))
                        .collect();
                    (t.name().to_string(), partitions)
                })
                .collect())
        })
        .await
    }

    /// Whether a topic exists.
    pub async fn exists(&self, topic: &TopicName) -> Result<bool> {
        Ok(self
            .topic_names()
            .await?
            .get(topic.as_str())
            .is_some_and(|p| !p.is_empty()))
    }

    /// Creates a topic; an existing topic is an error.
    pub async fn create(
        &self,
        topic: &TopicName,
        partitions: i32,
        replication_factor: i32,
    ) -> Result<()> {
        if partitions < 1 || replication_factor < 1 {
            return Err(Error::Config {
                origin: format!("topic {topic}"),
                message: format!(
                    "partitions ({partitions}) and replication factor ({replication_factor}) \
                     must be at least 1"
                ),
            });
        }
        let new = NewTopic::new(
            topic.as_str(),
            partitions,
            TopicReplication::Fixed(replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(self.settings.timeout));
        let results = self
            .client
            .create_topics([&new], &options)
            .await
            .map_err(Error::kafka("creating a topic"))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    return Err(Error::TopicExists(topic.to_string()));
                }
                Err((_, code)) => {
                    return Err(Error::Kafka {
                        what: "creating a topic",
                        source: rdkafka::error::KafkaError::AdminOp(code),
                    });
                }
            }
        }
        Ok(())
    }

    /// Creates the topics that do not exist yet, with the configured partitions and replication.
    /// Returns the names it created.
    pub async fn ensure_topics(&self, topics: &[TopicName]) -> Result<Vec<TopicName>> {
        let existing = self.topic_names().await?;
        let mut created = Vec::new();
        for topic in topics {
            if existing.get(topic.as_str()).is_some_and(|p| !p.is_empty()) {
                continue;
            }
            match self
                .create(
                    topic,
                    self.settings.partitions,
                    self.settings.replication_factor,
                )
                .await
            {
                Ok(()) => {
                    tracing::info!(topic = %topic, partitions = self.settings.partitions, "created topic");
                    created.push(topic.clone());
                }
                // Another process created it in the meantime.
                Err(Error::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(created)
    }

    /// Every topic with its partition count and stored message count.
    pub async fn list(&self) -> Result<Vec<TopicSummary>> {
        let topics = self.topic_names().await?;
        self.blocking(move |client, settings| {
            let mut out = Vec::new();
            for (name, partitions) in topics {
                let infos = watermarks(client, settings, &name, partitions)?;
                out.push(TopicSummary {
                    partitions: infos.len(),
                    messages: infos.iter().map(|p| p.end - p.start).sum(),
                    name,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The consumer groups the cluster knows.
    ///
    /// librdkafka's group listing sends ListGroups v0 and then DescribeGroups for every group.
    /// The embedded broker (tansu 0.6) answers v0 wrongly and fails every DescribeGroups with
    /// an ERROR in its log (it cannot read back the group state it stored), so against it
    /// the listing asks each broker with ListGroups v1 directly; elsewhere that is the
    /// fallback when the library call fails.
    pub async fn group_names(&self) -> Result<Vec<String>> {
        let mut names = if self.settings.embedded {
            self.list_groups_v1(None).await?
        } else {
            let listed = self
                .blocking(|client, settings| {
                    client
                        .inner()
                        .fetch_group_list(None, settings.timeout)
                        .map(|list| list.groups().iter().map(|g| g.name().to_string()).collect())
                        .map_err(Error::kafka("listing consumer groups"))
                })
                .await;
            match listed {
                Ok(names) => names,
                Err(first) => self.list_groups_v1(Some(first)).await?,
            }
        };
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Every broker's groups by ListGroups v1 over plain TCP. `earlier` is the library
    /// call's failure, named in the error when this fails too.
    async fn list_groups_v1(&self, earlier: Option<Error>) -> Result<Vec<String>> {
        let brokers = self
            .blocking(|client, settings| {
                let metadata = client
                    .inner()
                    .fetch_metadata(None, settings.timeout)
                    .map_err(Error::kafka("reading cluster metadata"))?;
                Ok(metadata
                    .brokers()
                    .iter()
                    .map(|b| format!("{}:{}", b.host(), b.port()))
                    .collect::<Vec<_>>())
            })
            .await?;
        let mut names = Vec::new();
        for broker in brokers {
            let listed =
                super::wire::list_groups(&broker, &self.settings.client_id, self.settings.timeout)
                    .await
                    .map_err(|e| match &earlier {
                        Some(first) => {
                            Error::Broker(format!("listing consumer groups ({first}; then {e})"))
                        }
                        None => Error::Broker(format!("listing consumer groups: {e}")),
                    })?;
            names.extend(listed);
        }
        Ok(names)
    }

    /// Every topic with its partitions and offsets, and every group's lag on every topic it
    /// committed offsets on: what the pipeline monitor shows. One metadata call, one watermark
    /// call per partition, one committed-offsets call per group.
    pub async fn overview(&self) -> Result<Vec<TopicDescription>> {
        let topics = self.topic_names().await?;
        let mut described = self
            .blocking(move |client, settings| {
                let mut out = Vec::new();
                for (name, partitions) in topics {
                    let partitions = watermarks(client, settings, &name, partitions)?;
                    out.push(TopicDescription {
                        name,
                        partitions,
                        groups: Vec::new(),
                    });
                }
                Ok(out)
            })
            .await?;
        let names = self.group_names().await?;
        self.blocking(move |_, settings| {
            for group in &names {
                for (topic, lag) in groups_lag(settings, group, &described)? {
                    described[topic].groups.push(lag);
                }
            }
            Ok(described)
        })
        .await
    }

    /// A topic's partitions with their leader, start and end offsets.
    pub async fn partitions(&self, topic: &TopicName) -> Result<Vec<PartitionInfo>> {
        let topics = self.topic_names().await?;
        let Some(partitions) = topics
            .get(topic.as_str())
            .filter(|p| !p.is_empty())
            .cloned()
        else {
            return Err(Error::UnknownTopic(topic.to_string()));
        };
        let name = topic.to_string();
        self.blocking(move |client, settings| watermarks(client, settings, &name, partitions))
            .await
    }

    /// Partitions, offsets and the lag of every group that committed offsets on the topic.
    pub async fn describe(&self, topic: &TopicName) -> Result<TopicDescription> {
        let infos = self.partitions(topic).await?;
        let names = self.group_names().await?;
        let mut described = vec![TopicDescription {
            name: topic.to_string(),
            partitions: infos,
            groups: Vec::new(),
        }];
        self.blocking(move |_, settings| {
            for group in &names {
                for (_, lag) in groups_lag(settings, group, &described)? {
                    described[0].groups.push(lag);
                }
            }
            Ok(described.remove(0))
        })
        .await
    }
}

/// Fails at once when no bootstrap address accepts a TCP connection (refused, unresolvable),
/// instead of waiting out the metadata timeout. Anything slower is left to librdkafka.
async fn probe(settings: &KafkaSettings) -> Result<()> {
    let wait = settings.timeout.min(std::time::Duration::from_secs(3));
    let mut reasons = Vec::new();
    for address in settings.bootstrap.split(',') {
        let address = address.trim();
        let address = address.split_once("://").map_or(address, |(_, a)| a);
        match tokio::time::timeout(wait, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) | Err(_) => return Ok(()),
            Ok(Err(e)) => reasons.push(format!("{address}: {e}")),
        }
    }
    Err(settings.unreachable(Some(reasons.join("; "))))
}

/// Each partition's leader, start and end offsets, in partition order.
fn watermarks(
    client: &AdminClient<Context>,
    settings: &KafkaSettings,
    topic: &str,
    partitions: Vec<(i32, i32)>,
) -> Result<Vec<PartitionInfo>> {
    let mut infos = Vec::new();
    for (id, leader) in partitions {
        let (start, end) = client
            .inner()
            .fetch_watermarks(topic, id, settings.timeout)
            .map_err(Error::kafka("reading offsets"))?;
        infos.push(PartitionInfo {
            id,
            leader,
            start,
            end,
        });
    }
    infos.sort_by_key(|p| p.id);
    Ok(infos)
}

/// Reads a group's committed offsets on every topic at once (without joining the group): (index into `topics`, lag) for
/// each topic it committed on.
fn groups_lag(
    settings: &KafkaSettings,
    group: &str,
    topics: &[TopicDescription],
) -> Result<Vec<(usize, GroupLag)>> {
    let consumer: BaseConsumer<Context> = settings
        .client_config(&[("group.id", group.to_string())])
        .create_with_context(Context::default())
        .map_err(Error::kafka("creating an offsets reader"))?;
    let mut wanted = TopicPartitionList::new();
    for t in topics {
        for p in &t.partitions {
            wanted.add_partition(&t.name, p.id);
        }
    }
    let committed = consumer
        .committed_offsets(wanted, settings.timeout)
        .map_err(Error::kafka("reading committed offsets"))?;
    let mut out = Vec::new();
    for (index, t) in topics.iter().enumerate() {
        if let Some(lag) = lag_of(group, &t.name, &t.partitions, &committed) {
            out.push((index, lag));
        }
    }
    Ok(out)
}

/// A group's lag on one topic from its committed offsets; `None` when it committed nothing.
fn lag_of(
    group: &str,
    topic: &str,
    partitions: &[PartitionInfo],
    committed: &TopicPartitionList,
) -> Option<GroupLag> {
    let mut out = Vec::new();
    let mut any = false;
    for p in partitions {
        let offset = committed
            .find_partition(topic, p.id)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        any |= offset.is_some();
        let lag = match offset {
            Some(o) => (p.end - o).max(0),
            None => p.end - p.start,
        };
        out.push(GroupPartition {
            partition: p.id,
            committed: offset,
            end: p.end,
            lag,
        });
    }
    any.then(|| GroupLag {
        group: group.to_string(),
        partitions: out,
    })
}
