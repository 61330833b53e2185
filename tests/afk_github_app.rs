//! The AFK loop end to end under GitHub App credentials, in process: the AfkConfig names the
//! App (`tracker.github.app`) and a Secret holding its private key; the GitHub fake accepts only
//! installation tokens minted from a JWT it verified. GitHub revokes the token mid-run; the
//! operator mints a new one and the run still ends `Succeeded`. The App's own bot labelling an
//! issue is not a trusted act.

mod support;

use afk_operator::crd::Phase;
use afk_testkit::github::AppKey;
use base64::Engine;
use serde_json::json;
use support::*;

const RUN: &str = "acme-app-42-1";
const APP_ID: u64 = 424242;
const INSTALLATION: u64 = 31337;
const APP_BOT: &str = "afk-operator[bot]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_under_github_app_credentials_succeeds_across_a_token_refresh() {
    let mut w = World::new().await;
    let key = AppKey::generate();
    w.gh.enable_app(APP_ID, INSTALLATION, &key.public_pem);
    // No personal access token works: only minted installation tokens do.
    w.gh.with(|s| s.token = "pat-not-configured".into());
    let pem = base64::engine::general_purpose::STANDARD.encode(&key.private_pkcs1_pem);
    w.api.with_store(|s| {
        s.seed(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "github-app", "namespace": NS},
            "data": {"private-key.pem": pem}}),
        )
    });
    w.label_issue(42, "Retry webhooks.", "alice");
    // The App's own bot, even with admin rights, is not a trusted labeler.
    w.gh.repo(REPO, |r| r.roles.insert(APP_BOT.into(), "admin".into()));
    w.label_issue(43, "Labelled by the App itself", APP_BOT);
    w.apply_config(json!({"tracker": {"github": {
        "tokenSecretRef": null,
        "app": {"appId": APP_ID, "installationId": INSTALLATION,
                "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"}}
    }}}))
    .await;
    w.start();

    w.wait_phase(RUN, Phase::Working).await;
    w.wait_for("the in-progress label", |w| {
        w.issue_labels(42).contains(&"agent-in-progress".to_string())
    })
    .await;
    w.wait_for("Ready", |w| {
        w.config_condition("Ready").is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let queue = w.config_obj()["status"]["queue"].clone();
    let bot = queue
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["issue"] == 43)
        .unwrap_or_else(|| panic!("issue 43 waits: {queue:#}"));
    assert_eq!(
        bot["reason"],
        format!("labeled by @{APP_BOT} (Bot, not an allowed bot)")
    );
    let minted = w.gh.token_exchanges();
    assert!(minted >= 1);
    let claims = w.gh.with(|s| s.app_jwt_claims[0].clone());
    assert_eq!(claims["iss"], json!(APP_ID.to_string()));

    // GitHub revokes the installation token mid-run.
    w.gh.expire_installation_tokens();
    let sha = w.push(RUN, 1, "success");
    w.wait_phase(RUN, Phase::Verifying).await;
    assert!(
        w.gh.token_exchanges() > minted,
        "a new installation token was minted"
    );
    assert!(
        w.gh.with(|s| s.refused_tokens) >= 1,
        "after GitHub refused the old one"
    );
    w.roll_out(&sha);
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Succeeded).await;
    w.wait_for("the issue closed", |w| {
        w.gh.repo(REPO, |r| r.issues[&42].state == "closed")
    })
    .await;
    let run = w.run_obj(RUN).unwrap();
    assert_eq!(run["status"]["commit"], json!(sha));
    assert_eq!(run["status"]["ci"]["verdict"], "Green");
    // Every repo request carried an installation token, never the JWT or a PAT.
    let (bearers, tokens) = w.gh.with(|s| {
        let bearers: Vec<String> = s
            .requests
            .iter()
            .filter(|r| r.path.starts_with("/repos/"))
            .map(|r| r.header("authorization").unwrap_or_default().to_string())
            .collect();
        let tokens: Vec<String> = s.installation_tokens.iter().map(|(t, _)| t.clone()).collect();
        (bearers, tokens)
    });
    assert!(
        bearers
            .iter()
            .all(|b| tokens.iter().any(|t| b == &format!("Bearer {t}"))),
        "only installation tokens were sent"
    );
    // Nothing dispatched for the bot's issue.
    assert!(w.run_obj("acme-app-43-1").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_key_that_is_not_pem_stalls_the_config_naming_the_secret() {
    let mut w = World::new().await;
    w.gh.enable_app(APP_ID, INSTALLATION, &AppKey::generate().public_pem);
    let junk = base64::engine::general_purpose::STANDARD.encode("not a key");
    w.api.with_store(|s| {
        s.seed(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "github-app", "namespace": NS},
            "data": {"private-key.pem": junk}}),
        )
    });
    w.label_issue(42, "Retry webhooks.", "alice");
    w.apply_config(json!({"tracker": {"github": {
        "tokenSecretRef": null,
        "app": {"appId": APP_ID, "installationId": INSTALLATION,
                "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"}}
    }}}))
    .await;
    w.start();
    w.wait_for("Stalled", |w| {
        w.config_condition("Stalled").is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let (_, _, message) = w.config_condition("Stalled").unwrap();
    assert!(
        message.contains("github-app") && message.contains("not an RSA private key"),
        "{message}"
    );
    assert!(!message.contains("not a key"), "the Secret's value is not echoed");
    assert_eq!(w.gh.token_exchanges(), 0);
    assert!(w.run_obj(RUN).is_none());
}

/// The same through the real binary: GitHub App credentials only (no PAT works), the
/// installation token revoked mid-run and re-minted, the run ends `Succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_under_github_app_credentials_across_a_token_refresh() {
    use support::process::*;
    let w = World::new().await;
    let key = AppKey::generate();
    w.gh.enable_app(APP_ID, INSTALLATION, &key.public_pem);
    w.gh.with(|s| s.token = "pat-not-configured".into());
    let pem = base64::engine::general_purpose::STANDARD.encode(&key.private_pkcs1_pem);
    w.api.with_store(|s| {
        s.seed(
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "github-app", "namespace": NS},
            "data": {"private-key.pem": pem}}),
        )
    });
    w.label_issue(42, "Retry webhooks.", "alice");
    let mut served = w.api.serve().await;
    let kubeconfig = served.kubeconfig();
    w.apply_config(json!({"tracker": {"github": {
        "tokenSecretRef": null,
        "app": {"appId": APP_ID, "installationId": INSTALLATION,
                "privateKeySecretRef": {"name": "github-app", "key": "private-key.pem"}}
    }}}))
    .await;
    let _op = spawn_operator(&kubeconfig, free_port());
    w.wait_phase(RUN, Phase::Working).await;
    let minted = w.gh.token_exchanges();
    assert!(minted >= 1);
    w.gh.expire_installation_tokens();
    let sha = w.push(RUN, 1, "success");
    w.roll_out(&sha);
    w.end_turn(RUN);
    w.wait_phase(RUN, Phase::Succeeded).await;
    assert!(
        w.gh.token_exchanges() > minted,
        "a new installation token was minted"
    );
    w.wait_for("the issue closed", |w| {
        w.gh.repo(REPO, |r| r.issues[&42].state == "closed")
    })
    .await;
}
