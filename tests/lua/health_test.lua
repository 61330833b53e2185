-- Tests of the Argo CD health checks (run: lua5.4 tests/lua/health_test.lua from the repo root).
-- Argo CD runs a health script with a global `obj`; so do we. Every branch of both scripts is
-- exercised; tests/argocd_health.rs checks the same scripts against the operator's vocabulary.
local failures = 0
local total = 0
local function check(name, script, object, want_status, want_message)
  total = total + 1
  obj = object
  local hs = dofile(script)
  local ok = hs.status == want_status
    and (want_message == nil or string.find(hs.message or "", want_message, 1, true) ~= nil)
  if not ok then
    failures = failures + 1
    print(string.format("FAIL %s: want %s (%s), got %s (%s)", name, want_status,
      tostring(want_message), tostring(hs.status), tostring(hs.message)))
  end
end

local cfg = "deploy/argocd/health-afkconfig.lua"
local run = "deploy/argocd/health-afkrun.lua"
local function cond(t, s, r, m) return { type = t, status = s, reason = r, message = m } end
local function config(conditions, extra)
  local status = { observedGeneration = 1, conditions = conditions }
  for k, v in pairs(extra or {}) do status[k] = v end
  return { metadata = { generation = 1 }, status = status }
end
local ok = {
  cond("Armed", "True", "Armed", "dispatching ready issues"),
  cond("TrackerReachable", "True", "Reachable", ""),
  cond("ExecutorReachable", "True", "Reachable", ""),
  cond("Stalled", "False", "Reconciled", ""),
  cond("Reconciling", "False", "Reconciled", ""),
  cond("Ready", "True", "Reconciled", ""),
}

-- AfkConfig: not observed yet
check("config without status", cfg, { metadata = { generation = 1 } }, "Progressing", "Waiting for the operator")
check("config with an older generation observed", cfg,
  { metadata = { generation = 2 }, status = { observedGeneration = 1, conditions = ok } },
  "Progressing", "observe generation 2")
check("config without observedGeneration is judged by its conditions", cfg,
  { metadata = { generation = 2 }, status = { conditions = ok } }, "Healthy", nil)
-- AfkConfig: Reconciling wins over everything after it
check("config reconciling", cfg, config({
  cond("Reconciling", "True", "Polling", "first poll after a change"),
  cond("Ready", "False", "Unauthorized", "GitHub rejected the token") }), "Progressing", "first poll after a change")
check("config reconciling without a message", cfg, config({ cond("Reconciling", "True", "Polling", "") }),
  "Progressing", "Polling")
-- AfkConfig: faults are Degraded, with the condition's message
check("config stalled on missing Secrets", cfg, config({
  cond("Stalled", "True", "SecretMissing", "Secrets afk-github, afk-t3 not found"),
  cond("Armed", "False", "SecretMissing", ""),
  cond("Ready", "False", "SecretMissing", "") }), "Degraded", "afk-github, afk-t3 not found")
check("config stalled while suspended is still Degraded", cfg, config({
  cond("Stalled", "True", "SecretUnreadable", "not readable: add it to the chart's secretNames"),
  cond("Ready", "False", "Suspended", "spec.suspend is true") }), "Degraded", "secretNames")
check("config stalled without a message", cfg, config({ cond("Stalled", "True", "InvalidSpec", "") }),
  "Degraded", "InvalidSpec")
for _, reason in ipairs({ "Unauthorized", "Unreachable", "SecretMissing", "InvalidSpec", "ConfigError" }) do
  check("config Ready=False " .. reason, cfg, config({
    cond("Stalled", "False", "Reconciled", ""),
    cond("Ready", "False", reason, reason .. " details") }), "Degraded", reason .. " details")
end
check("config Ready=False without a message", cfg, config({ cond("Ready", "False", "Unreachable", "") }),
  "Degraded", "Unreachable")
check("config Ready=False without reason or message", cfg, config({ cond("Ready", "False", nil, nil) }),
  "Degraded", "Not ready")
-- AfkConfig: disarmed on purpose is Suspended
check("config suspended", cfg, config({
  cond("Armed", "False", "Suspended", "spec.suspend is true"),
  cond("Ready", "False", "Suspended", "spec.suspend is true") }), "Suspended", "Suspended: spec.suspend is true")
check("config with an empty allowlist", cfg, config({ cond("Ready", "False", "EmptyAllowlist", "no repos") }),
  "Suspended", "EmptyAllowlist: no repos")
check("config emergency-stopped", cfg, config({ cond("Ready", "False", "EmergencyStop", "db down") }),
  "Suspended", "EmergencyStop: db down")
check("config disarmed without a message", cfg, config({ cond("Ready", "False", "Suspended", nil) }),
  "Suspended", "Suspended: ")
-- AfkConfig: Ready True, missing, Unknown
check("config ready", cfg, config(ok, { inFlight = 2, queueLength = 3 }), "Healthy", "Armed; 2 in flight, 3 queued")
check("config ready without counts", cfg, config(ok), "Healthy", "0 in flight, 0 queued")
check("config without conditions", cfg, config(nil), "Progressing", "Waiting for the Ready condition")
check("config without Ready", cfg, config({ cond("Armed", "True", "Armed", "") }), "Progressing", "Ready condition")
check("config Ready=Unknown", cfg, config({ cond("Ready", "Unknown", "Probing", "probing T3") }),
  "Progressing", "probing T3")
check("config Ready=Unknown without a message", cfg, config({ cond("Ready", "Unknown", nil, nil) }),
  "Progressing", "Ready is Unknown")

-- AfkRun: one verdict per phase, message = phase: message
local phases = {
  Pending = "Progressing", Dispatching = "Progressing", Working = "Progressing",
  WaitingForHuman = "Suspended", Verifying = "Progressing", FixingForward = "Progressing",
  Succeeded = "Healthy", NeedsHuman = "Degraded", Frozen = "Degraded", Cancelled = "Suspended",
  Failed = "Degraded",
}
for phase, verdict in pairs(phases) do
  check("run " .. phase, run, { status = { phase = phase, message = "what it waits for" } }, verdict,
    phase .. ": what it waits for")
end
check("run without status", run, { metadata = { name = "r" } }, "Progressing", "Waiting for the operator to set a phase")
check("run without phase", run, { status = { message = "x" } }, "Progressing", "set a phase")
check("run with an empty phase", run, { status = { phase = "" } }, "Progressing", "set a phase")
check("run message falls back to the reason", run, { status = { phase = "Frozen", reason = "FixForwardBudgetExhausted" } },
  "Degraded", "Frozen: FixForwardBudgetExhausted")
check("run with an empty message uses the reason", run, { status = { phase = "Failed", reason = "ExecutorUnauthorized", message = "" } },
  "Degraded", "Failed: ExecutorUnauthorized")
check("run with only a phase", run, { status = { phase = "Succeeded" } }, "Healthy", "Succeeded")
check("run waiting for an answer", run,
  { status = { phase = "WaitingForHuman", message = "the agent asked: which database?" } },
  "Suspended", "WaitingForHuman: the agent asked: which database?")
check("run in an unknown phase", run, { status = { phase = "Teleporting", message = "m" } },
  "Progressing", "Unknown phase Teleporting")

print(string.format("%d passed, %d failed", total - failures, failures))
if failures > 0 then
  os.exit(1)
end
