//! The `http` source and its presets against the fake API server replaying the recorded
//! randomuser.me and NASA APOD responses, on the embedded broker. Expected records are built
//! here straight from the fixture JSON, field by field, without the library's mapping.

mod common;

use std::time::Duration;

use common::{embedded_broker, fixture, read_topic};
use quakestream::{
    fake::{FakeServer, Step},
    metrics::SourceMetrics,
    source::http::{self, HttpSourceConfig, Preset},
};
use serde_json::{Value, json};

/// The tutorial's flat user record, computed from a randomuser.me user by hand.
fn expected_user(u: &Value) -> Value {
    let l = &u["location"];
    let number = match &l["street"]["number"] {
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap().to_string(),
    };
    let postcode = match &l["postcode"] {
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap().to_string(),
    };
    json!({
        "id": u["login"]["uuid"],
        "first_name": u["name"]["first"],
        "last_name": u["name"]["last"],
        "gender": u["gender"],
        "address": format!(
            "{number} {}, {}, {}, {}",
            l["street"]["name"].as_str().unwrap(),
            l["city"].as_str().unwrap(),
            l["state"].as_str().unwrap(),
            l["country"].as_str().unwrap()
        ),
        "post_code": postcode,
        "email": u["email"],
        "username": u["login"]["username"],
        "dob": u["dob"]["date"],
        "registered_date": u["registered"]["date"],
        "phone": u["phone"],
        "picture": u["picture"]["medium"],
    })
}

/// Runs a source until `done` holds for its metrics, then stops it.
async fn run_until(
    config: HttpSourceConfig,
    settings: &quakestream::kafka::KafkaSettings,
    done: impl Fn(&SourceMetrics) -> bool,
) -> std::sync::Arc<SourceMetrics> {
    let metrics = std::sync::Arc::new(SourceMetrics::new("test"));
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (settings, metrics, stop) = (settings.clone(), metrics.clone(), stop.clone());
        async move {
            quakestream::source::SourceSettings::run(
                &config,
                &common::source_ctx(&settings, stop),
                metrics,
            )
            .await
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done(&metrics) {
        assert!(
            std::time::Instant::now() < deadline,
            "source did not get there: polls {} published {} dead letters {} errors {}",
            metrics.polls.get(),
            metrics.published.get(),
            metrics.dead_letters.get(),
            metrics.errors_total()
        );
        assert!(!task.is_finished(), "source ended early: {:?}", task.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().expect("source ran without error");
    metrics
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomuser_preset_publishes_the_tutorial_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let files = [
        "randomuser/results200_nat-us_v1.3_seed-624b47c9006a7219.json",
        "randomuser/results1_nat-br_v1.4_seed-6786def1f7fa0850.json",
        "randomuser/results1_nat-dk_v1.4_seed-8095ce78e9c2817d.json",
    ];
    let mut steps: Vec<Step> = files
        .iter()
        .map(|f| Step::Json(fixture(f).into()))
        .collect();
    // The first response again (the same users: nothing new), then faults: the source
    // retries each, and the last good body stays the last.
    steps.push(Step::Json(fixture(files[0]).into()));
    steps.push(Step::Status {
        code: 503,
        retry_after: Some(0),
    });
    steps.push(Step::Garbage);
    steps.push(Step::Json(
        br#"{"results":[{"login":{"uuid":"no-location"}}, "a string", {"nologin":1}]}"#
            .to_vec()
            .into(),
    ));
    let fake = FakeServer::start("127.0.0.1:0", steps).await.unwrap();
    let config = HttpSourceConfig {
        preset: Some(Preset::Randomuser),
        url: fake.url("/api/"),
        interval: Some(Duration::from_millis(100)),
        http: quakestream::source::fetch::HttpConfig {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let metrics = run_until(config.clone(), &settings, |m| m.dead_letters.get() >= 3).await;

    let mut expected = Vec::new();
    for f in files {
        let body: Value = serde_json::from_slice(&fixture(f)).unwrap();
        for u in body["results"].as_array().unwrap() {
            expected.push((
                u["login"]["uuid"].as_str().unwrap().to_string(),
                expected_user(u),
            ));
        }
    }
    assert_eq!(expected.len(), 202);
    let mut got = read_topic(&settings, "users_created").await;
    let mut want = expected.clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got.len(), want.len(), "each user once");
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(gk, wk);
        assert_eq!(gv, wv, "user {wk}");
        // Field order is the tutorial's.
        let names: Vec<&String> = gv.as_object().unwrap().keys().collect();
        assert_eq!(names[0], "id");
        assert_eq!(names[11], "picture");
    }
    assert_eq!(metrics.published.get(), 202);
    assert_eq!(
        metrics.duplicates.get(),
        200,
        "the repeated response published nothing"
    );
    assert_eq!(metrics.errors("server_error"), 1);
    assert_eq!(metrics.errors("malformed"), 1);
    let reasons = common::dead_letter_reasons(&settings, "randomuser").await;
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("field address: location.street.number is missing")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "a record is a JSON object"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r == "key field login.uuid is missing or empty"),
        "{reasons:?}"
    );

    // A restart reads the topic back and publishes nothing twice.
    let again = FakeServer::start(
        "127.0.0.1:0",
        files
            .iter()
            .map(|f| Step::Json(fixture(f).into()))
            .collect(),
    )
    .await
    .unwrap();
    let restarted = HttpSourceConfig {
        url: again.url("/api/"),
        ..config
    };
    let metrics = run_until(restarted, &settings, |m| m.duplicates.get() >= 202).await;
    assert_eq!(metrics.published.get(), 0);
    assert_eq!(read_topic(&settings, "users_created").await.len(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nasa_apod_preset_one_message_per_date() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let range = fixture("apod/range_2022-02-01_to_2022-02-13_thumbs.json");
    let single = fixture("apod/single_2025-08-22.json");
    let fake = FakeServer::start(
        "127.0.0.1:0",
        vec![
            Step::Json(range.clone().into()),
            // The same range again, then one date: nothing new, then one more.
            Step::Json(range.clone().into()),
            Step::Json(single.clone().into()),
        ],
    )
    .await
    .unwrap();
    let config = HttpSourceConfig {
        preset: Some(Preset::NasaApod),
        url: fake.url("/planetary/apod"),
        interval: Some(Duration::from_millis(100)),
        query: [
            ("start_date".to_string(), "2022-02-01".to_string()),
            ("end_date".to_string(), "2022-02-13".to_string()),
        ]
        .into(),
        ..Default::default()
    };
    let metrics = run_until(config, &settings, |m| m.published.get() >= 14).await;
    assert_eq!(metrics.duplicates.get() % 13, 0, "repeats skipped whole");

    let mut expected: Vec<Value> = serde_json::from_slice(&range).unwrap();
    expected.push(serde_json::from_slice(&single).unwrap());
    let got = read_topic(&settings, "nasa_data_topic").await;
    assert_eq!(got.len(), 14, "one message per date");
    for want in &expected {
        let date = want["date"].as_str().unwrap();
        let (_, value) = got
            .iter()
            .find(|(k, _)| k == date)
            .unwrap_or_else(|| panic!("no message keyed {date}"));
        // The record as NASA sent it: images and videos alike.
        assert_eq!(value, want, "{date}");
    }
    let videos: Vec<&Value> = got
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v["media_type"] == "video")
        .collect();
    assert_eq!(videos.len(), 2);
    assert!(
        videos
            .iter()
            .all(|v| v["thumbnail_url"].is_string() && v.get("hdurl").is_none())
    );

    // The demo key goes in the query when NASA_API_KEY is unset (the test leaves it unset).
    if std::env::var("NASA_API_KEY").is_err() {
        let url = http::request_url(&HttpSourceConfig {
            preset: Some(Preset::NasaApod),
            ..Default::default()
        })
        .unwrap();
        assert!(url.contains("api_key=DEMO_KEY"), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_body_and_an_html_page_are_errors_not_records() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let fake = FakeServer::start(
        "127.0.0.1:0",
        vec![
            Step::Oversized(4 << 20),
            Step::Html,
            Step::Truncated(
                fixture("randomuser/results1_nat-br_v1.4_seed-6786def1f7fa0850.json").into(),
            ),
            Step::Json(
                fixture("randomuser/results1_nat-br_v1.4_seed-6786def1f7fa0850.json").into(),
            ),
        ],
    )
    .await
    .unwrap();
    let config = HttpSourceConfig {
        preset: Some(Preset::Randomuser),
        url: fake.url("/api/"),
        interval: Some(Duration::from_millis(100)),
        http: quakestream::source::fetch::HttpConfig {
            max_bytes: 1 << 20,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..Default::default()
        },
        ..Default::default()
    };
    let metrics = run_until(config, &settings, |m| m.published.get() >= 1).await;
    assert_eq!(metrics.errors("too_large"), 1);
    assert_eq!(metrics.errors("content_type"), 1);
    assert_eq!(metrics.errors("malformed"), 1);
    assert_eq!(read_topic(&settings, "users_created").await.len(), 1);
}
