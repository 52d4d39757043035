// The new-job form with the user's own model and data: both uploaded from files through
// the form, picked, and trained by the submitted job. The files come from
// tests/parity/user_models.py, run with the torch venv's python through scripts/with-torch.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ROOT, openBrowser, startServer, until } from "./helpers.mjs";

let server;
let browser;
let files;

before(async () => {
  files = mkdtempSync(join(tmpdir(), "gradscope-user-models-"));
  execFileSync(join(ROOT, "scripts/with-torch"), ["python", join(ROOT, "tests/parity/user_models.py"), files, "2"]);
  server = await startServer();
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("the form uploads a model and a data set, picks them, and the job trains them", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/#/`);
  await page.waitForSelector("form.spec-form select[name='task.kind']");
  await page.selectOption("select[name='task.kind']", "dataset");
  await page.setInputFiles("input[name='task.id-file']", join(files, "mlp.safetensors"));
  await until(async () => (await page.inputValue("select[name='task.id']")) !== "", { what: "the data set picked" });
  await page.selectOption("select[name='model.kind']", "torchscript");
  await page.setInputFiles("input[name='model.id-file']", join(files, "mlp.pt"));
  await until(async () => (await page.inputValue("select[name='model.id']")) !== "", { what: "the model picked" });
  // The data set stays picked when the form redraws for the model's kind.
  const dataset = await page.inputValue("select[name='task.id']");
  assert.notEqual(dataset, "");

  const { body: models } = await server.api("GET", "/models");
  const { body: datasets } = await server.api("GET", "/datasets");
  assert.equal(models.count, 1);
  assert.equal(datasets.datasets[0].id, dataset);

  await page.fill("input[name=steps]", "20");
  await page.fill("input[name=batch_size]", "8");
  await page.fill("input[name=device]", "cpu");
  await page.click("form.spec-form button[type=submit]");
  await page.waitForURL(/#\/jobs\/[0-9a-f-]+$/);
  const id = page.url().split("/").pop();
  const { body: job } = await server.api("GET", `/jobs/${id}`);
  assert.deepEqual([job.spec.model.kind, job.spec.model.id], ["torchscript", models.models[0].id]);
  assert.deepEqual([job.spec.task.kind, job.spec.task.id], ["dataset", dataset]);
  await until(async () => (await server.api("GET", `/jobs/${id}`)).body.status === "succeeded", { what: "the job done" });
  const { body: layers } = await server.api("GET", `/jobs/${id}/layers`);
  assert.equal(layers.layers[0].name, "0.weight", "layers are the module's parameter names");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
