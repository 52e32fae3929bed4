//! Sinks: consume → write durably → then commit offsets.
//!
//! - [`lake`]: the `files` and `object-store` sinks (JSON Lines, CSV, Parquet in Hive-style
//!   partitions), exactly-once through deterministic file names.
//! - [`postgres`]: the warehouse star schema, upserts guarded by `updated`.

pub mod lake;
pub mod postgres;
