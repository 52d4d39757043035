// Bugs a user hit on the dashboard, each checked against a real server where the page
// used to get it wrong. The jobs are tiny MLPs (a few hundred parameters), cheap on a
// shared CPU; those that would run long are cancelled once seen running.

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

const stepOf = async (page) => Number(((await page.textContent("#step-counter")) ?? "").split("/")[0]);

async function freshForm(page) {
  await page.goto(`${server.url}/#/`);
  await page.reload();
  await page.waitForSelector("form.spec-form input[name=steps]");
}

test("edits typed into the spec's JSON are what Submit sends", async () => {
  const { page } = browser;
  await freshForm(page);
  await page.fill("input[name=steps]", "20");
  await page.fill("input[name=device]", "cpu");
  await page.click("details:has(textarea.spec-json) > summary");
  const spec = JSON.parse(await page.inputValue("textarea.spec-json"));
  assert.equal(spec.steps, 20, "the JSON shows the form");
  spec.name = "typed-as-json";
  spec.steps = 7;
  spec.model.hidden = 16;
  await page.fill("textarea.spec-json", JSON.stringify(spec, null, 2));
  await browser.shot("bug-json-edited");
  await page.click("form.spec-form button[type=submit]");
  await page.waitForURL(/#\/jobs\/[0-9a-f-]+$/);
  const { body: job } = await server.api("GET", `/jobs/${page.url().split("/").pop()}`);
  assert.equal(job.name, "typed-as-json", "the JSON's name, not the form's");
  assert.equal(job.spec.steps, 7);
  assert.equal(job.spec.model.hidden, 16);

  // JSON that does not parse is not sent; the page says so next to it.
  const count = (await server.api("GET", "/jobs")).body.jobs.length;
  await freshForm(page);
  await page.fill("input[name=device]", "cpu");
  await page.click("details:has(textarea.spec-json) > summary");
  await page.fill("textarea.spec-json", '{"steps": 7, "model": ');
  await page.click("form.spec-form button[type=submit]");
  const message = page.locator("details:has(textarea.spec-json) .field-error");
  await until(async () => (await message.textContent()) !== "", { what: "the JSON's error", timeout: 5000 });
  assert.match(await message.textContent(), /does not parse.*not submitted/);
  assert.match(page.url(), /#\/$/, "the form stays put");
  assert.equal((await server.api("GET", "/jobs")).body.jobs.length, count, "nothing was queued");
  assert.equal(await page.inputValue("textarea.spec-json"), '{"steps": 7, "model": ', "the text is kept to fix");

  // A field edited after the JSON: the form wins, and the JSON shows it again.
  await page.fill("textarea.spec-json", JSON.stringify({ ...spec, steps: 9 }));
  assert.match(await page.textContent(".json-note"), /Submit sends this JSON/);
  await page.fill("input[name=steps]", "11");
  assert.equal(JSON.parse(await page.inputValue("textarea.spec-json")).steps, 11);
  assert.equal(await page.textContent(".json-note"), "");
  await server.finished(job.id);
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

/** A job that would run for minutes, at a learning rate of 0.05: seen running, then cancelled. */
let long;
const longJob = async () => (long ??= await server.submit(tinyMlp({
  name: "long-runner", steps: 100_000, optimizer: { kind: "sgd", lr: 0.05 }, monitor: { every: 50, histogram: false },
})));

test("the compare page's chips and panel badges follow the job's status", async () => {
  const { page } = browser;
  await longJob();
  await page.goto(`${server.url}/#/compare?ids=${long.id}`);
  const chip = page.locator(`.picker label:has(input[value="${long.id}"]) .status`);
  const badge = page.locator(`.profile[data-id="${long.id}"] h4 .status`);
  const row = page.locator(`#compare-summary tr[data-id="${long.id}"] .status`);
  await row.waitFor();
  assert.equal(await chip.textContent(), "running");
  assert.equal(await badge.textContent(), "running");
  const cancelled = await server.api("POST", `/jobs/${long.id}/cancel`);
  assert.equal(cancelled.status, 202);
  await until(async () => (await row.textContent()) === "cancelled", { what: "the table to say cancelled" });
  await browser.shot("bug-compare-status");
  assert.equal(await chip.textContent(), "cancelled", "the chip says what the table says");
  assert.equal(await badge.textContent(), "cancelled", "the panel's badge says what the table says");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

/** The labels a chart drew on its y axis (`data-y-ticks` of its box). */
async function yTicks(page, selector) {
  const raw = await page.getAttribute(selector, "data-y-ticks");
  assert.ok(raw, `${selector} has y-axis labels`);
  return JSON.parse(raw);
}

test("the learning-rate chart has ticks around 0.05 and a value on hover", async () => {
  const { page } = browser;
  await longJob();
  await server.api("POST", `/jobs/${long.id}/cancel`); // if it still runs
  await server.finished(long.id);
  const { body: steps } = await server.api("GET", `/jobs/${long.id}/steps?max_points=10`);
  assert.ok(steps.lr.every((v) => v === 0.05), "a constant learning rate of 0.05");
  await page.goto(`${server.url}/#/jobs/${long.id}`);
  await page.waitForSelector(".job-head .status-cancelled");
  const box = "#lr-chart";
  await page.waitForSelector(`${box} .u-over`);
  await page.waitForTimeout(300); // a frame draws the data
  await browser.shot("bug-lr-chart");
  const labels = await yTicks(page, box);
  const values = labels.map(Number);
  assert.ok(values.length >= 2, `at least two labels: ${labels}`);
  assert.ok(values.every(Number.isFinite), `labels are numbers: ${labels}`);
  assert.equal(new Set(labels).size, labels.length, `labels are distinct: ${labels}`);
  assert.ok(Math.min(...values) <= 0.05 && Math.max(...values) >= 0.05, `0.05 lies among the ticks: ${labels}`);

  const over = await page.locator(`${box} .u-over`).boundingBox();
  await page.mouse.move(over.x + over.width / 2, over.y + over.height / 2);
  const value = page.locator(`${box} .u-legend .u-series:nth-child(2) .u-value`);
  await until(async () => (await value.count()) > 0 && (await value.textContent()) === "0.05", { what: "the lr under the cursor", timeout: 5000 });
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

/**
 * A 12-layer ReLU MLP at 100× the usual initialisation and a learning rate that changes
 * nothing: losses of about 1e20, gradients of about 1e19, whose squares overflow a float32.
 */
let huge;
/** The largest float32. */
const F32_MAX = 3.4028234663852886e38;
const hugeJob = async () => (huge ??= await server.submit(tinyMlp({
  name: "huge", steps: 20, model: { kind: "mlp", layers: 12, hidden: 32, activation: "relu", init_scale: 100 },
  optimizer: { kind: "sgd", lr: 1e-30 }, policy: { grad: [], on_nonfinite: "skip" }, monitor: { every: 1 },
})));

test("a diverging loss keeps readable, uncut axis labels", async () => {
  const { page } = browser;
  await hugeJob();
  await server.finished(huge.id);
  const { body: steps } = await server.api("GET", `/jobs/${huge.id}/steps`);
  const losses = steps.loss.filter((v) => v !== null);
  assert.ok(Math.max(...losses) > 1e18, `losses reach ${Math.max(...losses)}`);
  await page.goto(`${server.url}/#/jobs/${huge.id}`);
  await page.waitForSelector("#loss-chart .u-over");
  await page.waitForTimeout(300);
  await browser.shot("bug-axis-huge-loss");
  const labels = await yTicks(page, "#loss-chart");
  const values = labels.map(Number);
  assert.ok(values.length >= 2, `at least two labels: ${labels}`);
  assert.ok(values.every(Number.isFinite), `labels are numbers: ${labels}`);
  assert.ok(labels.every((l) => l.length <= 8), `labels are short: ${labels}`);
  assert.ok(Math.max(...values) >= Math.min(...losses), `the labels span the losses: ${labels}`);
  // Every label fits the axis: its width, in the axis font, within the room left of the plot.
  const fit = await page.evaluate((texts) => {
    const ctx = document.createElement("canvas").getContext("2d");
    ctx.font = "11px system-ui, sans-serif";
    const widest = Math.max(...texts.map((t) => ctx.measureText(t).width));
    const over = /** @type {HTMLElement} */ (document.querySelector("#loss-chart .u-over"));
    return { widest, room: over.offsetLeft - 18 };
  }, labels);
  assert.ok(fit.widest + 5 <= fit.room, `the widest label (${fit.widest} px) fits the axis (${fit.room} px)`);
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("while a job runs, the head's counter and its progress bar show the same step", async () => {
  const { page } = browser;
  const job = await server.submit(tinyMlp({ name: "watched", steps: 100_000, monitor: { every: 50, histogram: false } }));
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await until(async () => (await stepOf(page)) > 0, { what: "the first step" });
  // Every state the head passes through: after each change to it, and at each frame.
  await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.stepSamples = { seen: 0, differ: [] };
    const look = () => {
      const counter = document.querySelector("#step-counter")?.textContent ?? "";
      const bar = document.querySelector(".job-head .progress span")?.textContent ?? "";
      if (!counter || !bar) return;
      w.stepSamples.seen++;
      if (counter !== bar) w.stepSamples.differ.push(`${counter} vs ${bar}`);
    };
    w.stepObserver = new MutationObserver(look);
    w.stepObserver.observe(document.querySelector(".job-head"), { subtree: true, childList: true, characterData: true });
    const frame = () => {
      look();
      if (!w.stepSamples.stop) requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  });
  const start = await stepOf(page);
  await until(async () => (await stepOf(page)) >= start + 500, { what: "500 more steps" });
  await browser.shot("bug-head-step");
  const samples = await page.evaluate(() => {
    const w = /** @type {any} */ (window);
    w.stepSamples.stop = true;
    w.stepObserver.disconnect();
    return w.stepSamples;
  });
  assert.equal((await server.api("POST", `/jobs/${job.id}/cancel`)).status, 202);
  assert.ok(samples.seen > 10, `the head was looked at ${samples.seen} times`);
  assert.deepEqual(samples.differ.slice(0, 5), [], `counter and bar disagreed ${samples.differ.length} of ${samples.seen} times`);
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("a layer whose gradient overflowed or holds NaN/Inf says so, in its values and its health", async () => {
  const { page } = browser;
  // The huge job's finite gradients, whose squares overflow a float32 (their norms, summed
  // in float64, exist); and a storm of NaN (a huge step).
  await hugeJob();
  const storm = await server.submit(tinyMlp({
    name: "nan-storm", steps: 20, model: { kind: "mlp", layers: 6, hidden: 32, activation: "relu", init_scale: 100 },
    optimizer: { kind: "sgd", lr: 10 }, policy: { grad: [], on_nonfinite: "skip" }, monitor: { every: 1 },
  }));
  for (const [job, kind] of [[huge, "overflow"], [storm, "nonfinite"]]) {
    const done = await server.finished(job.id);
    const { body } = await server.api("GET", `/jobs/${job.id}/layer-stats?stat=grad_norm,grad_max,nonfinite&from=${done.step}`);
    const expect = body.layers.map((l) => {
      const [norm, max, bad] = [l.grad_norm, l.grad_max, l.nonfinite].map((series) => series[series.length - 1]);
      // A norm that does not exist reads why; a layer's health flags NaN/Inf, or a norm
      // that overflowed a float32 or a max |g| whose square does.
      const text = norm !== null ? null : bad > 0 ? "NaN/Inf" : "overflow";
      const flag = bad > 0 ? "nonfinite" : norm === null || max > Math.sqrt(F32_MAX) ? "overflow" : null;
      return { index: l.index, text, flag };
    });
    assert.ok(expect.some((e) => e.flag === kind), `${job.name}: some layer is ${kind} at step ${done.step}`);
    await page.goto(`${server.url}/#/jobs/${job.id}`);
    await page.waitForSelector("#layer-table tbody tr[data-layer] td.stat-grad_norm");
    await until(async () => (await page.textContent("#table-step")) === `statistics of step ${done.step}`, { what: "the last step's statistics" });
    await page.waitForTimeout(400); // the table redraws at most every 300 ms
    await browser.shot(`bug-${kind}-table`);
    for (const e of expect.filter((x) => x.flag)) {
      const row = `#layer-table tbody tr[data-layer="${e.index}"]`;
      if (e.text) assert.equal(await page.textContent(`${row} td.stat-grad_norm`), e.text, `${job.name} layer ${e.index}: ‖g‖`);
      const health = (await page.textContent(`${row} td.health`)) ?? "";
      assert.ok(health.split(" ").includes(e.flag), `${job.name} layer ${e.index}: health "${health}" names ${e.flag}`);
    }
    // A block with such a layer has no norm either: √Σ‖g‖² of the others would understate it.
    const blocks = await page.$$eval("#layer-table tr.group-row", (trs) => trs.map((tr) => tr.dataset.group));
    for (const block of blocks) {
      const members = body.layers.filter((l) => l.name.startsWith(`${block}.`)).map((l) => expect.find((e) => e.index === l.index));
      const broken = members.filter((e) => e?.text);
      if (!broken.length) continue;
      const text = await page.textContent(`#layer-table tr.group-row[data-group="${block}"] td.group-stat-grad_norm`);
      assert.ok(broken.some((e) => e.text === text), `${job.name} block ${block}: ‖g‖ "${text}"`);
    }
  }
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("a spec with several invalid fields shows every error next to its field at once", async () => {
  const { page } = browser;
  await freshForm(page);
  const count = (await server.api("GET", "/jobs")).body.jobs.length;
  await page.fill("input[name=steps]", "0");
  await page.fill("input[name=device]", "tpu");
  await page.fill("input[name='model.hidden']", "0");
  await page.fill("input[name='optimizer.lr']", "-1");
  await page.click("form.spec-form button[type=submit]");
  const error = (field) => page.locator(`[data-field='${field}'] > .field-error`);
  await until(async () => (await error("steps").textContent()) !== "", { what: "the errors", timeout: 10_000 });
  await page.waitForTimeout(200);
  await browser.shot("bug-form-errors");
  for (const field of ["steps", "device", "model.hidden", "optimizer.lr"]) {
    assert.notEqual(await error(field).textContent(), "", `${field} has its message`);
    assert.ok(await page.locator(`[data-field='${field}']`).evaluate((e) => e.classList.contains("has-error")), `${field} is marked`);
  }
  assert.match(await error("model.hidden").textContent(), /must be 1 to 16384/);
  assert.match(await error("device").textContent(), /auto, cpu, cuda/);
  assert.equal((await server.api("GET", "/jobs")).body.jobs.length, count, "nothing was queued");
  const refused = browser.errors.filter((e) => /status of 422/.test(e));
  assert.equal(refused.length, 1, "one request, refused once");
  assert.deepEqual(browser.errors.filter((e) => !refused.includes(e)), [], "no other errors in the browser console");
});
