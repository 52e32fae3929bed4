//! The embedded Kafka-compatible broker: tansu, in-process, with SQLite storage.
//!
//! It speaks the real Kafka protocol on a TCP port, so quakestream's own components and any
//! other Kafka client (Spark, confluent-kafka, kcat) talk to it as to a cluster of one. Clients
//! connect to a thin relay, [`super::front`], which mends the one tansu answer that older
//! librdkafka versions (Debian 12's kcat) cannot read; tansu itself listens on a loopback port
//! of its own and advertises the relay's address. Messages live in `<data_dir>/broker/tansu.db`
//! and survive restarts. tansu's memory engine is not used: it reports wrong high watermarks.
//!
//! We drive tansu's `serve` ourselves instead of its `main`, which installs its own signal
//! handlers and clears the terminal: the broker stops when our shutdown token is cancelled.

use std::{
    net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs},
    path::{Path, PathBuf},
    time::Duration,
};

use tansu_broker::{NODE_ID, broker::Broker, coordinator::group::administrator::Controller};
use tansu_storage::StorageContainer;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinHandle,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use url::Url;

use super::{front, store::Store};
use crate::{
    config::BrokerConfig,
    error::{Error, Result},
};

/// tansu's broker with its group coordinator, over tansu's SQLite engine wrapped in our
/// [`Store`].
type TansuBroker = Broker<Controller<Store>, Store>;

/// File name of the broker's SQLite database inside `<data_dir>/broker`.
pub const DB_FILE: &str = "tansu.db";

/// A running embedded broker.
pub struct EmbeddedBroker {
    /// Where clients connect: the front.
    addr: SocketAddr,
    advertised: String,
    db: PathBuf,
    /// tansu, on a loopback port of its own.
    task: JoinHandle<Result<()>>,
    front: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker and returns once it accepts connections. It stops when `shutdown` is
    /// cancelled; [`EmbeddedBroker::stopped`] waits for that.
    pub async fn start(
        config: &BrokerConfig,
        data_dir: &Path,
        shutdown: CancellationToken,
    ) -> Result<EmbeddedBroker> {
        let addr = resolve(&config.listen)?;
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::Broker(format!(
                "cannot listen on {addr}: {e} (is another broker running there? choose another \
                 address with --listen)"
            ))
        })?;
        // With port 0 in `listen`, the port the system chose.
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Broker(format!("cannot listen on {addr}: {e}")))?;
        let internal = internal_addr()?;
        if !addr.ip().is_loopback() {
            // No authentication and no TLS: anyone who can reach the port can read and write
            // every topic.
            tracing::warn!(
                %addr,
                "the embedded broker listens beyond this machine, with no authentication and no \
                 encryption: any host that reaches {addr} can read and write every topic (listen \
                 on 127.0.0.1 unless other machines must connect, and then only on a trusted \
                 network)"
            );
        }

        let dir = absolute(&data_dir.join("broker"))?;
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let db = dir.join(DB_FILE);
        let advertised = config
            .advertised
            .clone()
            .unwrap_or_else(|| addr.to_string());

        let internal_url = tcp_url(&internal.to_string())?;
        let advertised_url = tcp_url(&advertised)?;
        let storage = storage_url(&db)?;
        tracing::debug!(%addr, %internal_url, %advertised_url, %storage, "starting embedded broker");

        let storage = StorageContainer::builder()
            .cluster_id(config.cluster_id.clone())
            .node_id(NODE_ID)
            .advertised_listener(advertised_url.clone())
            .storage(storage)
            .silent(true)
            .build()
            .await
            .map_err(|e| Error::Broker(format!("cannot open storage {}: {e}", db.display())))?;
        prepare_storage(&db).await?;
        let store = Store::new(storage, &config.cluster_id, &db)
            .await
            .map_err(|e| Error::Broker(format!("cannot open storage {}: {e}", db.display())))?;
        let groups = Controller::with_storage(store.clone())
            .map_err(|e| Error::Broker(format!("cannot start the group coordinator: {e}")))?;
        let mut broker = TansuBroker::new(
            NODE_ID,
            &config.cluster_id,
            internal_url,
            advertised_url,
            store.clone(),
            groups,
            uuid::Uuid::new_v4(),
        );

        let mut task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    result = broker.serve(Instant::now()) => {
                        result.map_err(|e| Error::Broker(e.to_string()))
                    }
                    () = shutdown.cancelled() => Ok(()),
                }
            }
        });

        wait_listening(&mut task, internal).await?;
        // Connections made meanwhile waited in the listener's backlog.
        let front = tokio::spawn(front::serve(listener, internal, Some(store), shutdown));
        Ok(EmbeddedBroker {
            addr,
            advertised,
            db,
            task,
            front,
        })
    }

    /// The address clients connect to (the front; tansu's own port is private).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address clients should use as `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.advertised
    }

    /// The SQLite database holding every message.
    pub fn db_path(&self) -> &Path {
        &self.db
    }

    /// Waits until the broker has stopped (after the shutdown token is cancelled, or on a
    /// failure).
    pub async fn stopped(self) -> Result<()> {
        let result = self
            .task
            .await
            .map_err(|e| Error::Broker(format!("broker task failed: {e}")))
            .and_then(|r| r);
        if result.is_err() {
            // tansu failed without a shutdown: nothing is left to relay to.
            self.front.abort();
        }
        let _ = self.front.await;
        result
    }
}

/// Prepares tansu's database before the broker serves it. tansu creates its tables with
/// `if not exists`, so what is done here stays.
///
/// - tansu 0.6 stores message headers in a table without an index and looks them up record by
///   record when serving a fetch, so reading back a partition of many messages with headers
///   takes time quadratic in its size (minutes for 10,000 messages). An index on the lookup
///   columns makes each lookup a seek.
/// - tansu 0.6 keeps each consumer group's members and leader in the database. After a restart
///   every member it remembers is dead, and a dead *leader* is never replaced: when such a
///   member is evicted while the group is formed, the group keeps naming it leader, every
///   member that joins later is told it is a follower, and a follower's SyncGroup is refused
///   until a leader sends the assignment, which never comes. The group never hands out
///   partitions again (seen as a restarted window processor that waited forever, `window
///   summary records=0`). Forgetting the members at start makes each group form afresh with
///   the first member that joins as its leader. Committed offsets live in another table and
///   are kept.
pub(super) async fn prepare_storage(db: &Path) -> Result<()> {
    let failed = |e: libsql::Error| Error::Broker(format!("preparing {}: {e}", db.display()));
    let database = libsql::Builder::new_local(db)
        .build()
        .await
        .map_err(failed)?;
    let connection = database.connect().map_err(failed)?;
    for statement in [
        "create index if not exists quakestream_header_record on header (topition, offset_id)",
        // Where the last batches of each idempotent producer went (see `store::Writes`): a
        // batch sent again after its acknowledgement was lost is answered with its offset.
        "create table if not exists quakestream_batch (\
           producer_epoch integer not null references producer_epoch (id) on delete cascade, \
           topition integer not null references topition (id) on delete cascade, \
           base_sequence integer not null, \
           last_sequence integer not null, \
           base_offset integer not null, \
           primary key (producer_epoch, topition, base_sequence))",
        "create index if not exists quakestream_batch_topition on quakestream_batch (topition)",
        "delete from consumer_group_detail",
    ] {
        connection.execute(statement, ()).await.map_err(failed)?;
    }
    Ok(())
}

/// Polls tansu's port until it accepts a connection, or reports why the broker stopped.
async fn wait_listening(task: &mut JoinHandle<Result<()>>, internal: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if task.is_finished() {
            let result = task.await.map_err(|e| Error::Broker(e.to_string()))?;
            return Err(result
                .err()
                .unwrap_or_else(|| Error::Broker("stopped before it started listening".into())));
        }
        if TcpStream::connect(internal).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Broker(format!(
                "not listening on {internal} after 30s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port for tansu. tansu binds its listener itself from a URL, so the port is
/// chosen here and released; [`wait_listening`] reports the rare case of another
/// process taking it in between.
fn internal_addr() -> Result<SocketAddr> {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Broker(format!("cannot find a free loopback port: {e}")))
}

fn resolve(listen: &str) -> Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| Error::Config {
            origin: "broker.listen".into(),
            message: format!("{listen:?} is not a HOST:PORT address"),
        })
}

fn tcp_url(addr: &str) -> Result<Url> {
    Url::parse(&format!("tcp://{addr}")).map_err(|e| Error::Config {
        origin: "broker".into(),
        message: format!("{addr:?} is not a HOST:PORT address: {e}"),
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(path))
}

/// tansu resolves a `sqlite://` URL's path against the working directory by pushing it onto
/// it; an empty host and a path that starts with `//` make that push an absolute path, so the
/// database lands exactly at `db` wherever the process runs.
pub(super) fn storage_url(db: &Path) -> Result<Url> {
    let unusable = || {
        Error::Broker(format!(
            "the data directory path {} has characters the embedded broker cannot use (spaces, \
             `#`, `?`, non-ASCII); choose another --data-dir",
            db.display()
        ))
    };
    let text = db.to_str().ok_or_else(unusable)?;
    let mut url = Url::parse("sqlite://").map_err(|e| Error::Broker(e.to_string()))?;
    let path = format!("/{text}");
    url.set_path(&path);
    // tansu reads the path still percent-encoded: a character that needs encoding would send
    // the database elsewhere.
    if url.path() != path {
        return Err(unusable());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tansu's SQLite engine does with the URL: working directory, then host, then path
    /// without its first `/`.
    fn tansu_path(url: &Url) -> PathBuf {
        let mut path = PathBuf::from("/some/cwd");
        if let Some(domain) = url.domain() {
            path.push(domain);
        }
        let p = url.path();
        path.push(p.strip_prefix('/').unwrap_or(p));
        path
    }

    #[test]
    fn storage_url_points_at_the_absolute_path() {
        let db = Path::new("/tmp/qs-data/run_1/broker/tansu.db");
        let url = storage_url(db).unwrap();
        assert_eq!(url.scheme(), "sqlite");
        assert_eq!(tansu_path(&url), db);
    }

    #[test]
    fn storage_url_refuses_paths_tansu_would_misread() {
        for db in [
            "/tmp/qs data/tansu.db",
            "/tmp/a#b/tansu.db",
            "/tmp/sí/tansu.db",
        ] {
            let err = storage_url(Path::new(db)).unwrap_err().to_string();
            assert!(err.contains("--data-dir"), "{db}: {err}");
        }
    }
}
