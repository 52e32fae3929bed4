//! `quakestream consume`: print partition, offset, key and value of each message.
//!
//! Delivery semantics: at least once for a named group. A message's offset is stored after it
//! is printed and committed in the background and at exit, so the next run with the same group
//! resumes after the last printed message.

use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{
    cli::ConsumeArgs,
    config::Config,
    error::{Error, Result},
    kafka::consumer::{Consumer, StartFrom},
};
use rdkafka::Message;

pub async fn consume(
    config: &Config,
    args: ConsumeArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    let (topic, settings, admin) = super::topic_admin(config, &args.topic).await?;
    if !admin.exists(&topic).await? {
        return Err(Error::UnknownTopic(topic.to_string()));
    }

    let (group, commits) = match &args.group {
        Some(group) => (group.clone(), true),
        None => (
            format!("quakestream-console-{}", uuid::Uuid::new_v4().simple()),
            false,
        ),
    };
    let start = if args.from_beginning {
        StartFrom::Earliest
    } else {
        StartFrom::Latest
    };
    let consumer = Consumer::new(&settings, &group, start, commits)?;
    consumer.subscribe(std::slice::from_ref(&topic))?;

    let mut count = 0u64;
    let limit = args.max_messages.unwrap_or(u64::MAX);
    while count < limit {
        let message = tokio::select! {
            () = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error; retrying");
                continue;
            }
        };
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| "(null)".into());
        let value = message
            .payload()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| "(null)".into());
        let line = format!(
            "partition={} offset={} key={key} value={value}\n",
            message.partition(),
            message.offset()
        );
        if !print_out(&line)? {
            break;
        }
        consumer.handled(&message)?;
        count += 1;
    }
    consumer.commit()?;
    eprintln!("{count} messages consumed from {topic} (group {group})");
    Ok(())
}
