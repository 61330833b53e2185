-- Argo CD health check for afk.dev/AfkConfig, from the kstatus-style conditions the operator
-- writes. Suspended: the loop is disarmed on purpose (spec.suspend, empty allowlist, emergency
-- stop). Degraded: Stalled=True (invalid spec, missing Secret). Healthy: Ready=True.
local hs = {}
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then return c end
  end
  return nil
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile"
  return hs
end
if obj.metadata ~= nil and obj.metadata.generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or stalled.reason or "Stalled"
  return hs
end
local armed = condition("Armed")
if armed ~= nil and armed.status == "False" then
  hs.status = "Suspended"
  hs.message = (armed.reason or "Disarmed") .. ": " .. (armed.message or "")
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Armed; " .. tostring(obj.status.inFlight or 0) .. " in flight, " .. tostring(obj.status.queueLength or 0) .. " queued"
  return hs
end
hs.status = "Progressing"
hs.message = "Reconciling"
return hs
