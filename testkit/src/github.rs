//! A stateful fake of the GitHub REST API for the endpoints the operator uses. Response bodies
//! are the official `@octokit/openapi` examples (`tests/fixtures/github/`) with only the fields a
//! test sets overridden. It enforces what the real API enforces and the client must get right:
//! a `User-Agent` (403 without), the bearer token (401 "Bad credentials"), `ETag` /
//! `If-None-Match` (304 that does not count against the rate limit), `per_page`/`page`
//! pagination with `Link` headers, the `x-ratelimit-*` headers and a 403 when the budget is
//! spent, and injectable faults (5xx, secondary limits with `retry-after`).
//!
//! GitHub App flow: with [`FakeGitHub::enable_app`], `POST
//! /app/installations/{id}/access_tokens` verifies the bearer JWT against the App's public key
//! (RS256 signature; `iss` = the app id, `iat` not in the future, `exp` not passed and at most
//! 10 minutes after `iat`) and answers 201 with an installation token whose expiry the test
//! controls; every other route then accepts that token until it expires.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{Recorded, Served, record, serve};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/github/",
            $name,
            ".json"
        ))
    };
}

fn template(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

/// A labelled event in an issue's timeline.
#[derive(Clone, Debug)]
pub struct FakeEvent {
    /// `labeled`, `unlabeled`, `closed`, …
    pub event: String,
    /// The label, for label events.
    pub label: Option<String>,
    /// Actor login.
    pub actor: String,
    /// Actor type (`User`, `Bot`).
    pub actor_type: String,
    /// ISO-8601 time.
    pub created_at: String,
}

/// An issue (or pull request) in a fake repo.
#[derive(Clone, Debug, Default)]
pub struct FakeIssue {
    /// Title.
    pub title: String,
    /// Body.
    pub body: String,
    /// `open` or `closed`.
    pub state: String,
    /// Labels.
    pub labels: Vec<String>,
    /// A pull request (listed by the issues endpoint, as on GitHub).
    pub pull_request: bool,
    /// Timeline events.
    pub events: Vec<FakeEvent>,
    /// Comments: (id, body).
    pub comments: Vec<(u64, String)>,
    /// Native blocked-by dependencies: (repo, number).
    pub blocked_by: Vec<(String, u64)>,
    /// How many times it was closed through the API.
    pub closes: u32,
}

/// A commit on the default branch.
#[derive(Clone, Debug)]
pub struct FakeCommit {
    /// SHA.
    pub sha: String,
    /// Message.
    pub message: String,
    /// ISO-8601 commit date.
    pub date: String,
}

/// A repository.
#[derive(Clone, Debug, Default)]
pub struct FakeRepo {
    /// Default branch.
    pub default_branch: String,
    /// Issues by number.
    pub issues: BTreeMap<u64, FakeIssue>,
    /// `role_name` per collaborator login.
    pub roles: BTreeMap<String, String>,
    /// Commits, newest first.
    pub commits: Vec<FakeCommit>,
    /// Check runs per SHA: (name, status, conclusion).
    pub check_runs: BTreeMap<String, Vec<(String, String, Option<String>)>>,
    /// Statuses per SHA: (context, state).
    pub statuses: BTreeMap<String, Vec<(String, String)>>,
}

/// A fault for the next requests whose path starts with `path_prefix`.
#[derive(Clone, Debug)]
pub struct GhFault {
    /// Path prefix, e.g. `/repos/acme/app/issues`.
    pub path_prefix: String,
    /// Status.
    pub status: u16,
    /// Extra headers (e.g. `retry-after`).
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
    /// How many requests get it.
    pub remaining: u32,
}

/// The fake's state.
#[derive(Debug)]
pub struct GhState {
    /// Accepted token.
    pub token: String,
    /// Repos by lower-case `owner/name`.
    pub repos: BTreeMap<String, FakeRepo>,
    /// Rate limit window size.
    pub rate_limit: u64,
    /// Requests left in the window.
    pub rate_remaining: u64,
    /// Epoch seconds of the reset.
    pub rate_reset: u64,
    /// Every request.
    pub requests: Vec<Recorded>,
    /// Pending faults.
    pub faults: Vec<GhFault>,
    /// The GitHub App whose JWTs the token endpoint accepts.
    pub app: Option<FakeApp>,
    /// Installation tokens minted, with their expiry.
    pub installation_tokens: Vec<(String, jiff::Timestamp)>,
    /// Claims of every App JWT the token endpoint accepted.
    pub app_jwt_claims: Vec<Value>,
    /// Requests answered 401 because of the token they presented (not counting the token
    /// endpoint).
    pub refused_tokens: u64,
    next_comment_id: u64,
}

/// A GitHub App installed once.
#[derive(Clone, Debug)]
pub struct FakeApp {
    /// The App's id (the JWT's `iss`).
    pub app_id: u64,
    /// The one installation.
    pub installation_id: u64,
    /// The App's public key (PEM), against which JWT signatures are checked.
    pub public_key_pem: String,
    /// Lifetime of the installation tokens minted next (GitHub: one hour).
    pub token_ttl: jiff::SignedDuration,
}

/// An RSA key pair for a fake GitHub App, generated in the test (2048 bits, like GitHub's).
#[derive(Clone)]
pub struct AppKey {
    /// The private key as GitHub hands it out (`BEGIN RSA PRIVATE KEY`, PKCS#1).
    pub private_pkcs1_pem: String,
    /// The same key as PKCS#8 (`BEGIN PRIVATE KEY`), as `openssl pkcs8 -topk8` converts it.
    pub private_pkcs8_pem: String,
    /// The public key (`BEGIN PUBLIC KEY`, SubjectPublicKeyInfo).
    pub public_pem: String,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppKey(<private>)")
    }
}

impl AppKey {
    /// A fresh key pair.
    pub fn generate() -> Self {
        use aws_lc_rs::{
            encoding::AsDer,
            rsa::{KeyPair, KeySize},
            signature::KeyPair as _,
        };
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let pkcs8 = pair.as_der().expect("PKCS#8 DER");
        let public = pair.public_key().as_der().expect("SPKI DER");
        let pkcs1 = pkcs1_of_pkcs8(pkcs8.as_ref()).expect("PKCS#8 wraps an RSAPrivateKey");
        Self {
            private_pkcs1_pem: pem("RSA PRIVATE KEY", pkcs1),
            private_pkcs8_pem: pem("PRIVATE KEY", pkcs8.as_ref()),
            public_pem: pem("PUBLIC KEY", public.as_ref()),
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// One DER element: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (version, algorithm, OCTET STRING key).
fn pkcs1_of_pkcs8(pkcs8: &[u8]) -> Option<&[u8]> {
    let (0x30, info, _) = der(pkcs8)? else { return None };
    let (0x02, _, rest) = der(info)? else { return None };
    let (0x30, _, rest) = der(rest)? else { return None };
    let (0x04, key, _) = der(rest)? else { return None };
    Some(key)
}

/// A running GitHub fake.
#[derive(Debug)]
pub struct FakeGitHub {
    /// The server.
    pub served: Served,
    state: Arc<Mutex<GhState>>,
}

impl FakeGitHub {
    /// Start with one accepted token and no repos.
    pub async fn start(token: &str) -> Self {
        let state = Arc::new(Mutex::new(GhState {
            token: token.to_string(),
            repos: BTreeMap::new(),
            rate_limit: 5000,
            rate_remaining: 5000,
            rate_reset: jiff::Timestamp::now().as_second() as u64 + 3600,
            requests: vec![],
            faults: vec![],
            app: None,
            installation_tokens: vec![],
            app_jwt_claims: vec![],
            refused_tokens: 0,
            next_comment_id: 1000,
        }));
        let router = Router::new().fallback(handle).with_state(state.clone());
        Self {
            served: serve(router).await,
            state,
        }
    }

    /// Base URL (the API root).
    pub fn url(&self) -> String {
        self.served.url()
    }

    /// Inspect or change the state.
    pub fn with<R>(&self, f: impl FnOnce(&mut GhState) -> R) -> R {
        f(&mut self.state.lock().expect("gh state"))
    }

    /// Add a repo with a default branch.
    pub fn add_repo(&self, repo: &str, default_branch: &str) {
        self.with(|s| {
            s.repos.insert(
                repo.to_ascii_lowercase(),
                FakeRepo {
                    default_branch: default_branch.into(),
                    ..Default::default()
                },
            )
        });
    }

    /// Change one repo.
    pub fn repo<R>(&self, repo: &str, f: impl FnOnce(&mut FakeRepo) -> R) -> R {
        self.with(|s| f(s.repos.get_mut(&repo.to_ascii_lowercase()).expect("repo exists")))
    }

    /// Add an open issue with labels, applied by `labeler` (role `role`) at `labeled_at`.
    pub fn add_labeled_issue(
        &self,
        repo: &str,
        number: u64,
        title: &str,
        body: &str,
        label: &str,
        labeler: &str,
        labeled_at: &str,
    ) {
        self.repo(repo, |r| {
            r.issues.insert(
                number,
                FakeIssue {
                    title: title.into(),
                    body: body.into(),
                    state: "open".into(),
                    labels: vec![label.into()],
                    events: vec![FakeEvent {
                        event: "labeled".into(),
                        label: Some(label.into()),
                        actor: labeler.into(),
                        actor_type: if labeler.ends_with("[bot]") {
                            "Bot".into()
                        } else {
                            "User".into()
                        },
                        created_at: labeled_at.into(),
                    }],
                    ..Default::default()
                },
            );
        });
    }

    /// Requests whose method is not GET (mutations), as `METHOD path`.
    pub fn mutations(&self) -> Vec<String> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.method != "GET")
                .map(|r| format!("{} {}", r.method, r.path))
                .collect()
        })
    }

    /// Install a GitHub App: the token endpoint accepts JWTs of `app_id` signed by the private
    /// half of `public_key_pem` for `installation_id`, and mints tokens valid for an hour.
    pub fn enable_app(&self, app_id: u64, installation_id: u64, public_key_pem: &str) {
        self.with(|s| {
            s.app = Some(FakeApp {
                app_id,
                installation_id,
                public_key_pem: public_key_pem.to_string(),
                token_ttl: jiff::SignedDuration::from_hours(1),
            })
        });
    }

    /// The lifetime of the installation tokens minted from now on.
    pub fn set_installation_token_ttl(&self, ttl: jiff::SignedDuration) {
        self.with(|s| s.app.as_mut().expect("enable_app first").token_ttl = ttl);
    }

    /// Every installation token minted so far expires now (GitHub answers 401 to it).
    pub fn expire_installation_tokens(&self) {
        let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        self.with(|s| {
            for (_, exp) in &mut s.installation_tokens {
                *exp = past;
            }
        });
    }

    /// How many installation tokens were minted.
    pub fn token_exchanges(&self) -> usize {
        self.with(|s| s.installation_tokens.len())
    }

    /// Requests that counted against the rate limit.
    pub fn counted_requests(&self) -> usize {
        self.with(|s| (s.rate_limit - s.rate_remaining) as usize)
    }
}

fn gh_error(status: StatusCode, message: &str) -> Response {
    let body = json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()});
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn query_param(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode_str(v).decode_utf8_lossy().to_string())
    })
}

fn issue_json(base: &str, repo: &str, number: u64, i: &FakeIssue) -> Value {
    let mut v = template(fixture!("issue"));
    let label_template = template(fixture!("label-items"))[0].clone();
    v["number"] = json!(number);
    v["title"] = json!(i.title);
    v["body"] = if i.body.is_empty() {
        Value::Null
    } else {
        json!(i.body)
    };
    v["state"] = json!(i.state);
    v["url"] = json!(format!("{base}/repos/{repo}/issues/{number}"));
    v["repository_url"] = json!(format!("{base}/repos/{repo}"));
    v["html_url"] = json!(format!("https://github.com/{repo}/issues/{number}"));
    v["labels"] = json!(
        i.labels
            .iter()
            .map(|l| {
                let mut lt = label_template.clone();
                lt["name"] = json!(l);
                lt
            })
            .collect::<Vec<_>>()
    );
    if let Some(obj) = v.as_object_mut() {
        obj.remove("pull_request");
        if i.pull_request {
            obj.insert(
                "pull_request".into(),
                json!({"url": format!("{base}/repos/{repo}/pulls/{number}")}),
            );
        }
    }
    v
}

fn etag_of(body: &str) -> String {
    format!("W/\"{}\"", hex::encode(&Sha256::digest(body.as_bytes())[..16]))
}

struct Answer {
    status: StatusCode,
    body: Value,
    paginate: bool,
}

fn ok(body: Value) -> Result<Answer, Response> {
    Ok(Answer {
        status: StatusCode::OK,
        body,
        paginate: false,
    })
}

fn list(body: Vec<Value>) -> Result<Answer, Response> {
    Ok(Answer {
        status: StatusCode::OK,
        body: Value::Array(body),
        paginate: true,
    })
}

async fn handle(
    State(state): State<Arc<Mutex<GhState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body).to_string();
    let mut s = state.lock().expect("gh state");
    s.requests.push(record(&method, &uri, &headers, &text));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let base = format!("http://{host}");

    if headers.get(header::USER_AGENT).is_none() {
        return gh_error(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        );
    }
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let presented = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("token "))
        .unwrap_or("")
        .to_string();
    let path = uri.path().to_string();
    if let Some(id) = path
        .strip_prefix("/app/installations/")
        .and_then(|p| p.strip_suffix("/access_tokens"))
    {
        return if method == Method::POST {
            access_token(&mut s, id, &presented)
        } else {
            not_found()
        };
    }
    let now = jiff::Timestamp::now();
    let installation_token = s
        .installation_tokens
        .iter()
        .any(|(t, exp)| *t == presented && *exp > now);
    if presented != s.token && !installation_token {
        s.refused_tokens += 1;
        return gh_error(StatusCode::UNAUTHORIZED, "Bad credentials");
    }
    if let Some(idx) = s
        .faults
        .iter()
        .position(|f| f.remaining > 0 && path.starts_with(&f.path_prefix))
    {
        s.faults[idx].remaining -= 1;
        let f = s.faults[idx].clone();
        let mut resp = (
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_GATEWAY),
            f.body,
        )
            .into_response();
        for (k, v) in f.headers {
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.headers_mut().insert(k, v);
            }
        }
        return resp;
    }
    if s.rate_remaining == 0 {
        let mut resp = gh_error(StatusCode::FORBIDDEN, "API rate limit exceeded for user ID 1.");
        add_rate_headers(&s, resp.headers_mut());
        return resp;
    }

    let answer = route(&mut s, &base, &method, &uri, &text);
    let answer = match answer {
        Ok(a) => a,
        Err(resp) => {
            s.rate_remaining = s.rate_remaining.saturating_sub(1);
            let mut resp = resp;
            add_rate_headers(&s, resp.headers_mut());
            return resp;
        }
    };

    // Pagination.
    let mut link = None;
    let mut body = answer.body;
    if answer.paginate
        && let Value::Array(items) = &body
    {
        let per_page = query_param(&uri, "per_page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(30)
            .clamp(1, 100);
        let page = query_param(&uri, "page")
            .and_then(|p| p.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let pages = items.len().div_ceil(per_page).max(1);
        let slice: Vec<Value> = items
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .cloned()
            .collect();
        let page_url = |n: usize| {
            let others: Vec<String> = uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|kv| !kv.is_empty() && !kv.starts_with("page="))
                .map(str::to_string)
                .collect();
            let mut q = others.join("&");
            if !q.is_empty() {
                q.push('&');
            }
            format!("{base}{}?{q}page={n}", uri.path())
        };
        let mut parts = vec![];
        if page < pages {
            parts.push(format!("<{}>; rel=\"next\"", page_url(page + 1)));
            parts.push(format!("<{}>; rel=\"last\"", page_url(pages)));
        }
        if page > 1 {
            parts.push(format!("<{}>; rel=\"prev\"", page_url(page - 1)));
            parts.push(format!("<{}>; rel=\"first\"", page_url(1)));
        }
        if !parts.is_empty() {
            link = Some(parts.join(", "));
        }
        body = Value::Array(slice);
    }

    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    if method == Method::GET {
        let etag = etag_of(&format!("{text}|{}", link.clone().unwrap_or_default()));
        let matches = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str());
        if matches {
            // A conditional hit does not count against the rate limit.
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut()
                .insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
            add_rate_headers(&s, resp.headers_mut());
            return resp;
        }
        s.rate_remaining = s.rate_remaining.saturating_sub(1);
        let mut resp = (
            answer.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            text,
        )
            .into_response();
        resp.headers_mut()
            .insert(header::ETAG, HeaderValue::from_str(&etag).expect("etag"));
        if let Some(l) = link {
            resp.headers_mut()
                .insert(header::LINK, HeaderValue::from_str(&l).expect("link"));
        }
        add_rate_headers(&s, resp.headers_mut());
        return resp;
    }
    s.rate_remaining = s.rate_remaining.saturating_sub(1);
    let mut resp = if answer.status == StatusCode::NO_CONTENT {
        StatusCode::NO_CONTENT.into_response()
    } else {
        (
            answer.status,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            text,
        )
            .into_response()
    };
    add_rate_headers(&s, resp.headers_mut());
    resp
}

fn add_rate_headers(s: &GhState, headers: &mut HeaderMap) {
    for (k, v) in [
        ("x-ratelimit-limit", s.rate_limit.to_string()),
        ("x-ratelimit-remaining", s.rate_remaining.to_string()),
        ("x-ratelimit-reset", s.rate_reset.to_string()),
        ("x-ratelimit-used", (s.rate_limit - s.rate_remaining).to_string()),
        ("x-ratelimit-resource", "core".to_string()),
    ] {
        headers.insert(k, HeaderValue::from_str(&v).expect("header"));
    }
}

/// `POST /app/installations/{id}/access_tokens`: a JWT of the App, verified, for a token.
fn access_token(s: &mut GhState, id: &str, jwt: &str) -> Response {
    let Some(app) = s.app.clone() else {
        return gh_error(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded");
    };
    let claims = match verify_app_jwt(&app, jwt, jiff::Timestamp::now().as_second()) {
        Ok(c) => c,
        Err(message) => return gh_error(StatusCode::UNAUTHORIZED, message),
    };
    if id.parse::<u64>().ok() != Some(app.installation_id) {
        return not_found();
    }
    s.app_jwt_claims.push(claims);
    let n = s.installation_tokens.len();
    let digest = Sha256::digest(format!("{n}-{}-{jwt}", app.installation_id).as_bytes());
    let token = format!("ghs_{}", &hex::encode(digest)[..36]);
    // GitHub reports whole seconds.
    let expires_at = jiff::Timestamp::from_second((jiff::Timestamp::now() + app.token_ttl).as_second())
        .expect("expiry in range");
    s.installation_tokens.push((token.clone(), expires_at));
    let mut v = template(fixture!("installation-token"));
    v["token"] = json!(token);
    v["expires_at"] = json!(expires_at.to_string());
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

/// GitHub's checks of an App JWT, with GitHub's messages; the claims when they pass.
fn verify_app_jwt(app: &FakeApp, jwt: &str, now: i64) -> Result<Value, &'static str> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    const UNDECODABLE: &str = "A JSON web token could not be decoded";
    let key = DecodingKey::from_rsa_pem(app.public_key_pem.as_bytes()).map_err(|_| UNDECODABLE)?;
    // Signature (RS256 only) here; the time claims below, exactly and without leeway.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map_err(|_| UNDECODABLE)?
        .claims;
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        );
    };
    if iat > now {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        );
    }
    if exp <= now {
        return Err(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        );
    }
    if exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future");
    }
    let iss = match &claims["iss"] {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    if iss != Some(app.app_id) {
        return Err("'Issuer' claim ('iss') must be an Integer");
    }
    Ok(claims)
}

fn not_found() -> Response {
    gh_error(StatusCode::NOT_FOUND, "Not Found")
}

fn route(s: &mut GhState, base: &str, method: &Method, uri: &Uri, body: &str) -> Result<Answer, Response> {
    let segs: Vec<String> = uri
        .path()
        .trim_matches('/')
        .split('/')
        .map(|p| percent_decode_str(p).decode_utf8_lossy().to_string())
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let ["repos", owner, name, rest @ ..] = segs.as_slice() else {
        return Err(not_found());
    };
    let repo_name = format!("{owner}/{name}");
    let key = repo_name.to_ascii_lowercase();
    let payload: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let next_comment_id = s.next_comment_id;
    let Some(repo) = s.repos.get_mut(&key) else {
        return Err(not_found());
    };
    let m = method.as_str();
    match (m, rest) {
        ("GET", []) => {
            let mut v = template(fixture!("full-repository-default-response"));
            v["full_name"] = json!(repo_name);
            v["name"] = json!(name);
            v["default_branch"] = json!(repo.default_branch);
            ok(v)
        }
        ("GET", ["issues"]) => {
            let state = query_param(uri, "state").unwrap_or_else(|| "open".into());
            let labels: Vec<String> = query_param(uri, "labels")
                .map(|l| l.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let items = repo
                .issues
                .iter()
                .rev()
                .filter(|(_, i)| state == "all" || i.state == state)
                .filter(|(_, i)| labels.iter().all(|l| i.labels.contains(l)))
                .map(|(n, i)| issue_json(base, &repo_name, *n, i))
                .collect();
            list(items)
        }
        (_, ["issues", "comments", id]) => {
            let id: u64 = id.parse().map_err(|_| not_found())?;
            let comment = repo
                .issues
                .values_mut()
                .flat_map(|i| i.comments.iter_mut())
                .find(|(cid, _)| *cid == id);
            let Some((_, text)) = comment else {
                return Err(not_found());
            };
            if m == "PATCH" {
                let Some(new) = payload.get("body").and_then(Value::as_str) else {
                    return Err(gh_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid request: body is required",
                    ));
                };
                *text = new.to_string();
            }
            let mut v = template(fixture!("issue-comment"));
            v["id"] = json!(id);
            v["body"] = json!(text);
            ok(v)
        }
        (_, ["issues", n, tail @ ..]) => {
            let number: u64 = n.parse().map_err(|_| not_found())?;
            let Some(issue) = repo.issues.get_mut(&number) else {
                return Err(not_found());
            };
            match (m, tail) {
                ("GET", []) => ok(issue_json(base, &repo_name, number, issue)),
                ("PATCH", []) => {
                    if let Some(st) = payload.get("state").and_then(Value::as_str) {
                        if !["open", "closed"].contains(&st) {
                            return Err(gh_error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed"));
                        }
                        if st == "closed" && issue.state != "closed" {
                            issue.closes += 1;
                        }
                        issue.state = st.to_string();
                    }
                    ok(issue_json(base, &repo_name, number, issue))
                }
                ("GET", ["events"]) => {
                    let tpl = template(fixture!("issue-event-for-issue-items"))[0].clone();
                    list(
                        issue
                            .events
                            .iter()
                            .enumerate()
                            .map(|(idx, e)| {
                                let mut v = tpl.clone();
                                v["id"] = json!(idx + 1);
                                v["event"] = json!(e.event);
                                v["actor"]["login"] = json!(e.actor);
                                v["actor"]["type"] = json!(e.actor_type);
                                v["created_at"] = json!(e.created_at);
                                v["label"] = match &e.label {
                                    Some(l) => json!({"name": l, "color": "ededed"}),
                                    None => Value::Null,
                                };
                                v
                            })
                            .collect(),
                    )
                }
                ("GET", ["comments"]) => {
                    let tpl = template(fixture!("issue-comment-items"))[0].clone();
                    list(
                        issue
                            .comments
                            .iter()
                            .map(|(id, b)| {
                                let mut v = tpl.clone();
                                v["id"] = json!(id);
                                v["body"] = json!(b);
                                v
                            })
                            .collect(),
                    )
                }
                ("POST", ["comments"]) => {
                    let Some(text) = payload.get("body").and_then(Value::as_str) else {
                        return Err(gh_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid request: body is required",
                        ));
                    };
                    issue.comments.push((next_comment_id, text.to_string()));
                    let mut v = template(fixture!("issue-comment"));
                    v["id"] = json!(next_comment_id);
                    v["body"] = json!(text);
                    s.next_comment_id += 1;
                    Ok(Answer {
                        status: StatusCode::CREATED,
                        body: v,
                        paginate: false,
                    })
                }
                ("POST", ["labels"]) => {
                    let Some(labels) = payload.get("labels").and_then(Value::as_array) else {
                        return Err(gh_error(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "Invalid request: labels is required",
                        ));
                    };
                    for l in labels.iter().filter_map(Value::as_str) {
                        if !issue.labels.iter().any(|x| x == l) {
                            issue.labels.push(l.to_string());
                        }
                    }
                    label_list(&issue.labels)
                }
                ("DELETE", ["labels", label]) => {
                    let before = issue.labels.len();
                    issue.labels.retain(|l| l != label);
                    if issue.labels.len() == before {
                        return Err(gh_error(StatusCode::NOT_FOUND, "Label does not exist"));
                    }
                    label_list(&issue.labels)
                }
                ("GET", ["dependencies", "blocked_by"]) => {
                    let deps = issue.blocked_by.clone();
                    let items = deps
                        .iter()
                        .map(|(r, n)| {
                            let other = s
                                .repos
                                .get(&r.to_ascii_lowercase())
                                .and_then(|rr| rr.issues.get(n))
                                .cloned()
                                .unwrap_or(FakeIssue {
                                    state: "open".into(),
                                    ..Default::default()
                                });
                            issue_json(base, r, *n, &other)
                        })
                        .collect();
                    list(items)
                }
                _ => Err(not_found()),
            }
        }
        ("GET", ["collaborators", user, "permission"]) => {
            let Some(role) = repo.roles.get(*user).cloned() else {
                return Err(gh_error(StatusCode::NOT_FOUND, &format!("{user} is not a user")));
            };
            let legacy = match role.as_str() {
                "admin" => "admin",
                "maintain" | "write" => "write",
                "triage" | "read" => "read",
                _ => "none",
            };
            let mut v = template(fixture!(
                "repository-collaborator-permission-response-if-user-has-admin-permissions"
            ));
            v["permission"] = json!(legacy);
            v["role_name"] = json!(role);
            v["user"]["login"] = json!(user);
            ok(v)
        }
        ("GET", ["commits"]) => {
            let since = query_param(uri, "since").and_then(|t| t.parse::<jiff::Timestamp>().ok());
            let tpl = template(fixture!("commit-items"))[0].clone();
            list(
                repo.commits
                    .iter()
                    .filter(|c| since.is_none_or(|s| c.date.parse::<jiff::Timestamp>().is_ok_and(|d| d >= s)))
                    .map(|c| {
                        let mut v = tpl.clone();
                        v["sha"] = json!(c.sha);
                        v["commit"]["message"] = json!(c.message);
                        v["commit"]["author"]["date"] = json!(c.date);
                        v["commit"]["committer"]["date"] = json!(c.date);
                        v["html_url"] = json!(format!("https://github.com/{repo_name}/commit/{}", c.sha));
                        v
                    })
                    .collect(),
            )
        }
        ("GET", ["commits", sha, "check-runs"]) => {
            let tpl = template(fixture!("check-run-paginated"));
            let run_tpl = tpl["check_runs"][0].clone();
            let runs: Vec<Value> = repo
                .check_runs
                .get(*sha)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(name, status, conclusion)| {
                    let mut v = run_tpl.clone();
                    v["name"] = json!(name);
                    v["status"] = json!(status);
                    v["conclusion"] = json!(conclusion);
                    v["head_sha"] = json!(sha);
                    v["html_url"] = json!(format!("https://github.com/{repo_name}/runs/{name}"));
                    v
                })
                .collect();
            ok(json!({"total_count": runs.len(), "check_runs": runs}))
        }
        ("GET", ["commits", sha, "status"]) => {
            let mut v = template(fixture!("combined-commit-status"));
            let st_tpl = v["statuses"][0].clone();
            let statuses: Vec<Value> = repo
                .statuses
                .get(*sha)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|(context, state)| {
                    let mut x = st_tpl.clone();
                    x["context"] = json!(context);
                    x["state"] = json!(state);
                    x
                })
                .collect();
            v["total_count"] = json!(statuses.len());
            v["statuses"] = json!(statuses);
            v["sha"] = json!(sha);
            ok(v)
        }
        _ => Err(not_found()),
    }
}

fn label_list(labels: &[String]) -> Result<Answer, Response> {
    let tpl = template(fixture!("label-items"))[0].clone();
    ok(Value::Array(
        labels
            .iter()
            .map(|l| {
                let mut v = tpl.clone();
                v["name"] = json!(l);
                v
            })
            .collect(),
    ))
}
