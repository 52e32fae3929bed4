//! The sinks under `up`, and `run files` / `run object-store` alone.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{print_out, up::absolute_data_dir};
use crate::{
    config::Config,
    error::{Error, Result},
    kafka::KafkaSettings,
    sink::{
        encode::FileSchema,
        lake::{self, LakeConfig, LakeMetrics, Schemas},
        postgres::PostgresMetrics,
        schema::Columns,
    },
};

/// The lake's settings of `[files]` (`object` false) or `[object_store]`.
fn lake_config(config: &Config, object: bool) -> &LakeConfig {
    if object {
        &config.object_store
    } else {
        &config.files
    }
}

pub(super) fn lake_line(config: &Config, object: bool) -> String {
    let c = lake_config(config, object);
    let location = if object {
        c.location.clone()
    } else {
        absolute_data_dir(config)
            .join(&c.location)
            .display()
            .to_string()
    };
    let what = match &c.object_per_record {
        Some(template) => format!("one object per record ({template})"),
        None => format!("{:?} {}", c.format, c.partition_by.replace('%', "")).to_lowercase(),
    };
    format!(
        "  {:<11} {} -> {location} ({what})",
        if object { "object-store" } else { "files" },
        c.topics.join(", "),
    )
}

/// Columns per topic: the quakes topic has the `Quake` contract, the window results the
/// configured window's columns, the rest are inferred; `schemas` in the config overrides.
fn schemas(config: &Config, lake: &LakeConfig) -> Schemas {
    let mut map = std::collections::HashMap::new();
    map.insert(
        config.usgs.topic().to_string(),
        FileSchema::Fixed(Arc::new(Columns::quake())),
    );
    map.insert(
        config.window.output.clone(),
        FileSchema::Fixed(Arc::new(Columns::window(&config.window))),
    );
    for (topic, schema) in &lake.schemas {
        let schema = match schema.as_str() {
            "quake" => FileSchema::Fixed(Arc::new(Columns::quake())),
            "window" => FileSchema::Fixed(Arc::new(Columns::window(&config.window))),
            _ => FileSchema::Infer,
        };
        map.insert(topic.clone(), schema);
    }
    Schemas(map)
}

/// `quakestream run files` (`object` false) and `quakestream run object-store`.
pub async fn run_lake(
    config: &Config,
    object: bool,
    registry: &crate::metrics::Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    print_out(&format!(
        "{} sink at {}:\n{}\nPress Ctrl+C to stop (open files are finished first).\n",
        if object { "object-store" } else { "files" },
        settings.bootstrap,
        lake_line(config, object)
    ))?;
    lake(config, &settings, object, registry, shutdown).await
}

/// A lake sink until `stop`, then its summary in the log.
pub(super) async fn lake(
    config: &Config,
    settings: &KafkaSettings,
    object: bool,
    registry: &crate::metrics::Registry,
    stop: CancellationToken,
) -> Result<()> {
    let c = lake_config(config, object);
    // A setting that cannot work is an error of its own, with no summary of nothing done.
    c.validate(object).map_err(|message| Error::Config {
        origin: if object { "[object_store]" } else { "[files]" }.into(),
        message,
    })?;
    let metrics = Arc::new(LakeMetrics::new(if object {
        "object-store"
    } else {
        "files"
    }));
    registry.register(metrics.clone());
    let result = lake::run(
        c,
        object,
        schemas(config, c),
        &config.topics.dlq,
        &absolute_data_dir(config),
        settings,
        metrics.clone(),
        stop,
    )
    .await;
    let m = &metrics;
    tracing::info!(
        sink = if object { "object-store" } else { "files" },
        records = m.records.get(),
        bad = m.bad.get(),
        files = m.files.get(),
        objects = m.objects.get(),
        commits = m.commits.get(),
        "sink summary"
    );
    result
}

pub(super) fn postgres_line(config: &Config) -> String {
    let p = &config.postgres;
    let mut topics = p.quakes_topic.clone();
    if !p.windows_topic.is_empty() {
        topics.push_str(", ");
        topics.push_str(&p.windows_topic);
    }
    format!(
        "  postgres    {topics} -> {} (fact_earthquake, fact_earthquake_revision, agg_window)",
        p.redacted_url()
    )
}

/// `quakestream run postgres`.
pub async fn run_postgres(
    config: &Config,
    registry: &crate::metrics::Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    print_out(&format!(
        "postgres sink at {}:\n{}\nPress Ctrl+C to stop.\n",
        settings.bootstrap,
        postgres_line(config)
    ))?;
    postgres(config, &settings, registry, shutdown).await
}

/// The PostgreSQL sink until `stop`, then its summary in the log.
pub(super) async fn postgres(
    config: &Config,
    settings: &KafkaSettings,
    registry: &crate::metrics::Registry,
    stop: CancellationToken,
) -> Result<()> {
    config
        .postgres
        .validate()
        .map_err(|message| Error::Config {
            origin: "[postgres]".into(),
            message,
        })?;
    let metrics = Arc::new(PostgresMetrics::default());
    registry.register(metrics.clone());
    let result = crate::sink::postgres::run(
        &config.postgres,
        &config.topics.dlq,
        &absolute_data_dir(config),
        settings,
        metrics.clone(),
        stop,
    )
    .await;
    let m = &metrics;
    tracing::info!(
        sink = "postgres",
        records = m.records.get(),
        bad = m.bad.get(),
        batches = m.batches.get(),
        revisions_inserted = m.revisions_inserted.get(),
        events_upserted = m.events_upserted.get(),
        windows_upserted = m.windows_upserted.get(),
        retries = m.retries.get(),
        "sink summary"
    );
    result
}
