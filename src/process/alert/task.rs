//! The alert processor on Kafka: quake revisions in, alerts out to the alerts topic, the
//! console, an append-only log file and webhooks.
//!
//! Delivery semantics: at least once, without duplicate alerts on the topic. A revision's offset
//! is stored only after its alert (if any) is acknowledged by the broker and written to the log.
//! What each event has been alerted at is rebuilt from the alerts topic at start and after a
//! rebalance, so a revision processed again after a crash finds its alert already there and
//! raises nothing. (A crash between the broker's acknowledgement and the log write leaves that
//! one alert out of the log file; the topic has it.)

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{Offset, TimeZone};
use rdkafka::Message;

use super::{Alert, Alerter, AlertsConfig, Event, FieldValue, Kind};
use crate::{
    error::{Error, Result},
    kafka::{KafkaSettings, producer::Producer, reader},
    metrics::{Counter, Observe, Samples},
    process::{
        console,
        webhook::{WebhookMetrics, Webhooks},
    },
    runtime::{
        About, Context, Kind as ComponentKind, StageSettings,
        consume::{self, Handler, Outcome, Record},
    },
};

#[derive(Debug, Default)]
pub struct AlertMetrics {
    pub records: Counter,
    pub bad: Counter,
    pub new: Counter,
    pub upgrades: Counter,
    pub cancels: Counter,
    pub webhooks: Arc<WebhookMetrics>,
}

impl Observe for AlertMetrics {
    fn observe(&self, out: &mut Samples) {
        for (name, help, c) in [
            (
                "quakestream_alerts_records_total",
                "Quake revisions read by the alert processor.",
                &self.records,
            ),
            (
                "quakestream_alerts_bad_records_total",
                "Records dead-lettered by the alert processor.",
                &self.bad,
            ),
            (
                "quakestream_alerts_webhooks_sent_total",
                "Webhook deliveries that succeeded.",
                &self.webhooks.sent,
            ),
            (
                "quakestream_alerts_webhooks_retries_total",
                "Webhook deliveries retried.",
                &self.webhooks.retries,
            ),
            (
                "quakestream_alerts_webhooks_failed_total",
                "Webhook deliveries given up after every attempt.",
                &self.webhooks.failed,
            ),
            (
                "quakestream_alerts_webhooks_dropped_total",
                "Alerts not queued for webhooks because the queue was full.",
                &self.webhooks.dropped,
            ),
        ] {
            out.counter(name, help, &[], c.get());
        }
        let name = "quakestream_alerts_raised_total";
        for (kind, c) in [
            ("new", &self.new),
            ("upgrade", &self.upgrades),
            ("cancel", &self.cancels),
        ] {
            out.counter(name, "Alerts written, by kind.", &[("kind", kind)], c.get());
        }
    }
}

impl AlertMetrics {
    pub fn alerts(&self) -> u64 {
        self.new.get() + self.upgrades.get() + self.cancels.get()
    }
}

/// The alert processor's side of the consume loop.
struct Alerts<'a> {
    config: &'a AlertsConfig,
    settings: &'a KafkaSettings,
    producer: Producer,
    log: AlertLog,
    webhooks: Webhooks,
    alerter: Alerter,
    /// Partitions moved: events of the new ones may have been alerted by another process, so
    /// the alerter is rebuilt from the alerts topic before the next batch.
    rebuild: bool,
    metrics: Arc<AlertMetrics>,
}

impl Handler for Alerts<'_> {
    async fn handle(&mut self, batch: &[Record], out: &mut Outcome) -> Result<()> {
        if std::mem::take(&mut self.rebuild) {
            self.alerter = Alerter::new(self.alerter.rules().to_vec(), self.config.magnitude_step);
            rebuild(&mut self.alerter, self.settings, &self.config.output).await?;
        }
        // The batch's alerts are sent together and told (log, console, webhooks) once the
        // broker has acknowledged them: one wait per batch instead of one per alert.
        let mut sends = Vec::new();
        let mut raised = Vec::new();
        // One clock reading for the batch: it stamps the alerts it raises.
        let now = chrono::Utc::now().timestamp_millis();
        for record in batch {
            self.metrics.records.inc();
            match self.decide(record, now) {
                Ok(Some((event, alert))) => {
                    let body = serde_json::to_vec(&alert).unwrap_or_default();
                    let send = self
                        .producer
                        .enqueue(
                            &self.config.output,
                            None,
                            Some(&event.key),
                            &body,
                            event.time,
                        )
                        .await?;
                    sends.push(send);
                    raised.push((event.key, alert));
                }
                Ok(None) => {}
                Err(Refused(reason)) => {
                    self.metrics.bad.inc();
                    out.refuse(record, format!("bad record: {reason}"));
                }
            }
        }
        let mut failed = None;
        for (delivery, (key, alert)) in futures::future::join_all(sends)
            .await
            .into_iter()
            .zip(raised)
        {
            match delivery {
                // An alert on the topic is told even when another of the batch failed: after
                // the restart it is read back as already raised, and would never be told.
                Ok(_) => self.tell(&key, &alert)?,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        out.release_all(batch);
        Ok(())
    }

    fn revoked(&mut self, _partitions: &[(String, i32)]) {
        self.rebuild = true;
    }
}

/// The fields of a quake record that [`Event::from_json`] reads, and its id, borrowed from the
/// record where they can be (a drain of 200,000 records spent a quarter of its time in malloc
/// and free, much of it on these fields' strings).
#[derive(serde::Deserialize)]
struct RuleFields<'a> {
    #[serde(borrow)]
    id: Option<Lax<'a>>,
    #[serde(borrow)]
    time: Option<Lax<'a>>,
    #[serde(borrow)]
    updated: Option<Lax<'a>>,
    #[serde(borrow)]
    mag: Option<Lax<'a>>,
    #[serde(borrow)]
    alert: Option<Lax<'a>>,
    #[serde(borrow)]
    tsunami: Option<Lax<'a>>,
    #[serde(borrow)]
    lat: Option<Lax<'a>>,
    #[serde(borrow)]
    lon: Option<Lax<'a>>,
    #[serde(borrow)]
    status: Option<Lax<'a>>,
}

impl<'a> RuleFields<'a> {
    /// The fields of `payload` that the rules read; `None` when `payload` is not a JSON object
    /// or not read that way (a field given twice).
    fn of(payload: &'a [u8]) -> Option<RuleFields<'a>> {
        // A derived struct also reads an array, by position.
        if payload.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        serde_json::from_slice(payload).ok()
    }

    fn get(&self, name: &str) -> Option<&Lax<'a>> {
        match name {
            "id" => self.id.as_ref(),
            "time" => self.time.as_ref(),
            "updated" => self.updated.as_ref(),
            "mag" => self.mag.as_ref(),
            "alert" => self.alert.as_ref(),
            "tsunami" => self.tsunami.as_ref(),
            "lat" => self.lat.as_ref(),
            "lon" => self.lon.as_ref(),
            "status" => self.status.as_ref(),
            _ => None,
        }
        // A null field reads as a missing one, as in a whole record.
        .filter(|value| !matches!(value, Lax::Null))
    }
}

/// One JSON value as the rules read it: a text borrowed from the record unless it has escapes,
/// a number as `f64` (as `serde_json::Value::as_f64` gives it), and an array or object skipped.
#[derive(Debug)]
enum Lax<'a> {
    Null,
    Bool(bool),
    Number(f64),
    Text(std::borrow::Cow<'a, str>),
    Other,
}

impl super::FieldValue for Lax<'_> {
    fn number(&self) -> Option<f64> {
        match self {
            Lax::Number(x) => Some(*x),
            _ => None,
        }
    }
    fn text(&self) -> Option<&str> {
        match self {
            Lax::Text(text) => Some(text),
            _ => None,
        }
    }
    fn boolean(&self) -> Option<bool> {
        match self {
            Lax::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Lax<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(LaxVisitor(std::marker::PhantomData))
    }
}

struct LaxVisitor<'a>(std::marker::PhantomData<Lax<'a>>);

impl<'de: 'a, 'a> serde::de::Visitor<'de> for LaxVisitor<'a> {
    type Value = Lax<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Null)
    }
    fn visit_bool<E>(self, b: bool) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Bool(b))
    }
    fn visit_i64<E>(self, x: i64) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Number(x as f64))
    }
    fn visit_u64<E>(self, x: u64) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Number(x as f64))
    }
    fn visit_f64<E>(self, x: f64) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Number(x))
    }
    fn visit_borrowed_str<E>(self, text: &'de str) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Text(text.into()))
    }
    fn visit_str<E>(self, text: &str) -> std::result::Result<Lax<'a>, E> {
        Ok(Lax::Text(text.to_owned().into()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Lax<'a>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Lax::Other)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Lax<'a>, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Lax::Other)
    }
}

/// A record the alert processor cannot read, with the reason.
struct Refused(&'static str);

impl Alerts<'_> {
    /// The alert one record calls for, if any, at `now_ms`.
    fn decide(
        &mut self,
        record: &Record,
        now_ms: i64,
    ) -> std::result::Result<Option<(Event, Alert)>, Refused> {
        let key = record.key_text();
        let key_of = move |id: Option<&str>| {
            key.or_else(|| id.map(String::from))
                .ok_or("the record has neither a key nor an id")
        };
        // Most records raise nothing: read only the fields the rules look at, and the whole
        // record only for an alert. Anything the short read refuses (not an object, a field
        // given twice) is read whole, as before.
        let event = match RuleFields::of(&record.payload) {
            Some(fields) => key_of(fields.get("id").and_then(FieldValue::text))
                .and_then(|key| Event::from_fields(key, |name| fields.get(name))),
            None => serde_json::from_slice::<serde_json::Value>(&record.payload)
                .map_err(|_| "the record is not valid JSON")
                .and_then(|v| {
                    key_of(v.get("id").and_then(serde_json::Value::as_str))
                        .and_then(|key| Event::from_json(key, &v))
                }),
        }
        .map_err(Refused)?;
        // Read whole once already, or short: either way the record is valid JSON.
        let whole = || serde_json::from_slice(&record.payload).unwrap_or_default();
        Ok(self
            .alerter
            .decide(&event, whole, now_ms)
            .map(|alert| (event, alert)))
    }

    /// An alert the broker has acknowledged: counted, in the log, on the console and queued
    /// for the webhooks.
    fn tell(&mut self, key: &str, alert: &Alert) -> Result<()> {
        match alert.kind {
            Kind::New => self.metrics.new.inc(),
            Kind::Upgrade => self.metrics.upgrades.inc(),
            Kind::Cancel => self.metrics.cancels.inc(),
        }
        self.log.write(key, alert)?;
        if self.config.console {
            crate::process::console::print_out(&console::alert_box(
                alert,
                local_offset(alert),
                self.config.language,
            ))?;
        }
        self.webhooks.send(
            crate::text::chat(&console::alert_line(alert, self.config.language)).into_owned(),
        );
        Ok(())
    }
}

/// Reads the alerts topic back: what every event has been alerted at.
async fn rebuild(alerter: &mut Alerter, settings: &KafkaSettings, topic: &str) -> Result<()> {
    let (settings, topic) = (settings.clone(), topic.to_string());
    let alerts = tokio::task::spawn_blocking(move || {
        let mut alerts = Vec::new();
        reader::scan(&settings, &topic, |m| {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            if let (Some(key), Ok(alert)) = (
                key,
                serde_json::from_slice::<Alert>(m.payload().unwrap_or_default()),
            ) {
                alerts.push((key, alert));
            }
        })?;
        Ok::<_, Error>(alerts)
    })
    .await
    .map_err(|e| Error::Broker(format!("reading the alerts back: {e}")))??;
    for (key, alert) in &alerts {
        alerter.remember(key, alert);
    }
    Ok(())
}

/// The machine's UTC offset at the quake's origin time (daylight saving included).
fn local_offset(alert: &Alert) -> chrono::FixedOffset {
    let ms = alert
        .quake
        .get("time")
        .and_then(|t| t.as_str())
        .and_then(crate::record::parse_millis)
        .unwrap_or(0);
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| chrono::Local.offset_from_utc_datetime(&t.naive_utc()).fix())
        .unwrap_or_else(|| chrono::Utc.fix())
}

/// The append-only log: `emitted_at<TAB>kind<TAB>event key<TAB>the alert line`.
struct AlertLog {
    file: Option<(PathBuf, std::fs::File)>,
    language: console::Language,
}

impl AlertLog {
    fn open(config: &AlertsConfig, data_dir: &Path) -> Result<AlertLog> {
        if config.log_file.as_os_str().is_empty() {
            return Ok(AlertLog {
                file: None,
                language: config.language,
            });
        }
        let path = data_dir.join(&config.log_file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        Ok(AlertLog {
            file: Some((path, file)),
            language: config.language,
        })
    }

    fn write(&mut self, key: &str, alert: &Alert) -> Result<()> {
        let Some((path, file)) = &mut self.file else {
            return Ok(());
        };
        let kind = serde_json::to_value(alert.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let line = format!(
            "{}\t{kind}\t{key}\t{}\n",
            alert.emitted_at,
            console::alert_line(alert, self.language)
        );
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(Error::io(path.as_path()))
    }
}

impl StageSettings for AlertsConfig {
    type Counters = AlertMetrics;

    fn counters(&self) -> AlertMetrics {
        AlertMetrics::default()
    }

    fn about(&self, data_dir: &Path) -> About {
        let rules: Vec<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        let mut line = format!(
            "{} -> rules {} -> topic {}",
            self.input,
            rules.join(", "),
            self.output
        );
        if !self.log_file.as_os_str().is_empty() {
            line.push_str(&format!(
                ", log {}",
                data_dir.join(&self.log_file).display()
            ));
        }
        if !self.webhooks.is_empty() {
            line.push_str(&format!(", {} webhook(s)", self.webhooks.len()));
        }
        About {
            name: "alerts".into(),
            kind: ComponentKind::Processor,
            reads: vec![self.input.clone()],
            writes: vec![self.output.clone()],
            line,
        }
    }

    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("[alerts]"))
    }

    /// Runs the alert processor until `shutdown`.
    async fn run(&self, ctx: &Context, metrics: Arc<AlertMetrics>) -> Result<()> {
        let config = self;
        let settings = &ctx.kafka;
        config.check()?;
        let rules = config.compiled_rules().map_err(Error::config("[alerts]"))?;
        consume::ensure_topics(ctx, &[config.input.clone(), config.output.clone()]).await?;
        let mut alerter = Alerter::new(rules, config.magnitude_step);
        rebuild(&mut alerter, settings, &config.output).await?;
        let spec = consume::Spec::new("alerts", &config.group_id, None, vec![config.input.clone()]);
        let mut handler = Alerts {
            config,
            settings,
            producer: Producer::new(settings)?,
            log: AlertLog::open(config, &ctx.data_dir)?,
            webhooks: Webhooks::start(
                config.webhooks.clone(),
                config.webhook_attempts,
                metrics.webhooks.clone(),
            ),
            alerter,
            rebuild: false,
            metrics,
        };
        tracing::info!(input = %config.input, output = %config.output, rules = handler.alerter.rules().len(),
            known_events = handler.alerter.events(), "alert processor started");
        let result = consume::run(ctx, &spec, &mut handler).await;
        handler.webhooks.stop(Duration::from_secs(5)).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// What the rules see of `payload`: read short, and read whole.
    fn both(
        payload: &[u8],
    ) -> (
        Option<Result<Event, &'static str>>,
        Result<Event, &'static str>,
    ) {
        let short = RuleFields::of(payload).map(|f| Event::from_fields("k", |name| f.get(name)));
        let whole = serde_json::from_slice::<Value>(payload)
            .map_err(|_| "not JSON")
            .and_then(|v| Event::from_json("k", &v));
        (short, whole)
    }

    #[test]
    fn the_short_read_sees_what_the_whole_read_sees() {
        let quake = json!({
            "id": "us7000abcd", "time": "2023-10-07T06:41:03.000Z",
            "updated": "2023-10-07T07:00:00.000Z", "mag": 6.3, "alert": "red", "tsunami": 0,
            "lat": 34.5, "lon": 62.0, "status": "reviewed", "place": "40 km NW of Herat",
            "nested": {"mag": 1.0, "time": "x"}, "list": [1, 2, {"status": "deleted"}],
        });
        let (short, whole) = both(&serde_json::to_vec(&quake).unwrap());
        assert_eq!(short.expect("read short"), whole);
        assert_eq!(whole.as_ref().map(|e| e.mag), Ok(Some(6.3)));
    }

    #[test]
    fn what_the_short_read_refuses_is_read_whole() {
        // Not an object, a field twice, not JSON.
        for payload in [
            &b"[1, 2]"[..],
            b"  \"text\"",
            br#"{"mag": 5, "mag": 6}"#,
            b"{",
            b"",
        ] {
            assert!(RuleFields::of(payload).is_none(), "{payload:?}");
        }
    }

    fn field() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-20.0f64..20.0).prop_map(|x| json!(x)),
            (-400i64..400).prop_map(|x| json!(x)),
            prop_oneof![
                Just("2023-10-07T06:41:03.000Z"),
                Just("deleted"),
                Just("red"),
                Just(""),
                Just("yellow "),
                // Escaped in JSON: read into an owned text, not borrowed.
                Just("\"red\""),
                Just("dele\u{74}ed\n"),
                Just("2023-10-07T06:41:03.000Z\t"),
            ]
            .prop_map(|s| json!(s)),
            (-1e6f64..1e6).prop_map(|x| json!(x * 1e300)),
            any::<u64>().prop_map(|x| json!(x)),
            Just(json!([1, "a", [{"status": "deleted"}]])),
            Just(json!({"mag": 9, "inner": {"time": "x"}})),
        ]
    }

    proptest! {
        #[test]
        fn short_and_whole_reads_agree(
            values in proptest::collection::vec(proptest::option::of(field()), 11),
        ) {
            let names = [
                "id", "time", "updated", "mag", "alert", "tsunami", "lat", "lon", "status",
                "place", "depth",
            ];
            let mut object = serde_json::Map::new();
            for (name, value) in names.iter().zip(values) {
                if let Some(value) = value {
                    object.insert(name.to_string(), value);
                }
            }
            let payload = serde_json::to_vec(&Value::Object(object)).unwrap();
            let (short, whole) = both(&payload);
            prop_assert_eq!(short.expect("an object is read short"), whole);
        }
    }
}
