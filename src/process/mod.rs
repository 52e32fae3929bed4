//! Processors: consume → compute → produce.
//!
//! - [`window`]: event-time windows. The engine ([`window::Assigner`], [`window::Combiner`]) is
//!   pure logic; [`window::task`] runs it on Kafka.
//! - [`console`]: tables and boxes for the terminal.

pub mod console;
pub mod window;
