//! Hive-style partition directories from an event time: `dt=2024-01-15/hour=10`.

use chrono::format::{Item, StrftimeItems};

/// The value Hive (and Spark, DuckDB) reads as null, for records without an event time.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Renders a strftime pattern, remembering the last directory: records of one hour (or minute)
/// share it, and formatting a time costs more than writing the record.
#[derive(Debug, Clone)]
pub struct Partitioner {
    pattern: String,
    /// Milliseconds the pattern cannot tell apart (an hour for `%H`, a minute with `%M`, …).
    granularity: i64,
    last: Option<(i64, String)>,
    null: String,
}

impl Partitioner {
    pub fn new(pattern: &str) -> Result<Partitioner, String> {
        let items: Vec<Item<'_>> = StrftimeItems::new(pattern).collect();
        if items.iter().any(|i| matches!(i, Item::Error)) {
            return Err(format!(
                "partition_by {pattern:?} is not a valid strftime pattern"
            ));
        }
        if pattern
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(format!(
                "partition_by {pattern:?}: directories must be non-empty names (no leading, \
                 trailing or double `/`, no `.` or `..`)"
            ));
        }
        let granularity = granularity(pattern);
        let null = pattern
            .split('/')
            .map(|part| match part.split_once('=') {
                Some((key, _)) => format!("{key}={NULL_PARTITION}"),
                None => NULL_PARTITION.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/");
        Ok(Partitioner {
            pattern: pattern.to_string(),
            granularity,
            last: None,
            null,
        })
    }

    /// The directory of a record with this event time (epoch ms), or of one without.
    pub fn dir(&mut self, time: Option<i64>) -> &str {
        let Some(ms) = time else {
            return &self.null;
        };
        let slot = ms.div_euclid(self.granularity);
        if self.last.as_ref().is_none_or(|(s, _)| *s != slot) {
            let dir = chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.format(&self.pattern).to_string())
                .unwrap_or_else(|| self.null.clone());
            self.last = Some((slot, dir));
        }
        &self.last.as_ref().expect("just set").1
    }
}

/// The coarsest period within which every time renders the same.
fn granularity(pattern: &str) -> i64 {
    let mut finest = 24 * 3_600_000;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        // Skip flags and padding modifiers (`%-H`, `%_M`, `%.3f`).
        let mut spec = chars.next();
        while let Some(s) = spec
            && (s == '-' || s == '_' || s == '0' || s == '.' || s == '#' || s.is_ascii_digit())
        {
            spec = chars.next();
        }
        let period = match spec {
            Some('H' | 'k' | 'I' | 'l' | 'p' | 'P') => 3_600_000,
            Some('M' | 'R') => 60_000,
            Some(
                'Y' | 'C' | 'y' | 'm' | 'b' | 'B' | 'h' | 'd' | 'e' | 'a' | 'A' | 'w' | 'u' | 'U'
                | 'W' | 'G' | 'g' | 'V' | 'j' | 'D' | 'F' | 'x' | '%',
            ) => continue,
            _ => 1,
        };
        finest = finest.min(period);
    }
    finest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_follow_the_pattern_in_utc() {
        let mut p = Partitioner::new("dt=%Y-%m-%d/hour=%H").unwrap();
        let t = crate::record::parse_millis("2024-01-15T10:30:00.000Z");
        assert_eq!(p.dir(t), "dt=2024-01-15/hour=10");
        let t = crate::record::parse_millis("2024-01-15T10:59:59.999Z");
        assert_eq!(p.dir(t), "dt=2024-01-15/hour=10");
        let t = crate::record::parse_millis("2024-01-15T11:00:00.000Z");
        assert_eq!(p.dir(t), "dt=2024-01-15/hour=11");
        let t = crate::record::parse_millis("1969-12-31T23:00:00.000Z");
        assert_eq!(p.dir(t), "dt=1969-12-31/hour=23");
        assert_eq!(
            p.dir(None),
            "dt=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__"
        );

        let mut m = Partitioner::new("year=%Y/%m/%d/%H%M").unwrap();
        let t = crate::record::parse_millis("2024-01-15T10:30:10.000Z");
        assert_eq!(m.dir(t), "year=2024/01/15/1030");
        let t = crate::record::parse_millis("2024-01-15T10:31:00.000Z");
        assert_eq!(m.dir(t), "year=2024/01/15/1031");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["dt=%Q", "/dt=%Y", "dt=%Y//h=%H", "../%Y", "dt=%Y/"] {
            assert!(Partitioner::new(bad).is_err(), "{bad}");
        }
    }
}
