//! Exactly once under chaos: while a run goes dispatch → red → fix-forward → green → done, the
//! controllers are killed and restarted, status writes fail after side effects, T3 loses replies
//! after applying commands, GitHub blips and watches are cut — at pseudo-random moments, for
//! several seeds. T3 must still see one logical dispatch, GitHub one checklist comment and one
//! close, the issue's labels must be what each phase implies (level-triggered, so they heal), and
//! the doorbell must ring at least once (SPEC §3.7) and only with the right kind.

mod support;

use afk_operator::crd::Phase;
use afk_testkit::{
    apiserver::{ApiFault, ApiFaultAction},
    github::GhFault,
    t3::Fault,
};
use serde_json::json;
use support::*;

const RUN: &str = "acme-app-42-1";

/// A tiny deterministic PRNG (xorshift) so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn chaos(w: &mut World, rng: &mut Rng) {
    match rng.next() % 7 {
        0 => w.start(), // kill and restart the controllers with fresh caches
        1 => w.api.with_store(|s| {
            s.inject(ApiFault {
                method: Some("PATCH".into()),
                path_contains: "/status".into(),
                query_contains: None,
                action: ApiFaultAction::Status(500),
                remaining: 1,
            })
        }),
        2 => w.api.with_store(|s| {
            s.inject(ApiFault {
                method: Some("PATCH".into()),
                path_contains: "/status".into(),
                query_contains: None,
                action: ApiFaultAction::Status(409),
                remaining: 1,
            })
        }),
        3 => w.t3.inject(Fault {
            status: 502,
            remaining: 1,
            apply_first: true,
        }),
        4 => w.gh.with(|s| {
            s.faults.push(GhFault {
                path_prefix: "/repos/acme/app/issues/42".into(),
                status: 502,
                headers: vec![],
                body: String::new(),
                remaining: 1,
            })
        }),
        5 => w.api.cut_watches(),
        _ => {
            // Compaction plus a cut: the resume gets 410 and the watchers re-list.
            w.api.with_store(|s| s.compact());
            w.api.cut_watches();
        }
    }
}

async fn wait_with_chaos(w: &mut World, rng: &mut Rng, what: &str, mut cond: impl FnMut(&World) -> bool) {
    for i in 0..2000 {
        if cond(w) {
            return;
        }
        if i % 3 == 0 {
            chaos(w, rng);
        }
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
    panic!(
        "timed out (with chaos) waiting for {what}: {:#}",
        w.run_obj(RUN).map(|r| r["status"].clone()).unwrap_or_default()
    );
}

async fn scenario(seed: u64) {
    let mut rng = Rng(seed);
    let mut w = World::new().await;
    w.label_issue(42, "Do it", "alice");
    w.apply_config(json!({})).await;
    w.start();
    wait_with_chaos(&mut w, &mut rng, "Working", |w| {
        w.phase(RUN).as_deref() == Some("Working")
    })
    .await;
    wait_with_chaos(&mut w, &mut rng, "the in-progress label", |w| {
        w.issue_labels(42) == vec!["ready-for-agent".to_string(), "agent-in-progress".to_string()]
    })
    .await;
    w.push(RUN, 1, "failure");
    w.end_turn(RUN);
    wait_with_chaos(&mut w, &mut rng, "the corrective turn", |w| {
        w.t3.applied_of("thread.turn.start").len() >= 2
    })
    .await;
    let sha = w.push(RUN, 2, "success");
    w.roll_out(&sha);
    wait_with_chaos(&mut w, &mut rng, "Succeeded", |w| {
        w.phase(RUN).as_deref() == Some(Phase::Succeeded.as_str())
    })
    .await;
    // Let the terminal effects settle without chaos, with a restart or two for good measure.
    w.start();
    w.wait_for("all terminal effects", |w| {
        let e = &w.run_obj(RUN).unwrap()["status"]["effects"];
        e["labels"] == json!(true)
            && e["close"] == json!(true)
            && e["comment"] == json!(true)
            && e["notification"] == json!(true)
    })
    .await;
    w.wait_for("the doorbell", |w| !w.ntfy_titles().is_empty()).await;
    w.start();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    assert_eq!(w.t3.applied_of("project.create").len(), 1, "seed {seed}");
    assert_eq!(w.t3.applied_of("thread.create").len(), 1, "seed {seed}");
    assert_eq!(
        w.t3.applied_of("thread.turn.start").len(),
        2,
        "one opening and one corrective turn (seed {seed})"
    );
    let (comments, closes) =
        w.gh.repo(REPO, |r| (r.issues[&42].comments.len(), r.issues[&42].closes));
    assert_eq!(comments, 1, "one checklist comment (seed {seed})");
    assert_eq!(closes, 1, "one close (seed {seed})");
    let bells = w.ntfy_titles();
    assert!(
        !bells.is_empty() && bells.iter().all(|t| t == "acme/app#42 done"),
        "the done bell, at least once (seed {seed}): {bells:?}"
    );
    let runs = w.api.with_store(|s| s.list("afk.dev/v1alpha1", "AfkRun", NS));
    assert_eq!(runs.len(), 1, "no second attempt was created (seed {seed})");
    assert_eq!(
        w.issue_labels(42),
        Vec::<String>::new(),
        "a succeeded issue carries none of the loop's labels (seed {seed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_effects_happen_once_under_chaos() {
    for seed in [
        0x9E37_79B9_7F4A_7C15,
        0xD1B5_4A32_D192_ED03,
        0x2545_F491_4F6C_DD1D,
        0xA076_1D64_78BD_642F,
    ] {
        scenario(seed).await;
    }
}
