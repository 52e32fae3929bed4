//! Helpers shared by the integration tests: free ports, the binary under test, child processes
//! whose output lines can be awaited.

#![allow(dead_code)]

pub mod browser;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant},
};

/// A loopback port nobody listens on right now, below the system's ephemeral range.
///
/// A test that kills and restarts a broker binds the same port again. A port from the
/// ephemeral range (what binding port 0 gives) can meanwhile become the source port of any
/// outgoing connection on the machine (a parallel test's client, or a client connecting to
/// the dead port, which Linux may then connect to itself), and the restart fails with
/// "Address already in use". Ports below the range are never handed out that way. Within one
/// test binary the ports are taken in turn from a random start, so parallel tests do not pick
/// the same one.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = fixed_port_range();
    let span = u32::from(high - low);
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    let _ = NEXT.compare_exchange(u32::MAX, seed % span, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let port = low + (NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Up to 10,000 ports just below Linux's ephemeral range (32768 by default), above 10,000.
fn fixed_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(12_000);
    (
        high.saturating_sub(10_000).max(10_000).min(high - 1_000),
        high,
    )
}

/// The `quakestream` binary, with a clean environment for its settings.
pub fn quakestream(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quakestream"));
    command.arg("--data-dir").arg(data_dir);
    command.current_dir(data_dir.parent().unwrap_or(data_dir));
    for (key, _) in std::env::vars() {
        if key.starts_with("QUAKESTREAM_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.env("QUAKESTREAM_CLIENT_TIMEOUT", "20s");
    // Tests run side by side: each dashboard on a free port unless a test names one.
    command.env("QUAKESTREAM_WEB_LISTEN", "127.0.0.1:0");
    command
}

/// Runs a command to completion (bounded by a generous limit so a hang fails the test).
pub fn run(command: &mut Command) -> Finished {
    let mut spawned = Spawned::start(command);
    let status = spawned.wait(Duration::from_secs(120));
    Finished {
        status,
        stdout: spawned.drain_stdout(),
        stderr: spawned.drain_stderr(),
    }
}

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    pub fn stderr_text(&self) -> String {
        self.stderr.join("\n")
    }
}

/// A running child whose stdout and stderr lines arrive on channels.
pub struct Spawned {
    child: Option<Child>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl Spawned {
    pub fn start(command: &mut Command) -> Spawned {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn quakestream");
        Spawned::wrap(child)
    }

    fn wrap(mut child: Child) -> Spawned {
        let (out_tx, stdout) = channel();
        let (err_tx, stderr) = channel();
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        Spawned {
            child: Some(child),
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits for a stdout line that satisfies `want`, returning every line read up to it.
    pub fn wait_for(&mut self, want: impl Fn(&str) -> bool, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let done = want(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    let stderr: Vec<String> = self.stderr.try_iter().collect();
                    panic!(
                        "expected line not seen within {limit:?}\nstdout: {seen:#?}\nstderr: {stderr:#?}"
                    );
                }
            }
        }
    }

    /// The exit status if the process has ended (it is then reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Sends a signal by name (`INT`, `TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for exit; kills the child and fails the test past `limit`.
    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("child still owned");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!("process did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn drain_stdout(&self) -> Vec<String> {
        // The reader threads end with the pipes; give them a moment to deliver the tail.
        collect_until_closed(&self.stdout)
    }

    pub fn drain_stderr(&self) -> Vec<String> {
        collect_until_closed(&self.stderr)
    }
}

fn collect_until_closed(rx: &Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        lines.push(line);
    }
    lines
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a source run by a test gets: the dead-letter topic `quakestream-dlq` and `stop`.
#[allow(dead_code)]
pub fn source_ctx(
    settings: &quakestream::kafka::KafkaSettings,
    stop: tokio_util::sync::CancellationToken,
) -> quakestream::runtime::Context {
    quakestream::runtime::Context::new(settings, "quakestream-dlq", &std::env::temp_dir(), stop)
}

/// Starts `quakestream broker` on a free port and waits until it is ready.
pub fn start_broker(data_dir: &Path) -> (Spawned, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut broker = Spawned::start(quakestream(data_dir).args(["broker", "--listen", &addr]));
    broker.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    (broker, addr)
}

/// An embedded broker in this process on a free port, with settings for its clients.
pub async fn embedded_broker(
    data_dir: &Path,
) -> (
    quakestream::kafka::embedded::EmbeddedBroker,
    tokio_util::sync::CancellationToken,
    quakestream::kafka::KafkaSettings,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = quakestream::config::BrokerConfig {
        listen: format!("127.0.0.1:{}", free_port()),
        ..Default::default()
    };
    let broker =
        quakestream::kafka::embedded::EmbeddedBroker::start(&config, data_dir, shutdown.clone())
            .await
            .expect("embedded broker starts");
    let settings = quakestream::kafka::KafkaSettings::for_bootstrap(broker.bootstrap());
    (broker, shutdown, settings)
}

/// Every message of a topic as (key, headers, value).
pub async fn read_topic(
    settings: &quakestream::kafka::KafkaSettings,
    topic: &str,
) -> Vec<(String, serde_json::Value)> {
    let settings = settings.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::Message;
        let mut out = Vec::new();
        quakestream::kafka::reader::scan(&settings, &topic, |m| {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let value =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON value");
            out.push((key, value));
        })
        .expect("read topic");
        out
    })
    .await
    .unwrap()
}

/// The reasons of every dead letter, checking that `source` wrote each of them.
pub async fn dead_letter_reasons(
    settings: &quakestream::kafka::KafkaSettings,
    source: &str,
) -> Vec<String> {
    let letters = read_topic(settings, "quakestream-dlq").await;
    for (_, letter) in &letters {
        assert_eq!(letter["source"], source, "{letter}");
    }
    letters
        .iter()
        .map(|(_, v)| v["reason"].as_str().unwrap().to_string())
        .collect()
}

/// A fixture file of the project's `fixtures/` folder.
pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

/// The six recorded `all_day` polls of 2025-05-04, in order.
pub fn revision_sequence() -> Vec<String> {
    let dir = format!(
        "{}/fixtures/usgs/revision_sequence_2025-05-04",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("all_day_"))
        .map(|n| format!("usgs/revision_sequence_2025-05-04/{n}"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 6);
    files
}

/// (feature id, updated ms) of every feature in fixture feeds, computed straight from the JSON.
pub fn expected_revisions(files: &[String]) -> std::collections::BTreeSet<(String, i64)> {
    let mut out = std::collections::BTreeSet::new();
    for file in files {
        let feed: serde_json::Value = serde_json::from_slice(&fixture(file)).unwrap();
        for f in feed["features"].as_array().unwrap() {
            out.insert((
                f["id"].as_str().unwrap().to_string(),
                f["properties"]["updated"].as_i64().unwrap(),
            ));
        }
    }
    out
}

/// (preferred id, updated ms) of a published Quake record, read without the library's parser.
pub fn revision_of(quake: &serde_json::Value) -> (String, i64) {
    let updated = chrono::DateTime::parse_from_rfc3339(quake["updated"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    (quake["ids"][0].as_str().unwrap().to_string(), updated)
}

/// A USGS source running in this process.
pub struct RunningSource {
    pub metrics: std::sync::Arc<quakestream::metrics::SourceMetrics>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<quakestream::Result<()>>,
}

impl RunningSource {
    pub fn spawn(
        config: quakestream::source::usgs::UsgsConfig,
        settings: &quakestream::kafka::KafkaSettings,
    ) -> RunningSource {
        let metrics = std::sync::Arc::new(quakestream::metrics::SourceMetrics::new("usgs"));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn({
            let (settings, metrics, stop) = (settings.clone(), metrics.clone(), stop.clone());
            async move {
                quakestream::source::SourceSettings::run(
                    &config,
                    &source_ctx(&settings, stop),
                    metrics,
                )
                .await
            }
        });
        RunningSource {
            metrics,
            stop,
            task,
        }
    }

    /// Stops it as Ctrl+C would, and fails the test if it ended with an error.
    pub async fn stop(self) -> std::sync::Arc<quakestream::metrics::SourceMetrics> {
        self.stop.cancel();
        self.task
            .await
            .expect("source task")
            .expect("source ran without error");
        self.metrics
    }
}

/// Every distinct revision in the USGS fixtures, as the source would publish them.
pub fn fixture_quakes() -> Vec<quakestream::record::Quake> {
    let mut files = revision_sequence();
    files.extend(
        [
            "usgs/2.5_week_2023-07-03T2117Z.geojson",
            "usgs/significant_month_2023-10-11T2016Z.geojson",
            "usgs/4.5_day_2017-11-29T2001Z.geojson",
            "usgs/all_month_2018-09-22_EXCERPT_3features_nullmag.geojson",
        ]
        .map(String::from),
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut quakes = Vec::new();
    for file in files {
        let parsed = quakestream::source::geojson::parse_collection(
            &fixture(&file),
            "usgs",
            &quakestream::record::Checks::default(),
        )
        .expect("fixture parses");
        for quake in parsed.quakes {
            if seen.insert((quake.id.clone(), quake.updated)) {
                quakes.push(quake);
            }
        }
    }
    quakes
}

/// A private PostgreSQL server in a temporary directory, on a free port (`initdb` + `pg_ctl`
/// from Debian's postgresql package; run as the `postgres` user when the tests run as root,
/// since the server refuses root).
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    pub port: u16,
    as_postgres: bool,
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown to postgres (is the postgresql package installed?)"
            );
        }
        let server = PgServer {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = server.dir.path().join("data");
        server.pg("initdb", |c| {
            c.arg("-D").arg(&data).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]);
        });
        server.resume();
        server
    }

    fn pg(&self, tool: &str, args: impl FnOnce(&mut Command)) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        args(&mut command);
        let output = command.output().unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/test.sh installs postgresql)",
                program.display()
            )
        });
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Turns TLS on with this certificate and key (PEM), and restarts the server.
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        let data = self.dir.path().join("data");
        std::fs::copy(cert, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut conf, b"\nssl = on\n").unwrap();
        if self.as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .unwrap();
            assert!(status.success());
        }
        // PostgreSQL refuses a key others can read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        self.stop();
        self.resume();
    }

    /// Stops the server (fast shutdown: connections are cut), as an outage would.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        self.pg("pg_ctl", |c| {
            c.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
        });
    }

    /// Starts it again on the same port and data.
    pub fn resume(&self) {
        let (data, log) = (self.dir.path().join("data"), self.dir.path().join("log"));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        self.pg("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options, "start"]);
        });
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test server");
        tokio::spawn(connection);
        client
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The newest PostgreSQL server binaries: `QS_PG_BIN`, else Debian's /usr/lib/postgresql/N/bin.
fn pg_bin() -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("QS_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL server binaries in /usr/lib/postgresql/*/bin (scripts/test.sh installs the postgresql package)")
}

/// moto's S3 server on a free port (`QS_MOTO_SERVER`, installed by scripts/test.sh).
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let program = std::env::var("QS_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs moto[server])"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn create_bucket(&self, name: &str) {
        let response = reqwest::Client::new()
            .put(format!("{}/{name}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
    }

    pub fn bucket(&self, name: &str) -> impl object_store::ObjectStore {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(name)
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// moto's S3 server on a port chosen beforehand, as [`Moto::start`] runs it: how a test
    /// brings up an endpoint that a running pipeline has been pointed at while it was dead.
    pub fn start_on(port: u16) -> Moto {
        let program = std::env::var("QS_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e} (scripts/test.sh installs moto[server])"));
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            // moto exits at once when it cannot start: say so rather than wait 30 s.
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server on port {port} exited with {status} (port taken?)");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }
}

/// The Python with DuckDB that scripts/test.sh prepared (`QS_PYTHON`), else `python3`: runs
/// `script` with `args` and returns what it printed.
pub fn python(script: &str, args: &[&str]) -> String {
    let python = std::env::var("QS_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e} (scripts/test.sh installs it)"));
    assert!(
        output.status.success(),
        "{python} failed (DuckDB is installed by scripts/test.sh):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// An RFC 3339 time as epoch milliseconds.
pub fn millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

/// The one number a `SELECT count(*) …` answers (-1 when the query fails, as while a table is
/// not there yet).
pub async fn pg_count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

/// Every file under `dir` whose name ends with `suffix`, staging directories (`_tmp`) apart.
pub fn files_under(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                if !p.ends_with("_tmp") {
                    stack.push(p);
                }
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A whole number from the environment (a soak test's knob), `None` when unset.
pub fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?}: expected a whole number")),
    )
}

/// SplitMix64: small, and good from any seed (0 included); kill moments that a printed seed
/// replays.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }
}

/// A processor or sink run by a test as a task of its own, as the runtime runs one stage: its
/// handle, counters and stop token.
pub fn spawn_stage<S: quakestream::runtime::StageSettings>(
    stage: &S,
    settings: &quakestream::kafka::KafkaSettings,
    data_dir: &Path,
) -> (
    tokio::task::JoinHandle<quakestream::error::Result<()>>,
    std::sync::Arc<S::Counters>,
    tokio_util::sync::CancellationToken,
) {
    let counters = std::sync::Arc::new(stage.counters());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (stage, settings, counters, stop) = (
            stage.clone(),
            settings.clone(),
            counters.clone(),
            stop.clone(),
        );
        let data_dir = data_dir.to_path_buf();
        async move {
            let ctx =
                quakestream::runtime::Context::new(&settings, "quakestream-dlq", &data_dir, stop);
            stage.run(&ctx, counters).await
        }
    });
    (task, counters, stop)
}
