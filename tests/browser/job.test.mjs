// The job page against a real server: cancelling a running job, downloading a checkpoint,
// a finished job's rate and task metric, and recovering the steps a lagging or dropped
// stream missed. Each number the page shows is checked against the REST API.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { openBrowser, startServer, until } from "./helpers.mjs";

let server;
let browser;
let preset;

before(async () => {
  server = await startServer();
  browser = await openBrowser();
  const { body } = await server.api("GET", "/presets");
  // A 10-layer sigmoid MLP on classification: validation (with accuracy) every 100 steps.
  preset = body.presets.find((p) => p.name === "vanishing-mlp");
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function submit(steps, extra = {}) {
  const created = await server.api("POST", "/jobs", { ...preset.spec, steps, device: "cpu", ...extra });
  assert.equal(created.status, 201);
  return created.body;
}

async function finished(id) {
  return until(async () => {
    const { body } = await server.api("GET", `/jobs/${id}`);
    return body.status === "succeeded" ? body : null;
  }, { timeout: 120_000, what: `job ${id} to finish` });
}

const stepOf = async (page) => Number(((await page.textContent("#step-counter")) ?? "").split("/")[0]);
const figure = (page, key) => page.getAttribute(`[data-figure="${key}"]`, "data-value");
const figureText = (page, key) => page.textContent(`[data-figure="${key}"] b`);

/** A finished job's steps per second, from its record: steps over started_at..finished_at. */
function rateOf(job) {
  const seconds = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
  return (job.step - (job.resumed_from ?? 0)) / seconds;
}

/** The last validation pass's metric, from /steps. */
async function lastMetric(id) {
  const { body } = await server.api("GET", `/jobs/${id}/steps?max_points=10`);
  const values = body.eval.value;
  assert.ok(values.length > 0, "the job ran validation");
  return { name: body.eval.metric, value: values[values.length - 1] };
}

test("cancel on a running job's page cancels it, and the server agrees", async () => {
  const { page } = browser;
  const job = await submit(100_000);
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await until(async () => (await stepOf(page)) > 0, { what: "the first step" });
  assert.ok(await page.isVisible("button.danger:text('Cancel')"), "a running job offers Cancel");
  await page.click("#cancel-job");
  // It asks first.
  await page.click("#confirm-yes");
  await page.waitForSelector(".job-head .status-cancelled");
  const { body } = await server.api("GET", `/jobs/${job.id}`);
  assert.equal(body.status, "cancelled");
  assert.ok(body.step < 100_000, "it stopped early");
  await until(async () => !(await page.isVisible("button.danger:text('Cancel')")), { what: "Cancel to go" });
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("the checkpoint button downloads the server's checkpoint file", async () => {
  const { page } = browser;
  const job = await submit(200);
  await finished(job.id);
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector(".job-head .status-succeeded");
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("button:text('Checkpoint')")]);
  assert.equal(download.suggestedFilename(), `${job.name}.safetensors`);
  const saved = readFileSync(await download.path());
  const { status, body } = await server.bytes(`/jobs/${job.id}/checkpoint`);
  assert.equal(status, 200);
  assert.ok(saved.length > 0, "the file is not empty");
  assert.ok(saved.equals(body), `the file is the server's checkpoint (${saved.length} vs ${body.length} bytes)`);
  // A safetensors file starts with its header's length (little-endian u64), then JSON.
  const header = Number(saved.readBigUInt64LE(0));
  assert.ok(JSON.parse(saved.subarray(8, 8 + header).toString("utf8")), "a safetensors header");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("a finished job shows its steps/s and its task metric as the REST API has them", async () => {
  const { page } = browser;
  const job = await submit(300);
  const done = await finished(job.id);
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector(".job-head .status-succeeded");
  await until(async () => (await figure(page, "metric")) !== null, { what: "the metric" });

  const rate = Number(await figure(page, "rate"));
  assert.ok(Math.abs(rate - rateOf(done)) <= 1e-9 * rateOf(done), `steps/s ${rate} is the record's ${rateOf(done)}`);
  assert.notEqual(await figureText(page, "rate"), "–");

  const metric = await lastMetric(job.id);
  assert.equal(metric.name, "accuracy");
  assert.equal(Number(await figure(page, "metric")), metric.value);
  assert.equal(await page.textContent('[data-figure="metric"] span'), "accuracy");
  assert.notEqual(await figureText(page, "metric"), "–");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("after the stream lags and then drops, the page reads back every step it missed", async () => {
  const { page } = browser;
  const steps = 3000;
  let connections = 0;
  let dropping = false;
  let dropped = 0;
  let binary = 0;
  let first = null;
  // Between the page and the real server: the first connection loses a hundred frames of
  // messages (then says `lagged`, as the server does when a client falls behind), then
  // drops.
  await page.routeWebSocket(/\/api\/v1\/jobs\/[^/]+\/stream/, (ws) => {
    connections++;
    const upstream = ws.connectToServer();
    if (connections === 1) first = { ws, upstream };
    upstream.onMessage((message) => {
      if (typeof message !== "string") binary++;
      if (connections === 1 && dropping) {
        dropped++;
        return;
      }
      ws.send(message);
    });
    ws.onMessage((message) => upstream.send(message));
  });
  const job = await submit(steps);
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await until(async () => (await stepOf(page)) >= 200, { what: "step 200" });

  dropping = true;
  await until(() => dropped >= 100, { what: "frames to drop" });
  dropping = false;
  first.ws.send(JSON.stringify({ type: "lagged", missed: dropped }));
  const afterLag = await stepOf(page);
  await until(async () => (await stepOf(page)) > afterLag + 100, { what: "steps after the lag" });

  // The connection drops without a close handshake from the server.
  first.upstream.close();
  first.ws.close({ code: 4000, reason: "dropped by the test" });
  await until(() => connections === 2, { what: "the page to reconnect" });

  await page.waitForSelector(".job-head .status-succeeded", { timeout: 120_000 });
  const { body: all } = await server.api("GET", `/jobs/${job.id}/steps?max_points=100000`);
  assert.equal(all.step.length, steps, "the server recorded every step");
  const shown = await until(async () => {
    const n = Number(await page.getAttribute("#loss-chart", "data-points"));
    return n === steps ? n : null;
  }, { timeout: 20_000, what: "the page to hold every step" }).catch(async () => Number(await page.getAttribute("#loss-chart", "data-points")));
  assert.equal(shown, all.step.length, "the charts hold every step the REST API has: no gap");
  assert.ok(dropped >= 100, `the stream lost ${dropped} frames`);
  // The page asks for the compressed stream: gzip'd batches in binary frames.
  assert.ok(binary > 0, "the page read binary frames");
  assert.equal(connections, 2, "the page reconnected once");

  // Watched live to the end: the same figures as a page opened afterwards.
  const done = (await server.api("GET", `/jobs/${job.id}`)).body;
  await until(async () => (await figureText(page, "rate")) !== "–" && Math.abs(Number(await figure(page, "rate")) - rateOf(done)) <= 1e-9 * rateOf(done),
    { what: `steps/s ${rateOf(done)}` });
  const metric = await lastMetric(job.id);
  await until(async () => Number(await figure(page, "metric")) === metric.value, { what: `accuracy ${metric.value}` });
  await page.unrouteAll();
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
