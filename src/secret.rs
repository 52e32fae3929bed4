//! Secrets: where settings take them from (`env:NAME`), and the one redaction rule for
//! everything that shows settings, requests or errors (logs, `quakestream config`, the banner,
//! `/metrics`, the monitor).
//!
//! The rule: a value that comes from `env:` is never shown (its reference `env:NAME` is); a
//! query parameter, header or client property whose name says it holds a credential (a key, a
//! token, a password, a signature…) is masked; a URL loses its password; a webhook URL loses
//! its path, which is its secret.

use std::borrow::Cow;

/// What a hidden value shows as.
pub const MASK: &str = "***";

/// Words that, in the name of a setting, header or query parameter, say it holds a credential.
const CREDENTIAL_WORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "credential",
    "signature",
    "session",
    "cookie",
    "private",
    "jaas",
    "oauthbearer",
];

/// Whether a setting, header or query parameter named `name` holds a credential
/// (`api_key`, `Authorization`, `sasl.password`, `X-Api-Token`, …).
pub fn names_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_WORDS.iter().any(|word| name.contains(word))
}

/// A setting's value: literal, or `env:NAME` (`env:NAME:-default` with a default when `NAME`
/// is unset or empty) read from the environment.
pub fn resolve(value: &str) -> Result<String, String> {
    let Some(spec) = value.strip_prefix("env:") else {
        return Ok(value.to_string());
    };
    let (name, default) = match spec.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (spec, None),
    };
    match (std::env::var(name), default) {
        (Ok(v), _) if !v.is_empty() => Ok(v),
        (_, Some(d)) => Ok(d.to_string()),
        _ => Err(format!("environment variable {name} is not set")),
    }
}

/// A configured value as it may be shown: an `env:` reference as it is (it names the variable,
/// not the secret), a literal credential masked.
pub fn setting<'a>(name: &str, value: &'a str) -> Cow<'a, str> {
    if value.starts_with("env:") || !names_credential(name) {
        Cow::Borrowed(value)
    } else {
        Cow::Borrowed(MASK)
    }
}

/// A URL as it may be shown: without its password, and with the values of query parameters
/// that name a credential masked. Text that is not a URL is shown as `<url>`.
pub fn url(text: &str) -> String {
    if text.starts_with("env:") {
        return text.to_string();
    }
    let Ok(mut url) = url::Url::parse(text) else {
        return "<url>".into();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some(MASK));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let shown = if names_credential(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), shown)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// A webhook URL as it may be shown: its scheme and host only (the path is the secret of
/// Slack, Teams and Discord webhooks).
pub fn webhook_url(text: &str) -> String {
    if text.starts_with("env:") {
        return text.to_string();
    }
    url::Url::parse(text)
        .ok()
        .and_then(|u| u.host_str().map(|h| format!("{}://{h}/…", u.scheme())))
        .unwrap_or_else(|| "<webhook>".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_names() {
        for name in [
            "api_key",
            "apikey",
            "Authorization",
            "X-Api-Token",
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "X-Amz-Signature",
            "Cookie",
        ] {
            assert!(names_credential(name), "{name}");
        }
        for name in ["thumbs", "results", "security.protocol", "Accept", "format"] {
            assert!(!names_credential(name), "{name}");
        }
    }

    #[test]
    fn urls_lose_passwords_and_credential_values() {
        for (given, shown) in [
            (
                "https://api.nasa.gov/planetary/apod?api_key=S3CRET&thumbs=true",
                "https://api.nasa.gov/planetary/apod?api_key=***&thumbs=true",
            ),
            (
                "postgres://etl:hunter2@db.example.org:5432/quakes?sslmode=require&password=x",
                "postgres://etl:***@db.example.org:5432/quakes?sslmode=require&password=***",
            ),
            ("postgres://etl@db/quakes", "postgres://etl@db/quakes"),
            (
                "env:QUAKESTREAM_POSTGRES_URL",
                "env:QUAKESTREAM_POSTGRES_URL",
            ),
            ("not a url hunter2", "<url>"),
        ] {
            assert_eq!(url(given), shown);
        }
    }

    #[test]
    fn webhooks_show_their_host_only() {
        for (given, shown) in [
            (
                "https://hooks.slack.com/services/T000/B000/XXXX",
                "https://hooks.slack.com/…",
            ),
            ("env:SLACK_WEBHOOK", "env:SLACK_WEBHOOK"),
            ("not a url", "<webhook>"),
        ] {
            assert_eq!(webhook_url(given), shown);
        }
    }

    #[test]
    fn settings_show_references_and_mask_credentials() {
        assert_eq!(setting("api_key", "S3CRET"), MASK);
        assert_eq!(setting("api_key", "env:NASA_API_KEY"), "env:NASA_API_KEY");
        assert_eq!(setting("thumbs", "true"), "true");
    }

    #[test]
    fn env_references_resolve_with_defaults() {
        // SAFETY: unit tests in this module are the only readers of these names.
        unsafe {
            std::env::set_var("QS_SECRET_TEST_SET", "value");
            std::env::remove_var("QS_SECRET_TEST_UNSET");
        }
        assert_eq!(resolve("literal").unwrap(), "literal");
        assert_eq!(resolve("env:QS_SECRET_TEST_SET").unwrap(), "value");
        assert_eq!(
            resolve("env:QS_SECRET_TEST_UNSET:-fallback").unwrap(),
            "fallback"
        );
        assert!(
            resolve("env:QS_SECRET_TEST_UNSET")
                .unwrap_err()
                .contains("QS_SECRET_TEST_UNSET is not set")
        );
    }
}
