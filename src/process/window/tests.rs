use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn layout() -> Arc<Layout> {
    Arc::new(
        Layout::new(
            &[],
            &[
                ("count".into(), AggOp::Count, None),
                ("sum".into(), AggOp::Sum, Some("v".into())),
                ("avg".into(), AggOp::Avg, Some("v".into())),
                ("min".into(), AggOp::Min, Some("v".into())),
                ("max".into(), AggOp::Max, Some("v".into())),
            ],
        )
        .unwrap(),
    )
}

fn input(key: &str, version: f64, time: i64, deleted: bool, group: &str, v: Option<f64>) -> Input {
    Input {
        key: Arc::from(key),
        version: Version::Num(version),
        time,
        deleted,
        group: Arc::from(group),
        values: Arc::from(vec![v]),
    }
}

#[test]
fn tumbling_and_hopping_windows_contain_the_time() {
    let tumbling = Spec::new(Duration::from_millis(10), None, Duration::from_millis(0)).unwrap();
    assert_eq!(tumbling.starts(25).collect::<Vec<_>>(), vec![20]);
    assert_eq!(tumbling.starts(20).collect::<Vec<_>>(), vec![20]);
    assert_eq!(tumbling.starts(-1).collect::<Vec<_>>(), vec![-10]);
    let hopping = Spec::new(
        Duration::from_millis(10),
        Some(Duration::from_millis(5)),
        Duration::from_millis(0),
    )
    .unwrap();
    assert_eq!(hopping.starts(25).collect::<Vec<_>>(), vec![25, 20]);
    assert_eq!(hopping.starts(24).collect::<Vec<_>>(), vec![20, 15]);
    let odd = Spec::new(
        Duration::from_millis(10),
        Some(Duration::from_millis(3)),
        Duration::from_millis(0),
    )
    .unwrap();
    for t in -20..40 {
        let starts: Vec<i64> = odd.starts(t).collect();
        assert!(!starts.is_empty());
        for s in &starts {
            assert!(*s <= t && t < s + 10 && s.rem_euclid(3) == 0, "{t} in {s}");
        }
        let all: Vec<i64> = (-40i64..40)
            .filter(|s| s.rem_euclid(3) == 0 && *s <= t && t < s + 10)
            .rev()
            .collect();
        assert_eq!(starts, all);
    }
    assert_eq!(i64::MIN.div_euclid(10), i64::MIN / 10 - 1);
    assert!(
        Spec::new(Duration::from_millis(10), None, Duration::ZERO)
            .unwrap()
            .starts(i64::MIN + 5)
            .count()
            <= 1
    );
}

#[test]
fn bad_geometry_is_refused_with_a_reason() {
    let err = Spec::new(
        Duration::from_secs(60),
        Some(Duration::from_secs(120)),
        Duration::ZERO,
    )
    .unwrap_err();
    assert!(err.contains("longer than the window"), "{err}");
    assert!(Spec::new(Duration::ZERO, None, Duration::ZERO).is_err());
    assert!(
        Spec::new(
            Duration::from_secs(3600),
            Some(Duration::from_millis(1)),
            Duration::ZERO
        )
        .is_err()
    );
}

#[test]
fn layout_rejects_clashing_and_reserved_names() {
    let count = ("count".to_string(), AggOp::Count, None);
    assert!(Layout::new(&[], std::slice::from_ref(&count)).is_ok());
    assert!(
        Layout::new(&["count".into()], std::slice::from_ref(&count))
            .unwrap_err()
            .contains("twice")
    );
    assert!(
        Layout::new(&[], &[("final".into(), AggOp::Count, None)])
            .unwrap_err()
            .contains("uses itself")
    );
    assert!(
        Layout::new(&[], &[("m".into(), AggOp::Max, None)])
            .unwrap_err()
            .contains("needs a field")
    );
    assert!(Layout::new(&[], &[]).is_err());
}

#[test]
fn versions_order_numbers_times_and_text() {
    assert!(Version::Missing < Version::Num(-1e300));
    assert!(Version::Num(1.0) < Version::Num(2.0));
    assert!(Version::Num(1e300) < Version::Text("a".into()));
    assert!(Version::Text("a".into()) < Version::Text("b".into()));
    assert_eq!(Version::Num(1.0), Version::Num(1.0));
}

/// Runs one assigner and one combiner in step, one input batch at a time.
struct Pipe {
    assigner: Assigner,
    combiner: Combiner,
    out: Vec<WindowResult>,
    offset: i64,
    late: usize,
}

impl Pipe {
    /// The values of the newest result emitted.
    fn last_values(&self) -> Vec<Option<f64>> {
        self.out.last().unwrap().values.clone()
    }

    fn new(lateness: i64) -> Pipe {
        let spec = Spec::new(
            Duration::from_millis(10),
            None,
            Duration::from_millis(lateness as u64),
        )
        .unwrap();
        Pipe {
            assigner: Assigner::new(spec, 0),
            combiner: Combiner::new(spec, layout(), 1),
            out: Vec::new(),
            offset: 0,
            late: 0,
        }
    }

    fn batch(&mut self, inputs: Vec<Input>) {
        let mut changes = Vec::new();
        for input in inputs {
            self.assigner.apply(self.offset, input, &mut changes);
            self.offset += 1;
        }
        for (i, change) in changes.iter().enumerate() {
            if self.combiner.apply(i as i64, change) == Outcome::Late {
                self.late += 1;
            }
        }
        if let Some((max, idle)) = self.assigner.end_batch(false) {
            self.combiner.source_time(0, Some(max), idle);
        }
        self.combiner.end_batch(self.offset, 0, &mut self.out);
        if let Some(w) = self.combiner.watermark() {
            self.assigner.forget_closed(w);
        }
    }
}

#[test]
fn a_revision_replaces_and_a_deletion_retracts() {
    let mut pipe = Pipe::new(100);
    pipe.batch(vec![
        input("a", 1.0, 1, false, "[]", Some(2.0)),
        input("b", 1.0, 2, false, "[]", Some(3.0)),
    ]);
    assert_eq!(
        pipe.last_values(),
        vec![Some(2.0), Some(5.0), Some(2.5), Some(2.0), Some(3.0)]
    );
    // A newer version of `a` with a larger magnitude; an older one of `b` is stale.
    pipe.batch(vec![
        input("a", 2.0, 1, false, "[]", Some(4.0)),
        input("b", 0.5, 2, false, "[]", Some(9.0)),
    ]);
    assert_eq!(
        pipe.last_values(),
        vec![Some(2.0), Some(7.0), Some(3.5), Some(3.0), Some(4.0)]
    );
    pipe.batch(vec![input("b", 3.0, 2, true, "[]", None)]);
    assert_eq!(
        pipe.last_values(),
        vec![Some(1.0), Some(4.0), Some(4.0), Some(4.0), Some(4.0)]
    );
    // Null values count as records but carry no value.
    pipe.batch(vec![input("c", 1.0, 3, false, "[]", None)]);
    assert_eq!(
        pipe.last_values(),
        vec![Some(2.0), Some(4.0), Some(4.0), Some(4.0), Some(4.0)]
    );
    assert!(pipe.out.iter().all(|r| !r.is_final));
}

#[test]
fn a_revision_that_moves_the_event_leaves_an_empty_final_behind() {
    let mut pipe = Pipe::new(5);
    pipe.batch(vec![input("a", 1.0, 1, false, "[]", Some(1.0))]);
    pipe.batch(vec![input("a", 2.0, 12, false, "[]", Some(1.0))]);
    // The watermark reaches 10 only with a record at 15.
    pipe.batch(vec![input("b", 1.0, 15, false, "[]", Some(1.0))]);
    let finals: Vec<&WindowResult> = pipe.out.iter().filter(|r| r.is_final).collect();
    assert_eq!(finals.len(), 1);
    assert_eq!((finals[0].start, finals[0].values[0]), (0, Some(0.0)));
    assert_eq!(finals[0].values[1], None);
}

#[test]
fn a_batch_is_not_late_against_itself_but_the_next_one_is() {
    let mut pipe = Pipe::new(5);
    pipe.batch(vec![
        input("new", 1.0, 100, false, "[]", None),
        input("old", 1.0, 1, false, "[]", None),
    ]);
    assert_eq!(pipe.late, 0);
    let finals: Vec<i64> = pipe
        .out
        .iter()
        .filter(|r| r.is_final)
        .map(|r| r.start)
        .collect();
    assert_eq!(finals, vec![0]);
    pipe.batch(vec![input("older", 1.0, 2, false, "[]", None)]);
    assert_eq!(pipe.late, 1);
    // A late record's key is still tracked, so a revision into an open window is not late.
    pipe.batch(vec![input("older", 2.0, 99, false, "[]", None)]);
    assert_eq!(pipe.late, 1);
}

#[test]
fn closing_open_windows_on_a_quiet_input_emits_every_final_once() {
    // A lateness far beyond the data: nothing would ever close on event time.
    let mut pipe = Pipe::new(1_000_000);
    pipe.batch(vec![
        input("a", 1.0, 1, false, "[]", Some(1.0)),
        input("b", 1.0, 15, false, "[]", Some(2.0)),
        input("c", 1.0, 27, false, "[]", Some(3.0)),
    ]);
    assert!(pipe.out.iter().all(|r| !r.is_final));
    pipe.combiner.close_open();
    pipe.combiner.end_batch(pipe.offset, 0, &mut pipe.out);
    let finals: Vec<(i64, Option<f64>)> = pipe
        .out
        .iter()
        .filter(|r| r.is_final)
        .map(|r| (r.start, r.values[1]))
        .collect();
    assert_eq!(
        finals,
        vec![(0, Some(1.0)), (10, Some(2.0)), (20, Some(3.0))]
    );
    assert_eq!(pipe.combiner.open_cells(), 0);
    assert_eq!(pipe.combiner.watermark(), Some(30));
    // Closing again, with nothing open, changes nothing; a record for a closed window is late.
    pipe.combiner.close_open();
    assert_eq!(pipe.combiner.watermark(), Some(30));
    pipe.batch(vec![input("d", 1.0, 21, false, "[]", Some(4.0))]);
    assert_eq!(pipe.late, 1);
    assert_eq!(pipe.out.iter().filter(|r| r.is_final).count(), 3);
}

#[test]
fn a_partition_behind_holds_the_watermark_until_it_is_idle() {
    let spec = Spec::new(Duration::from_millis(10), None, Duration::ZERO).unwrap();
    let mut combiner = Combiner::new(spec, layout(), 3);
    let mut out = Vec::new();
    combiner.source_time(0, Some(100), false);
    combiner.source_time(1, Some(20), false);
    combiner.end_batch(0, 0, &mut out);
    assert_eq!(
        combiner.watermark(),
        None,
        "partition 2 is not heard from yet"
    );
    combiner.source_time(2, None, true);
    combiner.end_batch(0, 0, &mut out);
    assert_eq!(combiner.watermark(), Some(20));
    combiner.source_time(1, Some(20), true);
    combiner.end_batch(0, 0, &mut out);
    assert_eq!(combiner.watermark(), Some(100));
    // Waking up does not move the watermark back.
    combiner.source_time(1, Some(30), false);
    combiner.end_batch(0, 0, &mut out);
    assert_eq!(combiner.watermark(), Some(100));
    combiner.source_time(0, Some(100), true);
    combiner.source_time(1, Some(130), false);
    combiner.end_batch(0, 0, &mut out);
    assert_eq!(combiner.watermark(), Some(130));
}

#[test]
fn updates_are_coalesced_to_one_per_interval() {
    let spec = Spec::new(Duration::from_millis(10), None, Duration::from_millis(100)).unwrap();
    let mut assigner = Assigner::new(spec, 0);
    let mut combiner = Combiner::new(spec, layout(), 1);
    let mut out = Vec::new();
    let mut changes = Vec::new();
    for (i, now) in [0, 100, 200, 1000, 1100].into_iter().enumerate() {
        changes.clear();
        assigner.apply(
            i as i64,
            input(&format!("k{i}"), 1.0, 1, false, "[]", None),
            &mut changes,
        );
        for c in &changes {
            combiner.apply(i as i64, c);
        }
        combiner.end_batch(now, 1000, &mut out);
    }
    let counts: Vec<(i64, Option<f64>)> = out.iter().map(|r| (r.emitted_at, r.values[0])).collect();
    assert_eq!(counts, vec![(0, Some(1.0)), (1000, Some(4.0))]);
    assert!(combiner.pending());
    combiner.end_batch(2000, 1000, &mut out);
    assert_eq!(out.last().unwrap().values[0], Some(5.0));
    assert!(!combiner.pending());
}

#[test]
fn a_re_sent_change_is_a_duplicate() {
    let spec = Spec::new(Duration::from_millis(10), None, Duration::from_millis(100)).unwrap();
    let mut assigner = Assigner::new(spec, 3);
    let mut combiner = Combiner::new(spec, layout(), 1);
    let mut changes = Vec::new();
    assigner.apply(7, input("a", 1.0, 1, false, "[]", Some(1.0)), &mut changes);
    assert_eq!(combiner.apply(0, &changes[0]), Outcome::Applied);
    assert_eq!(combiner.apply(1, &changes[0]), Outcome::Duplicate);
}

#[test]
fn extract_reads_quakes_and_rejects_bad_records_with_a_reason() {
    let layout = Arc::new(
        Layout::new(
            &["net".into()],
            &[
                ("count".into(), AggOp::Count, None),
                ("avg_mag".into(), AggOp::Avg, Some("mag".into())),
            ],
        )
        .unwrap(),
    );
    let extractor = Extractor {
        ahead: i64::MAX,
        layout,
        time_field: "time".into(),
        key_field: None,
        version_field: Some("updated".into()),
    };
    let quake = br#"{"id":"us1","time":"2024-01-15T10:30:00.000Z","updated":"2024-01-15T10:45:12.345Z","mag":4.5,"net":"us","status":"reviewed"}"#;
    let input = extractor.extract(quake, Some(b"us0"), 0, 9).unwrap();
    assert_eq!(&*input.key, "us0");
    assert_eq!(input.time, 1_705_314_600_000);
    assert_eq!(input.version, Version::Num(1_705_315_512_345.0));
    assert_eq!(&*input.group, r#"["us"]"#);
    assert_eq!(&*input.values, &[Some(4.5)]);
    assert!(!input.deleted);
    let deleted = br#"{"time":1705314600000,"status":"deleted","mag":null}"#;
    let input = extractor.extract(deleted, None, 2, 9).unwrap();
    assert!(input.deleted);
    assert_eq!(&*input.key, "2:9");
    assert_eq!(&*input.group, "[null]");
    assert_eq!(input.version, Version::Missing);
    assert_eq!(&*input.values, &[None]);
    for (bad, reason) in [
        (&b"{"[..], "not valid JSON"),
        (b"[1]", "not a JSON object"),
        (br#"{"mag":1}"#, "no event time"),
        (br#"{"time":"soon"}"#, "RFC 3339"),
        (br#"{"time":true}"#, "neither"),
        (br#"{"time":1e400}"#, "not valid JSON"),
    ] {
        let err = extractor.extract(bad, None, 0, 0).unwrap_err();
        assert!(
            err.contains(reason),
            "{err} for {}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn an_event_time_ahead_of_the_clock_is_refused_and_never_moves_the_watermark() {
    let hour = Duration::from_secs(3600);
    let spec = Spec::new(Duration::from_millis(10), None, Duration::ZERO)
        .unwrap()
        .ahead_of_clock(hour);
    let extractor = Extractor {
        ahead: spec.ahead,
        layout: layout(),
        time_field: "time".into(),
        key_field: None,
        version_field: None,
    };
    let future = br#"{"time":"2100-01-01T00:00:00Z","mag":5.0}"#;
    let err = extractor.extract(future, None, 0, 0).unwrap_err();
    assert!(err.contains("ahead of the clock"), "{err}");
    let now = chrono::Utc::now().timestamp_millis();
    let soon = format!(r#"{{"time":{},"mag":5.0}}"#, now + 60_000);
    assert!(extractor.extract(soon.as_bytes(), None, 0, 0).is_ok());

    // Whatever a partition announces, the watermark stops at the clock plus the tolerance.
    let mut combiner = Combiner::new(spec, layout(), 1);
    combiner.source_time(0, Some(4_102_444_800_000), true);
    combiner.end_batch(now, 0, &mut Vec::new());
    assert_eq!(combiner.watermark(), Some(now + 3_600_000));
    combiner.restore(Some(4_102_444_800_000));
    assert!(combiner.watermark().unwrap() <= chrono::Utc::now().timestamp_millis() + 3_600_000);
}

/// One generated record: key, event time, deleted, group, value.
type Rec = (u8, i64, bool, bool, Option<i8>);

fn records() -> impl Strategy<Value = Vec<Vec<Rec>>> {
    let rec = (
        0u8..12,
        -30i64..40,
        prop::bool::weighted(0.15),
        any::<bool>(),
        prop::option::of(-20i8..60),
    );
    prop::collection::vec(prop::collection::vec(rec, 0..8), 1..12).prop_map(|batches| {
        // Time moves forward between batches, records within and across batches are out of order.
        batches
            .into_iter()
            .enumerate()
            .map(|(b, recs)| {
                recs.into_iter()
                    .map(|(k, t, d, g, v)| (k, t + b as i64 * 12, d, g, v))
                    .collect()
            })
            .collect()
    })
}

type Cells = BTreeMap<(i64, String), Expected>;

#[derive(Debug, Clone, PartialEq)]
struct Expected {
    values: Vec<Option<f64>>,
}

fn aggregate(vals: &[Option<f64>]) -> Vec<Option<f64>> {
    let mut present: Vec<f64> = vals.iter().flatten().copied().collect();
    present.sort_by(f64::total_cmp);
    let sum: f64 = present.iter().sum();
    let n = present.len();
    vec![
        Some(vals.len() as f64),
        (n > 0).then_some(sum),
        (n > 0).then(|| sum / n as f64),
        present.first().copied(),
        present.last().copied(),
    ]
}

/// The semantics restated by brute force over the whole stream, batch by batch: which cells
/// close after which batch, what each holds then, and which records are late.
fn oracle(spec: Spec, batches: &[Vec<Rec>], partitions: usize) -> (Cells, Cells, usize) {
    let group = |g: bool| if g { r#"["x"]"# } else { r#"["y"]"# }.to_string();
    let flat: Vec<(usize, Rec)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, recs)| recs.iter().map(move |r| (b, *r)))
        .collect();
    // After batch `b`: the smallest over partitions of their largest event time, minus the
    // lateness (none while a partition has had no record); the watermark during batch `b` is
    // the largest of those over the batches before it.
    let candidate_after = |b: usize| {
        (0..partitions)
            .map(|p| {
                flat.iter()
                    .filter(|(rb, r)| *rb <= b && usize::from(r.0) % partitions == p)
                    .map(|(_, r)| r.1)
                    .max()
            })
            .collect::<Option<Vec<i64>>>()?
            .into_iter()
            .min()
            .map(|m| m - spec.lateness)
    };

    let watermark_before = |b: usize| (0..b).filter_map(candidate_after).max();
    let contains = |start: i64, t: i64| start <= t && t < start + spec.size;
    // Every cell any record could touch.
    let mut cells: BTreeSet<(i64, String)> = BTreeSet::new();
    for (_, r) in &flat {
        for s in (r.1 - spec.size - spec.slide..=r.1 + spec.slide)
            .filter(|s| s.rem_euclid(spec.slide) == 0)
        {
            if contains(s, r.1) {
                cells.insert((s, group(r.3)));
            }
        }
    }
    let content = |start: i64, g: &str, upto: usize| {
        let mut latest: BTreeMap<u8, Rec> = BTreeMap::new();
        for (b, r) in &flat {
            if *b <= upto {
                latest.insert(r.0, *r);
            }
        }
        let vals: Vec<Option<f64>> = latest
            .values()
            .filter(|r| !r.2 && contains(start, r.1) && group(r.3) == g)
            .map(|r| r.4.map(|v| f64::from(v) / 10.0))
            .collect();
        aggregate(&vals)
    };
    let mut finals = BTreeMap::new();
    let mut open = BTreeMap::new();
    for (start, g) in cells {
        let end = start + spec.size;
        // The batch after which the cell closes, if any.
        let close = (0..batches.len()).find(|&b| watermark_before(b + 1).is_some_and(|w| end <= w));
        let upto = close.unwrap_or(batches.len() - 1);
        let touched = flat.iter().any(|(b, r)| {
            *b <= upto
                && !r.2
                && contains(start, r.1)
                && group(r.3) == g
                && watermark_before(*b).is_none_or(|w| end > w)
        });
        if !touched {
            continue;
        }
        let expected = Expected {
            values: content(start, &g, upto),
        };
        match close {
            Some(_) => finals.insert((start, g), expected),
            None => open.insert((start, g), expected),
        };
    }
    let late = flat
        .iter()
        .filter(|(b, r)| {
            let newest = spec.starts(r.1).next().unwrap();
            !r.2 && watermark_before(*b).is_some_and(|w| spec.end(newest) <= w)
        })
        .count();
    (finals, open, late)
}

/// The pipeline as the runtime wires it: `partitions` assigners, `combiners` combiners, changes
/// routed by cell.
fn run_engine(
    spec: Spec,
    batches: &[Vec<Rec>],
    partitions: usize,
    combiners: usize,
) -> (Cells, Cells, usize) {
    let layout = layout();
    let mut assigners: Vec<Assigner> = (0..partitions)
        .map(|p| Assigner::new(spec, p as i32))
        .collect();
    let mut stage2: Vec<Combiner> = (0..combiners)
        .map(|_| Combiner::new(spec, layout.clone(), partitions as i32))
        .collect();
    let mut offsets = vec![0i64; partitions];
    let mut version = 0.0;
    let mut out = Vec::new();
    let mut late = 0;
    for batch in batches {
        let mut changes = Vec::new();
        for r in batch {
            version += 1.0;
            let p = usize::from(r.0) % partitions;
            let record = input(
                &r.0.to_string(),
                version,
                r.1,
                r.2,
                if r.3 { r#"["x"]"# } else { r#"["y"]"# },
                r.4.map(|v| f64::from(v) / 10.0),
            );
            assigners[p].apply(offsets[p], record, &mut changes);
            offsets[p] += 1;
        }
        for (i, c) in changes.iter().enumerate() {
            let route = (c.start.rem_euclid(7) as usize + c.group.len()) % combiners;
            if stage2[route].apply(i as i64, c) == Outcome::Late {
                late += 1;
            }
        }
        for (p, a) in assigners.iter_mut().enumerate() {
            if let Some((max, idle)) = a.end_batch(false) {
                for c in stage2.iter_mut() {
                    c.source_time(p as i32, Some(max), idle);
                }
            }
        }
        for c in stage2.iter_mut() {
            c.end_batch(0, 0, &mut out);
        }
        if let Some(w) = stage2.iter().filter_map(Combiner::watermark).max() {
            for a in assigners.iter_mut() {
                a.forget_closed(w);
            }
        }
    }
    let mut finals = BTreeMap::new();
    let mut last = BTreeMap::new();
    let mut final_count = 0;
    for r in out {
        let key = (r.start, r.group.to_string());
        let e = Expected { values: r.values };
        if r.is_final {
            final_count += 1;
            finals.insert(key.clone(), e);
            last.remove(&key);
        } else {
            assert!(
                !finals.contains_key(&key),
                "an update after the final of {key:?}"
            );
            last.insert(key, e);
        }
    }
    assert_eq!(final_count, finals.len(), "one final per cell");
    (finals, last, late)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn windows_match_the_brute_force_oracle(
        batches in records(),
        lateness in 0i64..30,
        hopping in any::<bool>(),
        partitions in 1usize..4,
        combiners in 1usize..4,
    ) {
        let spec = Spec::new(
            Duration::from_millis(10),
            hopping.then(|| Duration::from_millis(5)),
            Duration::from_millis(lateness as u64),
        ).unwrap();
        let (finals, open, late) = oracle(spec, &batches, partitions);
        let (got_finals, got_open, got_late) = run_engine(spec, &batches, partitions, combiners);
        prop_assert_eq!(got_finals, finals);
        prop_assert_eq!(got_open, open);
        prop_assert_eq!(got_late, late);
    }
}

proptest! {
    /// A cell's dense contents behave like a map, below and above the scanning size.
    #[test]
    fn cell_contents_behave_like_a_map(ops in prop::collection::vec((0u8..40, any::<bool>(), -5i8..5), 0..300)) {
        let mut content = Content::default();
        let mut model: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for (k, insert, v) in ops {
            let key: Arc<str> = Arc::from(format!("k{k}"));
            if insert {
                let row = [Some(f64::from(v)), (v > 0).then_some(f64::from(v) * 2.0)];
                content.insert(&key, &row, 2);
                model.insert(key.to_string(), (row[0], row[1]));
            } else {
                prop_assert_eq!(content.remove(&key, 2), model.remove(&*key).is_some());
            }
            prop_assert_eq!(content.len(), model.len());
        }
        let mut got: Vec<f64> = content.field(1, 2).collect();
        let mut want: Vec<f64> = model.values().filter_map(|v| v.1).collect();
        got.sort_by(f64::total_cmp);
        want.sort_by(f64::total_cmp);
        prop_assert_eq!(got, want);
        for (key, row) in &model {
            let i = content.position(&Arc::from(key.as_str())).unwrap();
            prop_assert_eq!((content.values[i * 2], content.values[i * 2 + 1]), *row);
        }
    }
}
