// The job page by keyboard alone, on a transformer of 40 layers (3 blocks of 12 and the
// embedding, positions and head): Tab reaches the heatmap, whose arrow keys move a cursor
// over layers × steps and say each cell's layer, step and norm (checked against the REST
// API), and whose Enter selects a layer or opens a block as a click does (the forward
// signal's heatmap is reached and read the same way); Tab reaches the
// layer table, whose arrow keys move from row to row selecting each layer, and whose Enter
// and arrows open and collapse a block.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, startServer, tinyTransformer, until } from "./helpers.mjs";

let server;
let browser;
let job;
let layers;
const STEPS = 20;

before(async () => {
  server = await startServer();
  job = await server.submit(tinyTransformer(3, { name: "keys", steps: STEPS, monitor: { every: 1, histogram: false } }));
  assert.equal((await server.finished(job.id)).status, "succeeded");
  layers = (await server.api("GET", `/jobs/${job.id}/layers`)).body.layers;
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The block of a parameter name, as the test reads the rule: up to the last numeric part. */
function block(name) {
  const parts = name.split(".");
  let end = -1;
  for (let i = 0; i < parts.length - 1; i++) if (/^\d+$/.test(parts[i])) end = i;
  return end < 0 ? null : parts.slice(0, end + 1).join(".");
}

/** The rows shown with every block collapsed: a block's row, or a layer outside any block. */
function collapsedRows() {
  const rows = [];
  for (const l of layers) {
    const b = block(l.name);
    if (b === null) rows.push({ name: l.name, layer: l.index });
    else if (!rows.some((r) => r.name === b)) rows.push({ name: b, block: true });
  }
  return rows;
}

/** Presses Tab until `test` holds for the focused element (at most 300 times). */
async function tabTo(page, what, test) {
  for (let i = 0; i < 300; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate(test)) return;
  }
  throw new Error(`Tab never reached ${what}`);
}

async function openJob(page) {
  await page.goto(`${server.url}/#/jobs/${job.id}`);
  await page.reload();
  await page.waitForSelector(".job-head .status-succeeded");
  await until(async () => (await page.textContent("#table-step")) === `statistics of step ${STEPS}`, { what: "the last step's statistics" });
  await page.waitForTimeout(400);
}

test("the heatmap is reached with Tab; arrows move over layers and steps, saying each cell; Enter selects a layer or opens a block", async () => {
  const { page } = browser;
  await openJob(page);
  const rows = collapsedRows();
  assert.equal(rows.length, layers.length - 36 + 3);
  assert.equal(Number(await page.getAttribute("#heatmap", "data-rows")), rows.length, "a model of 40 layers starts with its blocks collapsed");

  await tabTo(page, "the heatmap", () => document.activeElement?.id === "heatmap");
  const live = page.locator("#heatmap + .sr-only");
  const said = () => live.textContent();
  // To the first row and the first step.
  await page.keyboard.press("PageUp");
  await page.keyboard.press("Home");
  assert.equal(await page.getAttribute("#heatmap", "data-focus-row"), "0");
  assert.equal(await page.getAttribute("#heatmap", "data-focus-col"), "0");
  assert.ok((await said()).startsWith(`${rows[0].name} · step 1 · `), await said());
  assert.ok(!(await page.locator(".heat-wrap .tip").first().isHidden()), "the tip shows the cell too");

  // Down each row: each says its name.
  for (let r = 1; r < rows.length; r++) {
    await page.keyboard.press("ArrowDown");
    assert.ok((await said()).startsWith(`${rows[r].name} `), `row ${r}: ${await said()}`);
  }
  // The last row (the head's bias, outside any block) at the last step: its norm, as the REST API has it.
  await page.keyboard.press("End");
  const last = rows[rows.length - 1];
  assert.equal(last.block, undefined);
  const { body: stats } = await server.api("GET", `/jobs/${job.id}/layer-stats?stat=grad_norm&from=${STEPS}&to=${STEPS}&layers=${last.layer}`);
  const want = stats.layers[0].grad_norm[0];
  const text = await said();
  const match = text.match(new RegExp(`^${last.name.replace(/\./g, "\\.")} · step ${STEPS} · max ‖g‖ (\\S+)$`));
  assert.ok(match, text);
  assert.ok(Math.abs(Number(match[1]) - want) <= 6e-3 * want, `${match[1]} is ${want} to 3 digits`);
  await browser.shot("keyboard-heatmap-cursor");

  // Enter on a layer's row selects it, as a click does: the table marks it.
  await page.keyboard.press("Enter");
  await until(async () => (await page.getAttribute("#layer-table tr.selected", "data-layer")) === String(last.layer), { what: "the layer selected" });
  assert.equal(await page.getAttribute(`#layer-table tr[data-layer="${last.layer}"]`, "aria-current"), "true");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "heatmap", "the focus stays on the heatmap");

  // Enter on a block's row opens it.
  const b = rows.findIndex((r) => r.block);
  for (let r = rows.length - 1; r > b; r--) await page.keyboard.press("ArrowUp");
  assert.ok((await said()).startsWith(`${rows[b].name} (12 layers`), await said());
  await page.keyboard.press("Enter");
  await until(async () => Number(await page.getAttribute("#heatmap", "data-rows")) === rows.length + 12, { what: "the block open" });
  await page.keyboard.press("ArrowDown");
  const firstMember = layers.find((l) => block(l.name) === rows[b].name);
  assert.ok((await said()).startsWith(`${firstMember.name} · step ${STEPS} · `), await said());

  // The forward signal's heatmap is reached the same way: its cells are blocks × steps.
  await tabTo(page, "the forward signal", () => document.activeElement?.id === "signal-heatmap");
  await page.keyboard.press("PageUp");
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("End");
  const signal = await page.locator("#signal-heatmap + .sr-only").textContent();
  assert.match(signal, new RegExp(`^encoder\\.layers\\.1 · step ${STEPS} · output RMS \\S+$`));
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("the layer table is reached with Tab; arrows select layer after layer; Enter and the arrows open and collapse a block", async () => {
  const { page } = browser;
  await openJob(page);
  const rows = collapsedRows();
  const inTable = () => !!document.activeElement?.closest("#layer-table tbody");
  await tabTo(page, "the layer table's rows", inTable);
  const focused = () => page.evaluate(() => {
    const tr = /** @type {HTMLElement} */ (document.activeElement);
    return tr.dataset.group ?? tr.querySelector("td.layer-name")?.textContent;
  });
  // One stop for the whole table: the next Tab leaves it.
  await page.keyboard.press("Tab");
  assert.ok(!(await page.evaluate(inTable)), "one Tab stop for the table");
  await page.keyboard.press("Shift+Tab");
  assert.ok(await page.evaluate(inTable));

  await page.keyboard.press("Home");
  assert.equal(await focused(), rows[0].name);
  const selected = () => page.getAttribute("#layer-table tr.selected", "data-layer");
  // Down the table: each layer's row is selected as the focus reaches it (a block's row only takes the focus).
  for (let r = 1; r < rows.length; r++) {
    await page.keyboard.press("ArrowDown");
    assert.equal(await focused(), rows[r].name, `row ${r}`);
    if (!rows[r].block) await until(async () => (await selected()) === String(rows[r].layer), { what: `${rows[r].name} selected`, timeout: 5000 });
  }
  await browser.shot("keyboard-table-end");

  // Back up to the first block: Enter opens it, its layers follow; the left arrow collapses it.
  const b = rows.findIndex((r) => r.block);
  for (let r = rows.length - 1; r > b; r--) await page.keyboard.press("ArrowUp");
  assert.equal(await focused(), rows[b].name);
  const visible = () => page.$$eval("#layer-table tbody tr", (trs) => trs.filter((tr) => !tr.hidden).length);
  assert.equal(await visible(), rows.length);
  await page.keyboard.press("Enter");
  await until(async () => (await visible()) === rows.length + 12, { what: "the block open" });
  assert.equal(await page.getAttribute(`#layer-table tr[data-group="${rows[b].name}"] button.group-toggle`, "aria-expanded"), "true");
  await page.keyboard.press("ArrowDown");
  const members = layers.filter((l) => block(l.name) === rows[b].name);
  assert.equal(await focused(), members[0].name);
  await until(async () => (await selected()) === String(members[0].index), { what: "the block's first layer selected" });
  await page.keyboard.press("ArrowUp");
  await page.keyboard.press("ArrowLeft");
  await until(async () => (await visible()) === rows.length, { what: "the block collapsed" });
  await page.keyboard.press("ArrowRight");
  await until(async () => (await visible()) === rows.length + 12, { what: "the block open again" });
  // Space selects, as Enter does.
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("ArrowDown");
  await page.keyboard.press("Space");
  await until(async () => (await selected()) === String(members[1].index), { what: "the second layer selected" });
  assert.equal(await focused(), members[1].name);
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
