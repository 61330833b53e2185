// Headless Chromium drives the sidecar's console like a phone would: save the token, open a
// session, send a prompt, watch the streamed text, reload and see the replay, drop the network
// mid-turn and resume — never a duplicate — then run a power verb with its confirm step.
// Usage: node console.cjs <base-url> <token> <messages-per-turn>
"use strict";
const assert = require("node:assert/strict");
const { chromium } = require("playwright-core");

const [base, token, perTurnArg] = process.argv.slice(2);
const perTurn = Number(perTurnArg);
const executablePath = process.env.AFK_CHROMIUM || "/usr/bin/chromium";

async function view(page) {
  return page.evaluate(() => {
    const events = [...document.querySelectorAll("#log .event")];
    const ids = events.map((e) => e.dataset.id);
    return {
      ids,
      unique: new Set(ids).size,
      texts: events.filter((e) => e.dataset.kind === "text").map((e) => e.textContent),
      ends: events.filter((e) => e.dataset.kind === "turn_end").length,
    };
  });
}

function expectedTexts(turns) {
  const out = [];
  for (let t = 0; t < turns; t++) for (let n = 0; n < perTurn; n++) out.push("msg " + n);
  return out;
}

(async () => {
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push("pageerror: " + e.message));
  page.on("console", (m) => { if (m.type() === "error" && !/ERR_INTERNET_DISCONNECTED|Failed to fetch|network/i.test(m.text())) problems.push("console: " + m.text()); });
  try {
    await page.goto(base + "/console/");
    await page.fill("#token", token);
    await page.click("#save-token");
    await page.click("#new-session");
    await page.waitForFunction(() => /^[0-9a-f-]{36}$/.test(document.getElementById("session-id").textContent));
    await page.waitForSelector('#conn[data-state="live"]');
    console.log("attached");

    // Turn 1: send, see streamed text.
    await page.fill("#prompt", "why is the node NotReady?");
    await page.click("#send");
    await page.waitForSelector(".event.text");
    await page.waitForFunction(() => document.querySelectorAll(".event.turn_end").length === 1, null, { timeout: 30000 });
    let v = await view(page);
    assert.equal(v.unique, v.ids.length, "no duplicate events");
    assert.deepEqual(v.texts, expectedTexts(1));
    assert.equal(await page.textContent(".event.user"), "› why is the node NotReady?");
    console.log("turn 1 streamed:", v.ids.length, "events");

    // Reload: the session is re-attached and replayed, nothing twice.
    await page.reload();
    await page.waitForFunction(() => document.querySelectorAll(".event.turn_end").length === 1, null, { timeout: 30000 });
    await page.waitForSelector('#conn[data-state="live"]');
    const replayed = await view(page);
    assert.deepEqual(replayed, v, "the replay after reload is the same view");
    console.log("reload replayed", replayed.ids.length, "events");

    // Turn 2 via a preset, reload mid-stream and drop the network mid-stream.
    await page.click(".preset");
    await page.waitForFunction(() => document.querySelectorAll(".event.text").length > 2 + Number(document.querySelectorAll(".event.turn_end").length) * 0);
    await page.reload();
    await page.waitForSelector(".event.user");
    await context.setOffline(true);
    await page.waitForTimeout(700);
    await context.setOffline(false);
    await page.waitForFunction(() => document.querySelectorAll(".event.turn_end").length === 2, null, { timeout: 30000 });
    v = await view(page);
    assert.equal(v.unique, v.ids.length, "no duplicates after reload and a network drop");
    assert.deepEqual(v.texts, expectedTexts(2));
    const numeric = v.ids.map(Number);
    assert.deepEqual(numeric, numeric.map((_, i) => i + 1), "contiguous event ids");
    console.log("turn 2 survived reload + offline:", v.ids.length, "events");

    // Stop: a third turn cancelled from the UI.
    await page.fill("#prompt", "long job");
    await page.click("#send");
    await page.waitForFunction(() => document.querySelectorAll(".event.user").length === 3);
    await page.click("#stop");
    await page.waitForFunction(() => document.querySelectorAll(".event.turn_end").length === 3, null, { timeout: 30000 });
    console.log("turn 3 ended after stop");

    // Power verbs: a read-only verb runs at once; a mutating one needs the confirm step.
    await page.click('[data-verb="status"]');
    await page.waitForFunction(() => document.getElementById("verb-output").textContent.includes("status ok"));
    await page.click('[data-verb="cycle"]');
    assert.equal(await page.isVisible("#confirm-box"), true, "confirm step shown");
    assert.ok(!(await page.textContent("#verb-output")).includes("cycle ok"), "nothing ran before confirming");
    await page.click("#confirm-yes");
    await page.waitForFunction(() => document.getElementById("verb-output").textContent.includes("cycle ok"));
    console.log("power verbs ok");

    assert.deepEqual(problems, [], "no page errors or CSP violations");
    console.log("CONSOLE TEST PASSED");
  } catch (err) {
    console.error(err);
    console.error("problems:", problems);
    await page.screenshot({ path: process.env.AFK_SCREENSHOT || "/tmp/afk-console-failure.png" }).catch(() => {});
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
})();
