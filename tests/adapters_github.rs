//! The GitHub client over real HTTP against the contract fake (official example bodies):
//! pagination, pull-request exclusion, ETag/304 polls that cost no rate limit, rate-limit and
//! secondary-limit handling, every call the loop makes, token rotation and secret hygiene.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use afk_operator::{
    adapters::{
        FileSecret, Secret, SecretSource, StaticSecret,
        github::{GitHubClient, GitHubOptions, Tracker},
    },
    crd::Permission,
};
use afk_testkit::github::{FakeCommit, FakeGitHub, GhFault};

const TOKEN: &str = "ghp_TESTTOKEN1234567890";

fn fast() -> GitHubOptions {
    GitHubOptions {
        min_mutation_interval: Duration::ZERO,
        ..GitHubOptions::default()
    }
}

fn client(fake: &FakeGitHub, options: GitHubOptions) -> GitHubClient {
    GitHubClient::new(&fake.url(), Arc::new(StaticSecret(Secret::new(TOKEN))), options)
}

async fn fake_with_issues(n: u64) -> FakeGitHub {
    let fake = FakeGitHub::start(TOKEN).await;
    fake.add_repo("acme/app", "main");
    for i in 1..=n {
        fake.add_labeled_issue(
            "acme/app",
            i,
            &format!("Issue {i}"),
            "body",
            "ready-for-agent",
            "alice",
            "2026-11-21T10:00:00Z",
        );
    }
    fake
}

#[tokio::test]
async fn listing_paginates_excludes_prs_and_is_free_when_unchanged() {
    let fake = fake_with_issues(150).await;
    fake.repo("acme/app", |r| {
        r.issues.get_mut(&7).unwrap().pull_request = true;
        r.issues.get_mut(&8).unwrap().labels = vec!["bug".into()];
    });
    let c = client(&fake, fast());
    let first = c
        .list_labeled_issues("acme/app", "ready-for-agent")
        .await
        .unwrap();
    assert_eq!(first.items.len(), 148, "150 minus a PR minus an unlabelled issue");
    assert!(!first.not_modified);
    assert!(first.items.iter().all(|i| i.number != 7 && i.number != 8));
    assert_eq!(
        first.items.iter().find(|i| i.number == 3).unwrap().labels,
        vec!["ready-for-agent"]
    );
    let pages = fake.with(|s| s.requests.iter().filter(|r| r.path.contains("/issues?")).count());
    assert_eq!(pages, 2, "two pages of 100");

    let counted = fake.counted_requests();
    let second = c
        .list_labeled_issues("acme/app", "ready-for-agent")
        .await
        .unwrap();
    assert!(second.not_modified);
    assert_eq!(second.items, first.items);
    assert_eq!(fake.counted_requests(), counted, "304s cost no rate limit");
    let conditional = fake.with(|s| {
        s.requests
            .iter()
            .rev()
            .take(2)
            .all(|r| r.header("if-none-match").is_some())
    });
    assert!(conditional);

    fake.repo("acme/app", |r| {
        r.issues.get_mut(&1).unwrap().title = "Changed".into()
    });
    let third = c
        .list_labeled_issues("acme/app", "ready-for-agent")
        .await
        .unwrap();
    assert!(!third.not_modified);
    assert!(third.items.iter().any(|i| i.title == "Changed"));
    let (sent, not_modified) = c.request_counts();
    assert_eq!(
        (sent, not_modified),
        (6, 3),
        "issue 1 is on page 2: page 1 was still a 304"
    );
}

#[tokio::test]
async fn gate_facts_labels_events_permissions_and_blockers() {
    let fake = fake_with_issues(3).await;
    fake.add_repo("acme/lib", "main");
    fake.add_labeled_issue("acme/lib", 9, "dep", "", "x", "bob", "2026-01-01T00:00:00Z");
    fake.repo("acme/lib", |r| {
        r.issues.get_mut(&9).unwrap().state = "closed".into()
    });
    fake.repo("acme/app", |r| {
        r.roles.insert("alice".into(), "maintain".into());
        r.roles.insert("tri".into(), "triage".into());
        r.issues.get_mut(&1).unwrap().blocked_by = vec![("acme/lib".into(), 9), ("acme/app".into(), 2)];
    });
    let c = client(&fake, fast());
    let events = c.label_events("acme/app", 1).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].label.as_str(),
            events[0].actor_login.as_str(),
            events[0].actor_type.as_str()
        ),
        ("ready-for-agent", "alice", "User")
    );
    assert_eq!(events[0].created_at.to_string(), "2026-11-21T10:00:00Z");
    assert_eq!(
        c.permission("acme/app", "alice").await.unwrap(),
        Permission::Maintain,
        "role_name, not the folded legacy field"
    );
    assert_eq!(c.permission("acme/app", "tri").await.unwrap(), Permission::Triage);
    assert_eq!(
        c.permission("acme/app", "stranger").await.unwrap(),
        Permission::None
    );
    let deps = c.blocked_by("acme/app", 1).await.unwrap();
    let deps: Vec<(String, u64, String)> = deps.into_iter().map(|d| (d.repo, d.number, d.state)).collect();
    assert_eq!(
        deps,
        vec![
            ("acme/lib".into(), 9, "closed".into()),
            ("acme/app".into(), 2, "open".into())
        ]
    );
    assert_eq!(c.issue_state("acme/lib", 9).await.unwrap(), "closed");
    assert_eq!(c.default_branch("acme/app").await.unwrap(), "main");
    let missing = c.issue_state("acme/app", 999).await.unwrap_err();
    assert_eq!((missing.kind, missing.is_transient()), ("not_found", false));
}

#[tokio::test]
async fn mutations_labels_comments_close() {
    let fake = fake_with_issues(1).await;
    let c = client(&fake, fast());
    c.add_labels("acme/app", 1, &["agent-in-progress".into()])
        .await
        .unwrap();
    c.remove_label("acme/app", 1, "ready-for-agent").await.unwrap();
    c.remove_label("acme/app", 1, "ready-for-agent").await.unwrap(); // absent: still fine
    c.add_labels("acme/app", 1, &["needs triage".into()])
        .await
        .unwrap();
    c.remove_label("acme/app", 1, "needs triage").await.unwrap(); // encoded space
    assert_eq!(
        fake.repo("acme/app", |r| r.issues[&1].labels.clone()),
        vec!["agent-in-progress"]
    );

    let marker = "<!-- afk-run:uid-1 -->";
    assert_eq!(c.find_comment("acme/app", 1, marker).await.unwrap(), None);
    let id = c
        .create_comment("acme/app", 1, &format!("{marker}\nhello"))
        .await
        .unwrap();
    assert_eq!(c.find_comment("acme/app", 1, marker).await.unwrap(), Some(id));
    c.update_comment("acme/app", id, &format!("{marker}\nupdated"))
        .await
        .unwrap();
    assert_eq!(
        fake.repo("acme/app", |r| r.issues[&1].comments.clone()),
        vec![(id, format!("{marker}\nupdated"))]
    );

    c.close_issue("acme/app", 1).await.unwrap();
    assert_eq!(
        fake.repo("acme/app", |r| (r.issues[&1].state.clone(), r.issues[&1].closes)),
        ("closed".into(), 1)
    );
    let close = fake.with(|s| {
        s.requests
            .iter()
            .find(|r| r.method == "PATCH" && r.path == "/repos/acme/app/issues/1")
            .unwrap()
            .json()
    });
    assert_eq!(
        close,
        serde_json::json!({"state": "closed", "state_reason": "completed"})
    );
}

#[tokio::test]
async fn commits_and_ci_facts() {
    let fake = fake_with_issues(0).await;
    fake.repo("acme/app", |r| {
        r.commits = vec![
            FakeCommit {
                sha: "b".repeat(40),
                message: "Fix\n\nCloses #1\nAFK-Run: acme-app-1-1".into(),
                date: "2026-11-21T12:00:00Z".into(),
            },
            FakeCommit {
                sha: "a".repeat(40),
                message: "old".into(),
                date: "2026-11-20T12:00:00Z".into(),
            },
        ];
        r.check_runs.insert(
            "b".repeat(40),
            vec![
                ("test".into(), "completed".into(), Some("success".into())),
                ("lint".into(), "in_progress".into(), None),
            ],
        );
        r.statuses
            .insert("b".repeat(40), vec![("deploy/preview".into(), "pending".into())]);
    });
    let c = client(&fake, fast());
    let commits = c
        .commits_since("acme/app", "main", "2026-11-21T00:00:00Z".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(commits.len(), 1);
    assert!(commits[0].message.contains("AFK-Run: acme-app-1-1"));
    assert_eq!(
        commits[0].html_url.as_deref(),
        Some(format!("https://github.com/acme/app/commit/{}", "b".repeat(40)).as_str())
    );
    let runs = c.check_runs("acme/app", &"b".repeat(40)).await.unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| (r.name.as_str(), r.status.as_str(), r.conclusion.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            ("test", "completed", Some("success")),
            ("lint", "in_progress", None)
        ]
    );
    let statuses = c.commit_statuses("acme/app", &"b".repeat(40)).await.unwrap();
    assert_eq!(
        (statuses[0].context.as_str(), statuses[0].state.as_str()),
        ("deploy/preview", "pending")
    );
}

#[tokio::test]
async fn rate_limits_are_tracked_and_respected() {
    let fake = fake_with_issues(1).await;
    let c = client(&fake, fast());
    c.default_branch("acme/app").await.unwrap();
    let rl = c.rate_limit().unwrap();
    assert_eq!(rl.remaining, 4999);
    fake.with(|s| s.rate_remaining = 1);
    c.issue_state("acme/app", 1).await.unwrap();
    assert_eq!(c.rate_limit().unwrap().remaining, 0);
    let before = fake.with(|s| s.requests.len());
    let err = c.label_events("acme/app", 1).await.unwrap_err();
    assert_eq!((err.kind, err.is_transient()), ("rate_limited", true));
    assert!(err.retry_after.unwrap() > Duration::from_secs(60));
    assert_eq!(
        fake.with(|s| s.requests.len()),
        before,
        "no request is sent while the budget is spent"
    );

    // The server's own 403 when our view was stale.
    let fresh = client(&fake, fast());
    let err = fresh.issue_state("acme/app", 1).await.unwrap_err();
    assert_eq!((err.kind, err.status), ("rate_limited", Some(403)));
}

#[tokio::test]
async fn secondary_limits_and_server_errors_are_transient() {
    let fake = fake_with_issues(1).await;
    let c = client(&fake, fast());
    fake.with(|s| {
        s.faults.push(GhFault {
            path_prefix: "/repos/acme/app/issues/1/comments".into(),
            status: 403,
            headers: vec![("retry-after", "7".into())],
            body: r#"{"message":"You have exceeded a secondary rate limit"}"#.into(),
            remaining: 1,
        });
        s.faults.push(GhFault {
            path_prefix: "/repos/acme/app/issues/1/labels".into(),
            status: 502,
            headers: vec![],
            body: String::new(),
            remaining: 1,
        });
    });
    let err = c.create_comment("acme/app", 1, "x").await.unwrap_err();
    assert_eq!(
        (err.kind, err.retry_after),
        ("secondary_rate_limit", Some(Duration::from_secs(7)))
    );
    // A fresh client (the one above now holds back for 7 s, see the next test).
    let c = client(&fake, fast());
    let err = c.add_labels("acme/app", 1, &["x".into()]).await.unwrap_err();
    assert!(err.is_transient());
    c.add_labels("acme/app", 1, &["x".into()]).await.unwrap();
}

/// SPEC §3.2: a `retry-after` on one request gates every later request of the client until it
/// passes — nothing goes out during the back-off window, whichever endpoint is asked.
#[tokio::test]
async fn a_retry_after_holds_back_every_later_request() {
    let fake = fake_with_issues(1).await;
    let c = client(&fake, fast());
    fake.with(|s| {
        s.faults.push(GhFault {
            path_prefix: "/repos/acme/app/issues/1/events".into(),
            status: 403,
            headers: vec![("retry-after", "2".into())],
            body: r#"{"message":"You have exceeded a secondary rate limit"}"#.into(),
            remaining: 1,
        });
    });
    let err = c.label_events("acme/app", 1).await.unwrap_err();
    assert_eq!(err.kind, "secondary_rate_limit");
    let sent = fake.with(|s| s.requests.len());
    for _ in 0..3 {
        let err = c
            .list_labeled_issues("acme/app", "ready-for-agent")
            .await
            .unwrap_err();
        assert!(err.is_transient() && err.retry_after.is_some(), "{err}");
        let err = c.add_labels("acme/app", 1, &["x".into()]).await.unwrap_err();
        assert_eq!(err.kind, "rate_limited");
    }
    assert_eq!(
        fake.with(|s| s.requests.len()),
        sent,
        "no request reached GitHub during the window"
    );
    // Once the window has passed, requests flow again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.list_labeled_issues("acme/app", "ready-for-agent").await {
            Ok(listing) => {
                assert_eq!(listing.items.len(), 1);
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "still held back: {e}");
                tokio::time::sleep(e.retry_after.unwrap_or(Duration::from_millis(100))).await;
            }
        }
    }
}

#[tokio::test]
async fn mutations_are_spaced() {
    let fake = fake_with_issues(1).await;
    let c = client(
        &fake,
        GitHubOptions {
            min_mutation_interval: Duration::from_millis(150),
            ..fast()
        },
    );
    let start = Instant::now();
    for l in ["a", "b", "c"] {
        c.add_labels("acme/app", 1, &[l.into()]).await.unwrap();
    }
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "three mutations need two full gaps"
    );
}

#[tokio::test]
async fn tokens_rotate_and_bad_ones_are_permanent() {
    let fake = fake_with_issues(1).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "old-token").unwrap();
    let source: Arc<dyn SecretSource> = Arc::new(FileSecret::new(&path));
    let c = GitHubClient::new(&fake.url(), source, fast());
    let err = c.default_branch("acme/app").await.unwrap_err();
    assert_eq!(
        (err.kind, err.status, err.is_transient()),
        ("auth", Some(401), false)
    );
    std::fs::write(&path, TOKEN).unwrap();
    c.default_branch("acme/app").await.unwrap();
    let ua = fake.with(|s| {
        s.requests
            .last()
            .unwrap()
            .header("user-agent")
            .unwrap()
            .to_string()
    });
    assert!(ua.starts_with("afk-operator/"));
}
