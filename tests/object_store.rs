//! The object-store sink against moto's S3 server: Parquet files appear under the Hive-style
//! keys of the local lake, one object per record in `{date}.json` mode, and a missing bucket is
//! a clear error.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{Moto, fixture_quakes};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, path::Path as Key};
use quakestream::kafka::{KafkaSettings, TopicName, admin::Admin, producer::Producer};

fn sink(data_dir: &std::path::Path, brokers: &str, moto: &Moto, location: &str) -> Command {
    let mut command = common::quakestream(data_dir);
    command
        .args(["--brokers", brokers, "run", "object-store"])
        .env("QUAKESTREAM_OBJECT_STORE_LOCATION", location)
        .env("QUAKESTREAM_OBJECT_STORE_ENDPOINT", &moto.endpoint)
        .env("QUAKESTREAM_OBJECT_STORE_ROLL_AGE", "500ms")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    command
}

async fn keys(store: &impl ObjectStore, prefix: &str) -> Vec<String> {
    let prefix = Key::from(prefix);
    let mut keys: Vec<String> = store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap_or_default();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_per_record_objects_land_under_the_expected_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("b")).await;
    let moto = Moto::start();
    moto.create_bucket("lake").await;
    let bucket = moto.bucket("lake");
    publish_quakes(&settings).await;

    // A missing bucket: a clear error at start, naming it, not a panic.
    let data_dir = dir.path().join("sink");
    std::fs::create_dir_all(&data_dir).unwrap();
    let failed = common::run(&mut sink(
        &data_dir,
        broker.bootstrap(),
        &moto,
        "s3://no-such-bucket/lake",
    ));
    assert!(!failed.status.success());
    let stderr = failed.stderr_text();
    assert!(
        stderr.contains("no-such-bucket") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let quakes = fixture_quakes();
    let mut files = common::Spawned::start(
        sink(
            &data_dir,
            broker.bootstrap(),
            &moto,
            "s3://lake/quakestream",
        )
        .env("QUAKESTREAM_OBJECT_STORE_TOPICS", "earthquakes"),
    );
    files.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let mut rows = 0;
        for key in keys(&bucket, "quakestream/earthquakes").await {
            let body = bucket.get(&Key::from(key.as_str())).await.unwrap();
            let bytes = body.bytes().await.unwrap();
            use parquet::file::reader::FileReader;
            let reader = parquet::file::reader::SerializedFileReader::new(bytes).unwrap();
            rows += reader.metadata().file_metadata().num_rows() as usize;
        }
        if rows >= quakes.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    files.signal("INT");
    assert!(files.wait(Duration::from_secs(30)).success());
    assert_eq!(rows, quakes.len(), "every record once");
    let listed = keys(&bucket, "quakestream/earthquakes").await;
    let first = &quakes[0];
    let hour = chrono::DateTime::from_timestamp_millis(first.time.0)
        .ok_or("range")
        .unwrap()
        .format("dt=%Y-%m-%d/hour=%H")
        .to_string();
    assert!(
        listed
            .iter()
            .any(|k| k.starts_with(&format!("quakestream/earthquakes/{hour}/earthquakes-"))),
        "{listed:#?}"
    );
    for key in &listed {
        let name = key.rsplit('/').next().unwrap();
        let (stem, ext) = name.split_once('.').unwrap();
        assert_eq!(ext, "parquet", "{key}");
        let offset = stem.rsplit('-').next().unwrap();
        assert_eq!(offset.len(), 20, "zero-padded first offset in {key}");
        assert!(key.matches('/').count() == 4, "{key}");
    }

    // One object per record, named by a field (the APOD tutorial's `{date}.json`).
    let topic: TopicName = "nasa_data_topic".parse().unwrap();
    Admin::connect(&settings)
        .await
        .unwrap()
        .ensure_topics(&[topic])
        .await
        .unwrap();
    let producer = Producer::new(&settings).unwrap();
    let entries = [
        r#"{"date":"2024-01-15","title":"A galaxy","media_type":"image"}"#,
        r#"{"date":"2024-01-16","title":"A comet","media_type":"video"}"#,
        r#"{"date":"../../escape","title":"hostile"}"#,
    ];
    for entry in entries {
        producer
            .send("nasa_data_topic", Some("k"), entry.as_bytes(), None)
            .await
            .unwrap();
    }
    let mut per_record = common::Spawned::start(
        sink(&data_dir, broker.bootstrap(), &moto, "s3://lake/apod")
            .env("QUAKESTREAM_OBJECT_STORE_TOPICS", "nasa_data_topic")
            .env("QUAKESTREAM_OBJECT_STORE_OBJECT_PER_RECORD", "{date}.json")
            .env("QUAKESTREAM_OBJECT_STORE_GROUP_ID", "apod-objects"),
    );
    per_record.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys(&bucket, "apod").await.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    per_record.signal("INT");
    assert!(per_record.wait(Duration::from_secs(30)).success());
    assert_eq!(
        keys(&bucket, "apod").await,
        vec![
            "apod/nasa_data_topic/2024-01-15.json",
            "apod/nasa_data_topic/2024-01-16.json"
        ]
    );
    let body = bucket
        .get(&Key::from("apod/nasa_data_topic/2024-01-16.json"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], entries[1].as_bytes());
    let letters = common::read_topic(&settings, "quakestream-dlq").await;
    assert_eq!(letters.len(), 1, "the hostile name is dead-lettered");
    assert!(
        letters[0].1["reason"]
            .as_str()
            .unwrap()
            .contains("cannot be part of an object name")
    );
    stop_broker.cancel();
}

async fn publish_quakes(settings: &KafkaSettings) {
    let topic: TopicName = "earthquakes".parse().unwrap();
    Admin::connect(settings)
        .await
        .unwrap()
        .ensure_topics(&[topic])
        .await
        .unwrap();
    let producer = Producer::new(settings).unwrap();
    for quake in fixture_quakes() {
        let body = serde_json::to_vec(&quake).unwrap();
        let time = chrono::DateTime::from_timestamp_millis(quake.time.0)
            .ok_or("range")
            .unwrap()
            .timestamp_millis();
        producer
            .send("earthquakes", Some(&quake.id), &body, Some(time))
            .await
            .unwrap();
    }
}
