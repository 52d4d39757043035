// The jobs list as a daily tool: search, filters, sorting and pages, each page's rows checked
// against the REST API's own answer; the header's "New job", page titles, the skip link and
// the focus after navigation. The jobs are tiny MLPs (and one LSTM) of two steps.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, startServer, until } from "./helpers.mjs";

let server;
let browser;
/** Rows of the list on one page of the dashboard. */
const PAGE = 25;

before(async () => {
  server = await startServer();
  browser = await openBrowser();
  const mlp = (name) => ({
    name, steps: 2, batch_size: 8, device: "cpu", monitor: { every: 1, histogram: false },
    task: { kind: "classification", features: 4, classes: 2 },
    model: { kind: "mlp", layers: 1, hidden: 8 },
  });
  const specs = Array.from({ length: PAGE }, (_, i) => mlp(`run-${String(i).padStart(2, "0")}`));
  specs.push({
    name: "lstm-odd", steps: 2, batch_size: 8, device: "cpu",
    task: { kind: "char_lm", corpus: "builtin:tiny", seq_len: 8 },
    model: { kind: "lstm", layers: 1, hidden: 8 },
  });
  for (const spec of specs) {
    const created = await server.api("POST", "/jobs", spec);
    assert.equal(created.status, 201, JSON.stringify(created.body));
  }
  await until(async () => {
    const { body } = await server.api("GET", "/jobs?status=succeeded&limit=1");
    return body.total === specs.length;
  }, { timeout: 180_000, what: "every job to finish" });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The ids of the list's rows, in order. */
const shownIds = (page) => page.$$eval("#job-list tbody tr", (rows) => rows.map((tr) => /** @type {HTMLElement} */ (tr).dataset.id));
/** The ids the REST API lists for `q`. */
async function apiIds(q) {
  const { status, body } = await server.api("GET", `/jobs?${q}`);
  assert.equal(status, 200, JSON.stringify(body));
  return body.jobs.map((j) => j.id);
}

async function showsApi(page, q, what) {
  const expected = await apiIds(q);
  await until(async () => JSON.stringify(await shownIds(page)) === JSON.stringify(expected), { what })
    .catch(async () => assert.deepEqual(await shownIds(page), expected, what));
}

test("the jobs list searches, filters, sorts and pages on the server: no job drops off", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/#/`);
  await page.reload();
  await page.waitForSelector("#job-list tbody tr");
  assert.equal(await page.title(), "Jobs · gradscope");
  await showsApi(page, `limit=${PAGE}&sort=created&order=desc`, "page 1, newest first");
  assert.equal(await page.textContent("#page-note"), "1–25 of 26 jobs, page 1 of 2");
  // The oldest job is a page away.
  await page.click("#page-next");
  await showsApi(page, `limit=${PAGE}&offset=${PAGE}`, "page 2");
  const oldest = await shownIds(page);
  assert.equal(oldest.length, 1);
  assert.equal((await server.api("GET", `/jobs/${oldest[0]}`)).body.name, "run-00");
  assert.ok(await page.isDisabled("#page-next"), "no page 3");
  await page.click("#page-prev");
  await showsApi(page, `limit=${PAGE}`, "back to page 1");

  // Search by name.
  await page.fill("#job-search", "run-1");
  await showsApi(page, "limit=25&name=run-1", "the search");
  assert.equal((await shownIds(page)).length, 10, "run-10 to run-19");
  // Filters: the model's kind, the status.
  await page.fill("#job-search", "");
  await page.selectOption("#filter-model", "lstm");
  await showsApi(page, "limit=25&model=lstm", "the LSTM alone");
  assert.equal((await shownIds(page)).length, 1);
  await page.selectOption("#filter-model", "");
  await page.selectOption("#filter-status", "running");
  await until(async () => (await page.isVisible("p.empty")) && (await page.textContent("p.empty")) === "No job matches these filters.", { what: "no running job" });
  await page.selectOption("#filter-status", "");
  await page.selectOption("#filter-task", "classification");
  await showsApi(page, "limit=25&task=classification", "the classification jobs");

  // Sorted by name, from the keyboard: the head's button, Enter, then Enter again.
  await page.focus("#job-list th[data-key=name] button");
  await page.keyboard.press("Enter");
  await showsApi(page, "limit=25&task=classification&sort=name&order=asc", "by name, A to Z");
  assert.equal(await page.getAttribute("#job-list th[data-key=name]", "aria-sort"), "ascending");
  assert.equal(await page.evaluate(() => document.activeElement?.closest("th")?.dataset.key), "name", "the focus stays on the head");
  await page.keyboard.press("Enter");
  await showsApi(page, "limit=25&task=classification&sort=name&order=desc", "by name, Z to A");
  assert.equal(await page.getAttribute("#job-list th[data-key=name]", "aria-sort"), "descending");
  await browser.shot("jobs-list-filtered");
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});

test("the header's New job, page titles naming the job, a skip link, and the focus after navigation", async () => {
  const { page } = browser;
  await page.goto(`${server.url}/#/`);
  await page.reload();
  await page.waitForSelector("#job-list tbody tr");
  // The first Tab reaches the skip link; it moves the focus past the header.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "skip");
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.activeElement?.id), "view");
  assert.equal(await page.evaluate(() => location.hash), "#/", "the skip link is no route");

  // New job: the form, with the focus on its heading.
  await page.click("#new-job-link");
  await page.waitForFunction(() => document.activeElement?.id === "new-job-heading");
  assert.equal(await page.title(), "New job · gradscope");

  // A job's page names it, and takes the focus to its heading.
  const { body } = await server.api("GET", "/jobs?name=lstm-odd");
  const job = body.jobs[0];
  await page.click(`#job-list tr[data-id="${job.id}"] a[href="#/jobs/${job.id}"]`);
  await page.waitForSelector("#step-counter");
  await until(async () => (await page.title()) === "lstm-odd (succeeded) · gradscope", { what: "the job's title" });
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "lstm-odd", "the focus is on the job's name");
  // Compare names its jobs.
  await page.goto(`${server.url}/#/compare?ids=${job.id}`);
  await until(async () => (await page.title()) === "Compare lstm-odd · gradscope", { what: "the compare page's title" });
  assert.deepEqual(browser.errors, [], "no errors in the browser console");
});
