//! USGS GeoJSON (summary feeds and the FDSN event service) parsed and normalized to [`Quake`].
//!
//! The envelope is parsed first with each feature kept as raw JSON, then every feature on its
//! own: a feature that cannot be parsed becomes a [`Rejected`] with the reason and its raw text
//! (for the dead-letter topic) and the rest of the feed goes on. Strings are borrowed from the
//! input where they have no escapes, so a poll allocates little beyond the records it makes.
//!
//! Tolerated, as the feeds really send them (docs/DATA_FORMATS.md §1): integers where decimals
//! are expected, float32 noise, numbers written as strings (pre-2013 feeds), `null` in any
//! optional field, upper-case legacy status, `tsunami: null`, comma lists with leading and
//! trailing commas, a missing `bbox`, a JSONP wrapper.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, de};
use serde_json::value::RawValue;

use crate::record::{Checks, Millis, Quake};

/// The parts of a FeatureCollection's `metadata` quakestream uses.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// When the feed was generated (epoch ms).
    pub generated: Option<i64>,
    pub url: Option<String>,
    pub title: Option<String>,
    pub count: Option<u64>,
    pub status: Option<u16>,
    /// Present on FDSN errors requested with `jsonerror=true`.
    pub error: Option<String>,
}

/// A parsed response.
#[derive(Debug, Default)]
pub struct Parsed {
    pub metadata: Metadata,
    pub quakes: Vec<Quake>,
    pub rejected: Vec<Rejected>,
}

/// A feature that could not be normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: String,
    /// The feature's raw JSON.
    pub raw: String,
}

/// Why a whole response could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeedError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a GeoJSON FeatureCollection: {0}")]
    NotCollection(String),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(borrow)]
    features: Option<Vec<&'a RawValue>>,
}

/// The envelope read in one pass, every feature typed at once: the fast path.
#[derive(Deserialize)]
struct TypedEnvelope<'a> {
    #[serde(rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    metadata: Metadata,
    #[serde(borrow)]
    features: Option<Vec<Feature<'a>>>,
}

/// Parses a whole response body: a FeatureCollection, optionally wrapped as GeoJSONP.
///
/// A well-formed feed is read in one pass. Only when some feature fails is the body read again
/// feature by feature, so that the bad one can be set aside with its raw text and the rest kept.
pub fn parse_collection(body: &[u8], source: &str, checks: &Checks) -> Result<Parsed, FeedError> {
    let body = strip_jsonp(body);
    if let Some(parsed) = parse_fast(body, source, checks) {
        return Ok(parsed);
    }
    let text = std::str::from_utf8(body).map_err(|e| FeedError::NotJson(e.to_string()))?;
    let envelope: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| FeedError::NotJson(e.to_string()))?;
    if envelope.kind.as_deref() != Some("FeatureCollection") {
        return Err(FeedError::NotCollection(format!(
            "\"type\" is {:?}",
            envelope.kind.as_deref().unwrap_or("missing")
        )));
    }
    let features = envelope
        .features
        .ok_or_else(|| FeedError::NotCollection("no \"features\" array".into()))?;
    let mut parsed = Parsed {
        metadata: envelope.metadata,
        quakes: Vec::with_capacity(features.len()),
        rejected: Vec::new(),
    };
    for raw in features {
        match parse_feature(raw.get(), source, checks) {
            Ok(quake) => parsed.quakes.push(quake),
            Err(reason) => parsed.rejected.push(Rejected {
                reason,
                raw: raw.get().to_string(),
            }),
        }
    }
    Ok(parsed)
}

fn parse_fast(body: &[u8], source: &str, checks: &Checks) -> Option<Parsed> {
    // One UTF-8 check of the whole body is cheaper than serde_json's check of each string.
    let text = std::str::from_utf8(body).ok()?;
    let envelope: TypedEnvelope<'_> = serde_json::from_str(text).ok()?;
    if envelope.kind.as_deref() != Some("FeatureCollection") {
        return None;
    }
    let features = envelope.features?;
    let mut quakes = Vec::with_capacity(features.len());
    for feature in features {
        quakes.push(normalize(feature, source, checks).ok()?);
    }
    Some(Parsed {
        metadata: envelope.metadata,
        quakes,
        rejected: Vec::new(),
    })
}

fn strip_jsonp(body: &[u8]) -> &[u8] {
    let trimmed = body.trim_ascii();
    if let Some(rest) = trimmed.strip_prefix(b"eqfeed_callback(") {
        let rest = rest.trim_ascii_end();
        let rest = rest.strip_suffix(b";").unwrap_or(rest).trim_ascii_end();
        return rest.strip_suffix(b")").unwrap_or(rest);
    }
    body
}

#[derive(Deserialize)]
struct Feature<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    properties: Option<Properties<'a>>,
    geometry: Option<Geometry>,
}

#[derive(Deserialize)]
struct Geometry {
    coordinates: Option<Vec<Lenient>>,
}

/// Every property may be missing: a missing one reads as absent.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Properties<'a> {
    mag: Lenient,
    #[serde(borrow)]
    place: Option<Cow<'a, str>>,
    time: Lenient,
    updated: Lenient,
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
    felt: Lenient,
    cdi: Lenient,
    mmi: Lenient,
    #[serde(borrow)]
    alert: Option<Cow<'a, str>>,
    #[serde(borrow)]
    status: Option<Cow<'a, str>>,
    tsunami: Lenient,
    sig: Lenient,
    #[serde(borrow)]
    net: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ids: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "magType")]
    mag_type: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    title: Option<Cow<'a, str>>,
}

/// A number that may arrive as a JSON number, a numeric string, or null.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Lenient(Option<f64>);

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number, a numeric string or null")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v as f64)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lenient, E> {
                Ok(Lenient(Some(v as f64)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Lenient, E> {
                Ok(Lenient(Some(if v { 1.0 } else { 0.0 })))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Lenient, E> {
                let v = v.trim();
                if v.is_empty() {
                    return Ok(Lenient(None));
                }
                v.parse()
                    .map(|n| Lenient(Some(n)))
                    .map_err(|_| E::custom(format!("{v:?} is not a number")))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Lenient, E> {
                Ok(Lenient(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lenient, D::Error> {
                d.deserialize_any(V)
            }
        }
        d.deserialize_any(V)
    }
}

impl Lenient {
    fn finite(self, field: &str) -> Result<Option<f64>, String> {
        match self.0 {
            Some(v) if !v.is_finite() => Err(format!("{field} is not a finite number")),
            other => Ok(other),
        }
    }

    /// A whole number (epoch ms, counts); decimals are truncated, absurd values refused.
    fn integer(self, field: &str) -> Result<Option<i64>, String> {
        match self.finite(field)? {
            Some(v) if v.abs() < 9.0e15 => Ok(Some(v as i64)),
            Some(_) => Err(format!("{field} is out of range")),
            None => Ok(None),
        }
    }
}

/// Parses one feature and normalizes it. The error is the reason, for the dead-letter record.
pub fn parse_feature(raw: &str, source: &str, checks: &Checks) -> Result<Quake, String> {
    let feature: Feature<'_> =
        serde_json::from_str(raw).map_err(|e| format!("malformed feature: {e}"))?;
    normalize(feature, source, checks)
}

fn normalize(feature: Feature<'_>, source: &str, checks: &Checks) -> Result<Quake, String> {
    let id = feature
        .id
        .filter(|id| !id.trim().is_empty())
        .ok_or("feature has no id")?;
    let id = id.trim();
    let p = feature.properties.ok_or("feature has no properties")?;
    let coords = feature
        .geometry
        .and_then(|g| g.coordinates)
        .ok_or("feature has no geometry coordinates")?;
    let (lon, lat, depth) = match coords.as_slice() {
        [lon, lat] => (lon.0, lat.0, Some(0.0)),
        [lon, lat, depth, ..] => (lon.0, lat.0, depth.0),
        _ => return Err("geometry coordinates need longitude and latitude".into()),
    };
    let lon = lon.ok_or("longitude is null")?;
    let lat = lat.ok_or("latitude is null")?;
    let depth_km = match depth {
        Some(d) if d.is_finite() => d,
        Some(_) => return Err("depth is not a finite number".into()),
        None => 0.0,
    };

    let time_ms = p.time.integer("time")?.ok_or("time is missing")?;
    let updated_ms = p.updated.integer("updated")?.unwrap_or(time_ms);
    let (time, updated) = (Millis(time_ms), Millis(updated_ms));

    let mut ids: Vec<String> = Vec::new();
    ids.push(id.to_string());
    if let Some(list) = &p.ids {
        for alias in list.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            if !ids.iter().any(|known| known == alias) {
                ids.push(alias.to_string());
            }
        }
    }

    let status = p
        .status
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("automatic")
        .to_ascii_lowercase();
    let event_type = p
        .event_type
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|t| match t.to_ascii_lowercase().as_str() {
            "quarry" | "quarry_blast" => "quarry blast".to_string(),
            other => other.replace('_', " "),
        })
        .unwrap_or_else(|| "earthquake".into());
    let mag = p.mag.finite("mag")?;
    let (net, code) = (
        p.net.as_deref().unwrap_or_default().trim().to_string(),
        p.code.as_deref().unwrap_or_default().trim().to_string(),
    );
    let place = non_empty(p.place);
    let title = match non_empty(p.title) {
        Some(title) => title,
        None => format!(
            "M {} - {}",
            mag.map_or("?".to_string(), |m| format!("{m:.1}")),
            place.as_deref().unwrap_or("unknown place")
        ),
    };
    let url = non_empty(p.url)
        .unwrap_or_else(|| format!("https://earthquake.usgs.gov/earthquakes/eventpage/{id}"));

    let quake = Quake {
        id: id.to_string(),
        ids,
        source: source.to_string(),
        time,
        updated,
        mag,
        mag_type: non_empty(p.mag_type),
        place,
        lat,
        lon,
        depth_km,
        status,
        tsunami: p.tsunami.finite("tsunami")?.is_some_and(|t| t != 0.0),
        alert: non_empty(p.alert).map(|a| a.to_ascii_lowercase()),
        sig: p.sig.integer("sig")?,
        felt: p.felt.integer("felt")?,
        cdi: p.cdi.finite("cdi")?,
        mmi: p.mmi.finite("mmi")?,
        net,
        code,
        event_type,
        title,
        url,
    };
    quake.check(checks)?;
    Ok(quake)
}

fn non_empty(text: Option<Cow<'_, str>>) -> Option<String> {
    text.map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/fixtures/usgs/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn every_fixture_feature_normalizes() {
        for name in [
            "2.5_week_2023-07-03T2117Z.geojson",
            "4.5_day_2017-11-29T2001Z.geojson",
            "all_month_2018-09-22_EXCERPT_3features_nullmag.geojson",
            "significant_month_2023-10-11T2016Z.geojson",
            "revision_sequence_2025-05-04/all_week_2025-05-04T135310Z.json",
            "revision_sequence_2025-05-04/significant_hour_2025-05-04T135345Z.json",
        ] {
            let body = fixture(name);
            let parsed = parse_collection(&body, "usgs", &Checks::default()).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let features = json["features"].as_array().unwrap();
            assert!(parsed.rejected.is_empty(), "{name}: {:?}", parsed.rejected);
            assert_eq!(parsed.quakes.len(), features.len(), "{name}");
            for (q, f) in parsed.quakes.iter().zip(features) {
                let p = &f["properties"];
                assert_eq!(q.id, f["id"].as_str().unwrap());
                assert_eq!(q.mag, p["mag"].as_f64());
                assert_eq!(q.lon, f["geometry"]["coordinates"][0].as_f64().unwrap());
                assert_eq!(q.lat, f["geometry"]["coordinates"][1].as_f64().unwrap());
                assert_eq!(
                    q.depth_km,
                    f["geometry"]["coordinates"][2].as_f64().unwrap()
                );
                assert_eq!(q.felt, p["felt"].as_i64());
                assert_eq!(q.sig, p["sig"].as_i64());
                assert_eq!(q.tsunami, p["tsunami"].as_i64() == Some(1));
                assert_eq!(q.title, p["title"].as_str().unwrap());
                assert_eq!(Some(q.time.0), p["time"].as_i64(), "{name} {}", q.id);
                assert!(q.ids.contains(&q.id));
                let listed: Vec<&str> = p["ids"]
                    .as_str()
                    .unwrap()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .collect();
                for alias in listed {
                    assert!(q.ids.iter().any(|i| i == alias), "{alias} in {:?}", q.ids);
                }
            }
        }
    }

    #[test]
    fn null_magnitude_keeps_the_event() {
        let parsed = parse_collection(
            &fixture("all_month_2018-09-22_EXCERPT_3features_nullmag.geojson"),
            "usgs",
            &Checks::default(),
        )
        .unwrap();
        let q = parsed.quakes.iter().find(|q| q.mag.is_none()).unwrap();
        assert_eq!(q.mag_type, None);
        assert!(q.title.starts_with("M ?"), "{}", q.title);
    }

    #[test]
    fn legacy_and_odd_values_are_tolerated() {
        let feature = r#"{"type":"Feature","id":"nc123",
          "properties":{"mag":"2.5","place":"  ","time":1400000000000,"updated":1400000000123.0,
            "tz":-480,"status":"REVIEWED","tsunami":null,"sig":"96","ids":",nc123,,us1,",
            "type":"quarry_blast","felt":null,"cdi":3,"magType":"Md","alert":"GREEN"},
          "geometry":{"type":"Point","coordinates":[-122.1,37.5,-1.5]}}"#;
        let q = parse_feature(feature, "usgs", &Checks::default()).unwrap();
        assert_eq!(q.mag, Some(2.5));
        assert_eq!(q.place, None);
        assert_eq!(q.status, "reviewed");
        assert!(!q.tsunami);
        assert_eq!(q.sig, Some(96));
        assert_eq!(q.ids, ["nc123", "us1"]);
        assert_eq!(q.event_type, "quarry blast");
        assert_eq!(q.cdi, Some(3.0));
        assert_eq!(q.alert.as_deref(), Some("green"));
        assert_eq!(q.depth_km, -1.5);
        assert_eq!(q.updated.to_string(), "2014-05-13T16:53:20.123Z");
        assert_eq!(q.title, "M 2.5 - unknown place");
        assert_eq!(
            q.url,
            "https://earthquake.usgs.gov/earthquakes/eventpage/nc123"
        );
    }

    #[test]
    fn a_bad_feature_is_rejected_alone_with_its_reason() {
        let good =
            r#"{"id":"a1","properties":{"time":1,"updated":2},"geometry":{"coordinates":[1,2,3]}}"#;
        let cases = [
            (
                r#"{"properties":{"time":1},"geometry":{"coordinates":[1,2,3]}}"#,
                "no id",
            ),
            (
                r#"{"id":"x","properties":{"time":1},"geometry":{"coordinates":[1]}}"#,
                "longitude and latitude",
            ),
            (
                r#"{"id":"x","properties":{"time":1},"geometry":{"coordinates":[200,2,3]}}"#,
                "longitude 200",
            ),
            (
                r#"{"id":"x","properties":{"time":1},"geometry":{"coordinates":[1,95,3]}}"#,
                "latitude 95",
            ),
            (
                r#"{"id":"x","properties":{},"geometry":{"coordinates":[1,2,3]}}"#,
                "time is missing",
            ),
            (
                r#"{"id":"x","properties":{"time":1,"mag":"big"},"geometry":{"coordinates":[1,2,3]}}"#,
                "not a number",
            ),
            (
                r#"{"id":"x","properties":{"time":1e300},"geometry":{"coordinates":[1,2,3]}}"#,
                "out of range",
            ),
            (r#"{"id":"x","properties":{"time":1}}"#, "no geometry"),
            (
                r#"{"id":7,"properties":{"time":1},"geometry":{"coordinates":[1,2,3]}}"#,
                "malformed",
            ),
            (r#"[1,2]"#, "malformed"),
        ];
        for (bad, reason) in cases {
            let body = format!(
                r#"{{"type":"FeatureCollection","metadata":{{"generated":5}},"features":[{good},{bad},{good}]}}"#
            );
            let parsed = parse_collection(body.as_bytes(), "usgs", &Checks::default()).unwrap();
            assert_eq!(parsed.quakes.len(), 2, "{bad}");
            assert_eq!(parsed.rejected.len(), 1, "{bad}");
            assert!(
                parsed.rejected[0].reason.contains(reason),
                "{bad}: {}",
                parsed.rejected[0].reason
            );
            assert_eq!(parsed.rejected[0].raw, bad);
            assert_eq!(parsed.metadata.generated, Some(5));
        }
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"<html><body>503 Service Unavailable</body></html>",
            b"{\"type\":\"FeatureCollection\",\"features\":[{\"id\":",
            b"{\"type\":\"Feature\"}",
            b"{\"type\":\"FeatureCollection\"}",
            b"\xff\xfe\x00garbage",
            b"null",
        ] {
            assert!(
                parse_collection(body, "usgs", &Checks::default()).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let empty =
            br#"{"type":"FeatureCollection","metadata":{"generated":1,"count":0},"features":[]}"#;
        assert!(
            parse_collection(empty, "usgs", &Checks::default())
                .unwrap()
                .quakes
                .is_empty()
        );
        let jsonp = br#"eqfeed_callback({"type":"FeatureCollection","features":[]});"#;
        assert!(parse_collection(jsonp, "usgs", &Checks::default()).is_ok());
    }
}

#[cfg(test)]
mod hostile {
    use proptest::prelude::*;

    use super::*;

    fn feed() -> Vec<u8> {
        std::fs::read(format!(
            "{}/fixtures/usgs/significant_month_2023-10-11T2016Z.geojson",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Arbitrary bytes: an error or a feed, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_collection(&body, "usgs", &Checks::default());
        }

        /// A real feed cut short or with bytes overwritten: never a panic, and whatever is read
        /// accounts for every feature it saw (kept or set aside).
        #[test]
        fn damaged_feeds_never_panic(cut in 0usize..14_066, at in 0usize..14_066, byte in any::<u8>()) {
            let mut body = feed();
            let at = at % body.len();
            body[at] = byte;
            body.truncate(cut.max(1));
            if let Ok(parsed) = parse_collection(&body, "usgs", &Checks::default()) {
                prop_assert!(parsed.quakes.len() + parsed.rejected.len() <= 18);
                for q in &parsed.quakes {
                    prop_assert!((-90.0..=90.0).contains(&q.lat) && (-180.0..=180.0).contains(&q.lon));
                }
            }
        }
    }
}
