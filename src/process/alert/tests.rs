use serde_json::json;

use super::*;

fn quake(mag: Option<f64>, alert: Option<&str>, tsunami: bool, updated: &str) -> Value {
    json!({
        "id": "us1", "time": "2023-10-07T06:41:03.000Z", "updated": updated,
        "mag": mag, "alert": alert, "tsunami": tsunami, "lat": 34.5, "lon": 62.0,
        "status": "reviewed",
    })
}

fn decide(alerter: &mut Alerter, q: &Value) -> Option<Alert> {
    let event = Event::from_json("us1", q).unwrap();
    alerter.decide(&event, || q.clone(), 0)
}

/// What `alerter` decides for a reviewed revision of magnitude `mag` updated at `updated`.
fn mag_at(alerter: &mut Alerter, mag: f64, updated: &str) -> Option<Alert> {
    decide(alerter, &quake(Some(mag), None, false, updated))
}

fn default_alerter() -> Alerter {
    Alerter::new(AlertsConfig::default().compiled_rules().unwrap(), 0.5)
}

#[test]
fn one_alert_per_event_and_an_upgrade_only_across_a_step() {
    let mut a = default_alerter();
    assert_eq!(mag_at(&mut a, 4.4, "2023-10-07T06:45:00Z"), None);
    let first = mag_at(&mut a, 4.6, "2023-10-07T06:50:00Z").unwrap();
    assert_eq!(first.kind, Kind::New);
    assert_eq!(first.rules, vec!["M4.5+"]);
    // A tenth more, the same step: nothing.
    assert_eq!(mag_at(&mut a, 4.9, "2023-10-07T07:00:00Z"), None);
    let up = mag_at(&mut a, 5.1, "2023-10-07T07:10:00Z").unwrap();
    assert_eq!(up.kind, Kind::Upgrade);
    assert!(up.reason.contains("magnitude reached 5"), "{}", up.reason);
    // Down and back up to the step already alerted: nothing.
    assert_eq!(mag_at(&mut a, 4.8, "2023-10-07T07:20:00Z"), None);
    assert_eq!(mag_at(&mut a, 5.2, "2023-10-07T07:30:00Z"), None);
    // The PAGER level rising is an upgrade too; an older revision is ignored.
    let pager = decide(
        &mut a,
        &quake(Some(5.2), Some("yellow"), false, "2023-10-07T07:40:00Z"),
    );
    assert_eq!(pager.unwrap().kind, Kind::Upgrade);
    assert_eq!(
        decide(
            &mut a,
            &quake(Some(7.0), Some("red"), true, "2023-10-07T06:00:00Z")
        ),
        None
    );
    // Deleted: cancelled, once.
    let mut deleted = quake(None, None, false, "2023-10-07T08:00:00Z");
    deleted["status"] = json!("deleted");
    let cancel = decide(&mut a, &deleted).unwrap();
    assert_eq!(cancel.kind, Kind::Cancel);
    assert!(cancel.rules.is_empty());
    let mut again = deleted.clone();
    again["updated"] = json!("2023-10-07T08:10:00Z");
    assert_eq!(decide(&mut a, &again), None);
}

#[test]
fn falling_below_every_rule_cancels_and_rising_again_is_new() {
    let mut a = default_alerter();
    assert_eq!(
        mag_at(&mut a, 4.7, "2023-10-07T06:50:00Z").unwrap().kind,
        Kind::New
    );
    let cancel = mag_at(&mut a, 4.3, "2023-10-07T07:00:00Z").unwrap();
    assert_eq!(cancel.kind, Kind::Cancel);
    assert!(cancel.reason.contains("no longer matches"));
    assert_eq!(
        mag_at(&mut a, 4.6, "2023-10-07T07:10:00Z").unwrap().kind,
        Kind::New
    );
}

#[test]
fn rules_combine_their_conditions() {
    let config = AlertsConfig {
        rules: vec![
            RuleConfig {
                name: "orange-near-herat".into(),
                min_magnitude: None,
                min_alert_level: Some("orange".into()),
                tsunami: None,
                within: Some(Geofence {
                    lat: 34.35,
                    lon: 62.2,
                    radius_km: 100.0,
                }),
            },
            RuleConfig {
                name: "tsunami".into(),
                min_magnitude: Some(4.0),
                min_alert_level: None,
                tsunami: Some(true),
                within: None,
            },
        ],
        ..AlertsConfig::default()
    };
    let mut a = Alerter::new(config.compiled_rules().unwrap(), 0.5);
    assert_eq!(
        decide(
            &mut a,
            &quake(Some(6.3), Some("yellow"), false, "2023-10-07T06:45:00Z")
        ),
        None
    );
    let new = decide(
        &mut a,
        &quake(Some(6.3), Some("orange"), false, "2023-10-07T06:50:00Z"),
    )
    .unwrap();
    assert_eq!(new.rules, vec!["orange-near-herat"]);
    let up = decide(
        &mut a,
        &quake(Some(6.3), Some("orange"), true, "2023-10-07T07:00:00Z"),
    )
    .unwrap();
    assert_eq!(up.kind, Kind::Upgrade);
    assert!(up.reason.contains("now matches tsunami"), "{}", up.reason);
    // Far away: outside the fence.
    let mut far = quake(Some(6.3), Some("red"), false, "2023-10-07T07:00:00Z");
    far["lat"] = json!(-33.0);
    let event = Event::from_json("far", &far).unwrap();
    assert_eq!(a.decide(&event, || far.clone(), 0), None);
}

#[test]
fn distances_are_great_circle() {
    // Herat to Kabul is about 650 km; a degree of latitude about 111 km.
    let d = distance_km(34.35, 62.2, 34.53, 69.17);
    assert!((630.0..670.0).contains(&d), "{d}");
    assert!((distance_km(0.0, 0.0, 1.0, 0.0) - 111.2).abs() < 0.2);
    assert!(distance_km(0.0, 179.9, 0.0, -179.9) < 23.0);
    assert_eq!(distance_km(10.0, 10.0, 10.0, 10.0), 0.0);
}

#[test]
fn state_rebuilt_from_the_topic_raises_nothing_twice() {
    let mut a = default_alerter();
    let q = quake(Some(5.6), None, false, "2023-10-07T06:50:00Z");
    let alert = decide(&mut a, &q).unwrap();
    let mut b = default_alerter();
    b.remember("us1", &alert);
    assert_eq!(decide(&mut b, &q), None, "the same revision again");
    let newer = quake(Some(5.7), None, false, "2023-10-07T07:50:00Z");
    assert_eq!(decide(&mut b, &newer), None, "same step");
    let bigger = quake(Some(6.0), None, false, "2023-10-07T08:50:00Z");
    assert_eq!(decide(&mut b, &bigger).unwrap().kind, Kind::Upgrade);
}

#[test]
fn bad_records_and_bad_rules_are_explained() {
    assert!(Event::from_json("k", &json!([1])).is_err());
    assert_eq!(
        Event::from_json("k", &json!({"mag": 5})).unwrap_err(),
        "the record has no origin time"
    );
    // Hostile values are read as absent, not trusted.
    let e = Event::from_json(
        "k",
        &json!({"time": "2023-10-07T06:41:03Z", "lat": 1e300, "lon": "x",
        "mag": "7", "alert": "purple", "tsunami": 1}),
    )
    .unwrap();
    assert_eq!(
        (e.lat, e.lon, e.mag, e.level, e.tsunami),
        (None, None, None, 0, true)
    );
    let bad = |rule: RuleConfig| {
        AlertsConfig {
            rules: vec![rule],
            ..AlertsConfig::default()
        }
        .validate()
        .unwrap_err()
    };
    let rule = RuleConfig {
        name: "r".into(),
        min_magnitude: None,
        min_alert_level: Some("purple".into()),
        tsunami: None,
        within: None,
    };
    assert!(bad(rule.clone()).contains("expected one of green"));
    let fence = RuleConfig {
        min_alert_level: None,
        within: Some(Geofence {
            lat: 95.0,
            lon: 0.0,
            radius_km: 10.0,
        }),
        ..rule.clone()
    };
    assert!(bad(fence).contains("within needs"));
    let config = AlertsConfig {
        webhooks: vec!["ftp://x".into()],
        ..AlertsConfig::default()
    };
    assert!(config.validate().unwrap_err().contains("only http"));
}
