//! VM power verbs: the path with no AI in it. `GET /api/breakglass/pve/verbs` lists the whitelist;
//! `POST /api/breakglass/pve/{verb}` runs `ssh <target> <verb>` — no shell, `BatchMode=yes`, a
//! connect timeout, an overall timeout that kills the process group, output capped. The verb is
//! matched exactly against the whitelist before anything is spawned, so `status; reboot`,
//! `STATUS` or `../start` are a 400 and never reach a process; the remote side (a forced
//! command on the hypervisor) sees one argv word it also whitelists. Mutating verbs need
//! `{"confirm": true}`. At most `--pve-max-concurrent` verbs run at once (more is a 429). Every
//! call, run or refused, leaves one audit record: who, verb, result, reason, status.

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tokio::{io::AsyncReadExt, process::Command, sync::Semaphore};

use super::{SidecarState, auth::Caller, error::ApiError};
use crate::args::BreakglassArgs;

/// The verbs, in the order the console shows them.
pub const VERBS: [&str; 6] = ["status", "forensics", "reset", "stop", "start", "cycle"];
/// The verbs that change the machine's power state (they need a confirmation).
pub const MUTATING: [&str; 4] = ["reset", "stop", "start", "cycle"];
/// Output kept per stream.
pub const MAX_OUTPUT: usize = 64 * 1024;
/// ssh's own connect timeout.
const CONNECT_TIMEOUT_SECS: u64 = 10;

/// The verb, if `raw` is exactly one of the whitelist (no trimming, no case folding).
pub fn parse_verb(raw: &str) -> Option<&'static str> {
    VERBS.iter().copied().find(|v| *v == raw)
}

/// Whether `verb` changes power state.
pub fn is_mutating(verb: &str) -> bool {
    MUTATING.contains(&verb)
}

/// Whether an ssh destination is plausible and cannot be read as an option.
pub fn valid_target(target: &str) -> bool {
    !target.is_empty()
        && !target.starts_with('-')
        && target.len() <= 255
        && target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ':' | '[' | ']'))
}

/// How verbs are run.
#[derive(Clone, Debug)]
pub struct PowerVerbs {
    program: PathBuf,
    target: Option<String>,
    key_file: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    timeout: Duration,
    /// Verbs running now (at most `--pve-max-concurrent`).
    running: Arc<Semaphore>,
}

impl PowerVerbs {
    /// From the flags. An invalid target is treated as unset (and logged).
    pub fn new(args: &BreakglassArgs) -> Self {
        let target = args.pve_ssh_target.clone().filter(|t| {
            let ok = valid_target(t);
            if !ok {
                tracing::error!("--pve-ssh-target is not a valid ssh destination; power verbs are disabled");
            }
            ok
        });
        Self {
            program: args.pve_ssh_program.clone(),
            target,
            key_file: args.pve_ssh_key_file.clone(),
            known_hosts: args.pve_known_hosts_file.clone(),
            timeout: Duration::from_secs(args.pve_timeout_secs),
            running: Arc::new(Semaphore::new(args.pve_max_concurrent as usize)),
        }
    }

    /// The ssh argv for `verb` (the program not included).
    pub fn argv(&self, target: &str, verb: &'static str) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
            "-T".into(),
        ];
        if let Some(key) = &self.key_file {
            args.extend([
                "-i".into(),
                key.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        if let Some(known) = &self.known_hosts {
            args.extend([
                "-o".into(),
                "StrictHostKeyChecking=yes".into(),
                "-o".into(),
                format!("UserKnownHostsFile={}", known.display()),
            ]);
        }
        args.extend(["--".into(), target.to_string(), verb.to_string()]);
        args
    }
}

/// Body of `GET /api/breakglass/pve/verbs` (fields alphabetical: the former `json!` order).
#[derive(Debug, Serialize)]
pub struct VerbList {
    /// Whether a target is configured (verbs answer 503 otherwise).
    pub configured: bool,
    /// The verbs that need `{"confirm": true}`.
    pub mutating: [&'static str; 4],
    /// Every verb, in the console's order.
    pub verbs: [&'static str; 6],
}

/// `GET /api/breakglass/pve/verbs`.
pub async fn verbs(State(state): State<SidecarState>) -> Json<VerbList> {
    Json(VerbList {
        configured: state.pve.target.is_some(),
        mutating: MUTATING,
        verbs: VERBS,
    })
}

/// Body of a verb that ran (fields alphabetical: the former `json!` order).
#[derive(Debug, Serialize)]
pub struct VerbRan {
    /// Wall time of the ssh process.
    pub duration_ms: u64,
    /// Its exit code (none when killed by a signal).
    pub exit_code: Option<i32>,
    /// Whether it exited 0.
    pub ok: bool,
    /// Captured stderr (capped).
    pub stderr: String,
    /// Captured stdout (capped).
    pub stdout: String,
    /// Whether either stream was cut at [`MAX_OUTPUT`].
    pub truncated: bool,
    /// The verb.
    pub verb: &'static str,
}

/// What a verb produced.
#[derive(Debug)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    truncated: bool,
}

async fn read_capped(mut reader: impl tokio::io::AsyncRead + Unpin) -> (String, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (String::from_utf8_lossy(&kept).into_owned(), truncated)
}

async fn run(pve: &PowerVerbs, target: &str, verb: &'static str) -> Result<Outcome, NotRun> {
    let mut child = Command::new(&pve.program)
        .args(pve.argv(target, verb))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            tracing::error!(error = %err, program = %pve.program.display(), "cannot start ssh");
            NotRun::failed(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ssh could not be started",
                "ssh_unavailable",
            ))
        })?;
    let pgid = child.id().map(|p| p as i32);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let (out, err) = tokio::join!(
            async {
                match stdout {
                    Some(s) => read_capped(s).await,
                    None => (String::new(), false),
                }
            },
            async {
                match stderr {
                    Some(s) => read_capped(s).await,
                    None => (String::new(), false),
                }
            }
        );
        let status = child.wait().await;
        (out, err, status)
    };
    let result = tokio::time::timeout(pve.timeout, work).await;
    if let Some(pgid) = pgid {
        // Whatever ssh left behind (a ProxyCommand, a control master) goes with it.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    match result {
        Ok(((stdout, t1), (stderr, t2), status)) => Ok(Outcome {
            code: status.ok().and_then(|s| s.code()),
            stdout,
            stderr,
            truncated: t1 || t2,
        }),
        Err(_) => Err(NotRun::failed(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the verb took too long and was killed",
            "timeout",
        ))),
    }
}

/// A call that ran no verb to completion: the answer, and the audit `result` (`refused`, `busy`,
/// `failed`; the audit `reason` is the answer's code — static, never client text).
struct NotRun {
    error: ApiError,
    result: &'static str,
}

impl NotRun {
    fn refused(error: ApiError) -> Self {
        Self {
            error,
            result: "refused",
        }
    }

    fn failed(error: ApiError) -> Self {
        Self {
            error,
            result: "failed",
        }
    }
}

/// `POST /api/breakglass/pve/{verb}` with an optional `{"confirm": true}`. Every call — run,
/// refused or failed — leaves exactly one audit record. Its fields are structured (in JSON logs)
/// or quoted and escaped (in plain logs), so neither the verb from the path nor a proxy-supplied
/// user name can inject fields or lines into it.
pub async fn run_verb(
    State(state): State<SidecarState>,
    Path(raw): Path<String>,
    caller: Caller,
    body: Bytes,
) -> Response {
    let started = std::time::Instant::now();
    let (response, result, reason, exit_code) = match verb_call(&state, &raw, &body).await {
        Ok((status, ran)) => {
            let exit_code = ran.exit_code;
            ((status, Json(ran)).into_response(), "ran", None, exit_code)
        }
        Err(NotRun { error, result }) => {
            let reason = error.code;
            (error.into_response(), result, Some(reason), None)
        }
    };
    let verb: String = raw.chars().take(64).collect();
    tracing::warn!(
        audit = true,
        caller = ?caller.0,
        verb = ?verb,
        result,
        reason,
        status = response.status().as_u16(),
        exit_code,
        duration_ms = started.elapsed().as_millis() as u64,
        "power verb"
    );
    response
}

/// What `{verb}` with `body` asks for, checked in order (verb, body, confirmation, target,
/// capacity), then run.
async fn verb_call(state: &SidecarState, raw: &str, body: &[u8]) -> Result<(StatusCode, VerbRan), NotRun> {
    let verb = parse_verb(raw).ok_or_else(|| {
        NotRun::refused(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("unknown verb; allowed: {}", VERBS.join(", ")),
            "unknown_verb",
        ))
    })?;
    let confirm = if body.is_empty() {
        false
    } else {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => match map.get("confirm") {
                None => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(NotRun::refused(ApiError::bad_request(
                        "`confirm` must be a boolean",
                    )));
                }
            },
            _ => {
                return Err(NotRun::refused(ApiError::bad_request(
                    "the body must be a JSON object",
                )));
            }
        }
    };
    if is_mutating(verb) && !confirm {
        return Err(NotRun::refused(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{verb}` changes the machine's power state; send {{\"confirm\": true}}"),
            "confirmation_required",
        )));
    }
    let target = state.pve.target.clone().ok_or_else(|| {
        NotRun::refused(ApiError::not_configured(
            "power verbs are not configured (--pve-ssh-target)",
        ))
    })?;
    // Power verbs are rare and human-driven; a burst of them is refused, not queued.
    let Ok(_slot) = state.pve.running.clone().try_acquire_owned() else {
        let error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "power verbs are already running; retry when they finished",
            "busy",
        )
        .retry_after(5);
        return Err(NotRun {
            error,
            result: "busy",
        });
    };
    let started = std::time::Instant::now();
    let outcome = run(&state.pve, &target, verb).await?;
    // ssh itself exits 255 when it cannot connect or authenticate.
    let status = if outcome.code == Some(255) {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        VerbRan {
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code: outcome.code,
            ok: outcome.code == Some(0),
            stderr: outcome.stderr,
            stdout: outcome.stdout,
            truncated: outcome.truncated,
            verb,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_whitelisted_verbs_parse() {
        for verb in VERBS {
            assert_eq!(parse_verb(verb), Some(verb));
        }
        for hostile in [
            "",
            " ",
            "status ",
            " status",
            "STATUS",
            "Status",
            "status; reboot",
            "status && reboot",
            "status|sh",
            "$(reboot)",
            "`reboot`",
            "../start",
            "start/..",
            "status\n",
            "status\0",
            "-oProxyCommand=x",
            "stat",
            "statuss",
            "cycle cycle",
            "rm -rf /",
            "forensics*",
        ] {
            assert_eq!(parse_verb(hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn mutating_verbs_are_the_power_changes() {
        assert!(!is_mutating("status") && !is_mutating("forensics"));
        assert!(MUTATING.iter().all(|v| is_mutating(v) && parse_verb(v).is_some()));
    }

    #[test]
    fn targets_cannot_be_options() {
        assert!(valid_target("power@pve.lan"));
        assert!(valid_target("10.0.0.2"));
        for bad in ["", "-oProxyCommand=sh", "a b", "host;reboot", "host\n", "$(x)"] {
            assert!(!valid_target(bad), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn anything_outside_the_whitelist_is_refused(raw in ".{0,20}") {
            proptest::prop_assert_eq!(parse_verb(&raw).is_some(), VERBS.contains(&raw.as_str()));
        }
    }
}
