//! The embedded broker's front door: a TCP relay between Kafka clients and tansu that mends the
//! one answer older librdkafka versions cannot read.
//!
//! tansu 0.6 answers ApiVersions v3 and later with four top-level tagged fields set to their
//! default values (`SupportedFeatures` and `FinalizedFeatures` empty, `FinalizedFeaturesEpoch`
//! -1, `ZkMigrationReady` false). Apache Kafka leaves default tagged fields out, and librdkafka
//! releases without the fix of librdkafka PR #4278 (2.0.2, which Debian 12's kcat uses, among
//! them) skip tagged fields wrongly: they read a length byte as a tag, then fail with
//! `ApiVersionRequest failed: Local: Read underflow`. kcat could not talk to the broker at all. The front drops those four fields
//! when they hold exactly the defaults, which changes nothing for a client that reads them
//! (an absent tagged field *is* its default).
//!
//! Everything else passes through byte for byte. Frames are delimited by their size prefix; of a
//! request only its header (API key, version, correlation id) is read, of a response only its
//! correlation id, and bodies are copied without being parsed. Only an ApiVersions v3+ answer is
//! read whole, and any answer the rewrite does not understand is forwarded unchanged.
//!
//! The front runs in quakestream's process, so every client, quakestream's own included, goes
//! through it: tansu listens on a loopback port of its own and advertises the front's address,
//! so Metadata and FindCoordinator send clients back through the front.

use std::{collections::HashSet, io, net::SocketAddr, sync::Mutex};

use tansu_sans_io::{FetchRequest, Frame as KafkaFrame};
use tansu_storage::Topition;
use tokio::{
    io::{
        AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
        BufWriter,
    },
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::store::Store;

/// Each direction of a connection reads and writes through buffers this large: fetch responses
/// and produce requests move in big chunks, small frames in one write each.
const BUFFER: usize = 128 << 10;

/// The largest request a client may send: Kafka's own `socket.request.max.bytes` default. A
/// larger size prefix is a broken or hostile client; its connection is closed before tansu
/// allocates for it. Responses come from our own broker and are streamed whatever their size.
const MAX_REQUEST: usize = 100 << 20;

/// An ApiVersions answer larger than this is not one tansu wrote: it is forwarded unread.
const MAX_API_VERSIONS: usize = 64 << 10;

/// Fetch is API key 1. Its versions from 12 on have a flexible request header (with tags); from
/// 15 on the body no longer starts with a replica id.
const FETCH: i16 = 1;
const FETCH_FLEXIBLE: i16 = 12;
const FETCH_WITHOUT_REPLICA: i16 = 15;

/// ApiVersions is API key 18; version 3 is its first flexible version, the one with tags.
const API_VERSIONS: i16 = 18;
const FIRST_FLEXIBLE: i16 = 3;

/// The top-level tagged fields of an ApiVersions response that tansu writes with their
/// defaults, as (tag, encoded value).
const DEFAULT_TAGS: [(u32, &[u8]); 4] = [
    // SupportedFeatures: an empty compact array (length + 1 = 1).
    (0, &[0x01]),
    // FinalizedFeaturesEpoch: -1.
    (1, &[0xff; 8]),
    // FinalizedFeatures: an empty compact array.
    (2, &[0x01]),
    // ZkMigrationReady: false.
    (3, &[0x00]),
];

/// Accepts connections on `listener` and relays each to the broker at `upstream`, until
/// `shutdown` is cancelled: then it stops accepting, closes every connection and returns.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    store: Option<Store>,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let shutdown = shutdown.clone();
                    let store = store.clone();
                    connections.spawn(async move {
                        tokio::select! {
                            result = relay(client, upstream, store.as_ref()) => {
                                if let Err(error) = result {
                                    tracing::debug!(%peer, %error, "broker connection ended");
                                }
                            }
                            () = shutdown.cancelled() => {}
                        }
                    });
                }
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener itself is fine. A pause keeps a persistent error from spinning.
                Err(error) => {
                    tracing::warn!(%error, "broker front cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = shutdown.cancelled() => break,
        }
    }
    drop(listener);
    // Each connection sees the same token and closes its sockets at once.
    while connections.join_next().await.is_some() {}
}

/// Relays one client connection until either side closes it or fails.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    store: Option<&Store>,
) -> io::Result<()> {
    let mut broker = TcpStream::connect(upstream).await?;
    // Kafka is request/response: Nagle's algorithm would hold small frames back.
    client.set_nodelay(true)?;
    broker.set_nodelay(true)?;
    let (client_read, client_write) = client.split();
    let (broker_read, broker_write) = broker.split();
    // Correlation ids of ApiVersions v3+ requests whose answers are still to come.
    let pending = Mutex::new(HashSet::new());
    let requests = requests(
        BufReader::with_capacity(BUFFER, client_read),
        BufWriter::with_capacity(BUFFER, broker_write),
        &pending,
        store,
    );
    let responses = responses(
        BufReader::with_capacity(BUFFER, broker_read),
        BufWriter::with_capacity(BUFFER, client_write),
        &pending,
    );
    tokio::pin!(requests, responses);
    tokio::select! {
        // The client has sent everything: its last answers are still on their way.
        sent = &mut requests => {
            sent?;
            responses.await
        }
        // The broker closed the connection: nothing more will be answered.
        answered = &mut responses => answered,
    }
}

/// Client to broker: each frame is forwarded unchanged, but for fetches, which the front holds
/// until there is something to fetch ([`hold`]); the correlation ids of ApiVersions v3+
/// requests are remembered for [`responses`].
async fn requests(
    mut from: impl AsyncBufRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    pending: &Mutex<HashSet<i32>>,
    store: Option<&Store>,
) -> io::Result<()> {
    // size, api_key, api_version, correlation_id
    let mut head = [0u8; 12];
    while let Some((size, header)) = read_head(&mut from, &mut head, MAX_REQUEST).await? {
        if header == 8 {
            let key = i16::from_be_bytes([head[4], head[5]]);
            let version = i16::from_be_bytes([head[6], head[7]]);
            if key == API_VERSIONS && version >= FIRST_FLEXIBLE {
                let correlation = i32::from_be_bytes([head[8], head[9], head[10], head[11]]);
                lock(pending).insert(correlation);
            }
            if let Some(store) = store.filter(|_| key == FETCH) {
                let mut frame = vec![0u8; 4 + size];
                frame[..12].copy_from_slice(&head);
                from.read_exact(&mut frame[12..]).await?;
                hold(store, &mut frame).await;
                to.write_all(&frame).await?;
                to.flush().await?;
                continue;
            }
        }
        forward(&mut from, &mut to, &head[..4 + header], size - header).await?;
    }
    to.shutdown().await
}

/// Broker to client: each frame is forwarded unchanged, except the answers to remembered
/// ApiVersions requests, which lose their default tagged fields.
async fn responses(
    mut from: impl AsyncBufRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    pending: &Mutex<HashSet<i32>>,
) -> io::Result<()> {
    // size, correlation_id
    let mut head = [0u8; 8];
    // The broker's answers are not capped.
    while let Some((size, header)) = read_head(&mut from, &mut head, usize::MAX).await? {
        let remembered = header == 4 && {
            let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            lock(pending).remove(&correlation)
        };
        if remembered && size <= MAX_API_VERSIONS {
            let mut frame = vec![0u8; 4 + size];
            frame[..8].copy_from_slice(&head);
            from.read_exact(&mut frame[8..]).await?;
            match strip_default_tags(&frame) {
                Some(rewritten) => {
                    tracing::debug!(
                        bytes = frame.len(),
                        rewritten = rewritten.len(),
                        "dropped default tagged fields from an ApiVersions answer"
                    );
                    to.write_all(&rewritten).await?;
                }
                None => to.write_all(&frame).await?,
            }
            to.flush().await?;
        } else {
            forward(&mut from, &mut to, &head[..4 + header], size - header).await?;
        }
    }
    to.shutdown().await
}

/// Reads a frame's size prefix into `head[..4]`, then as much of its header as `head` has room
/// for (less when the frame is shorter): the frame's size and the header bytes read. `None` at
/// a clean end of stream (between frames); an error for a negative size, a size over `max`
/// (before any more is waited for), or a stream cut inside the prefix or the header.
async fn read_head(
    from: &mut (impl AsyncBufRead + Unpin),
    head: &mut [u8],
    max: usize,
) -> io::Result<Option<(usize, usize)>> {
    if from.fill_buf().await?.is_empty() {
        return Ok(None);
    }
    from.read_exact(&mut head[..4]).await?;
    let size = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let size = usize::try_from(size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("negative frame size {size}"),
        )
    })?;
    if size > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {size} bytes, over the {max}-byte limit"),
        ));
    }
    let header = size.min(head.len() - 4);
    from.read_exact(&mut head[4..4 + header]).await?;
    Ok(Some((size, header)))
}

/// Forwards a frame unchanged: writes `head` (what was read of it), then copies the `n` bytes
/// left through `from`'s buffer and flushes `to`, so that the frame leaves whole and at once.
async fn forward(
    from: &mut (impl AsyncBufRead + Unpin),
    to: &mut (impl AsyncWrite + Unpin),
    head: &[u8],
    n: usize,
) -> io::Result<()> {
    to.write_all(head).await?;
    let n = n as u64;
    // `copy_buf` flushes `to` when it reaches the end of the frame.
    let copied = tokio::io::copy_buf(&mut from.take(n), to).await?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Holds a fetch request until one of the partitions it reads has records past the offset it
/// reads from, or until the client's `max_wait_ms` has passed, then sets its `max_wait_ms` to
/// zero, so that tansu answers at once with what there is.
///
/// tansu 0.6 answers a fetch late whatever it finds: after reading, it sleeps half the time
/// left of `max_wait_ms` (all of it under 250 ms), records or not. With librdkafka's 500 ms
/// default a record produced while a consumer waited reached it 250 ms or more later, and a
/// consumer catching up lost 250 ms per fetch. Here the wait is ours: it ends when the store
/// reports a produce to one of the partitions asked for.
///
/// A request that cannot be read (or names a topic the broker does not know) is left as it is:
/// tansu answers it as it always did.
async fn hold(store: &Store, frame: &mut [u8]) {
    let version = i16::from_be_bytes([frame[6], frame[7]]);
    let Some(at) = max_wait_at(frame, version) else {
        return;
    };
    let max_wait = i32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
    let Some(wanted) = wanted(store, frame).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_millis(u64::try_from(max_wait).unwrap_or(0));
    let tide = store.tide();
    loop {
        // Armed before looking, so that a produce between the look and the wait is not missed.
        let produced = tide.produced();
        tokio::pin!(produced);
        produced.as_mut().enable();
        match ready(store, &wanted).await {
            Some(true) => break,
            Some(false) => {}
            // A partition the broker cannot tell the end of (a topic deleted meanwhile): tansu
            // answers as it always did, after its own wait, so a client that keeps asking does
            // not spin.
            None => return,
        }
        if tokio::time::timeout_at(deadline, produced).await.is_err() {
            break;
        }
    }
    frame[at..at + 4].copy_from_slice(&0i32.to_be_bytes());
}

/// The partitions a fetch request reads and the offset it reads each from; `None` when the
/// request cannot be read or names a topic by an id the broker does not know.
async fn wanted(store: &Store, frame: &[u8]) -> Option<Vec<(Topition, i64)>> {
    let decoded = KafkaFrame::request_from_bytes(frame).ok()?;
    let request = FetchRequest::try_from(decoded.body).ok()?;
    let mut wanted = Vec::new();
    for topic in request.topics.unwrap_or_default() {
        let name = match (topic.topic, topic.topic_id) {
            (Some(name), _) => name,
            (None, Some(id)) => store.topic_name(Uuid::from_bytes(id)).await.ok()??,
            (None, None) => return None,
        };
        for partition in topic.partitions.unwrap_or_default() {
            wanted.push((
                Topition::new(name.clone(), partition.partition),
                partition.fetch_offset,
            ));
        }
    }
    Some(wanted)
}

/// Whether any of the partitions has records at or past the offset asked for; `None` when the
/// end offset of one cannot be read.
async fn ready(store: &Store, wanted: &[(Topition, i64)]) -> Option<bool> {
    for (topition, offset) in wanted {
        let end = store.end_offset(topition).await.ok()?;
        if end > *offset {
            return Some(true);
        }
    }
    // Nothing asked for: nothing to wait for either.
    Some(wanted.is_empty())
}

/// Where a fetch request frame (size prefix included) holds its `max_wait_ms`, checked to lie
/// inside the frame.
fn max_wait_at(frame: &[u8], version: i16) -> Option<usize> {
    let mut r = Reader {
        bytes: frame,
        at: 12, // size, api_key, api_version, correlation_id
    };
    let client_id = i16::from_be_bytes(r.array()?);
    if client_id > 0 {
        r.skip(usize::try_from(client_id).ok()?)?;
    }
    if version >= FETCH_FLEXIBLE {
        let tags = r.uvarint()?;
        for _ in 0..tags {
            r.tag()?;
        }
    }
    if version < FETCH_WITHOUT_REPLICA {
        r.skip(4)?; // replica_id
    }
    let at = r.at;
    r.skip(4)?;
    Some(at)
}

/// The set holds plain integers: a panic elsewhere cannot leave it inconsistent.
fn lock(pending: &Mutex<HashSet<i32>>) -> std::sync::MutexGuard<'_, HashSet<i32>> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An ApiVersions v3+ response frame (size prefix included) without the top-level tagged fields
/// that hold exactly their defaults ([`DEFAULT_TAGS`]); other tags are kept in order. `None`
/// when there is nothing to drop or the frame is not an ApiVersions v3+ response: the caller
/// then forwards it as it is.
///
/// The response header is version 0 (a correlation id, no tags) even for flexible versions.
/// The body: error_code i16, api_keys as a compact array of (api_key i16, min_version i16,
/// max_version i16, tags), throttle_time_ms i32, then the top-level tags.
pub fn strip_default_tags(frame: &[u8]) -> Option<Vec<u8>> {
    let mut r = Reader {
        bytes: frame,
        at: 0,
    };
    let size = usize::try_from(i32::from_be_bytes(r.array()?)).ok()?;
    if size != frame.len() - 4 {
        return None;
    }
    r.skip(4)?; // correlation_id
    r.skip(2)?; // error_code
    let api_keys = r.uvarint()?.checked_sub(1)?;
    for _ in 0..api_keys {
        r.skip(6)?; // api_key, min_version, max_version
        let tags = r.uvarint()?;
        for _ in 0..tags {
            r.tag()?;
        }
    }
    r.skip(4)?; // throttle_time_ms
    let tags_at = r.at;
    let count = r.uvarint()?;
    let mut kept = Vec::new();
    for _ in 0..count {
        let start = r.at;
        let field = r.tag()?;
        if !DEFAULT_TAGS.contains(&field) {
            kept.push(&frame[start..r.at]);
        }
    }
    if r.at != frame.len() || kept.len() as u32 == count {
        return None;
    }
    let mut out = Vec::with_capacity(frame.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&frame[4..tags_at]);
    put_uvarint(&mut out, kept.len() as u32);
    for field in kept {
        out.extend_from_slice(field);
    }
    let size = i32::try_from(out.len() - 4).ok()?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// A cursor over a frame where every read is checked: running past the end is `None`.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let taken = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(taken)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    /// An unsigned varint of at most 32 bits.
    fn uvarint(&mut self) -> Option<u32> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let [byte] = self.array()?;
            value |= u32::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return (shift < 28 || byte < 0x10).then_some(value);
            }
        }
        None
    }

    /// One tagged field: (tag, value).
    fn tag(&mut self) -> Option<(u32, &'a [u8])> {
        let tag = self.uvarint()?;
        let len = self.uvarint()?;
        Some((tag, self.take(usize::try_from(len).ok()?)?))
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// tansu 0.6's answer to kcat's ApiVersions v3 request (correlation id 1), as captured on
    /// the wire: 40 API keys, then the four default tagged fields
    /// `04 00 01 01  01 08 ff ff ff ff ff ff ff ff  02 01 01  03 01 00`.
    const TANSU_API_VERSIONS: &str = "0000011400000001000024002c000000010000000000000b0000190000\
        000400000d000000050000330000000000004b00000000000018000000050000450000000000002000000004\
        00002400000002000011000000010000140000000600000e000000050000010000001100000a000000060000\
        1e0000000300002e0000000000001c0000000400000200000009000012000000040000\
        2a0000000200000f00000005000032000000000000090000000900001500000002000010000000050000030000\
        000c00000c0000000400003c00000001000008000000090000470000000000001d0000000300000b00000009\
        00001600000005000013000000070000000000040001010108ffffffffffffffff020101030100";

    fn unhex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn tansu_frame() -> Vec<u8> {
        let frame = unhex(TANSU_API_VERSIONS);
        assert_eq!(frame.len(), 280, "the captured frame");
        frame
    }

    /// The captured frame with its top-level tags replaced by `tags`, size fixed.
    fn with_tags(tags: &[u8]) -> Vec<u8> {
        let mut frame = tansu_frame();
        frame.truncate(260);
        frame.extend_from_slice(tags);
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        frame
    }

    #[test]
    fn tansu_api_versions_answer_loses_its_default_tags() {
        let frame = tansu_frame();
        let rewritten = strip_default_tags(&frame).expect("rewritten");
        // 19 bytes of tags become one empty tag list: 276 - 19 = 257 bytes after the size.
        let mut expected = unhex("00000101");
        expected.extend_from_slice(&frame[4..260]);
        expected.push(0x00);
        assert_eq!(rewritten, expected);
        assert_eq!(&rewritten[4..8], &[0, 0, 0, 1], "correlation id kept");
        // Nothing left to drop the second time.
        assert_eq!(strip_default_tags(&rewritten), None);
    }

    #[test]
    fn tags_with_other_values_are_kept() {
        // ZkMigrationReady true and an unknown tag 7 stay; the three defaults go.
        let frame = with_tags(&unhex(
            "05 0001 01 0108ffffffffffffffff 020101 030101 070200aa",
        ));
        assert_eq!(
            strip_default_tags(&frame),
            Some(with_tags(&unhex("02 030101 070200aa")))
        );
        // An epoch other than -1 is kept too.
        let frame = with_tags(&unhex("01 01080000000000000005"));
        assert_eq!(strip_default_tags(&frame), None);
    }

    #[test]
    fn frames_without_default_tags_pass_unchanged() {
        assert_eq!(strip_default_tags(&with_tags(&[0x00])), None);
        // A Metadata answer (correlation id 2) is not an ApiVersions answer.
        let mut metadata =
            unhex("00000000 00000002 00000001 0000006f 0009 3132372e302e302e31 00002384 ffff");
        let size = (metadata.len() - 4) as i32;
        metadata[..4].copy_from_slice(&size.to_be_bytes());
        assert_eq!(strip_default_tags(&metadata), None);
        // Trailing bytes after the tags: not understood, so not touched.
        let mut frame = tansu_frame();
        frame.push(0);
        frame[3] += 1;
        assert_eq!(strip_default_tags(&frame), None);
    }

    #[test]
    fn truncated_or_inconsistent_frames_are_left_alone() {
        let frame = tansu_frame();
        for len in 0..frame.len() {
            assert_eq!(
                strip_default_tags(&frame[..len]),
                None,
                "prefix of {len} bytes"
            );
            // The size prefix made to match the cut: still not a complete answer.
            if len >= 4 {
                let mut cut = frame[..len].to_vec();
                cut[..4].copy_from_slice(&((len - 4) as i32).to_be_bytes());
                assert_eq!(strip_default_tags(&cut), None, "cut at {len} bytes");
            }
        }
        let mut negative = frame.clone();
        negative[0] = 0xff;
        assert_eq!(strip_default_tags(&negative), None);
        // A tag claiming more bytes than the frame has.
        assert_eq!(strip_default_tags(&with_tags(&unhex("01 0005 01"))), None);
        // A varint that never ends.
        assert_eq!(strip_default_tags(&with_tags(&[0xff; 8])), None);
    }

    #[test]
    fn varints_round_trip() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut bytes = Vec::new();
            put_uvarint(&mut bytes, value);
            let mut r = Reader {
                bytes: &bytes,
                at: 0,
            };
            assert_eq!(r.uvarint(), Some(value));
            assert_eq!(r.at, bytes.len());
        }
        // Past 32 bits.
        let mut r = Reader {
            bytes: &[0xff, 0xff, 0xff, 0xff, 0x1f],
            at: 0,
        };
        assert_eq!(r.uvarint(), None);
    }

    proptest! {
        /// Arbitrary bytes: left alone or rewritten, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = strip_default_tags(&bytes);
        }

        /// The real answer with a byte overwritten: never a panic, and a rewrite's size prefix
        /// tells the truth.
        #[test]
        fn damaged_answers_never_panic(at in 0usize..280, byte in any::<u8>()) {
            let mut frame = tansu_frame();
            frame[at] = byte;
            if let Some(rewritten) = strip_default_tags(&frame) {
                let size = i32::from_be_bytes(rewritten[..4].try_into().unwrap());
                prop_assert_eq!(size as usize, rewritten.len() - 4);
            }
        }
    }

    /// A fake broker: answers every request with `answer` under the request's correlation id.
    async fn fake_broker(answer: Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    loop {
                        let mut size = [0u8; 4];
                        if stream.read_exact(&mut size).await.is_err() {
                            return;
                        }
                        let mut request = vec![0u8; i32::from_be_bytes(size) as usize];
                        stream.read_exact(&mut request).await.unwrap();
                        let mut frame = answer.clone();
                        frame[4..8].copy_from_slice(&request[4..8]);
                        stream.write_all(&frame).await.unwrap();
                    }
                });
            }
        });
        addr
    }

    /// A request frame: key, version, correlation id, then a client id and a tag byte.
    fn request(key: i16, version: i16, correlation: i32) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&key.to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&correlation.to_be_bytes());
        body.extend_from_slice(b"\x00\x04kcat\x00");
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend(body);
        frame
    }

    async fn answer(stream: &mut TcpStream) -> Vec<u8> {
        let mut size = [0u8; 4];
        stream.read_exact(&mut size).await.unwrap();
        let mut frame = size.to_vec();
        frame.resize(4 + i32::from_be_bytes(size) as usize, 0);
        stream.read_exact(&mut frame[4..]).await.unwrap();
        frame
    }

    async fn front(upstream: SocketAddr, shutdown: &CancellationToken) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, upstream, None, shutdown.clone()));
        addr
    }

    /// A client of a front before a [`fake_broker`] answering [`tansu_frame`].
    async fn client(shutdown: &CancellationToken) -> TcpStream {
        let upstream = fake_broker(tansu_frame()).await;
        TcpStream::connect(front(upstream, shutdown).await)
            .await
            .unwrap()
    }

    /// The front closes `client`'s connection within 5 s, answering nothing more.
    async fn assert_closed(client: &mut TcpStream) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        )
        .await
        .expect("closed");
        assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
    }

    #[tokio::test]
    async fn only_answers_to_api_versions_v3_are_rewritten() {
        let shutdown = CancellationToken::new();
        let mut client = client(&shutdown).await;

        let mut expected = strip_default_tags(&tansu_frame()).unwrap();
        for (key, version, correlation, rewritten) in [
            (API_VERSIONS, 3, 7, true),
            (API_VERSIONS, 2, 8, false),
            (3, 12, 9, false),
            (API_VERSIONS, 4, 10, true),
        ] {
            client
                .write_all(&request(key, version, correlation))
                .await
                .unwrap();
            let got = answer(&mut client).await;
            let mut want = if rewritten {
                expected.clone()
            } else {
                tansu_frame()
            };
            want[4..8].copy_from_slice(&correlation.to_be_bytes());
            assert_eq!(got, want, "key {key} v{version}");
        }

        // Pipelined: two requests in one write, answers in order.
        let mut both = request(API_VERSIONS, 3, 11);
        both.extend(request(1, 4, 12));
        client.write_all(&both).await.unwrap();
        expected[4..8].copy_from_slice(&11i32.to_be_bytes());
        assert_eq!(answer(&mut client).await, expected);
        let mut plain = tansu_frame();
        plain[4..8].copy_from_slice(&12i32.to_be_bytes());
        assert_eq!(answer(&mut client).await, plain);

        // Shutdown closes the connection.
        shutdown.cancel();
        assert_closed(&mut client).await;
    }

    #[tokio::test]
    async fn an_oversized_request_closes_the_connection() {
        let shutdown = CancellationToken::new();
        let mut client = client(&shutdown).await;
        client.write_all(&(i32::MAX).to_be_bytes()).await.unwrap();
        assert_closed(&mut client).await;
        shutdown.cancel();
    }

    /// A fetch request frame of `version` as a client writes it, with `max_wait_ms` 321.
    fn fetch_frame(version: i16, client_id: Option<&str>) -> Vec<u8> {
        use tansu_sans_io::{
            Header,
            fetch_request::{FetchPartition, FetchTopic},
        };
        let mut partition = FetchPartition::default();
        partition.partition = 2;
        partition.fetch_offset = 77;
        partition.partition_max_bytes = 1 << 20;
        partition.current_leader_epoch = Some(-1);
        partition.last_fetched_epoch = Some(-1);
        partition.log_start_offset = Some(-1);
        let mut topic = FetchTopic::default();
        if version >= 13 {
            topic.topic_id = Some([7; 16]);
        } else {
            topic.topic = Some("earthquakes".into());
        }
        topic.partitions = Some(vec![partition]);
        let mut request = FetchRequest::default();
        request.replica_id = (version < FETCH_WITHOUT_REPLICA).then_some(-1);
        request.max_wait_ms = 321;
        request.min_bytes = 1;
        request.max_bytes = Some(52_428_800);
        request.isolation_level = Some(0);
        request.session_id = Some(0);
        request.session_epoch = Some(-1);
        request.topics = Some(vec![topic]);
        request.forgotten_topics_data = Some(vec![]);
        request.rack_id = Some(String::new());
        let header = Header::Request {
            api_key: FETCH,
            api_version: version,
            correlation_id: 9,
            client_id: client_id.map(str::to_owned),
        };
        KafkaFrame::request(header, request.into())
            .expect("encoded")
            .to_vec()
    }

    #[test]
    fn max_wait_is_found_in_every_fetch_version() {
        for version in [4, 7, 11, 12, 13, 15, 16] {
            for client_id in [None, Some(""), Some("quakestream-window")] {
                let mut frame = fetch_frame(version, client_id);
                let at = max_wait_at(&frame, version)
                    .unwrap_or_else(|| panic!("v{version} {client_id:?}: not found"));
                assert_eq!(
                    &frame[at..at + 4],
                    &321i32.to_be_bytes(),
                    "v{version} {client_id:?}"
                );
                // Patched in place, the request still decodes, with the new wait.
                frame[at..at + 4].copy_from_slice(&0i32.to_be_bytes());
                let decoded = KafkaFrame::request_from_bytes(&frame[..]).expect("decodes");
                let request = FetchRequest::try_from(decoded.body).expect("a fetch");
                assert_eq!(request.max_wait_ms, 0, "v{version} {client_id:?}");
                let topics = request.topics.expect("topics");
                let partitions = topics[0].partitions.as_ref().expect("partitions");
                assert_eq!(
                    (partitions[0].partition, partitions[0].fetch_offset),
                    (2, 77)
                );
            }
        }
    }

    #[test]
    fn a_cut_fetch_frame_has_no_max_wait() {
        for version in [4, 12, 15] {
            let frame = fetch_frame(version, Some("client"));
            let at = max_wait_at(&frame, version).expect("whole frame");
            for len in 12..at + 4 {
                assert_eq!(
                    max_wait_at(&frame[..len], version),
                    None,
                    "v{version} cut at {len}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_fetch_frames_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            version in 0i16..20,
        ) {
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&bytes);
            if let Some(at) = max_wait_at(&frame, version) {
                prop_assert!(at + 4 <= frame.len());
            }
        }
    }
}
