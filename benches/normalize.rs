//! Normalizing a USGS feed to `Quake` records, against the parse-only baseline.
//!
//! Input: the recorded 1.9 MB `all_week` feed (1,770 events). Baseline: `serde_json` reading the
//! same bytes into `IgnoredAny` (validates the JSON, builds nothing). The ratio of the two is what
//! to watch: it says what normalization costs on top of reading the bytes at all.
//!
//!     cargo bench --bench normalize

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quakestream::source::geojson::parse_collection;
use serde::de::IgnoredAny;

fn bench(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/usgs/revision_sequence_2025-05-04/all_week_2025-05-04T135310Z.json"
    );
    let body = std::fs::read(path).expect("the all_week fixture");
    let mut group = c.benchmark_group("usgs_all_week");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("baseline_ignored_any", |b| {
        b.iter(|| serde_json::from_slice::<IgnoredAny>(std::hint::black_box(&body)).unwrap())
    });
    group.bench_function("normalize", |b| {
        b.iter(|| {
            let parsed = parse_collection(
                std::hint::black_box(&body),
                "usgs",
                &quakestream::record::Checks::default(),
            )
            .unwrap();
            assert_eq!(parsed.quakes.len(), 1770);
            parsed
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
