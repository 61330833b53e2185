//! The doorbell: Slack incoming webhooks and ntfy. Both send what `policy::render` produced;
//! delivery is retried a bounded number of times with backoff on 429/5xx. The Slack webhook URL
//! is itself the credential, so it comes from a secret source and never appears in errors.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;

use super::{
    AdapterError, AdapterErrorKind, SecretSource, http_client,
    retry::{RetryPolicy, retry_transient},
    retry_after,
};

/// A message ready for every channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// One line, plain text.
    pub title: String,
    /// Plain-text body.
    pub body: String,
    /// ntfy priority 1–5.
    pub ntfy_priority: u8,
    /// ntfy tags.
    pub tags: Vec<String>,
    /// Deep link.
    pub click: Option<String>,
    /// The Slack webhook JSON.
    pub slack: serde_json::Value,
}

/// A notification channel.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// `slack` or `ntfy` (for Events and metrics).
    fn channel(&self) -> &'static str;
    /// Deliver, retrying transient failures a bounded number of times.
    async fn deliver(&self, message: &Outgoing) -> Result<(), AdapterError>;
}

fn classify(target: &str, status: u16, headers: &reqwest::header::HeaderMap) -> AdapterError {
    let err = match status {
        429 => AdapterError::transient(AdapterErrorKind::RateLimited, format!("{target}: rate limited")),
        500..=599 => {
            AdapterError::transient(AdapterErrorKind::ServerError, format!("{target}: server error"))
        }
        401 | 403 => AdapterError::permanent(AdapterErrorKind::Auth, format!("{target}: not authorized")),
        404 | 410 => AdapterError::permanent(
            AdapterErrorKind::NotFound,
            format!("{target}: channel or topic not found"),
        ),
        _ => AdapterError::permanent(AdapterErrorKind::Rejected, format!("{target}: rejected")),
    };
    err.with_status(status).with_retry_after(retry_after(headers))
}

/// Slack incoming webhook.
#[derive(Debug)]
pub struct SlackNotifier {
    webhook_url: Arc<dyn SecretSource>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl SlackNotifier {
    /// A notifier posting to the webhook URL held by `webhook_url`.
    pub fn new(webhook_url: Arc<dyn SecretSource>, retry: RetryPolicy) -> Self {
        Self {
            webhook_url,
            http: http_client(Duration::from_secs(15)),
            retry,
        }
    }
}

#[async_trait]
impl Notifier for SlackNotifier {
    fn channel(&self) -> &'static str {
        "slack"
    }

    async fn deliver(&self, message: &Outgoing) -> Result<(), AdapterError> {
        retry_transient(self.retry, || async {
            let url = self.webhook_url.read()?;
            let resp = self
                .http
                .post(url.expose())
                .json(&message.slack)
                .send()
                .await
                .map_err(|e| AdapterError::from_transport("slack webhook", &e))?;
            let status = resp.status().as_u16();
            if status == 200 {
                return Ok(());
            }
            Err(classify("slack webhook", status, resp.headers()))
        })
        .await
    }
}

/// An ntfy topic.
#[derive(Debug)]
pub struct NtfyNotifier {
    base: String,
    topic: String,
    token: Option<Arc<dyn SecretSource>>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl NtfyNotifier {
    /// A notifier publishing to `<base_url>/<topic>`, with a bearer token when the topic is protected.
    pub fn new(
        base_url: &str,
        topic: &str,
        token: Option<Arc<dyn SecretSource>>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            topic: topic.to_string(),
            token,
            http: http_client(Duration::from_secs(15)),
            retry,
        }
    }
}

/// Header values must be visible ASCII; the renderer only produces ASCII titles and tags, this
/// keeps a surprise from failing the whole delivery.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

#[async_trait]
impl Notifier for NtfyNotifier {
    fn channel(&self) -> &'static str {
        "ntfy"
    }

    async fn deliver(&self, message: &Outgoing) -> Result<(), AdapterError> {
        let target = "ntfy publish";
        retry_transient(self.retry, || async {
            let mut req = self
                .http
                .post(format!("{}/{}", self.base, self.topic))
                .header("Title", header_safe(&message.title))
                .header("Priority", message.ntfy_priority.clamp(1, 5).to_string())
                .header("Tags", header_safe(&message.tags.join(",")))
                .body(message.body.clone());
            if let Some(click) = &message.click {
                req = req.header("Click", header_safe(click));
            }
            if let Some(token) = &self.token {
                req = req.bearer_auth(token.read()?.expose());
            }
            let resp = req
                .send()
                .await
                .map_err(|e| AdapterError::from_transport(target, &e))?;
            let status = resp.status().as_u16();
            if status == 200 {
                return Ok(());
            }
            Err(classify(target, status, resp.headers()))
        })
        .await
    }
}
