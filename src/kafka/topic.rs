//! Topic names, checked before they reach a broker.

use std::{fmt, str::FromStr};

use crate::error::Error;

/// A topic name Kafka accepts: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(String);

impl TopicName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TopicName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidTopic {
            name: name.to_string(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > 249 {
            return Err(invalid("it is longer than 249 characters"));
        }
        if name == "." || name == ".." {
            return Err(invalid("`.` and `..` are reserved"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "only letters, digits, `.`, `_` and `-` are allowed",
            ));
        }
        Ok(TopicName(name.to_string()))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_kafka_names() {
        for name in [
            "earthquakes",
            "mensajes-test",
            "quakestream-dlq",
            "a.b_c-1",
            "x",
        ] {
            assert_eq!(name.parse::<TopicName>().unwrap().as_str(), name);
        }
        assert!("t".repeat(249).parse::<TopicName>().is_ok());
    }

    #[test]
    fn rejects_what_kafka_rejects() {
        for name in ["", ".", "..", "with space", "slash/y", "ñandú", "t!"] {
            let err = name.parse::<TopicName>().unwrap_err().to_string();
            assert!(err.starts_with("invalid topic name"), "{name}: {err}");
        }
        assert!("t".repeat(250).parse::<TopicName>().is_err());
    }
}
