//! Processors: consume → compute → produce.
//!
//! - [`window`]: the event-time window engine (assign, combine, emit), pure logic.
pub mod window;
