//! The real kubectl against the fake API server, as the README's "try it" blocks use it: no
//! `--validate=false`, no special flags. Skips with a message when kubectl is missing locally;
//! CI (`AFK_REQUIRE_KUBECTL=1`) fails instead.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use afk_testkit::apiserver::FakeApiServer;
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `.tools/kubectl/kubectl` (what `.ci/run` installs), then `kubectl` on PATH.
fn kubectl() -> Option<PathBuf> {
    let local = root().join(".tools/kubectl/kubectl");
    if local.is_file() {
        return Some(local);
    }
    let on_path = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        return Some(PathBuf::from("kubectl"));
    }
    assert!(
        std::env::var("AFK_REQUIRE_KUBECTL").as_deref() != Ok("1"),
        "AFK_REQUIRE_KUBECTL=1 but no kubectl found (.tools/kubectl/kubectl or PATH)"
    );
    eprintln!("skipping: kubectl not found (install it or run .ci/run)");
    None
}

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// Run kubectl; returns (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let cache = self.kubeconfig.with_extension("cache");
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--cache-dir")
            .arg(&cache)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(root())
            .output()
            .expect("run kubectl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{text}");
        text
    }
}

async fn setup(server: &FakeApiServer) -> Option<(Kubectl, afk_testkit::apiserver::ServedApi)> {
    let bin = kubectl()?;
    let mut served = server.serve().await;
    let kubeconfig = served.kubeconfig();
    Some((Kubectl { bin, kubeconfig }, served))
}

fn with_crds() -> FakeApiServer {
    FakeApiServer::new().with_crd_dir(&root().join("crds")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_crds_registers_them_through_apiextensions() {
    let server = FakeApiServer::new();
    let Some((k, _served)) = setup(&server).await else {
        return;
    };
    let (ok, text) = k.run(&["get", "afkconfigs"]);
    assert!(!ok, "no CRDs yet: {text}");
    let out = k.ok(&["apply", "-f", "crds/"]);
    assert!(
        out.contains("customresourcedefinition.apiextensions.k8s.io/afkconfigs.afk.dev created"),
        "{out}"
    );
    assert!(k.ok(&["apply", "-f", "crds/"]).contains("unchanged"));
    let out = k.ok(&[
        "wait",
        "--for",
        "condition=Established",
        "crd/afkruns.afk.dev",
        "--timeout",
        "30s",
    ]);
    assert!(out.contains("condition met"), "{out}");
    k.ok(&["create", "namespace", "afk-system"]);
    k.ok(&["apply", "-n", "afk-system", "-f", "docs/examples/afkconfig.yaml"]);
    let out = k.ok(&["get", "afkc", "-n", "afk-system"]);
    assert!(out.contains("team"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_validation_work_from_openapi_v3() {
    let server = with_crds();
    let Some((k, _served)) = setup(&server).await else {
        return;
    };
    let out = k.ok(&["explain", "afkconfig.spec.budgets"]);
    assert!(out.contains("fixForwardMaxAttempts"), "{out}");
    assert!(out.contains("KIND:       AfkConfig"), "{out}");
    let out = k.ok(&["explain", "secret.data"]);
    assert!(out.contains("KIND:       Secret"), "{out}");

    // Validation is on (no --validate=false) and delegated to the server: an unknown field is
    // refused, the valid example goes in.
    k.ok(&["create", "namespace", "afk-system"]);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let example = std::fs::read_to_string(root().join("docs/examples/afkconfig.yaml")).unwrap();
    std::fs::write(
        &bad,
        example.replace("  suspend: false", "  suspend: false\n  suspendd: true"),
    )
    .unwrap();
    let (ok, text) = k.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains(r#"unknown field "spec.suspendd""#), "{text}");
    k.ok(&["apply", "-f", "docs/examples/afkconfig.yaml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_secret_and_configmap_send_protobuf_and_work() {
    let server = with_crds();
    let Some((k, _served)) = setup(&server).await else {
        return;
    };
    k.ok(&["create", "namespace", "afk-system"]);
    k.ok(&[
        "create",
        "secret",
        "generic",
        "afk-github",
        "-n",
        "afk-system",
        "--from-literal=token=ghp_example",
    ]);
    k.ok(&[
        "create",
        "configmap",
        "c",
        "-n",
        "afk-system",
        "--from-literal=a=b",
    ]);
    let secret = server
        .with_store(|s| s.get("v1", "Secret", "afk-system", "afk-github"))
        .expect("stored");
    assert_eq!(secret["data"]["token"], json!("Z2hwX2V4YW1wbGU="));
    assert_eq!(secret["type"], json!("Opaque"));
    let cm = server
        .with_store(|s| s.get("v1", "ConfigMap", "afk-system", "c"))
        .expect("stored");
    assert_eq!(cm["data"], json!({"a": "b"}));
    let requests = server.with_store(|s| s.log.clone());
    assert!(
        requests.iter().any(|r| r.path.ends_with("/secrets")
            && r.content_type.starts_with("application/vnd.kubernetes.protobuf")),
        "kubectl sent protobuf (what this test is about)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_shows_events_and_get_prints_columns() {
    let server = with_crds();
    let Some((k, _served)) = setup(&server).await else {
        return;
    };
    k.ok(&["create", "namespace", "afk-system"]);
    let run = server.with_store(|s| {
        s.seed(json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun",
            "metadata": {"name": "acme-app-42-1", "namespace": "afk-system"},
            "spec": {"configRef": "team", "repo": "acme/app", "issue": 42, "attempt": 1, "title": "Fix it",
                     "taskSnapshot": {"title": "Fix it", "body": "", "sha256": "0"}},
            "status": {"phase": "Working"}}))
    });
    server.with_store(|s| {
        s.seed(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "acme-app-42-1.1", "namespace": "afk-system"},
            "eventTime": "2026-12-02T10:00:00.000000Z", "reportingController": "afk.dev/controller",
            "reportingInstance": "afk-operator", "action": "Reconcile", "reason": "Dispatched",
            "note": "acme/app#42 dispatched to T3", "type": "Normal",
            "regarding": {"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "name": "acme-app-42-1",
                          "namespace": "afk-system", "uid": run["metadata"]["uid"]}}));
    });
    let out = k.ok(&["describe", "afkrun", "acme-app-42-1", "-n", "afk-system"]);
    assert!(out.contains("Dispatched"), "{out}");
    assert!(out.contains("acme/app#42 dispatched to T3"), "{out}");
    let out = k.ok(&["get", "afkr", "-n", "afk-system"]);
    assert!(out.contains("PHASE") && out.contains("Working"), "{out}");
}

#[test]
fn kubeconfig_paths_are_absolute() {
    // The tests above run kubectl from the repo root with relative paths (crds/, docs/…), as
    // the README does; make sure that root is where we think.
    assert!(Path::new(&root()).join("crds").is_dir());
}
