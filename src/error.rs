//! The library's error type.
//!
//! Every variant says who is at fault ([`Fault`]) and whether trying again can help
//! ([`Error::is_retriable`]), so callers decide to retry, back off or stop without parsing
//! messages. Messages are one line: `main` prints them as they are, with no backtrace.

use std::path::PathBuf;

use rdkafka::error::KafkaError;

/// Who caused an error: the person running quakestream, a system outside it, or quakestream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A wrong flag, config key or argument: fix the input and run again.
    User,
    /// A broker, a server or the file system did not do what was asked.
    External,
    /// A bug in quakestream.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration (file, environment or flags) is invalid.
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },

    /// A topic name Kafka would reject.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic { name: String, reason: &'static str },

    /// The topic does not exist on the cluster.
    #[error(
        "topic {0:?} does not exist (see `quakestream topics list`, or create it with `quakestream topics create {0}`)"
    )]
    UnknownTopic(String),

    /// `topics create` of a topic that is already there.
    #[error("topic {0:?} already exists (see `quakestream topics describe {0}`)")]
    TopicExists(String),

    /// No broker answered at the bootstrap address.
    #[error("{0}")]
    Unreachable(String),

    /// The embedded broker could not start or stopped with an error.
    #[error("embedded broker: {0}")]
    Broker(String),

    /// A Kafka client call failed.
    #[error("kafka: {what}: {source}")]
    Kafka {
        what: &'static str,
        #[source]
        source: KafkaError,
    },

    /// A sink's store (object storage, a database) refused or failed a write.
    #[error("{sink}: {message}")]
    Sink { sink: &'static str, message: String },

    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> Error {
        move |source| Error::Kafka { what, source }
    }

    /// A configuration error of `origin` (a section, a flag), for `map_err` on a validation.
    pub fn config(origin: &str) -> impl FnOnce(String) -> Error {
        let origin = origin.to_string();
        move |message| Error::Config { origin, message }
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub fn fault(&self) -> Fault {
        match self {
            Error::Config { .. }
            | Error::InvalidTopic { .. }
            | Error::UnknownTopic(_)
            | Error::TopicExists(_) => Fault::User,
            Error::Unreachable(_) | Error::Kafka { .. } | Error::Io { .. } | Error::Sink { .. } => {
                Fault::External
            }
            Error::Broker(_) => Fault::Internal,
        }
    }

    /// Whether the same call may succeed later without any change of input.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Unreachable(_) => true,
            Error::Kafka { source, .. } => source.rdkafka_error_code().is_some_and(|code| {
                use rdkafka::types::RDKafkaErrorCode as C;
                matches!(
                    code,
                    C::BrokerTransportFailure
                        | C::AllBrokersDown
                        | C::OperationTimedOut
                        | C::RequestTimedOut
                        | C::MessageTimedOut
                        | C::LeaderNotAvailable
                        | C::NotLeaderForPartition
                        | C::NotCoordinator
                        | C::CoordinatorLoadInProgress
                        | C::CoordinatorNotAvailable
                        | C::NetworkException
                        | C::QueueFull
                )
            }),
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
