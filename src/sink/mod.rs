//! Sinks: consume → write durably → then commit offsets.
//!
//! - [`lake`]: the `files` and `object-store` sinks (JSON Lines, CSV, Parquet in Hive-style
//!   partitions), exactly-once through deterministic file names.
//! - [`encode`]: one lake file being written; [`schema`]: typed columns and reading a JSON
//!   record into them.
//! - [`postgres`]: the warehouse star schema, upserts guarded by `updated`.

pub mod encode;
pub mod lake;
pub mod postgres;
pub mod schema;
