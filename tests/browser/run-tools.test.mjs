// The job page as a daily tool: the step scrubber and the run actions, each checked
// against the REST API of a real server. The jobs are tiny MLPs, cheap on a shared CPU.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, startServer, tinyMlp, until } from "./helpers.mjs";

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The layer table's gradient norms, by layer index, as numbers. */
const tableNorms = (page) => page.$$eval("#layer-table tbody tr[data-layer]", (rows) => rows.map((tr) => [
  Number(/** @type {HTMLElement} */ (tr).dataset.layer),
  Number(tr.querySelector("td.stat-grad_norm")?.textContent),
]).sort((a, b) => a[0] - b[0]).map(([, v]) => v));

/** Each layer's gradient norm at `step`, from the REST API. */
async function restNorms(id, step) {
  const { body } = await server.api("GET", `/jobs/${id}/layer-stats?from=${step}&to=${step}&stat=grad_norm`);
  return body.layers.map((l) => {
    assert.deepEqual(l.step, [step], `layer ${l.index} was recorded at step ${step}`);
    return l.grad_norm[0];
  });
}

function assertClose(shown, expected, what) {
  assert.equal(shown.length, expected.length, `${what}: one value per layer`);
  shown.forEach((v, i) => {
    assert.ok(Number.isFinite(v) && Math.abs(v - expected[i]) <= 1e-2 * Math.abs(expected[i]),
      `${what}: layer ${i} shows ${v}, the API has ${expected[i]}`);
  });
}

const tableStep = async (page) => (await page.textContent("#table-step")) ?? "";

test("the step scrubber and an event's step choose what the per-layer views show; live follows the latest", async () => {
  const { page } = browser;
  const job = await server.submit(tinyMlp({
    name: "scrubbed", steps: 30, monitor: { every: 1 },
    task: { kind: "classification", features: 8, classes: 4, eval_every: 10 },
  }));
  await server.finished(job.id);
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await until(async () => (await tableStep(page)) === "statistics of step 30", { what: "the latest step's statistics" });
  assertClose(await tableNorms(page), await restNorms(job.id, 30), "live");
  assert.equal(await page.getAttribute("#heatmap", "data-cursor"), null, "live: no cursor");

  // The scrubber: step 12.
  await page.$eval("#step-scrubber", (input) => {
    /** @type {HTMLInputElement} */ (input).value = "12";
    input.dispatchEvent(new Event("input"));
    input.dispatchEvent(new Event("change"));
  });
  await until(async () => (await tableStep(page)) === "statistics of step 12", { what: "step 12's statistics" });
  assertClose(await tableNorms(page), await restNorms(job.id, 12), "step 12");
  await until(async () => (await page.getAttribute("#heatmap", "data-cursor")) === "12", { what: "the heatmap's cursor at step 12" });
  await until(async () => (await page.getAttribute("#histogram", "data-cursor")) === "12", { what: "the histogram's cursor at step 12" });
  assert.equal(await page.textContent("#scrub-note"), "step 12");

  // An event's step: the validation pass at step 20.
  const { body: events } = await server.api("GET", `/jobs/${job.id}/events`);
  const validation = events.events.find((e) => e.kind === "validation" && e.step === 20);
  assert.ok(validation, `a validation event at step 20: ${JSON.stringify(events.events.map((e) => [e.kind, e.step]))}`);
  await page.click(".events li.kind-validation button.step-link:text-is('step 20')");
  await until(async () => (await tableStep(page)) === "statistics of step 20", { what: "step 20's statistics" });
  assertClose(await tableNorms(page), await restNorms(job.id, 20), "step 20");
  await until(async () => (await page.getAttribute("#heatmap", "data-cursor")) === "20", { what: "the heatmap's cursor at step 20" });
  assert.equal(await page.inputValue("#step-scrubber"), "20", "the scrubber moved to the event's step");

  // Live again.
  await page.click("#scrub-live");
  await until(async () => (await tableStep(page)) === "statistics of step 30", { what: "the latest step again" });
  assertClose(await tableNorms(page), await restNorms(job.id, 30), "live again");
  await until(async () => (await page.getAttribute("#heatmap", "data-cursor")) === null, { what: "no cursor" });
  assert.equal(await page.inputValue("#step-scrubber"), "30");
  await browser.shot("job-scrubber");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

const statusOf = async (id) => (await server.api("GET", `/jobs/${id}`)).body.status;
const stepOf = async (page) => Number(((await page.textContent("#step-counter")) ?? "").split("/")[0]);

test("run actions: cancel asks first, a cancelled run resumes, a run clones into the form, a finished one is deleted", async () => {
  const { page } = browser;
  const job = await server.submit(tinyMlp({ name: "acted-on", steps: 100_000, monitor: { every: 50, histogram: false } }));
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await until(async () => (await stepOf(page)) > 0, { what: "the first step" });
  assert.ok(await page.isHidden("#delete-job"), "a running job offers no delete");
  assert.ok(await page.isHidden("#resume-job"), "nor resume");

  // Cancel asks; "Keep running" keeps it running.
  await page.click("#cancel-job");
  await page.waitForSelector("dialog.confirm[open]");
  assert.match(await page.textContent("#confirm-text"), /Cancel acted-on\?/);
  await page.click("#confirm-no");
  await page.waitForSelector("dialog.confirm", { state: "detached" });
  assert.equal(await statusOf(job.id), "running", "not cancelled without confirmation");
  // Confirmed, it is cancelled.
  await page.click("#cancel-job");
  await page.click("#confirm-yes");
  await until(async () => (await statusOf(job.id)) === "cancelled", { what: "the job to be cancelled" });
  await until(async () => (await page.textContent(".job-head .title-row")).includes("cancelled"), { what: "the page to say cancelled" });

  // A cancelled run resumes from its checkpoint and runs on.
  await page.waitForSelector("#resume-job:visible");
  const stopped = (await server.api("GET", `/jobs/${job.id}`)).body.step;
  await page.click("#resume-job");
  await until(async () => ["queued", "running"].includes(await statusOf(job.id)), { what: "the job to be queued again" });
  await until(async () => (await server.api("GET", `/jobs/${job.id}`)).body.step > stopped, { timeout: 60_000, what: "the resumed run to step on" });
  await until(async () => (await stepOf(page)) > stopped, { what: "the page to follow the resumed run" });
  assert.ok(await page.isHidden("#resume-job"), "a running job offers no resume");
  await page.click("#cancel-job");
  await page.click("#confirm-yes");
  await until(async () => (await statusOf(job.id)) === "cancelled", { what: "the job to be cancelled again" });

  // Clone and edit: the form holds the job's spec under a new name.
  await page.click("#clone-job");
  await page.waitForSelector("#form-note:visible");
  await until(async () => (await page.inputValue("form.spec-form input[name=name]")) === "acted-on (copy)", { what: "the clone's name in the form" });
  assert.equal(await page.inputValue("form.spec-form input[name=steps]"), "100000");
  await page.click("details:has(textarea.spec-json) > summary");
  const shown = JSON.parse(await page.inputValue("textarea.spec-json"));
  const { body: original } = await server.api("GET", `/jobs/${job.id}`);
  assert.deepEqual({ ...shown, name: original.spec.name }, original.spec, "the form holds the job's spec");

  // Delete asks, then the job is gone from the API and the page goes to the list.
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector("#delete-job:visible");
  await page.click("#delete-job");
  await page.click("#confirm-no");
  assert.equal((await server.api("GET", `/jobs/${job.id}`)).status, 200, "kept without confirmation");
  await page.click("#delete-job");
  await page.click("#confirm-yes");
  await until(async () => (await server.api("GET", `/jobs/${job.id}`)).status === 404, { what: "the job to be deleted" });
  await page.waitForFunction(() => location.hash === "#/");
  await page.waitForSelector("form.spec-form");
  assert.equal(await page.$(`tr[data-id="${job.id}"]`), null, "the list no longer shows it");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("a job with the per-layer statistics off shows no empty per-layer panels, and says why", async () => {
  const { page } = browser;
  const job = await server.submit(tinyMlp({ name: "unmonitored", steps: 5, monitor: { every: 0 } }));
  await server.finished(job.id);
  // The API has no per-layer statistics for it.
  const { body } = await server.api("GET", `/jobs/${job.id}/layer-stats?stat=grad_norm`);
  assert.ok(body.layers.every((l) => l.step.length === 0), JSON.stringify(body));
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector("#per-layer-off:visible");
  for (const selector of ["#heatmap", "#histogram", "#layer-table", "#step-scrubber"]) {
    assert.ok(await page.isHidden(selector), `${selector} is left out`);
  }
  assert.ok(await page.isVisible("#loss-chart"), "the step charts stay");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("events: repeated warnings of one kind are one finding with its count; a kind is picked to show it alone", async () => {
  const { page } = browser;
  // The vanishing-gradient preset (a deep sigmoid MLP): a "vanishing" warning for layer after layer.
  const { body: presets } = await server.api("GET", "/presets");
  const preset = presets.presets.find((p) => p.name === "vanishing-mlp");
  const job = await server.submit({ ...preset.spec, name: "warned", steps: 60, device: "cpu" });
  await server.finished(job.id);
  const { body } = await server.api("GET", `/jobs/${job.id}/events`);
  /** @type {Map<string, number>} */
  const counts = new Map();
  for (const e of body.events) counts.set(e.kind, (counts.get(e.kind) ?? 0) + 1);
  const repeated = [...counts].filter(([k, n]) => n > 1 && !k.startsWith("validation"));
  assert.ok(repeated.length > 0, `some warning repeats: ${JSON.stringify([...counts])}`);
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await page.waitForSelector("#event-list li");
  await until(async () => (await page.$$("#event-list > li.finding")).length === repeated.length, { what: "one finding per repeated kind" });
  for (const [kind, n] of repeated) {
    assert.equal(await page.getAttribute(`#event-list > li.finding[data-kind="${kind}"]`, "data-count"), String(n), `${kind}: its count`);
  }
  // Validation passes stay one line each.
  const validations = counts.get("validation") ?? 0;
  assert.equal((await page.$$("#event-list > li[data-kind=validation]")).length, validations);
  // One kind alone.
  const [kind, n] = repeated[0];
  await page.selectOption("#event-kind", kind);
  await until(async () => {
    const kinds = await page.$$eval("#event-list > li", (lis) => lis.map((li) => /** @type {HTMLElement} */ (li).dataset.kind));
    return kinds.length === 1 && kinds[0] === kind;
  }, { what: `only ${kind}` });
  await page.click(`#event-list > li.finding[data-kind="${kind}"] summary`);
  assert.equal((await page.$$(`#event-list > li.finding[data-kind="${kind}"] details li`)).length, Math.min(n, 200), "opened, it lists each");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
