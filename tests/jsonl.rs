//! The jsonl source against the embedded broker: each good line once on its topic, keyed by its
//! field and stamped with its event time; each bad line dead-lettered with its line number; an
//! interrupted run, a restart and appended lines publish only what is missing; `follow` picks up
//! lines appended while it runs (an unterminated one once it is finished, a truncated file from
//! its start) and returns Ok when cancelled.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::Path,
    sync::Arc,
    time::Duration,
};

use common::{dead_letter_reasons, embedded_broker, read_topic};
use quakestream::{kafka::KafkaSettings, metrics::SourceMetrics, source::jsonl::JsonlConfig};
use tokio_util::sync::CancellationToken;

const DLQ: &str = "quakestream-dlq";

/// Runs the source over its file, to the end.
async fn run_once(config: &JsonlConfig, settings: &KafkaSettings) -> Arc<SourceMetrics> {
    let metrics = Arc::new(SourceMetrics::new("jsonl"));
    quakestream::source::SourceSettings::run(
        config,
        &common::source_ctx(settings, CancellationToken::new()),
        metrics.clone(),
    )
    .await
    .expect("the source reads its file to the end");
    metrics
}

/// The source running in a task until `stop` is cancelled.
struct Running {
    metrics: Arc<SourceMetrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<quakestream::Result<()>>,
}

fn spawn(config: &JsonlConfig, settings: &KafkaSettings) -> Running {
    let metrics = Arc::new(SourceMetrics::new("jsonl"));
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (config, settings, metrics, stop) = (
            config.clone(),
            settings.clone(),
            metrics.clone(),
            stop.clone(),
        );
        async move {
            quakestream::source::SourceSettings::run(
                &config,
                &common::source_ctx(&settings, stop),
                metrics,
            )
            .await
        }
    });
    Running {
        metrics,
        stop,
        task,
    }
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (key, `qs-record` header, Kafka timestamp) of every message in `topic`.
async fn headers(settings: &KafkaSettings, topic: &str) -> Vec<(String, String, Option<i64>)> {
    let (settings, topic) = (settings.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        use rdkafka::message::{Headers, Message};
        let mut out = Vec::new();
        quakestream::kafka::reader::scan(&settings, &topic, |m| {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let record = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "qs-record"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            out.push((key, record, m.timestamp().to_millis()));
        })
        .expect("read topic");
        out
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_good_line_once_and_each_bad_line_dead_lettered_with_its_number() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let path = dir.path().join("events.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"user":{"id":"a"},"rev":1,"at":"2024-01-30T16:19:44Z","n":1}"#,
            "\n",
            r#"{"user":{"id":"b"},"rev":1,"at":1706631585000,"n":2}"#,
            "\n",
            "not json\n",
            r#"{"user":{},"rev":1,"at":1706631586000,"n":4}"#,
            "\n",
            "[1, 2, 3]\n",
            // The same (key, version) as line 1: a duplicate.
            r#"{"user":{"id":"a"},"rev":1,"at":"2024-01-30T16:19:44Z","n":6}"#,
            "\n",
            "\n",
            // A new version of key a, with a Windows line end.
            r#"{"user":{"id":"a"},"rev":2,"at":"2024-01-30T16:20:44Z","n":8}"#,
            "\r\n",
            // The last line has no newline.
            r#"{"user":{"id":"c"},"rev":1,"at":"2024-01-30T17:19:47+01:00","n":9}"#,
        ),
    )
    .unwrap();
    let config = JsonlConfig {
        enabled: true,
        file: path.clone(),
        topic: "events".into(),
        key: "user.id".into(),
        version: Some("rev".into()),
        time: Some("at".into()),
        ..Default::default()
    };
    let metrics = run_once(&config, &settings).await;
    assert_eq!(metrics.published.get(), 4);
    assert_eq!(metrics.duplicates.get(), 1);
    assert_eq!(metrics.dead_letters.get(), 3);

    let mut published: Vec<(String, i64)> = read_topic(&settings, "events")
        .await
        .into_iter()
        .map(|(key, value)| {
            assert_eq!(
                value["user"]["id"],
                key.as_str(),
                "keyed by user.id: {value}"
            );
            (key, value["n"].as_i64().unwrap())
        })
        .collect();
    published.sort();
    assert_eq!(
        published,
        [
            ("a".to_string(), 1),
            ("a".to_string(), 8),
            ("b".to_string(), 2),
            ("c".to_string(), 9)
        ]
    );
    let stamped: BTreeMap<String, (String, Option<i64>)> = headers(&settings, "events")
        .await
        .into_iter()
        .map(|(key, record, at)| (record, (key, at)))
        .collect();
    let expected: BTreeMap<String, (String, Option<i64>)> = [
        ("a\u{1f}1", "a", 1_706_631_584_000),
        ("a\u{1f}2", "a", 1_706_631_644_000),
        ("b\u{1f}1", "b", 1_706_631_585_000),
        ("c\u{1f}1", "c", 1_706_631_587_000),
    ]
    .into_iter()
    .map(|(record, key, at)| (record.to_string(), (key.to_string(), Some(at))))
    .collect();
    assert_eq!(stamped, expected);

    let mut reasons = dead_letter_reasons(&settings, "jsonl").await;
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].starts_with("line 3: not JSON: expected ident"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], "line 4: no key field user.id");
    assert_eq!(reasons[2], "line 5: an array, not a JSON object");
    let letters = read_topic(&settings, DLQ).await;
    let not_json = letters
        .iter()
        .map(|(_, letter)| letter)
        .find(|letter| letter["reason"].as_str().unwrap().starts_with("line 3:"))
        .unwrap();
    assert_eq!(not_json["payload"], "not json");
    assert_eq!(not_json["topic"], path.display().to_string().as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_a_restart_and_appended_lines_publish_only_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let path = dir.path().join("users.jsonl");
    const N: u64 = 2000;
    let text: String = (0..N)
        .map(|i| format!("{{\"id\":\"k{i}\",\"i\":{i}}}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    let config = JsonlConfig {
        enabled: true,
        file: path.clone(),
        topic: "users".into(),
        key: "id".into(),
        ..Default::default()
    };

    // Stopped as Ctrl+C would, somewhere in the file (or at its end, on a fast machine).
    let Running {
        metrics: first,
        stop,
        task,
    } = spawn(&config, &settings);
    wait_for("a first record", || first.published.get() > 0).await;
    stop.cancel();
    task.await
        .unwrap()
        .expect("a stopped run ends without error");
    let before = first.published.get();

    // The restart publishes the rest, and nothing twice.
    let second = run_once(&config, &settings).await;
    assert_eq!(before + second.published.get(), N);
    assert_eq!(second.duplicates.get(), before);

    // Once more over the same file: nothing new.
    let third = run_once(&config, &settings).await;
    assert_eq!(
        (third.published.get(), third.duplicates.get()),
        (0, N),
        "a run over a published file publishes nothing"
    );

    // Two new keys and one already published (with other content: each key is published once).
    append(
        &path,
        "{\"id\":\"k2000\",\"i\":2000}\n{\"id\":\"k5\",\"i\":-5}\n{\"id\":\"k2001\",\"i\":2001}\n",
    );
    let fourth = run_once(&config, &settings).await;
    assert_eq!(
        (fourth.published.get(), fourth.duplicates.get()),
        (2, N + 1)
    );

    let messages = read_topic(&settings, "users").await;
    assert_eq!(messages.len() as u64, N + 2, "each key exactly once");
    let keys: BTreeSet<&str> = messages.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len() as u64, N + 2);
    for (key, value) in &messages {
        assert_eq!(*key, format!("k{}", value["i"]), "{value}");
    }
    assert!(dead_letter_reasons(&settings, "jsonl").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_picks_up_appended_lines_until_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let path = dir.path().join("tail.jsonl");
    std::fs::write(&path, "{\"id\":\"k1\",\"n\":1}\n{\"id\":\"k2\",\"n\":2}\n").unwrap();
    let config = JsonlConfig {
        enabled: true,
        file: path.clone(),
        topic: "tail".into(),
        key: "id".into(),
        follow: true,
        ..Default::default()
    };
    let Running {
        metrics,
        stop,
        task,
    } = spawn(&config, &settings);
    wait_for("the first two lines", || metrics.published.get() == 2).await;

    append(&path, "{\"id\":\"k3\",\"n\":3}\n{\"id\":\"k4\",\"n\":4}\n");
    wait_for("the appended lines", || metrics.published.get() == 4).await;

    // A line being written waits for its newline: not published, not a dead letter.
    append(&path, "{\"id\":\"p\",\"n\":");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(metrics.published.get(), 4);
    assert_eq!(metrics.dead_letters.get(), 0);
    append(&path, "5}\n");
    wait_for("the finished line", || metrics.published.get() == 5).await;

    // Truncated and rewritten (shorter): read again from its start; k1 is already published.
    std::fs::write(&path, "{\"id\":\"k1\",\"n\":1}\n{\"id\":\"z\",\"n\":6}\n").unwrap();
    wait_for("the rewritten file", || metrics.published.get() == 6).await;
    assert!(metrics.duplicates.get() >= 1);

    assert!(
        !task.is_finished(),
        "a followed file keeps the source running"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the source stops promptly when cancelled")
        .unwrap()
        .expect("a cancelled source returns Ok");

    let mut keys: Vec<String> = read_topic(&settings, "tail")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k2", "k3", "k4", "p", "z"]);
    assert_eq!(metrics.dead_letters.get(), 0);
}
