//! Benchmark of what a forged GitHub delivery costs the sidecar (not a test; nothing is
//! asserted). Run with `cargo bench --bench webhook` (optionally `-- --deliveries 200 --mib 4`).
//!
//! The sidecar's router runs in process on a single-threaded runtime, with the webhook secrets
//! loaded from the fake API server, and is handed deliveries whose body is already in memory —
//! so the figures are the server's own work (signature check, bounded body collection, response)
//! without a client or a socket in the same thread. CPU time is the thread's user + system time
//! from `/proc/thread-self/stat`, over all deliveries; API requests are counted in the fake API
//! server's log (the cache's own long-running watch excluded).

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Instant,
};

use afk_operator::{
    args::SidecarArgs,
    crd,
    metrics::Metrics,
    sidecar::{Cluster, SidecarState, router},
};
use afk_testkit::apiserver::FakeApiServer;
use axum::{body::Body, http::Request};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tower::ServiceExt;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This thread's CPU time (user + system) in seconds, at clock-tick resolution.
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) … utime(11) stime(12), in clock ticks (100 per second on Linux).
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn b64(v: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in v.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            out.push(if i <= chunk.len() {
                T[(n >> shift) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

/// A sidecar whose cluster has `configs` AfkConfigs, each with its own webhook secret.
async fn sidecar(configs: usize) -> (FakeApiServer, SidecarState) {
    let mut api = FakeApiServer::new();
    for c in crd::all() {
        api = api.with_crd(&serde_json::to_value(c).unwrap());
    }
    api.with_store(|s| {
        for i in 0..configs {
            s.seed(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("gh{i}"), "namespace": "afk"},
                "data": {"webhook": b64(format!("secret-{i}").as_bytes())}}));
            s.seed(json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": format!("team{i}"), "namespace": "afk"},
                "spec": {"suspend": false, "allowlist": [{"repo": "o/r"}],
                         "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "token"}, "webhookSecretRef": {"name": format!("gh{i}"), "key": "webhook"}}},
                         "executor": {"t3": {"url": "http://t3", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}}}}));
        }
    });
    let args = SidecarArgs::from_argv(["--listen", "127.0.0.1:0"]).unwrap();
    let (trigger, _) = tokio::sync::broadcast::channel(8);
    let state = SidecarState::new(
        &args,
        &afk_operator::agents::Agents::default(),
        Arc::new(AtomicBool::new(true)),
        Metrics::new(),
        Some(Cluster {
            client: api.client(),
            namespace: Some("afk".into()),
            trigger,
        }),
    );
    state.webhook.as_ref().unwrap().wait_loaded().await;
    (api, state)
}

fn api_calls(api: &FakeApiServer) -> usize {
    api.with_store(|s| s.log.iter().filter(|r| !r.query.contains("watch=true")).count())
}

async fn measure(label: &str, configs: usize, deliveries: u64, body: &axum::body::Bytes) {
    let (api, state) = sidecar(configs).await;
    let app = router(state);
    let forged = sign(b"not-the-secret", body);
    let before_calls = api_calls(&api);
    // Warm up (allocator, first-touch of the router).
    for _ in 0..5 {
        let req = Request::post("/webhooks/github")
            .header("x-github-event", "issues")
            .header("x-hub-signature-256", &forged)
            .body(Body::from(body.clone()))
            .unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 401);
    }
    let mut walls = Vec::with_capacity(deliveries as usize);
    let cpu0 = thread_cpu_secs();
    let t0 = Instant::now();
    for _ in 0..deliveries {
        let req = Request::post("/webhooks/github")
            .header("x-github-event", "issues")
            .header("x-hub-signature-256", &forged)
            .body(Body::from(body.clone()))
            .unwrap();
        let start = Instant::now();
        let resp = app.clone().oneshot(req).await.unwrap();
        let _ = axum::body::to_bytes(resp.into_body(), 1 << 16).await;
        walls.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let total_wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs() - cpu0;
    walls.sort_by(f64::total_cmp);
    let pct = |p: f64| walls[((walls.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label}: {deliveries} forged {:.1} MiB deliveries: CPU {:.2} ms each (wall {:.2} ms each; p50 {:.2} ms, p95 {:.2} ms); API requests: {}",
        body.len() as f64 / (1024.0 * 1024.0),
        cpu * 1000.0 / deliveries as f64,
        total_wall * 1000.0 / deliveries as f64,
        pct(0.5),
        pct(0.95),
        api_calls(&api) - before_calls,
    );
}

fn main() {
    let deliveries = arg("--deliveries", 200);
    let mib = arg("--mib", 4);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut body =
            serde_json::to_vec(&json!({"action": "opened", "repository": {"full_name": "o/r"}})).unwrap();
        body.resize((mib * 1024 * 1024) as usize, b' ');
        let body = axum::body::Bytes::from(body);
        measure("1 config, 1 secret", 1, deliveries, &body).await;
        measure("3 configs, 3 distinct secrets", 3, deliveries, &body).await;
        // A malformed signature is refused from the headers alone.
        let (api, state) = sidecar(1).await;
        let app = router(state);
        let before = api_calls(&api);
        let cpu0 = thread_cpu_secs();
        for _ in 0..deliveries {
            let req = Request::post("/webhooks/github")
                .header("x-github-event", "issues")
                .header("x-hub-signature-256", "sha256=forged")
                .body(Body::from(body.clone()))
                .unwrap();
            let _ = app.clone().oneshot(req).await.unwrap();
        }
        println!(
            "malformed signature: CPU {:.3} ms each; API requests: {}",
            (thread_cpu_secs() - cpu0) * 1000.0 / deliveries as f64,
            api_calls(&api) - before
        );
    });
}
