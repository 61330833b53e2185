//! GitHub App credentials over loopback against the GitHub fake, with an RSA key generated in
//! the test: the fake verifies the JWT's RS256 signature and claims before it mints an
//! installation token; the client reuses the token while it is fresh, replaces it five minutes
//! before it expires, and on a 401 mints once more and retries the request once.

use std::{sync::Arc, time::Duration};

use afk_operator::adapters::{
    Secret, SecretSource, StaticSecret,
    github::{GitHubClient, GitHubOptions, Tracker},
    github_app::{GitHubAppToken, HttpTokenExchange},
};
use afk_testkit::github::{AppKey, FakeGitHub};
use jiff::{SignedDuration, Timestamp};

const APP_ID: u64 = 123456;
const INSTALLATION: u64 = 777;
const REPO: &str = "acme/app";

struct Setup {
    fake: FakeGitHub,
    app: Arc<GitHubAppToken>,
    client: GitHubClient,
}

/// The fake knows the App by its public key and no longer accepts any static token.
async fn setup(key: &AppKey, private_pem: &str, installation: u64) -> Setup {
    let fake = FakeGitHub::start("ghp_not_used_by_the_app_client").await;
    fake.add_repo(REPO, "trunk");
    fake.enable_app(APP_ID, INSTALLATION, &key.public_pem);
    let app = Arc::new(GitHubAppToken::new(
        APP_ID,
        installation,
        Arc::new(StaticSecret(Secret::new(private_pem))),
        Arc::new(HttpTokenExchange::new(&fake.url())),
    ));
    let client = GitHubClient::new(
        &fake.url(),
        app.clone(),
        GitHubOptions {
            min_mutation_interval: Duration::ZERO,
            ..GitHubOptions::default()
        },
    )
    .with_token_mint(app.clone());
    Setup { fake, app, client }
}

fn bearers(fake: &FakeGitHub, path_prefix: &str) -> Vec<String> {
    fake.with(|s| {
        s.requests
            .iter()
            .filter(|r| r.path.starts_with(path_prefix))
            .map(|r| {
                r.header("authorization")
                    .unwrap_or_default()
                    .trim_start_matches("Bearer ")
                    .to_string()
            })
            .collect()
    })
}

#[tokio::test]
async fn a_verified_jwt_mints_one_installation_token_that_is_reused_while_fresh() {
    let key = AppKey::generate();
    let s = setup(&key, &key.private_pkcs1_pem, INSTALLATION).await;
    let before = Timestamp::now().as_second();

    assert_eq!(s.client.default_branch(REPO).await.unwrap(), "trunk");
    assert_eq!(
        s.client.issue_labels(REPO, 1).await.unwrap_err().kind,
        "not_found"
    );
    assert_eq!(s.client.default_branch(REPO).await.unwrap(), "trunk");

    assert_eq!(
        s.fake.token_exchanges(),
        1,
        "no second exchange while the token is valid"
    );
    assert_eq!(s.app.exchanges(), 1);
    let claims = s.fake.with(|st| st.app_jwt_claims[0].clone());
    let (iat, exp) = (claims["iat"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
    assert_eq!(claims["iss"], serde_json::json!(APP_ID.to_string()));
    assert_eq!(exp - iat, 600, "exp - iat is GitHub's 10-minute cap");
    assert!(
        (before - 61..=Timestamp::now().as_second() - 59).contains(&iat),
        "iat is 60 s in the past: {iat} vs {before}"
    );
    // The repo routes saw the minted token, never the JWT.
    let minted = s.fake.with(|st| st.installation_tokens[0].0.clone());
    assert!(minted.starts_with("ghs_"));
    let used = bearers(&s.fake, "/repos/");
    assert_eq!(used.len(), 3);
    assert!(used.iter().all(|t| *t == minted), "{used:?}");
    let jwt = &bearers(&s.fake, "/app/installations/")[0];
    assert_eq!(jwt.split('.').count(), 3, "a compact JWS");
    // Secret hygiene: the token and the key stay out of Debug output.
    let dbg = format!("{:?} {:?}", s.app, s.client);
    assert!(!dbg.contains(&minted) && !dbg.contains("PRIVATE KEY"), "{dbg}");
    assert_eq!(s.app.read().unwrap().expose(), minted);
}

#[tokio::test]
async fn a_pkcs8_key_works_too_and_concurrent_requests_share_one_exchange() {
    let key = AppKey::generate();
    let s = setup(&key, &key.private_pkcs8_pem, INSTALLATION).await;
    let results = futures::future::join_all((0..8).map(|_| s.client.default_branch(REPO))).await;
    assert!(results.iter().all(|r| r.as_deref() == Ok("trunk")), "{results:?}");
    assert_eq!(
        s.fake.token_exchanges(),
        1,
        "one exchange for eight waiting requests"
    );
}

#[tokio::test]
async fn a_token_is_replaced_before_the_last_five_minutes_of_its_life() {
    let key = AppKey::generate();
    let s = setup(&key, &key.private_pkcs1_pem, INSTALLATION).await;
    // Tokens that GitHub still accepts but that are inside the 5-minute margin.
    s.fake
        .set_installation_token_ttl(SignedDuration::from_mins(5) - SignedDuration::from_secs(20));
    s.client.default_branch(REPO).await.unwrap();
    assert_eq!(s.fake.token_exchanges(), 1);
    s.client.default_branch(REPO).await.unwrap();
    assert_eq!(
        s.fake.token_exchanges(),
        2,
        "replaced before use, not after a 401"
    );
    // A full-lifetime token is minted for the next request and then reused.
    s.fake.set_installation_token_ttl(SignedDuration::from_hours(1));
    s.client.default_branch(REPO).await.unwrap();
    s.client.default_branch(REPO).await.unwrap();
    assert_eq!(s.fake.token_exchanges(), 3);
    assert_eq!(
        s.fake.with(|st| st.refused_tokens),
        0,
        "GitHub never had to refuse one"
    );
    let expires = s.app.expires_at().unwrap();
    assert!(
        expires > Timestamp::now() + SignedDuration::from_mins(55),
        "{expires}"
    );
}

#[tokio::test]
async fn a_refused_token_is_replaced_once_and_the_request_retried_once() {
    let key = AppKey::generate();
    let s = setup(&key, &key.private_pkcs1_pem, INSTALLATION).await;
    s.client.default_branch(REPO).await.unwrap();
    // GitHub revokes the token early (the client still believes it has an hour).
    s.fake.expire_installation_tokens();
    s.client
        .add_labels(REPO, 1, &["x".to_string()])
        .await
        .expect_err("issue 1 does not exist: the retried request reaches the route");
    assert_eq!(s.fake.with(|st| st.refused_tokens), 1);
    assert_eq!(s.fake.token_exchanges(), 2);
    let labels_posts = s
        .fake
        .mutations()
        .iter()
        .filter(|m| m.contains("/labels"))
        .count();
    assert_eq!(
        labels_posts, 2,
        "the refused request was sent once more, not more"
    );
    assert_eq!(s.client.default_branch(REPO).await.unwrap(), "trunk");
    assert_eq!(s.fake.token_exchanges(), 2, "the new token is reused");
}

#[tokio::test]
async fn a_token_refused_after_a_refresh_is_a_clear_permanent_error() {
    let key = AppKey::generate();
    let s = setup(&key, &key.private_pkcs1_pem, INSTALLATION).await;
    // Every token GitHub mints is already dead (e.g. the App lost access).
    s.fake.set_installation_token_ttl(SignedDuration::ZERO);
    let err = s.client.default_branch(REPO).await.unwrap_err();
    assert!(!err.is_transient());
    assert!(err.is_unauthorized(), "{err}");
    assert_eq!(err.status, Some(401));
    assert!(err.message.contains("freshly minted installation token"), "{err}");
    assert_eq!(s.fake.token_exchanges(), 2, "one refresh, no loop");
    assert_eq!(s.fake.with(|st| st.refused_tokens), 2);
}

#[tokio::test]
async fn github_refuses_a_jwt_signed_by_another_key_or_for_another_installation() {
    let key = AppKey::generate();
    let other = AppKey::generate();
    let s = setup(&key, &other.private_pkcs1_pem, INSTALLATION).await;
    let err = s.client.default_branch(REPO).await.unwrap_err();
    assert_eq!((err.kind, err.status), ("auth", Some(401)), "{err}");
    assert!(
        err.message.contains("A JSON web token could not be decoded") && err.message.contains("private key"),
        "{err}"
    );
    assert!(!err.to_string().contains("PRIVATE KEY"));
    assert_eq!(s.fake.token_exchanges(), 0);
    assert!(
        bearers(&s.fake, "/repos/").is_empty(),
        "nothing sent without a token"
    );

    let s = setup(&key, &key.private_pkcs1_pem, INSTALLATION + 1).await;
    let err = s.client.default_branch(REPO).await.unwrap_err();
    assert_eq!((err.kind, err.status), ("not_found", Some(404)), "{err}");
    assert!(err.message.contains("installationId"), "{err}");
}

#[tokio::test]
async fn the_fake_is_strict_about_claims() {
    // Hand-made JWTs the operator would never send: the fake must refuse each of them.
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let key = AppKey::generate();
    let fake = FakeGitHub::start("ghp_x").await;
    fake.enable_app(APP_ID, INSTALLATION, &key.public_pem);
    let signing = EncodingKey::from_rsa_pem(key.private_pkcs1_pem.as_bytes()).unwrap();
    let now = Timestamp::now().as_second();
    let http = reqwest::Client::new();
    let url = format!("{}/app/installations/{INSTALLATION}/access_tokens", fake.url());
    let cases = [
        (
            serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": APP_ID.to_string()}),
            201,
        ),
        (
            serde_json::json!({"iat": now - 60, "exp": now + 541, "iss": APP_ID.to_string()}),
            401,
        ),
        (
            serde_json::json!({"iat": now + 30, "exp": now + 540, "iss": APP_ID.to_string()}),
            401,
        ),
        (
            serde_json::json!({"iat": now - 600, "exp": now - 1, "iss": APP_ID.to_string()}),
            401,
        ),
        (
            serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": "999"}),
            401,
        ),
        (
            serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": APP_ID}),
            201,
        ),
    ];
    for (claims, want) in cases {
        let jwt = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &signing).unwrap();
        let resp = http
            .post(&url)
            .bearer_auth(&jwt)
            .header("user-agent", "t")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{claims}");
        let body: serde_json::Value = resp.json().await.unwrap();
        if want == 201 {
            assert!(body["token"].as_str().unwrap().starts_with("ghs_"));
            assert!(body["expires_at"].as_str().unwrap().parse::<Timestamp>().is_ok());
            assert_eq!(body["repository_selection"], "selected");
            assert!(body["permissions"].is_object());
        } else {
            assert!(
                body["message"].is_string() && body["documentation_url"].is_string(),
                "{body}"
            );
        }
    }
    // HS256 with the public key as the secret (algorithm confusion) is refused.
    let jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": APP_ID}),
        &EncodingKey::from_secret(key.public_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let resp = http
        .post(&url)
        .bearer_auth(&jwt)
        .header("user-agent", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}
