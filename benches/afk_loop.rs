//! Benchmark of the AFK loop (not a test; nothing is asserted). Run with
//! `cargo bench --bench afk_loop` (optionally `-- --repos 200 --runs 1000 --requeue-secs 15`),
//! and with `-- --process` to run the operator as its own process (the real release binary
//! against the fake API server served on loopback), so its RSS and CPU are its own.
//!
//! It drives the real controllers against the fake API server and the loopback contract fakes
//! and prints: dispatch throughput and latency (AfkRun created → `Working`), the steady-state
//! reconcile rate and duration while every run waits on its agent, the GitHub requests an idle
//! poll costs (and how many counted against the rate limit), and peak RSS (of the operator
//! process alone with `--process`, with its CPU time).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use afk_operator::{
    controller::{self, Context},
    crd,
    metrics::Metrics,
};
use afk_testkit::{apiserver::FakeApiServer, github::FakeGitHub, t3::FakeT3};
use kube::{Api, api::PostParams};
use serde_json::json;
use support::{NS, agents, fast_settings};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`, clock ticks of 1/100 s).
fn proc_cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let repos = arg("--repos", 200);
    let runs_n = arg("--runs", 1000);
    let requeue = arg("--requeue-secs", 15);
    let as_process = std::env::args().any(|a| a == "--process");
    println!("afk_loop bench: {repos} repos, {runs_n} runs, runs looked at every {requeue}s while waiting");
    if let Ok(filter) = std::env::var("AFK_LOG") {
        afk_operator::telemetry::init(&afk_operator::args::LogArgs {
            log_filter: filter,
            log_format: afk_operator::args::LogFormat::Plain,
        });
    }

    let mut api = FakeApiServer::new();
    for c in crd::all() {
        api = api.with_crd(&serde_json::to_value(c).unwrap());
    }
    let t3 = FakeT3::start(support::T3_TOKEN).await;
    let gh = FakeGitHub::start(support::GH_TOKEN).await;
    let repo = |i: usize| format!("bench/repo{i:03}");
    let allowlist: Vec<_> = (0..repos)
        .map(|i| json!({"repo": repo(i), "defaultBranch": "main"}))
        .collect();
    for i in 0..repos {
        gh.add_repo(&repo(i), "main");
        t3.add_dir(&format!("/data/bench__repo{i:03}"));
        gh.repo(&repo(i), |r| {
            for n in 1..=(runs_n / repos + 1) as u64 {
                r.issues.insert(
                    n,
                    afk_testkit::github::FakeIssue {
                        title: format!("issue {n}"),
                        state: "open".into(),
                        ..Default::default()
                    },
                );
            }
        });
    }
    api.with_store(|s| {
        for (name, value) in [("gh", support::GH_TOKEN), ("t3", support::T3_TOKEN)] {
            s.seed(
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                          "stringData": {}, "data": {"token": b64(value)}}),
            );
        }
    });
    let config = json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": "team", "namespace": NS},
        "spec": {"suspend": false, "allowlist": allowlist,
                 "tracker": {"github": {"apiUrl": gh.url(), "tokenSecretRef": {"name": "gh", "key": "token"}}},
                 "executor": {"t3": {"url": t3.url(), "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}},
                 "pollInterval": "10s"}});
    let client = api.client();
    Api::<crd::AfkConfig>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &serde_json::from_value(config).unwrap())
        .await
        .unwrap();

    // The operator: in this process, or the real binary as its own process.
    let metrics = Metrics::new();
    let mut _served = None;
    let mut _trigger = None;
    let mut child = None;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    if as_process {
        let mut served = api.serve().await;
        let kubeconfig = served.kubeconfig();
        child = Some(
            std::process::Command::new(env!("CARGO_BIN_EXE_afk-operator"))
                .args([
                    "run",
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "--namespace",
                    NS,
                    "--run-requeue-secs",
                    &requeue.to_string(),
                    "--github-mutation-interval-ms",
                    "0",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                ])
                .env(
                    "AFK_LOG",
                    std::env::var("AFK_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        _served = Some(served);
    } else {
        let mut settings = fast_settings();
        settings.run_requeue = Duration::from_secs(requeue as u64);
        let ctx = Arc::new(Context::new(client.clone(), agents(), metrics.clone(), settings));
        let (trigger, _) = tokio::sync::broadcast::channel(16);
        let ready = Arc::new(AtomicBool::new(false));
        let t = trigger.subscribe();
        _trigger = Some(trigger);
        tokio::spawn(controller::run(
            ctx,
            Some(NS.into()),
            ready,
            t,
            std::future::pending(),
        ));
    }
    let http = reqwest::Client::new();
    let metrics_text = || {
        let (http, metrics) = (http.clone(), metrics.clone());
        async move {
            if as_process {
                match http.get(format!("http://127.0.0.1:{port}/metrics")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => String::new(),
                }
            } else {
                metrics.render()
            }
        }
    };
    let configs: Api<crd::AfkConfig> = Api::namespaced(client.clone(), NS);
    let poke = |n: usize| {
        let configs = configs.clone();
        async move {
            // An annotation change asks for a poll (the controller's predicate passes it).
            configs
                .patch(
                    "team",
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(
                        json!({"metadata": {"annotations": {"bench/poke": n.to_string()}}}),
                    ),
                )
                .await
                .unwrap();
        }
    };

    // Idle poll cost: one warm-up poll fills the ETag cache, the second costs only 304s.
    tokio::time::sleep(Duration::from_secs(if as_process { 4 } else { 2 })).await;
    poke(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before_total, before_counted) = (gh.with(|s| s.requests.len()), gh.counted_requests());
    poke(2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_total = gh.with(|s| s.requests.len()) - before_total;
    let idle_counted = gh.counted_requests() - before_counted;
    let cpu_before_dispatch = child.as_ref().map_or(0.0, |c| proc_cpu_secs(c.id()));

    // Dispatch: create the runs and time each until it is Working.
    let runs_api: Api<crd::AfkRun> = Api::namespaced(client.clone(), NS);
    let mut created: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    for k in 0..runs_n {
        let (r, n) = (repo(k % repos), (k / repos + 1) as u64);
        let name = format!("bench-{k:05}");
        let run = json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "metadata": {"name": name, "namespace": NS},
            "spec": {"configRef": "team", "repo": r, "issue": n, "attempt": 1, "title": "t",
                     "taskSnapshot": {"title": "t", "body": "b", "sha256": "a".repeat(64)}}});
        runs_api
            .create(&PostParams::default(), &serde_json::from_value(run).unwrap())
            .await
            .unwrap();
        created.insert(name, Instant::now());
    }
    let mut latencies = vec![];
    let deadline = Instant::now() + Duration::from_secs(600);
    while !created.is_empty() && Instant::now() < deadline {
        let working: Vec<String> = api.with_store(|s| {
            s.list("afk.dev/v1alpha1", "AfkRun", NS)
                .into_iter()
                .filter(|r| r["status"]["phase"] == "Working")
                .filter_map(|r| r["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        });
        for name in working {
            if let Some(at) = created.remove(&name) {
                latencies.push(at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if std::env::var_os("BENCH_DEBUG").is_some() && start.elapsed().as_millis() % 2000 < 10 {
            let sample = api
                .with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS))
                .into_iter()
                .find(|r| created.contains_key(r["metadata"]["name"].as_str().unwrap_or_default()))
                .map(|r| {
                    (
                        r["metadata"]["name"].clone(),
                        r["status"]["phase"].clone(),
                        r["status"]["reason"].clone(),
                        r["status"]["message"].clone(),
                    )
                });
            eprintln!("waiting: {} left; sample status {:?}", created.len(), sample);
            let stuck: Vec<String> = created.keys().cloned().collect();
            let log: Vec<String> = api.with_store(|s| {
                s.log
                    .iter()
                    .filter(|r| stuck.iter().any(|n| r.path.contains(n.as_str())))
                    .map(|r| format!("{} {} {} -> {}", r.method, r.path, r.query, r.status))
                    .collect()
            });
            eprintln!("requests for stuck runs: {log:#?}");
            let objs: Vec<String> = api
                .with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS))
                .into_iter()
                .filter(|r| stuck.iter().any(|n| r["metadata"]["name"] == n.as_str()))
                .map(|r| {
                    format!(
                        "{} rv={} fin={}",
                        r["metadata"]["name"], r["metadata"]["resourceVersion"], r["metadata"]["finalizers"]
                    )
                })
                .collect();
            eprintln!("stuck objects: {objs:?}");
        }
    }
    let dispatch_elapsed = start.elapsed();
    latencies.sort();

    // Steady state: every run waits on its agent; count reconciles over a window.
    let cpu_after_dispatch = child.as_ref().map_or(0.0, |c| proc_cpu_secs(c.id()));
    let before = metrics_text().await;
    let window = Duration::from_secs(2 * requeue.max(5) as u64);
    tokio::time::sleep(window).await;
    let after = metrics_text().await;
    let cpu_after_window = child.as_ref().map_or(0.0, |c| proc_cpu_secs(c.id()));
    let count = |t: &str| metric(t, "afk_reconcile_duration_seconds_count{controller=\"afkrun\"}");
    let sum = |t: &str| metric(t, "afk_reconcile_duration_seconds_sum{controller=\"afkrun\"}");
    let reconciles = count(&after) - count(&before);
    let mean_ms = if reconciles > 0.0 {
        (sum(&after) - sum(&before)) / reconciles * 1000.0
    } else {
        0.0
    };

    println!(
        "dispatch: {} runs Working in {:.2?} ({:.0} runs/s); not dispatched: {}",
        latencies.len(),
        dispatch_elapsed,
        latencies.len() as f64 / dispatch_elapsed.as_secs_f64(),
        created.len()
    );
    println!(
        "dispatch latency (created → Working): p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "steady state: {:.0} AfkRun reconciles/s, mean reconcile {:.2} ms",
        reconciles / window.as_secs_f64(),
        mean_ms
    );
    println!(
        "idle poll of {repos} repos: {idle_total} GitHub requests, {idle_counted} counted against the rate limit"
    );
    println!("T3 dispatch commands applied: {}", t3.with(|s| s.applied.len()));
    match &mut child {
        Some(c) => {
            let pid = c.id();
            println!(
                "operator process alone: RSS {:.1} MiB now, peak {:.1} MiB; CPU {:.2} s for the dispatch burst, {:.1} % of one core in steady state",
                proc_status_kib(pid, "VmRSS:") as f64 / 1024.0,
                proc_status_kib(pid, "VmHWM:") as f64 / 1024.0,
                cpu_after_dispatch - cpu_before_dispatch,
                (cpu_after_window - cpu_after_dispatch) / window.as_secs_f64() * 100.0
            );
            let _ = c.kill();
            let _ = c.wait();
        }
        None => println!(
            "peak RSS: {:.1} MiB (bench process: operator + fake API server + fakes)",
            peak_rss_kib() as f64 / 1024.0
        ),
    }
}

fn b64(value: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in value.as_bytes().chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(T[(n >> shift) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
