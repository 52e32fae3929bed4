//! Naming the fields of JSON records, the one way every component does it: a *path*
//! (`id`, `user.id`, `results.0.id`) and a *template* of paths (`"{location.city},
//! {location.country}"`, `"{date}.json"`). The `http` source maps fields with them, `jsonl` and
//! the window processor find keys, times and groups, the object-store sink names objects.

use serde_json::{Map, Value};

/// The value at `path`: a field of exactly that name first (names may contain dots), else the
/// walk through objects by name and arrays by index, one dot-separated step at a time.
pub fn lookup<'v>(record: &'v Value, path: &str) -> Option<&'v Value> {
    match record {
        Value::Object(map) => lookup_in(map, path),
        _ => walk(record, path),
    }
}

/// [`lookup`] in an object already taken apart.
pub fn lookup_in<'v>(record: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
    if let Some(v) = record.get(path) {
        return Some(v);
    }
    let (first, rest) = path.split_once('.')?;
    walk(record.get(first)?, rest)
}

/// Whether [`lookup_in`] may use a top-level member named `name` for `path`: the member of
/// exactly that name, or the first step of the walk.
pub fn reaches(path: &str, name: &str) -> bool {
    // Asked for every member of every record: compared as bytes, without searching for '.'
    // in `path` (the first step is `name` when `path` goes on with a dot after it, and `name`
    // has none).
    path == name
        || (path.as_bytes().get(name.len()) == Some(&b'.')
            && path.starts_with(name)
            && !name.as_bytes().contains(&b'.'))
}

/// Parses `payload` as one JSON value and, when it is an object, keeps only the top-level
/// members whose names `keep` accepts; `Ok(None)`: valid JSON, not an object. The other members
/// are checked as JSON and skipped without building them: a reader that needs five fields of a
/// twenty-field record allocates for five. (A skipped number is not checked for range: `1e400`
/// where nobody reads is no error, nor is nesting deeper than serde_json's limit of 128, which
/// it skips without recursion.) A name given twice keeps its last value, as `Value` does.
pub fn parse_picking(
    payload: &[u8],
    keep: impl Fn(&str) -> bool,
) -> serde_json::Result<Option<Map<String, Value>>> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let picked = serde::de::DeserializeSeed::deserialize(Picking(&keep), &mut de)?;
    de.end()?;
    Ok(picked)
}

struct Picking<'k, K>(&'k K);

impl<'de, K: Fn(&str) -> bool> serde::de::DeserializeSeed<'de> for Picking<'_, K> {
    type Value = Option<Map<String, Value>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, K: Fn(&str) -> bool> serde::de::Visitor<'de> for Picking<'_, K> {
    type Value = Option<Map<String, Value>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            if (self.0)(&name) {
                let value: Value = map.next_value()?;
                out.insert(name.into_owned(), value);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A member's name, borrowed from the input unless it has escapes.
struct Name<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(name.into()))
            }
            fn visit_str<E>(self, name: &str) -> Result<Name<'de>, E> {
                Ok(Name(name.to_owned().into()))
            }
        }
        d.deserialize_str(Visit)
    }
}

fn walk<'v>(mut at: &'v Value, path: &str) -> Option<&'v Value> {
    for step in path.split('.') {
        at = match at {
            Value::Object(m) => m.get(step)?,
            Value::Array(a) => a.get(step.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// One piece of a [`Template`].
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    /// A path, written `{path}`.
    Field(String),
}

/// Text with `{path}`s in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// Cuts `text` into literal text and fields. A brace without its pair, an empty field or a
    /// nested one is an error quoting `text`.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: `{{` without `}}`"))?;
            let path = &rest[open + 1..open + close];
            if path.is_empty() || path.contains('{') {
                return Err(format!("{text:?}: empty or nested {{…}}"));
            }
            parts.push(Part::Field(path.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("{text:?}: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    /// Whether it names at least one field.
    pub fn has_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The text with each field replaced by what `text_of` makes of its path and value (`None`
    /// when the record has no such field); the first refusal is the error.
    pub fn render_with(
        &self,
        record: &Value,
        mut text_of: impl FnMut(&str, Option<&Value>) -> Result<String, String>,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(path) => out.push_str(&text_of(path, lookup(record, path))?),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// What `paths` find in `payload`, read whole and read picking.
    fn both(payload: &[u8], paths: &[&str]) -> (Vec<Option<Value>>, Vec<Option<Value>>) {
        let find = |map: &Map<String, Value>| -> Vec<Option<Value>> {
            paths.iter().map(|p| lookup_in(map, p).cloned()).collect()
        };
        let whole: Map<String, Value> = serde_json::from_slice(payload).unwrap();
        let picked = parse_picking(payload, |name| paths.iter().any(|p| reaches(p, name)))
            .unwrap()
            .unwrap();
        (find(&whole), find(&picked))
    }

    #[test]
    fn a_path_reaches_its_own_name_and_its_first_step() {
        assert!(reaches("a", "a"));
        assert!(reaches("a.b", "a.b"));
        assert!(reaches("a.b", "a"));
        assert!(reaches("a.b.c", "a"));
        assert!(!reaches("a.b.c", "a.b"));
        assert!(!reaches("ab.c", "a"));
        assert!(!reaches("a", "a.b"));
        assert!(!reaches("a.b", "b"));
        assert!(!reaches("a.b", ""));
        assert!(reaches(".b", ""));
        assert!(reaches("é.b", "é"));
    }

    #[test]
    fn a_picking_parse_finds_what_a_whole_parse_finds() {
        let record = br#"{"time": "t", "a.b": 1, "a": {"b": 2, "c": [5, {"d": "x"}]},
            "time": "last", "na\u006de": "escaped", "skip": {"deep": [1, 2, {"x": null}]},
            "n": -1.5e3, "t": true, "z": null}"#;
        let paths = [
            "time", "a.b", "a.c.1.d", "a.c.0", "name", "n", "t", "z", "none", "skip",
        ];
        let (whole, picked) = both(record, &paths);
        assert_eq!(picked, whole);
        assert_eq!(whole[0], Some(json!("last")));
        assert_eq!(whole[4], Some(json!("escaped")));
        // Only what the paths reach is built.
        let only_time = parse_picking(record, |name| reaches("time", name))
            .unwrap()
            .unwrap();
        assert_eq!(only_time.keys().collect::<Vec<_>>(), ["time"]);
    }

    #[test]
    fn a_picking_parse_refuses_what_is_not_json_and_tells_an_object_apart() {
        let keep = |_: &str| true;
        for bad in [
            &b"{"[..],
            b"",
            b"{\"a\": 1} x",
            b"{\"a\": [1, }",
            b"{\"a\": 1e400}",
            b"nul",
        ] {
            assert!(
                parse_picking(bad, keep).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for not_object in [
            &b"[1, {\"a\": 2}]"[..],
            b"1",
            b"-2.5",
            b"true",
            b"null",
            b"\"s\"",
        ] {
            assert_eq!(parse_picking(not_object, keep).unwrap(), None);
        }
        // A skipped number is not checked for range.
        assert!(parse_picking(br#"{"a": 1e400, "b": 1}"#, |n| n == "b").is_ok());
        // Nesting deeper than serde_json's limit is refused where it is read; skipped, it is
        // walked without recursion.
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(parse_picking(deep.as_bytes(), keep).is_err());
        assert!(parse_picking(deep.as_bytes(), |_| false).is_ok());
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|x| json!(x)),
            "[a-c.\"\\\\]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c0-2.]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn picking_and_whole_parses_agree(
            members in proptest::collection::vec(("[a-c0-2.]{1,3}", value()), 0..8),
            paths in proptest::collection::vec("[a-c0-2.]{1,5}", 1..4),
        ) {
            // Written by hand so that a name may come twice.
            let body: Vec<String> = members
                .iter()
                .map(|(name, v)| format!("{}: {v}", Value::String(name.clone())))
                .collect();
            let payload = format!("{{{}}}", body.join(", "));
            let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
            let (whole, picked) = both(payload.as_bytes(), &paths);
            prop_assert_eq!(picked, whole);
        }
    }

    #[test]
    fn paths_walk_objects_and_arrays_and_prefer_an_exact_name() {
        let v = json!({"id": 5, "user": {"id": "u1", "tags": [{"a": 1}, {"b": "x"}]}, "a.b": "literal"});
        assert_eq!(lookup(&v, "id"), Some(&json!(5)));
        assert_eq!(lookup(&v, "user.id"), Some(&json!("u1")));
        assert_eq!(lookup(&v, "user.tags.1.b"), Some(&json!("x")));
        assert_eq!(lookup(&v, "a.b"), Some(&json!("literal")));
        assert_eq!(lookup(&v, "user.tags.9"), None);
        assert_eq!(lookup(&v, "user.id.more"), None);
        assert_eq!(lookup(&json!([1, 2]), "1"), Some(&json!(2)));
    }

    #[test]
    fn templates_cut_text_and_fields_and_refuse_broken_braces() {
        let t = Template::parse("apod/{date}-{n}.json").unwrap();
        assert!(t.has_fields());
        let record = json!({"date": "2024-01-15", "n": 3});
        let text = t
            .render_with(&record, |_, v| {
                Ok(v.map(|v| v.to_string()).unwrap_or_default())
            })
            .unwrap();
        assert_eq!(text, "apod/\"2024-01-15\"-3.json");
        assert!(!Template::parse("static.json").unwrap().has_fields());
        for bad in ["{date", "date}", "{}", "{a{b}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
