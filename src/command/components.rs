//! The pipeline's components, built from the configuration: the one list that `up` runs and
//! `run NAME` picks from. A new component is one line here (see docs/components.md).

use std::{path::Path, sync::Arc};

use crate::{
    config::Config,
    runtime::{Component, Stage},
    sink::lake::{LakeConfig, LakeSettings, Schemas, encode::FileSchema, schema::Columns},
    source::Source,
};

/// A component and whether `up` runs it (`run NAME` runs it either way).
pub struct Entry {
    pub enabled: bool,
    pub component: Arc<dyn Component>,
}

/// Every component the configuration describes, in start-up order (the web server apart: it
/// needs its socket, bound by the command).
pub fn build(config: &Config, data_dir: &Path) -> Vec<Entry> {
    let entry = |enabled: bool, component: Arc<dyn Component>| Entry { enabled, component };
    let mut all = vec![entry(
        config.usgs.enabled,
        Arc::new(Source::of(&config.usgs)),
    )];
    for http in &config.http {
        all.push(entry(http.enabled, Arc::new(Source::of(http))));
    }
    all.push(entry(
        config.emsc.enabled,
        Arc::new(Source::of(&config.emsc)),
    ));
    all.push(entry(
        config.turnstile.enabled,
        Arc::new(Source::of(&config.turnstile)),
    ));
    all.push(entry(
        config.jsonl.enabled,
        Arc::new(Source::of(&config.jsonl)),
    ));
    all.push(entry(
        config.window.enabled,
        Arc::new(Stage::new(config.window.clone(), data_dir)),
    ));
    all.push(entry(
        config.alerts.enabled,
        Arc::new(Stage::new(config.alerts.clone(), data_dir)),
    ));
    for (object, lake) in [(false, &config.files), (true, &config.object_store)] {
        let enabled = lake.enabled && (!object || !lake.location.is_empty());
        let settings = LakeSettings {
            config: lake.clone(),
            object,
            schemas: schemas(config, lake),
        };
        all.push(entry(enabled, Arc::new(Stage::new(settings, data_dir))));
    }
    all.push(entry(
        config.postgres.enabled && !config.postgres.url.is_empty(),
        Arc::new(Stage::new(config.postgres.clone(), data_dir)),
    ));
    all
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
