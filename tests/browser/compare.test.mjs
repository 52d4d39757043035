// The compare view against a real server: two finished jobs (a preset pair, shortened)
// picked in the job list, overlaid and profiled side by side; then the dark theme.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, paintedPixels, startServer, until } from "./helpers.mjs";

let server;
let browser;
const jobs = [];

before(async () => {
  server = await startServer();
  const { body } = await server.api("GET", "/presets");
  for (const name of ["vanishing-mlp", "vanishing-mlp-batchnorm"]) {
    const preset = body.presets.find((p) => p.name === name);
    const spec = { ...preset.spec, steps: 300, device: "cpu" };
    const created = await server.api("POST", "/jobs", spec);
    assert.equal(created.status, 201);
    jobs.push(created.body);
  }
  await until(async () => {
    const list = (await server.api("GET", "/jobs")).body.jobs;
    return list.every((j) => j.status === "succeeded");
  }, { timeout: 120_000, what: "both jobs to finish" });
  browser = await openBrowser({ width: 1440, height: 900 });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("two finished jobs compare side by side", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/`);
  for (const job of jobs) await page.check(`tr[data-id="${job.id}"] input[type=checkbox]`);
  await page.click("text=Compare selected");
  await page.waitForURL(/#\/compare\?ids=/);
  await page.waitForSelector("#compare-summary tbody tr");

  const rows = await page.$$eval("#compare-summary tbody tr", (trs) => trs.map((tr) => tr.dataset.id));
  assert.deepEqual(rows.sort(), jobs.map((j) => j.id).sort());
  const statuses = await page.$$eval("#compare-summary tbody .status", (s) => s.map((e) => e.textContent));
  assert.deepEqual(statuses, ["succeeded", "succeeded"]);
  const legend = await page.$$eval(".compare-grid .u-legend .u-series th", (ths) => ths.map((th) => th.textContent.trim()));
  for (const name of ["vanishing-mlp", "vanishing-mlp-batchnorm"]) assert.ok(legend.includes(name), `the overlay shows ${name}`);

  const panels = page.locator(".profiles .profile");
  assert.equal(await panels.count(), 2);
  for (let i = 0; i < 2; i++) {
    const id = await panels.nth(i).getAttribute("data-id");
    assert.ok((await paintedPixels(page, `.profile[data-id="${id}"] canvas.profile-heat`)) > 1000, "each profile heatmap is drawn");
    assert.ok((await paintedPixels(page, `.profile[data-id="${id}"] .uplot canvas`)) > 100, "each profile chart is drawn");
  }
  await page.waitForTimeout(300);
  await browser.shot("05-compare");

  // Dark theme by the toggle (auto → light → dark); the charts are rebuilt in its colours.
  await page.click("#theme");
  await page.click("#theme");
  assert.equal(await page.getAttribute("html", "data-theme"), "dark");
  await page.waitForSelector("#compare-summary tbody tr");
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.equal(bg, "rgb(18, 21, 27)");
  await page.waitForTimeout(300);
  await browser.shot("06-compare-dark");

  await page.goto(`${server.url}/#/`);
  await page.waitForSelector(`tr[data-id="${jobs[0].id}"] .spark canvas`);
  await page.waitForTimeout(300);
  await browser.shot("07-jobs-dark");

  // A wide monitor: the job view in three columns.
  await page.setViewportSize({ width: 1920, height: 1080 });
  await page.goto(`${server.url}/#/jobs/${jobs[1].id}`);
  await page.waitForSelector("#layer-table tbody tr");
  await until(async () => (await page.textContent("#step-counter")) === "300 / 300", { what: "the counter" });
  await page.waitForTimeout(300);
  await browser.shot("08-job-wide-dark");

  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
