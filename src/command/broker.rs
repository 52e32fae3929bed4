//! `quakestream broker`: the embedded broker alone, in the foreground.

use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{config::Config, error::Result, kafka::embedded::EmbeddedBroker};

pub async fn broker(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let broker = EmbeddedBroker::start(&config.broker, &config.data_dir, shutdown.clone()).await?;
    print_out(&format!(
        "embedded Kafka broker listening on {} (storage {})\nPress Ctrl+C to stop.\n",
        broker.bootstrap(),
        broker.db_path().display()
    ))?;
    broker.stopped().await?;
    print_out("broker stopped\n")?;
    Ok(())
}
