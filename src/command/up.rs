//! `quakestream up`: every configured component in one process, supervised, plus the embedded
//! broker when no external cluster is configured; and `run NAME`, one component alone. Both
//! take their components from [`super::components`] and run them under the
//! [`Supervisor`](crate::runtime::Supervisor): a component that fails is restarted with backoff
//! while the others run on, and its state shows on `/health`, the monitor and `/metrics`.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{components, print_out};
use crate::{
    cli,
    config::Config,
    error::{Error, Result},
    kafka::{KafkaSettings, TopicName, admin::Admin, embedded::EmbeddedBroker},
    metrics::Registry,
    runtime::{Component, Context, Supervisor, supervisor::RestartPolicy},
    web::{self, WebServer},
};

pub async fn up(config: &Config, shutdown: CancellationToken) -> Result<()> {
    let data_dir = absolute_data_dir(config);
    let mut list: Vec<Arc<dyn Component>> = components::build(config, &data_dir)
        .into_iter()
        .filter(|e| e.enabled)
        .map(|e| e.component)
        .collect();
    // Settings that can never work stop the start before anything runs.
    for component in &list {
        component.validate()?;
    }

    // The broker has a token of its own: it must outlive its clients, which flush and commit
    // after Ctrl+C (stopping it on the signal itself lost their last sends).
    let broker_stop = CancellationToken::new();
    let broker = if config.embedded() {
        Some(EmbeddedBroker::start(&config.broker, &config.data_dir, broker_stop.clone()).await?)
    } else {
        None
    };
    let mut settings = KafkaSettings::from_config(config);
    if let Some(broker) = &broker {
        settings.bootstrap = broker.bootstrap().to_string();
        settings.in_process_broker = true;
    }
    // Fails fast, naming the address, when an external cluster does not answer.
    Admin::connect(&settings).await?;

    // Bound first, so that a taken port is an error before anything starts.
    if config.web.enabled {
        let listener = web::bind(&config.web.listen).await?;
        list.push(Arc::new(WebServer::new(
            listener,
            web_settings(config, &settings)?,
        )?));
    }

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
    summary.push_str(&banner(&list));
    if list.is_empty() {
        summary.push_str("  components  none enabled\n");
    }
    let brokers_flag = if config.embedded() && settings.bootstrap != "127.0.0.1:9092" {
        format!(" --brokers {}", settings.bootstrap)
    } else {
        String::new()
    };
    if config.usgs.enabled {
        summary.push_str(&format!(
            "Watch the quakes: quakestream{brokers_flag} consume --topic {} --from-beginning\n",
            config.usgs.topic()
        ));
    } else {
        summary.push_str(&format!(
            "Try: quakestream{brokers_flag} produce --topic mensajes-test --count 10\n"
        ));
    }
    if config.web.enabled {
        summary.push_str(&web_warning(config));
    }
    summary.push_str("Press Ctrl+C to stop.\n");
    print_out(&summary)?;

    // Components stop on their own token, so that the broker outlives them and they can flush.
    let components_stop = CancellationToken::new();
    let ctx = Context {
        kafka: settings.clone(),
        dlq: config.topics.dlq.clone(),
        data_dir,
        registry: Arc::new(Registry::default()),
        shutdown: components_stop.clone(),
        checks: config.checks,
    };
    let supervisor = Supervisor::new(list, &ctx.registry);
    let mut running = tokio::spawn(supervisor.run(ctx));
    // Run until Ctrl+C, or until a component's configuration turns out not to work.
    let result = tokio::select! {
        () = shutdown.cancelled() => {
            components_stop.cancel();
            joined(running.await)
        }
        done = &mut running => match joined(done) {
            // Every component finished its work by itself: the pipeline stays up (the
            // dashboard had nothing to do anyway) until Ctrl+C, as a user expects of `up`.
            Ok(()) => {
                shutdown.cancelled().await;
                Ok(())
            }
            Err(e) => Err(e),
        },
    };
    // The broker stops after its clients.
    broker_stop.cancel();
    if let Some(broker) = broker {
        broker.stopped().await?;
    }
    result?;
    print_out("quakestream stopped\n")?;
    Ok(())
}

fn joined(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.unwrap_or_else(|e| Err(Error::Broker(format!("the supervisor panicked: {e}"))))
}

/// The start-up banner's lines, one per component.
fn banner(list: &[Arc<dyn Component>]) -> String {
    list.iter()
        .map(|c| format!("  {:<11} {}\n", c.name(), c.about().line))
        .collect()
}

/// `quakestream run NAME`: one component alone (or, for `run http`, every `[[http]]` source or
/// the one `--name` picks), supervised like under `up`.
pub async fn run(
    config: &Config,
    which: cli::Component,
    name: Option<&str>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    let data_dir = absolute_data_dir(config);
    let wanted = match which {
        cli::Component::Usgs => "usgs",
        cli::Component::Window => "window",
        cli::Component::Alerts => "alerts",
        cli::Component::Files => "files",
        cli::Component::ObjectStore => "object-store",
        cli::Component::Postgres => "postgres",
        cli::Component::Emsc => "emsc",
        cli::Component::Turnstile => "turnstile",
        cli::Component::Jsonl => "jsonl",
        cli::Component::Http => "http",
        cli::Component::Web => "web",
        cli::Component::Broker => return super::broker(config, shutdown).await,
    };
    let list: Vec<Arc<dyn Component>> = match which {
        cli::Component::Web => {
            let web_settings = web_settings(config, &settings)?;
            let listener = web::bind(&config.web.listen).await?;
            vec![Arc::new(WebServer::new(listener, web_settings)?)]
        }
        cli::Component::Http => {
            let http: Vec<Arc<dyn Component>> = components::build(config, &data_dir)
                .into_iter()
                .map(|e| e.component)
                .filter(|c| config.http.iter().any(|h| h.resolved().name == c.name()))
                .collect();
            let known: Vec<String> = http.iter().map(|c| c.name().to_string()).collect();
            let picked: Vec<_> = http
                .into_iter()
                .filter(|c| name.is_none_or(|n| c.name() == n))
                .collect();
            if picked.is_empty() {
                return Err(Error::Config {
                    origin: "[[http]]".into(),
                    message: match name {
                        Some(n) => {
                            format!("no source named {n:?} (configured: {})", known.join(", "))
                        }
                        None => "no [[http]] source is configured (see examples/ and \
                                 docs/sources.md)"
                            .into(),
                    },
                });
            }
            picked
        }
        _ => components::build(config, &data_dir)
            .into_iter()
            .map(|e| e.component)
            .filter(|c| c.name() == wanted)
            .collect(),
    };
    for component in &list {
        component.validate()?;
    }
    let what = if list.len() == 1 {
        list[0].name().to_string()
    } else {
        format!("{wanted} sources")
    };
    let mut text = format!("{what} at {}:\n{}", settings.bootstrap, banner(&list));
    if which == cli::Component::Web {
        text.push_str(&web_warning(config));
    }
    text.push_str("Press Ctrl+C to stop.\n");
    print_out(&text)?;
    let ctx = Context {
        kafka: settings,
        dlq: config.topics.dlq.clone(),
        data_dir,
        registry: registry.clone(),
        shutdown,
        checks: config.checks,
    };
    // Alone, a component that cannot start at all exits with the reason; once it has run, it is
    // restarted like under `up`.
    let policy = RestartPolicy {
        fail_fast: true,
        ..RestartPolicy::default()
    };
    Supervisor::new(list, &registry)
        .with_policy(policy)
        .run(ctx)
        .await
}

/// The data directory as an absolute path (state files and logs are named by it).
pub(super) fn absolute_data_dir(config: &Config) -> std::path::PathBuf {
    std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone())
}

/// The web server's topics and Kafka settings: its own `[web]` topics, else the pipeline's.
fn web_settings(config: &Config, settings: &KafkaSettings) -> Result<web::Settings> {
    let w = &config.web;
    let topic = |set: &Option<String>, default: &str| -> Result<TopicName> {
        set.as_deref().unwrap_or(default).parse()
    };
    Ok(web::Settings {
        config: w.clone(),
        topics: web::feed::Topics {
            quakes: topic(&w.quakes_topic, config.usgs.topic())?,
            stats: topic(&w.stats_topic, &config.window.output)?,
            alerts: topic(&w.alerts_topic, &config.alerts.output)?,
        },
        dlq: config.topics.dlq.clone(),
        kafka: settings.clone(),
        checks: config.checks,
    })
}

/// A loud warning when the dashboard is reachable from other machines: it has no login.
fn web_warning(config: &Config) -> String {
    if config.web.is_loopback() {
        return String::new();
    }
    tracing::warn!(
        listen = %config.web.listen,
        "the dashboard listens beyond this machine and has no login"
    );
    format!(
        "WARNING: the dashboard listens on {}, reachable from other machines, and has no login;\n\
         \x20        anyone who can reach it sees the pipeline. Keep it on 127.0.0.1 behind a proxy\n\
         \x20        with authentication, or firewall the port.\n",
        config.web.listen
    )
}
