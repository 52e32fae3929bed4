//! The embedded broker's storage: tansu's SQLite engine, wrapped.
//!
//! [`Store`] hands every call to tansu's engine except two:
//!
//! - **fetch**: tansu 0.6 serves a fetch with a query for the records and then one more query
//!   per record for its headers, each joining five tables; reading a partition back ran at
//!   about 17,000 records a second whatever the client. The store reads the same tables itself,
//!   over connections of its own: one query for the records from the offset asked for (stopping
//!   at the byte limit) and one for all their headers, then builds the batches. Reads never
//!   block tansu's writes (the database is in WAL mode).
//! - **produce**: after tansu has stored a batch, the store raises the partition's end offset in
//!   its [`Tide`] and wakes the fetches that wait for new records there (the front holds a
//!   client's fetch until then, see [`super::front`]).
//!
//! Nothing is written by the store: what tansu acknowledges is what it committed, as before.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use tansu_sans_io::{
    ConfigResource, ErrorCode, IsolationLevel, ListOffset, ScramMechanism,
    create_topics_request::CreatableTopic,
    delete_groups_response::DeletableGroupResult,
    delete_records_request::DeleteRecordsTopic,
    delete_records_response::DeleteRecordsTopicResult,
    describe_cluster_response::DescribeClusterBroker,
    describe_configs_response::DescribeConfigsResult,
    describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic,
    incremental_alter_configs_request::AlterConfigsResource,
    incremental_alter_configs_response::AlterConfigsResourceResponse,
    list_groups_response::ListedGroup,
    record::{Header, Record, deflated, inflated},
    txn_offset_commit_response::TxnOffsetCommitResponseTopic,
};
use tansu_storage::{
    BrokerRegistrationRequest, GroupDetail, ListOffsetResponse, MetadataResponse, NamedGroupDetail,
    OffsetCommitRequest, OffsetStage, ProducerIdResponse, Result, ScramCredential, Storage,
    StorageContainer, TopicId, Topition, TxnAddPartitionsRequest, TxnAddPartitionsResponse,
    TxnOffsetCommitRequest, UpdateError, Version,
};
use tokio::sync::Notify;
use url::Url;
use uuid::Uuid;

/// tansu's SQLite engine with fetches served by quakestream's own queries.
#[derive(Clone)]
pub struct Store {
    inner: StorageContainer,
    reads: Arc<Reads>,
    tide: Arc<Tide>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Wraps tansu's engine over the database at `db` (which tansu has opened and created).
    pub async fn new(inner: StorageContainer, cluster: &str, db: &Path) -> Result<Store> {
        let database = libsql::Builder::new_local(db).build().await?;
        Ok(Store {
            inner,
            reads: Arc::new(Reads {
                cluster: cluster.to_owned(),
                database,
                idle: Mutex::new(Vec::new()),
                topitions: Mutex::new(HashMap::new()),
            }),
            tide: Arc::new(Tide::default()),
        })
    }

    /// The partitions' end offsets, shared with the front.
    pub fn tide(&self) -> Arc<Tide> {
        Arc::clone(&self.tide)
    }

    /// The end offset (high watermark) of a partition: the tide's when it knows it, else
    /// tansu's, remembered.
    pub async fn end_offset(&self, topition: &Topition) -> Result<i64> {
        if let Some(end) = self.tide.end(topition) {
            return Ok(end);
        }
        let end = self.inner.offset_stage(topition).await?.high_watermark();
        Ok(self.tide.raise(topition, end))
    }

    /// The name of a topic known by its id.
    pub async fn topic_name(&self, id: Uuid) -> Result<Option<String>> {
        let metadata = self.inner.metadata(Some(&[TopicId::Id(id)])).await?;
        Ok(metadata
            .topics()
            .first()
            .and_then(|topic| topic.name.clone()))
    }

    /// Forgets what was remembered of topics and partitions (after one is deleted, or its
    /// records are).
    fn forget(&self) {
        self.tide.forget();
        lock(&self.reads.topitions).clear();
    }
}

/// The end offset of every partition written or asked about since the broker started, and a
/// wake-up for fetches waiting on any of them.
#[derive(Default)]
pub struct Tide {
    ends: Mutex<HashMap<Topition, i64>>,
    produced: Notify,
}

impl Tide {
    /// The end offset of `topition`, when known.
    pub fn end(&self, topition: &Topition) -> Option<i64> {
        lock(&self.ends).get(topition).copied()
    }

    /// Raises the known end offset of `topition` to at least `end`; returns the new value.
    fn raise(&self, topition: &Topition, end: i64) -> i64 {
        let mut ends = lock(&self.ends);
        let known = ends.entry(topition.clone()).or_insert(end);
        *known = (*known).max(end);
        *known
    }

    fn forget(&self) {
        lock(&self.ends).clear();
    }

    /// Resolves at the next produce after this call (to miss none, create it before checking
    /// the end offsets, then await it).
    pub fn produced(&self) -> tokio::sync::futures::Notified<'_> {
        self.produced.notified()
    }
}

/// Connections for reading, and the ids of partitions in tansu's tables.
struct Reads {
    cluster: String,
    database: libsql::Database,
    idle: Mutex<Vec<libsql::Connection>>,
    topitions: Mutex<HashMap<Topition, i64>>,
}

/// The records after an offset, in order. Byte counts stop the read in Rust: the rows are a
/// cursor, so what is not wanted is never read.
const RECORDS: &str = "select offset_id, attributes, timestamp, k, v, producer_id, producer_epoch \
     from record where topition = ?1 and offset_id >= ?2 order by offset_id";

/// The headers of a range of records, each record's in the order they were written.
const HEADERS: &str = "select offset_id, k, v from header \
     where topition = ?1 and offset_id >= ?2 and offset_id <= ?3 order by offset_id, rowid";

const TOPITION: &str = "select tp.id from cluster c join topic t on t.cluster = c.id \
     join topition tp on tp.topic = t.id where c.name = ?1 and t.name = ?2 and tp.partition = ?3";

/// The compression codec's bits of a batch's attributes.
const COMPRESSION: i16 = 0b111;

/// One stored record, as read.
struct Row {
    offset: i64,
    attributes: i16,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    producer_id: i64,
    producer_epoch: i16,
    headers: Vec<Header>,
}

impl Reads {
    fn connection(&self) -> Result<libsql::Connection> {
        if let Some(connection) = lock(&self.idle).pop() {
            return Ok(connection);
        }
        Ok(self.database.connect()?)
    }

    fn give_back(&self, connection: libsql::Connection) {
        let mut idle = lock(&self.idle);
        // As many as fetches ran at once; a handful at most.
        if idle.len() < 8 {
            idle.push(connection);
        }
    }

    async fn topition_id(
        &self,
        connection: &libsql::Connection,
        topition: &Topition,
    ) -> Result<Option<i64>> {
        if let Some(id) = lock(&self.topitions).get(topition) {
            return Ok(Some(*id));
        }
        let mut rows = connection
            .query(
                TOPITION,
                (
                    self.cluster.as_str(),
                    topition.topic(),
                    topition.partition(),
                ),
            )
            .await?;
        let Some(row) = rows.next().await? else {
            return Ok(None);
        };
        let id = row.get::<i64>(0)?;
        lock(&self.topitions).insert(topition.clone(), id);
        Ok(Some(id))
    }

    /// The records of `topition` from `offset`, `max_bytes` of keys and values at most (but
    /// always the first record); `None` when the partition is not in the tables.
    async fn rows(
        &self,
        connection: &libsql::Connection,
        topition: &Topition,
        offset: i64,
        max_bytes: u32,
    ) -> Result<Option<Vec<Row>>> {
        let Some(id) = self.topition_id(connection, topition).await? else {
            return Ok(None);
        };
        let mut found = Vec::new();
        let mut bytes = 0u64;
        let mut rows = connection.query(RECORDS, (id, offset)).await?;
        while let Some(row) = rows.next().await? {
            let key = row.get::<Option<Vec<u8>>>(3)?.map(Bytes::from);
            let value = row.get::<Option<Vec<u8>>>(4)?.map(Bytes::from);
            let size = key.as_ref().map_or(0, Bytes::len) + value.as_ref().map_or(0, Bytes::len);
            bytes += size as u64;
            if bytes > u64::from(max_bytes) && !found.is_empty() {
                break;
            }
            found.push(Row {
                offset: row.get::<i64>(0)?,
                // Stored uncompressed, served uncompressed: the codec the producer used (in
                // the low three bits) would make tansu compress every answer again, and each
                // client decompress it, for a loopback hop.
                attributes: row.get::<Option<i32>>(1)?.unwrap_or(0) as i16 & !COMPRESSION,
                timestamp: row.get::<Option<i64>>(2)?.unwrap_or(0),
                key,
                value,
                producer_id: row.get::<Option<i64>>(5)?.unwrap_or(-1),
                producer_epoch: row.get::<Option<i32>>(6)?.unwrap_or(-1) as i16,
                headers: Vec::new(),
            });
        }
        drop(rows);
        if let (Some(first), Some(last)) = (found.first(), found.last()) {
            let (first, last) = (first.offset, last.offset);
            let mut headers = connection.query(HEADERS, (id, first, last)).await?;
            let mut at = 0;
            while let Some(header) = headers.next().await? {
                let offset = header.get::<i64>(0)?;
                // Both are in offset order: move along the records to this header's.
                while at < found.len() && found[at].offset < offset {
                    at += 1;
                }
                let Some(row) = found.get_mut(at).filter(|row| row.offset == offset) else {
                    continue;
                };
                row.headers.push(Header {
                    key: header.get::<Option<Vec<u8>>>(1)?.map(Bytes::from),
                    value: header.get::<Option<Vec<u8>>>(2)?.map(Bytes::from),
                });
            }
        }
        Ok(Some(found))
    }
}

/// The batches holding `rows`: consecutive records written with the same attributes by the
/// same producer share one.
fn batches(rows: Vec<Row>) -> Result<Vec<deflated::Batch>> {
    let mut batches = Vec::new();
    let mut open: Option<inflated::Builder> = None;
    for row in rows {
        let builder = match open.take() {
            Some(builder)
                if builder.attributes == row.attributes
                    && builder.producer_id == row.producer_id
                    && builder.producer_epoch == row.producer_epoch =>
            {
                builder
            }
            other => {
                if let Some(builder) = other {
                    batches.push(deflated::Batch::try_from(builder.build()?)?);
                }
                inflated::Batch::builder()
                    .base_offset(row.offset)
                    .base_timestamp(row.timestamp)
                    .max_timestamp(row.timestamp)
                    .attributes(row.attributes)
                    .producer_id(row.producer_id)
                    .producer_epoch(row.producer_epoch)
            }
        };
        let offset_delta = i32::try_from(row.offset - builder.base_offset)?;
        let mut record = Record::builder()
            .offset_delta(offset_delta)
            .timestamp_delta(row.timestamp - builder.base_timestamp)
            .key(row.key)
            .value(row.value);
        for header in row.headers {
            let mut built = Header::builder();
            if let Some(key) = header.key {
                built = built.key(key);
            }
            if let Some(value) = header.value {
                built = built.value(value);
            }
            record = record.header(built);
        }
        let max_timestamp = builder.max_timestamp.max(row.timestamp);
        open = Some(
            builder
                .record(record)
                .last_offset_delta(offset_delta)
                .max_timestamp(max_timestamp),
        );
    }
    if let Some(builder) = open {
        batches.push(deflated::Batch::try_from(builder.build()?)?);
    }
    Ok(batches)
}

/// The mutexes hold plain maps and lists: a panic elsewhere cannot leave them inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl Storage for Store {
    async fn fetch(
        &self,
        topition: &Topition,
        offset: i64,
        min_bytes: u32,
        max_bytes: u32,
        isolation: IsolationLevel,
    ) -> Result<Vec<deflated::Batch>> {
        let connection = self.reads.connection()?;
        let rows = self
            .reads
            .rows(&connection, topition, offset, max_bytes)
            .await;
        if rows.is_ok() {
            self.reads.give_back(connection);
        }
        match rows? {
            Some(rows) => batches(rows),
            // Not a partition of the tables: tansu answers as it does.
            None => {
                self.inner
                    .fetch(topition, offset, min_bytes, max_bytes, isolation)
                    .await
            }
        }
    }

    async fn produce(
        &self,
        transaction_id: Option<&str>,
        topition: &Topition,
        batch: deflated::Batch,
    ) -> Result<i64> {
        let last_offset_delta = i64::from(batch.last_offset_delta);
        let base_offset = self.inner.produce(transaction_id, topition, batch).await?;
        self.tide
            .raise(topition, base_offset + last_offset_delta + 1);
        self.tide.produced.notify_waiters();
        Ok(base_offset)
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        let result = self.inner.delete_records(topics).await;
        self.forget();
        result
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        let result = self.inner.delete_topic(topic).await;
        self.forget();
        result
    }

    // Everything else is tansu's.

    async fn register_broker(&self, broker_registration: BrokerRegistrationRequest) -> Result<()> {
        self.inner.register_broker(broker_registration).await
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        self.inner.create_topic(topic, validate_only).await
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        self.inner.incremental_alter_resource(resource).await
    }

    async fn brokers(&self) -> Result<Vec<DescribeClusterBroker>> {
        self.inner.brokers().await
    }

    async fn offset_stage(&self, topition: &Topition) -> Result<OffsetStage> {
        self.inner.offset_stage(topition).await
    }

    async fn list_offsets(
        &self,
        isolation_level: IsolationLevel,
        offsets: &[(Topition, ListOffset)],
    ) -> Result<Vec<(Topition, ListOffsetResponse)>> {
        self.inner.list_offsets(isolation_level, offsets).await
    }

    async fn offset_commit(
        &self,
        group_id: &str,
        retention_time_ms: Option<Duration>,
        offsets: &[(Topition, OffsetCommitRequest)],
    ) -> Result<Vec<(Topition, ErrorCode)>> {
        self.inner
            .offset_commit(group_id, retention_time_ms, offsets)
            .await
    }

    async fn offset_fetch(
        &self,
        group_id: Option<&str>,
        topics: &[Topition],
        require_stable: Option<bool>,
    ) -> Result<BTreeMap<Topition, i64>> {
        self.inner
            .offset_fetch(group_id, topics, require_stable)
            .await
    }

    async fn committed_offset_topitions(&self, group_id: &str) -> Result<BTreeMap<Topition, i64>> {
        self.inner.committed_offset_topitions(group_id).await
    }

    async fn metadata(&self, topics: Option<&[TopicId]>) -> Result<MetadataResponse> {
        self.inner.metadata(topics).await
    }

    async fn upsert_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    ) -> Result<()> {
        self.inner
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        self.inner
            .delete_user_scram_credential(user, mechanism)
            .await
    }

    async fn user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<Option<ScramCredential>> {
        self.inner.user_scram_credential(user, mechanism).await
    }

    async fn describe_config(
        &self,
        name: &str,
        resource: ConfigResource,
        keys: Option<&[String]>,
    ) -> Result<DescribeConfigsResult> {
        self.inner.describe_config(name, resource, keys).await
    }

    async fn list_groups(&self, states_filter: Option<&[String]>) -> Result<Vec<ListedGroup>> {
        self.inner.list_groups(states_filter).await
    }

    async fn delete_groups(
        &self,
        group_ids: Option<&[String]>,
    ) -> Result<Vec<DeletableGroupResult>> {
        self.inner.delete_groups(group_ids).await
    }

    async fn describe_groups(
        &self,
        group_ids: Option<&[String]>,
        include_authorized_operations: bool,
    ) -> Result<Vec<NamedGroupDetail>> {
        self.inner
            .describe_groups(group_ids, include_authorized_operations)
            .await
    }

    async fn describe_topic_partitions(
        &self,
        topics: Option<&[TopicId]>,
        partition_limit: i32,
        cursor: Option<Topition>,
    ) -> Result<Vec<DescribeTopicPartitionsResponseTopic>> {
        self.inner
            .describe_topic_partitions(topics, partition_limit, cursor)
            .await
    }

    async fn update_group(
        &self,
        group_id: &str,
        detail: GroupDetail,
        version: Option<Version>,
    ) -> Result<Version, UpdateError<GroupDetail>> {
        self.inner.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        self.inner
            .init_producer(
                transaction_id,
                transaction_timeout_ms,
                producer_id,
                producer_epoch,
            )
            .await
    }

    async fn txn_add_offsets(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        group_id: &str,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        self.inner.txn_add_partitions(partitions).await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        self.inner.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        self.inner
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        self.inner.maintain(now).await
    }

    async fn cluster_id(&self) -> Result<String> {
        self.inner.cluster_id().await
    }

    async fn node(&self) -> Result<i32> {
        self.inner.node().await
    }

    async fn advertised_listener(&self) -> Result<Url> {
        self.inner.advertised_listener().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: i64, timestamp: i64, producer_id: i64, headers: &[(&str, &str)]) -> Row {
        Row {
            offset,
            attributes: 0,
            timestamp,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: (offset % 5 != 0).then(|| Bytes::from(format!("value {offset}"))),
            producer_id,
            producer_epoch: -1,
            headers: headers
                .iter()
                .map(|(k, v)| Header {
                    key: Some(Bytes::from(k.to_string())),
                    value: Some(Bytes::from(v.to_string())),
                })
                .collect(),
        }
    }

    #[test]
    fn rows_become_batches_that_read_back_the_same() {
        let rows = vec![
            row(
                10,
                1_000,
                -1,
                &[("id", "a"), ("updated", "1"), ("time", "2")],
            ),
            row(11, 900, -1, &[]),
            row(13, 1_500, -1, &[("id", "c")]),
            // Another producer: a batch of its own.
            row(14, 1_600, 7, &[("z", "last"), ("a", "first")]),
            row(15, 1_700, -1, &[]),
        ];
        let batches = batches(rows).expect("batches");
        assert_eq!(batches.len(), 3);
        let inflated: Vec<inflated::Batch> = batches
            .into_iter()
            .map(|b| inflated::Batch::try_from(b).expect("inflates"))
            .collect();

        let first = &inflated[0];
        assert_eq!(first.base_offset, 10);
        assert_eq!(first.last_offset_delta, 3, "a gap in offsets is kept");
        assert_eq!(first.base_timestamp, 1_000);
        assert_eq!(first.max_timestamp, 1_500);
        assert_eq!(first.producer_id, -1);
        let offsets: Vec<i32> = first.records.iter().map(|r| r.offset_delta).collect();
        assert_eq!(offsets, [0, 1, 3]);
        let times: Vec<i64> = first.records.iter().map(|r| r.timestamp_delta).collect();
        assert_eq!(times, [0, -100, 500]);
        let headers: Vec<(Bytes, Bytes)> = first.records[0]
            .headers
            .iter()
            .map(|h| (h.key.clone().unwrap(), h.value.clone().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                (Bytes::from("id"), Bytes::from("a")),
                (Bytes::from("updated"), Bytes::from("1")),
                (Bytes::from("time"), Bytes::from("2")),
            ]
        );
        assert_eq!(first.records[0].key, Some(Bytes::from("k10")));
        assert_eq!(first.records[0].value, None, "a null value stays null");
        assert_eq!(first.records[1].value, Some(Bytes::from("value 11")));

        let second = &inflated[1];
        assert_eq!((second.base_offset, second.producer_id), (14, 7));
        let names: Vec<Bytes> = second.records[0]
            .headers
            .iter()
            .map(|h| h.key.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [Bytes::from("z"), Bytes::from("a")],
            "header order kept"
        );
        assert_eq!(inflated[2].base_offset, 15);
    }

    #[test]
    fn no_rows_no_batches() {
        assert!(batches(Vec::new()).expect("batches").is_empty());
    }
}
