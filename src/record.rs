//! The records quakestream writes to Kafka (docs/architecture.md), in one place.

use serde::{Deserialize, Serialize};

/// One revision of one earthquake (or other seismic event), as every source normalizes it.
/// Field names are part of the topic contract; times are RFC 3339 UTC with milliseconds on
/// the topic and [`Millis`] in the process, parsed once when the record is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quake {
    /// The event's key: its logical id, stable across changes of the preferred id.
    pub id: String,
    /// Every id the event is known by (the preferred id first when the source says which).
    pub ids: Vec<String>,
    /// Which feed produced the record: `usgs`, `emsc`, …
    pub source: String,
    /// Origin time.
    pub time: Millis,
    /// When any product of the event last changed: the revision's version.
    pub updated: Millis,
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

/// The ranges a quake record must fall within; anything outside is refused with its reason.
/// Latitude, longitude and depth as the USGS and FDSN formats document them; magnitudes as
/// seen on real scales (the smallest reported are about −2, the largest ever 9.5).
pub const LAT_RANGE: std::ops::RangeInclusive<f64> = -90.0..=90.0;
pub const LON_RANGE: std::ops::RangeInclusive<f64> = -180.0..=180.0;
pub const DEPTH_KM_RANGE: std::ops::RangeInclusive<f64> = -100.0..=1000.0;
pub const MAG_RANGE: std::ops::RangeInclusive<f64> = -3.0..=10.0;
/// The longest text field taken, in bytes (real places and titles are under 200).
pub const MAX_TEXT_BYTES: usize = 4096;
/// No instrumental record is older than 1900-01-01T00:00:00Z.
pub const EARLIEST: Millis = Millis(-2_208_988_800_000);

/// The checks on input that depend on settings (`[checks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Checks {
    /// How far ahead of this machine's clock an event time may be: a record dated later is
    /// refused (dead-lettered with its reason), and no window's watermark passes the clock plus
    /// this. Covers a clock that is a little behind; no real event is in the future.
    #[serde(with = "crate::config::duration")]
    pub future_tolerance: std::time::Duration,
}

impl Default for Checks {
    fn default() -> Checks {
        Checks {
            future_tolerance: std::time::Duration::from_secs(3600),
        }
    }
}

impl Checks {
    /// The latest event time taken now: the clock plus the tolerance.
    pub fn latest(&self) -> Millis {
        let tolerance = i64::try_from(self.future_tolerance.as_millis()).unwrap_or(i64::MAX);
        Millis(Millis::now().0.saturating_add(tolerance))
    }

    /// Why `time` (of the field `name`) is ahead of what is taken now, if it is.
    pub fn ahead(&self, name: &str, time: Millis) -> Option<String> {
        (time > self.latest()).then(|| {
            format!(
                "{name} {time} is more than {} ahead of the clock ([checks] future_tolerance)",
                humantime::format_duration(self.future_tolerance)
            )
        })
    }
}

impl Quake {
    /// Position, depth, magnitude and times within their ranges ([`LAT_RANGE`] …): times not
    /// before 1900 and not ahead of the clock by more than `checks.future_tolerance`. The one
    /// plausibility check every source and every reader of quakes applies; the error is the
    /// reason for the dead letter.
    pub fn check(&self, checks: &Checks) -> std::result::Result<(), String> {
        // `contains` is false for NaN, so these also refuse non-finite numbers.
        if !LAT_RANGE.contains(&self.lat) {
            return Err(format!("latitude {} is outside [-90, 90]", short(self.lat)));
        }
        if !LON_RANGE.contains(&self.lon) {
            return Err(format!(
                "longitude {} is outside [-180, 180]",
                short(self.lon)
            ));
        }
        if !DEPTH_KM_RANGE.contains(&self.depth_km) {
            return Err(format!(
                "depth {} km is outside [-100, 1000]",
                short(self.depth_km)
            ));
        }
        if let Some(mag) = self.mag
            && !MAG_RANGE.contains(&mag)
        {
            return Err(format!("magnitude {} is outside [-3, 10]", short(mag)));
        }
        let texts = [
            ("id", Some(&self.id)),
            ("source", Some(&self.source)),
            ("mag_type", self.mag_type.as_ref()),
            ("place", self.place.as_ref()),
            ("status", Some(&self.status)),
            ("alert", self.alert.as_ref()),
            ("net", Some(&self.net)),
            ("code", Some(&self.code)),
            ("event_type", Some(&self.event_type)),
            ("title", Some(&self.title)),
            ("url", Some(&self.url)),
        ];
        let ids = self.ids.iter().map(|id| ("ids", Some(id)));
        for (name, text) in texts.into_iter().chain(ids) {
            let Some(text) = text else { continue };
            if text.len() > MAX_TEXT_BYTES {
                return Err(format!(
                    "{name} is {} bytes long, more than {MAX_TEXT_BYTES}",
                    text.len()
                ));
            }
            if text.contains('\0') {
                return Err(format!("{name} contains a NUL character"));
            }
        }
        for (name, t) in [("time", self.time), ("updated", self.updated)] {
            if t < EARLIEST {
                return Err(format!("{name} {t} is before 1900"));
            }
            if t.rfc3339().is_none() {
                return Err(format!("{name} {t} is out of range"));
            }
            if let Some(reason) = checks.ahead(name, t) {
                return Err(reason);
            }
        }
        Ok(())
    }
}

/// A number as a reason shows it: `1e308`, not 309 digits.
fn short(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e9 {
        format!("{x:e}")
    } else {
        x.to_string()
    }
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

/// A point in time as epoch milliseconds. On the wire it is RFC 3339 UTC with milliseconds
/// (`2024-01-15T10:30:00.000Z`); any RFC 3339 offset is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    /// The time in RFC 3339, or `None` outside chrono's range.
    pub fn rfc3339(self) -> Option<String> {
        format_millis(self.0)
    }

    pub fn now() -> Millis {
        Millis(chrono::Utc::now().timestamp_millis())
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.rfc3339() {
            Some(text) => f.write_str(&text),
            None => write!(f, "{} ms", self.0),
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            Some(text) => serializer.serialize_str(&text),
            None => Err(serde::ser::Error::custom(format!(
                "{} ms is outside the range of RFC 3339 times",
                self.0
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Millis, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        parse_millis(&text)
            .map(Millis)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time")))
    }
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

    fn quake() -> Quake {
        serde_json::from_str(
            r#"{"id":"us1","ids":["us1"],"source":"usgs","time":"2025-05-04T13:40:18.110Z",
            "updated":"2025-05-04T13:40:18.110Z","mag":4.5,"mag_type":"mb","place":null,
            "lat":10.0,"lon":20.0,"depth_km":10.0,"status":"reviewed","tsunami":false,
            "alert":null,"sig":null,"felt":null,"cdi":null,"mmi":null,"net":"us","code":"1",
            "event_type":"earthquake","title":"M 4.5","url":""}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_quake_outside_the_ranges_is_refused_with_its_reason() {
        let checks = Checks::default();
        assert_eq!(quake().check(&checks), Ok(()));
        let refused = |change: fn(&mut Quake)| {
            let mut q = quake();
            change(&mut q);
            q.check(&Checks::default()).unwrap_err()
        };
        assert!(refused(|q| q.lat = 200.0).contains("latitude 200"));
        assert!(refused(|q| q.lat = f64::NAN).contains("latitude NaN"));
        assert!(refused(|q| q.lon = -180.5).contains("longitude -180.5"));
        assert!(refused(|q| q.depth_km = 6371.0).contains("depth 6371"));
        assert!(refused(|q| q.mag = Some(1e308)).contains("magnitude 1e308"));
        assert!(refused(|q| q.mag = Some(f64::INFINITY)).contains("magnitude inf"));
        assert!(refused(|q| q.time = Millis(EARLIEST.0 - 1)).contains("before 1900"));
        // 2100-01-01: far ahead of any clock.
        let future = refused(|q| q.time = Millis(4_102_444_800_000));
        assert!(
            future.contains("time 2100-01-01T00:00:00.000Z is more than 1h ahead of the clock"),
            "{future}"
        );
        assert!(refused(|q| q.updated = Millis(i64::MAX)).contains("updated"));
        assert!(refused(|q| q.place = Some("x\0y".into())).contains("place contains a NUL"));
        let long = refused(|q| q.place = Some("x".repeat(100_000)));
        assert!(long.contains("place is 100000 bytes long"), "{long}");
        assert!(refused(|q| q.ids.push("\0".into())).contains("ids contains a NUL"));
        let mut q = quake();
        q.mag = None;
        q.depth_km = -3.41;
        q.lon = 180.0;
        assert_eq!(q.check(&checks), Ok(()));
        // Within the tolerance: a clock a little behind still takes a fresh event.
        q.time = Millis(Millis::now().0 + 60_000);
        assert_eq!(q.check(&checks), Ok(()));
        let strict = Checks {
            future_tolerance: std::time::Duration::ZERO,
        };
        assert!(q.check(&strict).is_err());
    }

    #[test]
    fn millis_travel_as_rfc3339_and_read_any_offset() {
        let text = serde_json::to_string(&Millis(1_746_366_018_110)).unwrap();
        assert_eq!(text, "\"2025-05-04T13:40:18.110Z\"");
        let read: Millis = serde_json::from_str("\"2025-05-04T15:40:18.11+02:00\"").unwrap();
        assert_eq!(read, Millis(1_746_366_018_110));
        let err = serde_json::from_str::<Millis>("\"yesterday\"").unwrap_err();
        assert!(err.to_string().contains("not an RFC 3339 time"), "{err}");
        assert!(serde_json::from_str::<Millis>("1746366018110").is_err());
        assert!(serde_json::to_string(&Millis(i64::MAX)).is_err());
    }

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
