//! The dashboard's hot paths, each against a baseline measured in the same run.
//!
//! Input: the 1,770 events of the recorded `all_week` feed as `Quake` JSON records, as the web
//! feed reads them from Kafka.
//!
//! - `apply`: taking every record into the live state (parse, revision check, index, change
//!   serialized once for all browsers), against parsing the same records into `Quake` alone.
//! - `list`: answering `/api/quakes` for all of them (filter walk + JSON), against serializing
//!   the same `Quake`s from a plain vector.
//!
//!     cargo bench --bench web

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quakestream::{
    record::Quake,
    source::geojson::parse_collection,
    web::state::{Filter, Limits, Live},
};

fn records() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/usgs/revision_sequence_2025-05-04/all_week_2025-05-04T135310Z.json"
    );
    let body = std::fs::read(path).expect("the all_week fixture");
    parse_collection(&body, "usgs", &quakestream::record::Checks::default())
        .expect("fixture parses")
        .quakes
        .iter()
        .map(|q| serde_json::to_vec(q).unwrap())
        .collect()
}

fn live() -> Live {
    Live::new(Limits {
        max_events: 50_000,
        max_windows: 288,
        max_alerts: 200,
    })
}

fn bench(c: &mut Criterion) {
    let records = records();
    let n = records.len();
    let mut group = c.benchmark_group("web_apply");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("baseline_parse_quake", |b| {
        b.iter(|| {
            for r in &records {
                std::hint::black_box(serde_json::from_slice::<Quake>(r).unwrap());
            }
        })
    });
    group.bench_function("apply", |b| {
        b.iter(|| {
            let live = live();
            for r in &records {
                live.apply_quake(None, std::hint::black_box(r), 0).unwrap();
            }
            assert_eq!(live.stats(0).events, n);
        })
    });
    group.finish();

    let filled = live();
    for r in &records {
        filled.apply_quake(None, r, 0).unwrap();
    }
    let quakes: Vec<Quake> = records
        .iter()
        .map(|r| serde_json::from_slice(r).unwrap())
        .collect();
    let all = Filter {
        limit: 20_000,
        ..Filter::default()
    };
    let mut group = c.benchmark_group("web_list");
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function("baseline_serialize_vec", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&quakes)).unwrap())
    });
    group.bench_function("list_all", |b| {
        b.iter(|| serde_json::to_vec(&filled.quakes(std::hint::black_box(&all))).unwrap())
    });
    let filtered = Filter {
        min_mag: Some(2.5),
        bbox: Some([-130.0, 20.0, -60.0, 55.0]),
        ..all.clone()
    };
    group.bench_function("list_filtered", |b| {
        b.iter(|| serde_json::to_vec(&filled.quakes(std::hint::black_box(&filtered))).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
