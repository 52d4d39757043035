// A user's model on the job page: its layers (`transformer.h.0.attn.c_attn.weight`)
// grouped by block in the table and the heatmap, each block's row holding the block's
// gradient norm (√Σ‖g‖² of its layers', from the REST API), and a block that collapses
// and opens in both. The files come from tests/parity/user_models.py, run with the torch
// venv's python through scripts/with-torch.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { ROOT, openBrowser, paintedPixels, startServer, until } from "./helpers.mjs";

let server;
let browser;
let files;

before(async () => {
  files = mkdtempSync(join(tmpdir(), "gradscope-blocks-"));
  execFileSync(join(ROOT, "scripts/with-torch"), ["python", join(ROOT, "tests/parity/user_models.py"), files, "2"]);
  server = await startServer();
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

async function upload(what, file) {
  const r = await fetch(`${server.url}/api/v1/${what}`, {
    method: "POST",
    headers: { "content-type": "application/octet-stream" },
    body: readFileSync(join(files, file)),
  });
  const body = await r.json();
  assert.equal(r.status, 201, JSON.stringify(body));
  return body.id;
}

/** The block of a parameter name, as the test reads the rule: up to the last numeric part. */
function block(name) {
  // The longest prefix ending in a numeric part, never the tensor's own last part.
  const parts = name.split(".");
  let end = -1;
  for (let i = 0; i < parts.length - 1; i++) if (/^\d+$/.test(parts[i])) end = i;
  return end < 0 ? null : parts.slice(0, end + 1).join(".");
}

test("a user model's layers are grouped by block, with the block's norm, and a block collapses", async () => {
  const model = await upload("models", "gpt.pt");
  const dataset = await upload("datasets", "gpt.safetensors");
  const steps = 30;
  const created = await server.api("POST", "/jobs", {
    name: "blocks", seed: 3, steps, batch_size: 4, device: "cpu",
    model: { kind: "torchscript", id: model },
    task: { kind: "dataset", id: dataset, loss: "cross_entropy" },
    optimizer: { kind: "adamw", lr: 0.01 },
    monitor: { histogram: false },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const id = created.body.id;
  await until(async () => (await server.api("GET", `/jobs/${id}`)).body.status === "succeeded", { timeout: 120_000, what: "the job done" });

  const { body: listed } = await server.api("GET", `/jobs/${id}/layers`);
  const layers = listed.layers;
  const blocks = [...new Set(layers.map((l) => block(l.name)).filter((b) => b !== null))];
  assert.deepEqual(blocks, ["transformer.h.0", "transformer.h.1"], "two transformer blocks");
  const members = (b) => layers.filter((l) => block(l.name) === b);
  assert.equal(members("transformer.h.0").length, 12, "ln_1, c_attn, c_proj, ln_2, c_fc, c_proj: weight and bias each");

  const { page } = browser;
  await page.goto(`${server.url}/#/jobs/${id}`);
  await page.waitForSelector(".job-head .status-succeeded");
  await page.waitForSelector("#layer-table tr.group-row");
  const groups = await page.$$eval("#layer-table tr.group-row", (trs) => trs.map((tr) => tr.dataset.group));
  assert.deepEqual(groups, blocks);
  // Every layer is still listed by its full name, in the module's order, each block's
  // under its block's row.
  const order = await page.$$eval("#layer-table tbody tr", (trs) => trs.map((tr) => tr.dataset.group ? `[${tr.dataset.group}]` : tr.querySelector("td.layer-name")?.textContent));
  const expected = [];
  let open = null;
  for (const l of layers) {
    const b = block(l.name);
    if (b && b !== open) expected.push(`[${b}]`);
    open = b;
    expected.push(l.name);
  }
  assert.deepEqual(order, expected);

  // The block's gradient norm at the last step: √Σ‖g‖² of its layers', from the REST API.
  const { body: stats } = await server.api("GET", `/jobs/${id}/layer-stats?stat=grad_norm&from=${steps}&to=${steps}`);
  for (const b of blocks) {
    const norms = stats.layers.filter((s) => block(s.name) === b).map((s) => s.grad_norm[s.grad_norm.length - 1]);
    assert.equal(norms.length, 12);
    const want = Math.sqrt(norms.reduce((a, x) => a + x * x, 0));
    const shown = Number(await page.textContent(`#layer-table tr[data-group="${b}"] td.group-stat-grad_norm`));
    assert.ok(Math.abs(shown - want) <= 5e-3 * want, `${b}: the page shows ${shown}, √Σ‖g‖² is ${want}`);
  }
  assert.ok((await paintedPixels(page, "#heatmap")) > 1000, "the heatmap is drawn");
  const rows = async () => Number(await page.getAttribute("#heatmap", "data-rows"));
  assert.equal(await rows(), layers.length + blocks.length, "the heatmap has a row per layer and per block");
  await browser.shot("10-job-blocks-open");

  // Collapsing a block hides its layers in the table and the heatmap; opening shows them again.
  const visible = () => page.$$eval("#layer-table tbody tr", (trs) => trs.filter((tr) => !tr.hidden).length);
  await page.click('#layer-table tr[data-group="transformer.h.0"] button.group-toggle');
  await until(async () => (await visible()) === layers.length + blocks.length - 12, { what: "the block's layers hidden" });
  assert.equal(await rows(), layers.length + blocks.length - 12);
  const hidden = await page.$$eval("#layer-table tbody tr", (trs) => trs.filter((tr) => tr.hidden).map((tr) => tr.querySelector("td.layer-name")?.textContent));
  assert.deepEqual(hidden, members("transformer.h.0").map((l) => l.name));
  assert.ok((await paintedPixels(page, "#heatmap")) > 1000, "the collapsed heatmap is drawn");
  await browser.shot("11-job-blocks-collapsed");
  await page.click('#layer-table tr[data-group="transformer.h.0"] button.group-toggle');
  await until(async () => (await visible()) === layers.length + blocks.length, { what: "the block open again" });
  assert.equal(await rows(), layers.length + blocks.length);

  // Ranked by a statistic, the table lists the layers themselves, without blocks.
  await page.click("#layer-table th[data-key=grad_norm]");
  const ranked = await page.$$eval("#layer-table tbody tr", (trs) => trs.filter((tr) => !tr.hidden).map((tr) => tr.querySelector("td.layer-name")?.textContent));
  assert.equal(ranked.length, layers.length);
  assert.deepEqual([...ranked].sort(), layers.map((l) => l.name).sort());
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
