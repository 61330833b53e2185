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

async function loadRuns() {
  const { status, data } = await api("GET", "/api/afk/runs");
  const box = $("runs");
  if (status !== 200) { box.textContent = (data && data.error && data.error.message) || "HTTP " + status; return; }
  box.textContent = "";
  for (const [group, runs] of Object.entries(data)) {
    if (!Array.isArray(runs)) continue;
    const h = document.createElement("h3");
    h.textContent = group + " (" + runs.length + ")";
    box.appendChild(h);
    for (const r of runs) {
      const p = document.createElement("div");
      p.className = "event";
      p.textContent = (r.repo || "") + "#" + (r.issue || "") + " " + (r.phase || "") + " " + (r.reason || "");
      box.appendChild(p);
    }
  }
}

async function estop(engage) {
  const config = $("stop-config").value.trim();
  const reason = $("stop-reason").value.trim();
  const { status, data } = engage
    ? await api("POST", "/api/afk/emergency-stop", { config, reason })
    : await api("DELETE", "/api/afk/emergency-stop", { config });
  $("estop-output").textContent = status + " " + JSON.stringify(data);
}

function boot() {
  $("token").value = token;
  $("save-token").onclick = () => {
    token = $("token").value.trim();
    store.setItem("afk.token", token);
    refreshSessions(); loadVerbs();
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
  $("refresh-runs").onclick = loadRuns;
  $("estop").onclick = () => estop(true);
  $("estop-release").onclick = () => estop(false);
  if (token) { refreshSessions(); loadVerbs(); }
  if (token && sessionId) attach(sessionId);
}

boot();
