//! Object names from a record's fields: `"{date}.json"`, `"apod/{date}/{media_type}.json"`.

use serde_json::Value;

use crate::fields;

/// An object-name template: [`fields::Template`] that names at least one field.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(fields::Template);

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let template = fields::Template::parse(text).map_err(|e| format!("template {e}"))?;
        if !template.has_fields() {
            return Err(format!(
                "template {text:?} names no field: every record would overwrite one object"
            ));
        }
        Ok(Template(template))
    }

    /// The object name for a record. Field values must be non-empty strings or numbers and may
    /// not climb out of the prefix (`/`, `..`, control characters are refused).
    pub fn render(&self, record: &Value) -> Result<String, String> {
        self.0.render_with(record, |f, value| {
            let value = match value {
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
            Ok(value)
        })
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
