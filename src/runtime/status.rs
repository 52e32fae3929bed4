//! Each supervised component's state, as `/health`, `/api/pipeline`, the monitor page and
//! `/metrics` show it.

use std::sync::Mutex;

use serde::Serialize;

use super::Kind;
use crate::metrics::{Counter, Observe, Samples};

/// Where a component is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Registered, not yet started.
    Starting,
    Running,
    /// Failed and waiting for its next start.
    Restarting,
    /// Failed with an error no restart can cure (its configuration); the others run on.
    Failed,
    /// Ended by itself (a replayed file read to its end, a `duration` over).
    Finished,
    /// Stopped on shutdown.
    Stopped,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Starting,
        State::Running,
        State::Restarting,
        State::Failed,
        State::Finished,
        State::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Restarting => "restarting",
            State::Failed => "failed",
            State::Finished => "finished",
            State::Stopped => "stopped",
        }
    }

    /// Whether the component is doing its work (or has done it).
    pub fn is_healthy(self) -> bool {
        matches!(
            self,
            State::Starting | State::Running | State::Finished | State::Stopped
        )
    }
}

/// One component's state, restarts and last error.
#[derive(Debug)]
pub struct ComponentStatus {
    pub name: String,
    pub kind: Kind,
    /// Starts after a failure.
    pub restarts: Counter,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    since_ms: i64,
    last_error: Option<String>,
    last_error_at_ms: Option<i64>,
}

/// How long after its last error a component counts as failing: longer than the longest pause
/// between two restarts plus an attempt, so that one failing again and again never looks well
/// in between.
pub const FAILING_FOR: std::time::Duration = std::time::Duration::from_secs(45);

/// What the API shows of a component.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub name: String,
    pub kind: &'static str,
    pub state: State,
    /// When it entered this state (epoch milliseconds).
    pub since_ms: i64,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub last_error_at_ms: Option<i64>,
    /// Whether its last error is recent ([`FAILING_FOR`]): a component restarting again and
    /// again spends most of its time `running` an attempt that will fail.
    pub failing: bool,
}

impl StatusView {
    /// Whether it needs a look: restarting, failed, or failing.
    pub fn unwell(&self) -> bool {
        self.failing || matches!(self.state, State::Restarting | State::Failed)
    }
}

impl ComponentStatus {
    pub fn new(name: &str, kind: Kind) -> ComponentStatus {
        ComponentStatus {
            name: name.to_string(),
            kind,
            restarts: Counter::default(),
            inner: Mutex::new(Inner {
                state: State::Starting,
                since_ms: now_ms(),
                last_error: None,
                last_error_at_ms: None,
            }),
        }
    }

    pub fn state(&self) -> State {
        self.inner.lock().map(|i| i.state).unwrap_or(State::Failed)
    }

    pub fn set(&self, state: State) {
        if let Ok(mut inner) = self.inner.lock()
            && inner.state != state
        {
            inner.state = state;
            inner.since_ms = now_ms();
        }
    }

    /// A failure: its message is kept as the last error.
    pub fn failed(&self, state: State, error: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            let now = now_ms();
            inner.state = state;
            inner.since_ms = now;
            inner.last_error = Some(error.to_string());
            inner.last_error_at_ms = Some(now);
        }
    }

    pub fn view(&self) -> StatusView {
        let inner = self.inner.lock();
        let (state, since_ms, last_error, last_error_at_ms) = match &inner {
            Ok(i) => (
                i.state,
                i.since_ms,
                i.last_error.clone(),
                i.last_error_at_ms,
            ),
            Err(_) => (State::Failed, 0, None, None),
        };
        let failing = last_error_at_ms
            .is_some_and(|at| now_ms() - at < FAILING_FOR.as_millis() as i64)
            && state != State::Stopped;
        StatusView {
            name: self.name.clone(),
            kind: self.kind.as_str(),
            state,
            since_ms,
            restarts: self.restarts.get(),
            last_error,
            last_error_at_ms,
            failing,
        }
    }
}

impl Observe for ComponentStatus {
    fn observe(&self, out: &mut Samples) {
        let state = self.state();
        let labels: &[(&str, &str)] = &[("component", &self.name), ("kind", self.kind.as_str())];
        let well = state.is_healthy() && !self.view().failing;
        out.gauge(
            "quakestream_component_up",
            "1 while the component runs well (or has finished its work); 0 while it is restarting, failed, or failed within the last 45 s.",
            labels,
            if well { 1.0 } else { 0.0 },
        );
        out.counter(
            "quakestream_component_restarts_total",
            "Starts of the component after a failure.",
            labels,
            self.restarts.get(),
        );
        for s in State::ALL {
            out.gauge(
                "quakestream_component_state",
                "The component's state: 1 for the current one.",
                &[("component", &self.name), ("state", s.as_str())],
                if s == state { 1.0 } else { 0.0 },
            );
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
