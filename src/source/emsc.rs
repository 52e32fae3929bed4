//! The `emsc` source: the EMSC Seismic Portal's real-time WebSocket, normalized to `Quake`
//! records on the quakes topic.
//!
//! Delivery semantics: exactly once per (event, `lastupdate`) in the topic, as for the USGS
//! source and with the same dedupe ([`super::dedupe`]), rebuilt from the topic at start and
//! after a failed publish. A message EMSC sends again (after a reconnect) is not published
//! twice; an `update` with a newer `lastupdate` is.
//!
//! The socket needs no subscription: connect and read. The client pings every
//! `ping_interval`; a connection that says nothing for three intervals, or closes, is replaced
//! after a backoff (exponential, with jitter). A message that is not a usable event goes to the
//! dead-letter topic with the reason.

use std::{sync::Arc, time::Duration};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

use super::{
    SourceSettings,
    dedupe::Dedupe,
    outlet::Outlet,
    publish::{self, Profile, Publisher},
};
use crate::{
    config::duration,
    error::{Error, Result},
    kafka::TopicName,
    metrics::SourceMetrics,
    record::{Checks, Millis, Quake},
    runtime::{About, Backoff, Context},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmscConfig {
    /// Whether `up` runs this source.
    pub enabled: bool,
    /// The WebSocket URL.
    pub url: String,
    /// Topic to write (shared with the USGS source by default: both write `Quake` records).
    pub topic: String,
    /// How often the client pings; three silent intervals end the connection.
    #[serde(with = "duration")]
    pub ping_interval: Duration,
    /// First pause before reconnecting; doubles with each failure.
    #[serde(with = "duration")]
    pub backoff_initial: Duration,
    /// Longest pause before reconnecting.
    #[serde(with = "duration")]
    pub backoff_max: Duration,
    /// Largest message accepted, in bytes.
    pub max_message_bytes: usize,
}

impl Default for EmscConfig {
    fn default() -> Self {
        EmscConfig {
            enabled: false,
            url: "wss://www.seismicportal.eu/standing_order/websocket".into(),
            topic: "earthquakes".into(),
            ping_interval: Duration::from_secs(15),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_message_bytes: 1 << 20,
        }
    }
}

impl EmscConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "ws" | "wss") => {}
            _ => {
                return Err(format!(
                    "[emsc]: url = {:?}: expected a ws:// or wss:// URL",
                    self.url
                ));
            }
        }
        if self.ping_interval < Duration::from_millis(100) {
            return Err("[emsc]: ping_interval must be at least 100ms".into());
        }
        self.topic
            .parse::<TopicName>()
            .map_err(|e| format!("[emsc]: {e}"))?;
        Ok(())
    }
}

/// An EMSC time with any number of fractional digits.
fn time(text: &str) -> Option<Millis> {
    let t = chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .or_else(|| {
            // Seen without a zone in some samples: UTC.
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc().fixed_offset())
        })?;
    Some(Millis(t.timestamp_millis()))
}

fn number(p: &Value, name: &str) -> std::result::Result<Option<f64>, String> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| format!("{name} is not a finite number")),
        Some(other) => Err(format!("{name} is not a number: {other}")),
    }
}

fn text<'v>(p: &'v Value, name: &str) -> Option<&'v str> {
    p.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// One WebSocket message as a `Quake`: `(action, quake)`, or why it is not one.
pub fn normalize(message: &str, checks: &Checks) -> std::result::Result<(String, Quake), String> {
    let v: Value = serde_json::from_str(message).map_err(|e| format!("not JSON: {e}"))?;
    let action = v
        .get("action")
        .and_then(Value::as_str)
        .ok_or("no action")?
        .to_string();
    if action != "create" && action != "update" {
        return Err(format!("unknown action {action:?}"));
    }
    let data = v.get("data").ok_or("no data")?;
    let p = data.get("properties").ok_or("no data.properties")?;
    let id = text(p, "unid")
        .or_else(|| data.get("id").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .ok_or("no unid")?
        .to_string();
    let origin = text(p, "time").ok_or("no time")?;
    let origin = time(origin).ok_or_else(|| format!("time {origin:?} is not ISO 8601"))?;
    let updated = match text(p, "lastupdate") {
        Some(t) => time(t).ok_or_else(|| format!("lastupdate {t:?} is not ISO 8601"))?,
        None => origin,
    };
    let coordinates = data
        .pointer("/geometry/coordinates")
        .and_then(Value::as_array);
    let coordinate = |i: usize| coordinates.and_then(|c| c.get(i)).and_then(Value::as_f64);
    let lat = number(p, "lat")?.or(coordinate(1)).ok_or("no lat")?;
    let lon = number(p, "lon")?.or(coordinate(0)).ok_or("no lon")?;
    // EMSC's depth is positive down; its geometry's z is the negative of it.
    let depth_km = number(p, "depth")?
        .or(coordinate(2).map(|z| -z))
        .ok_or("no depth")?;
    let mag = number(p, "mag")?;
    let mag_type = text(p, "magtype").map(str::to_ascii_lowercase);
    let place = text(p, "flynn_region").map(str::to_string);
    let auth = text(p, "auth").unwrap_or("EMSC");
    let event_type = match text(p, "evtype") {
        Some("ke") | None => "earthquake".to_string(),
        Some(other) => other.to_string(),
    };
    let title = format!(
        "M {} - {}",
        mag.map_or("?".into(), |m| format!("{m:.1}")),
        place.as_deref().unwrap_or("unknown region")
    );
    let quake = Quake {
        id: id.clone(),
        ids: vec![id.clone()],
        source: "emsc".into(),
        time: origin,
        updated,
        mag,
        mag_type,
        place,
        lat,
        lon,
        depth_km,
        status: "automatic".into(),
        tsunami: false,
        alert: None,
        sig: None,
        felt: None,
        cdi: None,
        mmi: None,
        net: auth.to_ascii_lowercase(),
        code: text(p, "source_id").unwrap_or(&id).to_string(),
        event_type,
        title,
        url: format!("https://www.seismicportal.eu/eventdetails.html?unid={id}"),
    };
    quake.check(checks)?;
    Ok((action, quake))
}

type Failure = (&'static str, String);

/// TLS for `wss://`: the machine's trusted roots, and rustls' aws-lc provider named
/// explicitly (with both providers in the build, rustls cannot pick one by itself).
fn tls() -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(
            "no trusted root certificates on this machine (install ca-certificates)".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One connection: read until it ends. `Ok` when the server closed it cleanly.
async fn session(
    config: &EmscConfig,
    checks: &Checks,
    publisher: &Publisher,
    dedupe: &mut Dedupe,
    metrics: &SourceMetrics,
    backoff: &mut Backoff,
) -> std::result::Result<(), Failure> {
    let mut ws_config = WebSocketConfig::default();
    ws_config.max_message_size = Some(config.max_message_bytes);
    ws_config.max_frame_size = Some(config.max_message_bytes);
    let connector = if config.url.starts_with("wss:") {
        Some(tokio_tungstenite::Connector::Rustls(
            tls().map_err(|e| ("connect", e))?,
        ))
    } else {
        None
    };
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        &config.url,
        Some(ws_config),
        false,
        connector,
    );
    let (socket, _) = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .map_err(|_| ("timeout", "no connection within 30s".to_string()))?
        .map_err(|e| ("connect", e.to_string()))?;
    tracing::info!(url = %config.url, "emsc: connected");
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(config.ping_interval);
    // Ticks missed while a message was being published are not silence: they are skipped.
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    // When the server was last heard, or this side last finished handling what it sent. Counting
    // ticks instead took a slow publish for a silent server: the connection was dropped with
    // the next messages still unread in it.
    let mut heard = tokio::time::Instant::now();
    let silence = config.ping_interval * 3;
    loop {
        tokio::select! {
            // What the server sent comes before a ping that is due at the same moment.
            biased;
            frame = stream.next() => {
                let Some(frame) = frame else { return Ok(()) };
                match frame {
                    Ok(Message::Text(text)) => {
                        backoff.reset();
                        handle(text.as_str(), checks, publisher, dedupe, metrics).await?;
                    }
                    Ok(Message::Binary(bytes)) => {
                        let raw = String::from_utf8_lossy(&bytes).into_owned();
                        dead_letter(publisher, "a binary frame, not a text message", &raw).await?;
                    }
                    Ok(Message::Close(_)) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(("connect", e.to_string())),
                }
                heard = tokio::time::Instant::now();
            }
            _ = ping.tick() => {
                if heard.elapsed() > silence {
                    return Err((
                        "timeout",
                        format!(
                            "nothing heard for {}",
                            humantime::format_duration(Duration::from_millis(heard.elapsed().as_millis() as u64))
                        ),
                    ));
                }
                sink.send(Message::Ping(Vec::new().into()))
                    .await
                    .map_err(|e| ("connect", e.to_string()))?;
            }
        }
    }
}

async fn dead_letter(
    publisher: &Publisher,
    reason: &str,
    raw: &str,
) -> std::result::Result<(), Failure> {
    publisher
        .outlet()
        .dead_letter(None, reason, raw.as_bytes())
        .await
        .map_err(|e| ("publish", e.to_string()))
}

async fn handle(
    text: &str,
    checks: &Checks,
    publisher: &Publisher,
    dedupe: &mut Dedupe,
    metrics: &SourceMetrics,
) -> std::result::Result<(), Failure> {
    metrics.polls.inc();
    let quake = match normalize(text, checks) {
        Ok((_, quake)) => quake,
        Err(reason) => return dead_letter(publisher, &reason, text).await,
    };
    let plan = publish::plan(dedupe, vec![quake], None);
    metrics.duplicates.add(plan.duplicates);
    publisher
        .publish(&plan.outgoing)
        .await
        .map_err(|e| ("publish", e.to_string()))?;
    metrics.succeeded();
    Ok(())
}

impl SourceSettings for EmscConfig {
    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("config"))
    }

    fn about(&self) -> About {
        let line = format!("{} (WebSocket) -> topic {}", self.url, self.topic);
        About::source("emsc", &self.topic, line)
    }

    /// Runs the source until `shutdown`, reconnecting as needed.
    async fn run(&self, ctx: &Context, metrics: Arc<SourceMetrics>) -> Result<()> {
        let config = self;
        let (settings, shutdown) = (&ctx.kafka, ctx.shutdown.clone());
        config.validate().map_err(Error::config("config"))?;
        let outlet = Outlet::open(ctx, "emsc", &config.topic, &config.url, metrics.clone()).await?;
        let topic = outlet.topic().to_string();
        let mut publisher = Publisher::new(outlet, Profile::Quakes);
        let mut dedupe = None;
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        tracing::info!(url = %config.url, topic = %topic, "emsc source started");
        loop {
            if dedupe.is_none() {
                match publish::rebuild_dedupe(settings, &topic).await {
                    Ok((d, _, read)) => {
                        tracing::info!(
                            records = read,
                            events = d.len(),
                            "emsc: dedupe state rebuilt"
                        );
                        dedupe = Some(d);
                    }
                    Err(e) => {
                        metrics.error("publish");
                        tracing::warn!(error = %e, "emsc: reading the topic back failed; retrying");
                    }
                }
            }
            let outcome = match dedupe.as_mut() {
                Some(d) => {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        outcome = session(config, &ctx.checks, &publisher, d, &metrics, &mut backoff) => outcome,
                    }
                }
                None => Err(("publish", "no dedupe state".to_string())),
            };
            let (kind, why) = match outcome {
                Ok(()) => ("closed", "the server closed the connection".to_string()),
                Err(e) => e,
            };
            if kind == "publish" {
                dedupe = None;
                publisher.outlet_mut().reset()?;
            }
            metrics.error(kind);
            let wait = backoff.next(None);
            tracing::warn!(url = %config.url, %why, kind, retry_in = ?wait, "emsc: reconnecting");
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        publisher.outlet().flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_seconds_of_any_length() {
        for (text, read) in [
            ("2025-03-05T09:45:07.0Z", "2025-03-05T09:45:07.000Z"),
            ("2025-03-05T10:06:56.102425Z", "2025-03-05T10:06:56.102Z"),
            ("2020-12-30T08:45:29Z", "2020-12-30T08:45:29.000Z"),
            ("2020-12-30T08:45:29.9", "2020-12-30T08:45:29.900Z"),
        ] {
            assert_eq!(time(text).unwrap().to_string(), read, "{text}");
        }
        assert_eq!(time("yesterday"), None);
    }

    #[test]
    fn hostile_messages_say_why() {
        for (message, why) in [
            ("not json", "not JSON"),
            ("{}", "no action"),
            (
                r#"{"action":"delete","data":{}}"#,
                "unknown action \"delete\"",
            ),
            (r#"{"action":"create"}"#, "no data"),
            (r#"{"action":"create","data":{"properties":{}}}"#, "no unid"),
            (
                r#"{"action":"create","data":{"properties":{"unid":"x","time":"soon"}}}"#,
                "time \"soon\" is not ISO 8601",
            ),
            (
                r#"{"action":"create","data":{"properties":{"unid":"x","time":"2025-03-05T09:45:07Z","lat":"north"}}}"#,
                "lat is not a number",
            ),
            (
                r#"{"action":"create","data":{"properties":{"unid":"x","time":"2025-03-05T09:45:07Z","lat":95,"lon":0,"depth":1}}}"#,
                "latitude 95 is outside",
            ),
        ] {
            let err = normalize(message, &Checks::default()).unwrap_err();
            assert!(err.contains(why), "{message}: {err}");
        }
    }

    #[test]
    fn validates_settings() {
        assert_eq!(EmscConfig::default().validate(), Ok(()));
        let bad = EmscConfig {
            url: "https://example.org".into(),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().contains("ws://"));
    }
}
