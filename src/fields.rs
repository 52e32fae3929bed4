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
    use serde_json::json;

    use super::*;

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
