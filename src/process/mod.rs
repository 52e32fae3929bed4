//! Processors: consume → compute → produce.
//!
//! - [`window`]: event-time windows. The engine ([`window::Assigner`], [`window::Combiner`]) is
//!   pure logic; [`window::task`] runs it on Kafka.
//! - [`alert`]: rules over quake revisions; [`alert::task`] runs them on Kafka.
//! - [`webhook`]: alerts POSTed in the background, retried with backoff.
//! - [`console`]: tables and boxes for the terminal.

pub mod alert;
pub mod console;
pub mod webhook;
pub mod window;
