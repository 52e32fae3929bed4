//! `[postgres]`: where the warehouse is and how the sink loads it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[postgres]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Run this sink under `up` once `url` is set.
    pub enabled: bool,
    /// Connection URL, `postgres://user@host:5432/db`. Put the password in `PGPASSWORD` (or
    /// `QUAKESTREAM_POSTGRES_URL`), not in a file; `quakestream config` hides it.
    pub url: String,
    /// The quakes topic: `Quake` records into the fact tables.
    pub quakes_topic: String,
    /// The window results topic into `agg_window` (empty: not loaded).
    pub windows_topic: String,
    /// Consumer group; its committed offsets say what is in the warehouse.
    pub group_id: String,
    /// This process's static member id in the group. Unset: derived from the host name and the
    /// data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// At most this many messages per transaction.
    pub batch_size: usize,
    /// The longest pause between retries while the database is unreachable.
    #[serde(with = "crate::config::duration")]
    pub max_backoff: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            enabled: true,
            url: String::new(),
            quakes_topic: "earthquakes".into(),
            windows_topic: "earthquake-stats".into(),
            group_id: "quakestream-postgres".into(),
            instance_id: None,
            batch_size: 2000,
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl PostgresConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.url.trim().is_empty() {
            return Err(
                "url is empty: set it to postgres://user@host:5432/database (password \
                        in PGPASSWORD)"
                    .into(),
            );
        }
        self.connect_config()?;
        if self.quakes_topic.is_empty() {
            return Err("quakes_topic is empty".into());
        }
        if self.batch_size == 0 {
            return Err("batch_size must be above zero".into());
        }
        Ok(())
    }

    /// The connection settings, and how the connection is secured (`sslmode`, see [`super::tls`]).
    pub(super) fn connect_config(
        &self,
    ) -> std::result::Result<(tokio_postgres::Config, super::tls::Tls), String> {
        let (url, tls) = super::tls::split(&self.url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("url is not a PostgreSQL connection URL: {e}"))?;
        if url.starts_with("postgres") {
            config.ssl_mode(tls.pg_mode());
        }
        if tls.mode != super::tls::SslMode::Disable {
            // A bad root file is a settings error: found before anything starts.
            tls.client_config()?;
        }
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        config.application_name("quakestream");
        config.connect_timeout(Duration::from_secs(10));
        Ok((config, tls))
    }

    /// The URL with any password replaced, for logs and `quakestream config`.
    pub fn redacted_url(&self) -> String {
        crate::secret::url(&self.url)
    }
}
