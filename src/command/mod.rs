//! The commands: each takes the effective [`Config`], its own arguments and the shutdown token.

mod backfill;
mod broker;
mod components;
mod consume;
mod produce;
mod replay;
mod topics;
mod up;

use tokio_util::sync::CancellationToken;

use crate::{
    cli::{Cli, Command, ListenArgs, ProcessArgs, SourceArgs, WebArgs},
    config::Config,
    error::{Error, Result},
    kafka::{KafkaSettings, TopicName, admin::Admin},
};

pub use backfill::backfill;
pub use broker::broker;
pub use consume::consume;
pub use produce::produce;
pub use replay::replay_server;
pub use topics::topics;
pub use up::up;

/// Loads the configuration layers, applies the global flags and runs the command.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> Result<()> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(brokers) = cli.brokers {
        config.brokers = Some(brokers);
    }
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    let listen = |config: &mut Config, args: &ListenArgs| {
        if let Some(listen) = &args.listen {
            config.broker.listen = listen.clone();
        }
    };
    let source = |config: &mut Config, args: &SourceArgs| -> Result<()> {
        if let Some(url) = &args.usgs_url {
            config.usgs.url = url.clone();
        }
        if let Some(interval) = args.interval {
            config.usgs.interval = Some(interval);
        }
        for pair in &args.http_url {
            let flag = |message: String| Error::Config {
                origin: "--http-url".into(),
                message,
            };
            let (name, url) = pair
                .split_once('=')
                .ok_or_else(|| flag(format!("{pair:?}: expected NAME=URL")))?;
            let source = config
                .http
                .iter_mut()
                .find(|s| s.resolved().name == name)
                .ok_or_else(|| flag(format!("no [[http]] source named {name:?}")))?;
            source.url = url.to_string();
        }
        Ok(())
    };
    let process = |config: &mut Config, args: &ProcessArgs| {
        if args.console {
            config.window.console = true;
            config.alerts.console = true;
        }
    };
    let web = |config: &mut Config, args: &WebArgs| {
        if let Some(listen) = &args.web {
            config.web.listen = listen.clone();
        }
    };
    let pipeline = match &cli.command {
        Command::Up(args) => Some(args),
        Command::Run(args) => Some(&args.up),
        Command::Broker(args) => {
            listen(&mut config, args);
            None
        }
        _ => None,
    };
    if let Some(args) = pipeline {
        listen(&mut config, &args.listen);
        source(&mut config, &args.source)?;
        process(&mut config, &args.process);
        web(&mut config, &args.web);
    }
    config.validate()?;

    match cli.command {
        Command::Up(_) => up(&config, shutdown).await,
        Command::Broker(_) => broker(&config, shutdown).await,
        Command::Run(args) => {
            let registry = std::sync::Arc::new(crate::metrics::Registry::default());
            let metrics = match &args.metrics {
                Some(listen) => Some(tokio::spawn(crate::web::serve_metrics(
                    crate::web::bind_metrics(listen).await?,
                    registry.clone(),
                    shutdown.clone(),
                ))),
                None => None,
            };
            let result = up::run(
                &config,
                args.component,
                args.name.as_deref(),
                registry.clone(),
                shutdown.clone(),
            )
            .await;
            // The metrics server stops with the component.
            shutdown.cancel();
            if let Some(task) = metrics {
                let _ = task.await;
            }
            result
        }
        Command::Topics(command) => topics(&config, command).await,
        Command::Produce(args) => produce(&config, args, shutdown).await,
        Command::Consume(args) => consume(&config, args, shutdown).await,
        Command::Backfill(mut args) => {
            if let Some(url) = args.fdsn_url.take() {
                config.backfill.url = url;
            }
            backfill(&config, args, shutdown).await
        }
        Command::ReplayServer(args) => replay_server(args, shutdown).await,
        Command::Config => {
            print_out(&config.to_redacted_toml())?;
            Ok(())
        }
    }
}

pub(crate) use crate::process::console::print_out;

/// What `produce` and `consume` start from: the topic named on the command line (checked),
/// the cluster's settings and an admin connection to it.
async fn topic_admin(config: &Config, topic: &str) -> Result<(TopicName, KafkaSettings, Admin)> {
    let topic: TopicName = topic.parse()?;
    let settings = KafkaSettings::from_config(config);
    let admin = Admin::connect(&settings).await?;
    Ok((topic, settings, admin))
}
