//! `quakestream up`: every configured component in one process, plus the embedded broker when
//! no external cluster is configured; and `run usgs`, `run window`, `run alerts`, `run web`,
//! each alone. Under `up` every component registers its metrics, so the web server's
//! `/metrics` and pipeline monitor cover all of them.

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::print_out;
use crate::{
    config::Config,
    error::{Error, Result},
    kafka::{KafkaSettings, TopicName, admin::Admin, embedded::EmbeddedBroker},
    metrics::{Registry, SourceMetrics},
    process::{
        alert::task::{self as alert_task, AlertMetrics},
        window::task::{self, WindowMetrics},
    },
    source::{emsc, http, turnstile, usgs},
    web,
};

pub async fn up(config: &Config, shutdown: CancellationToken) -> Result<()> {
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
    }
    // Fails fast, naming the address, when an external cluster does not answer.
    Admin::connect(&settings).await?;

    // Bound first, so that a taken port is an error before anything starts.
    let web_listener = if config.web.enabled {
        let web_settings = web_settings(config, &settings)?;
        Some((web::bind(&config.web.listen).await?, web_settings))
    } else {
        None
    };

    // Components stop on their own token, so that the broker outlives them and they can flush.
    let components_stop = CancellationToken::new();
    let mut components = JoinSet::new();
    let mut lines = Vec::new();
    let registry = Arc::new(Registry::default());
    let dlq = config.topics.dlq.clone();
    let mut sources = Sources {
        components: &mut components,
        registry: &registry,
        stop: &components_stop,
    };
    if config.usgs.enabled {
        lines.push(format!(
            "  usgs        {} every {} -> topic {}",
            config.usgs.url(),
            humantime::format_duration(config.usgs.interval()),
            config.usgs.topic()
        ));
        let (c, dlq, settings) = (config.usgs.clone(), dlq.clone(), settings.clone());
        sources.spawn("usgs", "usgs", move |m, stop| async move {
            usgs::run(&c, &dlq, &settings, m, stop).await
        });
    }
    for source in config.http.iter().filter(|s| s.enabled) {
        let resolved = source.resolved();
        lines.push(http_line(&resolved));
        let (c, dlq, settings) = (source.clone(), dlq.clone(), settings.clone());
        sources.spawn(&resolved.name, "http", move |m, stop| async move {
            http::run(&c, &dlq, &settings, m, stop).await
        });
    }
    if config.emsc.enabled {
        lines.push(format!(
            "  emsc        {} (WebSocket) -> topic {}",
            config.emsc.url, config.emsc.topic
        ));
        let (c, dlq, settings) = (config.emsc.clone(), dlq.clone(), settings.clone());
        sources.spawn("emsc", "emsc", move |m, stop| async move {
            emsc::run(&c, &dlq, &settings, m, stop).await
        });
    }
    if config.turnstile.enabled {
        lines.push(turnstile_line(config));
        let (c, dlq, settings) = (config.turnstile.clone(), dlq.clone(), settings.clone());
        sources.spawn("turnstile", "turnstile", move |m, stop| async move {
            turnstile::run(&c, &dlq, &settings, m, stop).await
        });
    }

    let data_dir = absolute_data_dir(config);
    if config.window.enabled {
        lines.push(window_line(config));
        let (config, settings, stop, registry) = (
            config.clone(),
            settings.clone(),
            components_stop.clone(),
            registry.clone(),
        );
        components.spawn(async move {
            window(&config, &settings, &registry, stop)
                .await
                .map(|()| "window")
        });
    }
    if config.alerts.enabled {
        lines.push(alerts_line(config, &data_dir));
        let (config, settings, stop, registry) = (
            config.clone(),
            settings.clone(),
            components_stop.clone(),
            registry.clone(),
        );
        components.spawn(async move {
            alerts(&config, &settings, &registry, stop)
                .await
                .map(|()| "alerts")
        });
    }
    for (object, enabled, name) in [
        (false, config.files.enabled, "files"),
        (
            true,
            config.object_store.enabled && !config.object_store.location.is_empty(),
            "object-store",
        ),
    ] {
        if enabled {
            lines.push(super::sinks::lake_line(config, object));
            let (config, settings, stop, registry) = (
                config.clone(),
                settings.clone(),
                components_stop.clone(),
                registry.clone(),
            );
            components.spawn(async move {
                super::sinks::lake(&config, &settings, object, &registry, stop)
                    .await
                    .map(|()| name)
            });
        }
    }
    if config.postgres.enabled && !config.postgres.url.is_empty() {
        lines.push(super::sinks::postgres_line(config));
        let (config, settings, stop, registry) = (
            config.clone(),
            settings.clone(),
            components_stop.clone(),
            registry.clone(),
        );
        components.spawn(async move {
            super::sinks::postgres(&config, &settings, &registry, stop)
                .await
                .map(|()| "postgres")
        });
    }
    if let Some((listener, web_settings)) = web_listener {
        lines.push(web_line(config, &listener));
        let (registry, stop) = (registry.clone(), components_stop.clone());
        components.spawn(async move {
            web::run(listener, web_settings, registry, stop)
                .await
                .map(|()| "web")
        });
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
    for line in &lines {
        summary.push_str(line);
        summary.push('\n');
    }
    if lines.is_empty() {
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

    // Run until Ctrl+C, or until a component fails for good.
    let mut failure = None;
    tokio::select! {
        () = shutdown.cancelled() => {}
        Some(done) = components.join_next() => {
            failure = component_failure(done);
        }
    }
    components_stop.cancel();
    while let Some(done) = components.join_next().await {
        if let Some(e) = component_failure(done) {
            failure.get_or_insert(e);
        }
    }
    // The broker stops after its clients.
    broker_stop.cancel();
    if let Some(broker) = broker {
        broker.stopped().await?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    print_out("quakestream stopped\n")?;
    Ok(())
}

fn component_failure(
    done: std::result::Result<Result<&'static str>, tokio::task::JoinError>,
) -> Option<Error> {
    match done {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(Error::Broker(format!("a component panicked: {e}"))),
    }
}

/// Sources under `up`: each registers its metrics and logs its summary when it ends.
struct Sources<'a> {
    components: &'a mut JoinSet<Result<&'static str>>,
    registry: &'a Registry,
    stop: &'a CancellationToken,
}

impl Sources<'_> {
    fn spawn<F>(
        &mut self,
        name: &str,
        label: &'static str,
        run: impl FnOnce(Arc<SourceMetrics>, CancellationToken) -> F,
    ) where
        F: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let metrics = Arc::new(SourceMetrics::new(name));
        self.registry.register_source(metrics.clone());
        let stop = self.stop.clone();
        let running = run(metrics.clone(), stop.clone());
        self.components.spawn(async move {
            let result = running.await;
            log_source_summary(&metrics);
            result?;
            // A source that is done by itself (a replayed file, a `duration` over) leaves the
            // rest of the pipeline running.
            stop.cancelled().await;
            Ok(label)
        });
    }
}

/// A source alone (`run usgs`, …): its summary in the log whatever the outcome.
async fn run_source<F>(
    name: &str,
    registry: &Registry,
    run: impl FnOnce(Arc<SourceMetrics>) -> F,
) -> Result<()>
where
    F: std::future::Future<Output = Result<()>>,
{
    let metrics = Arc::new(SourceMetrics::new(name));
    registry.register_source(metrics.clone());
    let result = run(metrics.clone()).await;
    log_source_summary(&metrics);
    result
}

/// `quakestream run usgs`.
pub async fn run_usgs(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    print_out(&format!(
        "usgs source: {} every {} -> {} at {}\nPress Ctrl+C to stop.\n",
        config.usgs.url(),
        humantime::format_duration(config.usgs.interval()),
        config.usgs.topic(),
        settings.bootstrap
    ))?;
    run_source("usgs", registry, |m| {
        usgs::run(&config.usgs, &config.topics.dlq, &settings, m, shutdown)
    })
    .await
}

fn log_source_summary(m: &SourceMetrics) {
    tracing::info!(
        source = %m.source,
        polls = m.polls.get(),
        not_modified = m.not_modified.get(),
        published = m.published.get(),
        duplicates = m.duplicates.get(),
        dead_letters = m.dead_letters.get(),
        errors = m.errors_total(),
        "source summary"
    );
}

fn window_line(config: &Config) -> String {
    let w = &config.window;
    let shape = match w.slide {
        Some(slide) => format!(
            "{} windows sliding by {}",
            humantime::format_duration(w.size),
            humantime::format_duration(slide)
        ),
        None => format!("{} windows", humantime::format_duration(w.size)),
    };
    let aggregates: Vec<&str> = w.aggregates.iter().map(|a| a.name.as_str()).collect();
    format!(
        "  window      {} -> {shape} ({}), lateness {} -> topic {}",
        w.input,
        aggregates.join(", "),
        humantime::format_duration(w.lateness),
        w.output
    )
}

/// `quakestream run window`.
pub async fn run_window(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    print_out(&format!(
        "window processor at {}:\n{}\nPress Ctrl+C to stop.\n",
        settings.bootstrap,
        window_line(config)
    ))?;
    window(config, &settings, registry, shutdown).await
}

/// The data directory as an absolute path (state files and logs are named by it).
pub(super) fn absolute_data_dir(config: &Config) -> std::path::PathBuf {
    std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone())
}

/// The window processor until `stop`, then its summary in the log.
async fn window(
    config: &Config,
    settings: &KafkaSettings,
    registry: &Registry,
    stop: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(WindowMetrics::default());
    registry.register(metrics.clone());
    let result = task::run(
        &config.window,
        &config.topics.dlq,
        &absolute_data_dir(config),
        settings,
        metrics.clone(),
        stop,
    )
    .await;
    let m = &metrics;
    tracing::info!(
        records = m.records.get(),
        stale = m.stale.get(),
        bad = m.bad.get(),
        late = m.late.get(),
        updates = m.updates.get(),
        finals = m.finals.get(),
        rebuilt = m.rebuilt.get(),
        "window summary"
    );
    result
}

fn alerts_line(config: &Config, data_dir: &std::path::Path) -> String {
    let a = &config.alerts;
    let rules: Vec<&str> = a.rules.iter().map(|r| r.name.as_str()).collect();
    let mut line = format!(
        "  alerts      {} -> rules {} -> topic {}",
        a.input,
        rules.join(", "),
        a.output
    );
    if !a.log_file.as_os_str().is_empty() {
        line.push_str(&format!(", log {}", data_dir.join(&a.log_file).display()));
    }
    if !a.webhooks.is_empty() {
        line.push_str(&format!(", {} webhook(s)", a.webhooks.len()));
    }
    line
}

/// `quakestream run alerts`.
pub async fn run_alerts(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    print_out(&format!(
        "alert processor at {}:\n{}\nPress Ctrl+C to stop.\n",
        settings.bootstrap,
        alerts_line(config, &absolute_data_dir(config))
    ))?;
    alerts(config, &settings, registry, shutdown).await
}

/// The alert processor until `stop`, then its summary in the log.
async fn alerts(
    config: &Config,
    settings: &KafkaSettings,
    registry: &Registry,
    stop: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(AlertMetrics::default());
    registry.register(metrics.clone());
    let result = alert_task::run(
        &config.alerts,
        &config.topics.dlq,
        &absolute_data_dir(config),
        settings,
        metrics.clone(),
        stop,
    )
    .await;
    let m = &metrics;
    tracing::info!(
        records = m.records.get(),
        bad = m.bad.get(),
        new = m.new.get(),
        upgrades = m.upgrades.get(),
        cancels = m.cancels.get(),
        webhooks_sent = m.webhooks.sent.get(),
        webhooks_failed = m.webhooks.failed.get(),
        webhooks_dropped = m.webhooks.dropped.get(),
        "alerts summary"
    );
    result
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
    })
}

fn web_line(config: &Config, listener: &tokio::net::TcpListener) -> String {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| config.web.listen.clone());
    format!("  web         http://{addr}/ (live map), /pipeline (monitor), /api, /metrics")
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

/// `quakestream run web`: the dashboard alone, reading the topics of a pipeline that runs
/// elsewhere (its monitor shows Kafka's view; component counters come from their own
/// processes).
pub async fn run_web(
    config: &Config,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    let web_settings = web_settings(config, &settings)?;
    let listener = web::bind(&config.web.listen).await?;
    print_out(&format!(
        "web server at {}:\n{}\n{}Press Ctrl+C to stop.\n",
        settings.bootstrap,
        web_line(config, &listener),
        web_warning(config)
    ))?;
    web::run(listener, web_settings, registry, shutdown).await
}

fn http_line(c: &http::HttpSourceConfig) -> String {
    let mut line = format!(
        "  {:<11} {} every {} -> topic {}",
        c.name,
        c.url,
        humantime::format_duration(c.interval()),
        c.topic
    );
    if let Some(d) = c.duration {
        line.push_str(&format!(" for {}", humantime::format_duration(d)));
    }
    line
}

/// `quakestream run http`: every configured `[[http]]` source (or the one named).
pub async fn run_http(
    config: &Config,
    name: Option<&str>,
    registry: &Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    let sources: Vec<_> = config
        .http
        .iter()
        .filter(|s| name.is_none_or(|n| s.resolved().name == n))
        .collect();
    if sources.is_empty() {
        let known: Vec<String> = config.http.iter().map(|s| s.resolved().name).collect();
        return Err(Error::Config {
            origin: "[[http]]".into(),
            message: match name {
                Some(n) => format!("no source named {n:?} (configured: {})", known.join(", ")),
                None => {
                    "no [[http]] source is configured (see examples/ and docs/sources.md)".into()
                }
            },
        });
    }
    let mut text = format!("http sources at {}:\n", settings.bootstrap);
    for s in &sources {
        text.push_str(&http_line(&s.resolved()));
        text.push('\n');
    }
    text.push_str("Press Ctrl+C to stop.\n");
    print_out(&text)?;
    let mut tasks = JoinSet::new();
    for source in sources {
        let (source, dlq, settings, stop, registry) = (
            source.clone(),
            config.topics.dlq.clone(),
            settings.clone(),
            shutdown.clone(),
            registry.clone(),
        );
        tasks.spawn(async move {
            let name = source.resolved().name;
            run_source(&name, &registry, |m| {
                http::run(&source, &dlq, &settings, m, stop)
            })
            .await
        });
    }
    let mut failure = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.map_err(|e| Error::Broker(format!("a source panicked: {e}")))?;
        if let Err(e) = result {
            shutdown.cancel();
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

fn turnstile_line(config: &Config) -> String {
    let t = &config.turnstile;
    let what = match t.mode {
        turnstile::Mode::Replay => format!("{} replayed as intervals", t.file.display()),
        turnstile::Mode::Synthetic => format!(
            "synthetic, one every {}",
            humantime::format_duration(t.interval)
        ),
    };
    format!("  turnstile   {what} -> topic {}", t.topic)
}

/// `quakestream run turnstile`.
pub async fn run_turnstile(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    config
        .turnstile
        .validate()
        .map_err(|message| Error::Config {
            origin: "config".into(),
            message,
        })?;
    print_out(&format!(
        "turnstile source at {}:\n{}\n",
        settings.bootstrap,
        turnstile_line(config)
    ))?;
    run_source("turnstile", registry, |m| {
        turnstile::run(
            &config.turnstile,
            &config.topics.dlq,
            &settings,
            m,
            shutdown,
        )
    })
    .await
}

/// `quakestream run emsc`.
pub async fn run_emsc(
    config: &Config,
    registry: &Registry,
    shutdown: CancellationToken,
) -> Result<()> {
    let settings = KafkaSettings::from_config(config);
    print_out(&format!(
        "emsc source: {} -> {} at {}\nPress Ctrl+C to stop.\n",
        config.emsc.url, config.emsc.topic, settings.bootstrap
    ))?;
    run_source("emsc", registry, |m| {
        emsc::run(&config.emsc, &config.topics.dlq, &settings, m, shutdown)
    })
    .await
}
