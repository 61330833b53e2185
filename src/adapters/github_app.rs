//! GitHub App credentials: the operator signs a short JWT (RS256) with the App's private key,
//! exchanges it at `POST /app/installations/{id}/access_tokens` for an installation token, and
//! serves that token to the GitHub client as its [`SecretSource`] until five minutes before it
//! expires. A 401 on a normal request mints a new token once ([`TokenMint`]); the client then
//! retries that request once.
//!
//! The exchange sits behind a narrow trait ([`TokenExchange`]) with the real reqwest
//! implementation here. Neither the private key, the JWT nor the installation token ever
//! appears in an error, a log line or `Debug` output.

use std::{
    fmt,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use jiff::{SignedDuration, Timestamp};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{StatusCode, header};
use serde::Serialize;
use serde_json::Value;

use super::{
    AdapterError, AdapterErrorKind, Secret, SecretSource,
    github::{TokenMint, classify},
    http_client,
};

/// How long before `expires_at` an installation token is replaced.
pub const REFRESH_MARGIN: SignedDuration = SignedDuration::from_mins(5);
/// How far in the past the JWT's `iat` is put, against clock drift (GitHub's advice).
pub const JWT_BACKDATE: SignedDuration = SignedDuration::from_secs(60);
/// How far in the future the JWT's `exp` is put: `exp - iat` stays at GitHub's 10-minute cap.
pub const JWT_LIFETIME: SignedDuration = SignedDuration::from_secs(9 * 60);

/// An installation access token and when GitHub said it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallationToken {
    /// The token (`ghs_…`); `Debug` redacts it.
    pub token: Secret,
    /// `expires_at` from GitHub.
    pub expires_at: Timestamp,
}

impl InstallationToken {
    /// Whether the token is still worth sending at `now` (more than [`REFRESH_MARGIN`] left).
    pub fn fresh_at(&self, now: Timestamp) -> bool {
        self.expires_at
            .checked_sub(REFRESH_MARGIN)
            .is_ok_and(|refresh_at| now < refresh_at)
    }
}

/// The one request the App flow makes: a signed JWT for an installation token.
#[async_trait]
pub trait TokenExchange: Send + Sync + fmt::Debug {
    /// `POST /app/installations/{installation_id}/access_tokens` with `jwt` as the bearer.
    async fn exchange(&self, jwt: &Secret, installation_id: u64) -> Result<InstallationToken, AdapterError>;
}

/// The real exchange over reqwest.
#[derive(Debug)]
pub struct HttpTokenExchange {
    base: String,
    http: reqwest::Client,
}

impl HttpTokenExchange {
    /// The exchange at the API root `api_url` (e.g. `https://api.github.com`).
    pub fn new(api_url: &str) -> Self {
        Self {
            base: api_url.trim_end_matches('/').to_string(),
            http: http_client(Duration::from_secs(30)),
        }
    }
}

#[async_trait]
impl TokenExchange for HttpTokenExchange {
    async fn exchange(&self, jwt: &Secret, installation_id: u64) -> Result<InstallationToken, AdapterError> {
        let path = format!("/app/installations/{installation_id}/access_tokens");
        let target = format!("github POST {path}");
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(jwt.expose())
            .header(header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .map_err(|e| AdapterError::from_transport(&target, &e))?;
        if !status.is_success() {
            let mut err = classify(&target, status.as_u16(), &headers, &text);
            let why = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .map(|m| super::snippet(&m))
                .unwrap_or_default();
            match status {
                StatusCode::UNAUTHORIZED => {
                    err.message = format!(
                        "{target}: GitHub refused the App's JWT ({why}) — check appId and the private key"
                    );
                }
                StatusCode::NOT_FOUND => {
                    err.message = format!(
                        "{target}: installation {installation_id} not found for this App — check installationId"
                    );
                }
                _ => {}
            }
            return Err(err);
        }
        let v: Value = serde_json::from_str(&text).map_err(|_| {
            AdapterError::permanent(
                AdapterErrorKind::Decode,
                format!("{target}: response is not JSON"),
            )
        })?;
        let token = v.get("token").and_then(Value::as_str).filter(|t| !t.is_empty());
        let expires_at = v
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok());
        match (token, expires_at) {
            (Some(token), Some(expires_at)) => Ok(InstallationToken {
                token: Secret::new(token),
                expires_at,
            }),
            _ => Err(AdapterError::permanent(
                AdapterErrorKind::Decode,
                format!("{target}: unexpected shape (no token or expires_at)"),
            )),
        }
    }
}

#[derive(Serialize)]
struct Claims {
    iat: i64,
    exp: i64,
    iss: String,
}

/// Sign the App's JWT at `now`: RS256, `iat` = now − 60 s, `exp` = now + 9 min, `iss` = app id.
pub fn app_jwt(private_key_pem: &Secret, app_id: u64, now: Timestamp) -> Result<Secret, AdapterError> {
    let key = parse_private_key(private_key_pem)?;
    let claims = Claims {
        iat: (now - JWT_BACKDATE).as_second(),
        exp: (now + JWT_LIFETIME).as_second(),
        iss: app_id.to_string(),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key)
        .map(Secret::new)
        .map_err(|e| {
            AdapterError::permanent(
                AdapterErrorKind::Auth,
                format!("github app: the JWT could not be signed ({:?})", e.kind()),
            )
        })
}

fn parse_private_key(pem: &Secret) -> Result<EncodingKey, AdapterError> {
    // The parser's error is not echoed: it could quote key material.
    EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|_| {
        AdapterError::permanent(
            AdapterErrorKind::Auth,
            "github app: the private key is not an RSA private key in PEM form (download a new one from the App's settings)",
        )
    })
}

/// Whether `pem` is a usable App private key (checked when its Secret is loaded).
pub fn check_private_key(pem: &Secret) -> Result<(), AdapterError> {
    parse_private_key(pem).map(|_| ())
}

/// A GitHub App installation's credentials: a [`SecretSource`] of installation tokens and the
/// [`TokenMint`] that keeps them fresh.
pub struct GitHubAppToken {
    app_id: u64,
    installation_id: u64,
    private_key: Arc<dyn SecretSource>,
    exchange: Arc<dyn TokenExchange>,
    current: RwLock<Option<InstallationToken>>,
    /// One exchange at a time; waiters reuse its result.
    minting: tokio::sync::Mutex<()>,
    exchanges: AtomicU64,
}

impl fmt::Debug for GitHubAppToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expires_at = self
            .current
            .read()
            .expect("token lock")
            .as_ref()
            .map(|t| t.expires_at);
        f.debug_struct("GitHubAppToken")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .field("expires_at", &expires_at)
            .finish_non_exhaustive()
    }
}

impl GitHubAppToken {
    /// Credentials of `installation_id` of App `app_id`, signed with the PEM `private_key`.
    pub fn new(
        app_id: u64,
        installation_id: u64,
        private_key: Arc<dyn SecretSource>,
        exchange: Arc<dyn TokenExchange>,
    ) -> Self {
        Self {
            app_id,
            installation_id,
            private_key,
            exchange,
            current: RwLock::new(None),
            minting: tokio::sync::Mutex::new(()),
            exchanges: AtomicU64::new(0),
        }
    }

    /// How many installation tokens were minted.
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(Ordering::Relaxed)
    }

    /// When the current installation token expires.
    pub fn expires_at(&self) -> Option<Timestamp> {
        self.current
            .read()
            .expect("token lock")
            .as_ref()
            .map(|t| t.expires_at)
    }

    fn current_if(&self, ok: impl Fn(&InstallationToken) -> bool) -> bool {
        self.current.read().expect("token lock").as_ref().is_some_and(ok)
    }

    async fn mint(&self) -> Result<(), AdapterError> {
        let jwt = app_jwt(&self.private_key.read()?, self.app_id, Timestamp::now())?;
        let token = self.exchange.exchange(&jwt, self.installation_id).await?;
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            app_id = self.app_id,
            installation_id = self.installation_id,
            expires_at = %token.expires_at,
            "minted a GitHub App installation token"
        );
        *self.current.write().expect("token lock") = Some(token);
        Ok(())
    }
}

impl SecretSource for GitHubAppToken {
    fn read(&self) -> Result<Secret, AdapterError> {
        self.current
            .read()
            .expect("token lock")
            .as_ref()
            .map(|t| t.token.clone())
            .ok_or_else(|| {
                AdapterError::permanent(
                    AdapterErrorKind::SecretUnloaded,
                    "github app: no installation token minted yet",
                )
            })
    }
}

#[async_trait]
impl TokenMint for GitHubAppToken {
    async fn ensure_fresh(&self) -> Result<(), AdapterError> {
        let fresh = |t: &InstallationToken| t.fresh_at(Timestamp::now());
        if self.current_if(fresh) {
            return Ok(());
        }
        let _one = self.minting.lock().await;
        if self.current_if(fresh) {
            return Ok(());
        }
        self.mint().await
    }

    async fn renew_after_rejection(&self, rejected: &Secret) -> Result<(), AdapterError> {
        let _one = self.minting.lock().await;
        // Another request may have replaced the token while this one was in flight.
        if self.current_if(|t| t.token != *rejected) {
            return Ok(());
        }
        self.mint().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expires_at: Timestamp) -> InstallationToken {
        InstallationToken {
            token: Secret::new("ghs_secretvalue"),
            expires_at,
        }
    }

    #[test]
    fn a_token_is_replaced_five_minutes_before_it_expires() {
        let exp: Timestamp = "2026-01-01T12:00:00Z".parse().unwrap();
        let t = token(exp);
        assert!(t.fresh_at("2026-01-01T11:54:59Z".parse().unwrap()));
        assert!(!t.fresh_at("2026-01-01T11:55:00Z".parse().unwrap()));
        assert!(!t.fresh_at(exp));
    }

    #[test]
    fn nothing_secret_in_debug_or_errors() {
        let t = token(Timestamp::UNIX_EPOCH);
        assert!(!format!("{t:?}").contains("secretvalue"));
        let err = app_jwt(
            &Secret::new(
                "-----BEGIN RSA PRIVATE KEY-----\nAAAAsecretkeymaterial\n-----END RSA PRIVATE KEY-----",
            ),
            1,
            Timestamp::now(),
        )
        .unwrap_err();
        assert_eq!(err.kind, "auth");
        assert!(!err.to_string().contains("secretkeymaterial"), "{err}");
        let app = GitHubAppToken::new(
            7,
            9,
            Arc::new(super::super::StaticSecret(Secret::new("pem"))),
            Arc::new(HttpTokenExchange::new("http://127.0.0.1:9")),
        );
        *app.current.write().unwrap() = Some(t);
        let dbg = format!("{app:?}");
        assert!(
            dbg.contains("app_id: 7") && !dbg.contains("secretvalue") && !dbg.contains("pem"),
            "{dbg}"
        );
    }
}
