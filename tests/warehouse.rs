//! The PostgreSQL sink against a real server: the server is stopped mid-stream and started
//! again, and afterwards the warehouse holds every revision once, each event at its newest
//! revision, the window results, the dimensions; bad records are dead-lettered; hostile text is
//! stored as text.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use common::{fixture_quakes, pg_count, read_topic};
use quakestream::{
    kafka::{TopicName, admin::Admin, producer::Producer},
    record::Quake,
};

async fn publish(producer: &Producer, quakes: &[Quake]) {
    for quake in quakes {
        let body = serde_json::to_vec(quake).unwrap();
        producer
            .send("earthquakes", Some(&quake.id), &body, Some(quake.time.0))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, stop_broker, settings) = common::embedded_broker(&dir.path().join("b")).await;
    let pg = common::PgServer::start();
    let db = pg.client().await;
    let names: Vec<TopicName> = ["earthquakes", "earthquake-stats", "quakestream-dlq"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    Admin::connect(&settings)
        .await
        .unwrap()
        .ensure_topics(&names)
        .await
        .unwrap();
    let producer = Producer::new(&settings).unwrap();

    let mut quakes = fixture_quakes();
    // Hostile text is data: stored as it is, never run.
    let mut hostile = quakes[0].clone();
    hostile.id = "hostile1".into();
    hostile.place =
        Some("x'); DROP TABLE fact_earthquake; --, <img src=x onerror=alert(1)>".into());
    hostile.mag_type = Some("'; DELETE FROM dim_region; --".into());
    quakes.push(hostile);
    let (first, second) = quakes.split_at(quakes.len() / 2);

    let sink_dir = dir.path().join("sink");
    std::fs::create_dir_all(&sink_dir).unwrap();
    let mut sink = common::Spawned::start(
        common::quakestream(&sink_dir)
            .args(["--brokers", broker.bootstrap(), "run", "postgres"])
            .env("QUAKESTREAM_POSTGRES_URL", pg.url())
            .env("QUAKESTREAM_POSTGRES_MAX_BACKOFF", "1s")
            .env("QUAKESTREAM_LOG", "warn"),
    );
    sink.wait_for(|l| l.contains("Press Ctrl+C"), Duration::from_secs(60));

    publish(&producer, first).await;
    producer
        .send("earthquakes", Some("bad"), b"{\"id\": 42}", None)
        .await
        .unwrap();
    let half = first
        .iter()
        .map(|q| (q.id.clone(), q.updated))
        .collect::<BTreeSet<_>>()
        .len() as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg_count(&db, "SELECT count(*) FROM fact_earthquake_revision").await < half
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM fact_earthquake_revision").await,
        half
    );

    // The outage: the server goes away while the second half streams in.
    drop(db);
    pg.stop();
    publish(&producer, second).await;
    let windows = [
        r#"{"window_start":"2025-05-04T13:00:00.000Z","window_end":"2025-05-04T13:05:00.000Z","count":2,"avg_mag":1.5,"max_mag":2.0,"final":false,"emitted_at":"2025-05-04T13:06:00.000Z"}"#,
        r#"{"window_start":"2025-05-04T13:00:00.000Z","window_end":"2025-05-04T13:05:00.000Z","count":3,"avg_mag":1.75,"max_mag":2.5,"final":true,"emitted_at":"2025-05-04T15:06:00.000Z"}"#,
        r#"{"window_start":"2025-05-04T13:05:00.000Z","window_end":"2025-05-04T13:10:00.000Z","count":0,"avg_mag":null,"max_mag":null,"final":true,"emitted_at":"2025-05-04T15:11:00.000Z"}"#,
    ];
    for w in windows {
        producer
            .send("earthquake-stats", Some("w"), w.as_bytes(), None)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    pg.resume();
    let db = pg.client().await;

    let revisions: BTreeSet<(String, i64)> =
        quakes.iter().map(|q| (q.id.clone(), q.updated.0)).collect();
    let mut newest: BTreeMap<String, i64> = BTreeMap::new();
    for (id, updated) in &revisions {
        let n = newest.entry(id.clone()).or_insert(*updated);
        *n = (*n).max(*updated);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while (pg_count(&db, "SELECT count(*) FROM fact_earthquake_revision").await as usize)
        < revisions.len()
        || pg_count(&db, "SELECT count(*) FROM agg_window").await < 2
    {
        assert!(
            Instant::now() < deadline,
            "the sink did not catch up after the outage"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Older revisions arriving after newer ones (a backfill overlapping the live feed, a
    // replay) must not roll events back: sent again once everything is in, then awaited until
    // the sink has committed past them.
    let stale: Vec<Quake> = quakes
        .iter()
        .filter(|q| q.updated.0 < newest[&q.id])
        .cloned()
        .collect();
    assert!(stale.len() > 5, "the fixtures hold revised events");
    publish(&producer, &stale).await;
    let admin = Admin::connect(&settings).await.unwrap();
    let topic: TopicName = "earthquakes".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let description = admin.describe(&topic).await.unwrap();
        let lag = description
            .groups
            .iter()
            .find(|g| g.group == "quakestream-postgres")
            .map(|g| g.total());
        if lag == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not catch up: lag {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sink.signal("INT");
    assert!(sink.wait(Duration::from_secs(30)).success());
    let log = sink.drain_stderr().join("\n");
    assert!(log.contains("retrying"), "the outage was noticed: {log}");

    let pairs = |sql: &'static str| {
        let db = &db;
        async move {
            db.query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                .collect::<Vec<_>>()
        }
    };
    let got = pairs(
        "SELECT event_id, (extract(epoch FROM updated) * 1000)::int8 FROM fact_earthquake_revision",
    )
    .await;
    assert_eq!(got.len(), revisions.len(), "no revision twice");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), revisions);
    let got: BTreeMap<String, i64> =
        pairs("SELECT event_id, (extract(epoch FROM updated) * 1000)::int8 FROM fact_earthquake")
            .await
            .into_iter()
            .collect();
    let wrong: Vec<_> = newest
        .iter()
        .filter(|(id, updated)| got.get(*id) != Some(*updated))
        .map(|(id, updated)| (id, updated, got.get(id)))
        .take(5)
        .collect();
    assert!(
        wrong.is_empty() && got.len() == newest.len(),
        "each event at its newest revision: (id, newest, stored) {wrong:?}"
    );

    // Dimensions: every fact row has its date, network and event type; regions come from
    // the place.
    assert_eq!(
        pg_count(
            &db,
            "SELECT count(*) FROM fact_earthquake f JOIN dim_date d USING (date_key) \
             JOIN dim_network n USING (network_key) JOIN dim_event_type e USING (event_type_key)"
        )
        .await as usize,
        newest.len()
    );
    let row = db
        .query_one(
            "SELECT f.place, r.name, m.code, d.year, d.day_name FROM fact_earthquake f \
             JOIN dim_region r USING (region_key) JOIN dim_magnitude_type m USING (magnitude_type_key) \
             JOIN dim_date d USING (date_key) WHERE event_id = 'hostile1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "x'); DROP TABLE fact_earthquake; --, <img src=x onerror=alert(1)>"
    );
    assert_eq!(row.get::<_, String>(1), "<img src=x onerror=alert(1)>");
    assert_eq!(row.get::<_, String>(2), "'; DELETE FROM dim_region; --");
    let q0 = &quakes[0];
    assert_eq!(
        i32::from(row.get::<_, i16>(3)),
        chrono::DateTime::from_timestamp_millis(q0.time.0)
            .unwrap()
            .format("%Y")
            .to_string()
            .parse::<i32>()
            .unwrap()
    );
    let ca = pg_count(
        &db,
        "SELECT count(*) FROM fact_earthquake f JOIN dim_region r USING (region_key) WHERE r.name = 'CA'",
    )
    .await;
    let expected_ca = quakes
        .iter()
        .filter(|q| q.place.as_deref().is_some_and(|p| p.ends_with(", CA")))
        .map(|q| q.id.clone())
        .collect::<BTreeSet<_>>()
        .len() as i64;
    assert!(expected_ca > 0);
    assert_eq!(ca, expected_ca);

    // Window results: the final replaces the update; an emptied window keeps count 0.
    let rows = db
        .query(
            "SELECT record_count, aggregates, is_final FROM agg_window ORDER BY window_start",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, Option<i64>>(0), Some(3));
    assert_eq!(
        rows[0].get::<_, serde_json::Value>(1),
        serde_json::json!({"count": 3, "avg_mag": 1.75, "max_mag": 2.5})
    );
    assert!(rows[0].get::<_, bool>(2));
    assert_eq!(rows[1].get::<_, Option<i64>>(0), Some(0));

    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM quakestream_migrations").await,
        1
    );
    let letters = read_topic(&settings, "quakestream-dlq").await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(
        letters[0].1["reason"]
            .as_str()
            .unwrap()
            .starts_with("postgres: not a Quake")
    );
    stop_broker.cancel();
}
