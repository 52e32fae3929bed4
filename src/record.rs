//! The records quakestream writes to Kafka (docs/architecture.md), in one place.

use serde::{Deserialize, Serialize};

/// One revision of one earthquake (or other seismic event), as every source normalizes it.
/// Field names are part of the topic contract; times are RFC 3339 UTC with milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quake {
    /// The event's key: its logical id, stable across changes of the preferred id.
    pub id: String,
    /// Every id the event is known by (the preferred id first when the source says which).
    pub ids: Vec<String>,
    /// Which feed produced the record: `usgs`, `emsc`, …
    pub source: String,
    /// Origin time.
    pub time: String,
    /// When any product of the event last changed: the revision's version.
    pub updated: String,
    pub mag: Option<f64>,
    pub mag_type: Option<String>,
    pub place: Option<String>,
    pub lat: f64,
    pub lon: f64,
    /// Depth in km, positive down (negative above sea level).
    pub depth_km: f64,
    /// `automatic`, `reviewed` or `deleted`, lower case.
    pub status: String,
    pub tsunami: bool,
    /// PAGER level: `green`, `yellow`, `orange`, `red`.
    pub alert: Option<String>,
    pub sig: Option<i64>,
    pub felt: Option<i64>,
    pub cdi: Option<f64>,
    pub mmi: Option<f64>,
    pub net: String,
    pub code: String,
    pub event_type: String,
    pub title: String,
    pub url: String,
}

/// A record that could not be handled, with the reason and the raw input, on the dead-letter
/// topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    /// The component that gave up on it (`usgs`, `backfill`, …).
    pub source: String,
    /// Where the input came from: a topic, or a URL for polled sources.
    pub topic: Option<String>,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    /// The raw input, as text (lossy when it was not UTF-8).
    pub payload: String,
}

/// Epoch milliseconds as RFC 3339 UTC with milliseconds (`2024-01-15T10:30:00.000Z`).
pub fn format_millis(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Parses an RFC 3339 time into epoch milliseconds.
pub fn parse_millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_with_milliseconds() {
        let text = format_millis(1_746_366_018_110).unwrap();
        assert_eq!(text, "2025-05-04T13:40:18.110Z");
        assert_eq!(parse_millis(&text), Some(1_746_366_018_110));
        assert_eq!(format_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(i64::MAX), None);
        assert_eq!(parse_millis("yesterday"), None);
    }
}
