//! The web server's connection limits against the real binary: `quakestream run web` with no
//! Kafka (the pages answer anyway), short timeouts set in the environment, and raw TCP clients
//! that misbehave: one that never finishes its request, one that trickles it a byte at a time,
//! one that keeps its connection and says nothing, and more connections than the cap.
//!
//! The durations asserted are bounds with a wide margin ("closed within 15 s" of a 1 s
//! timeout), never measurements.

mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use common::{Spawned, quakestream};

/// How long anything that should happen within a second or two may take before the test fails.
const MARGIN: Duration = Duration::from_secs(15);

/// `quakestream run web` on a free loopback port with `[web]` settings from `env`, and the
/// address it serves on.
fn dashboard(dir: &Path, env: &[(&str, &str)]) -> (Spawned, String) {
    let mut command = quakestream(&dir.join("data"));
    // Nobody listens on port 1: the dashboard serves and says Kafka is unreachable.
    command.args(["--brokers", "127.0.0.1:1", "run", "web"]);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut web = Spawned::start(&mut command);
    let lines = web.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    let text = lines.join("\n");
    let addr = text
        .split("http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("no address in {text}"));
    (web, addr)
}

fn request(path: &str, connection: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n")
        .into_bytes()
}

/// Reads one response (its head, then `Content-Length` bytes): the status and the body.
fn read_response(stream: &mut TcpStream) -> std::io::Result<(u16, String)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no content-length in {head:?}"));
    while data.len() < head_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
    Ok((status, body))
}

/// One request on a connection of its own.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(MARGIN)).unwrap();
    stream.write_all(&request(path, "close")).unwrap();
    read_response(&mut stream).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Waits for the server to close `stream`: what it sent before; fails if it is still open
/// after `MARGIN`.
fn closed_by_server(stream: &mut TcpStream, what: &str) -> Vec<u8> {
    stream.set_read_timeout(Some(MARGIN)).unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    match stream.read_to_end(&mut seen) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "{what}: the connection is still open after {:?} ({e})",
            started.elapsed()
        ),
    }
    seen
}

/// The value of one sample line of `/metrics`.
fn metric(addr: &str, series: &str) -> f64 {
    let (_, text) = get(addr, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn slow_and_silent_clients_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut web, addr) = dashboard(
        dir.path(),
        &[
            ("QUAKESTREAM_WEB_HEADER_READ_TIMEOUT", "1s"),
            ("QUAKESTREAM_WEB_IDLE_TIMEOUT", "2s"),
        ],
    );
    let (status, body) = get(&addr, "/api/stats");
    assert_eq!(status, 200, "{body}");

    // Half a request, then nothing: closed after the header timeout, with no answer.
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let answer = closed_by_server(&mut half, "half a request head");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));

    // A head trickled a byte every 200 ms: each byte comes well within the idle timeout, yet
    // the whole head must arrive within the header timeout.
    let mut trickle = TcpStream::connect(&addr).unwrap();
    trickle
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let head = b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n".iter();
    let mut bytes = head.chain(std::iter::repeat(&b'a'));
    let mut buf = [0u8; 256];
    loop {
        match trickle.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => panic!("the trickled request was answered"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}"),
        }
        assert!(
            started.elapsed() < MARGIN,
            "a byte every 200 ms kept the connection open for {MARGIN:?}; the header timeout is 1s"
        );
        if trickle.write_all(&[*bytes.next().unwrap()]).is_err() {
            break;
        }
    }

    // A kept-alive connection, answered, then silent: closed after the idle timeout.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.set_read_timeout(Some(MARGIN)).unwrap();
    kept.write_all(&request("/api/stats", "keep-alive"))
        .unwrap();
    let (status, _) = read_response(&mut kept).unwrap();
    assert_eq!(status, 200);
    let after = closed_by_server(&mut kept, "an idle kept-alive connection");
    assert!(after.is_empty(), "{:?}", String::from_utf8_lossy(&after));

    // The server still answers, and counts what it closed.
    let closed = r#"quakestream_web_connections_closed_total{reason="header_read_timeout"}"#;
    assert!(metric(&addr, closed) >= 2.0);
    let idle = r#"quakestream_web_connections_closed_total{reason="idle_timeout"}"#;
    assert!(metric(&addr, idle) >= 1.0);

    web.signal("TERM");
    assert!(web.wait(Duration::from_secs(60)).success());
}

#[test]
fn connections_past_the_cap_wait_for_a_free_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut web, addr) = dashboard(
        dir.path(),
        &[
            ("QUAKESTREAM_WEB_MAX_CONNECTIONS", "3"),
            ("QUAKESTREAM_WEB_MAX_LIVE_CLIENTS", "1"),
        ],
    );
    // Three clients keep a connection each, answered and open.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(MARGIN)).unwrap();
            s.write_all(&request("/api/stats", "keep-alive")).unwrap();
            assert_eq!(read_response(&mut s).unwrap().0, 200);
            s
        })
        .collect();

    // A fourth gets through the kernel's queue but no answer while the three stay.
    let mut fourth = TcpStream::connect(&addr).unwrap();
    fourth.write_all(&request("/api/stats", "close")).unwrap();
    fourth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    match fourth.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a fourth connection was served past a cap of 3: {other:?}"),
    }

    // One leaves: the fourth is served.
    drop(held.remove(0));
    fourth.set_read_timeout(Some(MARGIN)).unwrap();
    let (status, body) = read_response(&mut fourth).expect("served once a connection closed");
    assert_eq!(status, 200, "{body}");

    drop(held);
    drop(fourth);
    // Room again (the closed connections' slots come back as the server notices them).
    let waited = "quakestream_web_connections_waited_total";
    assert!(metric(&addr, waited) >= 1.0);

    web.signal("TERM");
    assert!(web.wait(Duration::from_secs(60)).success());
}
