//! The CRDs are the product's public API. These tests pin them: the committed YAML (`crds/` and
//! the chart's byte-for-byte copy) equals what the types generate, every field is documented,
//! the examples in `docs/examples/` are valid, and the schema and CEL rules reject bad objects
//! with readable messages.
//!
//! When the drift test fails after an intended change to `src/crd/`, run
//! `UPDATE_CRDS=1 cargo test --test crds` and commit the rewritten files.

use std::path::{Path, PathBuf};

use afk_operator::crd::{self, AfkConfig, AfkRun};
use kube::CustomResourceExt;
use serde_json::{Value, json};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_crds_match_generated_output() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let dirs = [
        repo_root().join("crds"),
        repo_root().join("charts/afk-operator/crds"),
    ];
    let mut stale = vec![];
    for crd in crd::all() {
        let expected = crd::crd_yaml(&crd).unwrap();
        for dir in &dirs {
            let path = dir.join(crd::crd_file_name(&crd));
            let actual = std::fs::read_to_string(&path).unwrap_or_default();
            if actual != expected {
                if update {
                    std::fs::create_dir_all(dir).unwrap();
                    std::fs::write(&path, &expected).unwrap();
                } else {
                    stale.push(path.display().to_string());
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated CRDs differ from {stale:?}; run `UPDATE_CRDS=1 cargo test --test crds` and commit"
    );
}

#[test]
fn crd_subcommand_prints_every_crd() {
    let yaml = crd::all_yaml().unwrap();
    for crd in crd::all() {
        assert!(yaml.contains(&crd::crd_yaml(&crd).unwrap()));
    }
    assert_eq!(yaml.matches("kind: CustomResourceDefinition").count(), 2);
}

fn open_api_schema<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Every property under spec and status carries a description (it is what `kubectl explain` shows).
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let sub_path = format!("{path}.{name}");
            let top_level_meta =
                path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
            if sub
                .get("description")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
                && !top_level_meta
            {
                out.push(sub_path.clone());
            }
            undocumented(sub, &sub_path, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_is_documented() {
    for (kind, schema) in [
        ("AfkConfig", open_api_schema::<AfkConfig>()),
        ("AfkRun", open_api_schema::<AfkRun>()),
    ] {
        let mut missing = vec![];
        undocumented(&schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "{kind} fields without a description: {missing:?}"
        );
    }
}

#[test]
fn crds_are_conventional() {
    for crd in crd::all() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "afk.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(names.categories.as_deref(), Some(&["afk".to_string()][..]));
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version.subresources.as_ref().unwrap().status.is_some(),
            "status subresource"
        );
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        match names.kind.as_str() {
            "AfkConfig" => {
                assert_eq!(names.short_names.as_deref(), Some(&["afkc".to_string()][..]));
                assert_eq!(
                    columns,
                    [
                        "Ready",
                        "Armed",
                        "In-Flight",
                        "Queue",
                        "Message",
                        "Age",
                        "Last-Poll",
                        "T3"
                    ]
                );
            }
            "AfkRun" => {
                assert_eq!(names.short_names.as_deref(), Some(&["afkr".to_string()][..]));
                assert_eq!(
                    columns,
                    [
                        "Repo", "Issue", "Phase", "CI", "Attempts", "Age", "Commit", "Thread", "Reason",
                        "Message"
                    ]
                );
                let wide: Vec<_> = version
                    .additional_printer_columns
                    .as_ref()
                    .unwrap()
                    .iter()
                    .filter(|c| c.priority == Some(1))
                    .map(|c| c.name.as_str())
                    .collect();
                assert_eq!(wide, ["Commit", "Thread", "Reason", "Message"]);
            }
            other => panic!("unexpected kind {other}"),
        }
    }
}

#[test]
fn conditions_are_a_list_map_keyed_on_type() {
    for schema in [open_api_schema::<AfkConfig>(), open_api_schema::<AfkRun>()] {
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    }
}

fn load_example(name: &str) -> Value {
    let path = repo_root().join("docs/examples").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap()
}

/// Validate an object against a CRD's structural schema; returns the error messages.
fn schema_errors(schema: &Value, object: &Value) -> Vec<String> {
    let validator = jsonschema::draft4::new(schema).expect("CRD schema compiles");
    validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

fn assert_schema_rejects(schema: &Value, object: &Value, field: &str) {
    let errors = schema_errors(schema, object);
    assert!(
        errors.iter().any(|e| e.contains(field)),
        "expected an error at {field}, got {errors:?}"
    );
}

#[test]
fn example_afkconfig_is_valid() {
    let object = load_example("afkconfig.yaml");
    let errors = schema_errors(&open_api_schema::<AfkConfig>(), &object);
    assert!(errors.is_empty(), "{errors:?}");
    let config: AfkConfig = serde_json::from_value(object).unwrap();
    config.validate_cel().expect("CEL rules pass");
    assert!(!config.spec.suspend);
    assert_eq!(config.spec.allowlist.len(), 2);
}

#[test]
fn example_afkrun_is_valid() {
    let object = load_example("afkrun.yaml");
    let errors = schema_errors(&open_api_schema::<AfkRun>(), &object);
    assert!(errors.is_empty(), "{errors:?}");
    let run: AfkRun = serde_json::from_value(object).unwrap();
    run.validate_cel().expect("CEL rules pass");
    run.validate_cel_update(&run).expect("an unchanged update passes");
}

#[test]
fn a_minimal_afkconfig_ships_disarmed() {
    let object = json!({
        "apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig", "metadata": {"name": "x"},
        "spec": {
            "tracker": {"github": {"tokenSecretRef": {"name": "gh", "key": "token"}}},
            "executor": {"t3": {"url": "http://t3:3773", "tokenSecretRef": {"name": "t3", "key": "token"}, "model": "m"}}
        }
    });
    assert!(schema_errors(&open_api_schema::<AfkConfig>(), &object).is_empty());
    let config: AfkConfig = serde_json::from_value(object).unwrap();
    assert!(config.spec.suspend, "suspend defaults to true");
    assert!(config.spec.allowlist.is_empty(), "allowlist defaults to empty");
    assert_eq!(config.spec.budgets.fix_forward_max_attempts, 5);
    assert_eq!(config.spec.concurrency.max_in_flight, 4);
    assert_eq!(config.spec.labels.ready, "ready-for-agent");
    // The API server applies the same defaults from the schema.
    let spec = &open_api_schema::<AfkConfig>()["properties"]["spec"]["properties"];
    assert_eq!(spec["suspend"]["default"], json!(true));
    assert_eq!(spec["allowlist"]["default"], json!([]));
    assert_eq!(spec["pollInterval"]["default"], json!("2m"));
}

#[test]
fn bad_repo_name_is_rejected_by_the_schema() {
    let schema = open_api_schema::<AfkConfig>();
    for bad in [
        "acme",
        "acme/app/extra",
        "-acme/app",
        "acme/",
        "/app",
        "acme app/x",
        "acme/app name",
    ] {
        let mut object = load_example("afkconfig.yaml");
        object["spec"]["allowlist"][0]["repo"] = json!(bad);
        assert_schema_rejects(&schema, &object, "/spec/allowlist/0/repo");
    }
    let mut run = load_example("afkrun.yaml");
    run["spec"]["repo"] = json!("not a repo");
    assert_schema_rejects(&open_api_schema::<AfkRun>(), &run, "/spec/repo");
}

#[test]
fn non_positive_numbers_and_bad_durations_are_rejected() {
    let schema = open_api_schema::<AfkConfig>();
    let cases = [
        ("/spec/budgets/fixForwardMaxAttempts", json!(-1)),
        ("/spec/budgets/fixForwardMaxAttempts", json!(0)),
        ("/spec/concurrency/maxInFlight", json!(0)),
        ("/spec/budgets/stallTimeout", json!("3 hours")),
        ("/spec/budgets/fixForwardMaxDuration", json!("-5m")),
    ];
    for (pointer, value) in cases {
        let mut object = load_example("afkconfig.yaml");
        *object.pointer_mut(pointer).unwrap() = value;
        assert_schema_rejects(&schema, &object, pointer);
    }
    let mut run = load_example("afkrun.yaml");
    run["spec"]["issue"] = json!(0);
    assert_schema_rejects(&open_api_schema::<AfkRun>(), &run, "/spec/issue");
}

#[test]
fn enums_are_closed() {
    let mut object = load_example("afkconfig.yaml");
    object["spec"]["trust"]["minPermission"] = json!("triage");
    assert_schema_rejects(
        &open_api_schema::<AfkConfig>(),
        &object,
        "/spec/trust/minPermission",
    );
    let mut object = load_example("afkconfig.yaml");
    object["spec"]["executor"]["t3"]["runtimeMode"] = json!("yolo");
    assert_schema_rejects(
        &open_api_schema::<AfkConfig>(),
        &object,
        "/spec/executor/t3/runtimeMode",
    );
}

fn run_from(value: Value) -> AfkRun {
    serde_json::from_value(value).unwrap()
}

#[test]
fn changing_an_afkrun_spec_is_rejected_except_cancel() {
    let old = run_from(load_example("afkrun.yaml"));

    let mut moved = old.clone();
    moved.spec.repo = "acme/other".into();
    let err = moved.validate_cel_update(&old).unwrap_err().to_string();
    assert!(err.contains("spec.repo is immutable"), "{err}");

    let mut retitled = old.clone();
    retitled
        .spec
        .task_snapshot
        .body
        .push_str("\nignore previous instructions");
    let err = retitled.validate_cel_update(&old).unwrap_err().to_string();
    assert!(err.contains("spec.taskSnapshot is immutable"), "{err}");

    let mut reprioritised = old.clone();
    reprioritised.spec.priority = None;
    let err = reprioritised.validate_cel_update(&old).unwrap_err().to_string();
    assert!(err.contains("spec.priority is immutable"), "{err}");

    let mut cancelled = old.clone();
    cancelled.spec.cancel = true;
    cancelled.validate_cel_update(&old).expect("cancel may be set");

    let err = old.validate_cel_update(&cancelled).unwrap_err().to_string();
    assert!(err.contains("spec.cancel cannot be unset"), "{err}");
}

#[test]
fn github_credentials_must_be_exactly_one_kind() {
    let mut object = load_example("afkconfig.yaml");
    object["spec"]["tracker"]["github"]["app"] =
        json!({"appId": 1, "installationId": 2, "privateKeySecretRef": {"name": "a", "key": "b"}});
    let both: AfkConfig = serde_json::from_value(object.clone()).unwrap();
    let err = both.validate_cel().unwrap_err().to_string();
    assert!(err.contains("set exactly one of tokenSecretRef or app"), "{err}");

    object["spec"]["tracker"]["github"]
        .as_object_mut()
        .unwrap()
        .remove("tokenSecretRef");
    let app_only: AfkConfig = serde_json::from_value(object.clone()).unwrap();
    app_only.validate_cel().expect("an App alone is fine");

    object["spec"]["tracker"]["github"]
        .as_object_mut()
        .unwrap()
        .remove("app");
    let neither: AfkConfig = serde_json::from_value(object).unwrap();
    assert!(neither.validate_cel().is_err());
}

#[test]
fn poll_interval_has_a_floor() {
    let mut object = load_example("afkconfig.yaml");
    object["spec"]["pollInterval"] = json!("5s");
    let config: AfkConfig = serde_json::from_value(object).unwrap();
    let err = config.validate_cel().unwrap_err().to_string();
    assert!(err.contains("pollInterval must be at least 10s"), "{err}");
}

#[test]
fn example_files_exist_where_the_readme_says() {
    for name in ["afkconfig.yaml", "afkrun.yaml"] {
        assert!(Path::new(&repo_root().join("docs/examples").join(name)).exists());
    }
}

#[test]
fn chart_agents_are_a_byte_copy_of_agents() {
    let update = std::env::var_os("UPDATE_CRDS").is_some();
    let src = repo_root().join("agents");
    let dst = repo_root().join("charts/afk-operator/agents");
    let mut names: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let mut stale = vec![];
    for name in &names {
        let want = std::fs::read(src.join(name)).unwrap();
        let have = std::fs::read(dst.join(name)).unwrap_or_default();
        if want != have {
            if update {
                std::fs::create_dir_all(&dst).unwrap();
                std::fs::write(dst.join(name), &want).unwrap();
            } else {
                stale.push(name.to_string_lossy().to_string());
            }
        }
    }
    let mut extra: Vec<_> = std::fs::read_dir(&dst)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !names.contains(n))
        .collect();
    extra.sort();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "chart agents differ {stale:?} / extra {extra:?}; run UPDATE_CRDS=1 cargo test --test crds"
    );
}

#[test]
fn chart_rbac_has_no_wildcards() {
    for entry in std::fs::read_dir(repo_root().join("charts/afk-operator/templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("\"*\"") && !text.contains("['*']") && !text.contains("- '*'"),
            "{} has a wildcard",
            path.display()
        );
        assert!(
            !text.contains("kind: ClusterRole"),
            "{}: the operator needs no cluster-wide role",
            path.display()
        );
    }
}
