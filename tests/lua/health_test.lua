-- Tests of the Argo CD health checks (run: lua5.4 tests/lua/health_test.lua from the repo root).
-- Argo CD runs a health script with a global `obj`; so do we.
local failures = 0
local total = 0
local function check(script, object, want_status, want_message_part)
  total = total + 1
  obj = object
  local hs = dofile(script)
  local ok = hs.status == want_status and (want_message_part == nil or string.find(hs.message or "", want_message_part, 1, true) ~= nil)
  if not ok then
    failures = failures + 1
    print(string.format("FAIL %s: want %s (%s), got %s (%s)", script, want_status, tostring(want_message_part), tostring(hs.status), tostring(hs.message)))
  end
end

local cfg = "deploy/argocd/health-afkconfig.lua"
local run = "deploy/argocd/health-afkrun.lua"
local function cond(t, s, r, m) return { type = t, status = s, reason = r, message = m } end

check(cfg, { metadata = { generation = 1 } }, "Progressing", "Waiting for the operator")
check(cfg, { metadata = { generation = 2 }, status = { observedGeneration = 1, conditions = { cond("Ready", "True", "Reconciled", "") } } }, "Progressing", "latest spec")
check(cfg, { metadata = { generation = 1 }, status = { observedGeneration = 1, conditions = {
  cond("Armed", "False", "Suspended", "spec.suspend is true"), cond("Ready", "True", "Reconciled", "") } } }, "Suspended", "Suspended")
check(cfg, { metadata = { generation = 1 }, status = { observedGeneration = 1, conditions = {
  cond("Armed", "False", "EmergencyStop", "emergency stop: db down") } } }, "Suspended", "db down")
check(cfg, { metadata = { generation = 1 }, status = { observedGeneration = 1, conditions = {
  cond("Stalled", "True", "ReferenceError", "Secret \"gh\" not found"), cond("Armed", "True", "Armed", "") } } }, "Degraded", "not found")
check(cfg, { metadata = { generation = 1 }, status = { observedGeneration = 1, inFlight = 2, queueLength = 3, conditions = {
  cond("Armed", "True", "Armed", ""), cond("Stalled", "False", "Reconciled", ""), cond("Ready", "True", "Reconciled", "") } } }, "Healthy", "2 in flight, 3 queued")

check(run, { status = nil }, "Progressing", "Waiting")
check(run, { status = { phase = "Working", message = "the agent is working" } }, "Progressing", "Working")
check(run, { status = { phase = "FixingForward" } }, "Progressing", "FixingForward")
check(run, { status = { phase = "Succeeded" } }, "Healthy", "Succeeded")
check(run, { status = { phase = "Frozen", reason = "FixForwardBudgetExhausted" } }, "Degraded", "FixForwardBudgetExhausted")
check(run, { status = { phase = "NeedsHuman", message = "the agent is waiting for an approval" } }, "Degraded", "approval")
check(run, { status = { phase = "Failed" } }, "Degraded", "Failed")
check(run, { status = { phase = "Cancelled", reason = "EmergencyStop" } }, "Suspended", "EmergencyStop")

print(string.format("%d passed, %d failed", total - failures, failures))
if failures > 0 then
  os.exit(1)
end
