//! Writing quake records to lake files: Parquet (snappy, zstd) and CSV against JSON Lines, the
//! baseline, over the same records in the same run.
//!
//! Input: 200,000 `Quake` records as they arrive from Kafka (JSON text, ~700 bytes each), made
//! from the recorded USGS fixtures with unique ids and times. Each iteration writes all of them
//! into one file through the sink's encoder and finishes it (Parquet footer, fsync), exactly as
//! the files sink does between rolls, minus Kafka. One thread.
//!
//!     cargo bench --bench sink

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quakestream::{
    record::{Millis, Quake},
    sink::lake::{
        encode::{Compression, FileEncoder, FileSchema, Format},
        schema::Columns,
    },
    source::geojson,
};

const RECORDS: usize = 200_000;

fn records() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/usgs");
    let mut templates: Vec<Quake> = Vec::new();
    for file in [
        "2.5_week_2023-07-03T2117Z.geojson",
        "significant_month_2023-10-11T2016Z.geojson",
    ] {
        let body = std::fs::read(format!("{dir}/{file}")).unwrap();
        templates.extend(
            geojson::parse_collection(&body, "usgs", &quakestream::record::Checks::default())
                .unwrap()
                .quakes,
        );
    }
    (0..RECORDS)
        .map(|i| {
            let mut q = templates[i % templates.len()].clone();
            q.id = format!("{}{i}", q.id);
            q.time = Millis(q.time.0 + i as i64 * 1_000);
            serde_json::to_vec(&q).unwrap()
        })
        .collect()
}

fn write(records: &[Vec<u8>], format: Format, compression: Compression, schema: &FileSchema) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.out");
    let mut file = FileEncoder::create(&path, format, compression, schema).unwrap();
    for record in records {
        file.push(record).unwrap().unwrap();
    }
    file.finish().unwrap();
}

fn bench(c: &mut Criterion) {
    let records = records();
    let bytes: usize = records.iter().map(Vec::len).sum();
    eprintln!(
        "{} records, {:.0} bytes each on average",
        records.len(),
        bytes as f64 / records.len() as f64
    );
    let quake = FileSchema::Fixed(Arc::new(Columns::quake()));
    let mut group = c.benchmark_group("sink");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.sample_size(10);
    for (name, format, compression) in [
        ("jsonl (baseline)", Format::Jsonl, Compression::None),
        ("parquet snappy", Format::Parquet, Compression::Snappy),
        ("parquet zstd", Format::Parquet, Compression::Zstd),
        ("csv", Format::Csv, Compression::None),
        ("csv gzip", Format::Csv, Compression::Gzip),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| write(&records, format, compression, &quake))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
