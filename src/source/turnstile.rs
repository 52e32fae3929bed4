//! The `turnstile` source: subway turnstile counts to `mta-turnstile`, as the MTA tutorial's
//! producer sends them, in one of two modes.
//!
//! - `replay`: an MTA weekly turnstile file (CSV). Its `ENTRIES`/`EXITS` are cumulative register
//!   readings per turnstile (C/A, UNIT, SCP, STATION); each message is the interval between two
//!   readings of one turnstile, with the counts turned into deltas. A counter that runs
//!   backwards (a reset or a replaced register) or jumps by more than `max_delta` (a wrap, a
//!   misread) gives 0 for that interval, and is counted. `RECOVR AUD` rows (recovered audits)
//!   are readings like any other; a second reading at the same time is dropped. The pandas
//!   index column some copies carry and the trailing spaces of MTA's header are tolerated.
//! - `synthetic`: the tutorial's generated messages, one every `interval`.
//!
//! Delivery semantics (replay): each interval is published once. Messages carry their
//! turnstile and time in a header, read back at start, so a restart publishes only what is
//! missing. Rows that cannot be read go to the dead-letter topic with the reason.

use std::{
    collections::{BTreeMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use chrono::{FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{SourceSettings, outlet::Outlet};
use crate::{
    config::duration,
    error::{Error, Result},
    kafka::TopicName,
    metrics::{Counter, SourceMetrics},
    record::format_millis,
    runtime::{About, Context},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Replay,
    Synthetic,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnstileConfig {
    /// Whether `up` runs this source.
    pub enabled: bool,
    /// `replay` (an MTA turnstile file) or `synthetic` (the tutorial's generated messages).
    pub mode: Mode,
    /// The MTA weekly file to replay (`turnstile_YYMMDD.txt`, CSV).
    pub file: PathBuf,
    /// The offset of the file's local times from UTC (New York: `-04:00` in summer, `-05:00`
    /// in winter; one week never spans both changes' usual dates... but check yours).
    pub utc_offset: String,
    /// An interval whose count exceeds this is taken for a counter jump and gives 0.
    pub max_delta: i64,
    /// Time between synthetic messages.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Synthetic messages to send before stopping (0: until Ctrl+C).
    pub count: u64,
    /// Topic to write.
    pub topic: String,
}

impl Default for TurnstileConfig {
    fn default() -> Self {
        TurnstileConfig {
            enabled: false,
            mode: Mode::Replay,
            file: PathBuf::new(),
            utc_offset: "-04:00".into(),
            max_delta: 10_000,
            interval: Duration::from_secs(10),
            count: 0,
            topic: "mta-turnstile".into(),
        }
    }
}

impl TurnstileConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.offset()?;
        if self.mode == Mode::Replay && self.file.as_os_str().is_empty() {
            return Err(
                "[turnstile]: mode = \"replay\" needs file = \"turnstile_YYMMDD.txt\"".into(),
            );
        }
        if self.max_delta < 1 {
            return Err("[turnstile]: max_delta must be at least 1".into());
        }
        if self.interval < Duration::from_millis(10) {
            return Err("[turnstile]: interval must be at least 10ms".into());
        }
        self.topic
            .parse::<TopicName>()
            .map_err(|e| format!("[turnstile]: {e}"))?;
        Ok(())
    }

    fn offset(&self) -> std::result::Result<FixedOffset, String> {
        let bad = || {
            format!(
                "[turnstile]: utc_offset = {:?}: expected +HH:MM or -HH:MM",
                self.utc_offset
            )
        };
        let text = self.utc_offset.trim();
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, &text[1..]),
            Some(b'-') => (-1, &text[1..]),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 14 || m > 59 {
            return Err(bad());
        }
        FixedOffset::east_opt(sign * (h * 3600 + m * 60)).ok_or_else(bad)
    }
}

/// One turnstile interval, as published.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub struct Interval {
    pub ca: String,
    pub unit: String,
    pub scp: String,
    pub station: String,
    pub linename: String,
    pub division: String,
    /// The reading that ends the interval, as MTA wrote it (`MM/DD/YYYY`, `HH:MM:SS` local).
    pub date: String,
    pub time: String,
    pub desc: String,
    pub entries: i64,
    pub exits: i64,
    /// The turnstile: `C/A|UNIT|SCP|STATION` (the Kafka key).
    pub id: String,
    /// The end of the interval, RFC 3339 UTC (the event time).
    pub timestamp: String,
    /// The start of the interval (the previous reading), RFC 3339 UTC.
    pub interval_start: String,
    /// Whether a count was clamped to 0 (a reset, a backwards run or a jump).
    pub clamped: bool,
    /// This interval: `<id>@<timestamp>` (what a window processor keys records by, since
    /// every interval of a turnstile is a record of its own).
    pub interval_id: String,
}

/// What replaying a file found, besides the intervals.
#[derive(Debug, Default)]
pub struct Counts {
    pub rows: Counter,
    /// First readings of a turnstile (no interval ends there).
    pub first: Counter,
    /// Readings at a time already read for the turnstile.
    pub repeated: Counter,
    pub recovered_audits: Counter,
    /// Counts that ran backwards (resets), clamped to 0.
    pub backwards: Counter,
    /// Counts above `max_delta` (jumps, wraps), clamped to 0.
    pub jumps: Counter,
}

/// A row that could not be read: (line number, reason, the row as text).
pub type BadRow = (u64, String, String);

const COLUMNS: [&str; 11] = [
    "C/A", "UNIT", "SCP", "STATION", "LINENAME", "DIVISION", "DATE", "TIME", "DESC", "ENTRIES",
    "EXITS",
];

struct Reading {
    at: NaiveDateTime,
    fields: [String; 11],
    entries: i64,
    exits: i64,
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%m/%d/%Y")
        .or_else(|_| NaiveDate::parse_from_str(text, "%m-%d-%y"))
        .ok()
}

/// Turns an MTA turnstile file into intervals (in file order of their end reading, per
/// turnstile in time order), with the rows that could not be read.
pub fn intervals(
    csv_bytes: &[u8],
    config: &TurnstileConfig,
    counts: &Counts,
) -> std::result::Result<(Vec<Interval>, Vec<BadRow>), String> {
    let offset = config.offset()?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(csv_bytes);
    let header = reader
        .byte_headers()
        .map_err(|e| format!("not a turnstile file: {e}"))?
        .clone();
    let names: Vec<String> = header
        .iter()
        .map(|h| String::from_utf8_lossy(h).trim().to_ascii_uppercase())
        .collect();
    let mut index = [0usize; 11];
    for (i, column) in COLUMNS.iter().enumerate() {
        index[i] = names.iter().position(|n| n == column).ok_or_else(|| {
            format!(
                "not an MTA turnstile file: no {column} column (header: {})",
                names.join(",")
            )
        })?;
    }

    // Readings per turnstile, ordered by time (a repeat of a time keeps the first).
    let mut turnstiles: BTreeMap<String, BTreeMap<NaiveDateTime, Reading>> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut order = Vec::new();
    for (n, row) in reader.byte_records().enumerate() {
        let line = n as u64 + 2;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                bad.push((line, format!("unreadable row: {e}"), String::new()));
                continue;
            }
        };
        counts.rows.inc();
        let raw = || {
            row.iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut fields: [String; 11] = Default::default();
        let mut failed = None;
        for (i, column) in COLUMNS.iter().enumerate() {
            match row.get(index[i]).map(std::str::from_utf8) {
                Some(Ok(v)) => fields[i] = v.trim().to_string(),
                Some(Err(_)) => failed = Some(format!("{column} is not UTF-8")),
                None => failed = Some(format!("{column} is missing")),
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some(why) = failed {
            bad.push((line, why, raw()));
            continue;
        }
        let Some(date) = parse_date(&fields[6]) else {
            bad.push((
                line,
                format!("DATE {:?} is not MM/DD/YYYY", fields[6]),
                raw(),
            ));
            continue;
        };
        let Ok(time) = NaiveTime::parse_from_str(&fields[7], "%H:%M:%S") else {
            bad.push((line, format!("TIME {:?} is not HH:MM:SS", fields[7]), raw()));
            continue;
        };
        let (Ok(entries), Ok(exits)) = (fields[9].parse::<i64>(), fields[10].parse::<i64>()) else {
            bad.push((
                line,
                format!(
                    "ENTRIES {:?} or EXITS {:?} is not a counter",
                    fields[9], fields[10]
                ),
                raw(),
            ));
            continue;
        };
        if entries < 0 || exits < 0 {
            bad.push((line, "a counter is negative".into(), raw()));
            continue;
        }
        if fields[8] == "RECOVR AUD" {
            counts.recovered_audits.inc();
        }
        let key = format!("{}|{}|{}|{}", fields[0], fields[1], fields[2], fields[3]);
        let at = date.and_time(time);
        let readings = turnstiles.entry(key.clone()).or_default();
        if readings.contains_key(&at) {
            counts.repeated.inc();
            continue;
        }
        readings.insert(
            at,
            Reading {
                at,
                fields,
                entries,
                exits,
            },
        );
        order.push((key, at));
    }

    let utc = |at: &NaiveDateTime| {
        offset
            .from_local_datetime(at)
            .single()
            .and_then(|t| format_millis(t.timestamp_millis()))
            .unwrap_or_default()
    };
    let clamp = |delta: i64| -> (i64, bool) {
        if delta < 0 {
            counts.backwards.inc();
            (0, true)
        } else if delta > config.max_delta {
            counts.jumps.inc();
            (0, true)
        } else {
            (delta, false)
        }
    };
    let mut out = Vec::new();
    for (key, readings) in &turnstiles {
        let mut previous: Option<&Reading> = None;
        for reading in readings.values() {
            let Some(prev) = previous else {
                counts.first.inc();
                previous = Some(reading);
                continue;
            };
            let (entries, ce) = clamp(reading.entries - prev.entries);
            let (exits, cx) = clamp(reading.exits - prev.exits);
            let f = &reading.fields;
            let timestamp = utc(&reading.at);
            out.push(Interval {
                interval_id: format!("{key}@{timestamp}"),
                ca: f[0].clone(),
                unit: f[1].clone(),
                scp: f[2].clone(),
                station: f[3].clone(),
                linename: f[4].clone(),
                division: f[5].clone(),
                date: f[6].clone(),
                time: f[7].clone(),
                desc: f[8].clone(),
                entries,
                exits,
                id: key.clone(),
                timestamp,
                interval_start: utc(&prev.at),
                clamped: ce || cx,
            });
            previous = Some(reading);
        }
    }
    // File order of the readings that end each interval, so a replay reads like the file.
    let position: std::collections::HashMap<(&str, NaiveDateTime), usize> = order
        .iter()
        .enumerate()
        .map(|(i, (k, at))| ((k.as_str(), *at), i))
        .collect();
    let end_of = |i: &Interval| {
        let at =
            NaiveDateTime::parse_from_str(&format!("{} {}", i.date, i.time), "%m/%d/%Y %H:%M:%S")
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(
                        &format!("{} {}", i.date, i.time),
                        "%m-%d-%y %H:%M:%S",
                    )
                })
                .ok();
        at.and_then(|at| position.get(&(i.id.as_str(), at)).copied())
            .unwrap_or(usize::MAX)
    };
    out.sort_by_key(end_of);
    Ok((out, bad))
}

/// The tutorial's synthetic message number `n` (uniform choices from its fixed values; counts
/// 5–10 per message, not cumulative).
pub fn synthetic(n: u64, now_ms: i64, rng: &mut u64) -> serde_json::Value {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let ca = ["A001", "A002"][(next() % 2) as usize];
    let unit = ["R001", "R002"][(next() % 2) as usize];
    let station = ["Test-Station1", "Test-Station2"][(next() % 2) as usize];
    let entries = 5 + (next() % 6) as i64;
    let exits = 5 + (next() % 6) as i64;
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let id = uuid::Uuid::new_v4().to_string();
    json!({
        "CA": ca, "UNIT": unit, "SCP": "02-00-00", "STATION": station, "LINENAME": "456NQR",
        "DIVISION": "BMT", "DATE": now.format("%m-%d-%y").to_string(),
        "TIME": now.format("%H:%M:%S").to_string(), "DESC": "REGULAR",
        "ENTRIES": entries, "EXITS": exits, "ID": id,
        "TIMESTAMP": format_millis(now_ms), "SEQ": n, "INTERVAL_ID": id,
    })
}

impl SourceSettings for TurnstileConfig {
    fn check(&self) -> Result<()> {
        self.validate().map_err(Error::config("config"))
    }

    fn about(&self) -> About {
        let what = match self.mode {
            Mode::Replay => format!("{} replayed as intervals", self.file.display()),
            Mode::Synthetic => format!(
                "synthetic, one every {}",
                humantime::format_duration(self.interval)
            ),
        };
        About::source(
            "turnstile",
            &self.topic,
            format!("{what} -> topic {}", self.topic),
        )
    }

    /// Runs the source until `shutdown` (replay: until the file is published; synthetic: until
    /// `count` messages, or Ctrl+C).
    async fn run(&self, ctx: &Context, metrics: Arc<SourceMetrics>) -> Result<()> {
        let config = self;
        let shutdown = &ctx.shutdown;
        let invalid = |message: String| Error::Config {
            origin: "[turnstile]".into(),
            message,
        };
        config.validate().map_err(invalid)?;
        let origin = match config.mode {
            Mode::Synthetic => "synthetic".to_string(),
            Mode::Replay => config.file.display().to_string(),
        };
        let outlet =
            Outlet::open(ctx, "turnstile", &config.topic, &origin, metrics.clone()).await?;
        match config.mode {
            Mode::Synthetic => {
                let mut rng = (chrono::Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64) | 1;
                let mut n = 0u64;
                while config.count == 0 || n < config.count {
                    let now = chrono::Utc::now().timestamp_millis();
                    let message = synthetic(n, now, &mut rng);
                    let key = message["ID"].as_str().unwrap_or_default().to_string();
                    outlet
                        .send(Some(&key), message.to_string().as_bytes(), Some(now), &[])
                        .await?;
                    metrics.published.inc();
                    metrics.polls.inc();
                    metrics.last_success_ms.set(now);
                    n += 1;
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(config.interval) => {}
                    }
                }
            }
            Mode::Replay => {
                let bytes = std::fs::read(&config.file).map_err(Error::io(&config.file))?;
                let counts = Counts::default();
                let (intervals, bad) = intervals(&bytes, config, &counts)
                    .map_err(|m| invalid(format!("{}: {m}", config.file.display())))?;
                let seen: HashSet<String> = outlet.published_records().await?;
                for (line, reason, raw) in &bad {
                    // At least once: a restart dead-letters the same rows again.
                    outlet
                        .dead_letter(None, &format!("line {line}: {reason}"), raw.as_bytes())
                        .await?;
                }
                for interval in &intervals {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    let id = format!("{}\u{1f}{}", interval.id, interval.timestamp);
                    if seen.contains(&id) {
                        metrics.duplicates.inc();
                        continue;
                    }
                    let at = crate::record::parse_millis(&interval.timestamp);
                    let value = serde_json::to_vec(interval).unwrap_or_default();
                    outlet.send_record(&interval.id, &id, &value, at).await?;
                }
                metrics.polls.inc();
                metrics.succeeded();
                tracing::info!(
                    file = %origin,
                    rows = counts.rows.get(),
                    intervals = intervals.len(),
                    published = metrics.published.get(),
                    bad = bad.len(),
                    backwards = counts.backwards.get(),
                    jumps = counts.jumps.get(),
                    recovered_audits = counts.recovered_audits.get(),
                    "turnstile: file replayed"
                );
            }
        }
        outlet.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_settings() {
        let c = TurnstileConfig {
            file: "x.csv".into(),
            ..Default::default()
        };
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.offset().unwrap().local_minus_utc(), -4 * 3600);
        for bad in ["04:00", "+25:00", "-4", "EST"] {
            let c = TurnstileConfig {
                utc_offset: bad.into(),
                file: "x.csv".into(),
                ..Default::default()
            };
            assert!(c.validate().unwrap_err().contains("utc_offset"), "{bad}");
        }
        assert!(
            TurnstileConfig::default()
                .validate()
                .unwrap_err()
                .contains("needs file")
        );
    }

    #[test]
    fn hostile_files() {
        let c = TurnstileConfig::default();
        let counts = Counts::default();
        let err = intervals(b"a,b,c\n1,2,3\n", &c, &counts).unwrap_err();
        assert!(err.contains("no C/A column"), "{err}");
        let file = "C/A,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS\n\
            A,R,S,X,L,D,05/27/2023,00:00:00,REGULAR,10,10\n\
            A,R,S,X,L,D,05/27/2023,04:00:00,REGULAR,abc,10\n\
            A,R,S,X,L,D,2023-05-27,04:00:00,REGULAR,12,10\n\
            A,R,S,X,L,D,05/27/2023,25:00:00,REGULAR,12,10\n\
            A,R,S,X\n\
            A,R,S,X,L,D,05/27/2023,08:00:00,REGULAR,-5,10\n\
            A,R,S,X,L,D,05/27/2023,12:00:00,REGULAR,20,12\n";
        let (out, bad) = intervals(file.as_bytes(), &c, &counts).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].entries, out[0].exits), (10, 2));
        let reasons: Vec<&str> = bad.iter().map(|b| b.1.as_str()).collect();
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
        assert!(reasons[0].starts_with("ENTRIES \"abc\""), "{reasons:?}");
        assert!(reasons[1].starts_with("DATE \"2023-05-27\""), "{reasons:?}");
        assert!(reasons[2].starts_with("TIME \"25:00:00\""), "{reasons:?}");
        assert_eq!(reasons[3], "LINENAME is missing");
        assert_eq!(reasons[4], "a counter is negative");
        let mut non_utf8 =
            b"C/A,UNIT,SCP,STATION,LINENAME,DIVISION,DATE,TIME,DESC,ENTRIES,EXITS\nA,R,S,".to_vec();
        non_utf8.extend_from_slice(&[0xff, 0xfe]);
        non_utf8.extend_from_slice(b",L,D,05/27/2023,00:00:00,REGULAR,1,1\n");
        let (_, bad) = intervals(&non_utf8, &c, &Counts::default()).unwrap();
        assert_eq!(bad[0].1, "STATION is not UTF-8");
    }

    #[test]
    fn synthetic_messages_look_like_the_tutorials() {
        let mut rng = 42;
        for n in 0..50 {
            let m = synthetic(n, 1_706_631_584_000, &mut rng);
            let e = m["ENTRIES"].as_i64().unwrap();
            assert!((5..=10).contains(&e));
            assert!(["Test-Station1", "Test-Station2"].contains(&m["STATION"].as_str().unwrap()));
            assert_eq!(m["DATE"], "01-30-24");
            assert_eq!(m["TIMESTAMP"], "2024-01-30T16:19:44.000Z");
        }
    }
}
