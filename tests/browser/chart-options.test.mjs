// The chart options against a real server: smoothing (checked against an EMA computed
// here from the REST API's losses), the log scale, and "ignore outliers" on a comparison
// with a run whose loss exploded. The jobs are tiny MLPs.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, startServer, tinyMlp, until } from "./helpers.mjs";

let server;
let browser;
let calm;
let storm;

before(async () => {
  server = await startServer();
  calm = (await server.api("POST", "/jobs", tinyMlp({ name: "calm", steps: 300, optimizer: { kind: "sgd", lr: 0.05 } }))).body;
  // A huge step on huge weights: a loss of about 2e11 at step 1, then NaN (skipped).
  storm = (await server.api("POST", "/jobs", tinyMlp({
    name: "storm", steps: 20, model: { kind: "mlp", layers: 6, hidden: 32, activation: "relu", init_scale: 100 },
    optimizer: { kind: "sgd", lr: 10 }, policy: { grad: [], on_nonfinite: "skip" },
  }))).body;
  await server.finished(calm.id);
  await server.finished(storm.id);
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The EMA of `values` with weight `w`, debiased as TensorBoard's; nulls stay null. */
function ema(values, w) {
  let acc = 0;
  let n = 0;
  return values.map((v) => {
    if (v === null) return null;
    acc = acc * w + (1 - w) * v;
    n++;
    return acc / (1 - w ** n);
  });
}

async function setSmoothing(page, value) {
  await page.locator(".chart-options input[name=smoothing]").evaluate((input, v) => {
    input.value = String(v);
    input.dispatchEvent(new Event("input", { bubbles: true }));
  }, value);
}

/** A legend's values by series label, under the cursor. */
function legend(page, box) {
  return page.$$eval(`${box} .u-legend tr.u-series`, (rows) => Object.fromEntries(rows.map((r) => [
    r.querySelector("th")?.textContent?.trim() ?? "", r.querySelector("td.u-value")?.textContent ?? ""])));
}

test("smoothing draws the EMA over the raw loss, and the log scale holds", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/`);
  await page.evaluate(() => localStorage.clear());
  await page.goto(`${server.url}/#/jobs/${calm.id}`);
  await page.waitForSelector("#loss-chart .u-over");
  await until(async () => (await page.getAttribute("#loss-chart", "data-points")) === "300", { what: "every step" });

  await setSmoothing(page, 0.9);
  const { body: steps } = await server.api("GET", `/jobs/${calm.id}/steps?max_points=1000`);
  assert.equal(steps.step.length, 300);
  const smooth = ema(steps.loss, 0.9);
  const over = await page.locator("#loss-chart .u-over").boundingBox();
  for (const at of [0.2, 0.5, 0.9]) {
    await page.mouse.move(over.x + over.width * at, over.y + over.height / 2);
    const shown = await until(async () => {
      const l = await legend(page, "#loss-chart");
      return l.step && l.step !== "--" && l.train !== "–" ? l : null;
    }, { what: "the legend under the cursor", timeout: 5000 });
    const i = steps.step.indexOf(Number(shown.step));
    assert.ok(i >= 0, `step ${shown.step} is a recorded step`);
    const expected = smooth[i];
    assert.ok(Math.abs(Number(shown.train) - expected) <= 5e-4 * Math.abs(expected),
      `step ${shown.step}: smoothed ${shown.train}, the EMA is ${expected}`);
    assert.ok(Math.abs(Number(shown["train (raw)"]) - steps.loss[i]) <= 5e-4 * Math.abs(steps.loss[i]),
      `step ${shown.step}: raw ${shown["train (raw)"]}, the loss is ${steps.loss[i]}`);
  }
  await page.waitForTimeout(300);
  await browser.shot("chart-options-smoothed");

  // The loss on a log scale: decade labels; the choice outlives a reload.
  await page.check(".chart-options input[name=logLoss]");
  await until(async () => (await page.getAttribute("#loss-chart", "data-log")) === "true", { what: "the log scale" });
  await page.reload();
  await page.waitForSelector("#loss-chart .u-over");
  assert.equal(await page.getAttribute("#loss-chart", "data-log"), "true");
  assert.ok(await page.isChecked(".chart-options input[name=logLoss]"));
  assert.equal(await page.inputValue(".chart-options input[name=smoothing]"), "0.9");
  await until(async () => (await page.getAttribute("#loss-chart", "data-points")) === "300", { what: "every step" });
  await page.waitForTimeout(300);
  const ticks = JSON.parse(await page.getAttribute("#loss-chart", "data-y-ticks")).map(Number);
  assert.ok(ticks.length >= 2 && ticks.every((t) => t > 0), `positive ticks: ${ticks}`);
  assert.ok(ticks.some((t) => Math.abs(Math.log10(t) - Math.round(Math.log10(t))) < 1e-9), `a power of ten among ${ticks}`);
  await browser.shot("chart-options-log");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("ignoring outliers keeps a calm run readable beside one whose loss exploded", async () => {
  const { page } = browser;
  const { body: stormSteps } = await server.api("GET", `/jobs/${storm.id}/steps`);
  const peak = Math.max(...stormSteps.loss.filter((v) => v !== null));
  assert.ok(peak > 1e9, `the storm's loss reached ${peak}`);
  const { body: calmSteps } = await server.api("GET", `/jobs/${calm.id}/steps?max_points=1000`);
  const calmMax = Math.max(...calmSteps.loss);

  await page.goto(`${server.url}/`);
  await page.evaluate(() => localStorage.clear());
  await page.goto(`${server.url}/#/compare?ids=${calm.id},${storm.id}`);
  await page.waitForSelector("#compare-summary tbody tr");
  await page.waitForTimeout(300);
  const ticks = async () => JSON.parse(await page.getAttribute(".compare-grid .chart >> nth=0", "data-y-ticks")).map(Number);
  const scale = async () => JSON.parse(await page.getAttribute(".profiles", "data-scale"));
  const wide = await ticks();
  assert.ok(Math.max(...wide) >= peak / 10, `the explosion sets the scale: ${wide}`);
  const [lo, hi] = await scale();
  await browser.shot("chart-options-outliers-off");

  await page.check(".chart-options input[name=outliers]");
  await until(async () => Math.max(...(await ticks())) < 10 * calmMax, { what: "the calm run's scale", timeout: 5000 });
  const calmTicks = await ticks();
  assert.ok(Math.min(...calmTicks) <= calmMax && Math.max(...calmTicks) >= Math.min(...calmSteps.loss), `ticks ${calmTicks} span the calm loss`);
  const [rlo, rhi] = await scale();
  assert.ok(rhi - rlo < hi - lo, `the heatmaps' colour scale narrows: [${rlo}, ${rhi}] within [${lo}, ${hi}]`);
  await page.waitForTimeout(300);
  await browser.shot("chart-options-outliers-on");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
