//! The window engine against a plain HashMap counting loop over the same records.
//!
//! Input: 1,000,000 pre-extracted records (10,000 groups, 5-minute tumbling windows over about
//! two hours of event time, 10 minutes of lateness), either all new events or with 10% of them
//! revisions of earlier records (moving them to another group; a tenth of those deletions),
//! applied in batches of 10,000 with the watermark advanced and results emitted between batches
//! (updates coalesced to the default 5 s as time would pass at the target rate), exactly as the
//! runtime drives the engine (assigner → changes → combiner), minus Kafka. Baseline: one
//! HashMap keyed by (window, group) updating count, sum and max per record — what a hand-written
//! loop would do, with no revisions, lateness or retraction.
//!
//!     cargo bench --bench window

use std::{collections::HashMap, sync::Arc, time::Duration};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use quakestream::process::window::{
    AggOp, Assigner, Combiner, Input, Layout, Spec, Version, WindowResult,
};

const RECORDS: usize = 1_000_000;
const GROUPS: usize = 10_000;
const BATCH: usize = 10_000;

/// `revisions`: percent of records that revise an earlier one (a tenth of those delete it).
fn records(revisions: u64) -> Vec<Input> {
    let groups: Vec<Arc<str>> = (0..GROUPS)
        .map(|g| Arc::from(format!("[\"g{g}\"]")))
        .collect();
    let mut seed = 42u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut out = Vec::with_capacity(RECORDS);
    let mut keys: Vec<Arc<str>> = Vec::new();
    for i in 0..RECORDS {
        // Event time moves forward ~7 ms per record, jittered by up to a minute either way.
        let time = i as i64 * 7 + next(120_000) as i64 - 60_000;
        let roll = next(1000);
        let (key, deleted) = match roll {
            r if r < revisions * 10 && !keys.is_empty() => (
                keys[next(keys.len() as u64) as usize].clone(),
                r < revisions,
            ),
            _ => {
                let key: Arc<str> = Arc::from(format!("ev{i}"));
                keys.push(key.clone());
                if keys.len() > 50_000 {
                    keys.swap_remove(0);
                }
                (key, false)
            }
        };
        out.push(Input {
            key,
            version: Version::Num(i as f64),
            time,
            deleted,
            group: groups[next(GROUPS as u64) as usize].clone(),
            values: Arc::from(vec![Some(next(80) as f64 / 10.0)]),
        });
    }
    out
}

fn engine(records: Vec<Input>) -> usize {
    let spec = Spec::new(Duration::from_secs(300), None, Duration::from_secs(600)).unwrap();
    let layout = Arc::new(
        Layout::new(
            &["group".into()],
            &[
                ("count".into(), AggOp::Count, None),
                ("avg_mag".into(), AggOp::Avg, Some("mag".into())),
                ("max_mag".into(), AggOp::Max, Some("mag".into())),
            ],
        )
        .unwrap(),
    );
    let mut assigner = Assigner::new(spec, 0);
    let mut combiner = Combiner::new(spec, layout, 1);
    let mut changes = Vec::new();
    let mut results: Vec<WindowResult> = Vec::new();
    let mut emitted = 0;
    let mut records = records.into_iter().enumerate().peekable();
    let mut b = 0;
    while records.peek().is_some() {
        for (i, record) in records.by_ref().take(BATCH) {
            let offset = i as i64;
            assigner.apply(offset, record, &mut changes);
            for change in changes.drain(..) {
                combiner.apply(offset, &change);
            }
        }
        if let Some((max, idle)) = assigner.end_batch(false) {
            combiner.source_time(0, Some(max), idle);
        }
        // Processing time as it would pass at the target rate (1 M records/s: 10 ms a batch),
        // with the default 5 s between updates of a cell; finals as windows close.
        combiner.end_batch(b as i64 * 10, 5_000, &mut results);
        if let Some(w) = combiner.watermark() {
            assigner.forget_closed(w);
        }
        emitted += results.len();
        results.clear();
        b += 1;
    }
    emitted
}

fn baseline(records: &[Input]) -> usize {
    let mut cells: HashMap<(i64, Arc<str>), (u64, f64, f64)> = HashMap::new();
    for record in records {
        let start = record.time.div_euclid(300_000) * 300_000;
        let cell = cells
            .entry((start, record.group.clone()))
            .or_insert((0, 0.0, f64::MIN));
        cell.0 += 1;
        if let Some(Some(v)) = record.values.first() {
            cell.1 += v;
            cell.2 = cell.2.max(*v);
        }
    }
    cells.len()
}

fn bench(c: &mut Criterion) {
    for (name, revisions) in [("new_events", 0), ("ten_percent_revisions", 10)] {
        let records = records(revisions);
        let mut group = c.benchmark_group(format!("window_1m_records_10k_groups/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(records.len() as u64));
        group.bench_function("baseline_hashmap_count", |b| {
            b.iter(|| baseline(std::hint::black_box(&records)))
        });
        // The engine consumes its records, as the runtime does; copying them is setup.
        group.bench_function("engine", |b| {
            b.iter_batched(
                || records.clone(),
                |records| engine(std::hint::black_box(records)),
                BatchSize::LargeInput,
            )
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
