//! Nothing secret in any output. `quakestream up` runs with every path that carries a secret
//! failing at once:
//!
//! - an `[[http]]` source (the `nasa-apod` preset) whose `NASA_API_KEY` comes from the
//!   environment and whose endpoint refuses connections, with a literal credential header;
//! - two alert webhooks, one from `env:`, one literal, both dead, while the feed has M4.5+
//!   events (so alerts are raised and their delivery fails);
//! - the PostgreSQL sink with a password in its URL, pointed at a port where nothing listens;
//! - the object-store sink with S3 credentials from the environment and a dead endpoint;
//! - a SASL password among the Kafka client properties.
//!
//! Then everything the process wrote is searched for each secret: its terminal (stdout and
//! stderr), every file under the data directory (logs, the alert log), `quakestream config`,
//! `/metrics`, `/api/pipeline` and `/health`. Zero hits.

mod common;

use std::time::{Duration, Instant};

use common::{Spawned, fixture, free_port, quakestream, revision_sequence, run};
use quakestream::fake::{FakeServer, Step};

const NASA_KEY: &str = "SECRET-nasa-key-4242";
const HEADER_TOKEN: &str = "SECRET-header-token-4242";
const ENV_HOOK_PATH: &str = "SECRET-env-hook-4242";
const LITERAL_HOOK_PATH: &str = "SECRET-literal-hook-4242";
const PG_PASSWORD: &str = "SECRET-pg-password-4242";
const AWS_SECRET: &str = "SECRET-aws-key-4242";
const SASL_PASSWORD: &str = "SECRET-sasl-password-4242";

const SECRETS: [&str; 7] = [
    NASA_KEY,
    HEADER_TOKEN,
    ENV_HOOK_PATH,
    LITERAL_HOOK_PATH,
    PG_PASSWORD,
    AWS_SECRET,
    SASL_PASSWORD,
];

/// How long the failing paths get to fail (and be retried, and be logged).
const FAILING_FOR: Duration = Duration::from_secs(20);

#[tokio::test]
async fn no_secret_reaches_the_terminal_the_logs_the_config_or_the_web() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let files = revision_sequence();
    // The last recorded poll: M4.5+ events, so alerts are raised and sent to the webhooks.
    let feed = FakeServer::start(
        "127.0.0.1:0",
        vec![Step::Json(fixture(files.last().unwrap()).into())],
    )
    .await
    .unwrap();
    // Ports where nothing listens: every endpoint that carries a secret is dead.
    let dead = |_: ()| format!("127.0.0.1:{}", free_port());
    let (http_dead, hook_dead, pg_dead, s3_dead) = (dead(()), dead(()), dead(()), dead(()));
    let config = dir.path().join("secrets.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[http]]
preset = "nasa-apod"
url = "http://{http_dead}/planetary/apod"
interval = "1s"
headers = {{ "X-Api-Token" = "{HEADER_TOKEN}" }}

[alerts]
webhooks = ["env:QS_TEST_WEBHOOK", "http://{hook_dead}/hooks/{LITERAL_HOOK_PATH}"]
webhook_attempts = 2

[postgres]
url = "postgres://etl:{PG_PASSWORD}@{pg_dead}/quakes"

[object_store]
location = "s3://secret-test/lake"
endpoint = "http://{s3_dead}"

[kafka]
"sasl.password" = "{SASL_PASSWORD}"
"#
        ),
    )
    .unwrap();
    let env = [
        ("NASA_API_KEY", NASA_KEY.to_string()),
        (
            "QS_TEST_WEBHOOK",
            format!("http://{hook_dead}/services/T000/B000/{ENV_HOOK_PATH}"),
        ),
        ("AWS_ACCESS_KEY_ID", "AKIATESTING".to_string()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];

    let broker = format!("127.0.0.1:{}", free_port());
    let web = format!("127.0.0.1:{}", free_port());
    let mut command = quakestream(&data);
    command.arg("--config").arg(&config).args([
        "up",
        "--listen",
        &broker,
        "--web",
        &web,
        "--usgs-url",
        &feed.url("/earthquakes/feed/v1.0/summary/all_day.geojson"),
        "--interval",
        "1s",
    ]);
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command.env("RUST_LOG", "debug");
    let mut up = Spawned::start(&mut command);
    up.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(90));

    // Let every path fail, more than once, then read what the web server shows.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let until = Instant::now() + FAILING_FOR;
    let mut web_text = String::new();
    let mut alerts_failed = false;
    while Instant::now() < until || !alerts_failed {
        assert!(
            Instant::now() < until + Duration::from_secs(60),
            "no webhook delivery failed within {FAILING_FOR:?} + 60 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        web_text.clear();
        for path in ["/metrics", "/api/pipeline", "/health"] {
            if let Ok(response) = http.get(format!("http://{web}{path}")).send().await {
                web_text.push_str(&response.text().await.unwrap_or_default());
            }
        }
        alerts_failed = web_text.lines().any(|l| {
            l.starts_with("quakestream_alerts_webhooks_failed_total ") && !l.ends_with(" 0")
        });
    }
    assert!(
        web_text.contains("quakestream_source_errors_total"),
        "{web_text}"
    );

    up.signal("INT");
    up.wait(Duration::from_secs(60));
    let terminal = [up.drain_stdout(), up.drain_stderr()].concat().join("\n");
    // The failures did happen and were reported: this test looks where secrets would be.
    for reported in [
        "nasa-apod",
        "postgres",
        "object-store",
        "webhook delivery failed",
    ] {
        assert!(
            terminal.contains(reported),
            "the terminal says nothing of {reported}:\n{terminal}"
        );
    }

    let mut shown = quakestream(&data);
    shown.arg("--config").arg(&config).arg("config");
    shown.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    let config_out = run(&mut shown);
    assert!(config_out.status.success(), "{}", config_out.stderr_text());
    let config_text = format!(
        "{}\n{}",
        config_out.stdout.join("\n"),
        config_out.stderr_text()
    );
    assert!(config_text.contains("[postgres]"), "{config_text}");

    let mut written = String::new();
    for entry in walk(&data) {
        // The broker's own storage holds the records, not settings; everything else is ours.
        if entry.components().any(|c| c.as_os_str() == "broker") {
            continue;
        }
        if let Ok(bytes) = std::fs::read(&entry) {
            written.push_str(&String::from_utf8_lossy(&bytes));
        }
    }

    let mut hits = Vec::new();
    for secret in SECRETS {
        for (what, text) in [
            ("the terminal", &terminal),
            ("quakestream config", &config_text),
            ("/metrics, /api/pipeline, /health", &web_text),
            ("files under the data directory", &written),
        ] {
            if let Some(at) = text.find(secret) {
                let from = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let to = text[at..].find('\n').map_or(text.len(), |i| at + i);
                hits.push(format!("{secret} in {what}: {}", &text[from..to]));
            }
        }
    }
    assert!(hits.is_empty(), "secrets shown:\n{}", hits.join("\n"));
    feed.stop();
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
