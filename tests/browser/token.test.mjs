// A server started with an API token: the dashboard asks for it, a wrong one is refused,
// the right one opens the job list and the job page, whose stream carries it too.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowser, startServer, until } from "./helpers.mjs";

const TOKEN = "browser-test-token-7f3a";
let server;
let browser;

before(async () => {
  server = await startServer({ token: TOKEN });
  browser = await openBrowser();
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("the page prompts for the API token, refuses a wrong one and works with the right one", async () => {
  const { page } = browser;
  const { body: job } = await server.api("POST", "/jobs", {
    ...(await server.api("GET", "/presets")).body.presets.find((p) => p.name === "vanishing-mlp").spec,
    steps: 300,
    device: "cpu",
  });
  // Without the token the API refuses (the contract), and the page asks for it.
  assert.equal((await fetch(`${server.url}/api/v1/jobs`)).status, 401);
  await page.goto(`${server.url}/`);
  await page.waitForSelector("#token-form", { state: "visible" });
  assert.match(await page.textContent("#view"), /Could not load this page/);
  await browser.shot("09-token-prompt");

  // A wrong token: refused, the prompt stays, nothing is listed.
  await page.fill("#token-form input", "not-the-token");
  const [refused] = await Promise.all([
    page.waitForResponse((r) => r.url().includes("/api/v1/") && r.request().headers().authorization === "Bearer not-the-token"),
    page.click("#token-form button[type=submit]"),
  ]);
  assert.equal(refused.status(), 401, "the server refuses the wrong token");
  await page.waitForSelector("#token-form", { state: "visible" });
  await until(async () => /Could not load this page/.test(await page.textContent("#view")), { what: "the refusal" });
  assert.equal(await page.locator(`tr[data-id="${job.id}"]`).count(), 0, "no job is shown");

  // The right token: the prompt goes, the job is listed, its page streams.
  await page.fill("#token-form input", TOKEN);
  await page.click("#token-form button[type=submit]");
  await page.waitForSelector(`tr[data-id="${job.id}"]`);
  assert.ok(await page.isHidden("#token-form"), "the prompt is gone");
  await page.click(`tr[data-id="${job.id}"] a`);
  await page.waitForSelector(".job-head .status-succeeded", { timeout: 120_000 });
  await until(async () => (await page.textContent("#step-counter")) === "300 / 300", { what: "the counter" });
  const names = await page.$$eval("#layer-table tbody td.layer-name", (tds) => tds.map((td) => td.textContent));
  const { body: layers } = await server.api("GET", `/jobs/${job.id}/layers`);
  assert.deepEqual(names.sort(), layers.layers.map((l) => l.name).sort());

  // Chromium logs each refused request; only 401s are expected.
  const unexpected = browser.errors.filter((e) => !/status of 401/.test(e));
  assert.deepEqual(unexpected, [], "no other errors in the browser console");
  assert.ok(browser.errors.length > 0, "the refused requests were 401s");
});
