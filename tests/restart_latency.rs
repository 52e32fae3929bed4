//! How long `quakestream up` takes to be processing again after `kill -9`. The issue's target:
//! "after a SIGKILL and restart, every component is processing again within 5 s, in every one of
//! 20 crash runs", on the embedded broker.
//!
//! The whole pipeline (the embedded broker, the USGS source polling a fake feed of the recorded
//! polls of 2025-05-04 every second, the window and alert processors, the files sink and the web
//! map, all with their defaults) starts once on its own data directory, broker port and web
//! port. Then, restart after restart, it works for a random 1–4 s, is killed with SIGKILL and is
//! started again at once on the same directory and ports; every kill takes the broker down too,
//! since it lives inside `up`. For each restart, the time from the spawn of the new process until
//! each component is processing again:
//!
//! - `window`, `alerts`, `files`: the `partitions assigned` line of its consumer group on stderr
//!   (logged by `kafka::Context` when the group hands the member its partitions; the groups are
//!   the default `group_id`s of `src/process/window/config.rs`, `src/process/alert/config.rs` and
//!   `src/sink/lake/config.rs`), stamped when the line arrives;
//! - `usgs`: its first successful poll. A poll with nothing new logs at debug only, so this is
//!   read from `quakestream_source_last_success_timestamp_seconds{source="usgs"}` at `/metrics`,
//!   scraped every 50 ms. The gauge holds the wall-clock time of the latest success, so the figure
//!   is that time (at most the moment of the scrape that saw it), not the moment the dashboard
//!   first answered;
//! - `web`: `/health` answering 200, asked every 50 ms.
//!
//! It prints a table: per restart, the seconds of each component and of the slowest one (`all`:
//! the whole pipeline processing again), then min / p50 / max of each column and the worst figure
//! of all. Timing is not asserted here (timing belongs in benchmarks); liveness is: a component
//! not processing within 60 s of a restart fails the test, naming the component and the run. The
//! last process stops with Ctrl+C, which must exit 0.
//!
//! Environment knobs: `QS_RESTART_RUNS`, the number of kills and restarts (default 3);
//! `QS_RESTART_SEED`, the seed of the random pauses (default the clock; printed). The figures
//! for docs/BENCHMARKS.md come from 20 restarts:
//!
//! ```text
//! QS_RESTART_RUNS=20 cargo test --release --test restart_latency -- --nocapture
//! ```
//!
//! or the same without `--release` for a debug build's figures (the note says which build).

mod common;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{SplitMix, env_number, fixture, free_port, quakestream, revision_sequence};
use quakestream::fake::{FakeServer, Step};
use tokio::runtime::Runtime;

const FEED_PATH: &str = "/earthquakes/feed/v1.0/summary/all_day.geojson";

/// Until every component of a restarted pipeline is processing: a liveness bound, not a target.
const LIMIT: Duration = Duration::from_secs(60);
/// The same for the first start, which also creates the topics and the groups.
const FIRST_START_LIMIT: Duration = Duration::from_secs(90);
/// Until the process exits after a signal.
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// Between two looks at stderr, `/health` and `/metrics`.
const PROBE_EVERY: Duration = Duration::from_millis(50);
/// Each HTTP request to the dashboard.
const REQUEST_LIMIT: Duration = Duration::from_secs(2);
/// How long the pipeline works before each kill: a random moment between these (ms).
const RUN_MS: (u64, u64) = (1_000, 4_000);

/// The components measured, in the table's order.
const COMPONENTS: [&str; 5] = ["window", "alerts", "files", "usgs", "web"];
/// The consumer group of each of the first three components: their default `group_id`s,
/// written here again so that a renamed group fails here instead of being measured by accident.
const GROUPS: [&str; 3] = [
    "quakestream-window",
    "quakestream-alerts",
    "quakestream-files",
];
const USGS: usize = 3;
const WEB: usize = 4;
/// The gauge that says when the USGS source last polled successfully (epoch seconds; 0: never).
const LAST_SUCCESS: &str = "quakestream_source_last_success_timestamp_seconds";

/// From a spawn to each component processing, in the order of [`COMPONENTS`].
type Times = [Duration; COMPONENTS.len()];

#[test]
fn restart_time_after_kill_9() {
    let runs = env_number("QS_RESTART_RUNS").unwrap_or(3).max(1);
    let seed = env_number("QS_RESTART_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let mut random = SplitMix(seed);
    let runtime = Runtime::new().unwrap();
    let steps = revision_sequence()
        .iter()
        .map(|file| Step::Json(fixture(file).into()))
        .collect();
    let feed = runtime
        .block_on(FakeServer::start("127.0.0.1:0", steps))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline {
        data: dir.path().join("data"),
        broker: format!("127.0.0.1:{}", free_port()),
        web: format!("127.0.0.1:{}", free_port()),
        feed: feed.url(FEED_PATH),
    };
    std::fs::create_dir_all(&pipeline.data).unwrap();
    let probe = Probe::new(&runtime, &pipeline.web);
    eprintln!("restart latency: {runs} kills and restarts, seed {seed} (QS_RESTART_SEED={seed})");

    let mut up = Up::start(&pipeline);
    let first = probe.until_processing(&mut up, "the first start", FIRST_START_LIMIT);
    eprintln!("first start: {}", listed(&first));
    let mut rows = Vec::new();
    for run in 1..=runs {
        let ran = Duration::from_millis(RUN_MS.0 + random.below(RUN_MS.1 - RUN_MS.0 + 1));
        std::thread::sleep(ran);
        let name = format!("run {run}");
        up.kill_9(&name);
        up = Up::start(&pipeline);
        let times = probe.until_processing(&mut up, &name, LIMIT);
        eprintln!(
            "{name}: killed after {:.2} s; {}",
            ran.as_secs_f64(),
            listed(&times)
        );
        rows.push((ran, times));
    }
    eprintln!("\n{}", table(&rows));

    up.signal("INT");
    let status = up.wait(STOP_LIMIT, "after Ctrl+C");
    assert!(
        status.success(),
        "Ctrl+C must exit 0, got {status}; stderr (tail):\n{}",
        up.tail()
    );
    feed.stop();
}

/// Where every start of `up` runs: the same data directory, broker, dashboard and feed.
struct Pipeline {
    data: PathBuf,
    broker: String,
    web: String,
    feed: String,
}

/// A running `quakestream up`, its stderr lines stamped with the moment they arrived.
struct Up {
    child: Child,
    /// Set once the child has been reaped.
    exited: Option<ExitStatus>,
    spawned: Instant,
    /// The same moment on the wall clock (epoch ms), to read the gauges of `/metrics` against.
    spawned_ms: i64,
    stderr: Receiver<(Instant, String)>,
    /// Every stderr line read so far, for failure messages.
    lines: Vec<String>,
}

impl Up {
    fn start(pipeline: &Pipeline) -> Up {
        let mut command = quakestream(&pipeline.data);
        command
            .args(["up", "--listen", &pipeline.broker, "--web", &pipeline.web])
            .args(["--usgs-url", &pipeline.feed, "--interval", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let spawned = Instant::now();
        let spawned_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut child = command.spawn().expect("spawn quakestream up");
        let pipe = child.stderr.take().expect("piped stderr");
        let (lines, stderr) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if lines.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Up {
            child,
            exited: None,
            spawned,
            spawned_ms,
            stderr,
            lines: Vec::new(),
        }
    }

    /// The stderr lines that arrived since the last call, with when each arrived.
    fn new_lines(&mut self) -> Vec<(Instant, String)> {
        let new: Vec<(Instant, String)> = self.stderr.try_iter().collect();
        self.lines.extend(new.iter().map(|(_, line)| line.clone()));
        new
    }

    /// The last stderr lines, after giving the reader a moment for the ones still in the pipe.
    fn tail(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok((_, line)) = self
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.lines.push(line);
        }
        self.lines[self.lines.len().saturating_sub(40)..].join("\n")
    }

    /// The exit status, once the process has ended (it is then reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// SIGKILL (what `Child::kill` sends on Unix), failing the test if the process had already
    /// ended by itself.
    fn kill_9(&mut self, run: &str) {
        if let Some(status) = self.exited() {
            panic!(
                "{run}: `up` ended by itself ({status}) before it was killed; stderr (tail):\n{}",
                self.tail()
            );
        }
        self.child.kill().expect("kill -9");
        self.wait(Duration::from_secs(10), &format!("{run}: after kill -9"));
    }

    /// Sends a signal by name (`INT`, `TERM`).
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the exit; kills the process and fails the test past `limit`.
    fn wait(&mut self, limit: Duration, when: &str) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                self.exited = self.child.wait().ok();
                panic!(
                    "`up` did not exit within {limit:?} {when}; stderr (tail):\n{}",
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Watches a (re)started pipeline: its stderr, and its dashboard's `/health` and `/metrics`.
struct Probe<'a> {
    runtime: &'a Runtime,
    http: reqwest::Client,
    web: String,
}

impl<'a> Probe<'a> {
    fn new(runtime: &'a Runtime, web: &str) -> Probe<'a> {
        let http = {
            let _entered = runtime.enter();
            reqwest::Client::builder()
                .no_proxy()
                .timeout(REQUEST_LIMIT)
                .build()
                .unwrap()
        };
        Probe {
            runtime,
            http,
            web: web.to_string(),
        }
    }

    /// The time from the spawn of `up` to each component processing; fails the test, naming the
    /// components still missing, past `limit` or when the process ends.
    fn until_processing(&self, up: &mut Up, what: &str, limit: Duration) -> Times {
        let mut seen: [Option<Duration>; COMPONENTS.len()] = [None; COMPONENTS.len()];
        // Whether `/metrics` has shown the USGS gauge at all (for the failure message).
        let mut gauge_shown = false;
        loop {
            for (at, line) in up.new_lines() {
                if let Some(group) = assigned_group(&line)
                    && let Some(i) = GROUPS.iter().position(|g| *g == group)
                    && seen[i].is_none()
                {
                    seen[i] = Some(at.saturating_duration_since(up.spawned));
                }
            }
            if seen[WEB].is_none()
                && let Some((200, _)) = self.get("/health")
            {
                seen[WEB] = Some(up.spawned.elapsed());
            }
            if seen[USGS].is_none()
                && let Some((200, metrics)) = self.get("/metrics")
            {
                let scraped = up.spawned.elapsed();
                if let Some(seconds) = last_success_seconds(&metrics) {
                    gauge_shown = true;
                    if seconds > 0.0 {
                        let after = (seconds * 1000.0).round() as i64 - up.spawned_ms;
                        seen[USGS] = Some(Duration::from_millis(after.max(0) as u64).min(scraped));
                    }
                }
            }
            if seen.iter().all(Option::is_some) {
                return seen.map(Option::unwrap_or_default);
            }
            if let Some(status) = up.exited() {
                panic!(
                    "{what}: `up` exited ({status}) before every component was processing; \
                     missing: {}; processing: {}; stderr (tail):\n{}",
                    missing(&seen, gauge_shown),
                    progress(&seen),
                    up.tail()
                );
            }
            if up.spawned.elapsed() > limit {
                panic!(
                    "{what}: not processing {limit:?} after its spawn: {}; processing: {}; \
                     stderr (tail):\n{}",
                    missing(&seen, gauge_shown),
                    progress(&seen),
                    up.tail()
                );
            }
            std::thread::sleep(PROBE_EVERY);
        }
    }

    /// The status and body of a GET on the dashboard; `None` if it does not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.web);
        self.runtime.block_on(async {
            let response = self.http.get(&url).send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.text().await.ok()?))
        })
    }
}

/// The group of a `partitions assigned` log line. tracing's default format quotes string fields:
/// `2025-05-04T14:00:00.123456Z  INFO quakestream::kafka: partitions assigned
/// group="quakestream-window" partitions=4`; colour codes, unquoted values and JSON lines
/// (`"group":"quakestream-window"`) are read too.
fn assigned_group(line: &str) -> Option<String> {
    let line = strip_ansi(line);
    if !line.contains("partitions assigned") {
        return None;
    }
    for key in ["group=", "\"group\":"] {
        let mut from = 0;
        while let Some(found) = line[from..].find(key) {
            let at = from + found;
            from = at + key.len();
            // `group=`, not the end of another field's name (`consumer_group=`).
            let starts_field = line[..at]
                .chars()
                .next_back()
                .is_none_or(|c| c.is_whitespace() || c == '{' || c == ',');
            if !starts_field {
                continue;
            }
            let value = line[from..].trim_start();
            let value = match value.strip_prefix('"') {
                Some(quoted) => quoted.split('"').next()?,
                None => value
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                    .next()?,
            };
            return Some(value.to_string());
        }
    }
    None
}

/// The line without its ANSI colour codes (`ESC [ … final byte`).
fn strip_ansi(line: &str) -> String {
    #[derive(Clone, Copy)]
    enum In {
        Text,
        Escape,
        Sequence,
    }
    let mut out = String::with_capacity(line.len());
    let mut state = In::Text;
    for c in line.chars() {
        state = match (state, c) {
            (In::Text, '\u{1b}') => In::Escape,
            (In::Text, _) => {
                out.push(c);
                In::Text
            }
            (In::Escape, '[') => In::Sequence,
            (In::Escape, _) | (In::Sequence, '@'..='~') => In::Text,
            (In::Sequence, _) => In::Sequence,
        };
    }
    out
}

/// The value of the USGS source's last-success gauge in a `/metrics` exposition, if it is there.
fn last_success_seconds(metrics: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(LAST_SUCCESS)
                .is_some_and(|rest| rest.starts_with('{'))
                && l.contains("source=\"usgs\"")
        })
        .find_map(|l| l.split_whitespace().next_back()?.parse().ok())
}

/// What each missing component was waited for.
fn missing(seen: &[Option<Duration>], gauge_shown: bool) -> String {
    let what: Vec<String> = (0..COMPONENTS.len())
        .filter(|&i| seen[i].is_none())
        .map(|i| match i {
            USGS if gauge_shown => "usgs (no successful poll)".to_string(),
            USGS => format!("usgs (no {LAST_SUCCESS}{{source=\"usgs\"}} at /metrics)"),
            WEB => "web (/health never answered 200)".to_string(),
            _ => format!(
                "{} (no `partitions assigned` line for group {})",
                COMPONENTS[i], GROUPS[i]
            ),
        })
        .collect();
    what.join(", ")
}

/// The components already processing, with their times.
fn progress(seen: &[Option<Duration>]) -> String {
    let done: Vec<String> = COMPONENTS
        .iter()
        .zip(seen)
        .filter_map(|(name, t)| t.map(|t| format!("{name} {:.2} s", t.as_secs_f64())))
        .collect();
    if done.is_empty() {
        "none".into()
    } else {
        done.join(", ")
    }
}

fn listed(times: &Times) -> String {
    progress(&times.map(Some))
}

/// The table: one row per restart, then min / p50 / max of each column, then the worst figure.
fn table(rows: &[(Duration, Times)]) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let slowest = |times: &Times| times.iter().copied().max().unwrap_or_default();
    let mut lines = vec![
        "seconds from the restart's spawn after kill -9 until each component is processing again \
         (window/alerts/files: `partitions assigned`; usgs: first successful poll; web: /health \
         200; all: the slowest; killed: how long it ran before the kill)"
            .to_string(),
    ];
    let mut header = format!("{:<6}{:>8}", "run", "killed");
    for name in COMPONENTS.iter().chain(&["all"]) {
        header.push_str(&format!("{name:>8}"));
    }
    lines.push(header);
    let row = |label: &str, killed: &str, values: &[f64]| {
        let mut line = format!("{label:<6}{killed:>8}");
        for v in values {
            line.push_str(&format!("{v:>8.2}"));
        }
        line
    };
    // Column by column: each component's times, then the slowest of each run.
    let mut columns: Vec<Vec<f64>> = vec![Vec::new(); COMPONENTS.len() + 1];
    for (run, (ran, times)) in rows.iter().enumerate() {
        let values: Vec<f64> = times
            .iter()
            .copied()
            .chain([slowest(times)])
            .map(secs)
            .collect();
        for (column, v) in columns.iter_mut().zip(&values) {
            column.push(*v);
        }
        lines.push(row(
            &(run + 1).to_string(),
            &format!("{:.2}", secs(*ran)),
            &values,
        ));
    }
    for column in &mut columns {
        column.sort_by(f64::total_cmp);
    }
    lines.push(row("min", "", &each(&columns, |c| c[0])));
    // The nearest-rank median: a figure that was measured.
    lines.push(row(
        "p50",
        "",
        &each(&columns, |c| c[c.len().div_ceil(2) - 1]),
    ));
    lines.push(row("max", "", &each(&columns, |c| c[c.len() - 1])));
    let worst = rows
        .iter()
        .enumerate()
        .flat_map(|(run, (_, times))| {
            times
                .iter()
                .enumerate()
                .map(move |(i, t)| (*t, run + 1, COMPONENTS[i]))
        })
        .max();
    if let Some((time, run, component)) = worst {
        lines.push(format!(
            "worst over everything: {:.2} s ({component}, run {run} of {})",
            secs(time),
            rows.len()
        ));
    }
    lines.join("\n")
}

/// One figure of each sorted column.
fn each(columns: &[Vec<f64>], pick: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    columns.iter().map(|c| pick(c.as_slice())).collect()
}

#[test]
fn reads_the_group_of_an_assignment_line() {
    let plain = "2025-05-04T14:00:00.123456Z  INFO quakestream::kafka: partitions assigned \
                 group=\"quakestream-window\" partitions=4";
    assert_eq!(assigned_group(plain).as_deref(), Some("quakestream-window"));
    let coloured = "\u{1b}[2m2025-05-04T14:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    \u{1b}[2mquakestream::kafka\u{1b}[0m\u{1b}[2m:\u{1b}[0m partitions assigned \
                    \u{1b}[3mgroup\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"quakestream-files\" \
                    \u{1b}[3mpartitions\u{1b}[0m\u{1b}[2m=\u{1b}[0m1";
    assert_eq!(
        assigned_group(coloured).as_deref(),
        Some("quakestream-files")
    );
    let unquoted = "INFO partitions assigned partitions=2 group=quakestream-alerts";
    assert_eq!(
        assigned_group(unquoted).as_deref(),
        Some("quakestream-alerts")
    );
    let json = r#"{"level":"INFO","fields":{"message":"partitions assigned","group":"quakestream-window","partitions":4}}"#;
    assert_eq!(assigned_group(json).as_deref(), Some("quakestream-window"));
    let other_field = "INFO partitions assigned consumer_group=x group=\"quakestream-files\"";
    assert_eq!(
        assigned_group(other_field).as_deref(),
        Some("quakestream-files")
    );
    assert_eq!(
        assigned_group("INFO window processor started group=quakestream-window"),
        None
    );
}

#[test]
fn reads_the_last_success_gauge() {
    let metrics = "# TYPE quakestream_source_last_success_timestamp_seconds gauge\n\
                   quakestream_source_last_success_timestamp_seconds{source=\"emsc\"} 5\n\
                   quakestream_source_last_success_timestamp_seconds{source=\"usgs\"} 1746367200.123\n";
    assert_eq!(last_success_seconds(metrics), Some(1_746_367_200.123));
    assert_eq!(
        last_success_seconds(
            "quakestream_source_last_success_timestamp_seconds{source=\"usgs\"} 0\n"
        ),
        Some(0.0)
    );
    assert_eq!(
        last_success_seconds("quakestream_source_polls_total{source=\"usgs\"} 3\n"),
        None
    );
}
