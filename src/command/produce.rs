//! `quakestream produce`: the tutorial's first producer, with a delivery report per message.
//!
//! Delivery semantics: idempotent producer; a message counts as sent only when the broker has
//! acknowledged it, and its report says where it landed.

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{
    cli::ProduceArgs,
    config::Config,
    error::{Error, Result},
    kafka::producer::Producer,
};

/// How many sends may be in flight at once when no interval is set.
const IN_FLIGHT: usize = 256;

/// The tutorial's test message.
pub fn test_message(id: u64) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "texto": format!("Mensaje de prueba {id}"),
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

pub async fn produce(
    config: &Config,
    args: ProduceArgs,
    shutdown: CancellationToken,
) -> Result<()> {
    let (topic, settings, admin) = super::topic_admin(config, &args.topic).await?;
    admin.ensure_topics(std::slice::from_ref(&topic)).await?;
    let producer = Producer::new(&settings)?;

    let in_flight = if args.interval.is_zero() {
        IN_FLIGHT
    } else {
        1
    };
    let sends = futures::stream::iter(1..=args.count)
        .take_until(shutdown.cancelled())
        .then(|id| {
            let interval = args.interval;
            async move {
                if id > 1 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                id
            }
        })
        .map(|id| {
            let producer = producer.clone();
            let topic = topic.clone();
            async move {
                let key = id.to_string();
                let payload = test_message(id).to_string();
                let result = producer
                    .send(topic.as_str(), Some(&key), payload.as_bytes(), None)
                    .await;
                (key, result)
            }
        })
        .buffered(in_flight);
    futures::pin_mut!(sends);

    let (mut sent, mut failed) = (0u64, 0u64);
    while let Some((key, result)) = sends.next().await {
        let line = match result {
            Ok(d) => {
                sent += 1;
                format!(
                    "delivered key={key} partition={} offset={}\n",
                    d.partition, d.offset
                )
            }
            Err(e) => {
                failed += 1;
                format!("failed key={key}: {e}\n")
            }
        };
        print_out(&line)?;
    }
    producer.flush()?;
    eprintln!("{sent} delivered, {failed} failed, topic {topic}");
    if failed > 0 {
        return Err(Error::Broker(format!(
            "{failed} of {} messages were not delivered",
            sent + failed
        )));
    }
    Ok(())
}
