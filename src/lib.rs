//! quakestream: a real-time earthquake data pipeline on Apache Kafka.
//!
//! A map of the crate:
//!
//! - [`cli`]: the command line's flags (clap); [`command`]: what each command does.
//! - [`config`]: the one typed configuration tree and its layers (defaults, file, environment,
//!   flags).
//! - [`kafka`]: the Kafka plumbing every component stands on: client settings, the idempotent
//!   [`kafka::producer`], the store-after-handling [`kafka::consumer`], topic administration in
//!   [`kafka::admin`], and the in-process [`kafka::embedded`] broker.
//! - [`shutdown`]: the cancellation token that SIGINT and SIGTERM cancel.
//! - [`error`]: the library's error type, which tells who is at fault and whether to retry.
//! - [`record`]: the records written to Kafka (`Quake`, dead letters); [`fields`]: paths and
//!   templates naming the fields of JSON records.
//! - [`source`]: sources that poll APIs and publish records (`usgs`), with the shared HTTP
//!   poller, feed parsing and revision-aware dedupe.
//! - [`metrics`]: counters and histograms in Prometheus text format.
//! - [`fake`]: the fake feed server that replays recorded responses and injects faults.
//! - [`process`]: the window and alert processors; [`sink`]: the lake, object-store and
//!   PostgreSQL sinks; [`web`]: the live map, the pipeline monitor, the API and `/metrics`.
//!
//! Each kind of component has a folder of its own, one file per component, and a variant of
//! [`cli::Component`] so that `quakestream run <component>` can start it alone.

pub mod cli;
pub mod command;
pub mod config;
pub mod error;
pub mod fake;
pub mod fields;
pub mod kafka;
mod macros;
pub mod metrics;
pub mod process;
pub mod record;
pub mod runtime;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod text;
pub mod web;

pub use config::Config;
pub use error::{Error, Result};
