// The jobs page and the job view against a real server: a preset submitted through the
// form, the job followed live, and a 422 shown next to the field it names.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, paintedPixels, startServer, until } from "./helpers.mjs";

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

test("a preset submitted through the form trains live in the job view", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/`);
  await page.waitForSelector("form.spec-form select[name=preset]");
  await page.waitForSelector("text=No jobs yet");
  await browser.shot("01-first-visit");

  await page.selectOption("select[name=preset]", "vanishing-mlp");
  assert.equal(await page.inputValue("input[name='model.layers']"), "10", "the preset fills the form");
  assert.match(await page.textContent(".preset-note"), /sigmoid MLP/);
  // Long enough to watch it move, on the CPU.
  await page.fill("input[name=steps]", "1000");
  await page.fill("input[name=device]", "cpu");
  await page.click("form.spec-form button[type=submit]");

  await page.waitForURL(/#\/jobs\/[0-9a-f-]+$/);
  const id = page.url().split("/").pop();
  const { body: job } = await server.api("GET", `/jobs/${id}`);
  assert.equal(job.name, "vanishing-mlp");
  assert.equal(job.spec.steps, 1000);
  assert.equal(job.spec.model.activation, "sigmoid");

  // The step counter advances while the job runs.
  const seen = [];
  const counter = async () => {
    const text = (await page.textContent("#step-counter")) ?? "";
    const step = Number(text.split("/")[0]);
    if (text && seen[seen.length - 1] !== step) seen.push(step);
    return step;
  };
  await until(async () => (await counter()) > 0, { what: "the first step" });
  await until(async () => (await counter()) >= 300, { what: "step 300" });
  await page.waitForTimeout(400); // let a frame draw the latest steps
  await browser.shot("02-job-live");
  await until(async () => (await counter()) === 1000, { timeout: 120_000, what: "the last step" });
  assert.ok(seen.length >= 3, `the counter moved through several values: ${seen.join(", ")}`);
  for (let i = 1; i < seen.length; i++) assert.ok(seen[i] > seen[i - 1], `the counter only goes up: ${seen.join(", ")}`);

  // The heatmap is drawn, and the table lists every layer the API reports.
  assert.ok((await paintedPixels(page, "#heatmap")) > 1000, "the heatmap canvas has painted pixels");
  assert.ok((await paintedPixels(page, "#histogram")) > 1000, "the histogram canvas has painted pixels");
  const { body: layers } = await server.api("GET", `/jobs/${id}/layers`);
  assert.equal(layers.layers.length, 22, "10 hidden blocks + head, weight and bias each");
  const names = await page.$$eval("#layer-table tbody tr td.layer-name", (tds) => tds.map((td) => td.textContent));
  assert.deepEqual(names, layers.layers.map((l) => l.name));
  const norms = await page.$$eval("#layer-table tbody td.stat-grad_norm", (tds) => tds.map((td) => td.textContent));
  assert.equal(norms.length, layers.layers.length, "a gradient-norm column (hello.statistics names it)");
  assert.ok(norms.every((t) => t !== "–"), "every layer has a gradient norm");

  await page.waitForSelector(".status-succeeded");
  await page.waitForSelector("#layer-table th[data-key=grad_norm]");
  // Sorting by gradient norm, descending first: the head's weight leads in a vanishing MLP.
  await page.click("#layer-table th[data-key=grad_norm]");
  const first = await page.textContent("#layer-table tbody tr:first-child td.layer-name");
  assert.match(first, /^head\./);
  await page.waitForTimeout(300);
  await browser.shot("03-job-finished");

  // Reloading shows the same history from the REST API.
  await page.reload();
  await page.waitForSelector("#layer-table tbody tr");
  await until(async () => (await page.textContent("#step-counter")) === "1000 / 1000", { what: "the counter after reload" });
  assert.ok((await paintedPixels(page, "#heatmap")) > 1000);
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("an invalid spec shows the server's 422 next to the offending field", async () => {
  const { page } = browser;
  const before = (await server.api("GET", "/jobs")).body.jobs.length;
  await page.goto(`${server.url}/#/`);
  await page.waitForSelector("form.spec-form");
  await page.fill("input[name='model.hidden']", "0");
  await page.click("form.spec-form button[type=submit]");
  const message = page.locator("[data-field='model.hidden'] .field-error");
  await message.waitFor();
  assert.match(await message.textContent(), /must be 1 to 16384/);
  assert.ok(await page.locator("[data-field='model.hidden']").evaluate((e) => e.classList.contains("has-error")));
  await browser.shot("04-form-422");

  // A model that does not fit the task is named too.
  await page.fill("input[name='model.hidden']", "64");
  await page.selectOption("select[name='task.kind']", "classification");
  await page.click("form.spec-form button[type=submit]");
  const kind = page.locator("[data-field='model.kind'] .field-error");
  await kind.waitFor();
  assert.match(await kind.textContent(), /lstm takes sequences/);
  assert.equal(await page.locator("[data-field='model.hidden'] .field-error").textContent(), "", "the old message is gone");

  assert.equal((await server.api("GET", "/jobs")).body.jobs.length, before, "nothing was queued");
  assert.match(page.url(), /#\/$/, "the form stays put");
  // Chromium logs each refused request; those two are expected, nothing else is.
  const refused = browser.errors.filter((e) => /status of 422/.test(e));
  assert.equal(refused.length, 2);
  assert.deepEqual(browser.errors.filter((e) => !refused.includes(e)), [], "no other errors in the browser console");
});

test("the form shows the server's defaults and sends the fields it gained", async () => {
  const { page } = browser;
  const { body: doc } = await server.api("GET", "/openapi.json");
  const schemas = doc.components.schemas;
  // A component's field, or (`GradPolicy/zclip`) a field of one kind of a tagged enum.
  const published = (schema, field) => {
    const [name, kind] = schema.split("/");
    const object = kind ? schemas[name].oneOf.find((o) => o.properties.kind.enum[0] === kind) : schemas[name];
    return object.properties[field].default;
  };
  await page.goto(`${server.url}/#/`);
  await page.reload(); // a fresh form, not the one the previous test left
  await page.waitForSelector("form.spec-form input[name='optimizer.lr']");

  // What the form starts from is what the server documents (and so what it applies).
  const shown = async (name) => Number(await page.inputValue(`input[name='${name}']`));
  assert.equal(await shown("optimizer.lr"), published("OptimizerSpec", "lr"));
  assert.equal(await shown("seed"), published("JobSpec", "seed"));
  assert.equal(await shown("batch_size"), published("JobSpec", "batch_size"));
  assert.equal(await shown("monitor.explode_floor"), published("MonitorSpec", "explode_floor"));
  assert.equal(await shown("task.eval_every"), published("TaskSpec/char_lm", "eval_every"));
  // A policy added in the form starts from its published defaults too.
  await page.selectOption("select[name='policy.grad[0].kind']", "zclip");
  await page.waitForSelector("input[name='policy.grad.0.max_grad_norm']");
  assert.equal(await shown("policy.grad.0.alpha"), published("GradPolicy/zclip", "alpha"));
  assert.equal(await shown("policy.grad.0.max_grad_norm"), published("GradPolicy/zclip", "max_grad_norm"));
  // Ranges come from the document as well.
  const hint = await page.textContent("[data-field='model.hidden'] .help");
  assert.equal(hint, `${schemas.ModelSpec.properties.hidden.minimum} to ${schemas.ModelSpec.properties.hidden.maximum}`);

  // Fields the form lacked before reach the submitted spec.
  await page.fill("input[name='policy.grad.0.max_grad_norm']", ""); // blank: no cap
  await page.selectOption("select[name='optimizer.no_decay']", "bias_and_norm");
  await page.click("details.monitor > summary");
  await page.fill("input[name='monitor.explode_floor']", "2.5");
  await page.fill("input[name=steps]", "20");
  await page.fill("input[name=device]", "cpu");
  await page.click("form.spec-form button[type=submit]");
  await page.waitForURL(/#\/jobs\/[0-9a-f-]+$/);
  const id = page.url().split("/").pop();
  const { body: job } = await server.api("GET", `/jobs/${id}`);
  assert.equal(job.spec.optimizer.no_decay, "bias_and_norm");
  assert.equal(job.spec.monitor.explode_floor, 2.5);
  assert.equal(job.spec.policy.grad[0].kind, "zclip");
  assert.equal(job.spec.policy.grad[0].max_grad_norm, null);
  // The norm left at "default for the kind" is the one the server resolved and stored.
  assert.equal(job.spec.model.norm, "none");
  // The previous test's refused requests are the only errors logged.
  assert.deepEqual(browser.errors.filter((e) => !/status of 422/.test(e)), [], "no other errors in the browser console");
});
