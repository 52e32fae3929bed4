//! The EMSC WebSocket source against a local WebSocket server replaying the recorded messages,
//! with hostile frames, a dropped connection and a re-sent event, on the embedded broker.

mod common;

use std::{sync::Arc, time::Duration};

use common::{embedded_broker, fixture, read_topic};
use futures::{SinkExt, StreamExt};
use quakestream::{metrics::SourceMetrics, source::emsc::EmscConfig};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const CREATE_2025: &str = "emsc/ws_message_create_20250305_0000090.json";
const CREATE_2020: &str = "emsc/ws_message_20201230_0000082.json";

/// The source running in this process: its metrics, its stop token and its task.
fn start(
    config: EmscConfig,
    settings: &quakestream::kafka::KafkaSettings,
) -> (
    Arc<SourceMetrics>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<quakestream::Result<()>>,
) {
    let metrics = Arc::new(SourceMetrics::new("emsc"));
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
    (metrics, stop, task)
}

/// Serves one script per connection, in order; the last connection stays open.
async fn server(scripts: Vec<Vec<Message>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let count = scripts.len();
        for (n, script) in scripts.into_iter().enumerate() {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            for m in script {
                ws.send(m).await.unwrap();
            }
            if n + 1 < count {
                // Drop the connection as a flaky network would (no close frame).
                drop(ws);
            } else {
                // Answer pings until the client goes.
                while let Some(Ok(_)) = ws.next().await {}
            }
        }
    });
    format!("ws://{addr}/standing_order/websocket")
}

fn text(path: &str) -> Message {
    Message::Text(String::from_utf8(fixture(path)).unwrap().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_quakes_once_across_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;

    let mut update: Value = serde_json::from_slice(&fixture(CREATE_2025)).unwrap();
    update["action"] = "update".into();
    update["data"]["properties"]["lastupdate"] = "2025-03-05T10:20:01.5Z".into();
    update["data"]["properties"]["mag"] = 1.6.into();
    let url = server(vec![
        vec![text(CREATE_2025), text(CREATE_2020)],
        // After the reconnect: hostile frames, an event sent again, then a real update.
        vec![
            Message::Text("not json at all".into()),
            Message::Binary(vec![0xff, 0xfe, 0x00].into()),
            Message::Text(
                r#"{"action":"create","data":{"properties":{"unid":"x","time":"2025-03-05T09:45:07Z","lat":"north"}}}"#.into(),
            ),
            text(CREATE_2025),
            Message::Text(update.to_string().into()),
        ],
    ])
    .await;

    let config = EmscConfig {
        url,
        ping_interval: Duration::from_millis(200),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..Default::default()
    };
    let (metrics, stop, task) = start(config, &settings);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while metrics.published.get() < 3 || metrics.duplicates.get() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "published {} duplicates {} dead letters {}",
            metrics.published.get(),
            metrics.duplicates.get(),
            metrics.dead_letters.get()
        );
        assert!(!task.is_finished());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A few pings on the open connection, answered: it stays up.
    tokio::time::sleep(Duration::from_millis(900)).await;
    stop.cancel();
    task.await.unwrap().expect("source ran without error");

    assert_eq!(metrics.published.get(), 3, "two creates and one update");
    assert_eq!(metrics.duplicates.get(), 1, "the re-sent create");
    assert_eq!(
        metrics.dead_letters.get(),
        3,
        "errors: connect {} publish {} closed {} timeout {}",
        metrics.errors("connect"),
        metrics.errors("publish"),
        metrics.errors("closed"),
        metrics.errors("timeout")
    );
    assert!(
        metrics.errors_total() >= 1,
        "the dropped connection is counted"
    );

    let quakes = read_topic(&settings, "earthquakes").await;
    assert_eq!(quakes.len(), 3);
    // Field by field, from the fixture's own values.
    let first = &quakes
        .iter()
        .find(|(_, q)| q["updated"] == "2025-03-05T10:06:56.102Z")
        .unwrap()
        .1;
    let raw: Value = serde_json::from_slice(&fixture(CREATE_2025)).unwrap();
    let p = &raw["data"]["properties"];
    assert_eq!(first["id"], p["unid"]);
    assert_eq!(first["ids"], serde_json::json!([p["unid"]]));
    assert_eq!(first["source"], "emsc");
    assert_eq!(first["time"], "2025-03-05T09:45:07.000Z");
    assert_eq!(first["mag"], p["mag"]);
    assert_eq!(first["mag_type"], p["magtype"]);
    assert_eq!(first["place"], p["flynn_region"]);
    assert_eq!(first["lat"], p["lat"]);
    assert_eq!(first["lon"], p["lon"]);
    // Geometry z is −7.0; depth is 7 km down.
    assert_eq!(raw["data"]["geometry"]["coordinates"][2], -7.0);
    assert_eq!(first["depth_km"], 7.0);
    assert_eq!(first["net"], "afad");
    assert_eq!(first["code"], p["source_id"]);
    assert_eq!(first["event_type"], "earthquake");
    assert_eq!(first["title"], "M 1.4 - WESTERN TURKEY");
    let updated = &quakes
        .iter()
        .find(|(_, q)| q["updated"] == "2025-03-05T10:20:01.500Z")
        .unwrap();
    assert_eq!(updated.0, "20250305_0000090", "keyed by the event");
    assert_eq!(updated.1["mag"], 1.6);
    let older = &quakes
        .iter()
        .find(|(k, _)| k == "20201230_0000082")
        .unwrap()
        .1;
    assert_eq!(older["time"], "2020-12-30T08:45:29.900Z");
    assert_eq!(older["depth_km"], 4.0);

    let reasons = common::dead_letter_reasons(&settings, "emsc").await;
    assert!(
        reasons.iter().any(|r| r.starts_with("not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r == "a binary frame, not a text message"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("lat is not a number")),
        "{reasons:?}"
    );

    // A restart reads the topic back: the same messages publish nothing.
    let url = server(vec![vec![
        text(CREATE_2025),
        text(CREATE_2020),
        Message::Text(update.to_string().into()),
    ]])
    .await;
    let config = EmscConfig {
        url,
        ..Default::default()
    };
    let (metrics, stop, task) = start(config, &settings);
    while metrics.duplicates.get() < 3 {
        assert!(std::time::Instant::now() < deadline + Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(metrics.published.get(), 0);
    assert_eq!(read_topic(&settings, "earthquakes").await.len(), 3);
}
