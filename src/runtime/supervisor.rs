//! The supervisor: runs every component side by side and restarts one that fails, with
//! backoff, while the others run on.
//!
//! A component keeps no state that the topics cannot rebuild (docs/architecture.md), so a
//! restart is always safe: it resumes from its group's committed offsets, or rebuilds its
//! dedupe state from the topic it writes. What is *not* restarted is a configuration error on a
//! component's first start: no restart can cure it, so it stops the whole start with its
//! message, as a bad flag does. With [`RestartPolicy::fail_fast`] (`run NAME`) any failure of
//! the first run before it counted as healthy does the same. A panic counts as a failure like
//! any other.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tracing::field::display;

use super::{Backoff, Component, ComponentStatus, Context, State};
use crate::{
    error::{Error, Fault, Result},
    metrics::Registry,
};

/// How failed components are started again.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// The pause after the first failure; it doubles (with jitter) after each further one.
    pub initial: Duration,
    /// The longest pause.
    pub max: Duration,
    /// A run this long counts as healthy: the next failure starts from `initial` again.
    pub healthy_after: Duration,
    /// Whether a failure of the very first run, before it counted as healthy, ends everything
    /// instead of a restart. `run NAME` wants it: a component alone that cannot start (a bucket
    /// that does not exist, a database that does not answer) is an error to fix now, with its
    /// message. `up` does not: there the others run on while the one restarts.
    pub fail_fast: bool,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(15),
            healthy_after: Duration::from_secs(30),
            fail_fast: false,
        }
    }
}

/// The components of one process, each with its status.
pub struct Supervisor {
    components: Vec<(Arc<dyn Component>, Arc<ComponentStatus>)>,
    policy: RestartPolicy,
}

impl Supervisor {
    /// Registers each component's metrics and status in `registry`.
    pub fn new(components: Vec<Arc<dyn Component>>, registry: &Registry) -> Supervisor {
        let components = components
            .into_iter()
            .map(|component| {
                component.metrics().register(registry);
                let status = Arc::new(ComponentStatus::new(
                    component.name(),
                    component.about().kind,
                ));
                registry.register_component(status.clone());
                (component, status)
            })
            .collect();
        Supervisor {
            components,
            policy: RestartPolicy::default(),
        }
    }

    pub fn with_policy(mut self, policy: RestartPolicy) -> Supervisor {
        self.policy = policy;
        self
    }

    /// Runs every component until `ctx.shutdown` (or until each is done by itself). A
    /// configuration error on a component's first start cancels `ctx.shutdown`, so the others
    /// stop too, and is returned; so is an error a component meets while stopping.
    pub async fn run(self, ctx: Context) -> Result<()> {
        let mut tasks = JoinSet::new();
        for (component, status) in self.components {
            tasks.spawn(supervise(component, status, ctx.clone(), self.policy));
        }
        let mut failure = None;
        while let Some(done) = tasks.join_next().await {
            let result = done.unwrap_or_else(|e| Err(Error::Broker(format!("supervisor: {e}"))));
            if let Err(e) = result {
                ctx.shutdown.cancel();
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// One component, started again after each failure until shutdown.
async fn supervise(
    component: Arc<dyn Component>,
    status: Arc<ComponentStatus>,
    ctx: Context,
    policy: RestartPolicy,
) -> Result<()> {
    let name = component.name().to_string();
    let mut backoff = Backoff::new(policy.initial, policy.max);
    let mut first = true;
    loop {
        enter(&status, State::Running, None, None);
        let started = Instant::now();
        let error = match tokio::spawn(component.run(ctx.clone())).await {
            Ok(Ok(())) => {
                let done = if ctx.shutdown.is_cancelled() {
                    State::Stopped
                } else {
                    State::Finished
                };
                enter(&status, done, None, None);
                summary(component.as_ref());
                return Ok(());
            }
            Ok(Err(e)) => e,
            Err(e) if e.is_panic() => Error::Broker(format!("{name} panicked: {}", panic_text(e))),
            Err(e) => Error::Broker(format!("{name}: {e}")),
        };
        let message = error.to_string();
        if ctx.shutdown.is_cancelled() {
            enter(&status, State::Stopped, Some(&message), None);
            summary(component.as_ref());
            return Err(error);
        }
        let early = started.elapsed() < policy.healthy_after;
        if first && (error.fault() == Fault::User || (policy.fail_fast && early)) {
            enter(&status, State::Failed, Some(&message), None);
            summary(component.as_ref());
            return Err(error);
        }
        if started.elapsed() >= policy.healthy_after {
            backoff.reset();
        }
        let wait = backoff.next(None);
        enter(&status, State::Restarting, Some(&message), Some(wait));
        tokio::select! {
            () = ctx.shutdown.cancelled() => {
                enter(&status, State::Stopped, None, None);
                summary(component.as_ref());
                return Ok(());
            }
            () = tokio::time::sleep(wait) => {}
        }
        status.restarts.inc();
        first = false;
    }
}

/// Moves a component to `state` and says so in one line that names it (`component running
/// component="usgs"`). The supervisor changes states only here, so that every change is one
/// line and a restart loop prints two per round (restarting, running), never more. The level
/// is what a person should make of it: INFO while all is well, WARN while the component
/// restarts (with the `error` and the pause before the next start) or when it stopped on an
/// error, ERROR when it failed for good. A healthy `up` prints no WARN or ERROR line at all
/// (tests/terminal.rs).
fn enter(status: &ComponentStatus, state: State, error: Option<&str>, retry_in: Option<Duration>) {
    match error {
        Some(message) => status.failed(state, message),
        None => status.set(state),
    }
    let component = status.name.as_str();
    let restarts = Some(status.restarts.get()).filter(|n| state == State::Running && *n > 0);
    let error = error.map(display);
    let retry_in = retry_in.map(|d| display(humantime::format_duration(round(d))));
    let what = state.as_str();
    match state {
        State::Failed => tracing::error!(component, error, "component {what}"),
        State::Restarting => tracing::warn!(component, error, retry_in, "component {what}"),
        _ if error.is_some() => tracing::warn!(component, error, "component {what}"),
        _ => tracing::info!(component, restarts, "component {what}"),
    }
}

/// The component's counters in one log line, when it stops for good.
fn summary(component: &dyn Component) {
    tracing::info!(
        component = component.name(),
        counters = %component.metrics().summary(),
        "component summary"
    );
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures::future::BoxFuture;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        kafka::KafkaSettings,
        runtime::{About, Kind},
    };

    /// Fails its first `failures` runs (the first one with a panic), then runs until shutdown.
    struct Flaky {
        about: About,
        failures: u32,
        runs: Arc<AtomicU32>,
        fault: Fault,
    }

    impl Component for Flaky {
        fn about(&self) -> &About {
            &self.about
        }
        fn run(&self, ctx: Context) -> BoxFuture<'static, Result<()>> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst);
            let (failures, fault) = (self.failures, self.fault);
            Box::pin(async move {
                if run < failures {
                    if run == 0 && fault == Fault::External {
                        panic!("first run panics");
                    }
                    return Err(match fault {
                        Fault::User => Error::Config {
                            origin: "[flaky]".into(),
                            message: "bad".into(),
                        },
                        _ => Error::Sink {
                            sink: "flaky",
                            message: "endpoint down".into(),
                        },
                    });
                }
                ctx.shutdown.cancelled().await;
                Ok(())
            })
        }
    }

    fn context(shutdown: CancellationToken) -> Context {
        Context {
            kafka: KafkaSettings::for_bootstrap("127.0.0.1:1"),
            dlq: "dlq".into(),
            data_dir: std::env::temp_dir(),
            registry: Arc::new(Registry::default()),
            shutdown,
            checks: Default::default(),
        }
    }

    fn about(name: &str) -> About {
        About {
            name: name.into(),
            kind: Kind::Sink,
            reads: Vec::new(),
            writes: Vec::new(),
            line: "flaky".into(),
        }
    }

    fn quick() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(40),
            healthy_after: Duration::from_secs(60),
            fail_fast: false,
        }
    }

    /// Supervises a component that fails `failures` times with an external fault next to one
    /// that never fails, each counting its runs; returns the stop token and the running task.
    fn flaky_and_steady(
        registry: &Registry,
        failures: u32,
        flaky_runs: &Arc<AtomicU32>,
        steady_runs: &Arc<AtomicU32>,
    ) -> (CancellationToken, tokio::task::JoinHandle<Result<()>>) {
        let component = |name, failures, runs: &Arc<AtomicU32>| -> Arc<dyn Component> {
            Arc::new(Flaky {
                about: about(name),
                failures,
                runs: runs.clone(),
                fault: Fault::External,
            })
        };
        let supervisor = Supervisor::new(
            vec![
                component("flaky", failures, flaky_runs),
                component("steady", 0, steady_runs),
            ],
            registry,
        )
        .with_policy(quick());
        let stop = CancellationToken::new();
        let running = tokio::spawn(supervisor.run(context(stop.clone())));
        (stop, running)
    }

    #[tokio::test]
    async fn a_failing_component_is_restarted_while_the_others_run_on() {
        let registry = Registry::default();
        let (flaky_runs, steady_runs) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (stop, running) = flaky_and_steady(&registry, 3, &flaky_runs, &steady_runs);
        while flaky_runs.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let views: Vec<_> = registry.components().iter().map(|c| c.view()).collect();
        assert_eq!(views[0].name, "flaky");
        assert_eq!(views[0].restarts, 3);
        assert_eq!(views[0].last_error.as_deref(), Some("flaky: endpoint down"));
        assert_eq!(views[1].state, State::Running);
        assert_eq!(views[1].restarts, 0);
        assert_eq!(steady_runs.load(Ordering::SeqCst), 1);
        stop.cancel();
        running.await.unwrap().unwrap();
        let states: Vec<_> = registry.components().iter().map(|c| c.state()).collect();
        assert_eq!(states, [State::Stopped, State::Stopped]);
    }

    /// Log lines written while it lives, without times or colours.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// (level, message) of each state line about `component`, in order.
        fn states(&self, component: &str) -> Vec<(String, String)> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            let field = format!("component=\"{component}\"");
            text.lines()
                .filter(|l| l.split_whitespace().any(|w| w == field))
                .filter_map(|l| {
                    let (level, rest) = l.trim_start().split_once(' ')?;
                    let (_, message) = rest.split_once(": ")?;
                    let state = message.strip_prefix("component ")?.split(' ').next()?;
                    (state != "summary").then(|| (level.to_string(), state.to_string()))
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn each_change_of_state_is_one_line_naming_the_component() {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let captured = captured.clone();
                move || captured.clone()
            })
            .with_ansi(false)
            .without_time()
            .finish();
        // The tests' runtime has one thread: every task logs through this subscriber.
        let _guard = tracing::subscriber::set_default(subscriber);
        let registry = Registry::default();
        let runs = Arc::new(AtomicU32::new(0));
        let (stop, running) = flaky_and_steady(&registry, 2, &runs, &Arc::default());
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        running.await.unwrap().unwrap();

        let line = |level: &str, state: &str| (level.to_string(), state.to_string());
        assert_eq!(
            captured.states("flaky"),
            [
                line("INFO", "running"),
                line("WARN", "restarting"),
                line("INFO", "running"),
                line("WARN", "restarting"),
                line("INFO", "running"),
                line("INFO", "stopped"),
            ]
        );
        assert_eq!(
            captured.states("steady"),
            [line("INFO", "running"), line("INFO", "stopped")]
        );
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(
                "component restarting component=\"flaky\" error=flaky: endpoint down retry_in="
            ),
            "{text}"
        );
        assert!(
            text.contains("component running component=\"flaky\" restarts=2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_configuration_error_at_the_first_start_stops_everything() {
        let registry = Registry::default();
        let supervisor = Supervisor::new(
            vec![
                Arc::new(Flaky {
                    about: about("bad"),
                    failures: 1,
                    runs: Arc::default(),
                    fault: Fault::User,
                }),
                Arc::new(Flaky {
                    about: about("good"),
                    failures: 0,
                    runs: Arc::default(),
                    fault: Fault::External,
                }),
            ],
            &registry,
        )
        .with_policy(quick());
        let error = supervisor
            .run(context(CancellationToken::new()))
            .await
            .unwrap_err();
        assert_eq!(error.to_string(), "[flaky]: bad");
        let states: Vec<_> = registry.components().iter().map(|c| c.state()).collect();
        assert_eq!(states, [State::Failed, State::Stopped]);
    }

    #[tokio::test]
    async fn alone_a_component_that_cannot_start_ends_the_run_with_its_error() {
        let registry = Registry::default();
        let runs = Arc::new(AtomicU32::new(0));
        let supervisor = Supervisor::new(
            vec![Arc::new(Flaky {
                about: about("files"),
                failures: 2,
                runs: runs.clone(),
                fault: Fault::External,
            })],
            &registry,
        )
        .with_policy(RestartPolicy {
            fail_fast: true,
            ..quick()
        });
        let error = supervisor
            .run(context(CancellationToken::new()))
            .await
            .unwrap_err();
        assert!(error.to_string().contains("panicked"), "{error}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(registry.components()[0].state(), State::Failed);
    }

    #[tokio::test]
    async fn states_and_restarts_are_exported() {
        let registry = Registry::default();
        let status = Arc::new(ComponentStatus::new("files", Kind::Sink));
        registry.register_component(status.clone());
        status.failed(State::Restarting, "down");
        status.restarts.inc();
        let mut samples = crate::metrics::Samples::default();
        registry.observe(&mut samples);
        let text = samples.render();
        assert!(
            text.contains("quakestream_component_up{component=\"files\",kind=\"sink\"} 0\n"),
            "{text}"
        );
        assert!(text.contains(
            "quakestream_component_restarts_total{component=\"files\",kind=\"sink\"} 1\n"
        ));
        assert!(
            text.contains(
                "quakestream_component_state{component=\"files\",state=\"restarting\"} 1\n"
            )
        );
    }
}
