//! The shipped Argo CD health checks (`deploy/argocd/*.lua`) speak the operator's vocabulary: the
//! run script has a verdict for every `Phase` (and nothing else), the config script suspends for
//! exactly the disarm reasons and degrades for every other `Ready=False`. Verdicts are computed by
//! running the Lua on objects serialized from the real status types, as Argo CD would.
//! `tests/lua/health_test.lua` covers every branch of the scripts in plain Lua for CI.

#[path = "support/argo.rs"]
mod argo;

use std::collections::BTreeSet;

use afk_operator::crd::{
    AfkConfigStatus, AfkRun, AfkRunStatus, Phase,
    condition::{Status, reasons, set_condition, types},
};
use argo::{AFKCONFIG_SCRIPT, AFKRUN_SCRIPT, argo_health, config_health, run_health};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResourceExt;
use serde_json::{Value, json};

/// What Argo CD must show for each phase. An exhaustive match: a new phase does not compile until
/// its verdict is decided here (and then in the Lua).
fn expected_verdict(phase: Phase) -> &'static str {
    match phase {
        Phase::Succeeded => "Healthy",
        Phase::NeedsHuman | Phase::Frozen | Phase::Failed => "Degraded",
        Phase::Cancelled | Phase::WaitingForHuman => "Suspended",
        Phase::Pending | Phase::Dispatching | Phase::Working | Phase::Verifying | Phase::FixingForward => {
            "Progressing"
        }
    }
}

/// The keys of the Lua table literal `local <name> = { Key = ..., ... }` in `script`.
fn lua_table_keys(script: &str, name: &str) -> BTreeSet<String> {
    let start = script
        .find(&format!("local {name} = {{"))
        .unwrap_or_else(|| panic!("no `local {name} = {{` table in the script"));
    let body = &script[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    body.split([',', '\n'])
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, _)| key.trim().to_string())
        .filter(|key| !key.is_empty())
        .collect()
}

fn run_object(phase: Phase, message: Option<&str>, reason: Option<&str>) -> Value {
    let status = AfkRunStatus {
        phase: Some(phase),
        message: message.map(str::to_string),
        reason: reason.map(str::to_string),
        ..Default::default()
    };
    json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkRun", "metadata": {"name": "r", "generation": 1},
           "status": status})
}

fn now() -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())
}

fn config_object(generation: i64, observed: i64, conditions: Vec<Condition>) -> Value {
    let status = AfkConfigStatus {
        observed_generation: Some(observed),
        conditions,
        in_flight: 2,
        queue_length: 5,
        ..Default::default()
    };
    json!({"apiVersion": "afk.dev/v1alpha1", "kind": "AfkConfig",
           "metadata": {"name": "c", "generation": generation}, "status": status})
}

/// Conditions as the controller writes them: `Ready` with `reason`/`message`, the rest healthy.
fn conditions(ready: Status, reason: &str, message: &str) -> Vec<Condition> {
    let mut c = vec![];
    let g = Some(1);
    set_condition(
        &mut c,
        types::STALLED,
        Status::False,
        reasons::RECONCILED,
        "",
        g,
        &now(),
    );
    set_condition(
        &mut c,
        types::RECONCILING,
        Status::False,
        reasons::RECONCILED,
        "",
        g,
        &now(),
    );
    set_condition(&mut c, types::READY, ready, reason, message, g, &now());
    c
}

#[test]
fn phase_all_is_the_crd_phase_enum() {
    let crd = serde_json::to_value(AfkRun::crd()).unwrap();
    let schema_enum: Vec<String> = serde_json::from_value(
        crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/phase/enum")
            .expect("status.phase has an enum")
            .clone(),
    )
    .unwrap();
    let all: Vec<String> = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
    assert_eq!(
        all, schema_enum,
        "Phase::ALL lists every phase, in declaration order"
    );
    for p in Phase::ALL {
        assert_eq!(
            serde_json::to_value(p).unwrap(),
            json!(p.as_str()),
            "as_str is the wire spelling"
        );
    }
}

#[test]
fn run_script_names_exactly_the_operator_phases() {
    let in_lua = lua_table_keys(AFKRUN_SCRIPT, "verdicts");
    let in_rust: BTreeSet<String> = Phase::ALL.iter().map(|p| p.as_str().to_string()).collect();
    assert_eq!(in_lua, in_rust);
}

#[test]
fn run_verdict_for_every_phase() {
    for phase in Phase::ALL {
        let (status, message) = run_health(&run_object(phase, Some("waiting for CI"), None));
        assert_eq!(status, expected_verdict(phase), "verdict for {}", phase.as_str());
        assert_eq!(message, format!("{}: waiting for CI", phase.as_str()));
    }
}

#[test]
fn run_message_falls_back_to_reason_and_never_hides_the_phase() {
    let obj = run_object(Phase::Failed, None, Some("ExecutorUnauthorized"));
    assert_eq!(obj["status"].get("message"), None, "None is not serialized");
    assert_eq!(
        run_health(&obj),
        ("Degraded".into(), "Failed: ExecutorUnauthorized".into())
    );
    // A JSON null (as a merge patch can leave) is Lua nil, as in Argo CD.
    let obj =
        json!({"status": {"phase": "WaitingForHuman", "message": null, "reason": "AgentAskedForInput"}});
    assert_eq!(
        run_health(&obj),
        ("Suspended".into(), "WaitingForHuman: AgentAskedForInput".into())
    );
    assert_eq!(run_health(&json!({"metadata": {"name": "r"}})).0, "Progressing");
    let (status, message) = run_health(&json!({"status": {"phase": "Teleporting"}}));
    assert_eq!(status, "Progressing");
    assert!(message.contains("Unknown phase Teleporting"), "{message}");
}

#[test]
fn config_script_disarm_reasons_are_the_operator_ones() {
    let in_lua = lua_table_keys(AFKCONFIG_SCRIPT, "disarmed");
    let in_rust: BTreeSet<String> = reasons::DISARMED.iter().map(|r| r.to_string()).collect();
    assert_eq!(in_lua, in_rust);
}

#[test]
fn config_disarmed_on_purpose_is_suspended() {
    for reason in reasons::DISARMED {
        let obj = config_object(1, 1, conditions(Status::False, reason, "on purpose"));
        assert_eq!(
            config_health(&obj),
            ("Suspended".into(), format!("{reason}: on purpose")),
            "reason {reason}"
        );
    }
}

#[test]
fn config_not_ready_for_any_other_reason_is_degraded() {
    for reason in [
        "Unauthorized",
        reasons::UNREACHABLE,
        "SecretMissing",
        "SecretUnreadable",
        reasons::INVALID_SPEC,
        "ConfigError",
        reasons::ARMED,
    ] {
        let message = format!("{reason}: GitHub answered 401 Bad credentials");
        let obj = config_object(1, 1, conditions(Status::False, reason, &message));
        assert_eq!(
            config_health(&obj),
            ("Degraded".into(), message),
            "reason {reason}"
        );
    }
}

#[test]
fn config_stalled_is_degraded_even_while_disarmed() {
    let mut c = conditions(Status::False, reasons::SUSPENDED, "spec.suspend is true");
    let msg = "Secret afk-t3 is not readable: add it to the chart's secretNames";
    set_condition(
        &mut c,
        types::STALLED,
        Status::True,
        "SecretUnreadable",
        msg,
        Some(1),
        &now(),
    );
    assert_eq!(
        config_health(&config_object(1, 1, c)),
        ("Degraded".into(), msg.into())
    );
}

#[test]
fn config_progressing_ready_and_healthy() {
    assert_eq!(
        config_health(&json!({"metadata": {"generation": 1}})).0,
        "Progressing"
    );
    let behind = config_object(2, 1, conditions(Status::True, reasons::RECONCILED, ""));
    assert_eq!(config_health(&behind).0, "Progressing");
    let mut c = conditions(Status::False, "Unauthorized", "GitHub answered 401");
    set_condition(
        &mut c,
        types::RECONCILING,
        Status::True,
        "Polling",
        "first poll",
        Some(1),
        &now(),
    );
    assert_eq!(
        config_health(&config_object(1, 1, c)),
        ("Progressing".into(), "first poll".into())
    );
    let healthy = config_object(1, 1, conditions(Status::True, reasons::RECONCILED, ""));
    assert_eq!(
        argo_health(AFKCONFIG_SCRIPT, &healthy),
        ("Healthy".into(), "Armed; 2 in flight, 5 queued".into())
    );
}

#[test]
fn config_script_degrades_for_every_fault_reason_the_operator_writes() {
    let disarm = lua_table_keys(AFKCONFIG_SCRIPT, "disarmed");
    let verdicts: Vec<(&str, bool, String)> = reasons::CONFIG_FAULTS
        .iter()
        .map(|reason| {
            let c = conditions(Status::False, reason, "to fix");
            (
                *reason,
                disarm.contains(*reason),
                config_health(&config_object(1, 1, c)).0,
            )
        })
        .collect();
    let expected: Vec<(&str, bool, String)> = reasons::CONFIG_FAULTS
        .iter()
        .map(|reason| (*reason, false, "Degraded".to_string()))
        .collect();
    assert_eq!(verdicts, expected, "(reason, in the Lua disarm table, verdict)");
}

#[test]
fn run_script_shows_every_run_reason_with_every_phase() {
    for phase in Phase::ALL {
        for reason in reasons::RUN {
            let (status, message) = run_health(&run_object(phase, None, Some(reason)));
            assert_eq!(status, expected_verdict(phase), "{} / {reason}", phase.as_str());
            assert_eq!(message, format!("{}: {reason}", phase.as_str()));
        }
    }
}
