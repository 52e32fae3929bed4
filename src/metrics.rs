//! Counters and histograms the components keep, rendered in Prometheus text format.
//!
//! Plain atomics: recording is lock-free and costs nothing measurable per record. The web
//! server's `/metrics` renders every component's set; until then the sources log a summary.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex,
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

    /// The mean observation in seconds, `None` before the first.
    pub fn mean_secs(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0 / n as f64)
    }

    /// An upper bound of the `q` quantile (0..=1) in seconds: the smallest bucket bound below
    /// which at least that share of observations fell (`+Inf` past the last bound).
    pub fn quantile_secs(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let want = (q.clamp(0.0, 1.0) * n as f64).ceil().max(1.0) as u64;
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            if cumulative >= want {
                return Some(*bound);
            }
        }
        Some(f64::INFINITY)
    }
}

/// What a polled source did (freshness and counters for the monitor).
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

    /// A poll (or a read of the input) went through: now is its last success.
    pub fn succeeded(&self) {
        self.last_success_ms
            .set(chrono::Utc::now().timestamp_millis());
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

    /// The Prometheus text exposition of this source alone.
    pub fn render(&self, out: &mut String) {
        let mut samples = Samples::default();
        self.observe(&mut samples);
        out.push_str(&samples.render());
    }
}

impl Observe for SourceMetrics {
    fn observe(&self, out: &mut Samples) {
        let l: &[(&str, &str)] = &[("source", &self.source)];
        for (name, help, counter) in [
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
        ] {
            out.counter(name, help, l, counter.get());
        }
        let name = "quakestream_source_errors_total";
        out.family(name, "Failed polls, by kind.", "counter");
        if let Ok(errors) = self.errors.lock() {
            for (kind, n) in errors.iter() {
                out.counter(name, "", &[l[0], ("kind", kind)], *n);
            }
        }
        for (name, help, gauge) in [
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
        ] {
            out.gauge(name, help, l, gauge.get() as f64 / 1000.0);
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
            out.histogram(name, help, l, h);
        }
    }
}

/// What a component reports at `/metrics`: it adds its samples to the exposition.
pub trait Observe: Send + Sync {
    fn observe(&self, out: &mut Samples);
}

/// One metric family of an exposition: its help, its type and its sample lines.
#[derive(Debug, Default)]
struct Family {
    help: String,
    kind: &'static str,
    lines: Vec<String>,
}

/// The samples of one scrape, grouped by family so that several components (two lake sinks,
/// several sources) share one `# HELP`/`# TYPE` header per metric as the format requires.
#[derive(Debug, Default)]
pub struct Samples {
    families: BTreeMap<String, Family>,
    /// (name, labels, value) of every counter and gauge, for the JSON pipeline view.
    flat: Vec<(String, String, f64)>,
}

impl Samples {
    /// Declares a family (its first declaration's help wins).
    pub fn family(&mut self, name: &str, help: &str, kind: &'static str) -> &mut Vec<String> {
        let family = self.families.entry(name.to_string()).or_default();
        if family.help.is_empty() {
            family.help = help.to_string();
            family.kind = kind;
        }
        &mut family.lines
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, help, "counter", labels, value as f64);
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, "gauge", labels, value);
    }

    fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let labels = label_text(labels);
        let series = braced(name, &labels);
        self.family(name, help, kind)
            .push(format!("{series} {}", number(value)));
        self.flat.push((name.to_string(), labels, value));
    }

    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &Histogram) {
        let labels = label_text(labels);
        let sep = if labels.is_empty() { "" } else { "," };
        let lines = self.family(name, help, "histogram");
        let mut cumulative = 0;
        for (bound, count) in h.bounds.iter().zip(&h.counts) {
            cumulative += count.load(Ordering::Relaxed);
            lines.push(format!(
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            ));
        }
        lines.push(format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            h.count()
        ));
        let sum = h.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let (sum_name, count_name) = (format!("{name}_sum"), format!("{name}_count"));
        lines.push(format!("{} {}", braced(&sum_name, &labels), number(sum)));
        lines.push(format!("{} {}", braced(&count_name, &labels), h.count()));
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let help = family.help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", family.kind);
            for line in &family.lines {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Every counter and gauge as (name, labels as written in the exposition, value).
    pub fn flat(&self) -> &[(String, String, f64)] {
        &self.flat
    }
}

/// `a="x",b="y"`, values escaped as the text format requires.
fn label_text(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out
}

/// `name{labels}`, or just `name` without labels.
fn braced(name: &str, labels: &str) -> String {
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    }
}

/// A sample value as Prometheus writes it (integers without a fraction).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// Every running component's metrics, registered as they start; `/metrics` observes them all.
#[derive(Default)]
pub struct Registry {
    parts: Mutex<Vec<Arc<dyn Observe>>>,
    sources: Mutex<Vec<Arc<SourceMetrics>>>,
    components: Mutex<Vec<Arc<crate::runtime::ComponentStatus>>>,
}

impl Registry {
    pub fn register(&self, part: Arc<dyn Observe>) {
        if let Ok(mut parts) = self.parts.lock() {
            parts.push(part);
        }
    }

    /// A source's metrics: observed like any part, and read for the monitor's freshness view.
    pub fn register_source(&self, source: Arc<SourceMetrics>) {
        if let Ok(mut sources) = self.sources.lock() {
            sources.push(source);
        }
    }

    pub fn sources(&self) -> Vec<Arc<SourceMetrics>> {
        self.sources.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A supervised component's state: observed like any part, and shown by `/health` and the
    /// monitor.
    pub fn register_component(&self, status: Arc<crate::runtime::ComponentStatus>) {
        if let Ok(mut components) = self.components.lock() {
            components.push(status);
        }
    }

    pub fn components(&self) -> Vec<Arc<crate::runtime::ComponentStatus>> {
        self.components
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn observe(&self, out: &mut Samples) {
        for source in self.sources() {
            source.observe(out);
        }
        for component in self.components() {
            component.observe(out);
        }
        let parts = self.parts.lock().map(|p| p.clone()).unwrap_or_default();
        for part in parts {
            part.observe(out);
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
