//! Typed columns for the lake's CSV and Parquet files, and how a JSON record becomes a row.
//!
//! A topic's records are written with one of three schemas: `quake` (the `Quake` contract),
//! `window` (the `WindowResult` of the window processor's configuration) or `infer` (worked out
//! for each file from the records in it, so a replay that rewrites a file writes the same
//! schema). A record is read straight into [`Cell`]s, borrowing its strings, without building a
//! `serde_json::Value`.

use std::{borrow::Cow, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Str,
    F64,
    I64,
    Bool,
    /// UTC milliseconds, written as `timestamp[ms, UTC]`; read from RFC 3339 text or epoch ms.
    Timestamp,
    /// An array of strings.
    StrList,
    /// Any JSON, kept as its text (nested objects, mixed types).
    Json,
}

impl ColType {
    pub fn name(self) -> &'static str {
        match self {
            ColType::Str => "string",
            ColType::F64 => "float64",
            ColType::I64 => "int64",
            ColType::Bool => "bool",
            ColType::Timestamp => "timestamp",
            ColType::StrList => "list<string>",
            ColType::Json => "json",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColType,
    pub nullable: bool,
}

/// The columns of a file, with a lookup from field name to column.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    columns: Vec<Column>,
    by_name: foldhash::HashMap<String, usize>,
}

impl Columns {
    pub fn new(columns: Vec<Column>) -> Columns {
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        Columns { columns, by_name }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Column> {
        self.columns.iter()
    }

    pub fn len(&self) -> usize {
        self.columns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    pub fn get(&self, i: usize) -> &Column {
        &self.columns[i]
    }

    /// The column of a field: the one after `previous` first (records written by one serializer
    /// keep their field order), then by name.
    fn find(&self, name: &str, previous: usize) -> Option<usize> {
        match self.columns.get(previous) {
            Some(c) if c.name == name => Some(previous),
            _ => self.by_name.get(name).copied(),
        }
    }

    /// The `Quake` record (docs/architecture.md).
    pub fn quake() -> Columns {
        use ColType::*;
        let c = |name: &str, ty, nullable| Column {
            name: name.into(),
            ty,
            nullable,
        };
        Columns::new(vec![
            c("id", Str, false),
            c("ids", StrList, true),
            c("source", Str, true),
            c("time", Timestamp, false),
            c("updated", Timestamp, false),
            c("mag", F64, true),
            c("mag_type", Str, true),
            c("place", Str, true),
            c("lat", F64, true),
            c("lon", F64, true),
            c("depth_km", F64, true),
            c("status", Str, true),
            c("tsunami", Bool, true),
            c("alert", Str, true),
            c("sig", I64, true),
            c("felt", I64, true),
            c("cdi", F64, true),
            c("mmi", F64, true),
            c("net", Str, true),
            c("code", Str, true),
            c("event_type", Str, true),
            c("title", Str, true),
            c("url", Str, true),
        ])
    }

    /// A `WindowResult` of the window processor: bounds, group fields, aggregates (`count` as
    /// an integer, the others as floats), the final flag and the emission time.
    pub fn window(config: &crate::process::window::WindowConfig) -> Columns {
        use crate::process::window::AggOp;
        let c = |name: &str, ty, nullable| Column {
            name: name.into(),
            ty,
            nullable,
        };
        let mut columns = vec![
            c("window_start", ColType::Timestamp, false),
            c("window_end", ColType::Timestamp, false),
        ];
        for group in &config.group_by {
            columns.push(c(group, ColType::Str, true));
        }
        for agg in &config.aggregates {
            let ty = match agg.op {
                AggOp::Count => ColType::I64,
                _ => ColType::F64,
            };
            columns.push(c(&agg.name, ty, true));
        }
        columns.push(c("final", ColType::Bool, true));
        columns.push(c("emitted_at", ColType::Timestamp, true));
        Columns::new(columns)
    }

    /// Columns that fit every record given, in the order fields first appear: integers stay
    /// int64 unless a fraction appears (then float64), text that is all RFC 3339 times becomes a
    /// timestamp, arrays of strings a list, anything mixed or nested JSON text. A field that is
    /// null in every record is a nullable string.
    pub fn infer<'a>(records: impl IntoIterator<Item = &'a serde_json::Value>) -> Columns {
        #[derive(Clone, Copy, PartialEq)]
        enum Seen {
            Null,
            Int,
            Float,
            Bool,
            Time,
            Text,
            List,
            Json,
        }
        let mut fields: Vec<(String, Seen, bool)> = Vec::new();
        let mut index: foldhash::HashMap<String, usize> = Default::default();
        let mut count = 0usize;
        let mut present: Vec<usize> = Vec::new();
        for record in records {
            let Some(map) = record.as_object() else {
                continue;
            };
            count += 1;
            for (name, value) in map {
                let seen = match value {
                    serde_json::Value::Null => Seen::Null,
                    serde_json::Value::Bool(_) => Seen::Bool,
                    // Only what fits an i64 is an integer: [`read_row`] reads anything else
                    // (2^63 and up) as a float, and the column must take what it reads.
                    // ([`check_inferable`] keeps integers out of i64's range out of the file.)
                    serde_json::Value::Number(n) if n.is_i64() => Seen::Int,
                    serde_json::Value::Number(_) => Seen::Float,
                    serde_json::Value::String(s) if parse_time(s).is_some() => Seen::Time,
                    serde_json::Value::String(_) => Seen::Text,
                    serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => {
                        Seen::List
                    }
                    _ => Seen::Json,
                };
                let i = *index.entry(name.clone()).or_insert_with(|| {
                    fields.push((name.clone(), Seen::Null, false));
                    present.push(0);
                    fields.len() - 1
                });
                present[i] += 1;
                let (_, kind, nullable) = &mut fields[i];
                if seen == Seen::Null {
                    *nullable = true;
                    continue;
                }
                *kind = match (*kind, seen) {
                    (Seen::Null, s) => s,
                    (a, b) if a == b => a,
                    (Seen::Int, Seen::Float) | (Seen::Float, Seen::Int) => Seen::Float,
                    (Seen::Time, Seen::Text) | (Seen::Text, Seen::Time) => Seen::Text,
                    _ => Seen::Json,
                };
            }
        }
        let columns = fields
            .into_iter()
            .zip(present)
            .map(|((name, kind, nullable), present)| Column {
                name,
                ty: match kind {
                    Seen::Null | Seen::Text => ColType::Str,
                    Seen::Int => ColType::I64,
                    Seen::Float => ColType::F64,
                    Seen::Bool => ColType::Bool,
                    Seen::Time => ColType::Timestamp,
                    Seen::List => ColType::StrList,
                    Seen::Json => ColType::Json,
                },
                nullable: nullable || kind == Seen::Null || present < count,
            })
            .collect();
        Columns::new(columns)
    }
}

/// Refuses a record that cannot go into a file whose columns are inferred, with a reason naming
/// the field. Such a file is only encoded when it is finished, from columns worked out from all
/// its records: one record that inference or encoding cannot take would fail the whole file, and
/// the segment would be replayed into the same failure forever. So each record is checked when
/// it arrives, and one that would not fit is dead-lettered alone:
///
/// - an integer outside the 64-bit range (`18446744073709551616`, `9223372036854775808`):
///   refused rather than stored as a float or as text, because either would change the value
///   (a float rounds it) and the type of the column for every other record of the file, while
///   the dead letter keeps it exactly;
/// - a number too large for a 64-bit float (`1e400`: JSON has no NaN or infinity);
/// - a value nested deeper than the JSON parser's limit (128 levels);
/// - a field given twice (which value wins would differ between inference and encoding);
/// - an empty object (a file of them has no column, which Parquet cannot write).
///
/// A deterministic check of the record alone, so a replay refuses the same records.
pub fn check_inferable(record: &[u8]) -> Result<(), String> {
    let Fields(fields) = serde_json::from_slice::<Fields<'_>>(record)
        .map_err(|e| format!("not a JSON object: {e}"))?;
    if fields.is_empty() {
        return Err("an empty object has no field to write".into());
    }
    let mut names: Vec<&str> = fields.iter().map(|(name, _)| &**name).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!("field `{}` appears twice", twice[0]));
    }
    for (name, value) in &fields {
        let text = value.get();
        match text.as_bytes().first() {
            Some(b'-' | b'0'..=b'9') => {
                let integer = !text.contains(&['.', 'e', 'E'][..]);
                if integer && text.parse::<i64>().is_err() {
                    return Err(format!(
                        "field `{name}` = {text} does not fit a 64-bit integer"
                    ));
                }
                if !integer && !text.parse::<f64>().is_ok_and(f64::is_finite) {
                    return Err(format!(
                        "field `{name}` = {text} does not fit a 64-bit float"
                    ));
                }
            }
            Some(b'[' | b'{') => {
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|e| format!("field `{name}`: {e}"))?;
            }
            _ => {}
        }
    }
    // Inference reads each record as a `Value`: one it cannot read would have no say in the
    // columns (the nesting limit counts the record's own level too).
    serde_json::from_slice::<serde_json::Value>(record).map_err(|e| e.to_string())?;
    Ok(())
}

/// A record's top-level fields in order, each value as its JSON text.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields<'de>, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'de>, M::Error> {
        let mut fields = Vec::new();
        while let Some(name) = map.next_key_seed(Text)? {
            let value: &'de serde_json::value::RawValue = map.next_value()?;
            fields.push((name, value));
        }
        Ok(Fields(fields))
    }
}

/// One value of a row, borrowing from the record's text where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell<'a> {
    Null,
    Str(Cow<'a, str>),
    F64(f64),
    I64(i64),
    Bool(bool),
    Timestamp(i64),
    List(Vec<Cow<'a, str>>),
    Json(Cow<'a, str>),
}

/// Reads one JSON object into `row` (one cell per column, `Null` for absent fields). Fields
/// without a column are skipped. Errors name the field and what was wrong; `row` is then
/// unusable until the next call.
pub fn read_row<'a>(
    columns: &Columns,
    text: &'a [u8],
    row: &mut Vec<Cell<'a>>,
) -> Result<(), String> {
    row.clear();
    row.resize(columns.len(), Cell::Null);
    let mut de = serde_json::Deserializer::from_slice(text);
    RowSeed { columns, row }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        // serde_json's message ends with the line and column: it locates the problem.
        .map_err(|e| e.to_string())?;
    for (cell, column) in row.iter().zip(columns.iter()) {
        if *cell == Cell::Null && !column.nullable {
            return Err(format!("field `{}` is missing or null", column.name));
        }
    }
    Ok(())
}

struct RowSeed<'c, 'r, 'a> {
    columns: &'c Columns,
    row: &'r mut Vec<Cell<'a>>,
}

impl<'de, 'c, 'r> DeserializeSeed<'de> for RowSeed<'c, 'r, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, 'c, 'r> Visitor<'de> for RowSeed<'c, 'r, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        let mut next = 0;
        while let Some(key) = map.next_key_seed(Text)? {
            match self.columns.find(&key, next) {
                Some(i) => {
                    let column = self.columns.get(i);
                    let cell = map.next_value_seed(CellSeed(column.ty)).map_err(|e| {
                        de::Error::custom(format_args!("field `{}`: {e}", column.name))
                    })?;
                    self.row[i] = cell;
                    next = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A string, borrowed from the record unless it had escapes.
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
}

/// Reads one value as the column type wants it.
struct CellSeed(ColType);

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Cell<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cell<'de>, D::Error> {
        match self.0 {
            ColType::Json => {
                let raw = <&'de serde_json::value::RawValue as serde::Deserialize>::deserialize(
                    deserializer,
                )?;
                Ok(match raw.get() {
                    "null" => Cell::Null,
                    text => Cell::Json(Cow::Borrowed(text)),
                })
            }
            ty => deserializer.deserialize_any(CellVisitor(ty)),
        }
    }
}

struct CellVisitor(ColType);

impl CellVisitor {
    fn text<'de, E: de::Error>(self, s: Cow<'de, str>) -> Result<Cell<'de>, E> {
        match self.0 {
            ColType::Str => Ok(Cell::Str(s)),
            ColType::Timestamp => parse_time(&s)
                .map(Cell::Timestamp)
                .ok_or_else(|| E::custom(format_args!("`{s}` is not an RFC 3339 time"))),
            ty => Err(E::custom(format_args!(
                "expected {}, found text",
                ty.name()
            ))),
        }
    }

    fn number<E: de::Error>(self, int: Option<i64>, float: f64) -> Result<Cell<'static>, E> {
        match (self.0, int) {
            (ColType::F64, _) => Ok(Cell::F64(float)),
            (ColType::I64, Some(i)) => Ok(Cell::I64(i)),
            (ColType::I64, None) if float.fract() == 0.0 && float.abs() < 9.0e15 => {
                Ok(Cell::I64(float as i64))
            }
            (ColType::Timestamp, Some(i)) => Ok(Cell::Timestamp(i)),
            (ColType::Str, Some(i)) => Ok(Cell::Str(Cow::Owned(i.to_string()))),
            (ColType::Str, None) => Ok(Cell::Str(Cow::Owned(float.to_string()))),
            (ty, _) => Err(E::custom(format_args!(
                "expected {}, found the number {float}",
                ty.name()
            ))),
        }
    }
}

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} value", self.0.name())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Cell<'de>, E> {
        match self.0 {
            ColType::Bool => Ok(Cell::Bool(v)),
            ColType::Str => Ok(Cell::Str(Cow::Borrowed(if v { "true" } else { "false" }))),
            ty => Err(E::custom(format_args!(
                "expected {}, found a boolean",
                ty.name()
            ))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cell<'de>, E> {
        self.number(Some(v), v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cell<'de>, E> {
        self.number(i64::try_from(v).ok(), v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cell<'de>, E> {
        self.number(None, v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cell<'de>, E> {
        self.text(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cell<'de>, E> {
        self.text(Cow::Owned(v.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cell<'de>, A::Error> {
        if self.0 != ColType::StrList {
            return Err(de::Error::custom(format_args!(
                "expected {}, found an array",
                self.0.name()
            )));
        }
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Text)? {
            items.push(item);
        }
        Ok(Cell::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Cell<'de>, A::Error> {
        Err(de::Error::custom(format_args!(
            "expected {}, found an object",
            self.0.name()
        )))
    }
}

/// RFC 3339 time → epoch milliseconds. The form quakestream writes (`2024-01-15T10:30:00.000Z`)
/// is parsed directly; anything else goes through chrono.
pub fn parse_time(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
    {
        let digits = |range: std::ops::Range<usize>| -> Option<i64> {
            b[range].iter().try_fold(0i64, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
            })
        };
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        let (hour, minute, second, ms) = (
            digits(11..13)?,
            digits(14..16)?,
            digits(17..19)?,
            digits(20..23)?,
        );
        let valid = (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60;
        return valid.then(|| {
            let days = days_from_civil(year, month, day);
            ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + ms
        });
    }
    if text.len() < 20 || !text.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    crate::record::parse_millis(text)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_time_parser_agrees_with_chrono() {
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2024-02-29T23:59:59.999Z",
            "2025-05-04T13:40:18.110Z",
            "1969-12-31T23:59:59.000Z",
            "2100-03-01T00:00:00.001Z",
        ] {
            assert_eq!(
                parse_time(text),
                crate::record::parse_millis(text),
                "{text}"
            );
        }
        for bad in [
            "2023-02-29T00:00:00.000Z",
            "2024-13-01T00:00:00.000Z",
            "2024-01-01T24:00:00.000Z",
            "2024-01-01T00:00:00.00aZ",
            "yesterday",
            "",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(
            parse_time("2024-01-15T10:30:00+02:00"),
            crate::record::parse_millis("2024-01-15T10:30:00+02:00")
        );
    }

    #[test]
    fn a_quake_reads_into_typed_cells() {
        let text = br#"{"id":"us1","ids":["us1","at\u00e92"],"source":"usgs","time":"2024-01-15T10:30:00.000Z","updated":"2024-01-15T10:45:12.345Z","mag":4,"mag_type":null,"place":"10 km \"SSW\"","lat":-33.45,"lon":-70.66,"depth_km":10.0,"status":"reviewed","tsunami":false,"alert":null,"sig":312,"felt":null,"cdi":null,"mmi":null,"net":"us","code":"1","event_type":"earthquake","title":"t","url":"u","extra":{"a":[1]}}"#;
        let columns = Columns::quake();
        let mut row = Vec::new();
        read_row(&columns, text, &mut row).unwrap();
        assert_eq!(row[0], Cell::Str("us1".into()));
        assert_eq!(row[1], Cell::List(vec!["us1".into(), "até2".into()]));
        assert_eq!(row[3], Cell::Timestamp(1_705_314_600_000));
        assert_eq!(row[5], Cell::F64(4.0));
        assert_eq!(row[6], Cell::Null);
        assert_eq!(row[7], Cell::Str("10 km \"SSW\"".into()));
        assert_eq!(row[12], Cell::Bool(false));
        assert_eq!(row[14], Cell::I64(312));
    }

    #[test]
    fn bad_records_name_the_field() {
        let columns = Columns::quake();
        let base = r#""time":"2024-01-15T10:30:00.000Z","updated":"2024-01-15T10:45:12.345Z""#;
        for (text, expected) in [
            (format!(r#"{{"id":"a",{base},"mag":"big"}}"#), "field `mag`"),
            (format!(r#"{{"id":"a",{base},"sig":1.5}}"#), "field `sig`"),
            (
                r#"{"id":"a","time":"noon","updated":"x"}"#.to_string(),
                "field `time`",
            ),
            (format!(r#"{{{base}}}"#), "field `id` is missing"),
            (format!(r#"{{"id":null,{base}}}"#), "field `id` is missing"),
            (format!(r#"{{"id":"a",{base},"ids":[1]}}"#), "field `ids`"),
            (
                format!(r#"{{"id":"a",{base},"tsunami":{{}}}}"#),
                "field `tsunami`",
            ),
            ("[1,2]".to_string(), "JSON object"),
            ("{\"id\":".to_string(), "EOF"),
            (format!(r#"{{"id":"a",{base}}} trailing"#), "trailing"),
        ] {
            let mut row = Vec::new();
            let err = read_row(&columns, text.as_bytes(), &mut row).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn inference_widens_and_falls_back_to_json() {
        let records: Vec<serde_json::Value> = [
            r#"{"a":1,"b":"2024-01-15T10:30:00.000Z","c":"x","d":[ "p" ],"e":null,"f":true,"g":1}"#,
            r#"{"a":1.5,"b":"2024-01-15T10:31:00Z","c":3,"d":["q","r"],"e":null,"h":{"n":1}}"#,
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        let columns = Columns::infer(&records);
        let shape: Vec<(&str, ColType, bool)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.ty, c.nullable))
            .collect();
        assert_eq!(
            shape,
            vec![
                ("a", ColType::F64, false),
                ("b", ColType::Timestamp, false),
                ("c", ColType::Json, false),
                ("d", ColType::StrList, false),
                ("e", ColType::Str, true),
                ("f", ColType::Bool, true),
                ("g", ColType::I64, true),
                ("h", ColType::Json, true),
            ]
        );
        for record in &records {
            let text = serde_json::to_vec(record).unwrap();
            let mut row = Vec::new();
            read_row(&columns, &text, &mut row).unwrap();
        }
    }

    #[test]
    fn records_an_inferred_file_could_not_hold_are_refused_alone() {
        for (text, expected) in [
            (
                r#"{"a":1,"n":18446744073709551616}"#,
                "field `n` = 18446744073709551616 does not fit a 64-bit integer",
            ),
            (
                r#"{"n":9223372036854775808}"#,
                "field `n` = 9223372036854775808 does not fit a 64-bit integer",
            ),
            (
                r#"{"n":-9223372036854775809}"#,
                "field `n` = -9223372036854775809 does not fit a 64-bit integer",
            ),
            (
                r#"{"x":1e400}"#,
                "field `x` = 1e400 does not fit a 64-bit float",
            ),
            (
                r#"{"x":-1E400}"#,
                "field `x` = -1E400 does not fit a 64-bit float",
            ),
            (r#"{"x":[1e400]}"#, "field `x`: number out of range"),
            (r#"{"a":"x","a":1}"#, "field `a` appears twice"),
            ("{}", "an empty object"),
            ("[1]", "not a JSON object"),
        ] {
            let reason = check_inferable(text.as_bytes()).unwrap_err();
            assert!(reason.contains(expected), "{text}: {reason}");
        }
        let deep = format!(r#"{{"d":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        let reason = check_inferable(deep.as_bytes()).unwrap_err();
        assert!(reason.contains("field `d`: recursion limit"), "{reason}");
        // 127 levels in the field, 128 with the record: what inference could not read.
        let edge = format!(r#"{{"d":{}{}}}"#, "[".repeat(127), "]".repeat(127));
        assert!(check_inferable(edge.as_bytes()).is_err());
        let fine = [
            r#"{"n":9223372036854775807,"m":-9223372036854775808}"#,
            r#"{"x":1.5e300,"y":-2.5E-3,"z":-0}"#,
            r#"{"d":{"n":18446744073709551616},"l":[1,[2]],"s":"\u0000"}"#,
        ];
        for text in fine {
            check_inferable(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
        // Each record that passes reads into the columns inferred from all of them.
        let values: Vec<serde_json::Value> = fine
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let columns = Columns::infer(&values);
        for text in fine {
            let mut row = Vec::new();
            read_row(&columns, text.as_bytes(), &mut row).unwrap();
        }
    }

    #[test]
    fn inference_types_only_what_fits_an_i64_as_an_integer() {
        let records: Vec<serde_json::Value> = [r#"{"n":1}"#, r#"{"n":9223372036854775808}"#]
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect();
        let columns = Columns::infer(&records);
        assert_eq!(columns.get(0).ty, ColType::F64);
        for record in &records {
            let text = serde_json::to_vec(record).unwrap();
            let mut row = Vec::new();
            read_row(&columns, &text, &mut row).unwrap();
        }
    }
}
