//! One AfkConfig poll at a time, against the in-process fake API server and the in-memory
//! adapters (installed in the adapter cache, so the Secrets are still read from the API): which
//! AfkRuns a poll creates and which it must not, what the conditions, the queue and the Events
//! say, and that a disarmed or stalled config asks GitHub and T3 nothing at all.

mod harness;

use std::time::Duration;

use afk_testkit::apiserver::RequestLog;
use jiff::{SignedDuration, Timestamp};
use kube::{Api, api::PostParams, runtime::controller::Action};
use serde_json::json;

use harness::{APP, CONFIG, Harness, NS, WEB, requeue_after};

use crate::{
    adapters::memory::{GitHubFault, T3Fault},
    crd::{
        self, AfkConfig, AfkRun,
        condition::{reasons, types},
    },
    policy::naming,
};

#[tokio::test]
async fn an_armed_poll_creates_one_named_run_per_repo_for_trusted_issues_and_no_more_on_the_next() {
    let h = Harness::new().await;
    h.ready(APP, 7, "Fix it", "alice");
    h.ready(APP, 8, "Then this", "alice");
    h.ready(WEB, 3, "Style", "alice");
    h.ready(WEB, 2, "Do my homework", "mallory");
    let action = h.reconcile().await.unwrap();

    assert_eq!(h.run_names(), ["acme-app-7-1", "acme-web-3-1"]);
    let run = h.run("acme-app-7-1");
    assert_eq!(run["spec"]["configRef"], CONFIG);
    assert_eq!(
        (&run["spec"]["repo"], &run["spec"]["attempt"]),
        (&json!(APP), &json!(1))
    );
    let snapshot = naming::snapshot_sha256("Fix it", "");
    assert_eq!(
        run["spec"]["taskSnapshot"]["sha256"], snapshot,
        "the task as verified"
    );
    assert_eq!(run["metadata"]["labels"][crd::CONFIG_LABEL], CONFIG);
    let owner = &run["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["name"], &owner["controller"]),
        (&json!(CONFIG), &json!(true))
    );

    h.assert_condition(types::READY, "True", "Ready");
    h.assert_condition(types::ARMED, "True", reasons::ARMED);
    h.assert_condition(types::STALLED, "False", reasons::RECONCILED);
    h.assert_condition(types::TRACKER_REACHABLE, "True", reasons::REACHABLE);
    h.assert_condition(types::EXECUTOR_REACHABLE, "True", reasons::REACHABLE);
    let status = h.status();
    assert_eq!(status["inFlight"], 2);
    assert!(status["lastPollTime"].is_string());
    assert!(status["message"].is_null(), "all is well: {status}");
    let waiting = [
        "acme/web#2: labeled by @mallory (read permission)",
        "acme/app#8: repo busy: afkrun acme-app-7-1",
    ];
    assert_eq!(h.queue(), waiting);
    let repos = json!([
        {"repo": APP, "holder": "acme-app-7-1", "waiting": [8]},
        {"repo": WEB, "holder": "acme-web-3-1", "waiting": [2]},
    ]);
    assert_eq!(status["repos"], repos);
    let next = requeue_after(&action).unwrap();
    let interval = Duration::from_secs(108)..=Duration::from_secs(132);
    assert!(
        interval.contains(&next),
        "the 2m poll interval, jittered: {next:?}"
    );

    // The next poll sees its runs: nothing new is created, nothing is even attempted.
    let creates = |r: &RequestLog| r.method == "POST" && r.path.ends_with("/afkruns");
    let before = h.sent(creates);
    h.reconcile().await.unwrap();
    assert_eq!(h.sent(creates), before);
    assert_eq!(h.run_names(), ["acme-app-7-1", "acme-web-3-1"]);
    assert_eq!(h.queue(), waiting, "issues being worked on are not waiting");
}

#[tokio::test]
async fn a_suspended_config_asks_github_and_t3_nothing_and_is_not_a_fault() {
    let h = Harness::build(|c| c["spec"]["suspend"] = json!(true), &["gh", "t3"]).await;
    h.ready(APP, 7, "Fix it", "alice");
    let action = h.reconcile().await.unwrap();

    h.assert_asked_nothing();
    assert!(h.run_names().is_empty());
    h.assert_condition(types::READY, "False", reasons::SUSPENDED);
    h.assert_condition(types::ARMED, "False", reasons::SUSPENDED);
    h.assert_condition(types::STALLED, "False", reasons::RECONCILED);
    assert!(
        h.condition(types::TRACKER_REACHABLE).is_null(),
        "not probed, not guessed"
    );
    assert_eq!(h.status()["message"], "spec.suspend is true");
    let ready = "Normal Suspended: Ready=False: spec.suspend is true";
    assert!(
        h.events().contains(&ready.to_string()),
        "not a Warning: {:?}",
        h.events()
    );
    assert!(requeue_after(&action).is_some(), "keeps polling for the switch");
}

#[tokio::test]
async fn an_emergency_stop_disarms_an_armed_config_before_it_asks_anyone_anything() {
    let h = Harness::new().await;
    h.ready(APP, 7, "Fix it", "alice");
    h.reconcile().await.unwrap();
    assert_eq!(h.run_names(), ["acme-app-7-1"]);

    let stop = json!({"metadata": {"annotations": {crd::EMERGENCY_STOP_ANNOTATION: "INC-42"}}});
    h.patch_config(stop).await;
    h.ready(WEB, 3, "Style", "alice");
    let (github, t3) = (h.github.requests().len(), h.t3.requests().len());
    h.reconcile().await.unwrap();

    assert_eq!(h.github.requests().len(), github, "no GitHub request");
    assert_eq!(h.t3.requests().len(), t3, "no T3 request");
    assert_eq!(h.run_names(), ["acme-app-7-1"], "nothing new dispatched");
    h.assert_condition(types::READY, "False", reasons::EMERGENCY_STOP);
    h.assert_condition(types::ARMED, "False", reasons::EMERGENCY_STOP);
    assert_eq!(h.message(types::READY), "emergency stop: INC-42");
    h.assert_condition(types::TRACKER_REACHABLE, "True", reasons::REACHABLE);
    let status = h.status();
    assert_eq!(status["inFlight"], 1);
    assert_eq!(status["repos"][0]["holder"], "acme-app-7-1", "{status}");
}

#[tokio::test]
async fn missing_secrets_stall_the_config_naming_each_and_it_looks_again_within_30s() {
    let h = Harness::build(|_| {}, &[]).await;
    h.ready(APP, 7, "Fix it", "alice");
    let action = h.reconcile().await.unwrap();

    h.assert_condition(types::STALLED, "True", reasons::SECRET_MISSING);
    h.assert_condition(types::READY, "False", reasons::SECRET_MISSING);
    h.assert_condition(types::ARMED, "False", reasons::STALLED);
    let message = h.message(types::STALLED);
    let both = message.contains(r#"Secret "gh""#) && message.contains(r#"Secret "t3""#);
    assert!(both, "every missing Secret at once: {message}");
    assert!(h.run_names().is_empty());
    h.assert_asked_nothing();
    let again = requeue_after(&action).unwrap();
    assert!(
        again <= Duration::from_secs(30),
        "a new Secret does not wake the config: {again:?}"
    );

    // Once the Secrets exist the next poll proceeds, without a restart.
    h.add_secret("gh").await;
    h.add_secret("t3").await;
    h.reconcile().await.unwrap();
    h.assert_condition(types::STALLED, "False", reasons::RECONCILED);
    h.assert_condition(types::READY, "True", "Ready");
    assert_eq!(h.run_names(), ["acme-app-7-1"]);
}

#[tokio::test]
async fn an_invalid_poll_interval_stalls_the_config_until_the_spec_changes() {
    let h = Harness::new().await;
    h.ready(APP, 7, "Fix it", "alice");
    // The API server refuses such a value now; one stored before the rule still reaches the
    // controller (and, with validation ratcheting, its status can be written: the fake does not
    // ratchet, so only the copy handed to the reconcile is edited).
    let zero = |c: &mut AfkConfig| c.spec.poll_interval = crd::GoDuration::new("0s");
    let action = h.reconcile_as(zero).await.unwrap();

    h.assert_condition(types::STALLED, "True", reasons::INVALID_SPEC);
    h.assert_condition(types::READY, "False", reasons::INVALID_SPEC);
    h.assert_condition(types::ARMED, "False", reasons::STALLED);
    let message = h.message(types::STALLED);
    assert!(
        message.starts_with(r#"spec.pollInterval: invalid duration "0s""#),
        "{message}"
    );
    assert!(h.run_names().is_empty());
    h.assert_asked_nothing();
    assert_eq!(
        action,
        Action::await_change(),
        "nothing to retry until a human edits it"
    );
}

#[tokio::test]
async fn t3_refusing_the_token_makes_the_config_unauthorized_and_dispatches_nothing() {
    // T3's own answer (`authenticated: false` on a 200), then a 401 (e.g. from a proxy).
    for revoked in [true, false] {
        let h = Harness::new().await;
        h.ready(APP, 7, "Fix it", "alice");
        if revoked {
            h.t3.revoke_token();
        } else {
            h.t3.fault_on("auth.session", T3Fault::Unauthorized);
        }
        h.reconcile().await.unwrap();

        h.assert_condition(types::READY, "False", reasons::UNAUTHORIZED);
        h.assert_condition(types::EXECUTOR_REACHABLE, "False", reasons::UNAUTHORIZED);
        h.assert_condition(types::TRACKER_REACHABLE, "True", reasons::REACHABLE);
        assert!(
            h.message(types::READY).starts_with("T3: "),
            "{}",
            h.message(types::READY)
        );
        // A run would fail at its first call and hand the issue back to a human.
        assert!(h.run_names().is_empty(), "dispatched with a refused token");
        assert_eq!(
            h.queue(),
            [format!("{APP}#7: T3 refuses the operator's token (see Ready)")],
            "the issue waits, and says why"
        );
        assert_eq!(h.t3.requests(), ["environment", "auth.session"]);
        assert!(
            h.condition("TokenExpiring").is_null(),
            "no expiry claim for a refused token"
        );
    }
}

#[tokio::test]
async fn github_unavailable_holds_what_it_could_not_answer_and_says_why() {
    let h = Harness::new().await;
    h.ready(APP, 7, "Fix it", "alice");
    h.ready(WEB, 3, "Style", "alice");
    h.ready(WEB, 4, "Lint", "alice");
    // A 503 listing acme/app, then one on the first gate fact asked (who labelled acme/web#3).
    h.github.fault_on("list_labeled_issues", GitHubFault::Down);
    h.github.fault_on("label_events", GitHubFault::Down);
    h.reconcile().await.unwrap();

    h.assert_condition(types::TRACKER_REACHABLE, "False", reasons::UNREACHABLE);
    h.assert_condition(types::READY, "False", reasons::UNREACHABLE);
    let message = h.message(types::TRACKER_REACHABLE);
    assert!(message.starts_with("acme/app: "), "names the repo: {message}");
    // A blip is not a verdict: the issue waits (it is not called untrusted).
    let blip = "acme/web#3: github unavailable: label events lookup failed (server_error)";
    assert_eq!(h.queue(), [blip]);
    // Nothing from the repo it could not list; the rest still runs.
    assert_eq!(h.run_names(), ["acme-web-4-1"]);
}

#[tokio::test]
async fn a_run_in_flight_holds_its_repo_against_every_other_ready_issue() {
    let h = Harness::new().await;
    let run: AfkRun = serde_json::from_value(json!({
        "apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
        "metadata": {"name": "acme-app-7-1", "namespace": NS},
        "spec": {"configRef": CONFIG, "repo": APP, "issue": 7, "attempt": 1, "title": "Fix it",
                 "taskSnapshot": {"title": "Fix it", "body": "", "sha256": "a".repeat(64)}}
    }))
    .unwrap();
    let runs = Api::<AfkRun>::namespaced(h.ctx.client.clone(), NS);
    runs.create(&PostParams::default(), &run).await.unwrap();
    h.ready(APP, 7, "Fix it", "alice");
    h.ready(APP, 8, "Then this", "alice");
    h.ready(APP, 9, "And this", "alice");
    h.ready(WEB, 3, "Style", "alice");
    h.reconcile().await.unwrap();

    assert_eq!(
        h.run_names(),
        ["acme-app-7-1", "acme-web-3-1"],
        "one agent per repo"
    );
    let busy = [
        "acme/app#8: repo busy: afkrun acme-app-7-1",
        "acme/app#9: repo busy: afkrun acme-app-7-1",
    ];
    assert_eq!(h.queue(), busy);
    let status = h.status();
    let app = json!({"repo": APP, "holder": "acme-app-7-1", "waiting": [8, 9]});
    assert_eq!(status["repos"][0], app);
    assert_eq!(status["inFlight"], 2);
}

#[tokio::test]
async fn each_condition_change_is_one_event_and_an_unchanged_poll_publishes_none() {
    let h = Harness::new().await;
    h.reconcile().await.unwrap();
    let first = h.events();
    let said: Vec<&str> = first
        .iter()
        .map(|e| e.split(':').nth(1).unwrap().trim())
        .collect();
    // Stalled and Reconciling (both `Reconciled`), TrackerReachable and ExecutorReachable (both
    // `Reachable`) share a reason: still one Event each.
    let every = [
        "Ready=True",
        "Stalled=False",
        "Reconciling=False",
        "Armed=True",
        "TrackerReachable=True",
        "ExecutorReachable=True",
        "TokenExpiring=False",
    ];
    assert_eq!(said, every, "{first:?}");
    assert!(first.iter().all(|e| e.starts_with("Normal ")), "{first:?}");
    assert_eq!(h.publishes(), first.len());

    h.reconcile().await.unwrap();
    assert_eq!(h.publishes(), first.len(), "nothing changed, nothing published");

    h.patch_config(json!({"spec": {"suspend": true}})).await;
    h.reconcile().await.unwrap();
    let suspended = h.events().split_off(first.len());
    let to = |condition: &str| format!("Normal Suspended: {condition}=False: spec.suspend is true");
    assert_eq!(
        suspended,
        [to(types::READY), to(types::ARMED)],
        "nothing else changed"
    );
    assert_eq!(h.publishes(), first.len() + 2);
}

#[tokio::test]
async fn a_t3_token_expiring_within_seven_days_warns_and_the_config_stays_ready() {
    let h = Harness::new().await;
    h.t3.set_token_expiry(Timestamp::now() + SignedDuration::from_hours(3 * 24));
    h.ready(APP, 7, "Fix it", "alice");
    h.reconcile().await.unwrap();

    h.assert_condition("TokenExpiring", "True", "TokenExpiresSoon");
    h.assert_condition(types::READY, "True", "Ready");
    assert_eq!(h.run_names(), ["acme-app-7-1"], "the token still works");
    let warning = h.message("TokenExpiring");
    let how =
        warning.contains("t3 auth session issue") && warning.contains(r#"key "token" of Secret afk/t3"#);
    assert!(how, "how to mint a new one and where to put it: {warning}");
    assert_eq!(h.status()["message"], warning.as_str());
    let event = format!("Warning TokenExpiresSoon: TokenExpiring=True: {warning}");
    assert!(h.events().contains(&event), "{:?}", h.events());

    // A token with a month left is fine.
    let h = Harness::new().await;
    h.t3.set_token_expiry(Timestamp::now() + SignedDuration::from_hours(30 * 24));
    h.reconcile().await.unwrap();
    h.assert_condition("TokenExpiring", "False", "TokenValid");
}
