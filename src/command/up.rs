//! `quakestream up`: every configured component in one process, plus the embedded broker when
//! no external cluster is configured.

use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{
    config::Config,
    error::Result,
    kafka::{KafkaSettings, admin::Admin, embedded::EmbeddedBroker},
};

pub async fn up(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let broker = if config.embedded() {
        Some(EmbeddedBroker::start(&config.broker, &config.data_dir, shutdown.clone()).await?)
    } else {
        None
    };
    let mut settings = KafkaSettings::from_config(config);
    if let Some(broker) = &broker {
        settings.bootstrap = broker.bootstrap().to_string();
    }
    // Fails fast, naming the address, when an external cluster does not answer.
    let admin = Admin::connect(&settings).await?;
    let topics = admin.list().await?;

    let data_dir = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
    let mut summary = format!("quakestream {} is up\n", env!("CARGO_PKG_VERSION"));
    match &broker {
        Some(b) => summary.push_str(&format!(
            "  kafka       embedded broker on {} (storage {})\n",
            b.bootstrap(),
            b.db_path().display()
        )),
        None => summary.push_str(&format!(
            "  kafka       cluster at {}\n",
            settings.bootstrap
        )),
    }
    summary.push_str(&format!("  data dir    {}\n", data_dir.display()));
    summary.push_str(&format!("  topics      {}\n", topics.len()));
    summary.push_str("  components  none yet: sources, processors, sinks and the dashboard come in later releases\n");
    summary.push_str(&format!(
        "Try: quakestream{} produce --topic mensajes-test --count 10\n",
        if config.embedded() && settings.bootstrap != "127.0.0.1:9092" {
            format!(" --brokers {}", settings.bootstrap)
        } else {
            String::new()
        }
    ));
    summary.push_str("Press Ctrl+C to stop.\n");
    print_out(&summary)?;

    shutdown.cancelled().await;
    if let Some(broker) = broker {
        broker.stopped().await?;
    }
    print_out("quakestream stopped\n")?;
    Ok(())
}
