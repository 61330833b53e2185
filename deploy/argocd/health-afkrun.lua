-- Argo CD health check for afk.dev/AfkRun. Healthy: Succeeded. Degraded: the run needs a human
-- (NeedsHuman, Frozen, Failed — Stalled=True). Suspended: Cancelled by a human or the emergency
-- stop. Progressing: everything else (Pending … FixingForward).
local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to dispatch"
  return hs
end
local phase = obj.status.phase
local detail = obj.status.message or obj.status.reason or ""
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "NeedsHuman" or phase == "Frozen" or phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Cancelled" then
  hs.status = "Suspended"
else
  hs.status = "Progressing"
end
hs.message = phase .. (detail ~= "" and (": " .. detail) or "")
return hs
