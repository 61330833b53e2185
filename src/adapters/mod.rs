//! Ports and adapters: every external system the loop touches sits behind a narrow async trait
//! (one method per question or side effect) with a real implementation over reqwest or kube.
//! Failures are classified once, here, as transient (retry with backoff, same ids) or permanent
//! (stop and report), and error messages never carry tokens or secret URLs.

pub mod claude;
pub mod github;
pub mod github_app;
pub mod memory;
pub mod notify;
pub mod retry;
pub mod rollout;
pub mod t3;
pub mod woodpecker;

use std::{fmt, path::PathBuf, time::Duration};

/// Whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// A transport error, a rate limit or a server fault: retry later with the same ids.
    Transient,
    /// The request is wrong or forbidden, or the server rejected it for a business reason.
    Permanent,
}

/// What went wrong, as a closed vocabulary: the controllers branch on it (log level, retry,
/// run-ending), never on the spelling. [`AdapterErrorKind::as_str`] is the spelling that shows up in
/// metric labels, Event reasons and messages, and it must stay stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdapterErrorKind {
    /// No response: connection refused, timeout, reset.
    Transport,
    /// A response we could not read.
    Decode,
    /// The server asked us to slow down (primary limit, 429).
    RateLimited,
    /// GitHub's secondary (abuse) rate limit.
    SecondaryRateLimit,
    /// A 5xx.
    ServerError,
    /// The credentials were refused (401, or T3's 401/403).
    Auth,
    /// The credentials lack a scope or access (403).
    Forbidden,
    /// The object or route does not exist.
    NotFound,
    /// The object existed and is gone (410).
    Gone,
    /// The server validated the request and refused it (422).
    Validation,
    /// The server refused the request for another reason.
    Rejected,
    /// T3 answered an empty 400: the command's schema is wrong.
    SchemaRejected,
    /// T3 answered a tagged 400.
    InvalidRequest,
    /// A command failed our own validation before it was sent.
    InvalidCommand,
    /// The server does not take the body's media type (415).
    UnsupportedMediaType,
    /// T3 accepted the command's shape and refused it for a business reason
    /// (`orchestration_dispatch_failed`: a reused id, a root another project holds).
    DispatchRejected,
    /// A status code no rule covers.
    UnexpectedStatus,
    /// A secret the controller has not loaded (yet).
    SecretUnloaded,
    /// A mounted secret file that cannot be read.
    SecretUnreadable,
    /// A mounted secret file that is empty.
    SecretEmpty,
    /// `project.create` is retried with a fresh id (the controller's own, expected).
    ProjectRetry,
    /// A spelling outside this vocabulary (tests and one-off callers).
    Other(&'static str),
}

impl AdapterErrorKind {
    /// Every named kind (not `Other`).
    pub const ALL: [AdapterErrorKind; 21] = [
        Self::Transport,
        Self::Decode,
        Self::RateLimited,
        Self::SecondaryRateLimit,
        Self::ServerError,
        Self::Auth,
        Self::Forbidden,
        Self::NotFound,
        Self::Gone,
        Self::Validation,
        Self::Rejected,
        Self::SchemaRejected,
        Self::InvalidRequest,
        Self::InvalidCommand,
        Self::UnsupportedMediaType,
        Self::DispatchRejected,
        Self::UnexpectedStatus,
        Self::SecretUnloaded,
        Self::SecretUnreadable,
        Self::SecretEmpty,
        Self::ProjectRetry,
    ];

    /// The stable spelling (metric label, Event reason, message).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::Decode => "decode",
            Self::RateLimited => "rate_limited",
            Self::SecondaryRateLimit => "secondary_rate_limit",
            Self::ServerError => "server_error",
            Self::Auth => "auth",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Gone => "gone",
            Self::Validation => "validation",
            Self::Rejected => "rejected",
            Self::SchemaRejected => "schema_rejected",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidCommand => "invalid_command",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::DispatchRejected => "dispatch_rejected",
            Self::UnexpectedStatus => "unexpected_status",
            Self::SecretUnloaded => "secret_unloaded",
            Self::SecretUnreadable => "secret_unreadable",
            Self::SecretEmpty => "secret_empty",
            Self::ProjectRetry => "project_retry",
            Self::Other(s) => s,
        }
    }

    /// The kind a spelling names (`Other` for one outside the vocabulary).
    pub fn from_label(label: &'static str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == label)
            .unwrap_or(Self::Other(label))
    }

    /// Kinds that are transient by nature: retrying later, with the same ids, can help.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::Transport
                | Self::RateLimited
                | Self::SecondaryRateLimit
                | Self::ServerError
                | Self::ProjectRetry
        )
    }

    /// Kinds a healthy loop meets in normal operation (blips, limits, its own retry): a
    /// reconcile failing with one is logged quietly.
    pub fn is_expected(self) -> bool {
        matches!(
            self,
            Self::Transport | Self::RateLimited | Self::ServerError | Self::ProjectRetry
        )
    }

    /// The credentials were refused or lack access: the tracker's probe says `Unauthorized`.
    pub fn is_access_denied(self) -> bool {
        matches!(self, Self::Auth | Self::Forbidden | Self::NotFound)
    }

    /// A rate limit whose `Retry-After` gates further requests.
    pub fn is_rate_limit(self) -> bool {
        matches!(self, Self::RateLimited | Self::SecondaryRateLimit)
    }
}

impl From<&'static str> for AdapterErrorKind {
    fn from(label: &'static str) -> Self {
        Self::from_label(label)
    }
}

impl fmt::Display for AdapterErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from an adapter. `kind` is its [`AdapterErrorKind`]'s stable spelling (safe as a
/// metric label and Event reason; branch on [`AdapterError::error_kind`]); `message` is for
/// humans and never contains credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterError {
    /// Transient or permanent.
    pub class: ErrorClass,
    /// The spelling of the kind, e.g. `rate_limited`, `auth`, `schema_rejected`.
    pub kind: &'static str,
    /// HTTP status, when there was a response.
    pub status: Option<u16>,
    /// How long the server asked us to wait.
    pub retry_after: Option<Duration>,
    /// Human-readable detail (no secrets).
    pub message: String,
}

impl AdapterError {
    /// A transient error.
    pub fn transient(kind: impl Into<AdapterErrorKind>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, kind.into(), message.into())
    }

    /// A permanent error.
    pub fn permanent(kind: impl Into<AdapterErrorKind>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, kind.into(), message.into())
    }

    fn new(class: ErrorClass, kind: AdapterErrorKind, message: String) -> Self {
        Self {
            class,
            kind: kind.as_str(),
            status: None,
            retry_after: None,
            message,
        }
    }

    /// The kind, typed.
    pub fn error_kind(&self) -> AdapterErrorKind {
        AdapterErrorKind::from_label(self.kind)
    }

    /// With the HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// With a server-requested delay.
    pub fn with_retry_after(mut self, after: Option<Duration>) -> Self {
        self.retry_after = after;
        self
    }

    /// Whether the server refused the credentials or their scope (401/403 classified `auth`).
    pub fn is_unauthorized(&self) -> bool {
        self.error_kind() == AdapterErrorKind::Auth
    }

    /// Whether retrying can help.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }

    /// A transport-level failure (no response): always transient. The URL is not included,
    /// because some URLs (Slack webhooks) are credentials.
    pub fn from_transport(target: &str, err: &reqwest::Error) -> Self {
        let what = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_decode() {
            return Self::permanent(
                AdapterErrorKind::Decode,
                format!("{target}: response could not be decoded"),
            );
        } else {
            "request failed"
        };
        Self::transient(AdapterErrorKind::Transport, format!("{target}: {what}"))
    }
}

impl fmt::Display for AdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        };
        match self.status {
            Some(s) => write!(f, "{} ({class} {}, HTTP {s})", self.message, self.kind),
            None => write!(f, "{} ({class} {})", self.message, self.kind),
        }
    }
}

impl std::error::Error for AdapterError {}

/// A secret value. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where a credential comes from. Read on every use so rotated tokens take effect without a
/// restart.
pub trait SecretSource: Send + Sync + fmt::Debug {
    /// The current value.
    fn read(&self) -> Result<Secret, AdapterError>;
}

/// A secret in a mounted file (a Kubernetes Secret volume), trimmed of surrounding whitespace.
#[derive(Clone, Debug)]
pub struct FileSecret {
    path: PathBuf,
}

impl FileSecret {
    /// A secret read from `path` on every use.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl SecretSource for FileSecret {
    fn read(&self) -> Result<Secret, AdapterError> {
        let text = std::fs::read_to_string(&self.path).map_err(|e| {
            AdapterError::permanent(
                AdapterErrorKind::SecretUnreadable,
                format!("cannot read secret file {}: {}", self.path.display(), e.kind()),
            )
        })?;
        let value = text.trim();
        if value.is_empty() {
            return Err(AdapterError::permanent(
                AdapterErrorKind::SecretEmpty,
                format!("secret file {} is empty", self.path.display()),
            ));
        }
        Ok(Secret::new(value))
    }
}

/// A secret held in memory (read from a Kubernetes Secret by the controller).
#[derive(Clone, Debug)]
pub struct StaticSecret(pub Secret);

impl SecretSource for StaticSecret {
    fn read(&self) -> Result<Secret, AdapterError> {
        Ok(self.0.clone())
    }
}

/// The `Retry-After` header as a duration (seconds form; HTTP dates are treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A shared reqwest client with sane timeouts and our user agent.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .user_agent(concat!("afk-operator/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The first bytes of a response body for an error message, on one line.
pub fn snippet(body: &str) -> String {
    let flat: String = body
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("ghp_supersecret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", StaticSecret(s)).contains("supersecret"));
    }

    #[test]
    fn file_secrets_are_reread_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = FileSecret::new(&path);
        assert_eq!(source.read().unwrap_err().kind, "secret_unreadable");
        std::fs::write(&path, "  one\n").unwrap();
        assert_eq!(source.read().unwrap().expose(), "one");
        std::fs::write(&path, "two").unwrap();
        assert_eq!(source.read().unwrap().expose(), "two");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(source.read().unwrap_err().kind, "secret_empty");
    }

    #[test]
    fn kinds_keep_their_spelling_and_round_trip() {
        let spelled: Vec<&str> = AdapterErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            spelled,
            [
                "transport",
                "decode",
                "rate_limited",
                "secondary_rate_limit",
                "server_error",
                "auth",
                "forbidden",
                "not_found",
                "gone",
                "validation",
                "rejected",
                "schema_rejected",
                "invalid_request",
                "invalid_command",
                "unsupported_media_type",
                "dispatch_rejected",
                "unexpected_status",
                "secret_unloaded",
                "secret_unreadable",
                "secret_empty",
                "project_retry",
            ],
            "metric labels and Event reasons must not change"
        );
        for kind in AdapterErrorKind::ALL {
            assert_eq!(AdapterErrorKind::from_label(kind.as_str()), kind);
            assert_eq!(AdapterError::permanent(kind, "x").error_kind(), kind);
        }
        assert_eq!(AdapterErrorKind::from_label("x"), AdapterErrorKind::Other("x"));
        assert!(AdapterErrorKind::RateLimited.is_expected());
        assert!(!AdapterErrorKind::SecondaryRateLimit.is_expected());
        assert!(!AdapterErrorKind::DispatchRejected.is_transient());
    }

    #[test]
    fn display_carries_class_kind_and_status() {
        let e = AdapterError::permanent("auth", "t3: unauthorized").with_status(401);
        assert_eq!(e.to_string(), "t3: unauthorized (permanent auth, HTTP 401)");
        assert!(!e.is_transient());
    }
}
