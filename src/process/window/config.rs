//! `[window]`: what the window processor reads, how it windows, what it computes.

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{AggOp, Extractor, Layout, Spec};
use crate::config::duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowConfig {
    /// Run the window processor under `up`.
    pub enabled: bool,
    /// Topic of JSON records to window.
    pub input: String,
    /// Topic the `WindowResult` records go to.
    pub output: String,
    /// Consumer group; also names the repartition topic (`<group_id>-repartition`) and the
    /// state directory (`<data_dir>/state/<group_id>`). Processes with the same group share the
    /// work.
    pub group_id: String,
    /// This process's static member id in the group (`group.instance.id`). Unset: derived from
    /// the host name and the data directory, so a restarted process takes its old place at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Field holding the event time: RFC 3339 text or epoch milliseconds.
    pub time_field: String,
    /// Field that identifies a record across its versions. Unset: the Kafka message key (the
    /// quake topics are keyed by the event's logical id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_field: Option<String>,
    /// Field whose larger value marks a newer version of a record (a number or an RFC 3339
    /// time). Empty: a later message replaces an earlier one.
    pub version_field: String,
    /// Window length.
    #[serde(with = "duration")]
    pub size: Duration,
    /// Hopping windows: a new window starts every `slide`. Unset: tumbling windows.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub slide: Option<Duration>,
    /// How far behind the largest event time seen a record may arrive and still count. Windows
    /// close (a final result is written) when the largest event time passes their end by this
    /// (with several input partitions, the largest each has seen, taking the one furthest
    /// behind among those not idle).
    #[serde(with = "duration")]
    pub lateness: Duration,
    /// An input partition with no new record for this long (once caught up) stops holding the
    /// watermark back: the watermark follows the partitions that are still receiving.
    #[serde(with = "duration")]
    pub idle_after: Duration,
    /// When no change has reached a window processor for this long, every window it holds
    /// open closes and its final result is written, however far the lateness would have kept
    /// it open. For finite inputs (a replayed file) whose last windows would otherwise wait for
    /// events that never come. A record that arrives afterwards for a closed window is late.
    /// Unset: windows close only as event time passes them.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub close_after_idle: Option<Duration>,
    /// At most one update per window (and group) per this interval; `0s` writes every change.
    #[serde(with = "duration")]
    pub emit_interval: Duration,
    /// Fields to group by within a window (none: one result per window).
    pub group_by: Vec<String>,
    /// What to compute for each window (and group).
    pub aggregates: Vec<AggregateConfig>,
    /// Print every emission as a table on standard output, like Spark's console sink.
    pub console: bool,
}

/// One aggregate: `{ name = "avg_mag", op = "avg", field = "mag" }`. `count` needs no field
/// (it counts records); with one it counts non-null values. Null values are skipped by the
/// others, and an aggregate over no values is null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub name: String,
    pub op: AggOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Default for WindowConfig {
    /// The course's exercise: per 5-minute window, count, average and maximum magnitude.
    fn default() -> Self {
        let agg = |name: &str, op, field: Option<&str>| AggregateConfig {
            name: name.into(),
            op,
            field: field.map(Into::into),
        };
        WindowConfig {
            enabled: true,
            input: "earthquakes".into(),
            output: "earthquake-stats".into(),
            group_id: "quakestream-window".into(),
            instance_id: None,
            time_field: "time".into(),
            key_field: None,
            version_field: "updated".into(),
            size: Duration::from_secs(300),
            slide: None,
            lateness: Duration::from_secs(2 * 3600),
            idle_after: Duration::from_secs(30),
            close_after_idle: None,
            emit_interval: Duration::from_secs(5),
            group_by: Vec::new(),
            aggregates: vec![
                agg("count", AggOp::Count, None),
                agg("avg_mag", AggOp::Avg, Some("mag")),
                agg("max_mag", AggOp::Max, Some("mag")),
            ],
            console: false,
        }
    }
}

impl WindowConfig {
    pub fn spec(&self) -> Result<Spec, String> {
        Spec::new(self.size, self.slide, self.lateness)
    }

    pub fn layout(&self) -> Result<Layout, String> {
        let aggregates: Vec<(String, AggOp, Option<String>)> = self
            .aggregates
            .iter()
            .map(|a| (a.name.clone(), a.op, a.field.clone()))
            .collect();
        Layout::new(&self.group_by, &aggregates)
    }

    pub fn extractor(&self) -> Result<Extractor, String> {
        if self.time_field.is_empty() {
            return Err("time_field must name the event-time field".into());
        }
        Ok(Extractor {
            layout: Arc::new(self.layout()?),
            time_field: self.time_field.clone(),
            key_field: self.key_field.clone().filter(|k| !k.is_empty()),
            version_field: Some(self.version_field.clone()).filter(|v| !v.is_empty()),
            ahead: i64::MAX,
        })
    }

    pub fn repartition_topic(&self) -> String {
        format!("{}-repartition", self.group_id)
    }

    pub fn validate(&self) -> Result<(), String> {
        self.spec()?;
        self.extractor()?;
        if self.close_after_idle.is_some_and(|d| d.is_zero()) {
            return Err(
                "close_after_idle must be longer than 0s (unset it to keep windows open \
                        until event time passes them)"
                    .into(),
            );
        }
        for topic in [&self.input, &self.output, &self.repartition_topic()] {
            topic
                .parse::<crate::kafka::TopicName>()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
