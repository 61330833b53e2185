//! The alerting the chart ships (`charts/afk-operator/alerts/afk-operator.rules.yaml`, the
//! PrometheusRule's spec, and `charts/afk-operator/dashboards/afk-operator.json`) names only
//! metrics the binary exports at `/metrics`, covers what the operator promises to alert on and
//! chart, and is well formed. PromQL syntax and alert behaviour are checked by promtool in CI
//! (`promtool check rules`, `promtool test rules tests/prometheus/alerts_test.yaml`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use afk_operator::{
    crd::Phase,
    metrics::{self, Metrics},
};
use regex::Regex;
use serde_json::Value;

fn chart_file(rel: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("charts/afk-operator")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A scrape of `/metrics` with one series in every labelled family (an empty family renders
/// nothing, not even its `# TYPE` line).
fn scrape() -> String {
    let m = Metrics::new();
    m.runs
        .get_or_create(&metrics::Phase {
            phase: Phase::WaitingForHuman.as_str().into(),
        })
        .set(1);
    m.dispatches
        .get_or_create(&metrics::Result_ { result: "ok".into() })
        .inc();
    m.escalations
        .get_or_create(&metrics::Kind {
            kind: "frozen".into(),
        })
        .inc();
    drop(m.time_reconcile("afkrun"));
    m.reconcile_errors
        .get_or_create(&metrics::ErrorLabels {
            controller: "afkrun".into(),
            category: "kube".into(),
        })
        .inc();
    let config = metrics::ConfigLabel {
        config: "afk/team".into(),
    };
    m.config_ready.get_or_create(&config).set(1);
    m.executor_token_expiry.get_or_create(&config).set(1_800_000_000);
    m.requests
        .get_or_create(&metrics::RouteStatus {
            route: "/v1/models".into(),
            status: 200,
        })
        .inc();
    m.cli_failure("timeout");
    m.render()
}

/// `series name -> label names` of every series a scrape can contain, from the `# TYPE` lines and
/// samples: counters as `_total`, histograms as `_bucket`, `_sum` and `_count`, gauges as they are.
fn exported_series() -> BTreeMap<String, BTreeSet<String>> {
    let text = scrape();
    let mut names = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let series: Vec<String> = match kind {
            "counter" => vec![format!("{name}_total")],
            "histogram" => ["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")).into(),
            "gauge" => vec![name.to_string()],
            other => panic!("metric {name} has a type this test does not know: {other}"),
        };
        for s in series {
            names.insert(s, BTreeSet::new());
        }
    }
    let sample = Regex::new(r#"^(afk_[a-z0-9_]+)\{([^}]*)\}"#).unwrap();
    let label = Regex::new(r#"(\w+)="#).unwrap();
    for line in text.lines() {
        if let Some(c) = sample.captures(line) {
            let labels = names
                .get_mut(&c[1])
                .unwrap_or_else(|| panic!("{line}: no # TYPE"));
            labels.extend(label.captures_iter(&c[2]).map(|l| l[1].to_string()));
        }
    }
    for family in [
        "afk_runs",
        "afk_escalations_total",
        "afk_config_ready",
        "afk_dispatch_latency_seconds_bucket",
    ] {
        assert!(names.contains_key(family), "{family} not parsed from\n{text}");
    }
    names
}

/// Labels the scrape adds to every series (Prometheus target labels), not the operator.
const TARGET_LABELS: [&str; 5] = ["namespace", "pod", "instance", "job", "service"];

/// Every `afk_*` series an expression selects, and every label it matches it on must exist; a
/// `phase` label value must be a phase.
fn check_expr(what: &str, expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let metrics = metric_names(expr);
    for metric in &metrics {
        assert!(
            exported.contains_key(metric),
            "{what} uses {metric}, which /metrics does not export"
        );
    }
    let selector = Regex::new(r#"\b(afk_[a-z0-9_]+)\{([^}]*)\}"#).unwrap();
    let matcher = Regex::new(r#"(\w+)\s*(?:=~|!~|!=|=)\s*"([^"]*)""#).unwrap();
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    for c in selector.captures_iter(expr) {
        for m in matcher.captures_iter(&c[2]) {
            let (name, value) = (&m[1], &m[2]);
            assert!(
                TARGET_LABELS.contains(&name) || exported[&c[1]].contains(name),
                "{what}: {} has no label {name}",
                &c[1]
            );
            if name == "phase" {
                assert!(phases.contains(&value), "{what}: no phase {value}");
            }
        }
    }
    metrics
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let re = Regex::new(r"\bafk_[a-z0-9_]+").unwrap();
    re.find_iter(expr).map(|m| m.as_str().to_string()).collect()
}

/// `alert name -> rule` of every alerting rule.
fn alerts() -> BTreeMap<String, serde_yaml::Value> {
    let file: serde_yaml::Value =
        serde_yaml::from_str(&chart_file("alerts/afk-operator.rules.yaml")).unwrap();
    let mut out = BTreeMap::new();
    for group in file["groups"].as_sequence().expect("groups") {
        assert!(
            group["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("afk-operator."))
        );
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alerting rules only").to_string();
            assert!(
                out.insert(name.clone(), rule.clone()).is_none(),
                "duplicate alert {name}"
            );
        }
    }
    out
}

/// `panel title -> PromQL expressions` of the dashboard.
fn dashboard_queries() -> BTreeMap<String, Vec<String>> {
    let dash: Value = serde_json::from_str(&chart_file("dashboards/afk-operator.json")).unwrap();
    let mut out = BTreeMap::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap().to_string();
        let exprs = panel["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| t["expr"].as_str().expect("expr").to_string())
            .collect();
        out.insert(title, exprs);
    }
    out
}

#[test]
fn rules_and_dashboard_name_only_exported_metrics() {
    let exported = exported_series();
    let mut used = BTreeSet::new();
    for (name, rule) in alerts() {
        used.extend(check_expr(
            &format!("alert {name}"),
            rule["expr"].as_str().unwrap(),
            &exported,
        ));
    }
    for (title, exprs) in dashboard_queries() {
        for expr in exprs {
            let metrics = check_expr(&format!("panel {title}"), &expr, &exported);
            assert!(!metrics.is_empty(), "panel {title}: {expr} names no afk metric");
            used.extend(metrics);
        }
    }
    // The scan is not vacuous: it saw counters, histograms and gauges.
    for m in [
        "afk_escalations_total",
        "afk_dispatch_latency_seconds_bucket",
        "afk_runs",
    ] {
        assert!(used.contains(m), "{m} not seen in {used:?}");
    }
}

#[test]
fn the_promised_alerts_exist_and_read_well() {
    let alerts = alerts();
    // SPEC §5 / issue 14: run frozen / needs human / waiting for an answer, AfkConfig not Ready,
    // T3 token expiring, GitHub rate limit low, reconcile errors.
    for (name, metric) in [
        ("AfkRunFrozen", "afk_escalations_total"),
        ("AfkRunNeedsHuman", "afk_escalations_total"),
        ("AfkRunWaitingForHuman", "afk_runs"),
        ("AfkConfigNotReady", "afk_config_ready"),
        (
            "AfkExecutorTokenExpiring",
            "afk_executor_token_expiry_timestamp_seconds",
        ),
        ("AfkGitHubRateLimitLow", "afk_github_rate_limit_limit"),
        ("AfkReconcileErrors", "afk_reconcile_errors_total"),
    ] {
        let rule = alerts.get(name).unwrap_or_else(|| panic!("alert {name} missing"));
        assert!(
            metric_names(rule["expr"].as_str().unwrap()).contains(metric),
            "{name} should watch {metric}"
        );
    }
    assert!(
        alerts["AfkRunWaitingForHuman"]["expr"]
            .as_str()
            .unwrap()
            .contains(r#"phase="WaitingForHuman""#)
    );
    assert_eq!(alerts["AfkConfigNotReady"]["for"].as_str(), Some("10m"));
    assert!(
        alerts["AfkExecutorTokenExpiring"]["expr"]
            .as_str()
            .unwrap()
            .contains("7 * 86400")
    );
    assert!(
        alerts["AfkGitHubRateLimitLow"]["expr"]
            .as_str()
            .unwrap()
            .contains("< 0.1")
    );
    for (name, rule) in &alerts {
        assert!(name.starts_with("Afk"), "{name}: alert names start with Afk");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("info" | "warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 10, "{name}: annotation {key} says too little");
        }
    }
}

#[test]
fn the_dashboard_charts_what_it_promises_and_is_importable() {
    let dash: Value = serde_json::from_str(&chart_file("dashboards/afk-operator.json")).unwrap();
    assert_eq!(dash["uid"], "afk-operator");
    let queries = dashboard_queries();
    let all: String = queries.values().flatten().cloned().collect::<Vec<_>>().join("\n");
    // Issue 14: runs by phase, time to dispatch, fix-forward attempts, GitHub budget, voice time to
    // first token, breakglass sessions.
    for metric in [
        "afk_runs",
        "afk_dispatch_latency_seconds_bucket",
        "afk_fix_forwards_total",
        "afk_github_rate_limit_remaining",
        "afk_chat_time_to_first_token_seconds_bucket",
        "afk_breakglass_sessions",
    ] {
        assert!(metric_names(&all).contains(metric), "no panel charts {metric}");
    }
    // Importable anywhere: every panel and query uses the data source variable, ids are unique,
    // panels do not overlap on the grid.
    let variables: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(variables.contains(&"datasource"));
    let variable = Regex::new(r"\$(\w+)").unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate panel id");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        for t in panel["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            let expr = t["expr"].as_str().unwrap();
            for var in variable.captures_iter(expr) {
                let var = &var[1];
                assert!(
                    var.starts_with("__") || variables.contains(&var),
                    "{expr}: unknown variable ${var}"
                );
            }
        }
        let g = &panel["gridPos"];
        let (x, y, w, h) = [&g["x"], &g["y"], &g["w"], &g["h"]]
            .map(|v| v.as_u64().unwrap())
            .into();
        assert!(x + w <= 24, "{} is wider than the grid", panel["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    panel["title"]
                );
            }
        }
    }
}
