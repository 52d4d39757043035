// The experiment page against a real server: a finished grid of 2 cells × 3 seeds reached
// from the job list, its results table beside the server's figures, each cell's loss band
// beside the jobs' own final losses; then a preset group run with 5 seeds, and cancelled.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, paintedPixels, startServer, until } from "./helpers.mjs";

let server;
let browser;
let experiment;

const base = {
  seed: 1, steps: 20, batch_size: 16, device: "cpu",
  task: { kind: "adding", seq_len: 8, eval_every: 10 },
  model: { kind: "rnn", layers: 1, hidden: 16 },
  optimizer: { kind: "sgd", lr: 0.1, momentum: 0.9 },
  monitor: { every: 5, histogram: false },
};

before(async () => {
  server = await startServer();
  const created = await server.api("POST", "/experiments", {
    name: "clip-or-not",
    base,
    axes: [{ path: "policy.grad", values: [[], [{ kind: "clip_norm", max_norm: 1 }]], labels: ["none", "clip"] }],
    seeds: 3,
    threshold: { metric: "loss", at_most: 0.3 },
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  experiment = created.body;
  await until(async () => (await server.api("GET", `/experiments/${experiment.id}`)).body.status === "finished",
    { timeout: 120_000, what: "the experiment to finish" });
  browser = await openBrowser({ width: 1440, height: 900 });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("an experiment's page shows its cells, their figures and their loss bands", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/`);
  await page.click(`#experiments tr[data-id="${experiment.id}"] a`);
  await page.waitForURL(new RegExp(`#/experiments/${experiment.id}$`));
  await page.waitForSelector("#experiment-results tbody tr");

  const results = (await server.api("GET", `/experiments/${experiment.id}/results`)).body;
  const heads = await page.$$eval("#experiment-results thead th", (ths) => ths.map((th) => th.textContent));
  assert.deepEqual(heads.slice(0, 2), ["cell", "policy.grad"], "the axes are columns");
  const rows = await page.$$eval("#experiment-results tbody tr", (trs) => trs.map((tr) => ({
    cell: tr.dataset.cell,
    label: tr.children[1].textContent,
    values: Object.fromEntries([...tr.querySelectorAll("td[data-key]")].map((td) => [td.dataset.key, td.dataset.value ?? td.textContent])),
  })));
  assert.equal(rows.length, 2, "the cells are rows");
  for (const [i, row] of rows.entries()) {
    const cell = results.cells[i];
    assert.equal(row.cell, String(cell.cell));
    assert.equal(row.label, ["none", "clip"][i]);
    assert.equal(row.values.runs, "3/3");
    assert.equal(row.values.train_loss, String(cell.train_loss.mean));
    assert.equal(row.values.divergence_rate, String(cell.divergence_rate));
    assert.equal(row.values.solved_rate, String(cell.solved_rate));
  }

  // Each cell's band: the last step's mean, lowest and highest over its seeds, against the
  // jobs' own final losses.
  const jobs = (await server.api("GET", "/jobs?limit=50")).body.jobs;
  await page.waitForSelector(".cell-curve .uplot canvas");
  const cards = await page.$$eval(".cell-curve", (cs) => cs.map((c) => ({ cell: c.dataset.cell, runs: c.dataset.runs, last: JSON.parse(c.dataset.last) })));
  assert.equal(cards.length, 2);
  for (const card of cards) {
    const losses = jobs.filter((j) => j.experiment_id === experiment.id && String(j.cell) === card.cell).map((j) => j.loss);
    assert.equal(losses.length, 3);
    assert.equal(card.runs, "3");
    assert.equal(card.last.step, 20);
    const mean = losses.reduce((a, v) => a + v, 0) / losses.length;
    assert.ok(Math.abs(card.last.mean - mean) <= 1e-12 * Math.abs(mean), `cell ${card.cell}: mean ${card.last.mean} vs ${mean}`);
    assert.equal(card.last.min, Math.min(...losses));
    assert.equal(card.last.max, Math.max(...losses));
    assert.ok((await paintedPixels(page, `.cell-curve[data-cell="${card.cell}"] .uplot canvas`)) > 500, "the band and the mean are drawn");
  }
  assert.equal(await page.locator("#experiment-jobs tbody tr").count(), 6);
  await page.waitForTimeout(300);
  await browser.shot("12-experiment");

  // From a job of the experiment back to the experiment, through the job list.
  await page.goto(`${server.url}/#/`);
  await page.waitForSelector(".experiment-link");
  await page.click(".experiment-link");
  await page.waitForURL(new RegExp(`#/experiments/${experiment.id}$`));
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("a preset group runs with 5 seeds as an experiment", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/`);
  await page.click('button[data-group="exploding"]');
  await page.waitForURL(/#\/experiments\/[0-9a-f-]+$/);
  await page.waitForSelector("#experiment-results tbody tr");
  const labels = await page.$$eval("#experiment-results tbody tr", (trs) => trs.map((tr) => tr.children[1].textContent));
  assert.deepEqual(labels, ["exploding-rnn", "exploding-rnn-clipped"]);
  assert.equal(await page.locator("#experiment-jobs tbody tr").count(), 10, "2 cells × 5 seeds");
  const id = page.url().split("/").pop();
  const stored = (await server.api("GET", `/experiments/${id}`)).body;
  assert.equal(stored.spec.axes[0].path, "policy.grad");
  await page.click("text=Cancel");
  await until(async () => (await server.api("GET", `/experiments/${id}`)).body.status === "finished",
    { timeout: 60_000, what: "the cancelled experiment to finish" });
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
