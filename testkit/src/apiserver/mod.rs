//! A stateful fake Kubernetes API server — the nearest thing to envtest on machines with no
//! kube-apiserver. It serves the REST paths kube-rs and kubectl use for a fixed set of kinds
//! (our CRDs plus the core kinds the operator touches), in process as a tower `Service` behind
//! `kube::Client` or on a loopback port with a kubeconfig.
//!
//! Modelled faithfully: a global monotonic `resourceVersion`; list + watch (replay from a
//! version, `BOOKMARK`s, stream end after `timeoutSeconds`, `410 Gone` for a compacted version);
//! server-set `uid`, `creationTimestamp`, `generation` (bumped on spec changes, never on
//! `/status`); the status subresource both ways; `Status` error bodies (404, 409 AlreadyExists,
//! 409 Conflict on a stale `resourceVersion`, 422 Invalid, 415 for strategic merge on custom
//! resources); merge, JSON (RFC 6902 incl. `test`) and apply patches; finalizers and
//! `deletionTimestamp`; label and field selectors; defaulting, pruning, structural-schema and
//! CEL validation of custom resources from their CRD.
//!
//! Not modelled (documented in `docs/testkit.md`): server-side-apply field ownership and
//! conflicts (apply is merge + create-if-absent), list-map merge semantics, admission webhooks,
//! RBAC, API priority and fairness, `continue` tokens (lists are returned whole), watch events
//! for objects leaving a label selector, garbage collection of owned objects.

mod openapi;
pub mod protobuf;
mod selectors;
mod store;

use std::{
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

pub use store::{ApiFault, ApiFaultAction, RequestLog, ResourceType, Store, WatchEvent};

use crate::{Served, serve};

/// Shared server state.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) events: broadcast::Sender<Arc<WatchEvent>>,
    pub(crate) cut: watch::Sender<u64>,
}

/// The fake API server (cheap to clone; all clones share one state).
#[derive(Clone)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeApiServer")
    }
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApiServer {
    /// A server with the core kinds the operator touches and no CRDs.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        let (cut, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::new(store::core_types())),
                events,
                cut,
            }),
        }
    }

    /// Register a CustomResourceDefinition (JSON as `kubectl get crd -o json` would show it).
    /// Its schema drives defaulting, pruning and validation; its CEL rules are enforced.
    pub fn with_crd(self, crd: &Value) -> Self {
        self.with_store(|s| s.add_crd(crd));
        self
    }

    /// Register every CRD in a directory of YAML files.
    pub fn with_crd_dir(self, dir: &std::path::Path) -> std::io::Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        {
            let text = std::fs::read_to_string(&p)?;
            let crd: Value = serde_yaml::from_str(&text).map_err(|e| std::io::Error::other(e.to_string()))?;
            self.with_store(|s| s.add_crd(&crd));
        }
        Ok(self)
    }

    /// Run `f` on the store (seed, read, inject faults). Watch events it causes are published.
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut store = self.shared.store.lock().expect("store");
        let r = f(&mut store);
        // Publish under the lock so watchers see events in resourceVersion order.
        for e in store.take_pending() {
            let _ = self.shared.events.send(e);
        }
        r
    }

    /// End every open watch stream (as a dropped connection would).
    pub fn cut_watches(&self) {
        self.shared.cut.send_modify(|g| *g += 1);
    }

    /// The axum router.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.shared.clone())
    }

    /// A `kube::Client` talking to this server in process (no socket).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.router(), "default")
    }

    /// Serve on a loopback port; the returned handle writes a kubeconfig for it.
    pub async fn serve(&self) -> ServedApi {
        let served = serve(self.router()).await;
        ServedApi {
            served,
            kubeconfig: None,
        }
    }
}

/// A fake API server on a loopback port.
#[derive(Debug)]
pub struct ServedApi {
    /// The server.
    pub served: Served,
    kubeconfig: Option<tempfile::NamedTempFile>,
}

impl ServedApi {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.served.url()
    }

    /// A kubeconfig pointing at the server (written once, kept while this handle lives).
    pub fn kubeconfig(&mut self) -> PathBuf {
        if self.kubeconfig.is_none() {
            let file = tempfile::Builder::new()
                .prefix("fake-kubeconfig-")
                .suffix(".yaml")
                .tempfile()
                .expect("temp kubeconfig");
            std::fs::write(file.path(), kubeconfig_text(&self.url())).expect("write kubeconfig");
            self.kubeconfig = Some(file);
        }
        self.kubeconfig
            .as_ref()
            .map(|f| f.path().to_path_buf())
            .expect("kubeconfig")
    }
}

/// A kubeconfig for a plain-HTTP server with a dummy token.
pub fn kubeconfig_text(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n"
    )
}

/// A Kubernetes `Status` failure response.
pub(crate) fn status_error(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason, "code": code});
    if let Some(d) = details {
        body["details"] = d;
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if code == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, "1".parse().expect("header"));
    }
    resp
}

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let table = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    let text = String::from_utf8_lossy(&body).to_string();

    // Fault injection and the request log come first, as a proxy in front of the server would.
    let fault = {
        let mut s = shared.store.lock().expect("store");
        s.log.push(RequestLog {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: text.clone(),
            status: 0,
        });
        s.take_fault(&method, &path, &query)
    };
    if let Some(action) = fault {
        match action {
            ApiFaultAction::Status(code) => {
                let reason = match code {
                    409 => "Conflict",
                    429 => "TooManyRequests",
                    500 => "InternalError",
                    503 => "ServiceUnavailable",
                    504 => "Timeout",
                    _ => "InternalError",
                };
                return status_error(code, reason, "injected fault", None);
            }
            ApiFaultAction::Delay(d) => tokio::time::sleep(d).await,
        }
    }

    // kubectl's typed `create` commands send protobuf for built-in kinds (client-go has no
    // fallback to JSON): decode the kinds we model; answers are always JSON, which kubectl
    // accepts too.
    let (content_type, text) = if content_type.starts_with("application/vnd.kubernetes.protobuf") {
        if method == Method::PATCH {
            return status_error(415, "UnsupportedMediaType", "protobuf is not a patch type", None);
        }
        match protobuf::decode(&body) {
            Ok(v) => ("application/json".to_string(), v.to_string()),
            Err(e) => return status_error(415, "UnsupportedMediaType", &e, None),
        }
    } else {
        (content_type, text)
    };
    if method == Method::GET && (path == "/openapi/v3" || path.starts_with("/openapi/v3/")) {
        let s = shared.store.lock().expect("store");
        let doc = match path.strip_prefix("/openapi/v3/") {
            None => Some(openapi::index(s.types())),
            Some(gv) => openapi::document(s.types(), gv),
        };
        return match doc {
            Some(d) => json_response(StatusCode::OK, &d),
            None => status_error(
                404,
                "NotFound",
                "the server could not find the requested resource",
                None,
            ),
        };
    }
    let params = selectors::Query::parse(&query);
    if method == Method::GET && params.watch {
        return watch_stream(shared, &path, params).await;
    }
    {
        let mut s = shared.store.lock().expect("store");
        let resp = s.handle(&method, &path, &params, &content_type, &text, table);
        let code = resp.status().as_u16();
        if let Some(entry) = s.log.iter_mut().rev().find(|r| r.path == path && r.status == 0) {
            entry.status = code;
        }
        // Publish under the lock: two writers releasing the lock and then publishing could
        // deliver versions out of order, and a watcher skips anything at or below what it has.
        for e in s.take_pending() {
            let _ = shared.events.send(e);
        }
        resp
    }
}

/// A watch: replay (or the initial state as ADDED), then live events, bookmarks, and an end
/// after `timeoutSeconds` or when the watches are cut.
async fn watch_stream(shared: Arc<Shared>, path: &str, params: selectors::Query) -> Response {
    let mut live = shared.events.subscribe();
    let mut cut = shared.cut.subscribe();
    let prepared = {
        let s = shared.store.lock().expect("store");
        s.prepare_watch(path, &params)
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let timeout = Duration::from_secs(params.timeout_seconds.unwrap_or(1800).max(1));
    let send_initial_events = params.send_initial_events;
    tokio::spawn(async move {
        let line = |v: &Value| Bytes::from(format!("{v}\n"));
        for ev in &prepared.initial {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        if prepared.start_rv == u64::MAX {
            // 410 Gone: the ERROR event was the whole answer.
            return;
        }
        if send_initial_events {
            // A watch-list (`sendInitialEvents=true`, what current kubectl and client-go
            // informers use): the initial state ends with this bookmark.
            let b = json!({"type": "BOOKMARK", "object": {"kind": prepared.kind, "apiVersion": prepared.api_version,
                           "metadata": {"resourceVersion": prepared.start_rv.to_string(),
                                        "annotations": {"k8s.io/initial-events-end": "true"}}}});
            if tx.send(line(&b)).await.is_err() {
                return;
            }
        }
        let mut last_rv = prepared.start_rv;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut bookmark_tick = tokio::time::interval(Duration::from_millis(prepared.bookmark_every_ms));
        bookmark_tick.tick().await;
        loop {
            tokio::select! {
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last_rv || !prepared.filter.matches(&ev) {
                            continue;
                        }
                        last_rv = ev.rv;
                        let out = json!({"type": ev.kind, "object": ev.object});
                        if tx.send(line(&out)).await.is_err() { return; }
                    }
                    // A subscriber that fell behind is cut off; the client re-watches from its version.
                    Err(_) => return,
                },
                _ = bookmark_tick.tick(), if prepared.bookmarks => {
                    // A bookmark promises every event up to its version was delivered. Events are
                    // published under the store lock, so everything up to the current version is
                    // already queued on our receiver: drain it first, then bookmark.
                    let (rv, queued) = {
                        let _store = shared.store.lock().expect("store");
                        let rv = _store.rv();
                        let mut queued = vec![];
                        loop {
                            match live.try_recv() {
                                Ok(ev) => queued.push(ev),
                                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                                // Fell behind: end the stream, the client re-watches.
                                Err(_) => return,
                            }
                        }
                        (rv, queued)
                    };
                    for ev in queued {
                        if ev.rv <= last_rv || !prepared.filter.matches(&ev) {
                            continue;
                        }
                        last_rv = ev.rv;
                        let out = json!({"type": ev.kind, "object": ev.object});
                        if tx.send(line(&out)).await.is_err() { return; }
                    }
                    last_rv = last_rv.max(rv);
                    let b = json!({"type": "BOOKMARK", "object": {"kind": prepared.kind, "apiVersion": prepared.api_version,
                                   "metadata": {"resourceVersion": rv.to_string()}}});
                    if tx.send(line(&b)).await.is_err() { return; }
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = cut.changed() => return,
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .expect("watch response")
}
