//! The `http` source: polls any JSON API and publishes its records, once each.
//!
//! Delivery semantics: at most one message per (key, version) in the topic, where the version is
//! the `dedupe` field (absent: the key alone, so each key is published once). Every message
//! carries its key and version in a header; at start the source reads them back from the topic,
//! so a restart or a `kill -9` neither republishes nor skips a record. Records that cannot be
//! mapped go to the dead-letter topic with the reason.
//!
//! A poll: GET the URL with its query parameters and headers (secret values from the
//! environment, `env:NAME` or `env:NAME:-default`), take the records at the JSON pointer
//! `records` (an array, or one object; `""` means the whole body), map each through `fields`
//! (paths into the record, or templates like `"{location.city}, {location.country}"`), and
//! publish the new ones. Timeouts, the size cap, retries with backoff and `Retry-After` are the
//! shared [`super::fetch`] and [`super::schedule`] code the USGS source uses too.
//!
//! Presets ([`Preset`]) fill in the URL, the mapping and the topic of the tutorials' APIs:
//! `randomuser` and `nasa-apod`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::SourceSettings;
use super::fetch::{Fetcher, HttpConfig};
use super::outlet::{Outlet, Rebuild, Resuming};
use super::schedule::{self, Ended};
use crate::config::duration;
use crate::error::{Error, Result};
use crate::fields::{self, lookup};
use crate::kafka::TopicName;
use crate::metrics::SourceMetrics;
use crate::runtime::{About, Context};
use crate::secret::resolve;

/// The tutorials' APIs, ready to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// randomuser.me: one user a second to `users_created`, in the tutorial's flat schema.
    Randomuser,
    /// NASA's Astronomy Picture of the Day to `nasa_data_topic`, one message per date.
    NasaApod,
}

/// One output field: `name` ← `from`, a path into the record (`name.first`, `results.0.id`)
/// or a template of paths (`"{location.street.number} {location.street.name}"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub name: String,
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// The source's name in logs and metrics (`source` label). Default: the preset's, or `http`.
    pub name: String,
    /// Fill in what is left unset from a preset: `randomuser` or `nasa-apod`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<Preset>,
    /// Whether `up` runs this source.
    pub enabled: bool,
    /// The API's URL.
    pub url: String,
    /// Query parameters. A value `env:NAME` is read from the environment (an error when unset);
    /// `env:NAME:-default` falls back to `default`.
    pub query: BTreeMap<String, String>,
    /// Request headers, with the same `env:` values (the place for API keys).
    pub headers: BTreeMap<String, String>,
    /// Time between polls.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Stop polling after this long (the randomuser tutorial streams for a while, then stops).
    /// Unset: until Ctrl+C.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// JSON pointer to the records in the body (`/results`). Empty: the body itself; an array
    /// there means one record per element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub records: Option<String>,
    /// Path of the key field in the record (the Kafka key, and what dedupe is by).
    pub key: String,
    /// Path of a version field: a record is published again when its version changes.
    /// Unset: each key is published once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dedupe: Option<String>,
    /// Path of the record's event time (RFC 3339 or a date), used as the Kafka timestamp.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The output record's fields, in order. Empty: the record as it came.
    pub fields: Vec<Field>,
    /// Topic to write.
    pub topic: String,
    /// Timeouts, size cap and backoff.
    pub http: HttpConfig,
}

impl Default for HttpSourceConfig {
    fn default() -> Self {
        HttpSourceConfig {
            name: String::new(),
            preset: None,
            enabled: true,
            url: String::new(),
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            interval: None,
            duration: None,
            records: None,
            key: String::new(),
            dedupe: None,
            time: None,
            fields: Vec::new(),
            topic: String::new(),
            http: HttpConfig::default(),
        }
    }
}

fn field(name: &str, from: &str) -> Field {
    Field {
        name: name.into(),
        from: from.into(),
    }
}

impl HttpSourceConfig {
    /// This source with its preset's values wherever it left one unset.
    pub fn resolved(&self) -> HttpSourceConfig {
        let mut c = self.clone();
        let or = |value: &mut String, default: &str| {
            if value.is_empty() {
                *value = default.to_string();
            }
        };
        let query_or = |query: &mut BTreeMap<String, String>, name: &str, default: &str| {
            query
                .entry(name.to_string())
                .or_insert_with(|| default.to_string());
        };
        match self.preset {
            Some(Preset::Randomuser) => {
                or(&mut c.name, "randomuser");
                or(&mut c.url, "https://randomuser.me/api/");
                query_or(&mut c.query, "results", "1");
                c.interval.get_or_insert(Duration::from_secs(1));
                c.records.get_or_insert_with(|| "/results".into());
                or(&mut c.key, "login.uuid");
                if c.fields.is_empty() {
                    c.fields = vec![
                        field("id", "login.uuid"),
                        field("first_name", "name.first"),
                        field("last_name", "name.last"),
                        field("gender", "gender"),
                        field(
                            "address",
                            "{location.street.number} {location.street.name}, {location.city}, {location.state}, {location.country}",
                        ),
                        field("post_code", "{location.postcode}"),
                        field("email", "email"),
                        field("username", "login.username"),
                        field("dob", "dob.date"),
                        field("registered_date", "registered.date"),
                        field("phone", "phone"),
                        field("picture", "picture.medium"),
                    ];
                }
                or(&mut c.topic, "users_created");
            }
            Some(Preset::NasaApod) => {
                or(&mut c.name, "nasa-apod");
                or(&mut c.url, "https://api.nasa.gov/planetary/apod");
                query_or(&mut c.query, "api_key", "env:NASA_API_KEY:-DEMO_KEY");
                query_or(&mut c.query, "thumbs", "true");
                // One picture a day; DEMO_KEY allows 30 requests an hour.
                c.interval.get_or_insert(Duration::from_secs(3600));
                c.records.get_or_insert_with(String::new);
                or(&mut c.key, "date");
                c.time.get_or_insert_with(|| "date".into());
                or(&mut c.topic, "nasa_data_topic");
            }
            None => {
                or(&mut c.name, "http");
            }
        }
        c
    }

    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(60))
    }

    /// Checks the resolved settings.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let c = self.resolved();
        let at = |m: String| format!("[[http]] {}: {m}", c.name);
        match url::Url::parse(&c.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(at(format!("url = {:?}: expected an http(s) URL", c.url))),
        }
        if c.key.is_empty() {
            return Err(at(
                "key is empty: name the field that identifies a record".into()
            ));
        }
        if c.topic.is_empty() {
            return Err(at("topic is empty".into()));
        }
        c.topic
            .parse::<TopicName>()
            .map_err(|e| at(e.to_string()))?;
        if let Some(p) = &c.records
            && !p.is_empty()
            && !p.starts_with('/')
        {
            return Err(at(format!(
                "records = {p:?}: a JSON pointer starts with / (like \"/results\")"
            )));
        }
        if c.interval() < Duration::from_millis(100) {
            return Err(at("interval must be at least 100ms".into()));
        }
        let mut names = HashSet::new();
        for f in &c.fields {
            if f.name.is_empty() || !names.insert(f.name.as_str()) {
                return Err(at(format!(
                    "fields: name {:?} is empty or repeated",
                    f.name
                )));
            }
            Template::parse(&f.from).map_err(|e| at(format!("field {}: {e}", f.name)))?;
        }
        for (k, v) in c.query.iter().chain(&c.headers) {
            resolve(v).map_err(|e| at(format!("{k}: {e}")))?;
        }
        Ok(())
    }
}

/// A field's source: one path (the value is copied as it is) or a template (a string).
#[derive(Debug, Clone, PartialEq)]
enum Template {
    Path(String),
    Parts(fields::Template),
}

impl Template {
    fn parse(spec: &str) -> std::result::Result<Template, String> {
        if !spec.contains(['{', '}']) {
            if spec.is_empty() {
                return Err("from is empty".into());
            }
            return Ok(Template::Path(spec.to_string()));
        }
        fields::Template::parse(spec).map(Template::Parts)
    }

    /// The field's value; a template part that is missing or not a scalar is an error.
    fn render(&self, record: &Value) -> std::result::Result<Value, String> {
        match self {
            Template::Path(p) => Ok(lookup(record, p).cloned().unwrap_or(Value::Null)),
            Template::Parts(t) => t
                .render_with(record, |p, value| match value {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string()),
                    Some(Value::Null) | None => Err(format!("{p} is missing")),
                    Some(_) => Err(format!("{p} is not a text or a number")),
                })
                .map(Value::String),
        }
    }
}

/// One record ready to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub key: String,
    pub version: String,
    pub time_ms: Option<i64>,
    pub value: Value,
}

/// The compiled mapping of a source.
#[derive(Debug, Clone)]
pub struct Mapping {
    records: String,
    key: String,
    dedupe: Option<String>,
    time: Option<String>,
    fields: Vec<(String, Template)>,
}

/// What a body held.
#[derive(Debug, Default)]
pub struct Extracted {
    pub records: Vec<Mapped>,
    /// (key if known, reason, the record as text).
    pub rejected: Vec<(Option<String>, String, String)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("no records at {0:?} in the body")]
    NoRecords(String),
}

/// A key or version as text (numbers written as JSON writes them).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A date or time as epoch ms: RFC 3339, or a date (`2022-02-01`, leniently `2015-1-3`).
fn time_of(v: &Value) -> Option<i64> {
    let text = v.as_str()?;
    if let Some(ms) = crate::record::parse_millis(text) {
        return Some(ms);
    }
    let mut parts = text.split('-').map(|p| p.parse::<u32>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    let day = chrono::NaiveDate::from_ymd_opt(y as i32, m, d)?;
    Some(
        day.and_time(chrono::NaiveTime::MIN)
            .and_utc()
            .timestamp_millis(),
    )
}

impl Mapping {
    pub fn new(config: &HttpSourceConfig) -> std::result::Result<Mapping, String> {
        let c = config.resolved();
        let fields = c
            .fields
            .iter()
            .map(|f| Template::parse(&f.from).map(|t| (f.name.clone(), t)))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Mapping {
            records: c.records.unwrap_or_default(),
            key: c.key,
            dedupe: c.dedupe,
            time: c.time,
            fields,
        })
    }

    /// The records of one body, mapped; the ones that cannot be are listed with the reason.
    pub fn extract(&self, body: &[u8]) -> std::result::Result<Extracted, BodyError> {
        let parsed: Value =
            serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))?;
        let at = if self.records.is_empty() {
            Some(&parsed)
        } else {
            parsed.pointer(&self.records)
        };
        let items: Vec<&Value> = match at {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => return Err(BodyError::NoRecords(self.records.clone())),
        };
        let mut out = Extracted::default();
        for item in items {
            match self.map(item) {
                Ok(m) => out.records.push(m),
                Err((key, reason)) => out.rejected.push((key, reason, item.to_string())),
            }
        }
        Ok(out)
    }

    fn map(&self, record: &Value) -> std::result::Result<Mapped, (Option<String>, String)> {
        if !record.is_object() {
            return Err((None, "a record is a JSON object".into()));
        }
        let key = lookup(record, &self.key)
            .and_then(scalar_text)
            .ok_or_else(|| (None, format!("key field {} is missing or empty", self.key)))?;
        let fail = |reason: String| (Some(key.clone()), reason);
        let version = match &self.dedupe {
            Some(path) => lookup(record, path)
                .and_then(scalar_text)
                .ok_or_else(|| fail(format!("dedupe field {path} is missing")))?,
            None => String::new(),
        };
        let time_ms = match &self.time {
            Some(path) => Some(
                lookup(record, path)
                    .and_then(time_of)
                    .ok_or_else(|| fail(format!("time field {path} is missing or not a date")))?,
            ),
            None => None,
        };
        let value = if self.fields.is_empty() {
            record.clone()
        } else {
            let mut out = Map::new();
            for (name, template) in &self.fields {
                let v = template
                    .render(record)
                    .map_err(|e| fail(format!("field {name}: {e}")))?;
                out.insert(name.clone(), v);
            }
            Value::Object(out)
        };
        Ok(Mapped {
            key,
            version,
            time_ms,
            value,
        })
    }
}

impl schedule::BodyFailure for BodyError {
    fn kind(&self) -> &'static str {
        match self {
            BodyError::NotJson(_) => "malformed",
            BodyError::NoRecords(_) => "no_records",
        }
    }
}

type PollError = schedule::PollError<BodyError>;

struct Poller {
    name: String,
    fetcher: Fetcher,
    mapping: Mapping,
    outlet: Outlet,
    /// `key\u{1f}version` of every record in the topic.
    seen: HashSet<String>,
    metrics: Arc<SourceMetrics>,
}

/// The request URL: the configured one with its query parameters (secrets resolved).
pub fn request_url(config: &HttpSourceConfig) -> std::result::Result<String, String> {
    let c = config.resolved();
    let mut url = url::Url::parse(&c.url).map_err(|e| format!("url {:?}: {e}", c.url))?;
    if !c.query.is_empty() {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in &c.query {
            pairs.append_pair(k, &resolve(v)?);
        }
    }
    Ok(url.to_string())
}

impl Rebuild for Poller {
    type Body = BodyError;

    fn reset(&mut self) -> Result<()> {
        self.outlet.reset()
    }

    async fn rebuild(&mut self) -> Result<()> {
        self.seen = self.outlet.published_records().await?;
        tracing::info!(source = %self.name, records = self.seen.len(), "http source: state rebuilt from {}", self.outlet.topic());
        Ok(())
    }

    fn poll_once(
        &mut self,
    ) -> impl std::future::Future<Output = std::result::Result<(), PollError>> + Send {
        self.poll()
    }
}

impl Poller {
    async fn poll(&mut self) -> std::result::Result<(), PollError> {
        let Some(body) = schedule::fetch(&mut self.fetcher, &self.metrics).await? else {
            return Ok(());
        };
        let extracted = self.mapping.extract(&body).map_err(PollError::Body)?;
        for (key, reason, raw) in &extracted.rejected {
            self.outlet
                .dead_letter(key.as_deref(), reason, raw.as_bytes())
                .await
                .map_err(PollError::Publish)?;
        }
        let mut published = 0;
        for record in extracted.records {
            let id = format!("{}\u{1f}{}", record.key, record.version);
            if self.seen.contains(&id) {
                self.metrics.duplicates.inc();
                continue;
            }
            let value = serde_json::to_vec(&record.value).unwrap_or_default();
            self.outlet
                .send_record(&record.key, &id, &value, record.time_ms)
                .await
                .map_err(PollError::Publish)?;
            self.seen.insert(id);
            published += 1;
        }
        self.fetcher.accept();
        self.metrics.succeeded();
        if published > 0 || !extracted.rejected.is_empty() {
            tracing::debug!(source = %self.name, published, rejected = extracted.rejected.len(), "http poll");
        }
        Ok(())
    }
}

impl SourceSettings for HttpSourceConfig {
    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("config"))
    }

    fn about(&self) -> About {
        let c = self.resolved();
        let mut line = format!(
            "{} every {} -> topic {}",
            c.url,
            humantime::format_duration(c.interval()),
            c.topic
        );
        if let Some(d) = c.duration {
            line.push_str(&format!(" for {}", humantime::format_duration(d)));
        }
        About::source(&c.name, &c.topic, line)
    }

    /// Runs the source until `shutdown`, or until its `duration` is over.
    async fn run(&self, ctx: &Context, metrics: Arc<SourceMetrics>) -> Result<()> {
        let config = self;
        let c = config.resolved();
        let invalid = |message: String| Error::Config {
            origin: format!("[[http]] {}", c.name),
            message,
        };
        config.check()?;
        if c.preset == Some(Preset::NasaApod)
            && c.query.get("api_key").map(String::as_str) == Some("env:NASA_API_KEY:-DEMO_KEY")
            && std::env::var("NASA_API_KEY").map_or(true, |v| v.is_empty())
        {
            tracing::warn!(
                "NASA_API_KEY is not set: using DEMO_KEY, which allows 30 requests an hour and 50 a \
                 day per IP address (get a free key at https://api.nasa.gov)"
            );
        }
        let url = request_url(&c).map_err(invalid)?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &c.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| invalid(format!("header {k:?}: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(&resolve(v).map_err(&invalid)?)
                .map_err(|e| invalid(format!("header {k}: {e}")))?;
            headers.insert(name, value);
        }
        let fetcher =
            Fetcher::with_headers(&url, &c.http, headers).map_err(|e| invalid(e.to_string()))?;
        let mapping = Mapping::new(&c).map_err(&invalid)?;
        // The URL without its query (it may hold an API key) in dead letters and logs.
        let outlet = Outlet::open(ctx, &c.name, &c.topic, &c.url, metrics.clone()).await?;
        tracing::info!(source = %c.name, url = %c.url, topic = %c.topic, interval = %humantime::format_duration(c.interval()), "http source started");
        let mut poller = Resuming::new(Poller {
            name: c.name.clone(),
            fetcher,
            mapping,
            outlet,
            seen: HashSet::new(),
            metrics: metrics.clone(),
        });
        let deadline = c.duration.map(|d| tokio::time::Instant::now() + d);
        let ended = schedule::every(
            &c.name,
            c.interval(),
            &c.http,
            deadline,
            &metrics,
            &ctx.shutdown,
            &mut poller,
        )
        .await;
        poller.source.outlet.flush()?;
        if ended == Ended::Deadline {
            tracing::info!(source = %c.name, "http source: duration over; stopped");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_paths() {
        let r: Value = serde_json::json!({
            "a": { "b": [10, { "c": "x" }] }, "n": 5, "s": "t", "o": {}, "z": null
        });
        let t = |spec: &str| Template::parse(spec).unwrap().render(&r);
        assert_eq!(t("a.b.0"), Ok(Value::from(10)));
        assert_eq!(t("a.b.1.c"), Ok(Value::from("x")));
        assert_eq!(t("missing.path"), Ok(Value::Null));
        assert_eq!(t("{n} and {s}!"), Ok(Value::from("5 and t!")));
        assert_eq!(t("{a.b.1.c}"), Ok(Value::from("x")));
        assert_eq!(t("{z}"), Err("z is missing".into()));
        assert_eq!(t("{o}"), Err("o is not a text or a number".into()));
        assert!(Template::parse("{unclosed").is_err());
        assert!(Template::parse("close}").is_err());
        assert!(Template::parse("{}").is_err());
        assert!(Template::parse("").is_err());
    }

    #[test]
    fn presets_resolve_and_validate() {
        let c = HttpSourceConfig {
            preset: Some(Preset::Randomuser),
            ..Default::default()
        };
        assert_eq!(c.validate(), Ok(()));
        let r = c.resolved();
        assert_eq!(
            (r.name.as_str(), r.topic.as_str()),
            ("randomuser", "users_created")
        );
        assert_eq!(
            request_url(&c).unwrap(),
            "https://randomuser.me/api/?results=1"
        );
        let apod = HttpSourceConfig {
            preset: Some(Preset::NasaApod),
            query: [("date".to_string(), "2025-08-22".to_string())].into(),
            ..Default::default()
        };
        let url = request_url(&apod).unwrap();
        assert!(
            url.starts_with("https://api.nasa.gov/planetary/apod?api_key="),
            "{url}"
        );
        assert!(url.contains("date=2025-08-22"));
        let bad = HttpSourceConfig {
            url: "ftp://x".into(),
            key: "id".into(),
            topic: "t".into(),
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("expected an http(s) URL")
        );
        let bad = HttpSourceConfig {
            records: Some("results".into()),
            ..c.clone()
        };
        assert!(bad.validate().unwrap_err().contains("JSON pointer"));
    }

    #[test]
    fn hostile_bodies_and_records() {
        let m = Mapping::new(&HttpSourceConfig {
            preset: Some(Preset::Randomuser),
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(m.extract(b"<html>"), Err(BodyError::NotJson(_))));
        assert!(matches!(
            m.extract(&[0xff, 0xfe]),
            Err(BodyError::NotJson(_))
        ));
        assert!(matches!(
            m.extract(b"{\"info\":{}}"),
            Err(BodyError::NoRecords(_))
        ));
        let out = m
            .extract(br#"{"results":[1, {"login":{"uuid":7}}, {"login":{"uuid":""}}, {"login":{"uuid":"u1"}}]}"#)
            .unwrap();
        assert!(out.records.is_empty());
        let reasons: Vec<&str> = out.rejected.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(reasons[0], "a record is a JSON object");
        // A number key is fine, but its template fields are missing.
        assert!(
            reasons[1].starts_with("field address: location.street.number is missing"),
            "{reasons:?}"
        );
        assert_eq!(reasons[2], "key field login.uuid is missing or empty");
        assert_eq!(out.rejected[3].0.as_deref(), Some("u1"));
    }

    #[test]
    fn dates_parse_leniently() {
        assert_eq!(
            time_of(&Value::from("2015-1-3")),
            time_of(&Value::from("2015-01-03"))
        );
        assert_eq!(time_of(&Value::from("2022-02-01")), Some(1_643_673_600_000));
        assert_eq!(time_of(&Value::from("2022-02-30")), None);
        assert_eq!(time_of(&Value::from("soon")), None);
    }
}
