//! The web server: the live earthquake map, the pipeline monitor, the JSON API, `/metrics`
//! and `/health` (docs/web.md).
//!
//! - [`config`]: the `[web]` settings.
//! - [`state`]: what the map shows, rebuilt from the topics at every start, and the numbered
//!   stream of changes live browsers follow.
//! - [`feed`]: the Kafka reader that fills the state.
//! - [`pipeline`]: offsets, lag and throughput sampled from Kafka for the monitor.
//! - [`api`]: the router; [`assets`]: the pages and the bundled front-end libraries.
//! - [`limits`]: connections (a cap, a header-read and an idle timeout), live streams per
//!   client, and the host names answered.

pub mod api;
pub mod assets;
pub mod config;
pub mod feed;
pub mod limits;
pub mod pipeline;
pub mod state;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WebConfig;

use crate::{
    error::{Error, Result},
    kafka::KafkaSettings,
    metrics::Registry,
    runtime::{About, Backoff, Component, Context, Kind},
};

/// Binds the server's address; a clear error when it is taken or not ours to take.
pub async fn bind(listen: &str) -> Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| Error::Config {
        origin: "web.listen".into(),
        message: format!(
            "cannot listen on {listen} for the dashboard: {e} (choose another with --web HOST:PORT, or [web] enabled = false)"
        ),
    })
}

/// Binds the address of a lone component's `/metrics` (`run … --metrics ADDR`).
pub async fn bind_metrics(listen: &str) -> Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| Error::Config {
        origin: "--metrics".into(),
        message: format!("cannot listen on {listen} for /metrics: {e}"),
    })
}

/// `/metrics` (every component in `registry`) and `/health` for a component run alone, until
/// `shutdown`; with the connection limits of a default `[web]` (cap and timeouts).
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    use axum::{http::header, response::IntoResponse, routing::get};
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut samples = crate::metrics::Samples::default();
                    registry.observe(&mut samples);
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        samples.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/health", get(|| async { "ok\n" }));
    let defaults = WebConfig::default();
    let listener = limits::Limited::new(
        listener,
        Arc::new(limits::Connections::new(
            defaults.max_connections,
            defaults.header_read_timeout,
            defaults.idle_timeout,
        )),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(Error::io("<metrics server>"))
}

/// Everything [`run`] needs besides its listener.
#[derive(Clone)]
pub struct Settings {
    pub config: WebConfig,
    pub topics: feed::Topics,
    pub dlq: String,
    pub kafka: KafkaSettings,
    /// What the map refuses as implausible (`[checks]`).
    pub checks: crate::record::Checks,
}

/// Serves until `shutdown`, within the limits of `[web]` ([`limits`]). The feed and the
/// monitor's sampler retry on their own while Kafka is away; the pages keep answering meanwhile
/// (`/health` says 503).
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<()> {
    let c = &settings.config;
    let live = Arc::new(
        state::Live::new(state::Limits {
            max_events: c.max_events,
            max_windows: c.max_windows,
            max_alerts: c.max_alerts,
        })
        .with_checks(settings.checks),
    );
    let pipeline = Arc::new(pipeline::Pipeline::new(&settings.kafka.bootstrap));
    let tile_origin = c.tile_origin().map_err(Error::config("[web]"))?;
    let missing = assets::missing();
    if !missing.is_empty() {
        tracing::warn!(
            missing = missing.join(", "),
            "this build has no map library (npm was not available when it was compiled); \
             the map page says how to get it"
        );
    }
    let connections = Arc::new(limits::Connections::new(
        c.max_connections,
        c.header_read_timeout,
        c.idle_timeout,
    ));
    let web = Arc::new(api::Web {
        live: live.clone(),
        pipeline: pipeline.clone(),
        registry,
        csp: api::Web::csp_for(tile_origin.as_deref()),
        page_config: serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "tiles": c.tiles,
            "tiles_attribution": c.tiles_attribution,
            "missing_assets": missing,
            "topics": {
                "quakes": settings.topics.quakes.as_str(),
                "stats": settings.topics.stats.as_str(),
                "alerts": settings.topics.alerts.as_str(),
                "dlq": settings.dlq,
            },
            "max_events": c.max_events,
            "max_list": api::MAX_LIMIT,
        }),
        live_clients: Arc::new(tokio::sync::Semaphore::new(c.max_live_clients)),
        max_live_clients: c.max_live_clients,
        live_per_client: Arc::new(limits::PerClient::new(c.max_live_per_client)),
        keep_alive: keep_alive(c.idle_timeout),
        hosts: limits::Hosts::new(&c.allowed_hosts, c.listen_host()),
        connections: connections.clone(),
        shutdown: shutdown.clone(),
    });

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(pipeline.sample(settings.kafka.clone(), c.refresh, shutdown.clone()));
    {
        let (topics, kafka, stop) = (
            settings.topics.clone(),
            settings.kafka.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
            loop {
                match feed::run(&topics, &kafka, live.clone(), stop.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        let wait = backoff.next(None);
                        tracing::warn!(error = %e, retry_in = ?wait, "web feed stopped; retrying");
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        });
    }

    let stop = shutdown.clone();
    let listener = limits::Limited::new(listener, connections);
    let app = api::app(web).into_make_service_with_connect_info::<limits::Peer>();
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .map_err(Error::io("<web server>"));
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    served
}

/// How often a live stream sends a keep-alive comment: every 15 s, or more often when the idle
/// timeout would otherwise close a quiet stream.
fn keep_alive(idle_timeout: Duration) -> Duration {
    Duration::from_secs(15).min(idle_timeout / 2)
}

/// The web server as a pipeline component. Its address is bound before anything starts (a
/// taken port is a configuration error); each start serves on that same socket.
pub struct WebServer {
    listener: std::net::TcpListener,
    settings: Settings,
    about: About,
}

impl WebServer {
    pub fn new(listener: TcpListener, settings: Settings) -> Result<WebServer> {
        let listener = listener
            .into_std()
            .map_err(Error::io("<web server socket>"))?;
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| settings.config.listen.clone());
        let t = &settings.topics;
        let about = About {
            name: "web".into(),
            kind: Kind::Web,
            reads: vec![
                t.quakes.to_string(),
                t.stats.to_string(),
                t.alerts.to_string(),
            ],
            writes: Vec::new(),
            line: format!("http://{addr}/ (live map), /pipeline (monitor), /api, /metrics"),
        };
        Ok(WebServer {
            listener,
            settings,
            about,
        })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.listener.local_addr().ok()
    }
}

impl Component for WebServer {
    fn about(&self) -> &About {
        &self.about
    }

    fn validate(&self) -> Result<()> {
        self.settings
            .config
            .validate()
            .map_err(Error::config("[web]"))
    }

    fn run(&self, ctx: Context) -> BoxFuture<'static, Result<()>> {
        let listener = self
            .listener
            .try_clone()
            .map_err(Error::io("<web server socket>"));
        let settings = self.settings.clone();
        Box::pin(async move {
            let listener = listener?;
            listener
                .set_nonblocking(true)
                .map_err(Error::io("<web server socket>"))?;
            let listener =
                TcpListener::from_std(listener).map_err(Error::io("<web server socket>"))?;
            // The server ends its own helpers on the way out: a token of its own, so that
            // this does not stop the other components.
            run(listener, settings, ctx.registry, ctx.shutdown.child_token()).await
        })
    }
}

#[cfg(test)]
mod tests;
