//! `[alerts]`: the rules and where alerts go.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{LEVELS, Rule, level_rank};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Run the alert processor under `up`.
    pub enabled: bool,
    /// Topic of quake records to watch.
    pub input: String,
    /// Topic the `Alert` records go to, keyed by event.
    pub output: String,
    /// Consumer group (processes with the same group share the partitions).
    pub group_id: String,
    /// An event alerts when it matches any rule; a rule matches when all its conditions hold.
    pub rules: Vec<RuleConfig>,
    /// Magnitudes are compared in steps of this size: a revision raises an `upgrade` when its
    /// magnitude reaches a higher step than any alerted before (4.6 → 5.1 does, 4.6 → 4.9 does
    /// not, with 0.5).
    pub magnitude_step: f64,
    /// Append-only log of alerts, one line each. Relative paths are under the data directory.
    /// Empty: no log.
    pub log_file: PathBuf,
    /// Print every alert as a box on standard output.
    pub console: bool,
    /// The language of the alert boxes and the log lines: `en`, or `es` (the course's
    /// `ALERTA SÍSMICA`).
    pub language: crate::process::console::Language,
    /// URLs to POST each alert to, as JSON with a `text` field (what Slack and Discord incoming
    /// webhooks accept). Retried with backoff; never holds up the stream.
    pub webhooks: Vec<String>,
    /// How many times a webhook delivery is tried before it is given up (and counted).
    pub webhook_attempts: u32,
}

/// One rule: `{ name = "big-near-home", min_magnitude = 5.0, within = { lat = 37.77,
/// lon = -122.42, radius_km = 300 } }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Magnitude at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_magnitude: Option<f64>,
    /// PAGER level at least this: `green`, `yellow`, `orange` or `red`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_alert_level: Option<String>,
    /// `true`: only events with the tsunami flag; `false`: only events without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsunami: Option<bool>,
    /// Only events within `radius_km` of a point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<Geofence>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Geofence {
    pub lat: f64,
    pub lon: f64,
    pub radius_km: f64,
}

impl Default for AlertsConfig {
    /// The course's alert: every event of magnitude 4.5 or more.
    fn default() -> Self {
        AlertsConfig {
            enabled: true,
            input: "earthquakes".into(),
            output: "earthquake-alerts".into(),
            group_id: "quakestream-alerts".into(),
            rules: vec![RuleConfig {
                name: "M4.5+".into(),
                min_magnitude: Some(4.5),
                min_alert_level: None,
                tsunami: None,
                within: None,
            }],
            magnitude_step: 0.5,
            log_file: PathBuf::from("alerts.log"),
            console: false,
            language: crate::process::console::Language::En,
            webhooks: Vec::new(),
            webhook_attempts: 6,
        }
    }
}

impl AlertsConfig {
    /// The rules, checked: names unique, levels known, numbers in range.
    pub fn compiled_rules(&self) -> Result<Vec<Rule>, String> {
        if self.rules.is_empty() {
            return Err("at least one rule is needed (or set alerts.enabled = false)".into());
        }
        let mut out: Vec<Rule> = Vec::new();
        for r in &self.rules {
            if r.name.trim().is_empty() {
                return Err("every rule needs a name".into());
            }
            if out.iter().any(|o| o.name == r.name) {
                return Err(format!("two rules are named `{}`", r.name));
            }
            let min_level = match &r.min_alert_level {
                Some(l) => Some(level_rank(l).ok_or_else(|| {
                    format!(
                        "rule `{}`: min_alert_level = {l:?}: expected one of {}",
                        r.name,
                        LEVELS.join(", ")
                    )
                })?),
                None => None,
            };
            if let Some(m) = r.min_magnitude
                && !(-2.0..=12.0).contains(&m)
            {
                return Err(format!(
                    "rule `{}`: min_magnitude = {m} is not a magnitude",
                    r.name
                ));
            }
            if let Some(f) = &r.within
                && !((-90.0..=90.0).contains(&f.lat)
                    && (-180.0..=180.0).contains(&f.lon)
                    && f.radius_km > 0.0
                    && f.radius_km.is_finite())
            {
                return Err(format!(
                    "rule `{}`: within needs lat in [-90, 90], lon in [-180, 180] and a positive \
                     radius_km",
                    r.name
                ));
            }
            out.push(Rule {
                name: r.name.clone(),
                min_magnitude: r.min_magnitude,
                min_level,
                tsunami: r.tsunami,
                within: r.within,
            });
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.compiled_rules()?;
        if !(self.magnitude_step > 0.0 && self.magnitude_step.is_finite()) {
            return Err(format!(
                "magnitude_step = {}: must be a positive number",
                self.magnitude_step
            ));
        }
        for (n, url) in self.webhooks.iter().enumerate() {
            // Which one, without its secret path (a URL that does not parse is not shown).
            let shown = match crate::secret::webhook_url(url).as_str() {
                "<webhook>" => format!("{} (of {})", n + 1, self.webhooks.len()),
                host => host.to_string(),
            };
            let resolved =
                crate::secret::resolve(url).map_err(|e| format!("webhook {shown}: {e}"))?;
            let parsed = url::Url::parse(&resolved)
                .map_err(|e| format!("webhook {shown}: not a URL ({e})"))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(format!("webhook {shown}: only http and https URLs"));
            }
        }
        if self.webhook_attempts == 0 {
            return Err("webhook_attempts must be at least 1".into());
        }
        for topic in [&self.input, &self.output] {
            topic
                .parse::<crate::kafka::TopicName>()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
