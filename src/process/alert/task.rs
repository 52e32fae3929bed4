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
use rdkafka::{Message, consumer::Consumer as _};
use tokio_util::sync::CancellationToken;

use super::{Alert, Alerter, AlertsConfig, Event, Kind};
use crate::{
    error::{Error, Result},
    kafka::{
        KafkaSettings, TopicName,
        admin::Admin,
        consumer::{Consumer, StartFrom, static_member_id},
        producer::Producer,
        reader,
    },
    metrics::{Counter, Observe, Samples},
    process::{
        console,
        webhook::{WebhookMetrics, Webhooks},
    },
    record::DeadLetter,
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

/// Runs the alert processor until `shutdown`.
pub async fn run(
    config: &AlertsConfig,
    dlq: &str,
    data_dir: &Path,
    settings: &KafkaSettings,
    metrics: Arc<AlertMetrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let invalid = |message: String| Error::Config {
        origin: "[alerts]".into(),
        message,
    };
    config.validate().map_err(invalid)?;
    let rules = config.compiled_rules().map_err(invalid)?;
    let names = [config.input.as_str(), config.output.as_str(), dlq]
        .iter()
        .map(|t| t.parse::<TopicName>())
        .collect::<Result<Vec<_>>>()?;
    Admin::connect(settings)
        .await?
        .ensure_topics(&names)
        .await?;

    let mut alerter = Alerter::new(rules, config.magnitude_step);
    rebuild(&mut alerter, settings, &config.output).await?;
    let consumer = Consumer::with_properties(
        settings,
        &config.group_id,
        StartFrom::Earliest,
        true,
        &[(
            "group.instance.id",
            static_member_id(&config.group_id, data_dir),
        )],
    )?;
    consumer.subscribe(&names[..1])?;
    let producer = Producer::new(settings)?;
    let mut log = AlertLog::open(config, data_dir)?;
    let webhooks = Webhooks::start(
        config.webhooks.clone(),
        config.webhook_attempts,
        metrics.webhooks.clone(),
    );
    tracing::info!(input = %config.input, output = %config.output, rules = alerter.rules().len(),
        known_events = alerter.events(), "alert processor started");

    let result = async {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "alert processor: consumer error");
                    continue;
                }
            };
            // Partitions moved: events of the new ones may have been alerted by another process.
            if !consumer.raw().context().take_revoked().is_empty() {
                alerter = Alerter::new(alerter.rules().to_vec(), config.magnitude_step);
                rebuild(&mut alerter, settings, &config.output).await?;
            }
            metrics.records.inc();
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            let payload = message.payload().unwrap_or_default();
            let parsed = serde_json::from_slice::<serde_json::Value>(payload)
                .map_err(|_| "the record is not valid JSON")
                .and_then(|v| {
                    let key = key
                        .clone()
                        .or_else(|| v.get("id").and_then(|i| i.as_str()).map(String::from))
                        .ok_or("the record has neither a key nor an id")?;
                    Event::from_json(&key, &v).map(|e| (e, v))
                });
            match parsed {
                Err(reason) => {
                    metrics.bad.inc();
                    let letter = DeadLetter {
                        reason: format!("bad record: {reason}"),
                        source: "alerts".into(),
                        topic: Some(config.input.clone()),
                        partition: Some(message.partition()),
                        offset: Some(message.offset()),
                        payload: String::from_utf8_lossy(payload).into_owned(),
                    };
                    let body = serde_json::to_vec(&letter).unwrap_or_default();
                    producer.send(dlq, key.as_deref(), &body, None).await?;
                }
                Ok((event, quake)) => {
                    let now = chrono::Utc::now().timestamp_millis();
                    if let Some(alert) = alerter.decide(&event, &quake, now) {
                        let body = serde_json::to_vec(&alert).unwrap_or_default();
                        producer
                            .send(&config.output, Some(&event.key), &body, event.time)
                            .await?;
                        match alert.kind {
                            Kind::New => metrics.new.inc(),
                            Kind::Upgrade => metrics.upgrades.inc(),
                            Kind::Cancel => metrics.cancels.inc(),
                        }
                        log.write(&event.key, &alert)?;
                        if config.console {
                            crate::command::print_out(&console::alert_box(
                                &alert,
                                local_offset(&alert),
                            ))?;
                        }
                        webhooks.send(console::alert_line(&alert));
                    }
                }
            }
            consumer.handled(&message)?;
        }
        Ok::<(), Error>(())
    }
    .await;
    if let Err(e) = consumer.commit() {
        tracing::warn!(error = %e, "alert processor: final commit failed");
    }
    webhooks.stop(Duration::from_secs(5)).await;
    result
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
}

impl AlertLog {
    fn open(config: &AlertsConfig, data_dir: &Path) -> Result<AlertLog> {
        if config.log_file.as_os_str().is_empty() {
            return Ok(AlertLog { file: None });
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
            console::alert_line(alert)
        );
        file.write_all(line.as_bytes())
            .and_then(|()| file.flush())
            .map_err(Error::io(path.as_path()))
    }
}
