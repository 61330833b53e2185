//! Leader election on a Lease against the fake API server: one holder at a time, renewals keep
//! it, and a standby takes over once the holder stops renewing for the lease duration.

use std::time::Duration;

use afk_operator::controller::{LeaderElection, LeaseSettings};
use afk_testkit::apiserver::FakeApiServer;

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        name: "afk-operator".into(),
        namespace: "afk".into(),
        identity: identity.into(),
        lease_duration: Duration::from_millis(600),
        renew_every: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn one_leader_and_a_takeover_after_expiry() {
    let api = FakeApiServer::new();
    let a = LeaderElection::new(api.client(), settings("pod-a"));
    let b = LeaderElection::new(api.client(), settings("pod-b"));
    assert!(
        a.try_acquire().await.unwrap(),
        "the first candidate creates the lease"
    );
    assert!(!b.try_acquire().await.unwrap(), "a held lease is not taken");
    assert!(a.try_acquire().await.unwrap(), "the holder renews");
    let holder = api
        .with_store(|s| s.get("coordination.k8s.io/v1", "Lease", "afk", "afk-operator"))
        .unwrap();
    assert_eq!(holder["spec"]["holderIdentity"], "pod-a");

    // pod-a stops renewing; after the lease duration pod-b takes over.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.try_acquire().await.unwrap(), "an expired lease is taken over");
    assert!(
        !a.try_acquire().await.unwrap(),
        "the old holder does not get it back"
    );
    let lease = api
        .with_store(|s| s.get("coordination.k8s.io/v1", "Lease", "afk", "afk-operator"))
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "pod-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn the_run_loop_publishes_leadership_and_loses_it() {
    let api = FakeApiServer::new();
    let (tx_a, rx_a) = tokio::sync::watch::channel(false);
    let task_a = tokio::spawn(LeaderElection::new(api.client(), settings("pod-a")).run(tx_a));
    let mut rx = rx_a.clone();
    tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    let (tx_b, rx_b) = tokio::sync::watch::channel(false);
    let task_b = tokio::spawn(LeaderElection::new(api.client(), settings("pod-b")).run(tx_b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*rx_b.borrow(), "only one leader");
    // Kill pod-a: pod-b takes over within the lease duration plus a renew period.
    task_a.abort();
    let mut rx = rx_b.clone();
    tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|l| *l))
        .await
        .expect("standby took over")
        .unwrap();
    task_b.abort();
}
