//! The one typed configuration tree, and how it is loaded.
//!
//! Layers, each overriding the one before: built-in defaults → the config file
//! (`quakestream.toml` in the working directory, or `--config FILE`) → `QUAKESTREAM_*`
//! environment variables → command-line flags. Unknown keys are errors that name the key and
//! where it was written, because a misspelt key silently ignored is a setting silently lost.
//!
//! Environment variables name a key by its path joined with `_`, upper-cased:
//! `QUAKESTREAM_DATA_DIR`, `QUAKESTREAM_BROKERS`, `QUAKESTREAM_BROKER_LISTEN`,
//! `QUAKESTREAM_TOPICS_PARTITIONS`. `QUAKESTREAM_KAFKA_<NAME>` sets the librdkafka property
//! whose dots are written as `_` (`QUAKESTREAM_KAFKA_SASL_PASSWORD` → `sasl.password`): the
//! place for secrets, which never need to be written in a file. `QUAKESTREAM_LOG` (the log
//! filter) and `QUAKESTREAM_CONFIG` (the config file) are read by the command line itself.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize};
use toml::{Table, Value};

use crate::error::{Error, Result};

/// The file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "quakestream.toml";

/// Environment variables with this prefix configure quakestream.
pub const ENV_PREFIX: &str = "QUAKESTREAM_";

/// Variables with the prefix that are not config keys (read by the command line).
const ENV_NOT_KEYS: &[&str] = &["QUAKESTREAM_LOG", "QUAKESTREAM_CONFIG"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the embedded broker's storage, component state, the lake and logs live.
    pub data_dir: PathBuf,
    /// Bootstrap servers of an external Kafka cluster, `host:port[,host:port…]`. Unset: the
    /// embedded broker is used (started by `up` and `broker`, reached at `broker.listen`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// The embedded broker.
    pub broker: BrokerConfig,
    /// How quakestream's Kafka clients behave.
    pub client: ClientConfig,
    /// Defaults for the topics quakestream creates.
    pub topics: TopicsConfig,
    /// The USGS real-time feed source.
    pub usgs: crate::source::usgs::UsgsConfig,
    /// The FDSN event service backfill.
    pub backfill: crate::source::backfill::BackfillConfig,
    /// Polled JSON APIs (`[[http]]`, one table per source): randomuser, NASA APOD, any other.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<crate::source::http::HttpSourceConfig>,
    /// Subway turnstile counts: an MTA file replayed as intervals, or synthetic messages.
    pub turnstile: crate::source::turnstile::TurnstileConfig,
    /// A JSON Lines file (or standard input) to a topic, one message per line, exactly once.
    pub jsonl: crate::source::jsonl::JsonlConfig,
    /// The EMSC real-time WebSocket (off by default).
    pub emsc: crate::source::emsc::EmscConfig,
    /// The window processor: event-time windows over the quakes topic.
    pub window: crate::process::window::WindowConfig,
    /// The alert processor: rules over quake revisions.
    pub alerts: crate::process::alert::AlertsConfig,
    /// The `files` sink: topics landed in a local lake (Parquet by default).
    #[serde(default = "crate::sink::lake::LakeConfig::files")]
    pub files: crate::sink::lake::LakeConfig,
    /// The `object-store` sink: the same lake on S3, GCS, Azure or local storage.
    #[serde(default = "crate::sink::lake::LakeConfig::object_store")]
    pub object_store: crate::sink::lake::LakeConfig,
    /// The `postgres` sink: quakes and window results in a warehouse star schema.
    pub postgres: crate::sink::postgres::PostgresConfig,
    /// The web server: the live map, the pipeline monitor, the API and `/metrics`.
    pub web: crate::web::WebConfig,
    /// Plausibility checks on input: how far ahead of the clock an event time may be.
    pub checks: crate::record::Checks,
    /// librdkafka properties, passed through verbatim to every client (after quakestream's own
    /// settings, so they win): `"security.protocol" = "SASL_SSL"`, `"sasl.mechanisms" =
    /// "PLAIN"`, … Secrets belong in the environment (`QUAKESTREAM_KAFKA_SASL_PASSWORD`).
    #[serde(deserialize_with = "flat_properties")]
    pub kafka: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            brokers: None,
            broker: BrokerConfig::default(),
            client: ClientConfig::default(),
            topics: TopicsConfig::default(),
            usgs: crate::source::usgs::UsgsConfig::default(),
            backfill: crate::source::backfill::BackfillConfig::default(),
            http: Vec::new(),
            turnstile: crate::source::turnstile::TurnstileConfig::default(),
            jsonl: crate::source::jsonl::JsonlConfig::default(),
            emsc: crate::source::emsc::EmscConfig::default(),
            window: crate::process::window::WindowConfig::default(),
            alerts: crate::process::alert::AlertsConfig::default(),
            files: crate::sink::lake::LakeConfig::files(),
            object_store: crate::sink::lake::LakeConfig::object_store(),
            postgres: crate::sink::postgres::PostgresConfig::default(),
            web: crate::web::WebConfig::default(),
            checks: crate::record::Checks::default(),
            kafka: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Address the embedded broker listens on (Kafka protocol).
    pub listen: String,
    /// Address clients are told to connect to; defaults to `listen`. Set it when listening on
    /// `0.0.0.0` so that other machines get a reachable name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised: Option<String>,
    /// The cluster id the embedded broker reports.
    pub cluster_id: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: "127.0.0.1:9092".into(),
            advertised: None,
            cluster_id: "quakestream".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// `client.id` of every Kafka client, shown in broker logs and metrics.
    pub id: String,
    /// How long to wait for the cluster before giving up with an error (metadata, admin calls,
    /// the first connection).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Producer compression: `auto`, `none`, `gzip`, `snappy`, `lz4` or `zstd`. `auto` is
    /// `none` against the embedded broker (which stores records uncompressed, so compressing
    /// them for a loopback hop only costs both sides CPU) and `lz4` against a cluster.
    pub compression: String,
    /// How long a producer waits to batch messages (`linger.ms`).
    #[serde(with = "duration")]
    pub linger: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            id: "quakestream".into(),
            timeout: Duration::from_secs(10),
            compression: "auto".into(),
            linger: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    /// Partitions of a topic quakestream creates.
    pub partitions: i32,
    /// Replication factor of a topic quakestream creates (1 for the embedded broker; 3 is usual
    /// on a production cluster).
    pub replication_factor: i32,
    /// The dead-letter topic: records that could not be handled, with the reason.
    pub dlq: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            partitions: 3,
            replication_factor: 1,
            dlq: "quakestream-dlq".into(),
        }
    }
}

impl Config {
    /// Loads the file and environment layers over the defaults. `file` is `--config`; without
    /// it `quakestream.toml` is read when it exists.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config> {
        let mut merged = to_table(&Config::default());

        let file = match file {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
                origin: path.display().to_string(),
                message: format!("cannot read config file: {e}"),
            })?;
            merge(&mut merged, parse_file(&path, &text)?);
        }

        merge(&mut merged, env_layer(env)?);

        Config::deserialize(Value::Table(merged)).map_err(|e| Error::Config {
            origin: "environment".into(),
            message: e.message().to_string(),
        })
    }

    /// The effective configuration as TOML, with secret values replaced by `"***"`.
    pub fn to_redacted_toml(&self) -> String {
        use crate::secret;
        let mut shown = self.clone();
        shown.postgres.url = secret::url(&shown.postgres.url);
        for (key, value) in shown.kafka.iter_mut() {
            *value = secret::setting(key, value).into_owned();
        }
        for url in shown.alerts.webhooks.iter_mut() {
            *url = secret::webhook_url(url);
        }
        for http in shown.http.iter_mut() {
            http.url = secret::url(&http.url);
            for (key, value) in http.query.iter_mut() {
                *value = secret::setting(key, value).into_owned();
            }
            // Headers carry credentials more often than not: every literal value is hidden.
            for value in http.headers.values_mut() {
                if !value.starts_with("env:") {
                    *value = secret::MASK.into();
                }
            }
        }
        shown.emsc.url = secret::url(&shown.emsc.url);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    /// Whether this configuration runs against the embedded broker.
    pub fn embedded(&self) -> bool {
        self.brokers.is_none()
    }

    /// The codec quakestream's producers use: `client.compression`, with `auto` resolved.
    pub fn compression(&self) -> String {
        match self.client.compression.as_str() {
            "auto" if self.embedded() => "none".into(),
            "auto" => "lz4".into(),
            other => other.into(),
        }
    }

    /// The bootstrap servers clients connect to.
    pub fn bootstrap(&self) -> String {
        match &self.brokers {
            Some(brokers) => brokers.clone(),
            None => self
                .broker
                .advertised
                .clone()
                .unwrap_or_else(|| self.broker.listen.clone()),
        }
    }

    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Error::Config {
            origin: "config".into(),
            message,
        };
        if let Some(brokers) = &self.brokers
            && brokers.split(',').any(|b| b.trim().is_empty())
        {
            return Err(bad(format!(
                "brokers = {brokers:?}: expected HOST:PORT[,HOST:PORT…]"
            )));
        }
        if self.topics.partitions < 1 {
            return Err(bad(format!(
                "topics.partitions = {}: must be at least 1",
                self.topics.partitions
            )));
        }
        if self.topics.replication_factor < 1 {
            return Err(bad(format!(
                "topics.replication_factor = {}: must be at least 1",
                self.topics.replication_factor
            )));
        }
        self.usgs.validate().map_err(bad)?;
        self.window
            .validate()
            .map_err(|e| bad(format!("[window]: {e}")))?;
        self.alerts
            .validate()
            .map_err(|e| bad(format!("[alerts]: {e}")))?;
        self.web
            .validate()
            .map_err(|e| bad(format!("[web]: {e}")))?;
        if self.turnstile.enabled {
            self.turnstile.validate().map_err(bad)?;
        }
        if self.jsonl.enabled {
            self.jsonl.validate().map_err(bad)?;
        }
        self.emsc.validate().map_err(bad)?;
        let mut names = std::collections::HashSet::new();
        for source in &self.http {
            source.validate().map_err(bad)?;
            let name = source.resolved().name;
            if !names.insert(name.clone()) {
                return Err(bad(format!(
                    "two [[http]] sources are named {name:?}; give each its own name"
                )));
            }
        }
        if !["auto", "none", "gzip", "snappy", "lz4", "zstd"]
            .contains(&self.client.compression.as_str())
        {
            return Err(bad(format!(
                "client.compression = {:?}: expected auto, none, gzip, snappy, lz4 or zstd",
                self.client.compression
            )));
        }
        Ok(())
    }
}

fn to_table(config: &Config) -> Table {
    match Value::try_from(config) {
        Ok(Value::Table(table)) => table,
        _ => Table::new(),
    }
}

/// Parses the file strictly (so an unknown key is reported with its line) and returns it as a
/// table for merging.
fn parse_file(path: &Path, text: &str) -> Result<Table> {
    let located = |e: toml::de::Error| {
        let origin = match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("{}:{line}", path.display())
            }
            None => path.display().to_string(),
        };
        Error::Config {
            origin,
            message: e.message().trim().to_string(),
        }
    };
    toml::from_str::<Config>(text).map_err(located)?;
    text.parse::<Table>().map_err(located)
}

/// Overlays `over` on `base`, table by table.
fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base)), Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Builds the environment layer from `QUAKESTREAM_*` variables.
fn env_layer(env: impl IntoIterator<Item = (String, String)>) -> Result<Table> {
    let defaults = to_table(&Config::default());
    let mut leaves = Vec::new();
    collect_leaves(&defaults, &mut Vec::new(), &mut leaves);
    // Optional keys have no default to find them by.
    leaves.push((vec!["brokers".into()], Value::String(String::new())));
    for optional in [
        ["broker", "advertised"],
        ["usgs", "interval"],
        ["window", "slide"],
        ["window", "key_field"],
        ["window", "instance_id"],
        ["files", "instance_id"],
        ["files", "time_field"],
        ["object_store", "instance_id"],
        ["object_store", "time_field"],
        ["object_store", "endpoint"],
        ["object_store", "object_per_record"],
        ["postgres", "instance_id"],
        ["web", "quakes_topic"],
        ["web", "stats_topic"],
        ["web", "alerts_topic"],
        ["jsonl", "version"],
        ["jsonl", "time"],
    ] {
        leaves.push((
            optional.iter().map(|s| s.to_string()).collect(),
            Value::String(String::new()),
        ));
    }

    let mut layer = Table::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !ENV_NOT_KEYS.contains(&k.as_str()))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let name = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        if let Some(property) = name.strip_prefix("kafka_") {
            let kafka = layer
                .entry("kafka")
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(kafka) = kafka {
                kafka.insert(property.replace('_', "."), Value::String(raw));
            }
            continue;
        }
        let Some((path, default)) = leaves.iter().find(|(path, _)| path.join("_") == name) else {
            let known: Vec<String> = leaves
                .iter()
                .map(|(p, _)| format!("{ENV_PREFIX}{}", p.join("_").to_ascii_uppercase()))
                .collect();
            return Err(Error::Config {
                origin: "environment".into(),
                message: format!(
                    "unknown variable {var}; known: {}, {ENV_PREFIX}KAFKA_<PROPERTY>",
                    known.join(", ")
                ),
            });
        };
        let value = typed_like(default, &raw).ok_or_else(|| Error::Config {
            origin: "environment".into(),
            message: format!("{var}={raw:?}: expected {}", default.type_str()),
        })?;
        insert_path(&mut layer, path, value);
    }
    Ok(layer)
}

fn collect_leaves(table: &Table, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, Value)>) {
    for (key, value) in table {
        prefix.push(key.clone());
        match value {
            Value::Table(inner) if key != "kafka" => collect_leaves(inner, prefix, out),
            Value::Table(_) => {}
            other => out.push((prefix.clone(), other.clone())),
        }
        prefix.pop();
    }
}

/// Parses an environment value as the type of the key's default.
fn typed_like(default: &Value, raw: &str) -> Option<Value> {
    match default {
        Value::Integer(_) => raw.trim().parse().ok().map(Value::Integer),
        Value::Float(_) => raw.trim().parse().ok().map(Value::Float),
        Value::Boolean(_) => raw.trim().parse().ok().map(Value::Boolean),
        // Lists of names: `QUAKESTREAM_FILES_TOPICS=earthquakes,earthquake-stats`.
        Value::Array(_) => Some(Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        )),
        _ => Some(Value::String(raw.to_string())),
    }
}

fn insert_path(table: &mut Table, path: &[String], value: Value) {
    let (last, parents) = path.split_last().expect("a key path is never empty");
    let mut at = table;
    for key in parents {
        let next = at
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        at = match next {
            Value::Table(t) => t,
            _ => return,
        };
    }
    at.insert(last.clone(), value);
}

/// Reads `[kafka]` into flat librdkafka property names. Unquoted dotted keys
/// (`security.protocol = "SSL"`) are nested tables in TOML; they are joined back with dots.
fn flat_properties<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = Table::deserialize(d)?;
    let mut out = BTreeMap::new();
    flatten(&table, "", &mut out).map_err(serde::de::Error::custom)?;
    Ok(out)
}

fn flatten(
    table: &Table,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
) -> std::result::Result<(), String> {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let text = match value {
            Value::Table(inner) => {
                flatten(inner, &name, out)?;
                continue;
            }
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "kafka property {name:?}: expected a string, number or boolean, found {}",
                    other.type_str()
                ));
            }
        };
        out.insert(name, text);
    }
    Ok(())
}

/// Durations written as `"30s"`, `"5m"`, `"1h 30m"`, `"250ms"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// An optional duration; absent means the component's own default.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let text = String::deserialize(d)?;
            super::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom)
        }
    }

    /// Parses a duration, with an error that shows the expected form.
    pub fn parse(text: &str) -> Result<Duration, String> {
        humantime::parse_duration(text.trim()).map_err(|e| {
            format!("invalid duration {text:?} ({e}); write it like \"30s\", \"5m\" or \"250ms\"")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_the_embedded_pipeline() {
        let config = Config::load(Some(Path::new("/dev/null")), []).unwrap();
        assert_eq!(config, Config::default());
        assert!(config.embedded());
        assert_eq!(config.bootstrap(), "127.0.0.1:9092");
        config.validate().unwrap();
    }

    #[test]
    fn automatic_compression_is_none_on_the_embedded_broker_and_lz4_on_a_cluster() {
        let embedded = load_text("", &[]).unwrap();
        assert_eq!(embedded.compression(), "none");
        let cluster = load_text("brokers = \"kafka:9092\"\n", &[]).unwrap();
        assert_eq!(cluster.compression(), "lz4");
        let chosen = load_text(
            "brokers = \"kafka:9092\"\n[client]\ncompression = \"zstd\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(chosen.compression(), "zstd");
        let chosen = load_text("[client]\ncompression = \"lz4\"\n", &[]).unwrap();
        assert_eq!(
            chosen.compression(),
            "lz4",
            "a choice is kept on the embedded broker too"
        );
        let err = load_text("[client]\ncompression = \"brotli\"\n", &[])
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected auto, none, gzip, snappy, lz4 or zstd"),
            "{err}"
        );
    }

    /// The error loading `text` with `env`, as the user reads it.
    fn load_error(text: &str, env: &[(&str, &str)]) -> String {
        load_text(text, env).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_names_the_key_the_file_and_the_line() {
        let err = load_error("data_dir = \"x\"\n\n[broker]\nlisten_addr = \"1\"\n", &[]);
        assert!(err.contains("listen_addr"), "{err}");
        assert!(err.contains("q.toml:4"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn layers_override_in_order() {
        let config = load_text(
            "brokers = \"file:9092\"\n[topics]\npartitions = 6\n[client]\ntimeout = \"2s\"\n",
            &[
                ("QUAKESTREAM_BROKERS", "env:9092"),
                ("QUAKESTREAM_TOPICS_REPLICATION_FACTOR", "3"),
                ("QUAKESTREAM_LOG", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(config.brokers.as_deref(), Some("env:9092"));
        assert_eq!(config.topics.partitions, 6);
        assert_eq!(config.topics.replication_factor, 3);
        assert_eq!(config.client.timeout, Duration::from_secs(2));
    }

    #[test]
    fn kafka_properties_pass_through_flat_and_secrets_are_redacted() {
        let config = load_text(
            "[kafka]\nsecurity.protocol = \"SASL_SSL\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"fetch.wait.max.ms\" = 50\n",
            &[("QUAKESTREAM_KAFKA_SASL_PASSWORD", "hunter2")],
        )
        .unwrap();
        assert_eq!(config.kafka["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka["sasl.mechanisms"], "PLAIN");
        assert_eq!(config.kafka["fetch.wait.max.ms"], "50");
        assert_eq!(config.kafka["sasl.password"], "hunter2");
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("\"sasl.password\" = \"***\""), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (text, env, says) in [
            (
                "[client]\ntimeout = \"soon\"\n",
                &[][..],
                "invalid duration \"soon\"",
            ),
            (
                "",
                &[("QUAKESTREAM_TOPICS_PARTITIONS", "many")],
                "QUAKESTREAM_TOPICS_PARTITIONS",
            ),
            (
                "",
                &[("QUAKESTREAM_BROKER_LISTN", "x")],
                "unknown variable QUAKESTREAM_BROKER_LISTN",
            ),
            ("data_dir = [1]\n", &[], "q.toml:1"),
        ] {
            let err = load_error(text, env);
            assert!(err.contains(says), "{err}");
        }
        let err = load_text("[topics]\npartitions = 0\n", &[])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("topics.partitions"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/q.toml")), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/q.toml"), "{err}");
        assert!(err.contains("cannot read config file"), "{err}");
    }
}
