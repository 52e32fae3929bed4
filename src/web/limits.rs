//! The web server's limits (docs/web.md, "Limits"): how many connections it holds, how long a
//! client may take to send a request head, how long a connection may stay silent, how many
//! live streams one address may hold, and which host names it answers.
//!
//! `axum::serve` has no timeouts and no connection cap, and hyper's own header timeout needs
//! hyper as a direct dependency with a timer; so the connection limits sit where axum lets one
//! in, its [`Listener`]. [`Limited`] takes a slot before it accepts: past `max_connections` a
//! client waits in the kernel's accept queue until a connection closes (as behind Go's
//! `LimitListener`), rather than being reset. It hands hyper a [`Conn`] that keeps its own
//! clock. `Conn` knows just enough HTTP to find the blank line that ends a request head; it
//! cannot tell a request body from the next request, which is fine for a server that takes no
//! bodies (a body starts a "head" that the server's answer then ends).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::{Counter, Observe, Samples};

/// The connection limits, and what they did (for `/metrics`).
pub struct Connections {
    max: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    slots: Arc<Semaphore>,
    /// Connections that found every slot taken and waited for one.
    waited: Counter,
    header_timeouts: Counter,
    idle_timeouts: Counter,
}

impl Connections {
    pub fn new(max: usize, header_read_timeout: Duration, idle_timeout: Duration) -> Connections {
        Connections {
            max,
            header_read_timeout,
            idle_timeout,
            slots: Arc::new(Semaphore::new(max)),
            waited: Counter::default(),
            header_timeouts: Counter::default(),
            idle_timeouts: Counter::default(),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

impl Observe for Connections {
    fn observe(&self, out: &mut Samples) {
        out.gauge(
            "quakestream_web_connections",
            "HTTP connections open.",
            &[],
            self.open() as f64,
        );
        out.counter(
            "quakestream_web_connections_waited_total",
            "Connections that waited for a slot (web.max_connections reached).",
            &[],
            self.waited.get(),
        );
        for (reason, c) in [
            ("header_read_timeout", &self.header_timeouts),
            ("idle_timeout", &self.idle_timeouts),
        ] {
            out.counter(
                "quakestream_web_connections_closed_total",
                "Connections the server closed because of a limit, by limit.",
                &[("reason", reason)],
                c.get(),
            );
        }
    }
}

/// A listener that holds at most `max_connections` connections: at the cap it stops accepting
/// until one closes, and each connection it accepts keeps the timeouts ([`Conn`]).
pub struct Limited {
    listener: TcpListener,
    connections: Arc<Connections>,
    /// When the cap was last logged (once a minute at most).
    warned: Option<Instant>,
}

impl Limited {
    pub fn new(listener: TcpListener, connections: Arc<Connections>) -> Limited {
        Limited {
            listener,
            connections,
            warned: None,
        }
    }

    async fn slot(&mut self) -> OwnedSemaphorePermit {
        let slots = self.connections.slots.clone();
        if let Ok(slot) = slots.clone().try_acquire_owned() {
            return slot;
        }
        self.connections.waited.inc();
        if self
            .warned
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
        {
            self.warned = Some(Instant::now());
            tracing::warn!(
                max_connections = self.connections.max,
                "the web server holds web.max_connections connections; new ones wait until one closes"
            );
        }
        slots
            .acquire_owned()
            .await
            .expect("the connection slots are never closed")
    }
}

impl Listener for Limited {
    type Io = Conn<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let slot = self.slot().await;
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    return (Conn::new(stream, self.connections.clone(), slot), addr);
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// As `axum::serve` does: a connection that broke before we took it is the client's business;
/// anything else (out of file descriptors) is logged and retried a second later.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "the web server cannot accept connections; retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The client's address, as handlers see it: `ConnectInfo<Peer>`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, Limited>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Limited>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// One connection with a clock: a request head must be complete within `header_read_timeout`
/// of its start (the connection's opening for the first request, the first byte of a later
/// one), however slowly its bytes trickle in; and a connection with no byte either way for
/// `idle_timeout` is closed. Either way the client gets no answer, only the end of the
/// connection. Holds its slot until dropped.
pub struct Conn<S> {
    io: S,
    connections: Arc<Connections>,
    _slot: OwnedSemaphorePermit,
    phase: Phase,
    last_io: Instant,
    timer: Pin<Box<Sleep>>,
    /// Set once a limit closed the connection: every later call fails the same way.
    expired: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// A request head is being read, since `started`.
    Head { started: Instant, line: Line },
    /// Between requests, or answering one.
    Open,
}

/// Where the head's reader is. A `\n` at the start of a line (after `\r` or not: hyper
/// accepts `\n\n`) is the blank line that ends the head.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Line {
    /// Within a line.
    Text,
    /// At the start of a line: just after a `\n`.
    Start,
    /// After a `\r` at the start of a line.
    StartCr,
}

impl<S> Conn<S> {
    pub fn new(io: S, connections: Arc<Connections>, slot: OwnedSemaphorePermit) -> Conn<S> {
        let now = Instant::now();
        let timer = Box::pin(tokio::time::sleep_until(
            now + connections.header_read_timeout,
        ));
        Conn {
            io,
            connections,
            _slot: slot,
            phase: Phase::Head {
                started: now,
                line: Line::Text,
            },
            last_io: now,
            timer,
            expired: None,
        }
    }

    fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Head { started, .. } => started + self.connections.header_read_timeout,
            Phase::Open => self.last_io + self.connections.idle_timeout,
        }
    }

    /// Bytes from the client: they start a head when none is being read; a blank line ends it.
    fn received(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        self.last_io = now;
        for &b in bytes {
            let (started, line) = match self.phase {
                Phase::Head { started, line } => (started, line),
                Phase::Open => (now, Line::Text),
            };
            self.phase = match (line, b) {
                (Line::Start | Line::StartCr, b'\n') => Phase::Open,
                (_, b'\n') => Phase::Head {
                    started,
                    line: Line::Start,
                },
                (Line::Start, b'\r') => Phase::Head {
                    started,
                    line: Line::StartCr,
                },
                _ => Phase::Head {
                    started,
                    line: Line::Text,
                },
            };
        }
    }

    /// Bytes to the client: the server answers, so the head was read.
    fn sent(&mut self) {
        self.last_io = Instant::now();
        self.phase = Phase::Open;
    }

    /// The error that closes the connection once its deadline has passed; otherwise `Pending`,
    /// with the task woken at the deadline.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if let Some(why) = self.expired {
            return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why));
        }
        loop {
            let deadline = self.deadline();
            if deadline < self.timer.deadline() {
                self.timer.as_mut().reset(deadline);
            }
            ready!(self.timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                break;
            }
            // Bytes came since the timer was set: sleep on to the later deadline.
            self.timer.as_mut().reset(deadline);
        }
        let (counter, why) = match self.phase {
            Phase::Head { .. } => (
                &self.connections.header_timeouts,
                "no complete request head within web.header_read_timeout",
            ),
            Phase::Open => (
                &self.connections.idle_timeouts,
                "nothing sent or received within web.idle_timeout",
            ),
        };
        counter.inc();
        self.expired = Some(why);
        tracing::debug!(why, "web connection closed");
        Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, why))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired.is_some() {
            return this.poll_deadline(cx).map(Err);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() {
                    this.received(fresh);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> Conn<S> {
    /// One write (plain or vectored), timed: bytes sent count as activity, and a client that
    /// stops reading stalls the answer until the idle timeout ends it.
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.expired.is_some() {
            return self.poll_deadline(cx).map(Err);
        }
        match write(&mut self.io, cx) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.sent();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |io, cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Live streams open per client address, each address capped at `max`, so that one client
/// cannot hold every slot of `web.max_live_clients`.
#[derive(Debug)]
pub struct PerClient {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    pub fn new(max: usize) -> PerClient {
        PerClient {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for one more stream from `ip`, held until dropped; `None` when `ip` holds `max`.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        // `::ffff:1.2.3.4` is the IPv4 client 1.2.3.4 on a dual-stack socket.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            owner: self.clone(),
            ip,
        })
    }

    /// Streams open from `ip` now.
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }
}

/// One live stream's place in its client's count.
#[derive(Debug)]
pub struct ClientSlot {
    owner: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The host names the server answers, checked against each request's `Host` so that a page
/// from elsewhere cannot read the API through a browser on this machine (DNS rebinding: the
/// attacker's name is made to resolve to 127.0.0.1, and the browser still sends that name).
///
/// Answered, with any port: `localhost`; any IP address (a browser sends an address as `Host`
/// only when it was asked for that address, so the page is this server's own, not a rebound
/// name); the host of `web.listen`; and the names in `web.allowed_hosts`, or any with `"*"`.
#[derive(Debug, Clone)]
pub struct Hosts {
    any: bool,
    names: Vec<String>,
}

impl Hosts {
    pub fn new(allowed: &[String], listen_host: &str) -> Hosts {
        let names = allowed
            .iter()
            .map(String::as_str)
            .chain([
                without_port(listen_host).unwrap_or(listen_host),
                "localhost",
            ])
            .map(normalize)
            .filter(|n| !n.is_empty())
            .collect();
        Hosts {
            any: allowed.iter().any(|h| h == "*"),
            names,
        }
    }

    /// Whether a request naming `host` (a `Host` header: a name or an address, with an
    /// optional port) is answered.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let Some(name) = without_port(host) else {
            return false;
        };
        if is_address(name) {
            return true;
        }
        let name = normalize(name);
        self.names.contains(&name)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `name` of `name:port`, `[::1]` of `[::1]:8080`; `None` when what follows is not a port.
fn without_port(host: &str) -> Option<&str> {
    let is_port = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        return (rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)).then_some(name);
    }
    match host.rsplit_once(':') {
        Some((name, port)) => is_port(port).then_some(name),
        None => Some(host),
    }
}

/// An IPv4 address, or an IPv6 one in brackets (as it appears in `Host`).
fn is_address(name: &str) -> bool {
    name.parse::<Ipv4Addr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn hosts_answered_by_default_and_by_setting() {
        let hosts = Hosts::new(&[], "127.0.0.1");
        for ok in [
            "localhost",
            "localhost:8080",
            "LocalHost.:80",
            "127.0.0.1:8080",
            "[::1]:8080",
            "[::1]",
            "192.168.1.20:8080",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "rebind.attacker.example:8080",
            "attacker.example",
            "localhost.attacker.example",
            "localhost:http",
            "::1",
            "[::1]x",
            "",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
        let hosts = Hosts::new(&["Map.Example.org".into()], "dash.lan:8080");
        assert!(hosts.allows("map.example.org:443"));
        assert!(hosts.allows("dash.lan:8080"));
        assert!(!hosts.allows("other.example.org"));
        assert!(Hosts::new(&["*".into()], "127.0.0.1").allows("anything.example"));
    }

    #[test]
    fn per_client_slots_are_counted_and_given_back() {
        let per = Arc::new(PerClient::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let one = per.try_take(a).unwrap();
        // The same client through a dual-stack socket.
        let two = per.try_take("::ffff:10.0.0.1".parse().unwrap()).unwrap();
        assert!(per.try_take(a).is_none(), "a third from the same address");
        assert!(per.try_take(b).is_some(), "another address has its own");
        drop(one);
        assert_eq!(per.open(a), 1);
        let _three = per.try_take(a).unwrap();
        drop(two);
        assert_eq!(per.open(a), 1);
    }

    fn conn(
        header: u64,
        idle: u64,
    ) -> (
        Conn<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Connections>,
    ) {
        let connections = Arc::new(Connections::new(
            4,
            Duration::from_secs(header),
            Duration::from_secs(idle),
        ));
        let slot = connections.slots.clone().try_acquire_owned().unwrap();
        let (server, client) = tokio::io::duplex(64 * 1024);
        (
            Conn::new(server, connections.clone(), slot),
            client,
            connections,
        )
    }

    /// `elapsed` is `secs` of the paused clock (the timer wheel counts in milliseconds).
    fn assert_about(elapsed: Duration, secs: u64) {
        let want = Duration::from_secs(secs);
        assert!(
            elapsed >= want && elapsed < want + Duration::from_millis(50),
            "{elapsed:?}, expected {want:?}"
        );
    }

    /// Reads on the server side until the limit ends the connection; what was read before.
    async fn read_until_closed(server: &mut Conn<tokio::io::DuplexStream>) -> io::Result<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = server.read(&mut buf).await?;
            if n == 0 {
                return Ok(String::from_utf8_lossy(&seen).into_owned());
            }
            seen.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_at_the_header_timeout() {
        let (mut server, mut client, connections) = conn(5, 60);
        let started = Instant::now();
        tokio::spawn(async move {
            // A byte a second: each comes well within the idle timeout, the head never ends.
            for b in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaa" {
                if client.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let error = read_until_closed(&mut server).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(error.to_string().contains("web.header_read_timeout"));
        assert_about(started.elapsed(), 5);
        assert_eq!(connections.header_timeouts.get(), 1);
        assert_eq!(connections.idle_timeouts.get(), 0);
        // Later calls fail the same way and count nothing more.
        assert!(server.write_all(b"x").await.is_err());
        assert_eq!(connections.header_timeouts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answered_connections_stay_while_bytes_flow_then_idle_out() {
        let (mut server, mut client, connections) = conn(5, 20);
        client
            .write_all(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = server.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("\r\n\r\n"));
        // A live stream: a keep-alive every 10 s keeps it open well past both timeouts.
        for _ in 0..6 {
            server.write_all(b":\n\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        assert_eq!(connections.header_timeouts.get(), 0);
        assert_eq!(connections.idle_timeouts.get(), 0);
        // Then silence: closed after the idle timeout, counted as such.
        let started = Instant::now();
        let error = read_until_closed(&mut server).await.unwrap_err();
        assert!(error.to_string().contains("web.idle_timeout"));
        // 20 s after the last byte, written 10 s before.
        assert_about(started.elapsed(), 10);
        assert_eq!(connections.idle_timeouts.get(), 1);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_on_a_kept_connection_gets_its_own_head_timeout() {
        let (mut server, mut client, connections) = conn(5, 60);
        // The server: reads while there is nothing to do (as hyper does), answers each head.
        let serving = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                let n = server.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<(), io::Error>(());
                }
                if buf[..n].ends_with(b"\r\n\r\n") {
                    server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await?;
                }
            }
        });
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .unwrap();
            let n = client.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            // Longer than the header timeout between requests: that is the idle timeout's
            // business, not the head's.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        assert_eq!(connections.header_timeouts.get(), 0);
        // A half head is cut 5 s after its first byte.
        client.write_all(b"GET / HT").await.unwrap();
        let started = Instant::now();
        let error = serving.await.unwrap().unwrap_err();
        assert!(error.to_string().contains("web.header_read_timeout"));
        assert_about(started.elapsed(), 5);
        assert_eq!(connections.idle_timeouts.get(), 0);
    }
}
