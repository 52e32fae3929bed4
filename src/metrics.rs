//! Counters and histograms the components keep, rendered in Prometheus text format.
//!
//! Plain atomics: recording is lock-free and costs nothing measurable per record. The web
//! server's `/metrics` renders every component's set; until then the sources log a summary.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that is set, not added to (a timestamp, a size).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bucket bounds, in seconds, for delays from an event to its publication.
pub const DELAY_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in milliseconds.
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_ms: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe_ms(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let secs = ms as f64 / 1000.0;
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            self.count()
        );
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count());
    }
}

/// What a polled source did (DESIGN.md §4, issue "freshness and counters").
#[derive(Debug)]
pub struct SourceMetrics {
    pub source: String,
    pub polls: Counter,
    pub not_modified: Counter,
    pub published: Counter,
    pub duplicates: Counter,
    pub dead_letters: Counter,
    pub stale_feeds: Counter,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// When the last poll succeeded (epoch ms; 0 = never).
    pub last_success_ms: Gauge,
    /// `metadata.generated` of the newest feed read (epoch ms).
    pub feed_generated_ms: Gauge,
    /// Origin time → publish.
    pub origin_delay: Histogram,
    /// `updated` → publish.
    pub update_delay: Histogram,
}

impl SourceMetrics {
    pub fn new(source: &str) -> SourceMetrics {
        SourceMetrics {
            source: source.to_string(),
            polls: Counter::default(),
            not_modified: Counter::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            dead_letters: Counter::default(),
            stale_feeds: Counter::default(),
            errors: Mutex::default(),
            last_success_ms: Gauge::default(),
            feed_generated_ms: Gauge::default(),
            origin_delay: Histogram::new(DELAY_BUCKETS),
            update_delay: Histogram::new(DELAY_BUCKETS),
        }
    }

    pub fn error(&self, kind: &'static str) {
        if let Ok(mut errors) = self.errors.lock() {
            *errors.entry(kind).or_default() += 1;
        }
    }

    pub fn errors(&self, kind: &str) -> u64 {
        self.errors
            .lock()
            .ok()
            .and_then(|e| e.get(kind).copied())
            .unwrap_or(0)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.lock().map(|e| e.values().sum()).unwrap_or(0)
    }

    /// The Prometheus text exposition of this source.
    pub fn render(&self, out: &mut String) {
        let l = format!("source=\"{}\"", self.source);
        let counters = [
            (
                "quakestream_source_polls_total",
                "Polls attempted.",
                &self.polls,
            ),
            (
                "quakestream_source_not_modified_total",
                "Polls answered 304 Not Modified.",
                &self.not_modified,
            ),
            (
                "quakestream_source_published_total",
                "Records published.",
                &self.published,
            ),
            (
                "quakestream_source_duplicates_total",
                "Revisions skipped as already published.",
                &self.duplicates,
            ),
            (
                "quakestream_source_dead_letters_total",
                "Records sent to the dead-letter topic.",
                &self.dead_letters,
            ),
            (
                "quakestream_source_stale_feeds_total",
                "Feeds older than one already read, skipped.",
                &self.stale_feeds,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{{l}}} {}", counter.get());
        }
        let name = "quakestream_source_errors_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed polls, by kind.\n# TYPE {name} counter"
        );
        if let Ok(errors) = self.errors.lock() {
            for (kind, n) in errors.iter() {
                let _ = writeln!(out, "{name}{{{l},kind=\"{kind}\"}} {n}");
            }
        }
        let gauges = [
            (
                "quakestream_source_last_success_timestamp_seconds",
                "When the last poll succeeded.",
                &self.last_success_ms,
            ),
            (
                "quakestream_source_feed_generated_timestamp_seconds",
                "metadata.generated of the newest feed read.",
                &self.feed_generated_ms,
            ),
        ];
        for (name, help, gauge) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{{l}}} {}", gauge.get() as f64 / 1000.0);
        }
        for (name, help, h) in [
            (
                "quakestream_source_origin_to_publish_seconds",
                "Delay from origin time to publication.",
                &self.origin_delay,
            ),
            (
                "quakestream_source_update_to_publish_seconds",
                "Delay from the revision's updated time to publication.",
                &self.update_delay,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(name, &l, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = SourceMetrics::new("usgs");
        m.polls.add(3);
        m.error("timeout");
        m.error("timeout");
        m.origin_delay.observe_ms(4_000);
        m.origin_delay.observe_ms(100_000_000);
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("quakestream_source_polls_total{source=\"usgs\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("quakestream_source_errors_total{source=\"usgs\",kind=\"timeout\"} 2\n")
        );
        assert!(out.contains(
            "quakestream_source_origin_to_publish_seconds_bucket{source=\"usgs\",le=\"1\"} 0\n"
        ));
        assert!(out.contains(
            "quakestream_source_origin_to_publish_seconds_bucket{source=\"usgs\",le=\"5\"} 1\n"
        ));
        assert!(out.contains(
            "quakestream_source_origin_to_publish_seconds_bucket{source=\"usgs\",le=\"+Inf\"} 2\n"
        ));
        assert!(
            out.contains("quakestream_source_origin_to_publish_seconds_count{source=\"usgs\"} 2\n")
        );
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
