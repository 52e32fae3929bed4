//! The whole pipeline end to end, as separate `quakestream` processes on a real (embedded)
//! broker, every figure against the same ceiling measured in the same run (issue #16).
//!
//! 1. **Produce**: N synthetic `Quake` records (default 200,000; `QS_BENCH_RECORDS`), made from
//!    the recorded `all_day` feed of 2025-05-04 with unique ids and event times spread evenly
//!    over the three days before now, are sent to the `earthquakes` topic (3 partitions) of a
//!    `quakestream broker` on a free loopback port, the way the USGS source sends them: the
//!    crate's idempotent producer, keyed by event id, the `qs-ids`/`qs-updated`/`qs-time`
//!    headers, the event time as the Kafka timestamp. Timed until every send is acknowledged.
//! 2. **Raw read** (the ceiling, ratio 1): a plain rdkafka consumer, no group work, no commits,
//!    reads the topic from the beginning until it has all N.
//! 3. **Python**: the same N values as a JSON Lines file; `python3` times `json.loads` over the
//!    lines (file already in memory, interpreter start not counted).
//! 4. **Drain** of each component, one after another against the filled topic, each its own
//!    process (`quakestream --brokers … run alerts|files|window`) with a fresh data directory
//!    and consumer group: from the spawn (so process start and joining the group are in the
//!    figure) until the group's committed offsets, read every 100 ms, cover the whole topic.
//!    Its rate *once joined* counts from the moment its last group assigned it partitions (the
//!    timestamp of its `partitions assigned` log line) instead of the spawn: what it does once
//!    running, without the join, which on the embedded broker tansu holds 3 s for each static
//!    member's JoinGroup and SyncGroup. Each round's alert processor writes a topic of its own
//!    (it reads its output back at the start, and an event alerted before raises nothing).
//!    The window processor has two stages; it is done when its repartition topic is covered
//!    too, up to the end it had when the input was covered. The files sink (Parquet, snappy)
//!    reads only `earthquakes` and rolls every [`FILES_ROLL_AGE`] instead of 60 s, since it
//!    commits only when files roll: the last files of a drain wait that long before they are
//!    written and committed, so at 2 s (as before) most of its figure was that wait. Peak
//!    RSS is `VmHWM` of `/proc/<pid>/status` just before the process is stopped with SIGINT.
//! 5. **Feed-to-browser latency**: `quakestream up` (embedded broker, defaults) polls a
//!    [`FakeServer`] every 730 ms; the bench follows the dashboard's live stream
//!    (`/api/events`, what the map page listens to) and, K times (default 30;
//!    `QS_BENCH_LATENCY_SAMPLES`), gives the feed one new event and measures from the moment
//!    the fake server first served that feed ([`FakeServer::json_served_at`]) to the moment the
//!    event's `quake` message arrives on the stream. The poll interval is not in the figure; a
//!    random 0–1 s pause before each sample keeps samples off the phase of any timer.
//!
//! Steps 2–4 run in rounds (default 3; `QS_BENCH_ROUNDS`): a round is one raw read, one
//! Python pass and one drain of each component, so that each ratio compares figures taken
//! within a minute or two of each other. `QS_BENCH_COMPONENTS` (say `alerts,window`) drains
//! only those. The table gives the median of the rounds, each round's ratio once joined, and
//! the highest peak RSS. `QS_BENCH_QUAKESTREAM=/path/to/quakestream` runs another build of the
//! binary (an earlier commit's) in the same harness.
//!
//! It prints one markdown table. Timing is reported, never asserted. Not run by `cargo test`.
//!
//!     scripts/bench-pipeline.sh            # or: cargo bench --bench pipeline
//!     QS_BENCH_RECORDS=50000 QS_BENCH_LATENCY_SAMPLES=10 scripts/bench-pipeline.sh
//!     QS_BENCH_ROUNDS=5 QS_BENCH_COMPONENTS=alerts scripts/bench-pipeline.sh

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, channel},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt};
use quakestream::{
    fake::{FakeServer, Step},
    kafka::{KafkaSettings, TopicName, admin::Admin, producer::Producer},
    record::{Checks, Millis, Quake},
    source::{
        geojson,
        publish::{H_IDS, H_TIME, H_UPDATED},
    },
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use tokio::runtime::Runtime;

const TOPIC: &str = "earthquakes";
const FEED_PATH: &str = "/earthquakes/feed/v1.0/summary/all_day.geojson";
/// Sends waiting for their acknowledgement at once (below librdkafka's 100,000-message queue).
const IN_FLIGHT: usize = 20_000;
/// Between two reads of a group's committed offsets.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// The files sink's `roll_age` here (see the module comment).
const FILES_ROLL_AGE: &str = "250ms";
/// The fake feed's poll interval under `up`: not a multiple of any round timer in the pipeline
/// (librdkafka's 500 ms fetch wait, 1 s ticks), so successive samples meet those timers at
/// different phases instead of drifting slowly across them.
const POLL_INTERVAL: &str = "730ms";
/// Liveness bounds, not targets.
const START_LIMIT: Duration = Duration::from_secs(120);
const DRAIN_LIMIT: Duration = Duration::from_secs(1800);
const STOP_LIMIT: Duration = Duration::from_secs(60);
const SAMPLE_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let n = env_number("QS_BENCH_RECORDS").unwrap_or(200_000).max(1);
    let samples = env_number("QS_BENCH_LATENCY_SAMPLES").unwrap_or(30).max(1);
    // Another build to compare with (an earlier commit's, say), run by the same harness.
    let bin = std::env::var_os("QS_BENCH_QUAKESTREAM").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_quakestream")),
        PathBuf::from,
    );
    let runtime = Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let records = records(n);
    let bytes: usize = records.iter().map(|r| r.value.len()).sum();
    let size = bytes as f64 / n as f64;
    eprintln!(
        "pipeline bench: {n} records, {size:.0} bytes each on average, {samples} latency samples, binary {}",
        bin.display()
    );
    let rounds = env_number("QS_BENCH_ROUNDS").unwrap_or(3).max(1);
    let components = components();
    eprintln!(
        "{rounds} rounds of the raw read, python3 and {}",
        components.join(", ")
    );

    // 1. Produce.
    let broker_dir = data_dir(dir.path(), "broker");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut broker = Proc::start(
        "broker",
        quakestream(&bin, &broker_dir).args(["broker", "--listen", &addr]),
        &broker_dir,
    );
    broker.wait_for_line("Press Ctrl+C", START_LIMIT);
    let produced = runtime.block_on(produce(&addr, &records));
    eprintln!("produce: {}", rate(n, produced));
    let jsonl = write_jsonl(dir.path(), &records);
    drop(records);

    // 2.–4., `rounds` times: the raw read, python3's pass and each component's drain one after
    // another, so that a round's ratios compare figures taken within a minute or two of each
    // other (on this shared machine the raw read alone moves by up to 2x between runs).
    let ends = end_offsets(&addr, TOPIC);
    let mut raws = Vec::new();
    let mut pythons = Vec::new();
    let mut drains: Vec<(&str, Vec<Drained>)> =
        components.iter().map(|c| (*c, Vec::new())).collect();
    for round in 1..=rounds {
        let (raw, read) = raw_read(&addr, n);
        eprintln!(
            "round {round}: raw read: {} ({read} payload bytes)",
            rate(n, raw)
        );
        raws.push(raw);
        match python_loads(&jsonl) {
            Some(t) => {
                eprintln!("round {round}: python3 json.loads: {}", rate(n, t));
                pythons.push(t);
            }
            None => eprintln!("round {round}: python3 json.loads: not measured (no python3)"),
        }
        for (component, runs) in &mut drains {
            let drained = drain(&bin, dir.path(), &addr, component, round, &ends);
            eprintln!(
                "round {round}: run {component}: {} (partitions assigned after {:.1} s), peak RSS {}",
                rate(n, drained.time),
                drained.joined.map_or(f64::NAN, |t| t.as_secs_f64()),
                mib(drained.rss_kb)
            );
            runs.push(drained);
        }
    }
    let _ = std::fs::remove_file(&jsonl);
    let broker_rss = broker.peak_rss_kb();
    broker.stop();

    let ceilings: Vec<f64> = raws.iter().map(|t| n as f64 / t.as_secs_f64()).collect();
    let timed = |t: &Duration| Run {
        time: Some(*t),
        rate: Some(n as f64 / t.as_secs_f64()),
        ..Run::default()
    };
    let mut rows = vec![
        Row {
            what: "broker produce (idempotent producer, lz4; RSS: the broker's, whole run)".into(),
            runs: vec![timed(&produced)],
            rss_kb: broker_rss,
        },
        Row {
            what: "raw read: plain rdkafka consumer, no commits (the ceiling)".into(),
            runs: raws.iter().map(timed).collect(),
            rss_kb: None,
        },
        Row {
            what: "python3 `json.loads` per line (JSON Lines, in memory)".into(),
            runs: pythons.iter().map(timed).collect(),
            rss_kb: None,
        },
    ];
    for (component, runs) in &drains {
        let what = match *component {
            "files" => {
                format!("`run files` (Parquet snappy, earthquakes only, roll_age {FILES_ROLL_AGE})")
            }
            "window" => "`run window` (5m windows; input and repartition topic committed)".into(),
            other => format!("`run {other}`"),
        };
        rows.push(Row {
            what,
            runs: runs
                .iter()
                .map(|drained| Run {
                    time: Some(drained.time),
                    joined: drained.joined,
                    rate: Some(n as f64 / drained.time.as_secs_f64()),
                    once_joined: drained.rate_once_joined(n),
                })
                .collect(),
            rss_kb: runs.iter().filter_map(|d| d.rss_kb).max(),
        });
    }

    // 5. Feed-to-browser latency.
    let latencies = latency(&bin, dir.path(), &runtime, samples);

    println!("{}", table(n, size, &ceilings, &rows, &latencies));
}

/// One record as it goes to the topic.
struct Record {
    key: String,
    value: Vec<u8>,
    time_ms: i64,
    updated: String,
    time: String,
}

/// `n` records made from the recorded `all_day` feed: unique ids, event times spread evenly over
/// the three days that end ten minutes ago, each revised two minutes after it happened.
fn records(n: usize) -> Vec<Record> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/usgs/revision_sequence_2025-05-04/all_day_2025-05-04T135257Z.json"
    );
    let body = std::fs::read(path).expect("the all_day fixture");
    let templates = geojson::parse_collection(&body, "usgs", &Checks::default())
        .expect("fixture parses")
        .quakes;
    let span: i64 = 3 * 86_400_000;
    let first = Millis::now().0 - 600_000 - span;
    (0..n)
        .map(|i| {
            let mut q: Quake = templates[i % templates.len()].clone();
            let code = format!("{i:08}");
            q.id = format!("qs{code}");
            q.ids = vec![q.id.clone()];
            q.net = "qs".into();
            q.url = format!("https://earthquake.usgs.gov/earthquakes/eventpage/{}", q.id);
            q.code = code;
            q.time = Millis(first + span * i as i64 / n as i64);
            q.updated = Millis(q.time.0 + 120_000);
            Record {
                value: serde_json::to_vec(&q).expect("serialize"),
                time_ms: q.time.0,
                updated: q.updated.0.to_string(),
                time: q.time.0.to_string(),
                key: q.id,
            }
        })
        .collect()
}

/// Creates the topic, sends every record, and returns the time until all were acknowledged.
async fn produce(addr: &str, records: &[Record]) -> Duration {
    let settings = KafkaSettings::for_bootstrap(addr);
    let topic: TopicName = TOPIC.parse().expect("topic name");
    Admin::connect(&settings)
        .await
        .expect("admin connects")
        .ensure_topics(&[topic])
        .await
        .expect("topic created");
    let producer = Producer::new(&settings).expect("producer");
    let start = Instant::now();
    futures::stream::iter(records)
        .map(|r| {
            let producer = &producer;
            async move {
                let headers: [(&str, &[u8]); 3] = [
                    (H_IDS, r.key.as_bytes()),
                    (H_UPDATED, r.updated.as_bytes()),
                    (H_TIME, r.time.as_bytes()),
                ];
                producer
                    .send_with_headers(TOPIC, Some(&r.key), &r.value, Some(r.time_ms), &headers)
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| futures::future::ready(Ok(())))
        .await
        .expect("every record acknowledged");
    start.elapsed()
}

/// Reads the whole topic from the beginning with a plain consumer; the time (connection
/// included) and the payload bytes read.
fn raw_read(addr: &str, n: usize) -> (Duration, usize) {
    let start = Instant::now();
    let consumer: BaseConsumer = client(addr)
        .set("group.id", "quakestream-bench-raw")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .expect("raw consumer");
    let mut assignment = TopicPartitionList::new();
    for (partition, _) in end_offsets(addr, TOPIC) {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let (mut count, mut bytes) = (0, 0);
    while count < n {
        assert!(start.elapsed() < DRAIN_LIMIT, "raw read: {count} of {n}");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                count += 1;
                bytes += m.payload().map_or(0, <[u8]>::len);
            }
            Some(Err(e)) => panic!("raw read: {e}"),
            None => {}
        }
    }
    (start.elapsed(), bytes)
}

/// The records' values as a JSON Lines file for python3.
fn write_jsonl(dir: &Path, records: &[Record]) -> PathBuf {
    let path = dir.join("records.jsonl");
    let mut file = std::io::BufWriter::new(File::create(&path).expect("jsonl file"));
    for r in records {
        file.write_all(&r.value).expect("write jsonl");
        file.write_all(b"\n").expect("write jsonl");
    }
    file.flush().expect("write jsonl");
    path
}

/// Times `json.loads` over the lines of `jsonl` in `python3`, or `None` without python3.
fn python_loads(jsonl: &Path) -> Option<Duration> {
    let script = "import json, sys, time\n\
                  lines = open(sys.argv[1], 'rb').read().splitlines()\n\
                  start = time.perf_counter()\n\
                  for line in lines:\n    json.loads(line)\n\
                  print(time.perf_counter() - start)\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(jsonl)
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!("python3: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    let seconds: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs_f64(seconds))
}

/// What one component's drain came to.
struct Drained {
    time: Duration,
    /// From the spawn to the moment the last of its consumer groups assigned it partitions (its
    /// `partitions assigned` log line).
    joined: Option<Duration>,
    rss_kb: Option<u64>,
}

impl Drained {
    /// The drain rate once the component's groups have formed: all N records over the time
    /// from joining to the commit that covers them (what it does once running, comparable with
    /// the raw read, which joins no group; tansu holds each static member's join 3 s).
    fn rate_once_joined(&self, n: usize) -> Option<f64> {
        let time = self.time.checked_sub(self.joined?)?.as_secs_f64();
        (time > 0.0).then(|| n as f64 / time)
    }
}

/// When, after `spawned`, the last of a component's groups was assigned partitions, read from
/// the timestamps of its `partitions assigned` log lines (the first line of each group).
fn joined(stderr: &Path, spawned: std::time::SystemTime) -> Option<Duration> {
    let log = std::fs::read_to_string(stderr).ok()?;
    let mut groups: Vec<(&str, chrono::DateTime<chrono::FixedOffset>)> = Vec::new();
    for line in log.lines().filter(|l| l.contains("partitions assigned")) {
        let at = chrono::DateTime::parse_from_rfc3339(line.split_whitespace().next()?).ok()?;
        let group = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("group="))
            .unwrap_or("");
        if !groups.iter().any(|(g, _)| *g == group) {
            groups.push((group, at));
        }
    }
    let last = groups.iter().map(|(_, at)| *at).max()?;
    let spawned: chrono::DateTime<chrono::Utc> = spawned.into();
    (last.with_timezone(&chrono::Utc) - spawned).to_std().ok()
}

/// Runs one component against the filled topic until its group has committed all of it.
fn drain(
    bin: &Path,
    root: &Path,
    addr: &str,
    component: &str,
    round: usize,
    ends: &[(i32, i64)],
) -> Drained {
    let data = data_dir(root, &format!("{component}-{round}"));
    let group = format!("quakestream-bench-{component}-{round}");
    let config = data.join("bench.toml");
    std::fs::write(
        &config,
        // `--brokers` names the bench's broker, so `compression = "auto"` would mean lz4; the
        // embedded broker stores records uncompressed, and `auto` picks none for it.
        format!(
            "[client]\ncompression = \"none\"\n\
             [files]\ntopics = [\"{TOPIC}\"]\nroll_age = \"{FILES_ROLL_AGE}\"\n"
        ),
    )
    .expect("bench config");
    let mut command = quakestream(bin, &data);
    command
        .args(["--brokers", addr, "--config"])
        .arg(&config)
        .args(["run", component])
        .env(
            format!("QUAKESTREAM_{}_GROUP_ID", component.to_uppercase()),
            &group,
        )
        // A round of its own: the alert processor reads its output topic back at the start,
        // and events alerted in an earlier round would raise nothing.
        .env("QUAKESTREAM_ALERTS_OUTPUT", format!("bench-alerts-{round}"));
    let watcher: BaseConsumer = client(addr)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offsets reader");
    let start = Instant::now();
    let spawned = std::time::SystemTime::now();
    let mut proc = Proc::start(component, &mut command, &data);
    let until_covered = |topic: &str, ends: &[(i32, i64)], proc: &mut Proc| loop {
        proc.check_running();
        assert!(
            start.elapsed() < DRAIN_LIMIT,
            "{component} did not drain within {DRAIN_LIMIT:?}\n{}",
            proc.tail()
        );
        let committed = committed(&watcher, topic, ends);
        let covered = ends
            .iter()
            .zip(&committed)
            .all(|((_, end), c)| *end == 0 || c.is_some_and(|c| c >= *end));
        if covered {
            return;
        }
        std::thread::sleep(WATCH_EVERY);
    };
    until_covered(TOPIC, ends, &mut proc);
    if component == "window" {
        let repartition = format!("{group}-repartition");
        let ends = end_offsets(addr, &repartition);
        until_covered(&repartition, &ends, &mut proc);
    }
    let time = start.elapsed();
    let rss_kb = proc.peak_rss_kb();
    proc.stop();
    Drained {
        time,
        joined: joined(&proc.stderr, spawned),
        rss_kb,
    }
}

/// A group's committed offset on each of `ends`' partitions (`None`: nothing committed).
fn committed(consumer: &BaseConsumer, topic: &str, ends: &[(i32, i64)]) -> Vec<Option<i64>> {
    let mut wanted = TopicPartitionList::new();
    for (partition, _) in ends {
        wanted.add_partition(topic, *partition);
    }
    let Ok(committed) = consumer.committed_offsets(wanted, Duration::from_secs(10)) else {
        return vec![None; ends.len()];
    };
    ends.iter()
        .map(|(partition, _)| {
            committed
                .find_partition(topic, *partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
        })
        .collect()
}

/// (partition, high watermark) of every partition of a topic.
fn end_offsets(addr: &str, topic: &str) -> Vec<(i32, i64)> {
    let consumer: BaseConsumer = client(addr).create().expect("metadata client");
    let timeout = Duration::from_secs(20);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let mut ends: Vec<(i32, i64)> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .expect("watermarks");
            (p.id(), high)
        })
        .collect();
    assert!(!ends.is_empty(), "topic {topic} has no partitions");
    ends.sort();
    ends
}

/// `quakestream up` on a fake feed; the latency of each of `samples` new events, from the feed
/// first served to the event on the dashboard's live stream.
fn latency(bin: &Path, root: &Path, runtime: &Runtime, samples: usize) -> Vec<Duration> {
    let mut events = Vec::new();
    // An empty feed until the first event: a source that met errors would back off.
    let feed = runtime
        .block_on(FakeServer::start(
            "127.0.0.1:0",
            vec![Step::Json(collection(&[]).into())],
        ))
        .expect("fake feed");
    let data = data_dir(root, "up");
    let web = format!("127.0.0.1:{}", free_port());
    let broker = format!("127.0.0.1:{}", free_port());
    let mut command = quakestream(bin, &data);
    command
        .args(["up", "--listen", &broker, "--web", &web])
        .args([
            "--usgs-url",
            &feed.url(FEED_PATH),
            "--interval",
            POLL_INTERVAL,
        ]);
    let mut up = Proc::start("up", &mut command, &data);
    let http = reqwest::Client::new();
    let health = format!("http://{web}/health");
    let start = Instant::now();
    while !runtime.block_on(async {
        http.get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }) {
        up.check_running();
        assert!(
            start.elapsed() < START_LIMIT,
            "up not serving\n{}",
            up.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (tx, arrivals) = channel();
    runtime.spawn(follow(http, format!("http://{web}/api/events"), tx));

    // The first event only warms the pipeline up (topics, groups, the first poll).
    let mut out = Vec::new();
    // A random pause before each new feed, so that samples do not lock on to the phase of the
    // poll or of any other timer in the pipeline.
    let mut random = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as u64 | 1);
    for sample in 0..=samples {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        std::thread::sleep(Duration::from_millis(random % 1000));
        let id = format!("bench{sample:05}");
        events.push(feature(&id));
        let served_before = feed.json_served_at().len();
        feed.push([Step::Json(collection(&events).into())]);
        let limit = if sample == 0 {
            START_LIMIT
        } else {
            SAMPLE_LIMIT
        };
        let asked = Instant::now();
        let served = loop {
            if let Some(at) = feed.json_served_at().get(served_before) {
                break *at;
            }
            up.check_running();
            assert!(asked.elapsed() < limit, "feed not polled\n{}", up.tail());
            std::thread::sleep(Duration::from_millis(1));
        };
        let arrived = loop {
            let left = limit.saturating_sub(asked.elapsed());
            match arrivals.recv_timeout(left) {
                Ok((at, got)) if got == id => break at,
                Ok(_) => {}
                Err(_) => panic!("{id} not on the live stream\n{}", up.tail()),
            }
        };
        let took = arrived.saturating_duration_since(served);
        eprintln!(
            "latency {}: {:.0} ms",
            if sample == 0 {
                "warm-up".into()
            } else {
                sample.to_string()
            },
            took.as_secs_f64() * 1000.0
        );
        if sample > 0 {
            out.push(took);
        }
    }
    up.stop();
    feed.stop();
    out
}

/// Follows the live stream, sending the id of every `quake` event with when its bytes arrived.
async fn follow(
    http: reqwest::Client,
    url: String,
    tx: std::sync::mpsc::Sender<(Instant, String)>,
) {
    let Ok(mut response) = http.get(&url).send().await else {
        return;
    };
    let mut buffer = String::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let at = Instant::now();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if !block.lines().any(|l| l == "event: quake") {
                continue;
            }
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            let id = serde_json::from_str::<serde_json::Value>(&data)
                .ok()
                .and_then(|v| v["id"].as_str().map(String::from));
            if let Some(id) = id
                && tx.send((at, id)).is_err()
            {
                return;
            }
        }
    }
}

/// A USGS GeoJSON feature of a small quake that happened half a minute ago.
fn feature(id: &str) -> serde_json::Value {
    let now = Millis::now().0;
    serde_json::json!({
        "type": "Feature",
        "id": id,
        "properties": {
            "mag": 1.5, "place": "16 km WSW of Johannesburg, CA", "time": now - 30_000,
            "updated": now, "tz": null,
            "url": format!("https://earthquake.usgs.gov/earthquakes/eventpage/{id}"),
            "detail": null, "felt": null, "cdi": null, "mmi": null, "alert": null,
            "status": "automatic", "tsunami": 0, "sig": 34, "net": "bench", "code": id,
            "ids": format!(",{id},"), "sources": ",bench,", "types": ",origin,",
            "nst": 35, "dmin": 0.079, "rms": 0.18, "gap": 36, "magType": "ml",
            "type": "earthquake", "title": "M 1.5 - 16 km WSW of Johannesburg, CA"
        },
        "geometry": { "type": "Point", "coordinates": [-117.8075, 35.3405, 8.83] }
    })
}

/// A feed of `features`, generated now.
fn collection(features: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "FeatureCollection",
        "metadata": {
            "generated": Millis::now().0, "url": "http://fake/all_day.geojson",
            "title": "bench feed", "status": 200, "api": "1.14.1", "count": features.len()
        },
        "features": features
    }))
    .expect("feed")
}

/// One line of the table.
struct Row {
    what: String,
    /// One per round (the produce: one).
    runs: Vec<Run>,
    /// The highest of the rounds.
    rss_kb: Option<u64>,
}

/// One round's figures of a row.
#[derive(Clone, Copy, Default)]
struct Run {
    time: Option<Duration>,
    /// A component's start: from the spawn to its groups' partitions.
    joined: Option<Duration>,
    rate: Option<f64>,
    /// A component's rate once its groups formed.
    once_joined: Option<f64>,
}

/// The components to drain: `QS_BENCH_COMPONENTS` (comma-separated), or all three.
fn components() -> Vec<&'static str> {
    const ALL: [&str; 3] = ["alerts", "files", "window"];
    let Ok(wanted) = std::env::var("QS_BENCH_COMPONENTS") else {
        return ALL.to_vec();
    };
    wanted
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            ALL.into_iter().find(|c| *c == name).unwrap_or_else(|| {
                panic!(
                    "QS_BENCH_COMPONENTS: {name:?} is not one of {}",
                    ALL.join(", ")
                )
            })
        })
        .collect()
}

/// The median of what is there (the mean of the middle two of an even count).
fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() {
        0 => None,
        len if len % 2 == 1 => Some(values[mid]),
        _ => Some((values[mid - 1] + values[mid]) / 2.0),
    }
}

fn table(n: usize, size: f64, ceilings: &[f64], rows: &[Row], latencies: &[Duration]) -> String {
    let rounds = ceilings.len();
    let ceiling = median(ceilings.iter().copied()).unwrap_or(f64::NAN);
    // A round's ratio is against that round's raw read; the produce, measured once, against the
    // median raw read.
    let ratios = |runs: &[Run], pick: fn(&Run) -> Option<f64>| -> Vec<f64> {
        runs.iter()
            .enumerate()
            .filter_map(|(i, run)| Some(pick(run)? / ceilings.get(i).copied().unwrap_or(ceiling)))
            .collect()
    };
    let each = |values: &[f64]| -> String {
        if values.len() < 2 {
            return "—".into();
        }
        values
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let or_dash = |value: Option<f64>, show: &dyn Fn(f64) -> String| value.map_or("—".into(), show);
    let mut out = format!(
        "\n## Pipeline, end to end: N = {} records ({size:.0} bytes each on average), medians of {rounds} round(s)\n\n\
         | what | time | of which joining its groups | records/s | ratio to raw read | records/s once joined | its ratio to raw read | that ratio, each round | peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        thousands(n as f64)
    );
    for row in rows {
        let joined_ratios = ratios(&row.runs, |r| r.once_joined);
        let med = |pick: fn(&Run) -> Option<f64>| median(row.runs.iter().filter_map(pick));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.what,
            or_dash(med(|r| r.time.map(|t| t.as_secs_f64())), &|t| format!(
                "{t:.2} s"
            )),
            or_dash(med(|r| r.joined.map(|t| t.as_secs_f64())), &|t| format!(
                "{t:.1} s"
            )),
            or_dash(med(|r| r.rate), &thousands),
            or_dash(median(ratios(&row.runs, |r| r.rate)), &|r| format!(
                "{r:.2}"
            )),
            or_dash(med(|r| r.once_joined), &thousands),
            or_dash(median(joined_ratios.iter().copied()), &|r| format!(
                "{r:.2}"
            )),
            each(&joined_ratios),
            row.rss_kb.map_or("—".into(), mib),
        ));
    }
    // The raw read against python3's pass, round by round.
    let python = rows
        .iter()
        .find(|row| row.what.starts_with("python3"))
        .map(|row| ratios(&row.runs, |r| r.rate))
        .unwrap_or_default();
    let raw_over_python: Vec<f64> = python.iter().map(|p| 1.0 / p).collect();
    if let Some(median) = median(raw_over_python.iter().copied()) {
        out.push_str(&format!(
            "\nraw read / python3 json.loads: {median:.2}× (each round: {})\n",
            raw_over_python
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let ms = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        format!("{:.0} ms", sorted[rank - 1].as_secs_f64() * 1000.0)
    };
    out.push_str(&format!(
        "\n| feed-to-browser latency ({} samples) | p50 | p90 | p99 | max |\n|---|---|---|---|---|\n\
         | fake feed first served → `quake` on `/api/events` | {} | {} | {} | {} |\n",
        sorted.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(1.0),
    ));
    out
}

/// A `quakestream` command on `data_dir` with none of the caller's settings in its environment.
fn quakestream(bin: &Path, data: &Path) -> Command {
    let mut command = Command::new(bin);
    command.arg("--data-dir").arg(data).current_dir(data);
    for (key, _) in std::env::vars() {
        if key.starts_with("QUAKESTREAM_") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    command.env("QUAKESTREAM_CLIENT_TIMEOUT", "20s");
    command
}

/// A child process: stdout lines on a channel, stderr in `<data>/<name>.stderr`.
struct Proc {
    name: String,
    child: Option<Child>,
    stdout: Receiver<String>,
    stderr: PathBuf,
}

impl Proc {
    fn start(name: &str, command: &mut Command, data: &Path) -> Proc {
        let stderr = data.join(format!("{name}.stderr"));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, stdout) = channel();
        let pipe = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            name: name.into(),
            child: Some(child),
            stdout,
            stderr,
        }
    }

    fn wait_for_line(&mut self, want: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(want) => return,
                Ok(_) => {}
                Err(_) => panic!("{}: no {want:?} line\n{}", self.name, self.tail()),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails the bench when the process has exited.
    fn check_running(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            panic!("{} exited: {status}\n{}", self.name, self.tail());
        }
    }

    /// The peak resident set size so far (`VmHWM`, kB).
    fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// Ctrl+C, then waits for the exit (SIGKILL past [`STOP_LIMIT`]).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("{} exited with {status} after Ctrl+C", self.name);
                    }
                    return;
                }
                _ if Instant::now() > deadline => {
                    eprintln!("{} did not stop within {STOP_LIMIT:?}; killed", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The last lines of stderr, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// librdkafka properties for a client of the bench's broker.
fn client(addr: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", addr)
        .set("log.connection.close", "false");
    // The consumers' long-poll wait, to compare with what the components use.
    if let Ok(wait) = std::env::var("QS_BENCH_FETCH_WAIT_MS") {
        config.set("fetch.wait.max.ms", wait);
    }
    config
}

fn data_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("data dir");
    dir
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn env_number(name: &str) -> Option<usize> {
    let text = std::env::var(name).ok()?;
    Some(
        text.replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?}: expected a number")),
    )
}

fn rate(n: usize, t: Duration) -> String {
    format!(
        "{:.2} s, {} records/s",
        t.as_secs_f64(),
        thousands(n as f64 / t.as_secs_f64())
    )
}

fn mib(kb: impl Into<Option<u64>>) -> String {
    kb.into()
        .map_or("—".into(), |kb| format!("{:.0} MiB", kb as f64 / 1024.0))
}

/// 12345.6 → "12,346".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
