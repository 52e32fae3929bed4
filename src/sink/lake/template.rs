//! Object names from a record's fields: `"{date}.json"`, `"apod/{date}/{media_type}.json"`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("template {text:?}: `{{` without `}}`"))?;
            let field = &rest[open + 1..open + close];
            if field.is_empty() || field.contains('{') {
                return Err(format!("template {text:?}: empty or nested field name"));
            }
            parts.push(Part::Field(field.to_string()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("template {text:?}: `}}` without `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(format!(
                "template {text:?} names no field: every record would overwrite one object"
            ));
        }
        Ok(Template { parts })
    }

    /// The object name for a record. Field values must be non-empty strings or numbers and may
    /// not climb out of the prefix (`/`, `..`, control characters are refused).
    pub fn render(&self, record: &Value) -> Result<String, String> {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => name.push_str(t),
                Part::Field(f) => {
                    let value = match record.get(f) {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Number(n)) => n.to_string(),
                        Some(_) => return Err(format!("field `{f}` is not text or a number")),
                        None => return Err(format!("field `{f}` is missing")),
                    };
                    if value.is_empty()
                        || value == "."
                        || value == ".."
                        || value.contains('/')
                        || value.contains('\\')
                        || value.chars().any(char::is_control)
                        || value.len() > 200
                    {
                        return Err(format!(
                            "field `{f}` = {value:?} cannot be part of an object name"
                        ));
                    }
                    name.push_str(&value);
                }
            }
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_fields() {
        let t = Template::parse("apod/{date}.json").unwrap();
        let record = serde_json::json!({"date": "2024-01-15", "n": 3});
        assert_eq!(t.render(&record).unwrap(), "apod/2024-01-15.json");
        let t = Template::parse("{n}-{date}").unwrap();
        assert_eq!(t.render(&record).unwrap(), "3-2024-01-15");
    }

    #[test]
    fn hostile_values_and_bad_templates_are_refused() {
        let t = Template::parse("{date}.json").unwrap();
        for bad in [
            serde_json::json!({"date": "../../etc/passwd"}),
            serde_json::json!({"date": ".."}),
            serde_json::json!({"date": ""}),
            serde_json::json!({"date": "a\nb"}),
            serde_json::json!({"date": {"x": 1}}),
            serde_json::json!({"other": 1}),
        ] {
            assert!(t.render(&bad).is_err(), "{bad}");
        }
        for bad in ["static.json", "{date", "date}", "{}", "{a{b}}"] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
