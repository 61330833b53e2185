-- Argo CD health check for afk.dev/AfkConfig, from the kstatus conditions the operator writes.
--   Progressing  no status yet, an older generation observed, Reconciling=True, no Ready yet
--   Degraded     Stalled=True, or Ready=False for any reason but being disarmed (e.g. Unauthorized,
--                Unreachable, SecretMissing, InvalidSpec): the loop should run and cannot
--   Suspended    Ready=False because the loop is disarmed on purpose (spec.suspend, an empty
--                allowlist, the emergency-stop annotation)
--   Healthy      Ready=True
-- Written for Argo CD's Lua 5.1 as well as Lua 5.4. tests/argocd_health.rs checks that the
-- disarm reasons below are the operator's (crd::condition::reasons::DISARMED).
local disarmed = { Suspended = true, EmptyAllowlist = true, EmergencyStop = true }

local hs = {}
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then return c end
  end
  return nil
end
local function says(c, fallback)
  local m = c.message
  if m == nil or m == "" then m = c.reason end
  if m == nil or m == "" then m = fallback end
  return m
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(obj.metadata.generation)
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = says(reconciling, "Reconciling")
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end
local ready = condition("Ready")
if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Ready condition"
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Armed; " .. tostring(obj.status.inFlight or 0) .. " in flight, "
    .. tostring(obj.status.queueLength or 0) .. " queued"
  return hs
end
if ready.status == "False" then
  if ready.reason ~= nil and disarmed[ready.reason] then
    hs.status = "Suspended"
    hs.message = ready.reason .. ": " .. (ready.message or "")
  else
    hs.status = "Degraded"
    hs.message = says(ready, "Not ready")
  end
  return hs
end
hs.status = "Progressing"
hs.message = says(ready, "Ready is " .. tostring(ready.status))
return hs
