//! Sources: poll an API, normalize, dedupe, produce.
//!
//! - [`usgs`]: the USGS real-time summary feeds.
//! - [`backfill`]: the FDSN event service, for history and for revisions and deletions of events
//!   that left the feeds.
//! - [`geojson`]: USGS GeoJSON parsed and normalized to [`crate::record::Quake`].
//! - [`emsc`]: the EMSC real-time WebSocket, normalized to `Quake`.
//! - [`http`]: any JSON API, and the `randomuser` and `nasa-apod` presets.
//! - [`turnstile`]: MTA turnstile counters (a weekly file replayed as deltas, or synthetic).
//! - [`schedule`]: the polling loop they share (interval, backoff, `Retry-After`, deadline).
//! - [`fetch`]: the HTTP poller every source shares (conditional requests, gzip, size cap,
//!   timeouts, retries with backoff and jitter, `Retry-After`).
//! - [`dedupe`]: one message per (event, revision), state rebuilt from the topic.
//! - [`publish`]: writing records, dead letters and output profiles to Kafka.

pub mod backfill;
pub mod dedupe;
pub mod emsc;
pub mod fetch;
pub mod geojson;
pub mod http;
pub mod publish;
pub mod schedule;
pub mod turnstile;
pub mod usgs;
