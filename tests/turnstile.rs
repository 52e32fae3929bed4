//! The turnstile source: the recorded 361-row MTA slice turned into per-interval deltas,
//! checked against values worked out by hand from the file, then replayed onto the embedded
//! broker exactly once.

mod common;

use std::{collections::BTreeMap, sync::Arc};

use common::{embedded_broker, fixture, read_topic};
use quakestream::{
    metrics::SourceMetrics,
    source::turnstile::{self, Counts, Interval, TurnstileConfig},
};

const SLICE: &str = "mta/turnstile_230603_slice.csv";
const T: &str = "A002|R051|02-03-05|59 ST";

fn config() -> TurnstileConfig {
    TurnstileConfig {
        file: format!("{}/fixtures/{SLICE}", env!("CARGO_MANIFEST_DIR")).into(),
        ..Default::default()
    }
}

fn of(intervals: &[Interval], turnstile: &str) -> Vec<(i64, i64, bool)> {
    intervals
        .iter()
        .filter(|i| i.id == turnstile)
        .map(|i| (i.entries, i.exits, i.clamped))
        .collect()
}

#[test]
fn the_slice_gives_the_hand_checked_deltas() {
    let counts = Counts::default();
    let (intervals, bad) = turnstile::intervals(&fixture(SLICE), &config(), &counts).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    // 361 readings of 10 turnstiles: 351 intervals.
    assert_eq!(counts.rows.get(), 361);
    assert_eq!(counts.first.get(), 10);
    assert_eq!(intervals.len(), 351);
    assert_eq!(counts.recovered_audits.get(), 4);
    assert_eq!((counts.backwards.get(), counts.jumps.get()), (0, 0));

    // A002/R051/02-03-05 at 59 ST, read every 4 h on 05/27/2023: ENTRIES 12631055, …068, …089,
    // …152, …264, …445 and EXITS 1544499, …500, …506, …541, …562, …571.
    assert_eq!(
        of(&intervals, T),
        [
            (13, 1, false),
            (21, 6, false),
            (63, 35, false),
            (112, 21, false),
            (181, 9, false)
        ]
    );
    let first = intervals.iter().find(|i| i.id == T).unwrap();
    assert_eq!(
        (first.date.as_str(), first.time.as_str()),
        ("05/27/2023", "04:00:00")
    );
    // 04:00 in New York (EDT, UTC-4) is 08:00 UTC; the interval began at the 00:00 reading.
    assert_eq!(first.timestamp, "2023-05-27T08:00:00.000Z");
    assert_eq!(first.interval_start, "2023-05-27T04:00:00.000Z");
    assert_eq!(
        (
            first.station.as_str(),
            first.linename.as_str(),
            first.division.as_str()
        ),
        ("59 ST", "NQR456W", "BMT")
    );

    // The RECOVR AUD readings of A033/R170/02-00-00 (06/01/2023 09:00 and 13:00) are readings
    // like the others: 557281 → 557295 → 557322 → 557460, exits 2188916 → 2189249 → 2189737 → 2190250.
    let union_sq: Vec<&Interval> = intervals
        .iter()
        .filter(|i| i.id == "A033|R170|02-00-00|14 ST-UNION SQ" && i.date == "06/01/2023")
        .collect();
    let around: Vec<(&str, &str, i64, i64)> = union_sq
        .iter()
        .filter(|i| ["09:00:00", "13:00:00", "17:00:00"].contains(&i.time.as_str()))
        .map(|i| (i.time.as_str(), i.desc.as_str(), i.entries, i.exits))
        .collect();
    assert_eq!(
        around,
        [
            ("09:00:00", "RECOVR AUD", 14, 333),
            ("13:00:00", "RECOVR AUD", 27, 488),
            ("17:00:00", "REGULAR", 138, 513)
        ]
    );

    // Per station over the week: each turnstile's last reading minus its first, summed.
    let mut stations: BTreeMap<&str, (i64, i64, usize)> = BTreeMap::new();
    for i in &intervals {
        let s = stations.entry(i.station.as_str()).or_default();
        s.0 += i.entries;
        s.1 += i.exits;
        s.2 += 1;
    }
    assert_eq!(stations["59 ST"], (17_594, 33_298, 292));
    assert_eq!(stations["14 ST-UNION SQ"], (4_484, 14_826, 59));
}

#[test]
fn a_counter_reset_and_a_jump_are_clamped_and_counted() {
    // The same slice with turnstile 02-03-05's register replaced at noon (ENTRIES restart at
    // 100, then count on: 212, 393) and a misread EXITS of +50,000 at 20:00.
    let text = String::from_utf8(fixture(SLICE)).unwrap();
    let edited: String = text
        .lines()
        .map(|line| {
            let mut f: Vec<String> = line.split(',').map(String::from).collect();
            if f.len() > 11 && f[3] == "02-03-05" {
                match f[8].as_str() {
                    "12:00:00" => f[10] = "100".into(),
                    "16:00:00" => f[10] = "212".into(),
                    "20:00:00" => {
                        f[10] = "393".into();
                        f[11] = (1_544_562 + 50_000).to_string();
                    }
                    _ => {}
                }
            }
            f.join(",") + "\n"
        })
        .collect();
    let counts = Counts::default();
    let (intervals, bad) = turnstile::intervals(edited.as_bytes(), &config(), &counts).unwrap();
    assert!(bad.is_empty());
    assert_eq!(
        of(&intervals, T),
        [
            (13, 1, false),
            (21, 6, false),
            (0, 35, true),    // 12631089 → 100: a reset, not −12630989
            (112, 21, false), // 100 → 212
            (181, 0, true)    // exits +50,000 in four hours: a jump, not people
        ]
    );
    assert_eq!((counts.backwards.get(), counts.jumps.get()), (1, 1));
    assert_eq!(
        intervals.len(),
        351,
        "clamped intervals are still published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_publishes_each_interval_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    for run in 0..2 {
        let metrics = Arc::new(SourceMetrics::new("turnstile"));
        quakestream::source::SourceSettings::run(
            &config(),
            &common::source_ctx(&settings, tokio_util::sync::CancellationToken::new()),
            metrics.clone(),
        )
        .await
        .unwrap();
        // The second run finds everything in the topic already.
        assert_eq!(metrics.published.get(), if run == 0 { 351 } else { 0 });
        assert_eq!(metrics.duplicates.get(), if run == 0 { 0 } else { 351 });
    }
    let messages = read_topic(&settings, "mta-turnstile").await;
    assert_eq!(messages.len(), 351);
    let sum: i64 = messages
        .iter()
        .filter(|(_, v)| v["STATION"] == "59 ST")
        .map(|(_, v)| v["ENTRIES"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 17_594);
    assert!(messages.iter().all(|(k, v)| v["ID"] == k.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_rows_are_dead_lettered_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, _shutdown, settings) = embedded_broker(dir.path()).await;
    let mut file = fixture(SLICE);
    file.extend_from_slice(
        b"361,A002,R051,02-00-00,59 ST,NQR456W,BMT,06/02/2023,00:00:00,REGULAR,lots,5\n",
    );
    file.extend_from_slice(b"362,A002,R051,02-00-00,59 ST,NQR456W,BMT,06/02/2023\n");
    file.extend_from_slice(
        b"363,A002,R051,02-00-00,59 \xff\xfe ST,NQR456W,BMT,06/02/2023,04:00:00,REGULAR,1,1\n",
    );
    let path = dir.path().join("turnstile_bad.csv");
    std::fs::write(&path, &file).unwrap();
    let metrics = Arc::new(SourceMetrics::new("turnstile"));
    quakestream::source::SourceSettings::run(
        &TurnstileConfig {
            file: path,
            ..Default::default()
        },
        &common::source_ctx(&settings, tokio_util::sync::CancellationToken::new()),
        metrics.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        metrics.published.get(),
        351,
        "the good rows all went through"
    );
    assert_eq!(metrics.dead_letters.get(), 3);
    let reasons = common::dead_letter_reasons(&settings, "turnstile").await;
    assert!(
        reasons
            .iter()
            .any(|r| r == "line 363: ENTRIES \"lots\" or EXITS \"5\" is not a counter"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "line 364: TIME is missing"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r == "line 365: STATION is not UTF-8"),
        "{reasons:?}"
    );
}
