//! The command line against a real embedded broker in a child process, as a user runs it.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{Spawned, free_port, quakestream, run, start_broker};

const LIMIT: Duration = Duration::from_secs(60);

/// An error a user sees: one line, the exit code non-zero, no panic and no backtrace.
fn assert_one_line_error(finished: &common::Finished) -> String {
    assert!(!finished.status.success(), "must fail: {finished:?}");
    let text = finished.stderr_text();
    assert_eq!(finished.stderr.len(), 1, "one line expected: {text}");
    assert!(text.starts_with("error: "), "{text}");
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{text}"
    );
    text
}

#[test]
fn unknown_config_key_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quakestream.toml");
    std::fs::write(
        &file,
        "[broker]\nlisten = \"127.0.0.1:9092\"\nlistn = \"oops\"\n",
    )
    .unwrap();
    let finished = run(quakestream(&dir.path().join("data"))
        .arg("--config")
        .arg(&file)
        .arg("config"));
    let text = assert_one_line_error(&finished);
    assert!(text.contains("listn"), "{text}");
    assert!(text.contains("quakestream.toml:3"), "{text}");
}

#[test]
fn bad_window_and_alert_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quakestream.toml");
    for (text, expected) in [
        (
            "[window]\nsize = \"1m\"\nslide = \"5m\"\n",
            "longer than the window",
        ),
        (
            "[window]\naggregates = [{ name = \"final\", op = \"count\" }]\n",
            "`final` is a name the window result uses itself",
        ),
        (
            "[window]\naggregates = [{ name = \"m\", op = \"median\", field = \"mag\" }]\n",
            "unknown variant `median`",
        ),
        (
            "[[alerts.rules]]\nname = \"x\"\nmin_alert_level = \"purple\"\n",
            "expected one of green, yellow, orange, red",
        ),
        (
            "[alerts]\nwebhooks = [\"not a url\"]\n",
            "webhook 1 (of 1): not a URL",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let finished = run(quakestream(&dir.path().join("data"))
            .arg("--config")
            .arg(&file)
            .args(["run", "window"]));
        let error = assert_one_line_error(&finished);
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn bad_web_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quakestream.toml");
    for (text, expected) in [
        (
            "[web]\nlisten = \"everywhere\"\n",
            "[web]: listen = \"everywhere\": expected HOST:PORT",
        ),
        ("[web]\nmax_events = 0\n", "max_events = 0: expected 1 to"),
        (
            "[web]\ntiles = \"https://tiles.example.org/map.png\"\n",
            "expected a URL template with {z}, {x} and {y}",
        ),
        (
            "[web]\nrefresh = \"10ms\"\n",
            "refresh = \"10ms\": at least 500ms",
        ),
        ("[web]\nport = 8080\n", "unknown field `port`"),
        (
            "[web]\nquakes_topic = \"no spaces allowed\"\n",
            "invalid topic name \"no spaces allowed\"",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let finished = run(quakestream(&dir.path().join("data"))
            .env_remove("QUAKESTREAM_WEB_LISTEN")
            .arg("--config")
            .arg(&file)
            .args(["--brokers", "127.0.0.1:1", "run", "web"]));
        let error = assert_one_line_error(&finished);
        assert!(error.contains(expected), "{text}: {error}");
    }
    // The flag is checked like the key.
    let finished = run(quakestream(&dir.path().join("data")).args([
        "--brokers",
        "127.0.0.1:1",
        "run",
        "web",
        "--web",
        "8080",
    ]));
    let error = assert_one_line_error(&finished);
    assert!(error.contains("listen = \"8080\""), "{error}");
}

#[test]
fn bad_sink_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quakestream.toml");
    for (text, component, expected) in [
        (
            "[files]\ncompression = \"gzip\"\n",
            "files",
            "[files]: compression gzip does not apply to parquet files",
        ),
        (
            "[files]\nformat = \"xml\"\n",
            "files",
            "unknown format \"xml\": expected \"jsonl\", \"csv\" or \"parquet\"",
        ),
        (
            "[files]\npartition_by = \"dt=%Q\"\n",
            "files",
            "not a valid strftime pattern",
        ),
        ("[files]\nroll_records = 0\n", "files", "must be above zero"),
        (
            "[object_store]\nlocation = \"s3://b/p\"\nobject_per_record = \"static.json\"\n",
            "object-store",
            "names no field",
        ),
        ("[postgres]\n", "postgres", "[postgres]: url is empty"),
        (
            "[postgres]\nurl = \"mysql://x\"\n",
            "postgres",
            "not a PostgreSQL connection URL",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let finished = run(quakestream(&dir.path().join("data"))
            .arg("--config")
            .arg(&file)
            .args(["--brokers", "127.0.0.1:1", "run", component]));
        let error = assert_one_line_error(&finished);
        assert!(error.contains(expected), "{text}: {error}");
    }
}

#[test]
fn unreachable_external_broker_names_the_address_and_embedded_mode() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let finished =
        run(quakestream(&dir.path().join("data")).args(["--brokers", &addr, "topics", "list"]));
    let text = assert_one_line_error(&finished);
    assert!(text.contains(&addr), "{text}");
    assert!(text.contains("embedded broker"), "{text}");
}

#[test]
fn invalid_topic_name_is_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let finished = run(quakestream(&dir.path().join("data")).args([
        "--brokers",
        "127.0.0.1:1",
        "produce",
        "--topic",
        "bad topic!",
    ]));
    let text = assert_one_line_error(&finished);
    assert!(text.contains("invalid topic name \"bad topic!\""), "{text}");
}

#[test]
fn config_prints_layers_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q.toml");
    std::fs::write(&file, "[kafka]\nsecurity.protocol = \"SASL_SSL\"\n").unwrap();
    let finished = run(quakestream(&dir.path().join("data"))
        .env("QUAKESTREAM_KAFKA_SASL_PASSWORD", "hunter2")
        .env("QUAKESTREAM_TOPICS_PARTITIONS", "7")
        .args(["--brokers", "kafka.example:9092", "--config"])
        .arg(&file)
        .arg("config"));
    assert!(finished.status.success(), "{finished:?}");
    let out = finished.stdout.join("\n");
    assert!(out.contains("brokers = \"kafka.example:9092\""), "{out}");
    assert!(out.contains("partitions = 7"), "{out}");
    assert!(
        out.contains("\"security.protocol\" = \"SASL_SSL\""),
        "{out}"
    );
    assert!(out.contains("\"sasl.password\" = \"***\""), "{out}");
    assert!(!out.contains("hunter2"), "{out}");
}

/// The embedded broker has no authentication: listening beyond loopback says so, once, at
/// start; on loopback it says nothing of the kind.
#[test]
fn the_broker_warns_when_it_listens_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (host, warned) in [("0.0.0.0", true), ("127.0.0.1", false)] {
        let listen = format!("{host}:{}", free_port());
        let mut broker = Spawned::start(quakestream(&data).args(["broker", "--listen", &listen]));
        let said = broker.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
        let said = [said, broker.drain_stderr()].concat();
        let warning = said
            .iter()
            .any(|l| l.contains("WARN") && l.contains("listens beyond this machine"));
        assert_eq!(warning, warned, "{listen}: {said:#?}");
        broker.signal("INT");
        assert!(broker.wait(Duration::from_secs(30)).success());
    }
}

/// The tutorial's first steps: produce ten messages, read them back; the broker keeps them
/// across a restart and stops cleanly on SIGTERM and SIGINT.
#[test]
fn broker_keeps_messages_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut broker, addr) = start_broker(&data);

    let produced = run(quakestream(&data).args([
        "--brokers",
        &addr,
        "produce",
        "--topic",
        "mensajes-test",
        "--count",
        "10",
    ]));
    assert!(produced.status.success(), "{produced:?}");
    let delivered: Vec<&String> = produced
        .stdout
        .iter()
        .filter(|l| l.starts_with("delivered key="))
        .collect();
    assert_eq!(delivered.len(), 10, "{produced:?}");
    assert!(
        delivered
            .iter()
            .all(|l| l.contains(" partition=") && l.contains(" offset="))
    );

    broker.signal("TERM");
    assert!(broker.wait(LIMIT).success(), "SIGTERM must exit 0");
    assert!(data.join("broker/tansu.db").is_file());

    let mut broker = Spawned::start(quakestream(&data).args(["broker", "--listen", &addr]));
    broker.wait_for(|l| l.contains("Press Ctrl+C"), LIMIT);
    let consumed = run(quakestream(&data).args([
        "--brokers",
        &addr,
        "consume",
        "--topic",
        "mensajes-test",
        "--from-beginning",
        "--max-messages",
        "10",
    ]));
    assert!(consumed.status.success(), "{consumed:?}");
    let keys: BTreeSet<u64> = consumed
        .stdout
        .iter()
        .map(|line| {
            assert!(line.starts_with("partition="), "{line}");
            assert!(line.contains(" offset="), "{line}");
            let key = line
                .split(" key=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            let value = line.split(" value=").nth(1).unwrap();
            let json: serde_json::Value = serde_json::from_str(value).unwrap();
            assert_eq!(json["id"].to_string(), key, "key is the id: {line}");
            assert!(
                json["texto"].is_string() && json["timestamp"].is_string(),
                "{line}"
            );
            key.parse().unwrap()
        })
        .collect();
    assert_eq!(keys, (1..=10).collect());

    broker.signal("INT");
    assert!(broker.wait(LIMIT).success(), "SIGINT must exit 0");
}

/// `topics describe` shows partitions, end offsets and the lag of a group that read only part.
#[test]
fn describe_shows_the_lag_of_a_lagging_group() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_broker, addr) = start_broker(&data);
    let q = |args: &[&str]| {
        let mut c = quakestream(&data);
        c.args(["--brokers", &addr]).args(args);
        run(&mut c)
    };
    assert!(
        q(&["produce", "--topic", "lagging", "--count", "10"])
            .status
            .success()
    );
    let read = q(&[
        "consume",
        "--topic",
        "lagging",
        "--group",
        "slow-readers",
        "--from-beginning",
        "--max-messages",
        "4",
    ]);
    assert!(read.status.success(), "{read:?}");
    assert_eq!(read.stdout.len(), 4);

    let described = q(&["topics", "describe", "lagging"]);
    assert!(described.status.success(), "{described:?}");
    let out = described.stdout.join("\n");
    assert!(out.contains("topic lagging: 3 partitions"), "{out}");
    let ends: i64 = described
        .stdout
        .iter()
        .filter(|l| l.split_whitespace().count() == 4 && l.starts_with(char::is_numeric))
        .map(|l| l.split_whitespace().nth(3).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(ends, 10, "end offsets sum to the messages: {out}");
    let total = described
        .stdout
        .iter()
        .find(|l| l.starts_with("slow-readers") && l.contains("total"))
        .unwrap_or_else(|| panic!("group total line: {out}"));
    assert_eq!(total.split_whitespace().last(), Some("6"), "{out}");

    // Creating it again, or with no partitions, is a clear error.
    let again = q(&["topics", "create", "lagging"]);
    let text = assert_one_line_error(&again);
    assert!(text.contains("topic \"lagging\" already exists"), "{text}");
    let empty = q(&["topics", "create", "empty", "--partitions", "0"]);
    let text = assert_one_line_error(&empty);
    assert!(text.contains("must be at least 1"), "{text}");

    let listed = q(&["topics", "list"]);
    let line = listed
        .stdout
        .iter()
        .find(|l| l.starts_with("lagging "))
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["lagging", "3", "10"]
    );
}

/// Ctrl+C in `consume` commits what was printed and exits 0; the next run of the same group
/// resumes after it.
#[test]
fn consume_commits_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (_broker, addr) = start_broker(&data);
    let mut produce = quakestream(&data);
    produce.args([
        "--brokers",
        &addr,
        "produce",
        "--topic",
        "t",
        "--count",
        "10",
    ]);
    assert!(run(&mut produce).status.success());

    let mut consume = Spawned::start(quakestream(&data).args([
        "--brokers",
        &addr,
        "consume",
        "--topic",
        "t",
        "--group",
        "readers",
        "--from-beginning",
    ]));
    for _ in 0..10 {
        consume.wait_for(|l| l.starts_with("partition="), LIMIT);
    }
    consume.signal("INT");
    assert!(consume.wait(LIMIT).success(), "Ctrl+C must exit 0");

    let mut describe = quakestream(&data);
    describe.args(["--brokers", &addr, "topics", "describe", "t"]);
    let described = run(&mut describe);
    let total = described
        .stdout
        .iter()
        .find(|l| l.starts_with("readers") && l.contains("total"))
        .unwrap_or_else(|| panic!("{described:?}"));
    assert_eq!(total.split_whitespace().last(), Some("0"), "{described:?}");
}

/// `up` starts the embedded broker and the USGS source, prints where they run, publishes the
/// feed's quakes, serves other clients and stops on Ctrl+C.
#[test]
fn up_runs_the_pipeline_until_ctrl_c() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let files = common::revision_sequence();
    let steps = files[..2]
        .iter()
        .map(|f| quakestream::fake::Step::Json(common::fixture(f).into()))
        .collect();
    let feed = runtime
        .block_on(quakestream::fake::FakeServer::start("127.0.0.1:0", steps))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let url = feed.url("/earthquakes/feed/v1.0/summary/all_day.geojson");
    let web = format!("127.0.0.1:{}", free_port());
    let mut up = Spawned::start(quakestream(&data).args([
        "up",
        "--listen",
        &addr,
        "--web",
        &web,
        "--usgs-url",
        &url,
        "--interval",
        "200ms",
    ]));
    let summary = up
        .wait_for(|l| l.contains("Press Ctrl+C"), LIMIT)
        .join("\n");
    assert!(
        summary.contains(&format!("embedded broker on {addr}")),
        "{summary}"
    );
    assert!(summary.contains(&data.display().to_string()), "{summary}");
    assert!(summary.contains(&url), "{summary}");
    assert!(
        summary.contains(&format!("web         http://{web}/ (live map)")),
        "{summary}"
    );

    // Every distinct revision of the two polls arrives on the quakes topic.
    let expected = common::expected_revisions(&files[..2]);
    let mut consume = quakestream(&data);
    consume.args([
        "--brokers",
        &addr,
        "consume",
        "--topic",
        "earthquakes",
        "--from-beginning",
        "--max-messages",
        &expected.len().to_string(),
    ]);
    let consumed = run(&mut consume);
    assert!(consumed.status.success(), "{consumed:?}");
    let seen: BTreeSet<(String, i64)> = consumed
        .stdout
        .iter()
        .map(|line| {
            let value = line.split(" value=").nth(1).unwrap();
            common::revision_of(&serde_json::from_str(value).unwrap())
        })
        .collect();
    assert_eq!(seen, expected);

    // A second broker on the same address is a clear error, not a hang.
    let second = run(quakestream(&dir.path().join("other")).args(["broker", "--listen", &addr]));
    let text = assert_one_line_error(&second);
    assert!(text.contains(&addr) && text.contains("--listen"), "{text}");
    // So is a second dashboard on the same address.
    let second = run(quakestream(&dir.path().join("other")).args([
        "--brokers",
        &addr,
        "run",
        "web",
        "--web",
        &web,
    ]));
    let text = assert_one_line_error(&second);
    assert!(text.contains(&web) && text.contains("--web"), "{text}");

    up.signal("INT");
    assert!(up.wait(LIMIT).success(), "Ctrl+C must exit 0");
    let tail = up.drain_stdout().join("\n");
    assert!(tail.contains("quakestream stopped"), "{tail}");
}

#[test]
fn the_dashboard_alone_warns_beyond_loopback_and_reports_kafka_down() {
    let dir = tempfile::tempdir().unwrap();
    // Nobody listens on port 1: the dashboard still serves, and says Kafka is unreachable.
    let mut web = Spawned::start(quakestream(&dir.path().join("data")).args([
        "--brokers",
        "127.0.0.1:1",
        "run",
        "web",
        "--web",
        "0.0.0.0:0",
    ]));
    let lines = web.wait_for(|l| l.contains("Press Ctrl+C"), LIMIT);
    let text = lines.join("\n");
    assert!(
        text.contains("WARNING: the dashboard listens on 0.0.0.0:0, reachable from other machines"),
        "{text}"
    );
    let port: u16 = text
        .split("http://0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {text}"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, body) = runtime.block_on(async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"kafka\":false"), "{body}");
    web.signal("TERM");
    assert!(web.wait(LIMIT).success(), "SIGTERM must exit 0");
}

#[test]
fn a_component_alone_serves_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, addr) = start_broker(&dir.path().join("broker"));
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut window = Spawned::start(quakestream(&dir.path().join("data")).args([
        "--brokers",
        &addr,
        "run",
        "window",
        "--metrics",
        &metrics,
    ]));
    window.wait_for(|l| l.contains("Press Ctrl+C"), LIMIT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = runtime.block_on(async {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            match reqwest::get(format!("http://{metrics}/metrics")).await {
                Ok(r) if r.status().is_success() => return r.text().await.unwrap(),
                _ if std::time::Instant::now() > deadline => panic!("no /metrics on {metrics}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    assert!(
        body.contains("# TYPE quakestream_window_records_total counter"),
        "{body}"
    );
    assert!(
        body.contains("\nquakestream_window_records_total 0\n"),
        "{body}"
    );
    assert!(
        !body.contains("quakestream_source_"),
        "only this process's components: {body}"
    );
    window.signal("INT");
    assert!(window.wait(LIMIT).success());
    // A taken address is a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    let finished = run(quakestream(&dir.path().join("data")).args([
        "--brokers",
        &addr,
        "run",
        "window",
        "--metrics",
        &taken,
    ]));
    let text = assert_one_line_error(&finished);
    assert!(
        text.contains("--metrics") && text.contains(&taken),
        "{text}"
    );
}
