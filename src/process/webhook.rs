//! Webhook delivery: alerts POSTed as JSON `{"text": …}` (the shape Slack and Discord incoming
//! webhooks accept), retried with backoff, in the background.
//!
//! The stream never waits for a webhook: alerts go into a bounded queue, and when a dead
//! endpoint has let it fill up, further alerts are dropped from the webhook path (counted and
//! logged) — they are still on the alerts topic and in the log file.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};

use crate::{metrics::Counter, runtime::Backoff};

/// Alerts waiting for delivery at most.
const QUEUE: usize = 1000;

#[derive(Debug, Default)]
pub struct WebhookMetrics {
    pub sent: Counter,
    pub retries: Counter,
    pub failed: Counter,
    pub dropped: Counter,
}

pub struct Webhooks {
    queue: Option<mpsc::Sender<String>>,
    task: Option<JoinHandle<()>>,
    pub metrics: Arc<WebhookMetrics>,
}

impl Webhooks {
    /// Starts delivering to `urls` (none: a no-op sender). Each message is tried at most
    /// `attempts` times per URL.
    pub fn start(urls: Vec<String>, attempts: u32, metrics: Arc<WebhookMetrics>) -> Webhooks {
        if urls.is_empty() {
            return Webhooks {
                queue: None,
                task: None,
                metrics,
            };
        }
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("quakestream/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let task_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                let body = serde_json::json!({ "text": text }).to_string();
                for url in &urls {
                    deliver(&client, url, &body, attempts, &task_metrics).await;
                }
            }
        });
        Webhooks {
            queue: Some(tx),
            task: Some(task),
            metrics,
        }
    }

    /// Queues one alert's text; never waits.
    pub fn send(&self, text: String) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(text).is_err() {
            self.metrics.dropped.inc();
            tracing::warn!("webhook queue full: an alert was not sent to the webhooks");
        }
    }

    /// Lets queued alerts go out for up to `grace`, then gives up on the rest.
    pub async fn stop(mut self, grace: Duration) {
        drop(self.queue.take());
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                abort.abort();
                tracing::warn!("webhooks still pending at shutdown were not sent");
            }
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    attempts: u32,
    metrics: &WebhookMetrics,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    for attempt in 1..=attempts {
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let (retry, wait, why) = match response {
            Ok(r) if r.status().is_success() => {
                metrics.sent.inc();
                return;
            }
            Ok(r) => {
                let status = r.status();
                let after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(300)));
                // A 4xx other than 408/429 will not change by asking again.
                let retry =
                    status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                (retry, after, format!("HTTP {status}"))
            }
            // Without the URL: its path is the secret.
            Err(e) => (true, None, e.without_url().to_string()),
        };
        if !retry || attempt == attempts {
            metrics.failed.inc();
            tracing::warn!(url = %crate::secret::webhook_url(url), attempts = attempt, error = %why, "webhook delivery failed");
            return;
        }
        metrics.retries.inc();
        let wait = backoff.next(wait);
        tracing::debug!(url = %crate::secret::webhook_url(url), attempt, error = %why, ?wait, "webhook delivery will be retried");
        tokio::time::sleep(wait).await;
    }
}
