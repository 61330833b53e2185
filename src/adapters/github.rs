//! The GitHub REST client (reqwest; why not octocrab: `docs/decisions/0006-github-client.md`).
//! Every GET is conditional (`If-None-Match` with the ETag of the last answer for that URL), so
//! an unchanged poll is a `304` that costs no rate limit. Pagination follows `Link: rel="next"`
//! up to a bound. `x-ratelimit-*` is tracked and exposed; when the budget is spent no request
//! is sent until the reset. `retry-after` and secondary limits back off. Mutations are spaced at
//! least a second apart, as GitHub asks of integrations.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use jiff::Timestamp;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use super::{AdapterError, AdapterErrorKind, Secret, SecretSource, http_client, retry_after, snippet};
use crate::crd::Permission;

/// An open issue carrying the ready label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// Number.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body (empty when null).
    pub body: String,
    /// Label names.
    pub labels: Vec<String>,
    /// `open` or `closed`.
    pub state: String,
}

/// A `labeled` event on an issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelEvent {
    /// The label applied.
    pub label: String,
    /// Who applied it.
    pub actor_login: String,
    /// `User`, `Bot`, `Organization`, …
    pub actor_type: String,
    /// When.
    pub created_at: Timestamp,
}

/// An issue a blocker list names, with its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dependency {
    /// `owner/name`.
    pub repo: String,
    /// Number.
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
}

/// A commit on the default branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full SHA.
    pub sha: String,
    /// Full message.
    pub message: String,
    /// Web link.
    pub html_url: Option<String>,
}

/// A check run of a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckRun {
    /// Check name.
    pub name: String,
    /// `queued`, `in_progress`, `completed`, …
    pub status: String,
    /// Conclusion of a completed run.
    pub conclusion: Option<String>,
    /// Web link.
    pub html_url: Option<String>,
}

/// A commit status (latest per context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitStatus {
    /// Context.
    pub context: String,
    /// `pending`, `success`, `failure`, `error`.
    pub state: String,
    /// Link.
    pub target_url: Option<String>,
}

/// The rate limit as of the last response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in the window (`x-ratelimit-limit`; 0 when GitHub did not say).
    pub limit: u64,
    /// Requests left.
    pub remaining: u64,
    /// When the window resets.
    pub reset: Timestamp,
}

/// A listing and whether GitHub said it was unchanged (every page a 304).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    /// The items.
    pub items: Vec<T>,
    /// True when nothing changed since the last poll.
    pub not_modified: bool,
}

/// What the loop asks of and does to the issue tracker.
#[async_trait]
pub trait Tracker: Send + Sync {
    /// Open issues (not pull requests) carrying `label`.
    async fn list_labeled_issues(&self, repo: &str, label: &str) -> Result<Listing<Issue>, AdapterError>;
    /// The `labeled` events of an issue, oldest first.
    async fn label_events(&self, repo: &str, number: u64) -> Result<Vec<LabelEvent>, AdapterError>;
    /// A user's permission on a repo (`role_name` first; not a collaborator → `None` level).
    async fn permission(&self, repo: &str, user: &str) -> Result<Permission, AdapterError>;
    /// GitHub's native blocked-by dependencies of an issue.
    async fn blocked_by(&self, repo: &str, number: u64) -> Result<Vec<Dependency>, AdapterError>;
    /// `open` or `closed` (works across repos).
    async fn issue_state(&self, repo: &str, number: u64) -> Result<String, AdapterError>;
    /// The issue's label names (the same conditional GET as `issue_state`).
    async fn issue_labels(&self, repo: &str, number: u64) -> Result<Vec<String>, AdapterError>;
    /// Add labels.
    async fn add_labels(&self, repo: &str, number: u64, labels: &[String]) -> Result<(), AdapterError>;
    /// Remove a label; an absent label is success.
    async fn remove_label(&self, repo: &str, number: u64, label: &str) -> Result<(), AdapterError>;
    /// Create a comment; returns its id.
    async fn create_comment(&self, repo: &str, number: u64, body: &str) -> Result<u64, AdapterError>;
    /// Replace a comment's body.
    async fn update_comment(&self, repo: &str, comment_id: u64, body: &str) -> Result<(), AdapterError>;
    /// The id of the first comment whose body contains `marker`.
    async fn find_comment(&self, repo: &str, number: u64, marker: &str) -> Result<Option<u64>, AdapterError>;
    /// Close an issue as completed.
    async fn close_issue(&self, repo: &str, number: u64) -> Result<(), AdapterError>;
    /// Commits on `branch` since `since`, newest first.
    async fn commits_since(
        &self,
        repo: &str,
        branch: &str,
        since: Timestamp,
    ) -> Result<Vec<CommitInfo>, AdapterError>;
    /// Check runs of a commit.
    async fn check_runs(&self, repo: &str, sha: &str) -> Result<Vec<CheckRun>, AdapterError>;
    /// Commit statuses of a commit (latest per context).
    async fn commit_statuses(&self, repo: &str, sha: &str) -> Result<Vec<CommitStatus>, AdapterError>;
    /// The repository's default branch.
    async fn default_branch(&self, repo: &str) -> Result<String, AdapterError>;
    /// The rate limit as of the last response.
    fn rate_limit(&self) -> Option<RateLimit>;
}

/// A token that is minted before use and can be minted again when GitHub refuses it (a GitHub
/// App installation token, `github_app.rs`). The client still reads the value through its
/// [`SecretSource`]; this only tells the minter when to act.
#[async_trait]
pub trait TokenMint: Send + Sync + std::fmt::Debug {
    /// Make sure the token source holds a token that stays valid for a while.
    async fn ensure_fresh(&self) -> Result<(), AdapterError>;
    /// GitHub answered 401 to `rejected`: mint a new token, unless another request already
    /// replaced it.
    async fn renew_after_rejection(&self, rejected: &Secret) -> Result<(), AdapterError>;
}

/// Tunables (tests shorten them).
#[derive(Clone, Copy, Debug)]
pub struct GitHubOptions {
    /// Minimum spacing between mutating requests.
    pub min_mutation_interval: Duration,
    /// Most pages followed for one listing.
    pub max_pages: usize,
    /// Most URLs whose ETag is remembered.
    pub max_cached_urls: usize,
}

impl Default for GitHubOptions {
    fn default() -> Self {
        Self {
            min_mutation_interval: Duration::from_secs(1),
            max_pages: 20,
            max_cached_urls: 4096,
        }
    }
}

#[derive(Clone, Debug)]
struct CachedPage {
    etag: String,
    /// The response text, not the parsed `Value`: a parsed GitHub object takes several times its
    /// text in memory, and thousands of cached pages are kept (re-parsed on a 304).
    body: Arc<str>,
    next: Option<String>,
}

struct Page {
    body: Value,
    next: Option<String>,
    not_modified: bool,
}

/// The real client.
#[derive(Debug)]
pub struct GitHubClient {
    base: String,
    token: Arc<dyn SecretSource>,
    mint: Option<Arc<dyn TokenMint>>,
    http: reqwest::Client,
    options: GitHubOptions,
    cache: Mutex<HashMap<String, CachedPage>>,
    rate: Mutex<Option<RateLimit>>,
    /// Until when GitHub asked this client to send nothing (`retry-after` on a secondary or
    /// primary limit): every request waits for it, not only the one that was told.
    blocked_until: Mutex<Option<Timestamp>>,
    last_mutation: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    sent: AtomicU64,
    not_modified: AtomicU64,
}

fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, NON_ALPHANUMERIC).collect()
}

/// `owner/name` as two encoded path segments.
fn repo_path(repo: &str) -> Result<String, AdapterError> {
    match repo.split_once('/') {
        Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => {
            Ok(format!("/repos/{}/{}", enc(o), enc(n)))
        }
        _ => Err(AdapterError::permanent(
            "invalid_repo",
            format!("{repo:?} is not owner/name"),
        )),
    }
}

/// The `rel="next"` target of a `Link` header.
pub fn link_next(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"");
        is_next.then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_string)
}

fn decode_err(what: &str) -> AdapterError {
    AdapterError::permanent(
        AdapterErrorKind::Decode,
        format!("github: unexpected shape of {what}"),
    )
}

impl GitHubClient {
    /// A client for the API at `api_url` (e.g. `https://api.github.com`).
    pub fn new(api_url: &str, token: Arc<dyn SecretSource>, options: GitHubOptions) -> Self {
        Self {
            base: api_url.trim_end_matches('/').to_string(),
            token,
            mint: None,
            http: http_client(Duration::from_secs(30)),
            options,
            cache: Mutex::new(HashMap::new()),
            rate: Mutex::new(None),
            blocked_until: Mutex::new(None),
            last_mutation: tokio::sync::Mutex::new(None),
            sent: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
        }
    }

    /// Mint the token with `mint` before requests, and once more (then retry the request once)
    /// when GitHub answers 401.
    pub fn with_token_mint(mut self, mint: Arc<dyn TokenMint>) -> Self {
        self.mint = Some(mint);
        self
    }

    /// Requests sent and how many of them were answered 304.
    pub fn request_counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.not_modified.load(Ordering::Relaxed),
        )
    }

    fn record_rate(&self, headers: &header::HeaderMap) {
        let num = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i64>().ok())
        };
        if let (Some(remaining), Some(reset)) = (num("x-ratelimit-remaining"), num("x-ratelimit-reset"))
            && let Ok(reset) = Timestamp::from_second(reset)
        {
            *self.rate.lock().expect("rate lock") = Some(RateLimit {
                limit: num("x-ratelimit-limit").unwrap_or(0).max(0) as u64,
                remaining: remaining.max(0) as u64,
                reset,
            });
        }
    }

    /// Refuse to send while GitHub asked us to wait (a `retry-after` on any earlier request) or
    /// the known primary budget is spent.
    fn check_budget(&self, target: &str) -> Result<(), AdapterError> {
        let now = Timestamp::now();
        if let Some(until) = *self.blocked_until.lock().expect("gate lock")
            && until > now
        {
            let wait = Duration::try_from(until.duration_since(now)).unwrap_or(Duration::from_secs(1));
            return Err(AdapterError::transient(
                AdapterErrorKind::RateLimited,
                format!("{target}: holding back until GitHub's retry-after passes"),
            )
            .with_retry_after(Some(wait)));
        }
        if let Some(rate) = *self.rate.lock().expect("rate lock")
            && rate.remaining == 0
        {
            let now = Timestamp::now();
            if rate.reset > now {
                let wait =
                    Duration::try_from(rate.reset.duration_since(now)).unwrap_or(Duration::from_secs(60));
                return Err(AdapterError::transient(
                    AdapterErrorKind::RateLimited,
                    format!("{target}: rate limit spent until reset"),
                )
                .with_retry_after(Some(wait)));
            }
        }
        Ok(())
    }

    async fn space_mutation(&self) {
        let mut last = self.last_mutation.lock().await;
        if let Some(at) = *last {
            let ready = at + self.options.min_mutation_interval;
            tokio::time::sleep_until(ready).await;
        }
        *last = Some(tokio::time::Instant::now());
    }

    async fn request(
        &self,
        method: Method,
        path_or_url: &str,
        body: Option<&Value>,
    ) -> Result<Page, AdapterError> {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        // The path (without query) names the request in errors; it holds no secret.
        let path = url
            .strip_prefix(&self.base)
            .unwrap_or(&url)
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        let target = format!("github {method} {path}");
        self.check_budget(&target)?;
        let is_get = method == Method::GET;
        if !is_get {
            self.space_mutation().await;
        }
        let cached = if is_get {
            self.cache.lock().expect("cache lock").get(&url).cloned()
        } else {
            None
        };
        let mut renewed = false;
        let resp = loop {
            // After a renewal the token is as fresh as GitHub made it: send it as it is.
            if let Some(mint) = &self.mint
                && !renewed
            {
                mint.ensure_fresh().await?;
            }
            let token = self.token.read()?;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token.expose())
                .header(header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28");
            if let Some(c) = &cached {
                req = req.header(header::IF_NONE_MATCH, &c.etag);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            self.sent.fetch_add(1, Ordering::Relaxed);
            let resp = req
                .send()
                .await
                .map_err(|e| AdapterError::from_transport(&target, &e))?;
            // A minted token GitHub refuses (revoked, expired early, clock skew): mint once more
            // and send this request once more; a second 401 is a permanent error below.
            if resp.status() == StatusCode::UNAUTHORIZED
                && !renewed
                && let Some(mint) = &self.mint
            {
                self.record_rate(resp.headers());
                tracing::info!(path = %path, "github refused the installation token; minting a new one");
                renewed = true;
                mint.renew_after_rejection(&token).await?;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        self.record_rate(&headers);
        tracing::debug!(%method, path = %path, status = status.as_u16(), "github request");
        if status == StatusCode::NOT_MODIFIED
            && let Some(c) = cached
        {
            self.not_modified.fetch_add(1, Ordering::Relaxed);
            return Ok(Page {
                body: serde_json::from_str(&c.body).map_err(|_| decode_err(&target))?,
                next: c.next,
                not_modified: true,
            });
        }
        let text = resp
            .text()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        if !status.is_success() {
            let mut err = classify(&target, status.as_u16(), &headers, &text);
            if renewed && status == StatusCode::UNAUTHORIZED {
                err.message = format!(
                    "{}: refused a freshly minted installation token too (is the App still installed, with access to the repository?)",
                    err.message
                );
            }
            if err.error_kind().is_rate_limit()
                && let Some(wait) = err.retry_after
                && let Ok(wait) = jiff::SignedDuration::try_from(wait)
            {
                *self.blocked_until.lock().expect("gate lock") = Timestamp::now().checked_add(wait).ok();
            }
            return Err(err);
        }
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| decode_err(&target))?
        };
        let next = headers
            .get(header::LINK)
            .and_then(|v| v.to_str().ok())
            .and_then(link_next);
        if is_get && let Some(etag) = headers.get(header::ETAG).and_then(|v| v.to_str().ok()) {
            let mut cache = self.cache.lock().expect("cache lock");
            if cache.len() >= self.options.max_cached_urls {
                cache.clear();
            }
            cache.insert(
                url,
                CachedPage {
                    etag: etag.to_string(),
                    body: Arc::from(text.as_str()),
                    next: next.clone(),
                },
            );
        }
        Ok(Page {
            body,
            next,
            not_modified: false,
        })
    }

    /// Every page of a listing; `items_key` names the array inside an object response.
    async fn get_all(
        &self,
        first: &str,
        items_key: Option<&str>,
    ) -> Result<(Vec<Value>, bool), AdapterError> {
        let mut url = first.to_string();
        let mut items = vec![];
        let mut all_not_modified = true;
        for _ in 0..self.options.max_pages {
            let page = self.request(Method::GET, &url, None).await?;
            all_not_modified &= page.not_modified;
            let array = match items_key {
                Some(k) => page.body.get(k).cloned().unwrap_or(Value::Null),
                None => page.body,
            };
            match array {
                Value::Array(a) => items.extend(a),
                _ => return Err(decode_err(first)),
            }
            match page.next {
                Some(next) => url = next,
                None => return Ok((items, all_not_modified)),
            }
        }
        Ok((items, all_not_modified))
    }
}

/// Classify a non-2xx GitHub answer.
pub fn classify(target: &str, status: u16, headers: &header::HeaderMap, body: &str) -> AdapterError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| opt_str(&v, "message"))
        .unwrap_or_else(|| snippet(body));
    let remaining_zero = headers.get("x-ratelimit-remaining").and_then(|v| v.to_str().ok()) == Some("0");
    let after = retry_after(headers);
    let reset_wait = headers
        .get("x-ratelimit-reset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|reset| Duration::try_from(reset.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO));
    let err = match status {
        403 | 429 if remaining_zero => AdapterError::transient(
            AdapterErrorKind::RateLimited,
            format!("{target}: primary rate limit exceeded"),
        )
        .with_retry_after(after.or(reset_wait)),
        403 | 429 if after.is_some() || message.to_ascii_lowercase().contains("secondary rate limit") => {
            AdapterError::transient(
                AdapterErrorKind::SecondaryRateLimit,
                format!("{target}: secondary rate limit"),
            )
            .with_retry_after(after.or(Some(Duration::from_secs(60))))
        }
        429 => AdapterError::transient(
            AdapterErrorKind::RateLimited,
            format!("{target}: too many requests"),
        ),
        401 => AdapterError::permanent(AdapterErrorKind::Auth, format!("{target}: bad credentials")),
        403 => AdapterError::permanent(
            AdapterErrorKind::Forbidden,
            format!("{target}: forbidden ({message})"),
        ),
        404 => AdapterError::permanent(AdapterErrorKind::NotFound, format!("{target}: not found")),
        410 => AdapterError::permanent(AdapterErrorKind::Gone, format!("{target}: gone")),
        422 => AdapterError::permanent(
            AdapterErrorKind::Validation,
            format!("{target}: rejected ({message})"),
        ),
        500..=599 => {
            AdapterError::transient(AdapterErrorKind::ServerError, format!("{target}: server error"))
        }
        _ => AdapterError::permanent(AdapterErrorKind::UnexpectedStatus, format!("{target}: {message}")),
    };
    err.with_status(status)
}

fn parse_permission(v: &Value) -> Permission {
    let level = |s: &str| match s {
        "admin" => Some(Permission::Admin),
        "maintain" => Some(Permission::Maintain),
        "write" | "push" => Some(Permission::Write),
        "triage" => Some(Permission::Triage),
        "read" | "pull" => Some(Permission::Read),
        "none" => Some(Permission::None),
        _ => None,
    };
    // `role_name` keeps maintain and triage apart; custom roles fall back to the legacy field,
    // which folds them conservatively (maintain → write, triage → read).
    opt_str(v, "role_name")
        .and_then(|r| level(&r))
        .or_else(|| opt_str(v, "permission").and_then(|p| level(&p)))
        .unwrap_or(Permission::None)
}

fn repo_from_api_url(url: &str) -> Option<String> {
    let mut parts = url.trim_end_matches('/').rsplit('/');
    let name = parts.next()?;
    let owner = parts.next()?;
    Some(format!("{owner}/{name}"))
}

#[async_trait]
impl Tracker for GitHubClient {
    async fn list_labeled_issues(&self, repo: &str, label: &str) -> Result<Listing<Issue>, AdapterError> {
        let url = format!(
            "{}/issues?state=open&labels={}&per_page=100",
            repo_path(repo)?,
            enc(label)
        );
        let (items, not_modified) = self.get_all(&url, None).await?;
        let issues = items
            .iter()
            .filter(|i| i.get("pull_request").is_none())
            .filter_map(|i| {
                Some(Issue {
                    number: i.get("number")?.as_u64()?,
                    title: str_field(i, "title"),
                    body: str_field(i, "body"),
                    labels: i
                        .get("labels")
                        .and_then(Value::as_array)
                        .map(|ls| {
                            ls.iter()
                                .filter_map(|l| l.as_str().map(str::to_string).or_else(|| opt_str(l, "name")))
                                .collect()
                        })
                        .unwrap_or_default(),
                    state: str_field(i, "state"),
                })
            })
            .collect();
        Ok(Listing {
            items: issues,
            not_modified,
        })
    }

    async fn label_events(&self, repo: &str, number: u64) -> Result<Vec<LabelEvent>, AdapterError> {
        let (items, _) = self
            .get_all(
                &format!("{}/issues/{number}/events?per_page=100", repo_path(repo)?),
                None,
            )
            .await?;
        Ok(items
            .iter()
            .filter(|e| e.get("event").and_then(Value::as_str) == Some("labeled"))
            .filter_map(|e| {
                let actor = e.get("actor").filter(|a| !a.is_null())?;
                Some(LabelEvent {
                    label: e.get("label").map(|l| str_field(l, "name"))?,
                    actor_login: opt_str(actor, "login")?,
                    actor_type: str_field(actor, "type"),
                    created_at: e.get("created_at").and_then(Value::as_str)?.parse().ok()?,
                })
            })
            .collect())
    }

    async fn permission(&self, repo: &str, user: &str) -> Result<Permission, AdapterError> {
        let url = format!("{}/collaborators/{}/permission", repo_path(repo)?, enc(user));
        match self.request(Method::GET, &url, None).await {
            Ok(page) => Ok(parse_permission(&page.body)),
            // Not a collaborator.
            Err(e) if e.status == Some(404) => Ok(Permission::None),
            Err(e) => Err(e),
        }
    }

    async fn blocked_by(&self, repo: &str, number: u64) -> Result<Vec<Dependency>, AdapterError> {
        let url = format!(
            "{}/issues/{number}/dependencies/blocked_by?per_page=100",
            repo_path(repo)?
        );
        match self.get_all(&url, None).await {
            Ok((items, _)) => Ok(items
                .iter()
                .filter_map(|i| {
                    Some(Dependency {
                        repo: i
                            .get("repository_url")
                            .and_then(Value::as_str)
                            .and_then(repo_from_api_url)?,
                        number: i.get("number")?.as_u64()?,
                        state: str_field(i, "state"),
                    })
                })
                .collect()),
            // Servers without issue dependencies answer 404; text blockers still apply.
            Err(e) if e.status == Some(404) => Ok(vec![]),
            Err(e) => Err(e),
        }
    }

    async fn issue_state(&self, repo: &str, number: u64) -> Result<String, AdapterError> {
        let page = self
            .request(
                Method::GET,
                &format!("{}/issues/{number}", repo_path(repo)?),
                None,
            )
            .await?;
        opt_str(&page.body, "state").ok_or_else(|| decode_err("issue"))
    }

    async fn issue_labels(&self, repo: &str, number: u64) -> Result<Vec<String>, AdapterError> {
        let page = self
            .request(
                Method::GET,
                &format!("{}/issues/{number}", repo_path(repo)?),
                None,
            )
            .await?;
        let labels = page
            .body
            .get("labels")
            .and_then(Value::as_array)
            .ok_or_else(|| decode_err("issue labels"))?;
        // Labels come as objects (`{name}`) and, in some payloads, as plain strings.
        Ok(labels
            .iter()
            .filter_map(|l| l.as_str().map(str::to_string).or_else(|| opt_str(l, "name")))
            .collect())
    }

    async fn add_labels(&self, repo: &str, number: u64, labels: &[String]) -> Result<(), AdapterError> {
        let url = format!("{}/issues/{number}/labels", repo_path(repo)?);
        self.request(Method::POST, &url, Some(&json!({"labels": labels})))
            .await
            .map(|_| ())
    }

    async fn remove_label(&self, repo: &str, number: u64, label: &str) -> Result<(), AdapterError> {
        let url = format!("{}/issues/{number}/labels/{}", repo_path(repo)?, enc(label));
        match self.request(Method::DELETE, &url, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.status == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_comment(&self, repo: &str, number: u64, body: &str) -> Result<u64, AdapterError> {
        let url = format!("{}/issues/{number}/comments", repo_path(repo)?);
        let page = self
            .request(Method::POST, &url, Some(&json!({"body": body})))
            .await?;
        page.body
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| decode_err("comment"))
    }

    async fn update_comment(&self, repo: &str, comment_id: u64, body: &str) -> Result<(), AdapterError> {
        let url = format!("{}/issues/comments/{comment_id}", repo_path(repo)?);
        self.request(Method::PATCH, &url, Some(&json!({"body": body})))
            .await
            .map(|_| ())
    }

    async fn find_comment(&self, repo: &str, number: u64, marker: &str) -> Result<Option<u64>, AdapterError> {
        let (items, _) = self
            .get_all(
                &format!("{}/issues/{number}/comments?per_page=100", repo_path(repo)?),
                None,
            )
            .await?;
        Ok(items
            .iter()
            .find(|c| {
                c.get("body")
                    .and_then(Value::as_str)
                    .is_some_and(|b| b.contains(marker))
            })
            .and_then(|c| c.get("id").and_then(Value::as_u64)))
    }

    async fn close_issue(&self, repo: &str, number: u64) -> Result<(), AdapterError> {
        let url = format!("{}/issues/{number}", repo_path(repo)?);
        self.request(
            Method::PATCH,
            &url,
            Some(&json!({"state": "closed", "state_reason": "completed"})),
        )
        .await
        .map(|_| ())
    }

    async fn commits_since(
        &self,
        repo: &str,
        branch: &str,
        since: Timestamp,
    ) -> Result<Vec<CommitInfo>, AdapterError> {
        let url = format!(
            "{}/commits?sha={}&since={}&per_page=100",
            repo_path(repo)?,
            enc(branch),
            enc(&since.to_string())
        );
        let (items, _) = self.get_all(&url, None).await?;
        Ok(items
            .iter()
            .filter_map(|c| {
                Some(CommitInfo {
                    sha: opt_str(c, "sha")?,
                    message: c
                        .get("commit")
                        .map(|m| str_field(m, "message"))
                        .unwrap_or_default(),
                    html_url: opt_str(c, "html_url"),
                })
            })
            .collect())
    }

    async fn check_runs(&self, repo: &str, sha: &str) -> Result<Vec<CheckRun>, AdapterError> {
        let url = format!(
            "{}/commits/{}/check-runs?per_page=100",
            repo_path(repo)?,
            enc(sha)
        );
        let (items, _) = self.get_all(&url, Some("check_runs")).await?;
        Ok(items
            .iter()
            .map(|r| CheckRun {
                name: str_field(r, "name"),
                status: str_field(r, "status"),
                conclusion: opt_str(r, "conclusion"),
                html_url: opt_str(r, "html_url").or_else(|| opt_str(r, "details_url")),
            })
            .collect())
    }

    async fn commit_statuses(&self, repo: &str, sha: &str) -> Result<Vec<CommitStatus>, AdapterError> {
        let url = format!("{}/commits/{}/status?per_page=100", repo_path(repo)?, enc(sha));
        let page = self.request(Method::GET, &url, None).await?;
        let statuses = page
            .body
            .get("statuses")
            .and_then(Value::as_array)
            .ok_or_else(|| decode_err("combined status"))?;
        Ok(statuses
            .iter()
            .map(|s| CommitStatus {
                context: str_field(s, "context"),
                state: str_field(s, "state"),
                target_url: opt_str(s, "target_url"),
            })
            .collect())
    }

    async fn default_branch(&self, repo: &str) -> Result<String, AdapterError> {
        let page = self.request(Method::GET, &repo_path(repo)?, None).await?;
        opt_str(&page.body, "default_branch").ok_or_else(|| decode_err("repository"))
    }

    fn rate_limit(&self) -> Option<RateLimit> {
        *self.rate.lock().expect("rate lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_next() {
        let link = r#"<https://api.github.com/repositories/1/issues?page=2>; rel="next", <https://api.github.com/repositories/1/issues?page=5>; rel="last""#;
        assert_eq!(
            link_next(link).as_deref(),
            Some("https://api.github.com/repositories/1/issues?page=2")
        );
        assert_eq!(link_next(r#"<https://x/?page=1>; rel="prev""#), None);
        assert_eq!(link_next("garbage"), None);
    }

    #[test]
    fn permissions_prefer_role_name() {
        assert_eq!(
            parse_permission(&json!({"permission": "write", "role_name": "maintain"})),
            Permission::Maintain
        );
        assert_eq!(
            parse_permission(&json!({"permission": "read", "role_name": "triage"})),
            Permission::Triage
        );
        assert_eq!(
            parse_permission(&json!({"permission": "write", "role_name": "custom-deployer"})),
            Permission::Write
        );
        assert_eq!(
            parse_permission(&json!({"permission": "admin"})),
            Permission::Admin
        );
        assert_eq!(parse_permission(&json!({})), Permission::None);
    }

    #[test]
    fn repo_paths_are_encoded_and_validated() {
        assert_eq!(repo_path("acme/app.js").unwrap(), "/repos/acme/app%2Ejs");
        assert!(repo_path("acme").is_err());
        assert!(repo_path("a/b/c").is_err());
        assert_eq!(
            repo_from_api_url("https://api.github.com/repos/acme/lib").as_deref(),
            Some("acme/lib")
        );
    }

    #[test]
    fn classification() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut m = header::HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        let e = classify(
            "g",
            403,
            &h(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", "4102444800"),
            ]),
            "{}",
        );
        assert_eq!((e.kind, e.is_transient()), ("rate_limited", true));
        assert!(e.retry_after.unwrap() > Duration::from_secs(1000));
        let e = classify("g", 403, &h(&[("retry-after", "30")]), "{}");
        assert_eq!(
            (e.kind, e.retry_after),
            ("secondary_rate_limit", Some(Duration::from_secs(30)))
        );
        let e = classify(
            "g",
            403,
            &h(&[]),
            r#"{"message":"You have exceeded a secondary rate limit"}"#,
        );
        assert_eq!(e.kind, "secondary_rate_limit");
        assert_eq!(
            classify("g", 403, &h(&[]), r#"{"message":"Resource not accessible"}"#).kind,
            "forbidden"
        );
        assert_eq!(classify("g", 401, &h(&[]), "").kind, "auth");
        assert!(classify("g", 502, &h(&[]), "").is_transient());
        assert!(!classify("g", 422, &h(&[]), "").is_transient());
    }
}
