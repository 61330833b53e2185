-- Argo CD health check for afk.dev/AfkRun, one verdict per phase:
--   Healthy      Succeeded
--   Degraded     NeedsHuman, Frozen, Failed (the run ended and a human has to look)
--   Suspended    Cancelled (by a human or the emergency stop); WaitingForHuman (the agent waits
--                on an approval or an answer from a person)
--   Progressing  Pending, Dispatching, Working, Verifying, FixingForward; also no phase yet or a
--                phase this script does not know (a newer operator), said so in the message
-- Written for Argo CD's Lua 5.1 as well as Lua 5.4. tests/argocd_health.rs checks that this table
-- names every phase of the operator (crd::Phase::ALL).
local verdicts = {
  Pending = "Progressing",
  Dispatching = "Progressing",
  Working = "Progressing",
  WaitingForHuman = "Suspended",
  Verifying = "Progressing",
  FixingForward = "Progressing",
  Succeeded = "Healthy",
  NeedsHuman = "Degraded",
  Frozen = "Degraded",
  Cancelled = "Suspended",
  Failed = "Degraded",
}

local hs = {}
if obj.status == nil or obj.status.phase == nil or obj.status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to set a phase"
  return hs
end
local phase = obj.status.phase
local detail = obj.status.message
if detail == nil or detail == "" then detail = obj.status.reason end
if detail == nil then detail = "" end
local verdict = verdicts[phase]
if verdict == nil then
  hs.status = "Progressing"
  hs.message = "Unknown phase " .. tostring(phase) .. " (newer operator than this health check?)"
    .. (detail ~= "" and (": " .. detail) or "")
  return hs
end
hs.status = verdict
hs.message = phase .. (detail ~= "" and (": " .. detail) or "")
return hs
