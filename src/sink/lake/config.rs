//! `[files]` and `[object_store]`: where the lake is, what goes in it, how files roll.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::duration,
    sink::lake::encode::{Compression, Format, Formats},
};

/// One lake writer's settings. `[files]` writes under a local directory, `[object_store]` to a
/// bucket; everything else is the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeConfig {
    /// Run this sink under `up` (`[object_store]`: once `location` is set).
    pub enabled: bool,
    /// `[files]`: a directory (relative paths are under the data directory). `[object_store]`:
    /// a URL, `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `file:///absolute/dir` or `memory://`. Credentials come from the standard environment
    /// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, …).
    pub location: String,
    /// Topics to land, each under `<location>/<topic>/`.
    pub topics: Vec<String>,
    /// Consumer group; its committed offsets say what is in the lake.
    pub group_id: String,
    /// This process's static member id in the group. Unset: derived from the host name and the
    /// data directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// `jsonl`, `csv` or `parquet`, or a list of them written side by side
    /// (`["jsonl", "csv", "parquet"]`).
    pub format: Formats,
    /// `none` or `gzip` for jsonl and csv; `none`, `snappy` or `zstd` for parquet. With several
    /// formats it applies to those it fits; the others are written uncompressed (jsonl, csv)
    /// or with snappy (parquet).
    pub compression: Compression,
    /// The Hive-style partition directories, as a strftime pattern over the event time (UTC).
    pub partition_by: String,
    /// Field holding the event time (RFC 3339 or epoch ms). Unset: the Kafka message timestamp,
    /// which quakestream sets to the event time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_field: Option<String>,
    /// Columns of a topic's CSV and Parquet files: `quake`, `window` or `infer`. Topics not
    /// listed: `quake` for the quakes topic, `window` for the window results, `infer` for others.
    pub schemas: BTreeMap<String, String>,
    /// A file set is finished when it holds this many records…
    pub roll_records: u64,
    /// …or this many bytes of records…
    pub roll_bytes: u64,
    /// …or its first record is this old.
    #[serde(with = "duration")]
    pub roll_age: Duration,
    /// `[object_store]` only: S3-compatible endpoint (MinIO, moto, R2), like
    /// `http://127.0.0.1:5000`. Unset: `AWS_ENDPOINT`, else AWS itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `[object_store]` only: one object per record instead of files, named by this template
    /// over the record's fields, like `"{date}.json"` (the APOD tutorial's layout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_per_record: Option<String>,
    /// `[object_store]` with `object_per_record`: objects named from the location itself
    /// (`s3://bucket/{date}.json`, the APOD tutorial's layout) instead of from a folder per
    /// topic (`s3://bucket/<topic>/{date}.json`).
    pub object_at_root: bool,
    /// CSV only: write text cells exactly as they are. By default a text cell that begins with
    /// `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, so that a spreadsheet
    /// shows it instead of running it as a formula; set this when only programs read the files.
    pub csv_raw_text: bool,
    /// Window results: write only the final result of each window (`"final": true`), not the
    /// updates before it, as a Spark job in append mode does. Records without a `final`
    /// field are written as usual.
    pub finals_only: bool,
}

impl Default for LakeConfig {
    fn default() -> Self {
        LakeConfig::files()
    }
}

impl LakeConfig {
    /// The local Parquet lake `up` writes by default.
    pub fn files() -> LakeConfig {
        LakeConfig {
            enabled: true,
            location: "lake".into(),
            topics: vec![
                "earthquakes".into(),
                "earthquake-stats".into(),
                "earthquake-alerts".into(),
            ],
            group_id: "quakestream-files".into(),
            instance_id: None,
            format: Formats::one(Format::Parquet),
            compression: Compression::Snappy,
            partition_by: "dt=%Y-%m-%d/hour=%H".into(),
            time_field: None,
            schemas: BTreeMap::new(),
            roll_records: 100_000,
            roll_bytes: 128 * 1024 * 1024,
            roll_age: Duration::from_secs(60),
            endpoint: None,
            object_per_record: None,
            object_at_root: false,
            csv_raw_text: false,
            finals_only: false,
        }
    }

    /// Object storage: runs under `up` once a location is configured.
    pub fn object_store() -> LakeConfig {
        LakeConfig {
            enabled: true,
            location: String::new(),
            group_id: "quakestream-object-store".into(),
            ..LakeConfig::files()
        }
    }

    /// Checks what can be checked without touching storage; errors name the setting.
    pub fn validate(&self, object_store: bool) -> Result<(), String> {
        self.format.check(self.compression)?;
        if self.location.trim().is_empty() {
            return Err(if object_store {
                "location is empty: set it to a URL like s3://bucket/prefix".into()
            } else {
                "location is empty: set it to a directory".into()
            });
        }
        if !object_store && (self.endpoint.is_some() || self.object_per_record.is_some()) {
            return Err(
                "endpoint and object_per_record apply to [object_store], not [files]".into(),
            );
        }
        if self.object_at_root && self.object_per_record.is_none() {
            return Err("object_at_root applies to object_per_record, which is not set".into());
        }
        if self.topics.is_empty() {
            return Err("topics is empty: name at least one topic to land".into());
        }
        if self.roll_records == 0 || self.roll_bytes == 0 || self.roll_age.is_zero() {
            return Err("roll_records, roll_bytes and roll_age must be above zero".into());
        }
        super::partition::Partitioner::new(&self.partition_by)?;
        for (topic, schema) in &self.schemas {
            if !matches!(schema.as_str(), "quake" | "window" | "infer") {
                return Err(format!(
                    "schemas.{topic} = {schema:?}: expected \"quake\", \"window\" or \"infer\""
                ));
            }
        }
        if let Some(template) = &self.object_per_record {
            super::template::Template::parse(template)?;
        }
        Ok(())
    }
}
