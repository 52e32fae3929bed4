//! The embedded broker's storage: tansu's SQLite engine, wrapped.
//!
//! [`Store`] hands every call to tansu's engine except two:
//!
//! - **fetch**: tansu 0.6 serves a fetch with a query for the records and then one more query
//!   per record for its headers, each joining five tables; reading a partition back ran at
//!   about 17,000 records a second whatever the client. The store reads the same tables itself,
//!   over connections of its own: one query for the records from the offset asked for (stopping
//!   at the byte limit) and one for all their headers, then builds the batches. Reads never
//!   block writes (the database is in WAL mode).
//! - **produce**: tansu 0.6 prepares its insert statement again for every record and for each
//!   of a record's headers (about half of the broker's CPU while a producer sends). The store
//!   writes a batch that belongs to no transaction itself, into the same tables and in one
//!   SQLite transaction, with statements prepared once: the producer's sequence checked and
//!   advanced as tansu does (a gap is refused as out of order, an old epoch as fenced), the
//!   records and headers at the partition's end, the end moved. One thing differs, as in Kafka:
//!   a batch sent again because its acknowledgement was lost (the broker killed after the
//!   commit) is answered with the offset it was stored at, where tansu answers "duplicate" and
//!   the producer reports offsets that are not the records'; the last five batches of each
//!   producer and partition are remembered for that (`quakestream_batch`). Transactional
//!   batches go to tansu. Every write to the database, the store's and tansu's,
//!   takes one lock: SQLite has one writer at a time, and tansu's connections do not wait for
//!   a busy database, they fail.
//!
//! After a batch is stored the store raises the partition's end offset in its [`Tide`] and wakes
//! the fetches that wait for new records there (the front holds a client's fetch until then,
//! see [`super::front`]). A batch is acknowledged only once its SQLite transaction committed.

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
use tokio::sync::{Mutex as AsyncMutex, Notify};
use url::Url;
use uuid::Uuid;

/// tansu's SQLite engine with fetches served by quakestream's own queries.
#[derive(Clone)]
pub struct Store {
    inner: StorageContainer,
    reads: Arc<Reads>,
    writes: Arc<AsyncMutex<Writes>>,
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
        let writer = database.connect()?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        // As tansu sets its own connections: a header's record must exist, and a commit is
        // durable once in the write-ahead log (a killed process loses nothing it committed).
        writer.execute("PRAGMA foreign_keys = ON", ()).await?;
        writer.execute("PRAGMA synchronous = normal", ()).await?;
        Ok(Store {
            inner,
            writes: Arc::new(AsyncMutex::new(Writes {
                cluster: cluster.to_owned(),
                connection: writer,
                statements: None,
            })),
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

/// How long the store's writer waits for a database another connection is writing (only
/// tansu's own maintenance could, outside the lock) before it gives up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The statements of the store's produce, prepared once on its write connection.
struct Statements {
    /// The current epoch of a producer id, and that epoch's row.
    epoch: libsql::Statement,
    /// A producer epoch's next sequence number on a partition.
    sequence: libsql::Statement,
    /// Sets it.
    advance: libsql::Statement,
    /// Where one of a producer's last batches on a partition went.
    sent: libsql::Statement,
    /// Remembers where a batch went.
    remember: libsql::Statement,
    /// Forgets all but the last few batches of a producer on a partition.
    forget_old: libsql::Statement,
    /// The end of a partition.
    high: libsql::Statement,
    /// Moves it.
    move_high: libsql::Statement,
    record: libsql::Statement,
    header: libsql::Statement,
}

const EPOCH: &str = "select pe.id, pe.epoch from cluster c join producer p on p.cluster = c.id \
     join producer_epoch pe on pe.producer = p.id where c.name = ?1 and p.id = ?2 \
     order by pe.epoch desc limit 1";
const SEQUENCE: &str =
    "select sequence from producer_detail where producer_epoch = ?1 and topition = ?2";
const ADVANCE: &str = "insert into producer_detail (producer_epoch, topition, sequence) \
     values (?1, ?2, ?3) on conflict (producer_epoch, topition) \
     do update set sequence = excluded.sequence, last_updated = current_timestamp";
const SENT: &str = "select base_offset from quakestream_batch \
     where producer_epoch = ?1 and topition = ?2 and base_sequence = ?3 and last_sequence = ?4";
const REMEMBER: &str = "insert or replace into quakestream_batch \
     (producer_epoch, topition, base_sequence, last_sequence, base_offset) \
     values (?1, ?2, ?3, ?4, ?5)";
/// Keeps a producer's last five batches on a partition: as many as an idempotent producer may
/// have in flight (Kafka's limit, and librdkafka's).
const FORGET_OLD: &str = "delete from quakestream_batch \
     where producer_epoch = ?1 and topition = ?2 and base_sequence not in \
     (select base_sequence from quakestream_batch where producer_epoch = ?1 and topition = ?2 \
      order by base_sequence desc limit 5)";
const HIGH: &str = "select high from watermark where topition = ?1";
const MOVE_HIGH: &str = "update watermark set low = coalesce(low, 0), high = ?2, \
     last_updated = current_timestamp where topition = ?1";
const RECORD: &str = "insert into record \
     (topition, offset_id, attributes, producer_id, producer_epoch, timestamp, k, v) \
     values (?1, ?2, ?3, null, null, ?4, ?5, ?6)";
const HEADER: &str = "insert into header (topition, offset_id, k, v) values (?1, ?2, ?3, ?4)";

impl Statements {
    async fn prepare(connection: &libsql::Connection) -> Result<Statements> {
        Ok(Statements {
            epoch: connection.prepare(EPOCH).await?,
            sequence: connection.prepare(SEQUENCE).await?,
            advance: connection.prepare(ADVANCE).await?,
            sent: connection.prepare(SENT).await?,
            remember: connection.prepare(REMEMBER).await?,
            forget_old: connection.prepare(FORGET_OLD).await?,
            high: connection.prepare(HIGH).await?,
            move_high: connection.prepare(MOVE_HIGH).await?,
            record: connection.prepare(RECORD).await?,
            header: connection.prepare(HEADER).await?,
        })
    }
}

/// The store's write connection; its lock is the one every write to the database takes.
struct Writes {
    cluster: String,
    connection: libsql::Connection,
    /// Prepared at the first produce.
    statements: Option<Statements>,
}

/// What a produce needs of a batch's header, read before its records are.
struct Producer {
    id: i64,
    epoch: i16,
    base_sequence: i32,
    idempotent: bool,
}

impl Writes {
    /// Stores a batch that belongs to no transaction at the end of `topition`; its base offset.
    /// `Ok(None)` when the store leaves the batch to tansu: one whose record count disagrees
    /// with its last offset delta (tansu stores it as it does).
    async fn produce(
        &mut self,
        reads: &Reads,
        topition: &Topition,
        batch: &deflated::Batch,
    ) -> Result<Option<i64>> {
        let Some(partition) = reads.topition_id(&self.connection, topition).await? else {
            // What tansu answers for a batch without a producer id (for one with, its storage
            // task panics on a query that finds no row).
            return Err(tansu_storage::Error::Api(
                ErrorCode::UnknownTopicOrPartition,
            ));
        };
        let producer = Producer {
            id: batch.producer_id,
            epoch: batch.producer_epoch,
            base_sequence: batch.base_sequence,
            idempotent: batch.is_idempotent(),
        };
        let inflated = inflated::Batch::try_from(batch.clone())?;
        if i64::try_from(inflated.records.len()).ok()
            != Some(i64::from(batch.last_offset_delta) + 1)
        {
            return Ok(None);
        }
        if self.statements.is_none() {
            self.statements = Some(Statements::prepare(&self.connection).await?);
        }
        self.connection.execute("BEGIN IMMEDIATE", ()).await?;
        let stored = self.store(partition, &producer, &inflated).await;
        let committed = match stored {
            Ok(base) => self
                .connection
                .execute("COMMIT", ())
                .await
                .map(|_| base)
                .map_err(StoreError::Sql),
            Err(e) => Err(e),
        };
        match committed {
            Ok(base) => Ok(Some(base)),
            Err(e) => {
                // Whatever failed, nothing of the batch stays (and the connection is left out
                // of any transaction for the next one).
                if !self.connection.is_autocommit() {
                    let _ = self.connection.execute("ROLLBACK", ()).await;
                }
                Err(e.into())
            }
        }
    }

    /// The writes of one produce, inside its transaction.
    async fn store(
        &self,
        partition: i64,
        producer: &Producer,
        batch: &inflated::Batch,
    ) -> std::result::Result<i64, StoreError> {
        let statements = self
            .statements
            .as_ref()
            .ok_or(StoreError::Api(ErrorCode::UnknownServerError))?;
        let count = i64::try_from(batch.records.len()).unwrap_or(i64::MAX);
        let mut remembered = None;
        if producer.idempotent {
            let (epoch_row, current) = first(
                &statements.epoch,
                (self.cluster.as_str(), producer.id),
                |row| Ok((row.get::<i64>(0)?, row.get::<i32>(1)?)),
            )
            .await?
            .ok_or(StoreError::Api(ErrorCode::UnknownProducerId))?;
            let expected = first(&statements.sequence, (epoch_row, partition), |row| {
                row.get::<i64>(0)
            })
            .await?
            .unwrap_or(0);
            let base_sequence = i64::from(producer.base_sequence);
            let last_sequence = base_sequence + count - 1;
            match check_sequence(current, expected, i32::from(producer.epoch), base_sequence) {
                Ok(()) => {}
                Err(StoreError::Api(ErrorCode::DuplicateSequenceNumber)) => {
                    // Sent again, most likely because the acknowledgement was lost (the broker
                    // was killed after the commit): if it is one of the last batches, it is
                    // answered as it was the first time, as Kafka does, and stored once.
                    let sent = first(
                        &statements.sent,
                        (epoch_row, partition, base_sequence, last_sequence),
                        |row| row.get::<i64>(0),
                    )
                    .await?;
                    return sent.ok_or(StoreError::Api(ErrorCode::DuplicateSequenceNumber));
                }
                Err(e) => return Err(e),
            }
            execute(
                &statements.advance,
                (epoch_row, partition, expected + count),
            )
            .await?;
            remembered = Some((epoch_row, base_sequence, last_sequence));
        }
        let high = first(&statements.high, [partition], |row| {
            row.get::<Option<i64>>(0)
        })
        .await?
        .ok_or(StoreError::Api(ErrorCode::UnknownTopicOrPartition))?
        .unwrap_or(0);
        for (delta, record) in (0i64..).zip(batch.records.iter()) {
            let offset = high + delta;
            execute(
                &statements.record,
                (
                    partition,
                    offset,
                    i32::from(batch.attributes),
                    batch.base_timestamp + record.timestamp_delta,
                    record.key.as_deref(),
                    record.value.as_deref(),
                ),
            )
            .await?;
            for header in &record.headers {
                execute(
                    &statements.header,
                    (
                        partition,
                        offset,
                        header.key.as_deref(),
                        header.value.as_deref(),
                    ),
                )
                .await?;
            }
        }
        execute(&statements.move_high, (partition, high + count)).await?;
        if let Some((epoch_row, base_sequence, last_sequence)) = remembered {
            execute(
                &statements.remember,
                (epoch_row, partition, base_sequence, last_sequence, high),
            )
            .await?;
            execute(&statements.forget_old, (epoch_row, partition)).await?;
        }
        Ok(high)
    }
}

/// Runs a prepared statement that returns no rows, leaving it reset for the next call.
async fn execute(
    statement: &libsql::Statement,
    params: impl libsql::params::IntoParams,
) -> std::result::Result<usize, libsql::Error> {
    statement.reset();
    let result = statement.execute(params).await;
    statement.reset();
    result
}

/// What `read` takes from the first row of a prepared query (`None`: no rows), leaving the
/// statement reset for the next call.
async fn first<T>(
    statement: &libsql::Statement,
    params: impl libsql::params::IntoParams,
    read: impl FnOnce(&libsql::Row) -> std::result::Result<T, libsql::Error>,
) -> std::result::Result<Option<T>, libsql::Error> {
    statement.reset();
    let result = async {
        let mut rows = statement.query(params).await?;
        match rows.next().await? {
            Some(row) => read(&row).map(Some),
            None => Ok(None),
        }
    }
    .await;
    statement.reset();
    result
}

/// The errors of a produce: a Kafka error code for the client, or the database's.
#[derive(Debug)]
enum StoreError {
    Api(ErrorCode),
    Sql(libsql::Error),
}

impl From<libsql::Error> for StoreError {
    fn from(e: libsql::Error) -> StoreError {
        StoreError::Sql(e)
    }
}

impl From<StoreError> for tansu_storage::Error {
    fn from(e: StoreError) -> tansu_storage::Error {
        match e {
            StoreError::Api(code) => tansu_storage::Error::Api(code),
            StoreError::Sql(e) => e.into(),
        }
    }
}

/// The idempotent producer's checks, as tansu (and Kafka) make them: the batch's epoch must be
/// the producer's current one, and its first sequence number the one after the last batch's on
/// this partition (`expected`).
fn check_sequence(
    current_epoch: i32,
    expected: i64,
    epoch: i32,
    base_sequence: i64,
) -> std::result::Result<(), StoreError> {
    use std::cmp::Ordering;
    let code = match current_epoch.cmp(&epoch) {
        Ordering::Greater => ErrorCode::ProducerFenced,
        Ordering::Less => ErrorCode::InvalidProducerEpoch,
        Ordering::Equal => match expected.cmp(&base_sequence) {
            Ordering::Equal => return Ok(()),
            Ordering::Greater => ErrorCode::DuplicateSequenceNumber,
            Ordering::Less => ErrorCode::OutOfOrderSequenceNumber,
        },
    };
    Err(StoreError::Api(code))
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
        let mut writes = self.writes.lock().await;
        let ours = transaction_id.is_none() && !batch.is_transactional() && !batch.is_control();
        let stored = if ours {
            writes.produce(&self.reads, topition, &batch).await?
        } else {
            None
        };
        let base_offset = match stored {
            Some(base_offset) => base_offset,
            None => self.inner.produce(transaction_id, topition, batch).await?,
        };
        drop(writes);
        self.tide
            .raise(topition, base_offset + last_offset_delta + 1);
        self.tide.produced.notify_waiters();
        Ok(base_offset)
    }

    async fn delete_records(
        &self,
        topics: &[DeleteRecordsTopic],
    ) -> Result<Vec<DeleteRecordsTopicResult>> {
        let _writing = self.writes.lock().await;
        let result = self.inner.delete_records(topics).await;
        self.forget();
        result
    }

    async fn delete_topic(&self, topic: &TopicId) -> Result<ErrorCode> {
        let _writing = self.writes.lock().await;
        let result = self.inner.delete_topic(topic).await;
        self.forget();
        result
    }

    // Everything else is tansu's.

    async fn register_broker(&self, broker_registration: BrokerRegistrationRequest) -> Result<()> {
        let _writing = self.writes.lock().await;
        self.inner.register_broker(broker_registration).await
    }

    async fn create_topic(&self, topic: CreatableTopic, validate_only: bool) -> Result<Uuid> {
        let _writing = self.writes.lock().await;
        self.inner.create_topic(topic, validate_only).await
    }

    async fn incremental_alter_resource(
        &self,
        resource: AlterConfigsResource,
    ) -> Result<AlterConfigsResourceResponse> {
        let _writing = self.writes.lock().await;
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
        let _writing = self.writes.lock().await;
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
        let _writing = self.writes.lock().await;
        self.inner
            .upsert_user_scram_credential(user, mechanism, credential)
            .await
    }

    async fn delete_user_scram_credential(
        &self,
        user: &str,
        mechanism: ScramMechanism,
    ) -> Result<()> {
        let _writing = self.writes.lock().await;
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
        let _writing = self.writes.lock().await;
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
        let _writing = self.writes.lock().await;
        self.inner.update_group(group_id, detail, version).await
    }

    async fn init_producer(
        &self,
        transaction_id: Option<&str>,
        transaction_timeout_ms: i32,
        producer_id: Option<i64>,
        producer_epoch: Option<i16>,
    ) -> Result<ProducerIdResponse> {
        let _writing = self.writes.lock().await;
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
        let _writing = self.writes.lock().await;
        self.inner
            .txn_add_offsets(transaction_id, producer_id, producer_epoch, group_id)
            .await
    }

    async fn txn_add_partitions(
        &self,
        partitions: TxnAddPartitionsRequest,
    ) -> Result<TxnAddPartitionsResponse> {
        let _writing = self.writes.lock().await;
        self.inner.txn_add_partitions(partitions).await
    }

    async fn txn_offset_commit(
        &self,
        offsets: TxnOffsetCommitRequest,
    ) -> Result<Vec<TxnOffsetCommitResponseTopic>> {
        let _writing = self.writes.lock().await;
        self.inner.txn_offset_commit(offsets).await
    }

    async fn txn_end(
        &self,
        transaction_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        committed: bool,
    ) -> Result<ErrorCode> {
        let _writing = self.writes.lock().await;
        self.inner
            .txn_end(transaction_id, producer_id, producer_epoch, committed)
            .await
    }

    async fn maintain(&self, now: SystemTime) -> Result<()> {
        let _writing = self.writes.lock().await;
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

/// The store's produce against tansu's own, call for call: two databases, the same script of
/// batches (in order, retried, with gaps, from old and unknown epochs and producers, without a
/// producer), the same answers, and the same records read back.
#[cfg(test)]
mod produce_tests {
    use super::*;
    use tansu_sans_io::record::header;

    /// A fresh database: tansu's engine over it, and the store wrapping a second handle.
    async fn engine(dir: &Path, name: &str) -> (StorageContainer, std::path::PathBuf) {
        let db = dir.join(name);
        let url = super::super::embedded::storage_url(&db).expect("url");
        let engine = StorageContainer::builder()
            .cluster_id("test".to_owned())
            .node_id(1)
            .advertised_listener(Url::parse("tcp://127.0.0.1:9092").expect("url"))
            .storage(url)
            .silent(true)
            .build()
            .await
            .expect("tansu's engine");
        engine
            .register_broker(BrokerRegistrationRequest {
                broker_id: 1,
                cluster_id: "test".to_owned(),
                incarnation_id: Uuid::new_v4(),
                rack: None,
            })
            .await
            .expect("the broker registered");
        super::super::embedded::prepare_storage(&db)
            .await
            .expect("prepared");
        (engine, db)
    }

    fn batch(
        producer: (i64, i16),
        base_sequence: i32,
        first: usize,
        count: usize,
    ) -> deflated::Batch {
        let mut builder = inflated::Batch::builder()
            .base_timestamp(1_000)
            .max_timestamp(1_000 + count as i64)
            .producer_id(producer.0)
            .producer_epoch(producer.1)
            .base_sequence(base_sequence)
            .last_offset_delta(count as i32 - 1);
        for i in 0..count {
            let n = first + i;
            let mut record = Record::builder()
                .offset_delta(i as i32)
                .timestamp_delta(if i % 3 == 2 { -5 } else { i as i64 })
                .key((n % 4 != 3).then(|| Bytes::from(format!("key-{n}"))))
                .value((n % 5 != 4).then(|| Bytes::from(vec![b'v'; n % 700])));
            for h in 0..(n % 4) {
                record = record.header(
                    header::Header::builder()
                        .key(Bytes::from(format!("h{h}")))
                        .value(Bytes::from(format!("{n}/{h}"))),
                );
            }
            builder = builder.record(record);
        }
        deflated::Batch::try_from(builder.build().expect("batch")).expect("deflates")
    }

    /// What the store's answer to a step is checked against.
    enum Expect {
        /// tansu's answer to the same batch.
        AsTansu,
        /// This offset; tansu refuses the batch as a duplicate.
        Offset(&'static str),
        /// This one; the batch is not sent to tansu.
        StoreOnly(&'static str),
    }

    /// What a client is told: the base offset, or the error code.
    fn answer(result: Result<i64>) -> String {
        match result {
            Ok(offset) => format!("offset {offset}"),
            Err(tansu_storage::Error::Api(code)) => format!("{code:?}"),
            Err(e) => format!("failed: {e}"),
        }
    }

    /// Every record of the partition, as (offset, timestamp, key, value, headers).
    type Read = (
        i64,
        i64,
        Option<Bytes>,
        Option<Bytes>,
        Vec<(Option<Bytes>, Option<Bytes>)>,
    );

    async fn read_back(storage: &impl Storage, topition: &Topition) -> Vec<Read> {
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let batches = storage
                .fetch(
                    topition,
                    offset,
                    1,
                    64 * 1024,
                    IsolationLevel::ReadUncommitted,
                )
                .await
                .expect("fetch");
            let before = all.len();
            for batch in batches {
                let batch = inflated::Batch::try_from(batch).expect("inflates");
                for record in batch.records {
                    all.push((
                        batch.base_offset + i64::from(record.offset_delta),
                        batch.base_timestamp + record.timestamp_delta,
                        record.key,
                        record.value,
                        record
                            .headers
                            .into_iter()
                            .map(|h| (h.key, h.value))
                            .collect(),
                    ));
                }
            }
            if all.len() == before {
                return all;
            }
            offset = all.last().map_or(0, |r| r.0 + 1);
        }
    }

    /// A new idempotent producer in both databases: its (id, epoch), the same in both.
    async fn new_producer(theirs: &StorageContainer, ours: &Store) -> (i64, i16) {
        let a = theirs
            .init_producer(None, 0, Some(-1), Some(-1))
            .await
            .expect("producer");
        let b = ours
            .init_producer(None, 0, Some(-1), Some(-1))
            .await
            .expect("producer");
        assert_eq!(
            (a.id, a.epoch),
            (b.id, b.epoch),
            "both databases give the same ids"
        );
        (a.id, a.epoch)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_store_answers_every_produce_as_tansu_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (theirs, _) = engine(dir.path(), "tansu.db").await;
        let (wrapped, db) = engine(dir.path(), "store.db").await;
        let ours = Store::new(wrapped, "test", &db).await.expect("store");
        let topition = Topition::new("quakes", 0);
        let topic = CreatableTopic::default()
            .name("quakes".into())
            .num_partitions(1)
            .replication_factor(1);
        theirs
            .create_topic(topic.clone(), false)
            .await
            .expect("topic");
        ours.create_topic(topic, false).await.expect("topic");
        let producer = new_producer(&theirs, &ours).await;
        let second = new_producer(&theirs, &ours).await;
        assert_ne!(
            second.0, producer.0,
            "tansu gives each producer an id of its own"
        );

        use Expect::*;
        let script = [
            ("the first batch", batch(producer, 0, 0, 7), AsTansu),
            ("the next one", batch(producer, 7, 7, 5), AsTansu),
            // Kafka answers a batch sent again (its acknowledgement lost) with where it went;
            // tansu refuses it as a duplicate. Either way it is stored once.
            (
                "a retry of it",
                batch(producer, 7, 7, 5),
                Offset("offset 7"),
            ),
            (
                "an older retry",
                batch(producer, 0, 0, 7),
                Offset("offset 0"),
            ),
            ("a gap", batch(producer, 20, 20, 3), AsTansu),
            (
                "after the gap was refused",
                batch(producer, 12, 12, 1),
                AsTansu,
            ),
            // tansu looks for a row of the batch's epoch with a query that must find one, and
            // its storage task panics (every later call to it fails): not sent to tansu.
            (
                "a newer epoch than the producer's",
                batch((producer.0, producer.1 + 1), 13, 13, 2),
                StoreOnly("InvalidProducerEpoch"),
            ),
            (
                "an unknown producer",
                batch((producer.0 + 100, 0), 0, 13, 2),
                AsTansu,
            ),
            ("no producer id", batch((-1, -1), -1, 13, 40), AsTansu),
            ("the producer again", batch(producer, 13, 53, 3), AsTansu),
            ("a second producer", batch(second, 0, 56, 2), AsTansu),
            (
                "the first producer after it",
                batch(producer, 16, 58, 1),
                AsTansu,
            ),
            ("the second one again", batch(second, 2, 59, 1), AsTansu),
            (
                "the second one's retry",
                batch(second, 2, 59, 1),
                Offset("offset 59"),
            ),
            (
                "the first one's sixth batch",
                batch(producer, 17, 60, 1),
                AsTansu,
            ),
            // Five batches are remembered: the first is forgotten by now.
            (
                "a retry of a forgotten batch",
                batch(producer, 0, 0, 7),
                AsTansu,
            ),
            (
                "a retry of another length",
                batch(producer, 7, 7, 3),
                AsTansu,
            ),
        ];
        for (step, batch, expect) in script {
            let got = || ours.produce(None, &topition, batch.clone());
            match expect {
                StoreOnly(want) => assert_eq!(answer(got().await), want, "{step}"),
                AsTansu => {
                    let want = answer(theirs.produce(None, &topition, batch.clone()).await);
                    assert_eq!(answer(got().await), want, "{step}");
                }
                Offset(want) => {
                    let tansu = answer(theirs.produce(None, &topition, batch.clone()).await);
                    assert_eq!(tansu, "DuplicateSequenceNumber", "{step}");
                    assert_eq!(answer(got().await), want, "{step}");
                }
            }
        }

        // A partition that does not exist: tansu's answer for a batch without a producer id,
        // and the same for one with (tansu's storage task panics on that one).
        let missing = Topition::new("quakes", 3);
        let want = answer(
            theirs
                .produce(None, &missing, batch((-1, -1), -1, 0, 1))
                .await,
        );
        assert_eq!(want, "UnknownTopicOrPartition");
        for producer in [(-1, -1), producer] {
            let sequence = if producer.0 == -1 { -1 } else { 17 };
            let got = answer(
                ours.produce(None, &missing, batch(producer, sequence, 0, 1))
                    .await,
            );
            assert_eq!(got, want, "{producer:?}");
        }

        let want = read_back(&theirs, &topition).await;
        let got = read_back(&ours, &topition).await;
        assert_eq!(
            want.len(),
            7 + 5 + 1 + 40 + 3 + 2 + 1 + 1 + 1,
            "what tansu stored"
        );
        assert_eq!(
            got, want,
            "the same records, keys, values, headers and timestamps"
        );
        let stages = (
            theirs.offset_stage(&topition).await.expect("offsets"),
            ours.offset_stage(&topition).await.expect("offsets"),
        );
        assert_eq!(stages.0.high_watermark(), 61);
        assert_eq!(stages.1.high_watermark(), 61);
        assert_eq!(ours.end_offset(&topition).await.expect("end"), 61);
    }
}
