// The compare page's picker against a server holding more jobs than one listing returns:
// two transformer runs of one name (finished), then 110 cancelled MLP jobs on top of them,
// so the two are older than the newest 100. The picker pages to them, searches and filters
// on the server, tells the two apart; their profiles name their layers on the x axis, and
// their heatmaps group the rows by block with every full name on hover.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, startServer, tinyMlp, tinyTransformer, until } from "./helpers.mjs";

let server;
let browser;
/** The two runs named "twin", oldest first. */
const twins = [];
/** The filler jobs' names. */
const fillers = [];
const FILLERS = 110;

before(async () => {
  // The 110 jobs are queued faster than they could start: room for them in the queue.
  server = await startServer({ args: ["--max-queued", "300"] });
  for (let i = 0; i < 2; i++) twins.push(await server.submit(tinyTransformer(3, { name: "twin", steps: 20, seed: i + 1, monitor: { every: 1, histogram: false } })));
  for (const t of twins) assert.equal((await server.finished(t.id)).status, "succeeded");
  for (let i = 0; i < FILLERS; i++) {
    const name = `filler-${String(i).padStart(3, "0")}`;
    const job = await server.submit(tinyMlp({ name, steps: 1000, monitor: { every: 0 } }));
    fillers.push(name);
    await server.api("POST", `/jobs/${job.id}/cancel`);
  }
  await until(async () => (await server.api("GET", "/jobs?status=cancelled&limit=1")).body.total === FILLERS, { what: "every filler cancelled" });
  browser = await openBrowser({ width: 1440, height: 900 });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The ids of the jobs the picker's list shows, in order. */
const listed = (page) => page.$$eval("#pick-list tbody tr", (trs) => trs.map((tr) => tr.dataset.id));
const note = (page) => page.textContent("#pick-note");

/** The block of a parameter name, as the test reads the rule: up to the last numeric part. */
function block(name) {
  const parts = name.split(".");
  let end = -1;
  for (let i = 0; i < parts.length - 1; i++) if (/^\d+$/.test(parts[i])) end = i;
  return end < 0 ? null : parts.slice(0, end + 1).join(".");
}

test("the picker pages past the newest 100 jobs, searches and filters on the server, and tells runs of one name apart", async () => {
  const { page } = browser;
  const total = FILLERS + 2;
  await page.goto(`${server.url}/#/compare`);
  await page.waitForSelector("#pick-list tbody tr");
  assert.equal(await note(page), `1–20 of ${total} jobs, page 1 of 6`);
  assert.equal((await listed(page)).length, 20);
  const twinIds = twins.map((t) => t.id);
  assert.ok(!(await listed(page)).some((id) => twinIds.includes(id)), "the twins are older than the first page");

  // Paging to the oldest jobs: the twins are there, beyond the newest 100.
  for (let p = 2; p <= 6; p++) {
    await page.click("#pick-next");
    await until(async () => (await note(page)).includes(`page ${p} of 6`), { what: `page ${p}` });
  }
  assert.equal(await note(page), `101–${total} of ${total} jobs, page 6 of 6`);
  assert.ok(await page.isDisabled("#pick-next"));
  const last = await listed(page);
  assert.deepEqual(last.slice(-2), [...twinIds].reverse(), "the twins, newest first, at the end");
  await browser.shot("picker-last-page");

  // Runs of one name: each row says when it was created and how its id ends (ids are
  // UUIDv7: their start is the time, the same for jobs of one minute).
  assert.notEqual(twins[0].id.slice(-8), twins[1].id.slice(-8));
  for (const t of twins) {
    const text = await page.textContent(`#pick-list tr[data-id="${t.id}"] .run-id`);
    assert.ok(text.includes(t.id.slice(-8)), `${text} shows the end of ${t.id}`);
    const created = new Date(t.created_at);
    const two = (n) => String(n).padStart(2, "0");
    const day = `${created.getFullYear()}-${two(created.getMonth() + 1)}-${two(created.getDate())}`;
    assert.ok(text.includes(day), `${text} shows the day ${day}`);
  }

  // Search by name: the server's matches, whatever page they are on.
  await page.fill("#pick-search", "filler-10");
  const want = fillers.filter((n) => n.includes("filler-10"));
  await until(async () => (await note(page)) === `1–${want.length} of ${want.length} jobs, page 1 of 1`, { what: "the search's matches" });
  const names = await page.$$eval("#pick-list tbody tr .pick-name", (ls) => ls.map((l) => l.textContent));
  assert.deepEqual([...names].sort(), [...want].sort());
  await page.fill("#pick-search", "twin");
  await until(async () => (await listed(page)).length === 2, { what: "the twins found" });
  assert.deepEqual(await listed(page), [...twinIds].reverse());
  await page.fill("#pick-search", "");

  // Filters: by status, and by model.
  await page.selectOption("#pick-status", "cancelled");
  await until(async () => (await note(page)) === `1–20 of ${FILLERS} jobs, page 1 of 6`, { what: "the cancelled jobs" });
  await page.selectOption("#pick-status", "");
  await page.selectOption("#pick-model", "transformer");
  await until(async () => (await note(page)) === "1–2 of 2 jobs, page 1 of 1", { what: "the transformers" });
  assert.deepEqual(await listed(page), [...twinIds].reverse());

  // Picking both: the comparison opens in place, and tells them apart by id.
  for (const t of twins) await page.check(`#pick-list tr[data-id="${t.id}"] input[type=checkbox]`);
  await until(async () => (await page.$$("#compare-summary tbody tr")).length === 2, { what: "the comparison" });
  assert.match(page.url(), new RegExp(`#/compare\\?ids=${twinIds[0]}%2C${twinIds[1]}$|#/compare\\?ids=${twinIds.join(",")}$`));
  const chips = await page.$$eval("#compare-picked .chip", (cs) => cs.map((c) => c.dataset.id));
  assert.deepEqual(chips, twinIds);
  const rows = await page.$$eval("#compare-summary tbody tr td:nth-child(2)", (tds) => tds.map((td) => td.textContent));
  assert.deepEqual(rows, twins.map((t) => `twin (${t.id.slice(-8)})`));
  assert.equal(await page.inputValue("#pick-model"), "transformer", "the filters stay as they were");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("the per-layer profile names its layers on the x axis, and the heatmap groups rows by block with full names on hover", async () => {
  const { page } = browser;
  const [one] = twins;
  await page.goto(`${server.url}/#/compare?ids=${twins.map((t) => t.id).join(",")}`);
  await page.reload();
  const card = `.profile[data-id="${one.id}"]`;
  await page.waitForSelector(`${card} .profile-chart .u-over`);
  await page.waitForTimeout(400);
  const { body } = await server.api("GET", `/jobs/${one.id}/layers`);
  const layers = body.layers;
  assert.ok(layers.length > 32, `${layers.length} layers`);
  const matrices = layers.filter((l) => l.shape.length >= 2).map((l) => l.name);

  // The x axis: one label per weight matrix, each the end of its name, in the module's order.
  const ticks = JSON.parse(await page.getAttribute(`${card} .profile-chart`, "data-x-ticks"));
  assert.equal(ticks.length, matrices.length, `a label per matrix: ${ticks}`);
  ticks.forEach((label, i) => {
    assert.ok(!/^-?[\d.]+$/.test(label), `${label} is a name, not a number`);
    const stem = matrices[i].replace(/[._]weight$/, "");
    const [head, tail] = label.split("…");
    assert.ok(tail === undefined ? stem.endsWith(head) : stem.includes(head) && stem.endsWith(tail), `${label} is the end of ${matrices[i]}`);
  });
  // Hovering a point shows its layer's full name.
  await page.locator(`${card} .profile-chart`).scrollIntoViewIfNeeded();
  const over = await page.locator(`${card} .profile-chart .u-over`).boundingBox();
  for (const k of [0, matrices.length - 1]) {
    const x = over.x + (over.width * k) / (matrices.length - 1);
    await page.mouse.move(Math.min(over.x + over.width - 1, Math.max(over.x + 1, x)), over.y + over.height / 2);
    const value = page.locator(`${card} .profile-chart .u-legend .u-series:first-child .u-value`);
    await until(async () => (await value.textContent()) === matrices[k], { what: `the name ${matrices[k]} under the cursor (${await value.textContent()})`, timeout: 5000 });
  }

  // The heatmap: a model of more than 32 layers starts with its blocks collapsed; a row per
  // block and per layer outside any block.
  const blocks = [...new Set(layers.map((l) => block(l.name)).filter((b) => b !== null))];
  assert.equal(blocks.length, 3);
  const expected = [];
  for (const l of layers) {
    const b = block(l.name);
    if (b === null) expected.push(l.name);
    else if (!expected.includes(b)) expected.push(b);
  }
  const canvas = page.locator(`${card} canvas.profile-heat`);
  assert.equal(Number(await canvas.getAttribute("data-rows")), expected.length);
  const tip = page.locator(`${card} .tip`);
  await canvas.scrollIntoViewIfNeeded();
  const box = await canvas.boundingBox();
  const rowY = (r, n) => box.y + 2 + ((box.height - 22) * (r + 0.5)) / n;
  for (let r = 0; r < expected.length; r++) {
    await page.mouse.move(box.x + box.width * 0.6, rowY(r, expected.length));
    await until(async () => !(await tip.isHidden()) && (await tip.textContent()).startsWith(`${expected[r]} `), { what: `row ${r}: ${expected[r]}`, timeout: 5000 });
  }
  await browser.shot("compare-heatmap-collapsed");
  // A click on a block opens it: its layers' rows, each with its full name on hover.
  const first = expected.indexOf(blocks[1]);
  await page.mouse.click(box.x + box.width * 0.6, rowY(first, expected.length));
  const open = [...expected.slice(0, first + 1), ...layers.filter((l) => block(l.name) === blocks[1]).map((l) => l.name), ...expected.slice(first + 1)];
  await until(async () => Number(await canvas.getAttribute("data-rows")) === open.length, { what: "the block open" });
  await canvas.scrollIntoViewIfNeeded();
  const tall = await canvas.boundingBox();
  for (const r of [first + 1, first + 6, first + 12]) {
    await page.mouse.move(tall.x + tall.width * 0.6, tall.y + 2 + ((tall.height - 22) * (r + 0.5)) / open.length);
    await until(async () => (await tip.textContent()).startsWith(`${open[r]} · step`), { what: `row ${r}: ${open[r]}`, timeout: 5000 });
  }
  // Labels never overlap: at least 12 px apart, and every block's head among them.
  const labels = Number(await canvas.getAttribute("data-labels"));
  assert.ok(labels >= blocks.length && labels <= Math.floor((tall.height - 22) / 12) + 1, `${labels} labels on ${tall.height} px`);
  await browser.shot("compare-heatmap-open");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
