//! Sidecar authentication (SPEC §4): `Authorization: Bearer <token>` compared in constant time
//! against a token read from a mounted file (re-read when the file changes). No token configured
//! means every request is rejected. An SSO username header set by a trusted reverse proxy is
//! honoured only with `--trust-proxy-header`, and only as the caller's name for audit logs —
//! never instead of the bearer token.

use std::{path::PathBuf, sync::Mutex, time::SystemTime};

use axum::{
    extract::{FromRequestParts, Request, State},
    http::{HeaderMap, header, request::Parts},
    middleware::Next,
    response::Response,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{SidecarState, error::ApiError};

/// The SSO header a trusted proxy (authentik) sets.
pub const PROXY_USER_HEADER: &str = "x-authentik-username";

/// Who made an authenticated request (for audit logs). An extractor: [`require_token`] puts it
/// on the request; a route outside the guard that asks for it gets a 401, never a guess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Self>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
    }
}

/// The token file's modification time and the SHA-256 of its token (none when unusable).
type CachedToken = (Option<SystemTime>, Option<[u8; 32]>);

/// The configured bearer token, cached by the file's modification time.
#[derive(Debug)]
pub struct ApiAuth {
    token_file: Option<PathBuf>,
    trust_proxy_header: bool,
    cache: Mutex<Option<CachedToken>>,
}

impl ApiAuth {
    /// Auth from an optional token file.
    pub fn new(token_file: Option<PathBuf>, trust_proxy_header: bool) -> Self {
        Self {
            token_file,
            trust_proxy_header,
            cache: Mutex::new(None),
        }
    }

    /// SHA-256 of the current token, or `None` when no usable token is configured.
    fn expected(&self) -> Option<[u8; 32]> {
        let path = self.token_file.as_ref()?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut cache = self.cache.lock().expect("auth cache");
        if let Some((cached_mtime, digest)) = cache.as_ref()
            && *cached_mtime == mtime
            && mtime.is_some()
        {
            return *digest;
        }
        let digest = std::fs::read_to_string(path)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into());
        *cache = Some((mtime, digest));
        digest
    }

    /// Check a request's headers; `Ok` carries the caller's name, `Err` the 401 to answer.
    pub fn check(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let Some(expected) = self.expected() else {
            return Err(ApiError::unauthorized("no API token is configured on the server"));
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        // Hash both sides: equal-length inputs, so the comparison leaks neither content nor length.
        let got: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if !bool::from(got.ct_eq(&expected)) {
            return Err(ApiError::unauthorized("invalid bearer token"));
        }
        let name = if self.trust_proxy_header {
            headers
                .get(PROXY_USER_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        } else {
            None
        };
        Ok(Caller(name.unwrap_or_else(|| "api-token".into())))
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive and may
/// be followed by several spaces (RFC 7235 §2.1, RFC 6750 §2.1); an empty token is none.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// Middleware guarding every authenticated route group: `/api/afk/*`, `/api/breakglass/*` and
/// the voice gateway's `/v1/*` (see [`super::router`]). A refusal is a 401 [`ApiError`] with
/// `WWW-Authenticate: Bearer`; an accepted request carries its [`Caller`] as an extension.
pub async fn require_token(
    State(state): State<SidecarState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = state.auth.check(req.headers())?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for ok in ["Bearer t", "bearer t", "BEARER t", "bEaReR  t"] {
            assert_eq!(bearer_token(ok), Some("t"), "{ok:?}");
        }
        for bad in ["Bearer", "Bearer ", "Basic t", "Bearert", "t", "", "Bearer\tt"] {
            assert_eq!(bearer_token(bad), None, "{bad:?}");
        }
    }
}
