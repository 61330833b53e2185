//! What an AfkConfig's conditions say (SPEC §1.1, kstatus honestly): one pure function from what
//! the reconcile found — spec problems, Secrets that are missing or unreadable, whether the loop
//! is disarmed, how GitHub and T3 answered authenticated probes, when the T3 token expires — to
//! every condition with its reason and message, plus the one-line summary the `Message` printer
//! column shows. `Ready` is True only when nothing is stalled, the loop is armed and both
//! backends answered **and accepted their credentials**; `Armed` is never True while `Stalled`.

use std::time::Duration;

use jiff::Timestamp;

use crate::crd::condition::{reasons, types};

/// How long before expiry the T3 token is reported (tokens last 30 days by default).
pub const TOKEN_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// What an authenticated probe of a backend found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Not asked this time (disarmed or stalled): the condition keeps what it said last.
    NotProbed,
    /// It answered and accepted the credentials.
    Ok,
    /// It answered and refused the credentials (401/403, or T3's `authenticated: false`).
    Unauthorized(String),
    /// It did not answer usefully (transport error, 5xx, rate limit).
    Unreachable(String),
}

/// Everything the conditions are derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFacts {
    /// The spec cannot be acted on (reason, message), e.g. a bad duration.
    pub invalid: Option<(&'static str, String)>,
    /// Referenced Secrets that are missing or unreadable: (reason, one message naming all).
    pub secrets: Option<(&'static str, String)>,
    /// Disarmed on purpose: (reason — one of `reasons::DISARMED` — and message).
    pub disarmed: Option<(&'static str, String)>,
    /// GitHub.
    pub tracker: Probe,
    /// T3.
    pub executor: Probe,
    /// When the T3 token expires, if T3 said.
    pub token_expires_at: Option<Timestamp>,
    /// How to mint a new token (named in the expiry warning).
    pub token_hint: String,
    /// The first poll after a spec change is running now.
    pub reconciling: bool,
    /// Now.
    pub now: Timestamp,
}

/// One condition to write. `status` is `True`, `False` or `Unknown`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionValue {
    /// The type.
    pub type_: &'static str,
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human detail.
    pub message: String,
    /// Whether this value is abnormal (a Warning Event on transition).
    pub abnormal: bool,
}

fn value(
    type_: &'static str,
    ok: bool,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> ConditionValue {
    ConditionValue {
        type_,
        status: if status { "True" } else { "False" },
        reason,
        message: message.into(),
        abnormal: !ok,
    }
}

fn probe_condition(type_: &'static str, what: &str, probe: &Probe) -> Option<ConditionValue> {
    match probe {
        Probe::NotProbed => None,
        Probe::Ok => Some(value(
            type_,
            true,
            true,
            reasons::REACHABLE,
            format!("{what} answered an authenticated request"),
        )),
        Probe::Unauthorized(why) => Some(value(type_, false, false, reasons::UNAUTHORIZED, why.clone())),
        Probe::Unreachable(why) => Some(value(type_, false, false, reasons::UNREACHABLE, why.clone())),
    }
}

/// The conditions, in the order `kubectl describe` shows them best. A condition that is not
/// returned (a probe that was not made) keeps its previous value.
pub fn conditions(f: &ConfigFacts) -> Vec<ConditionValue> {
    let stalled = f.invalid.clone().or_else(|| f.secrets.clone());
    let mut out = vec![];

    // Ready: the first thing in the way, in order of what a human must fix first.
    let tracker_problem = match &f.tracker {
        Probe::Unauthorized(m) => Some((reasons::UNAUTHORIZED, format!("GitHub: {m}"))),
        Probe::Unreachable(m) => Some((reasons::UNREACHABLE, format!("GitHub: {m}"))),
        _ => None,
    };
    let executor_problem = match &f.executor {
        Probe::Unauthorized(m) => Some((reasons::UNAUTHORIZED, format!("T3: {m}"))),
        Probe::Unreachable(m) => Some((reasons::UNREACHABLE, format!("T3: {m}"))),
        _ => None,
    };
    let not_ready = stalled
        .clone()
        .or_else(|| f.disarmed.clone())
        .or(tracker_problem)
        .or(executor_problem);
    out.push(match not_ready {
        Some((reason, message)) => {
            let disarmed = f.disarmed.as_ref().is_some_and(|(r, _)| *r == reason) && stalled.is_none();
            // Disarmed on purpose is not a fault (Argo CD shows it Suspended, not Degraded).
            value(types::READY, disarmed, false, reason, message)
        }
        None if f.tracker == Probe::Ok && f.executor == Probe::Ok => value(
            types::READY,
            true,
            true,
            reasons::READY,
            "armed; GitHub and T3 accept their credentials",
        ),
        // Armed but not (yet) probed: say so rather than guess.
        None => ConditionValue {
            type_: types::READY,
            status: "Unknown",
            reason: reasons::PROBING,
            message: "waiting for the first authenticated probe of GitHub and T3".into(),
            abnormal: false,
        },
    });
    out.push(match &stalled {
        Some((reason, message)) => value(types::STALLED, false, true, reason, message.clone()),
        None => value(types::STALLED, true, false, reasons::RECONCILED, ""),
    });
    out.push(if f.reconciling {
        value(
            types::RECONCILING,
            true,
            true,
            reasons::POLLING,
            "polling after a spec change",
        )
    } else {
        value(types::RECONCILING, true, false, reasons::RECONCILED, "")
    });
    out.push(match (&stalled, &f.disarmed) {
        (Some((_, message)), _) => value(
            types::ARMED,
            false,
            false,
            reasons::STALLED,
            format!("not dispatching: {message}"),
        ),
        (None, Some((reason, message))) => value(types::ARMED, true, false, reason, message.clone()),
        (None, None) => value(
            types::ARMED,
            true,
            true,
            reasons::ARMED,
            "dispatching ready issues",
        ),
    });
    out.extend(probe_condition(types::TRACKER_REACHABLE, "GitHub", &f.tracker));
    out.extend(probe_condition(types::EXECUTOR_REACHABLE, "T3", &f.executor));
    if f.executor == Probe::Ok {
        out.push(match f.token_expires_at {
            Some(at) => {
                let left = at.duration_since(f.now);
                let left_secs = left.as_secs().max(0);
                if left_secs < TOKEN_WARNING.as_secs() as i64 {
                    value(
                        types::TOKEN_EXPIRING,
                        false,
                        true,
                        reasons::TOKEN_EXPIRES_SOON,
                        format!(
                            "the T3 token expires at {at} (in {}); mint a new one: {}",
                            human_duration(left_secs),
                            f.token_hint
                        ),
                    )
                } else {
                    value(
                        types::TOKEN_EXPIRING,
                        true,
                        false,
                        reasons::TOKEN_VALID,
                        format!("the T3 token expires at {at}"),
                    )
                }
            }
            None => value(
                types::TOKEN_EXPIRING,
                true,
                false,
                reasons::NO_EXPIRY,
                "T3 reported no expiry",
            ),
        });
    }
    out
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86400 => format!("{} days", s / 86400),
        s if s >= 2 * 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s / 60),
    }
}

/// The message of the first condition that is not as it should be (the `Message` column), or
/// `None` when all is well.
pub fn summary(conditions: &[ConditionValue]) -> Option<String> {
    [
        types::STALLED,
        types::READY,
        types::ARMED,
        types::TRACKER_REACHABLE,
        types::EXECUTOR_REACHABLE,
        types::TOKEN_EXPIRING,
    ]
    .iter()
    .filter_map(|t| conditions.iter().find(|c| c.type_ == *t))
    .find(|c| c.abnormal || c.status == "Unknown")
    .or_else(|| {
        // Disarmed on purpose is not abnormal, but it is what a human wants to read.
        conditions
            .iter()
            .find(|c| c.type_ == types::READY && c.status == "False")
    })
    .map(|c| c.message.clone())
    .filter(|m| !m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn healthy() -> ConfigFacts {
        ConfigFacts {
            invalid: None,
            secrets: None,
            disarmed: None,
            tracker: Probe::Ok,
            executor: Probe::Ok,
            token_expires_at: Some(t(30 * 86400)),
            token_hint: "t3 auth session issue".into(),
            reconciling: false,
            now: t(0),
        }
    }

    fn get<'a>(c: &'a [ConditionValue], type_: &str) -> &'a ConditionValue {
        c.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn healthy_is_ready_with_no_summary() {
        let c = conditions(&healthy());
        assert_eq!(get(&c, "Ready").status, "True");
        assert_eq!(get(&c, "Armed").status, "True");
        assert_eq!(get(&c, "Stalled").status, "False");
        assert_eq!(get(&c, "TokenExpiring").status, "False");
        assert_eq!(summary(&c), None);
    }

    #[test]
    fn a_wrong_github_token_is_not_ready() {
        let c = conditions(&ConfigFacts {
            tracker: Probe::Unauthorized("bad credentials".into()),
            ..healthy()
        });
        let ready = get(&c, "Ready");
        assert_eq!((ready.status, ready.reason), ("False", "Unauthorized"));
        assert!(ready.abnormal);
        assert_eq!(get(&c, "TrackerReachable").reason, "Unauthorized");
        assert_eq!(summary(&c).unwrap(), "GitHub: bad credentials");
    }

    #[test]
    fn an_unreachable_or_unauthorized_t3_is_not_ready() {
        for (probe, reason) in [
            (Probe::Unreachable("connection failed".into()), "Unreachable"),
            (Probe::Unauthorized("authenticated: false".into()), "Unauthorized"),
        ] {
            let c = conditions(&ConfigFacts {
                executor: probe,
                ..healthy()
            });
            assert_eq!(
                (get(&c, "Ready").status, get(&c, "Ready").reason),
                ("False", reason)
            );
            assert_eq!(get(&c, "ExecutorReachable").reason, reason);
            assert!(
                c.iter().all(|c| c.type_ != "TokenExpiring"),
                "no expiry claim without a valid token"
            );
        }
    }

    #[test]
    fn missing_secrets_stall_and_disarm() {
        let c = conditions(&ConfigFacts {
            secrets: Some((
                "SecretMissing",
                "Secret \"gh\" not found; Secret \"t3\" not found".into(),
            )),
            tracker: Probe::NotProbed,
            executor: Probe::NotProbed,
            ..healthy()
        });
        assert_eq!(get(&c, "Stalled").status, "True");
        assert_eq!(get(&c, "Armed").status, "False");
        assert_eq!(get(&c, "Ready").reason, "SecretMissing");
        assert!(summary(&c).unwrap().contains("\"t3\""));
        assert!(
            c.iter().all(|c| c.type_ != "TrackerReachable"),
            "not probed: kept as it was"
        );
    }

    #[test]
    fn disarmed_is_not_ready_but_not_a_fault() {
        let c = conditions(&ConfigFacts {
            disarmed: Some(("Suspended", "spec.suspend is true".into())),
            tracker: Probe::NotProbed,
            executor: Probe::NotProbed,
            ..healthy()
        });
        let ready = get(&c, "Ready");
        assert_eq!(
            (ready.status, ready.reason, ready.abnormal),
            ("False", "Suspended", false)
        );
        assert_eq!(summary(&c).unwrap(), "spec.suspend is true");
    }

    #[test]
    fn the_token_warning_starts_seven_days_before_expiry() {
        let at = |secs| {
            conditions(&ConfigFacts {
                token_expires_at: Some(t(secs)),
                ..healthy()
            })
        };
        let c = at(7 * 86400);
        assert_eq!(get(&c, "TokenExpiring").status, "False");
        let c = at(7 * 86400 - 1);
        let w = get(&c, "TokenExpiring");
        assert_eq!(
            (w.status, w.reason, w.abnormal),
            ("True", "TokenExpiresSoon", true)
        );
        assert!(
            w.message.contains("t3 auth session issue") && w.message.contains("6 days"),
            "{}",
            w.message
        );
        assert_eq!(get(&c, "Ready").status, "True", "still works until it expires");
        assert_eq!(summary(&c).unwrap(), w.message);
    }

    proptest! {
        /// kstatus honestly: Ready only when everything holds; Armed never True while Stalled;
        /// every abnormal state has a message.
        #[test]
        fn ready_means_everything_holds(
            invalid in any::<bool>(), secrets in any::<bool>(), disarmed in any::<bool>(),
            tracker in 0usize..4, executor in 0usize..4, expiry in proptest::option::of(-10i64..40),
            reconciling in any::<bool>(),
        ) {
            let probe = |i: usize| [Probe::NotProbed, Probe::Ok, Probe::Unauthorized("u".into()), Probe::Unreachable("x".into())][i].clone();
            let f = ConfigFacts {
                invalid: invalid.then(|| ("InvalidSpec", "bad".to_string())),
                secrets: secrets.then(|| ("SecretMissing", "gone".to_string())),
                disarmed: disarmed.then(|| ("Suspended", "suspended".to_string())),
                tracker: probe(tracker), executor: probe(executor),
                token_expires_at: expiry.map(|d| t(d * 86400)),
                token_hint: "hint".into(), reconciling, now: t(0),
            };
            let c = conditions(&f);
            let ready = get(&c, "Ready");
            prop_assert_eq!(
                ready.status == "True",
                !invalid && !secrets && !disarmed && f.tracker == Probe::Ok && f.executor == Probe::Ok
            );
            if get(&c, "Stalled").status == "True" {
                prop_assert_eq!(get(&c, "Armed").status, "False");
            }
            for v in &c {
                if v.abnormal {
                    prop_assert!(!v.message.is_empty(), "{:?}", v);
                }
            }
            prop_assert_eq!(get(&c, "Reconciling").status == "True", reconciling);
            prop_assert_eq!(summary(&c).is_none(), ready.status == "True" && c.iter().all(|v| !v.abnormal));
        }
    }
}
