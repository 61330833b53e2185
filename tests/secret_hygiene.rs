//! Secrets never reach logs or error messages. This binary holds one test so it can install a
//! global TRACE subscriber (tracing caches callsite interest process-wide, which makes scoped
//! subscribers unreliable when other tests run first) and capture everything every adapter logs
//! while it succeeds and fails with real tokens in play.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use afk_operator::adapters::{
    Secret, StaticSecret,
    github::{GitHubClient, GitHubOptions, Tracker},
    notify::{Notifier, NtfyNotifier, Outgoing, SlackNotifier},
    retry::RetryPolicy,
    t3::{Executor, T3Client},
};
use afk_testkit::{github::FakeGitHub, notify::FakeNotify, t3::FakeT3};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const GH: &str = "ghp_TESTTOKEN1234567890";
const T3: &str = "t3-secret-token-xyz";
const NTFY: &str = "tk_ntfysecret";

fn s(v: &str) -> Arc<StaticSecret> {
    Arc::new(StaticSecret(Secret::new(v)))
}

#[tokio::test]
async fn secrets_never_reach_logs_or_errors() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let mut errors = String::new();
    let gh = FakeGitHub::start(GH).await;
    gh.add_repo("acme/app", "main");
    gh.add_labeled_issue(
        "acme/app",
        1,
        "t",
        "b",
        "ready-for-agent",
        "alice",
        "2026-11-21T10:00:00Z",
    );
    let opts = GitHubOptions {
        min_mutation_interval: Duration::ZERO,
        ..GitHubOptions::default()
    };
    let good = GitHubClient::new(&gh.url(), s(GH), opts);
    good.list_labeled_issues("acme/app", "ready-for-agent")
        .await
        .unwrap();
    good.add_labels("acme/app", 1, &["x".into()]).await.unwrap();
    let bad = GitHubClient::new(&gh.url(), s("ghp_WRONGTOKEN"), opts);
    let e = bad.default_branch("acme/app").await.unwrap_err();
    errors.push_str(&format!("{e} {e:?}\n"));

    let t3 = FakeT3::start(T3).await;
    T3Client::new(&t3.url(), s(T3)).shell().await.unwrap();
    let e = T3Client::new(&t3.url(), s("t3-wrong-token"))
        .shell()
        .await
        .unwrap_err();
    errors.push_str(&format!("{e} {e:?}\n"));

    let notify = FakeNotify::start(Some(NTFY)).await;
    let retry = RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    let msg = Outgoing {
        title: "t".into(),
        body: "b".into(),
        ntfy_priority: 3,
        tags: vec![],
        click: None,
        slack: serde_json::json!({"text": "t"}),
    };
    notify.with(|st| st.fail_next = vec![500, 500]);
    let e = SlackNotifier::new(s(&notify.slack_url()), retry)
        .deliver(&msg)
        .await
        .unwrap_err();
    errors.push_str(&format!("{e} {e:?}\n"));
    let e = NtfyNotifier::new(&notify.ntfy_url(), "topic", Some(s("tk_wrong")), retry)
        .deliver(&msg)
        .await
        .unwrap_err();
    errors.push_str(&format!("{e} {e:?}\n"));
    errors.push_str(&format!("{:?}", Secret::new(GH)));

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("github request") && logs.contains("t3"),
        "adapter logs were captured:\n{logs}"
    );
    for secret in [
        GH,
        "ghp_WRONGTOKEN",
        T3,
        "t3-wrong-token",
        NTFY,
        "tk_wrong",
        "secretpart",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into logs");
        assert!(!errors.contains(secret), "{secret} leaked into errors:\n{errors}");
    }
}
