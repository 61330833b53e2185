// The breakglass console: attach to a server-owned session over SSE (fetch, so the bearer token
// travels in a header), resume with Last-Event-ID after any drop, render each event once.
"use strict";

const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
let token = store.getItem("afk.token") || "";
let sessionId = store.getItem("afk.session") || "";
let lastEventId = 0;
let attachGeneration = 0;
let abort = null;

function authHeaders(extra) {
  return Object.assign({ Authorization: "Bearer " + token }, extra || {});
}

async function api(method, path, body) {
  const init = { method, headers: authHeaders(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (_) { /* empty body */ }
  return { status: resp.status, data };
}

function setConn(state, text) {
  const el = $("conn");
  el.dataset.state = state;
  el.textContent = text;
}

function render(id, kind, data) {
  const log = $("log");
  if (log.querySelector('[data-id="' + id + '"]')) return; // never twice
  const div = document.createElement("div");
  div.className = "event " + kind;
  div.dataset.id = String(id);
  div.dataset.kind = kind;
  switch (kind) {
    case "user": div.textContent = "› " + data.text; break;
    case "text": div.textContent = data.text; break;
    case "tool": div.textContent = "⚙ " + data.name + " " + JSON.stringify(data.input); break;
    case "session": div.textContent = "session " + data.session_id + " (" + data.model + ")"; break;
    case "result": div.textContent = data.is_error ? "✗ " + (data.result || "failed") : "✓ done in " + data.duration_ms + " ms"; break;
    case "error": div.textContent = "error: " + data.message; break;
    case "cancelled": div.textContent = "turn cancelled"; break;
    case "turn_end": div.textContent = "— turn finished —"; break;
    default: div.textContent = kind + " " + JSON.stringify(data);
  }
  log.appendChild(div);
  log.scrollTop = log.scrollHeight;
}

function handle(event, id, data) {
  if (event === "resync") {
    // Our cursor fell out of the server's log: start the view over from the replay.
    $("log").textContent = "";
    lastEventId = 0;
    return;
  }
  if (event === "caught-up") { setConn("live", "live"); return; }
  if (id !== null && id <= lastEventId) return;
  if (id !== null) lastEventId = id;
  let payload = {};
  try { payload = JSON.parse(data); } catch (_) { payload = { text: data }; }
  render(id, event, payload);
}

// Parse an SSE byte stream; calls handle() per event.
async function consume(body, generation) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done || generation !== attachGeneration) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message", id = null, data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("id: ")) id = Number(line.slice(4));
        else if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) handle(event, id, data.join("\n"));
    }
  }
}

async function attach(id) {
  if (abort) abort.abort();
  attachGeneration += 1;
  const generation = attachGeneration;
  if (id !== sessionId) { $("log").textContent = ""; lastEventId = 0; }
  sessionId = id;
  store.setItem("afk.session", id);
  $("session-id").textContent = id;
  let delay = 500;
  while (generation === attachGeneration) {
    abort = new AbortController();
    setConn("retrying", lastEventId ? "resuming…" : "attaching…");
    try {
      const headers = authHeaders(lastEventId ? { "Last-Event-ID": String(lastEventId) } : {});
      const resp = await fetch("/api/breakglass/sessions/" + id + "/stream", { headers, signal: abort.signal });
      if (resp.status === 404) { setConn("idle", "session gone"); store.removeItem("afk.session"); return; }
      if (resp.status === 401) { setConn("idle", "bad token"); return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      delay = 500;
      await consume(resp.body, generation);
    } catch (err) {
      if (generation !== attachGeneration) return;
    }
    // Dropped (tunnel blip, phone asleep): come back with our cursor.
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 8000);
  }
}

async function refreshSessions() {
  const { status, data } = await api("GET", "/api/breakglass/sessions");
  if (status !== 200) return;
  const select = $("sessions");
  select.length = 1;
  for (const s of data.sessions) {
    const opt = document.createElement("option");
    opt.value = s.session_id;
    opt.textContent = s.session_id.slice(0, 8) + (s.running ? " (running)" : "");
    select.appendChild(opt);
  }
}

async function send(text) {
  if (!sessionId || !text.trim()) return;
  const { status, data } = await api("POST", "/api/breakglass/sessions/" + sessionId + "/prompt", { prompt: text });
  if (status === 202) $("prompt").value = "";
  else render("local-" + Date.now(), "error", { message: (data && data.error && data.error.message) || "HTTP " + status });
}

let pendingVerb = null;

async function runVerb(verb, confirm) {
  $("verb-output").textContent = "running " + verb + "…";
  const { status, data } = await api("POST", "/api/breakglass/pve/" + verb, confirm ? { confirm: true } : {});
  if (data && data.error) $("verb-output").textContent = status + ": " + data.error.message;
  else $("verb-output").textContent = verb + " → exit " + data.exit_code + "\n" + data.stdout + data.stderr;
}

async function loadVerbs() {
  const { status, data } = await api("GET", "/api/breakglass/pve/verbs");
  const box = $("verbs");
  box.textContent = "";
  if (status !== 200) return;
  for (const verb of data.verbs) {
    const b = document.createElement("button");
    b.textContent = verb;
    b.dataset.verb = verb;
    if (data.mutating.includes(verb)) b.className = "danger";
    b.onclick = () => {
      if (data.mutating.includes(verb)) {
        pendingVerb = verb;
        $("confirm-verb").textContent = verb;
        $("confirm-box").hidden = false;
      } else {
        runVerb(verb, false);
      }
    };
    box.appendChild(b);
  }
}

// ---- AFK loop: waiting questions, runs, emergency stop (short polling with backoff) ----

const GROUPS = [
  ["inProgress", "In progress"],
  ["queued", "Queued"],
  ["recentlyResolved", "Recently resolved"],
  ["failedOrBlocked", "Failed or blocked"],
];
const POLL_MS = 5000;
const POLL_MAX_MS = 60000;
let pollDelay = POLL_MS;
let pollTimer = null;
// requestId → what this tab sent, so a poll that still sees the run waiting (the controller has
// not picked the answer up yet) shows the confirmation instead of asking again.
const sent = new Map();

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function errorText(status, data) {
  return (data && data.error && data.error.message) || "HTTP " + status;
}

function ago(iso) {
  const secs = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
  if (!Number.isFinite(secs)) return "";
  if (secs < 60) return "waiting " + secs + " s";
  if (secs < 3600) return "waiting " + Math.floor(secs / 60) + " min";
  if (secs < 86400) return "waiting " + Math.floor(secs / 3600) + " h " + Math.floor((secs % 3600) / 60) + " min";
  return "waiting " + Math.floor(secs / 86400) + " d";
}

async function sendAnswer(item, run, body, what) {
  const q = run.question;
  for (const b of item.querySelectorAll("button, textarea")) b.disabled = true;
  const path = "/api/afk/runs/" + encodeURIComponent(run.namespace) + "/" + encodeURIComponent(run.name) + "/answer";
  const { status, data } = await api("POST", path, body);
  const result = item.querySelector(".answer-result");
  if (status === 202) {
    sent.set(q.requestId, what);
    showSent(item, what);
  } else {
    for (const b of item.querySelectorAll("button, textarea")) b.disabled = false;
    result.dataset.state = "error";
    result.textContent = "not sent: " + errorText(status, data);
  }
}

function showSent(item, what) {
  const controls = item.querySelector(".answer-controls");
  if (controls) controls.remove();
  const result = item.querySelector(".answer-result");
  result.dataset.state = "sent";
  result.textContent = "Sent: " + what + " — the agent gets it on the next reconcile.";
}

function waitingItem(run) {
  const q = run.question;
  const item = el("div", "waiting-item");
  item.dataset.key = run.namespace + "/" + run.name + "/" + q.requestId;
  item.dataset.run = run.namespace + "/" + run.name;
  const head = el("div", "row");
  const link = el("strong", "grow", run.repo + "#" + run.issue);
  head.appendChild(link);
  const waited = el("span", "waited hint", ago(q.askedAt));
  waited.dataset.askedAt = q.askedAt;
  head.appendChild(waited);
  item.appendChild(head);
  if (run.title) item.appendChild(el("div", "hint", run.title));
  // For questions the labels below carry the text; an approval shows its one line here.
  if (q.kind === "approval" || !(q.questions || []).length) item.appendChild(el("p", "question-text", q.text));
  const controls = el("div", "answer-controls");
  if (q.kind === "approval") {
    if (q.detail) controls.appendChild(el("pre", "detail", (q.requestKind ? q.requestKind + ": " : "") + q.detail));
    const row = el("div", "row");
    const yes = el("button", "approve", "Approve");
    yes.onclick = () => sendAnswer(item, run, { decision: "accept" }, "approved");
    const no = el("button", "decline danger", "Decline");
    no.onclick = () => sendAnswer(item, run, { decision: "decline" }, "declined");
    row.append(yes, no);
    controls.appendChild(row);
  } else {
    const boxes = [];
    for (const question of q.questions || []) {
      const label = el("label", "", (question.header ? question.header + ": " : "") + question.question);
      const box = el("textarea", "answer-text");
      box.rows = 2;
      box.dataset.qid = question.id;
      box.setAttribute("aria-label", question.question);
      if (question.options && question.options.length) {
        box.placeholder = "e.g. " + question.options.join(" / ");
        const opts = el("div", "presets");
        for (const o of question.options) {
          const b = el("button", "option", o);
          b.onclick = () => { box.value = o; };
          opts.appendChild(b);
        }
        controls.append(label, opts, box);
      } else {
        controls.append(label, box);
      }
      boxes.push(box);
    }
    const send = el("button", "send-answer", "Send answer");
    send.onclick = () => {
      const filled = boxes.filter((b) => b.value.trim());
      if (!filled.length) { item.querySelector(".answer-result").textContent = "write an answer first"; return; }
      if (boxes.length === 1) {
        const text = boxes[0].value.trim();
        sendAnswer(item, run, { text }, "“" + text + "”");
      } else {
        const answers = {};
        for (const b of filled) answers[b.dataset.qid] = b.value.trim();
        sendAnswer(item, run, { answers }, filled.map((b) => b.dataset.qid + ": “" + answers[b.dataset.qid] + "”").join(", "));
      }
    };
    controls.appendChild(send);
  }
  item.appendChild(controls);
  item.appendChild(el("div", "answer-result"));
  if (sent.has(q.requestId)) showSent(item, sent.get(q.requestId));
  return item;
}

// Keyed update: items being typed into are never re-rendered by a poll.
function renderWaiting(runs) {
  const box = $("waiting");
  const keep = new Set();
  for (const run of runs) {
    const key = run.namespace + "/" + run.name + "/" + run.question.requestId;
    keep.add(key);
    let item = [...box.children].find((c) => c.dataset.key === key);
    if (!item) box.appendChild(waitingItem(run));
    else {
      const w = item.querySelector(".waited");
      w.textContent = ago(w.dataset.askedAt);
    }
  }
  for (const c of [...box.children]) if (!keep.has(c.dataset.key)) c.remove();
  $("waiting-panel").hidden = runs.length === 0;
  $("waiting-count").textContent = String(runs.length);
}

function runLine(group, r) {
  const p = el("div", "event run");
  p.dataset.group = group;
  const parts = [(r.repo || "") + "#" + (r.issue || "")];
  if (group === "queued") parts.push(r.config ? "(" + r.config + ")" : "", r.reason || "");
  else parts.push(r.phase || "", r.ci ? "CI " + r.ci : "", r.reason || "");
  p.textContent = parts.filter(Boolean).join(" · ");
  if (r.title) p.appendChild(el("div", "hint", r.title));
  if (r.message) p.appendChild(el("div", "hint", r.message));
  return p;
}

function renderRuns(data) {
  const box = $("runs");
  box.textContent = "";
  for (const [key, title] of GROUPS) {
    const runs = Array.isArray(data[key]) ? data[key] : [];
    const h = el("h4", "", title + " (" + runs.length + ")");
    h.dataset.group = key;
    box.appendChild(h);
    for (const r of runs) box.appendChild(runLine(key, r));
  }
  const waiting = [];
  for (const [key] of GROUPS) {
    for (const r of Array.isArray(data[key]) ? data[key] : []) {
      if (r.phase === "WaitingForHuman" && r.question) waiting.push(r);
    }
  }
  renderWaiting(waiting);
}

function renderStops(configs) {
  const box = $("estop-configs");
  box.textContent = "";
  if (!configs.length) { box.appendChild(el("p", "hint", "no AfkConfigs")); return; }
  for (const c of configs) {
    const row = el("div", "row estop-config");
    row.dataset.config = c.config;
    row.dataset.namespace = c.namespace || "";
    row.dataset.stopped = String(Boolean(c.stopped));
    const name = el("div", "grow");
    name.appendChild(el("strong", "", c.config));
    if (c.namespace) name.appendChild(el("span", "hint", " " + c.namespace));
    const state = el("div", "hint stop-state", c.stopped ? "STOPPED: " + (c.reason || "") : "running");
    name.appendChild(state);
    row.appendChild(name);
    const b = c.stopped ? el("button", "release", "Release") : el("button", "engage danger", "Stop");
    b.onclick = () => estop(!c.stopped, c);
    row.appendChild(b);
    box.appendChild(row);
  }
}

async function loadStops() {
  const { status, data } = await api("GET", "/api/afk/emergency-stop");
  if (status !== 200) { $("estop-configs").textContent = errorText(status, data); return false; }
  renderStops(data.configs || []);
  return true;
}

async function loadRuns() {
  const { status, data } = await api("GET", "/api/afk/runs");
  if (status !== 200) { $("runs").textContent = errorText(status, data); return false; }
  renderRuns(data);
  return true;
}

// One poll of runs and stops; on failure back off (doubling up to a minute), on success return to
// the short interval. A hidden tab does not poll; it refreshes when it is shown again.
async function poll() {
  if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; }
  if (!token) return;
  let ok = false;
  try { ok = (await Promise.all([loadRuns(), loadStops()])).every(Boolean); } catch (_) { ok = false; }
  const state = $("runs-state");
  if (ok) {
    pollDelay = POLL_MS;
    state.dataset.state = "live";
    state.textContent = "updated " + new Date().toLocaleTimeString();
  } else {
    pollDelay = Math.min(pollDelay * 2, POLL_MAX_MS);
    state.dataset.state = "retrying";
    state.textContent = "retrying in " + Math.round(pollDelay / 1000) + " s";
  }
  if (!document.hidden) pollTimer = setTimeout(poll, pollDelay);
}

async function estop(engage, c) {
  const target = { config: c.config };
  if (c.namespace) target.namespace = c.namespace;
  let res;
  if (engage) {
    const reason = $("stop-reason").value.trim();
    if (!reason) { $("estop-output").textContent = "give a reason to stop " + c.config; $("stop-reason").focus(); return; }
    res = await api("POST", "/api/afk/emergency-stop", Object.assign({ reason }, target));
  } else {
    res = await api("DELETE", "/api/afk/emergency-stop?" + new URLSearchParams(target).toString());
  }
  $("estop-output").textContent = res.status === 200
    ? c.config + (engage ? ": emergency stop engaged" : ": emergency stop released")
    : c.config + ": " + errorText(res.status, res.data);
  await loadStops();
}

function boot() {
  $("token").value = token;
  $("save-token").onclick = () => {
    token = $("token").value.trim();
    store.setItem("afk.token", token);
    refreshSessions(); loadVerbs(); poll();
  };
  $("new-session").onclick = async () => {
    const { status, data } = await api("POST", "/api/breakglass/sessions", {});
    if (status === 201) { attach(data.session_id); refreshSessions(); }
    else $("session-id").textContent = "could not create: " + ((data && data.error && data.error.message) || status);
  };
  $("sessions").onchange = (e) => { if (e.target.value) attach(e.target.value); };
  $("send").onclick = () => send($("prompt").value);
  for (const b of document.querySelectorAll(".preset")) b.onclick = () => send(b.dataset.prompt);
  $("stop").onclick = () => sessionId && api("POST", "/api/breakglass/sessions/" + sessionId + "/cancel", {});
  $("confirm-yes").onclick = () => { $("confirm-box").hidden = true; if (pendingVerb) runVerb(pendingVerb, true); pendingVerb = null; };
  $("confirm-no").onclick = () => { $("confirm-box").hidden = true; pendingVerb = null; };
  $("refresh-runs").onclick = poll;
  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
  if (token) { refreshSessions(); loadVerbs(); poll(); }
  if (token && sessionId) attach(sessionId);
}

boot();
