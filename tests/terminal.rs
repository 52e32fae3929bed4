//! A healthy `quakestream up` prints nothing a newcomer would read as a failure (issue #15,
//! "a clear terminal").
//!
//! The whole default pipeline (the embedded broker, the USGS source polling a fake feed of the
//! recorded polls of 2025-05-04 every second, the window and alert processors, the files sink and
//! the web map) starts on a fresh data directory, publishes its first poll, runs for a while
//! (long enough for the pipeline monitor to sample the broker several times), and stops with
//! Ctrl+C. Then it starts again on the same directory and ports, as a user does the next day,
//! and stops again.
//!
//! Neither run may print a `WARN` or `ERROR` line (nor `error:`, nor a panic) on stdout or
//! stderr. The embedded broker, tansu, logs a few requests it answers as it should at ERROR
//! (a topic that another component created a moment before, DescribeGroups); `main.rs` hides
//! exactly those by default, so this test is the one that fails when an upgrade of tansu changes
//! their text. And the terminal says what each component does: one `component running` line per
//! component after the start, one `component stopped` line per component after Ctrl+C.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::{Spawned, fixture, free_port, quakestream, revision_sequence};
use quakestream::fake::{FakeServer, Step};
use serde_json::Value;

/// The components `up` runs with the default configuration.
const COMPONENTS: [&str; 5] = ["usgs", "window", "alerts", "files", "web"];
/// How long each run goes on after its first poll is on the map: the monitor samples the
/// broker every 5 s, so this covers a few samples.
const RUN_FOR: Duration = Duration::from_secs(15);
/// Until the first poll is on the map (the first start also creates the topics and groups).
const START_LIMIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_up_and_its_restart_print_no_warning_or_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let steps = revision_sequence()
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect();
    let feed = FakeServer::start("127.0.0.1:0", steps).await.unwrap();
    let url = feed.url("/earthquakes/feed/v1.0/summary/all_day.geojson");
    let broker = format!("127.0.0.1:{}", free_port());
    let web = format!("127.0.0.1:{}", free_port());

    let mut runs = Vec::new();
    for run in ["first start", "restart on the same data directory"] {
        runs.push((run, run_up(&data, &broker, &web, &url).await));
    }

    let problems: Vec<String> = runs
        .iter()
        .flat_map(|(run, (stdout, stderr))| {
            stdout
                .iter()
                .chain(stderr)
                .filter(|line| alarming(line))
                .map(move |line| format!("{run}: {line}"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "a healthy `up` printed {} alarming line(s):\n{}",
        problems.len(),
        problems.join("\n")
    );

    for (run, (stdout, stderr)) in &runs {
        for component in COMPONENTS {
            for (message, when) in [
                ("component running", "after the start"),
                ("component stopped", "after Ctrl+C"),
            ] {
                let lines = state_lines(stderr, message, component);
                assert_eq!(
                    lines.len(),
                    1,
                    "{run}: one `{message}` line for {component} {when}, got {lines:#?}\n\
                     stderr: {stderr:#?}"
                );
            }
        }
        assert_eq!(
            stdout.last().map(String::as_str),
            Some("quakestream stopped"),
            "{run}: stdout: {stdout:#?}"
        );
    }
}

/// Runs `up` until its first poll is on the map and [`RUN_FOR`] more, stops it with Ctrl+C
/// (which must exit 0), and returns every line of its stdout and stderr.
async fn run_up(data: &Path, broker: &str, web: &str, url: &str) -> (Vec<String>, Vec<String>) {
    let mut command = quakestream(data);
    command.args([
        "up",
        "--listen",
        broker,
        "--web",
        web,
        "--usgs-url",
        url,
        "--interval",
        "1s",
    ]);
    let mut up = Spawned::start(&mut command);
    let mut stdout = up.wait_for(|l| l.contains("Press Ctrl+C"), START_LIMIT);
    let deadline = Instant::now() + START_LIMIT;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    loop {
        if let Some(status) = up.try_wait() {
            panic!(
                "`up` exited ({status}) before its first poll was on the map; stderr: {:#?}",
                up.drain_stderr()
            );
        }
        if events(&http, web).await > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first poll was not on the map within {START_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(RUN_FOR).await;
    up.signal("INT");
    let status = up.wait(Duration::from_secs(60));
    stdout.extend(up.drain_stdout());
    let stderr = up.drain_stderr();
    assert!(
        status.success(),
        "Ctrl+C must exit 0, got {status}; stderr: {stderr:#?}"
    );
    (stdout, stderr)
}

/// The `events` count `/health` reports, 0 while the dashboard does not answer.
async fn events(http: &reqwest::Client, web: &str) -> u64 {
    let Ok(response) = http.get(format!("http://{web}/health")).send().await else {
        return 0;
    };
    let health: Value = response.json().await.unwrap_or_default();
    health["events"].as_u64().unwrap_or(0)
}

/// A line a person would read as a failure: a `WARN` or `ERROR` log line (the fmt layer writes
/// `<timestamp> <LEVEL> <target>: …`, the level padded to five characters), the `error:` line
/// of a failed command, or a panic.
fn alarming(line: &str) -> bool {
    let level = line.split_whitespace().nth(1).unwrap_or_default();
    level == "WARN"
        || level == "ERROR"
        || line.contains(" WARN ")
        || line.contains(" ERROR ")
        || line.starts_with("error:")
        || line.contains("panicked")
}

/// The supervisor's lines with `message` for `component` (`… component running
/// component="usgs"`).
fn state_lines<'a>(stderr: &'a [String], message: &str, component: &str) -> Vec<&'a String> {
    let field = format!("component=\"{component}\"");
    stderr
        .iter()
        .filter(|l| {
            l.contains(&format!(": {message} ")) && l.split_whitespace().any(|word| word == field)
        })
        .collect()
}
