//! The alert processor against the embedded broker: the recorded `significant_month` feed raises
//! exactly the alerts its rules imply, on the topic, in the log file and at a webhook that fails
//! at first; a revision that raises the magnitude is an upgrade; a deletion cancels; the same
//! records again (even after a restart) raise nothing.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{fixture, read_topic};
use quakestream::{
    fake::{FakeServer, Step},
    kafka::{KafkaSettings, producer::Producer},
    process::alert::{AlertsConfig, Geofence, RuleConfig, task::AlertMetrics},
    source::{fetch::HttpConfig, usgs::UsgsConfig},
};
use tokio_util::sync::CancellationToken;

const FIXTURE: &str = "usgs/significant_month_2023-10-11T2016Z.geojson";

/// A webhook endpoint that answers 500 to the first request, then 200, keeping every body.
async fn webhook_server() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Mutex::new(0usize));
    let app = axum::Router::new().route(
        "/hook/secret",
        axum::routing::post({
            let received = received.clone();
            move |body: axum::Json<serde_json::Value>| {
                let (received, calls) = (received.clone(), calls.clone());
                async move {
                    let mut calls = calls.lock().unwrap();
                    *calls += 1;
                    if *calls == 1 {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    received.lock().unwrap().push(body.0);
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook/secret"), received)
}

struct Running {
    metrics: Arc<AlertMetrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<quakestream::Result<()>>,
}

fn start(config: AlertsConfig, settings: &KafkaSettings, data_dir: &std::path::Path) -> Running {
    let (task, metrics, stop) = common::spawn_stage(&config, settings, data_dir);
    Running {
        metrics,
        stop,
        task,
    }
}

impl Running {
    async fn until(&self, records: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while self.metrics.records.get() < records {
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {records} records reached the alert processor",
                self.metrics.records.get()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) -> Arc<AlertMetrics> {
        self.stop.cancel();
        self.task
            .await
            .unwrap()
            .expect("alert processor ran without error");
        self.metrics
    }
}

/// Great-circle distance, written here again so the test does not trust the library's.
fn haversine(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let r = 6371.0088f64;
    let (a1, a2) = (lat1.to_radians(), lat2.to_radians());
    let h = ((a2 - a1) / 2.0).sin().powi(2)
        + a1.cos() * a2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

/// Writes quake records to the `earthquakes` topic, keyed.
async fn publish(producer: &Producer, records: &[(String, serde_json::Value)]) {
    for (key, quake) in records {
        let body = serde_json::to_vec(quake).unwrap();
        producer
            .send("earthquakes", Some(key), &body, None)
            .await
            .unwrap();
    }
}

/// (kind, key) of every alert on a topic, in order.
async fn alerts(settings: &KafkaSettings, topic: &str) -> Vec<(String, String)> {
    read_topic(settings, topic)
        .await
        .into_iter()
        .map(|(key, alert)| (alert["kind"].as_str().unwrap().to_string(), key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn significant_month_raises_exactly_the_alerts_the_rules_imply() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(dir.path()).await;
    let (hook, received) = webhook_server().await;

    // What the rules imply, straight from the fixture.
    let feed: serde_json::Value = serde_json::from_slice(&fixture(FIXTURE)).unwrap();
    let features = feed["features"].as_array().unwrap();
    let mut magnitude = Vec::new();
    let mut combined = Vec::new();
    for f in features {
        let p = &f["properties"];
        let c = f["geometry"]["coordinates"].as_array().unwrap();
        let (lon, lat) = (c[0].as_f64().unwrap(), c[1].as_f64().unwrap());
        let id = f["id"].as_str().unwrap().to_string();
        if p["mag"].as_f64().unwrap() >= 4.5 {
            magnitude.push(id.clone());
        }
        let orange = matches!(p["alert"].as_str(), Some("orange" | "red"));
        let tsunami = p["tsunami"] == 1;
        let near_herat = haversine(lat, lon, 34.35, 62.2) <= 300.0;
        if orange || tsunami || near_herat {
            combined.push(id);
        }
    }
    magnitude.sort();
    combined.sort();
    assert_eq!(magnitude.len(), 16, "all but the M4.32 and M4.2 events");
    assert!(combined.len() >= 8 && combined.len() < features.len());

    let default_rules = AlertsConfig {
        output: "alerts-magnitude".into(),
        group_id: "alerts-magnitude".into(),
        log_file: "alerts.log".into(),
        webhooks: vec![hook],
        ..AlertsConfig::default()
    };
    let combined_rules = AlertsConfig {
        output: "alerts-combined".into(),
        group_id: "alerts-combined".into(),
        log_file: "".into(),
        rules: vec![
            RuleConfig {
                name: "orange".into(),
                min_magnitude: None,
                min_alert_level: Some("orange".into()),
                tsunami: None,
                within: None,
            },
            RuleConfig {
                name: "tsunami".into(),
                min_magnitude: None,
                min_alert_level: None,
                tsunami: Some(true),
                within: None,
            },
            RuleConfig {
                name: "near-herat".into(),
                min_magnitude: None,
                min_alert_level: None,
                tsunami: None,
                within: Some(Geofence {
                    lat: 34.35,
                    lon: 62.2,
                    radius_km: 300.0,
                }),
            },
        ],
        ..AlertsConfig::default()
    };
    let processor = start(default_rules.clone(), &settings, dir.path());
    let other = start(combined_rules, &settings, &dir.path().join("other"));

    let server = FakeServer::start("127.0.0.1:0", vec![Step::Json(fixture(FIXTURE).into())])
        .await
        .unwrap();
    let source = common::RunningSource::spawn(
        UsgsConfig {
            url: server.url("/earthquakes/feed/v1.0/summary/significant_month.geojson"),
            interval: Some(Duration::from_millis(200)),
            http: HttpConfig {
                timeout: Duration::from_secs(2),
                ..HttpConfig::default()
            },
            ..UsgsConfig::default()
        },
        &settings,
    );
    processor.until(18).await;
    other.until(18).await;
    let published = source.stop().await.published.get();
    assert_eq!(published, 18);

    let got = alerts(&settings, "alerts-magnitude").await;
    assert!(got.iter().all(|(kind, _)| kind == "new"));
    let mut keys: Vec<String> = got.iter().map(|(_, k)| k.clone()).collect();
    keys.sort();
    assert_eq!(keys, magnitude, "one alert per event of M4.5 or more");
    let mut keys: Vec<String> = alerts(&settings, "alerts-combined")
        .await
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    keys.sort();
    assert_eq!(keys, combined, "orange, tsunami or within 300 km of Herat");

    // The alert record carries the quake and the rule.
    let records = read_topic(&settings, "alerts-magnitude").await;
    let (_, herat) = records.iter().find(|(k, _)| k == "us6000len8").unwrap();
    assert_eq!(herat["rules"], serde_json::json!(["M4.5+"]));
    assert_eq!(herat["quake"]["alert"], "red");
    assert_eq!(herat["quake"]["mag"], 6.3);

    // A revision that raises the magnitude across a step: an upgrade. A deletion: a cancel.
    let producer = Producer::new(&settings).unwrap();
    let (_, poland) = read_topic(&settings, "earthquakes")
        .await
        .into_iter()
        .find(|(k, _)| k == "us6000lec2")
        .unwrap();
    let mut revised = poland.clone();
    revised["mag"] = serde_json::json!(5.6);
    revised["updated"] = serde_json::json!("2023-10-12T00:00:00.000Z");
    let mut deleted = records.iter().find(|(k, _)| k == "us6000len8").unwrap().1["quake"].clone();
    deleted["status"] = serde_json::json!("deleted");
    deleted["updated"] = serde_json::json!("2023-10-12T00:00:00.000Z");
    let changes = [
        ("us6000lec2".to_string(), revised),
        ("us6000len8".to_string(), deleted),
    ];
    publish(&producer, &changes).await;
    processor.until(20).await;

    // The same records again, to the running processor and after a restart: nothing new.
    let everything = read_topic(&settings, "earthquakes").await;
    publish(&producer, &everything).await;
    processor.until(20 + everything.len() as u64).await;
    let metrics = processor.stop().await;
    let restarted = start(default_rules, &settings, dir.path());
    publish(&producer, &everything).await;
    restarted.until(everything.len() as u64).await;
    let restarted_metrics = restarted.stop().await;
    other.stop().await;

    let got = alerts(&settings, "alerts-magnitude").await;
    let kinds: BTreeMap<&str, usize> = got.iter().fold(BTreeMap::new(), |mut m, (kind, _)| {
        *m.entry(kind.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        kinds,
        BTreeMap::from([("cancel", 1), ("new", 16), ("upgrade", 1)])
    );
    let key_of = |kind: &str| {
        got.iter()
            .find(|(k, _)| k == kind)
            .map(|(_, key)| key.as_str())
    };
    assert_eq!(key_of("upgrade"), Some("us6000lec2"));
    assert_eq!(key_of("cancel"), Some("us6000len8"));
    assert_eq!(metrics.alerts(), 18);
    assert_eq!(restarted_metrics.alerts(), 0);

    // The log file has one line per alert.
    let log = std::fs::read_to_string(dir.path().join("alerts.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 18);
    let upgrade = lines.iter().find(|l| l.contains("\tupgrade\t")).unwrap();
    assert!(
        upgrade.contains("\tus6000lec2\t[UPGRADE] M 5.6 - Poland-Slovakia border region"),
        "{upgrade}"
    );
    // The webhook got every alert once, the first after a retry.
    assert_eq!(metrics.webhooks.retries.get(), 1);
    assert_eq!(metrics.webhooks.sent.get(), 18);
    let texts: Vec<String> = received
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 18);
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("[CANCELLED] M 6.3 - western Afghanistan"))
    );

    stop_broker.cancel();
    broker.stopped().await.unwrap();
}
