//! Crash it, then count: `quakestream up` as a real process (USGS source, embedded broker, window
//! and alert processors, Parquet lake) is killed with `kill -9` at random moments while the
//! recorded revision sequence of 2025-05-04 is fed to it one poll at a time, and restarted on
//! the same data directory and broker address each time. Every kill is also a broker restart:
//! the embedded broker lives inside `up`. One of the kills comes in the first moments after
//! start, before the components are up. The last run catches up and stops with Ctrl+C (exit 0);
//! then the outputs are compared with an oracle computed from the fixture files alone:
//!
//! 1. every (id, updated) revision of the feeds is on `earthquakes` exactly once;
//! 2. every revision is in the Parquet lake exactly once (read by DuckDB);
//! 3. every window's last result on `earthquake-stats` is the count, average and largest
//!    magnitude of the newest revision of each event whose origin time falls in it, as in
//!    `tests/windows.rs` (and no window closes: see below);
//! 4. no alert is repeated on `earthquake-alerts` (one `new` per event, an `upgrade` only above
//!    what was alerted, a `cancel` only of an alerted event, one alert per revision at most),
//!    and each event has exactly the alerts the default rule (M4.5+, steps of 0.5) implies;
//!
//! and nothing went to the dead-letter topic.
//!
//! Two settings differ from the defaults, for the oracle's sake: `window.lateness = 48h`, so that
//! revisions arriving hours after their event are never late (with 2 h, which of them is late
//! depends on how batches fell around the kills, as in any streaming engine), and
//! `window.emit_interval = 0s`, because coalesced updates not yet written when a process dies
//! are by design not re-sent (docs/windows.md: "updates are previews"). The lake rolls its files
//! after 1 s instead of 60 s, so that the test does not wait for them.
//!
//! The feed advances to the next recorded poll only once everything served so far is on the
//! topic: a feed that moved on while the pipeline was down loses revisions no pipeline could
//! have seen, which is not what this test is about.
//!
//! The kill moments come from a small generator whose seed is printed. Environment knobs:
//!
//! - `QS_CRASH_SEED`: the seed of the first run (default: the clock). A failure prints the seed
//!   of its run; `QS_CRASH_SEED=<seed> QS_CRASH_RUNS=1` replays its kill moments (the timing of
//!   the machine itself cannot be replayed).
//! - `QS_CRASH_KILLS`: kills per run (default 8).
//! - `QS_CRASH_RUNS`: how many times the whole scenario runs, each with the next seed
//!   (default 1). One lucky run proves nothing; soak it:
//!
//! ```text
//! QS_CRASH_RUNS=5 cargo test --test crash -- --nocapture
//! ```
//!
//! `QS_PYTHON` names the Python with DuckDB (scripts/test.sh prepares it), as in `tests/lake.rs`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Spawned, SplitMix, env_number, expected_revisions, fixture, free_port, quakestream, read_topic,
    revision_of, revision_sequence,
};
use quakestream::{
    fake::{FakeServer, Step},
    kafka::KafkaSettings,
    record::{format_millis, parse_millis},
};
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const FEED_PATH: &str = "/earthquakes/feed/v1.0/summary/all_day.geojson";
const MINUTE: i64 = 60_000;

/// Until `up` prints its banner (the embedded broker is listening by then).
const START_LIMIT: Duration = Duration::from_secs(90);
/// Until the polls served so far are all on the topic.
const PUBLISH_LIMIT: Duration = Duration::from_secs(60);
/// Until the last run's outputs match the oracle.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(180);
/// Until a process exits after a signal.
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// The early kill comes within this many milliseconds of the start.
const EARLY_KILL_MS: u64 = 1_500;
/// The other kills come within this many milliseconds of the feed's advance: long enough to
/// land while the processors and sinks have their partitions and work, not only while they
/// join their groups.
const KILL_MS: u64 = 9_000;

/// The default alert rule and magnitude step, written here again so that the oracle does not
/// trust the library's.
const RULE: &str = "M4.5+";
const MIN_MAGNITUDE: f64 = 4.5;
const MAGNITUDE_STEP: f64 = 0.5;
const LEVELS: [&str; 4] = ["green", "yellow", "orange", "red"];

/// Window start → (count, avg mag, max mag).
type Results = BTreeMap<String, (u64, Option<f64>, Option<f64>)>;
/// (event id, updated ms).
type Revision = (String, i64);
/// Messages of a topic as (key, value).
type Records = Vec<(String, Value)>;

/// The hostile feed: polls 3 and 6 of the sequence also carry features no reader may take (a
/// far-future time, NUL, markup and a chat mention in `place`, magnitude 1e308, a 100 kB
/// `place`, latitude 200, a missing time, a mistyped magnitude), and `up` is killed twice. The
/// real revisions land once; the windows and the alerts are the oracle's, computed from the
/// real feeds alone (no window in 2100, no average of 1e308, no alert for an injected feature);
/// each injected feature is a dead letter naming its reason; nothing panics.
#[test]
fn a_hostile_feed_is_refused_feature_by_feature_and_the_real_events_land_exactly() {
    let seed = env_number("QS_CRASH_SEED").unwrap_or(2026);
    let mut oracle = Oracle::from_fixtures(&revision_sequence());
    oracle.hostile = true;
    let runtime = Runtime::new().unwrap();
    crash_run(1, seed, 2, &oracle, &runtime);
}

#[test]
fn up_killed_at_random_moments_and_a_broker_restart_lose_and_repeat_nothing() {
    let runs = env_number("QS_CRASH_RUNS").unwrap_or(1).max(1);
    let kills = env_number("QS_CRASH_KILLS").unwrap_or(8).max(1);
    let first_seed = env_number("QS_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let oracle = Oracle::from_fixtures(&revision_sequence());
    let runtime = Runtime::new().unwrap();
    for run in 0..runs {
        let seed = first_seed.wrapping_add(run);
        eprintln!(
            "crash run {} of {runs}: seed {seed}, {kills} kills (replay: QS_CRASH_SEED={seed} QS_CRASH_RUNS=1)",
            run + 1
        );
        let started = Instant::now();
        crash_run(run + 1, seed, kills, &oracle, &runtime);
        eprintln!("crash run {} passed in {:.0?}", run + 1, started.elapsed());
    }
}

/// One scenario: fresh data directory, broker address and feed; `kills` kills; the last run
/// caught up and stopped; the outputs checked.
fn crash_run(run: u64, seed: u64, kills: u64, oracle: &Oracle, runtime: &Runtime) {
    let mut random = SplitMix(seed);
    let mut journal = Journal {
        run,
        seed,
        started: Instant::now(),
        moments: Vec::new(),
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let lake = data.join("lake/earthquakes");
    let broker = format!("127.0.0.1:{}", free_port());
    let settings = KafkaSettings::for_bootstrap(broker.as_str());
    let files = revision_sequence();
    // The first poll is there from the start: a 404 would put the source in backoff.
    let feed = runtime
        .block_on(FakeServer::start(
            "127.0.0.1:0",
            vec![oracle.poll(&files, 0)],
        ))
        .unwrap();
    let url = feed.url(FEED_PATH);
    let mut served = 1;

    let early = random.below(kills);
    for kill in 0..kills {
        let spawned = Instant::now();
        let mut up = start_up(&data, &broker, &url);
        if kill == early {
            let after = random.below(EARLY_KILL_MS);
            std::thread::sleep(Duration::from_millis(after));
            kill_9(&mut up, &journal);
            journal.note(format!(
                "kill {}: {after} ms after the start (early), feed at poll {served}",
                kill + 1
            ));
            continue;
        }
        up.wait_for(started, START_LIMIT);
        let up_after = spawned.elapsed();
        wait_published(runtime, &settings, &oracle.served[served - 1], &journal);
        let advanced = served < files.len();
        if advanced {
            feed.push([oracle.poll(&files, served)]);
            served += 1;
        }
        let after = random.below(KILL_MS);
        std::thread::sleep(Duration::from_millis(after));
        kill_9(&mut up, &journal);
        journal.note(format!(
            "kill {}: up after {up_after:.1?}, {after} ms after the feed {} poll {served}",
            kill + 1,
            if advanced { "advanced to" } else { "stayed at" },
        ));
    }

    // The last run: the rest of the feed, then until the outputs match (or the limit).
    let mut up = start_up(&data, &broker, &url);
    up.wait_for(started, START_LIMIT);
    while served < files.len() {
        wait_published(runtime, &settings, &oracle.served[served - 1], &journal);
        feed.push([oracle.poll(&files, served)]);
        served += 1;
    }
    journal.note(format!(
        "last run: feed at poll {served}, waiting to catch up"
    ));
    let deadline = Instant::now() + CATCH_UP_LIMIT;
    loop {
        let problems = oracle.check(&observe(runtime, &settings, &lake));
        if problems.is_empty() {
            break;
        }
        // What is on a topic stays there: a repeat will not go away by waiting.
        if !problems.permanent.is_empty() || Instant::now() > deadline {
            eprintln!("{journal}not caught up:\n{problems}");
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    up.signal("INT");
    let status = up.wait(STOP_LIMIT);
    assert!(
        status.success(),
        "{journal}Ctrl+C must exit 0, got {status}; stderr (tail):\n{}",
        tail(&up.drain_stderr())
    );
    let panics: Vec<String> = up
        .drain_stderr()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{journal}panics: {panics:#?}");
    journal.note("last run: stopped with Ctrl+C, exit 0".into());

    // What the pipeline left behind, read back with the broker alone: a clean stop may not
    // add anything either.
    let mut alone = Spawned::start(quakestream(&data).args(["broker", "--listen", &broker]));
    alone.wait_for(started, START_LIMIT);
    let observed = observe(runtime, &settings, &lake);
    alone.signal("INT");
    alone.wait(STOP_LIMIT);
    feed.stop();
    let problems = oracle.check(&observed);
    assert!(problems.is_empty(), "{journal}{problems}");
}

/// `quakestream up` with its own broker on `broker`, polling the fake feed.
fn start_up(data: &Path, broker: &str, url: &str) -> Spawned {
    let mut command = quakestream(data);
    command
        .args(["up", "--listen", broker, "--usgs-url", url])
        .args(["--interval", "300ms"])
        .env("QUAKESTREAM_WINDOW_LATENESS", "48h")
        .env("QUAKESTREAM_WINDOW_EMIT_INTERVAL", "0s")
        .env("QUAKESTREAM_FILES_ROLL_AGE", "1s");
    Spawned::start(&mut command)
}

fn started(line: &str) -> bool {
    line.contains("Press Ctrl+C")
}

/// The injected features of the hostile feed: id, and what the reason of its dead letter says.
/// Each has magnitude 7 (it would be alerted, were it taken) unless its magnitude is the fault.
const HOSTILE: [(&str, &str); 7] = [
    ("hostile-future", "ahead of the clock"),
    ("hostile-nul", "place contains a NUL character"),
    ("hostile-mag", "magnitude 1e308 is outside"),
    ("hostile-huge", "place is 100000 bytes long"),
    ("hostile-lat", "latitude 200 is outside"),
    ("hostile-missing", "time is missing"),
    ("hostile-mistyped", "not a number"),
];
/// The polls (0-based) of the sequence that carry them.
const HOSTILE_POLLS: [usize; 2] = [2, 5];

/// The hostile features, made from a real one with another id (and no aliases, which would
/// merge them with it).
fn hostile_features(template: &Value) -> Vec<Value> {
    HOSTILE
        .iter()
        .map(|(id, _)| {
            let mut f = template.clone();
            f["id"] = json!(id);
            f["properties"]["ids"] = json!(format!(",{id},"));
            f["properties"]["code"] = json!(id);
            f["properties"]["mag"] = json!(7.0);
            let far_future = json!(4_102_444_800_000_i64);
            match *id {
                "hostile-future" => {
                    f["properties"]["time"] = far_future.clone();
                    f["properties"]["updated"] = far_future;
                }
                "hostile-nul" => {
                    f["properties"]["place"] =
                        json!("Evil\u{0} <script>alert(1)</script> <!channel> \u{1b}[2J");
                }
                "hostile-mag" => f["properties"]["mag"] = json!(1e308),
                "hostile-huge" => f["properties"]["place"] = json!("x".repeat(100_000)),
                "hostile-lat" => f["geometry"]["coordinates"][1] = json!(200.0),
                "hostile-missing" => {
                    f["properties"].as_object_mut().unwrap().remove("time");
                }
                _ => f["properties"]["mag"] = json!("big"),
            }
            f
        })
        .collect()
}

/// `kill -9`, failing the test if the process had already ended by itself.
fn kill_9(up: &mut Spawned, journal: &Journal) {
    if let Some(status) = up.try_wait() {
        panic!(
            "{journal}`up` ended by itself ({status}) before it was killed; stderr (tail):\n{}",
            tail(&up.drain_stderr())
        );
    }
    up.signal("KILL");
    up.wait(Duration::from_secs(10));
}

/// Waits until every revision of the polls served so far is on the topic.
fn wait_published(
    runtime: &Runtime,
    settings: &KafkaSettings,
    want: &BTreeSet<Revision>,
    journal: &Journal,
) {
    let deadline = Instant::now() + PUBLISH_LIMIT;
    loop {
        let got: BTreeSet<Revision> = runtime
            .block_on(read_topic(settings, "earthquakes"))
            .iter()
            .map(|(_, quake)| revision_of(quake))
            .collect();
        let missing: Vec<&Revision> = want.difference(&got).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{journal}{} revisions of the polls served so far not on `earthquakes` after {PUBLISH_LIMIT:?}: {}",
            missing.len(),
            listed(&missing)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last lines of a process's output.
fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The seed and what happened when, for the failure message.
struct Journal {
    run: u64,
    seed: u64,
    started: Instant,
    moments: Vec<String>,
}

impl Journal {
    fn note(&mut self, moment: String) {
        let line = format!("{:>6.1?} {moment}", self.started.elapsed());
        eprintln!("  {line}");
        self.moments.push(line);
    }
}

impl fmt::Display for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash run {} with seed {} (replay: QS_CRASH_SEED={} QS_CRASH_RUNS=1)",
            self.run, self.seed, self.seed
        )?;
        for moment in &self.moments {
            writeln!(f, "  {moment}")?;
        }
        Ok(())
    }
}

/// What the pipeline wrote: three topics, the dead letters and the lake's rows.
struct Observed {
    quakes: Records,
    stats: Records,
    alerts: Records,
    dead_letters: Records,
    lake: Result<Vec<Revision>, String>,
}

fn observe(runtime: &Runtime, settings: &KafkaSettings, lake: &Path) -> Observed {
    let (quakes, stats, alerts, dead_letters) = runtime.block_on(async {
        (
            read_topic(settings, "earthquakes").await,
            read_topic(settings, "earthquake-stats").await,
            read_topic(settings, "earthquake-alerts").await,
            read_topic(settings, "quakestream-dlq").await,
        )
    });
    Observed {
        quakes,
        stats,
        alerts,
        dead_letters,
        lake: duckdb_revisions(lake),
    }
}

/// (id, updated ms) of every row of a topic's Parquet files, as DuckDB reads them (the
/// approach of `tests/lake.rs`).
fn duckdb_revisions(dir: &Path) -> Result<Vec<Revision>, String> {
    let script = r#"
import duckdb, glob as g, json, sys
glob = sys.argv[1] + "/*/*/*.parquet"
if not g.glob(glob):
    print("[]")
    sys.exit(0)
rows = duckdb.connect().sql(f"SELECT id, epoch_ms(updated) FROM read_parquet('{glob}')").fetchall()
print(json.dumps(rows))
"#;
    let python = std::env::var("QS_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {python}: {e} (scripts/test.sh installs it)"))?;
    if !output.status.success() {
        return Err(format!(
            "{python} failed (DuckDB is installed by scripts/test.sh):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| format!("DuckDB's rows: {e}"))
}

/// What went wrong. `permanent`: written to a topic, so waiting cannot fix it; `pending`: may
/// still be caught up.
#[derive(Default)]
struct Problems {
    permanent: Vec<String>,
    pending: Vec<String>,
}

impl Problems {
    fn is_empty(&self) -> bool {
        self.permanent.is_empty() && self.pending.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.permanent.iter().chain(&self.pending) {
            writeln!(f, "- {problem}")?;
        }
        Ok(())
    }
}

/// The first items of a list, and how many more there are.
fn listed<T: fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(12).map(|i| format!("{i:?}")).collect();
    let more = items.len() - shown.len();
    if more > 0 {
        format!("{} … and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// How a set of revisions differs from the expected one.
fn revision_problems(
    what: &str,
    expected: &BTreeSet<Revision>,
    got: impl IntoIterator<Item = Revision>,
) -> (Option<String>, Option<String>) {
    let mut counts: BTreeMap<Revision, usize> = BTreeMap::new();
    for revision in got {
        *counts.entry(revision).or_default() += 1;
    }
    let repeated: Vec<(&Revision, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<&Revision> = counts.keys().filter(|r| !expected.contains(*r)).collect();
    let missing: Vec<&Revision> = expected
        .iter()
        .filter(|r| !counts.contains_key(*r))
        .collect();
    let mut wrong = Vec::new();
    if !repeated.is_empty() {
        wrong.push(format!(
            "{} revisions more than once ((id, updated), times): {}",
            repeated.len(),
            listed(&repeated)
        ));
    }
    if !unexpected.is_empty() {
        wrong.push(format!(
            "{} revisions in no feed: {}",
            unexpected.len(),
            listed(&unexpected)
        ));
    }
    let wrong = (!wrong.is_empty()).then(|| format!("{what}: {}", wrong.join("; ")));
    let missing = (!missing.is_empty()).then(|| {
        format!(
            "{what}: {} of {} revisions missing: {}",
            missing.len(),
            expected.len(),
            listed(&missing)
        )
    });
    (wrong, missing)
}

/// (count, avg, max) of magnitudes, summed in sorted order like the engine (as in
/// `tests/windows.rs`).
fn aggregate(mags: &[Option<f64>]) -> (u64, Option<f64>, Option<f64>) {
    let mut present: Vec<f64> = mags.iter().flatten().copied().collect();
    present.sort_by(f64::total_cmp);
    let n = present.len();
    let sum: f64 = present.iter().sum();
    (
        mags.len() as u64,
        (n > 0).then(|| sum / n as f64),
        present.last().copied(),
    )
}

fn result_of(value: &Value) -> (u64, Option<f64>, Option<f64>) {
    (
        value["count"].as_u64().expect("count"),
        value["avg_mag"].as_f64(),
        value["max_mag"].as_f64(),
    )
}

/// The last result written for each window, and the finals, as `tests/windows.rs` reads them:
/// a window never gets two different finals, and its last result is its final.
fn results(records: &[(String, Value)], problems: &mut Problems) -> (Results, Results) {
    let mut last = BTreeMap::new();
    let mut last_final = BTreeMap::new();
    let mut finals: Results = BTreeMap::new();
    for (key, value) in records {
        let Some(start) = value["window_start"].as_str() else {
            problems.permanent.push(format!(
                "earthquake-stats: a result without a window: {value}"
            ));
            continue;
        };
        let start = start.to_string();
        if *key != start {
            problems.permanent.push(format!(
                "earthquake-stats: the result of window {start} is keyed {key:?}"
            ));
        }
        let result = result_of(value);
        let is_final = value["final"] == true;
        if is_final
            && let Some(before) = finals.insert(start.clone(), result)
            && before != result
        {
            problems.permanent.push(format!(
                "earthquake-stats: two different finals for {start}: {before:?}, then {result:?}"
            ));
        }
        last_final.insert(start.clone(), is_final);
        last.insert(start, result);
    }
    for start in finals.keys().filter(|s| !last_final[*s]) {
        problems.permanent.push(format!(
            "earthquake-stats: an update is the last result of closed window {start}"
        ));
    }
    (last, finals)
}

/// What an event was alerted at: magnitude step, PAGER rank, tsunami flag, rules matched.
#[derive(Debug, Clone, Default, PartialEq)]
struct Severity {
    step: Option<i64>,
    level: u64,
    tsunami: bool,
    rules: BTreeSet<String>,
}

impl Severity {
    /// The `severity` of an alert record.
    fn of(alert: &Value) -> Severity {
        let s = &alert["severity"];
        Severity {
            step: s["step"].as_i64(),
            level: s["level"].as_u64().unwrap_or(0),
            tsunami: s["tsunami"].as_bool().unwrap_or(false),
            rules: s["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect(),
        }
    }

    /// Above `before` in some part: what makes an `upgrade`.
    fn raises(&self, before: &Severity) -> bool {
        self.step > before.step
            || self.level > before.level
            || (self.tsunami && !before.tsunami)
            || !self.rules.is_subset(&before.rules)
    }

    fn merge(&mut self, other: &Severity) {
        self.step = self.step.max(other.step);
        self.level = self.level.max(other.level);
        self.tsunami |= other.tsunami;
        self.rules.extend(other.rules.iter().cloned());
    }
}

/// One revision as the alert rule sees it, read from the fixture JSON.
struct Seen {
    mag: Option<f64>,
    level: u64,
    tsunami: bool,
    deleted: bool,
}

/// What the outputs must be, computed from the fixture files alone.
struct Oracle {
    /// Whether polls [`HOSTILE_POLLS`] carry the [`HOSTILE`] features.
    hostile: bool,
    /// Every revision of the feeds.
    revisions: BTreeSet<Revision>,
    /// `served[k]`: every revision of polls `0..=k`.
    served: Vec<BTreeSet<Revision>>,
    /// Each window's result from each event's newest revision (windows with events only).
    windows: Results,
    /// The kinds of alert each event gets, in order.
    alerts: BTreeMap<String, Vec<String>>,
}

impl Oracle {
    /// Poll `k` of the sequence as the fake feed serves it.
    fn poll(&self, files: &[String], k: usize) -> Step {
        let body = fixture(&files[k]);
        if !(self.hostile && HOSTILE_POLLS.contains(&k)) {
            return Step::Json(body.into());
        }
        let mut feed: Value = serde_json::from_slice(&body).unwrap();
        let features = feed["features"].as_array_mut().unwrap();
        let injected = hostile_features(&features[0]);
        // Among the real ones, not only at the end.
        let middle = features.len() / 2;
        features.splice(middle..middle, injected);
        Step::Json(serde_json::to_vec(&feed).unwrap().into())
    }

    fn from_fixtures(files: &[String]) -> Oracle {
        let served = (1..=files.len())
            .map(|n| expected_revisions(&files[..n]))
            .collect();

        // Windows, as tests/windows.rs builds them: each event's newest revision, in 5-minute
        // windows by origin time; a deleted event is retracted.
        let mut newest: BTreeMap<String, (i64, i64, Option<f64>, bool)> = BTreeMap::new();
        let mut by_event: BTreeMap<String, BTreeMap<i64, Seen>> = BTreeMap::new();
        for file in files {
            let feed: Value = serde_json::from_slice(&fixture(file)).unwrap();
            for f in feed["features"].as_array().unwrap() {
                let p = &f["properties"];
                let id = f["id"].as_str().unwrap().to_string();
                let updated = p["updated"].as_i64().unwrap();
                let deleted = p["status"].as_str() == Some("deleted");
                let revision = (
                    updated,
                    p["time"].as_i64().unwrap(),
                    p["mag"].as_f64(),
                    deleted,
                );
                if newest.get(&id).is_none_or(|old| old.0 < revision.0) {
                    newest.insert(id.clone(), revision);
                }
                let level = p["alert"]
                    .as_str()
                    .and_then(|a| LEVELS.iter().position(|l| l.eq_ignore_ascii_case(a)))
                    .map_or(0, |i| i as u64 + 1);
                let seen = Seen {
                    mag: p["mag"].as_f64(),
                    level,
                    tsunami: p["tsunami"].as_f64().is_some_and(|t| t > 0.0) || p["tsunami"] == true,
                    deleted,
                };
                by_event.entry(id).or_default().insert(updated, seen);
            }
        }
        let mut by_window: BTreeMap<i64, Vec<Option<f64>>> = BTreeMap::new();
        for (_, time, mag, deleted) in newest.values() {
            if !deleted {
                by_window
                    .entry(time.div_euclid(5 * MINUTE) * 5 * MINUTE)
                    .or_default()
                    .push(*mag);
            }
        }
        let windows: Results = by_window
            .iter()
            .map(|(start, mags)| (format_millis(*start).unwrap(), aggregate(mags)))
            .collect();
        assert!(windows.len() > 100, "the day spans many windows");

        // Alerts: each event's revisions in order through the default rule.
        let mut alerts = BTreeMap::new();
        for (id, revisions) in &by_event {
            let mut alerted: Option<Severity> = None;
            let mut kinds = Vec::new();
            for seen in revisions.values() {
                let matches = !seen.deleted && seen.mag.is_some_and(|m| m >= MIN_MAGNITUDE);
                let severity = Severity {
                    step: seen.mag.map(|m| (m / MAGNITUDE_STEP + 1e-9).floor() as i64),
                    level: seen.level,
                    tsunami: seen.tsunami,
                    rules: if matches {
                        BTreeSet::from([RULE.to_string()])
                    } else {
                        BTreeSet::new()
                    },
                };
                alerted = match alerted.take() {
                    None if matches => {
                        kinds.push("new".to_string());
                        Some(severity)
                    }
                    None => None,
                    Some(_) if !matches => {
                        kinds.push("cancel".to_string());
                        None
                    }
                    Some(mut before) => {
                        if severity.raises(&before) {
                            kinds.push("upgrade".to_string());
                            before.merge(&severity);
                        }
                        Some(before)
                    }
                };
            }
            if !kinds.is_empty() {
                alerts.insert(id.clone(), kinds);
            }
        }
        assert!(!alerts.is_empty(), "the day has M4.5+ events");

        Oracle {
            hostile: false,
            revisions: expected_revisions(files),
            served,
            windows,
            alerts,
        }
    }

    fn check(&self, observed: &Observed) -> Problems {
        let mut problems = Problems::default();

        // 1. The quakes topic: every revision exactly once, keyed by its id.
        let misplaced: Vec<&String> = observed
            .quakes
            .iter()
            .filter(|(key, quake)| quake["id"].as_str() != Some(key.as_str()))
            .map(|(key, _)| key)
            .collect();
        if !misplaced.is_empty() {
            problems.permanent.push(format!(
                "earthquakes: records keyed other than by their id: {}",
                listed(&misplaced)
            ));
        }
        let (wrong, missing) = revision_problems(
            "earthquakes",
            &self.revisions,
            observed.quakes.iter().map(|(_, quake)| revision_of(quake)),
        );
        problems.permanent.extend(wrong);
        problems.pending.extend(missing);

        // 2. The lake: every revision exactly once (files are replaced, never appended to, so
        // this may still change until the end).
        match &observed.lake {
            Ok(rows) => {
                let (wrong, missing) =
                    revision_problems("the Parquet lake", &self.revisions, rows.iter().cloned());
                problems.pending.extend(wrong);
                problems.pending.extend(missing);
            }
            Err(e) => problems.permanent.push(format!("the Parquet lake: {e}")),
        }

        // 3. The windows: each one's last result is the oracle's; none is closed.
        let (last, finals) = results(&observed.stats, &mut problems);
        if !finals.is_empty() {
            problems.permanent.push(format!(
                "earthquake-stats: {} windows closed, though none closes with 48 h of lateness: {}",
                finals.len(),
                listed(&finals.keys().collect::<Vec<_>>())
            ));
        }
        // A window left empty (an event retracted) may or may not get a last `count: 0`; the
        // oracle lists windows with events only.
        let last: Results = last.into_iter().filter(|(_, r)| r.0 > 0).collect();
        let starts: BTreeSet<&String> = self.windows.keys().chain(last.keys()).collect();
        let differing: Vec<String> = starts
            .into_iter()
            .filter(|s| last.get(*s) != self.windows.get(*s))
            .map(|s| format!("{s}: got {:?}, want {:?}", last.get(s), self.windows.get(s)))
            .collect();
        if !differing.is_empty() {
            problems.pending.push(format!(
                "earthquake-stats: {} of {} windows' last (count, avg mag, max mag) differ: {}",
                differing.len(),
                self.windows.len(),
                listed(&differing)
            ));
        }

        // 4. The alerts: none repeated, none missing.
        let mut alerted: BTreeMap<&str, Option<Severity>> = BTreeMap::new();
        let mut revisions: BTreeSet<(&str, Option<i64>)> = BTreeSet::new();
        let mut kinds: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut repeats = Vec::new();
        for (key, alert) in &observed.alerts {
            let kind = alert["kind"].as_str().unwrap_or("?");
            let updated = alert["quake"]["updated"].as_str().and_then(parse_millis);
            if !revisions.insert((key.as_str(), updated)) {
                repeats.push(format!(
                    "{key}: a second alert ({kind}) for revision {updated:?}"
                ));
            }
            let severity = Severity::of(alert);
            let state = alerted.entry(key.as_str()).or_default();
            *state = match (kind, state.take()) {
                ("new", None) => Some(severity),
                ("new", Some(before)) => {
                    repeats.push(format!(
                        "{key}: `new` again without a cancel (alerted at {before:?})"
                    ));
                    Some(before)
                }
                ("upgrade", Some(mut before)) => {
                    if severity.raises(&before) {
                        before.merge(&severity);
                    } else {
                        repeats.push(format!(
                            "{key}: `upgrade` to {severity:?}, already alerted at {before:?}"
                        ));
                    }
                    Some(before)
                }
                ("upgrade", None) => {
                    repeats.push(format!("{key}: `upgrade` of an event not alerted"));
                    None
                }
                ("cancel", Some(_)) => None,
                ("cancel", None) => {
                    repeats.push(format!("{key}: `cancel` of an event not alerted"));
                    None
                }
                (other, before) => {
                    repeats.push(format!("{key}: unknown kind {other:?}"));
                    before
                }
            };
            kinds.entry(key.clone()).or_default().push(kind.to_string());
        }
        if !repeats.is_empty() {
            problems.permanent.push(format!(
                "earthquake-alerts: {} repeated alerts: {}",
                repeats.len(),
                listed(&repeats)
            ));
        }
        let keys: BTreeSet<&String> = self.alerts.keys().chain(kinds.keys()).collect();
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        for key in keys {
            let got = kinds.get(key).map(Vec::as_slice).unwrap_or_default();
            let want = self.alerts.get(key).map(Vec::as_slice).unwrap_or_default();
            if got == want {
                continue;
            }
            let line = format!("{key}: got {got:?}, want {want:?}");
            if want.starts_with(got) {
                missing.push(line);
            } else {
                wrong.push(line);
            }
        }
        if !wrong.is_empty() {
            problems.permanent.push(format!(
                "earthquake-alerts: {} events with other alerts than the rule implies: {}",
                wrong.len(),
                listed(&wrong)
            ));
        }
        if !missing.is_empty() {
            problems.pending.push(format!(
                "earthquake-alerts: {} events still missing alerts: {}",
                missing.len(),
                listed(&missing)
            ));
        }

        // The hostile feed: each injected feature dead-lettered (at least once: a restarted
        // source reads its feed again) with its reason, and nothing else.
        if self.hostile {
            let mut refused: BTreeSet<&str> = BTreeSet::new();
            let mut other = Vec::new();
            for (_, letter) in &observed.dead_letters {
                let reason = letter["reason"].as_str().unwrap_or("?");
                let id = letter["payload"]
                    .as_str()
                    .and_then(|p| serde_json::from_str::<Value>(p).ok())
                    .and_then(|f| f["id"].as_str().map(String::from));
                match HOSTILE.iter().find(|(h, _)| Some(*h) == id.as_deref()) {
                    Some((h, why)) if reason.contains(why) && letter["source"] == "usgs" => {
                        refused.insert(h);
                    }
                    _ => other.push(format!("{id:?}: {reason}")),
                }
            }
            if !other.is_empty() {
                problems.permanent.push(format!(
                    "quakestream-dlq: {} dead letters that are not an injected feature with its reason: {}",
                    other.len(),
                    listed(&other)
                ));
            }
            let missing: Vec<&str> = HOSTILE
                .iter()
                .map(|(h, _)| *h)
                .filter(|h| !refused.contains(h))
                .collect();
            if !missing.is_empty() {
                problems.pending.push(format!(
                    "quakestream-dlq: injected features not dead-lettered: {}",
                    listed(&missing)
                ));
            }
            return problems;
        }

        // Nothing late, nothing bad.
        if !observed.dead_letters.is_empty() {
            let reasons: Vec<&str> = observed
                .dead_letters
                .iter()
                .map(|(_, letter)| letter["reason"].as_str().unwrap_or("?"))
                .collect();
            problems.permanent.push(format!(
                "quakestream-dlq: {} dead letters: {}",
                reasons.len(),
                listed(&reasons)
            ));
        }
        problems
    }
}
