//! The Woodpecker CI client: the pipelines of a repo that ran for a commit (the deploy stage).
//! Woodpecker's list endpoint cannot filter by commit, so the newest pages are read and matched
//! client-side; a commit under verification is always recent.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;

use super::{AdapterError, AdapterErrorKind, SecretSource, http_client, retry_after, snippet};

/// A pipeline for a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pipeline {
    /// Pipeline number (per repo).
    pub number: u64,
    /// `pending`, `running`, `success`, `failure`, `killed`, `error`, `blocked`, `declined`, `skipped`, …
    pub status: String,
    /// Triggering event (`push`, `deployment`, …).
    pub event: String,
    /// Web link.
    pub url: String,
}

/// The deploy stage's source.
#[async_trait]
pub trait DeployCi: Send + Sync {
    /// Pipelines of `repo_id` that ran for `sha`, newest first.
    async fn pipelines_for_commit(&self, repo_id: u64, sha: &str) -> Result<Vec<Pipeline>, AdapterError>;
}

#[derive(Deserialize)]
struct RawPipeline {
    number: u64,
    #[serde(default)]
    status: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    commit: String,
}

/// The real client.
#[derive(Clone, Debug)]
pub struct WoodpeckerClient {
    base: String,
    token: Arc<dyn SecretSource>,
    http: reqwest::Client,
    pages: u32,
}

impl WoodpeckerClient {
    /// Woodpecker pages hold at most 50 pipelines.
    pub const PER_PAGE: u32 = 50;

    /// A client for the server at `base_url`, reading at most `pages` pages per question.
    pub fn new(base_url: &str, token: Arc<dyn SecretSource>, pages: u32) -> Self {
        Self {
            base: base_url.trim_end_matches('/').to_string(),
            token,
            http: http_client(Duration::from_secs(20)),
            pages: pages.max(1),
        }
    }
}

#[async_trait]
impl DeployCi for WoodpeckerClient {
    async fn pipelines_for_commit(&self, repo_id: u64, sha: &str) -> Result<Vec<Pipeline>, AdapterError> {
        let target = format!("woodpecker GET /api/repos/{repo_id}/pipelines");
        let mut found = vec![];
        for page in 1..=self.pages {
            let resp = self
                .http
                .get(format!(
                    "{}/api/repos/{repo_id}/pipelines?page={page}&perPage={}",
                    self.base,
                    Self::PER_PAGE
                ))
                .bearer_auth(self.token.read()?.expose())
                .send()
                .await
                .map_err(|e| AdapterError::from_transport(&target, &e))?;
            let status = resp.status().as_u16();
            let after = retry_after(resp.headers());
            let text = resp
                .text()
                .await
                .map_err(|e| AdapterError::from_transport(&target, &e))?;
            if status != 200 {
                let err = match status {
                    401 | 403 => {
                        AdapterError::permanent(AdapterErrorKind::Auth, format!("{target}: not authorized"))
                    }
                    404 => AdapterError::permanent(
                        AdapterErrorKind::NotFound,
                        format!("{target}: repository not found"),
                    ),
                    429 | 500..=599 => AdapterError::transient(
                        AdapterErrorKind::ServerError,
                        format!("{target}: {}", snippet(&text)),
                    ),
                    _ => AdapterError::permanent(
                        AdapterErrorKind::UnexpectedStatus,
                        format!("{target}: {}", snippet(&text)),
                    ),
                };
                return Err(err.with_status(status).with_retry_after(after));
            }
            let items: Vec<RawPipeline> = serde_json::from_str(&text).map_err(|_| {
                AdapterError::permanent(AdapterErrorKind::Decode, format!("{target}: unexpected shape"))
            })?;
            let last_page = items.len() < Self::PER_PAGE as usize;
            found.extend(
                items
                    .into_iter()
                    .filter(|p| p.commit.eq_ignore_ascii_case(sha))
                    .map(|p| Pipeline {
                        url: format!("{}/repos/{repo_id}/pipeline/{}", self.base, p.number),
                        number: p.number,
                        status: p.status,
                        event: p.event,
                    }),
            );
            if last_page {
                break;
            }
        }
        Ok(found)
    }
}
