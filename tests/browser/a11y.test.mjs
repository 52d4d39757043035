// Every page of the dashboard checked with axe-core (from npm, run in the page): no serious
// or critical accessibility violation, in the light and the dark theme.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { join } from "node:path";
import { ROOT, openBrowser, startServer, until } from "./helpers.mjs";

let server;
let browser;
/** @type {Record<string, string>} */
const pages = {};

const tiny = (name, extra = {}) => ({
  name, steps: 20, batch_size: 8, device: "cpu",
  task: { kind: "classification", features: 4, classes: 2, eval_every: 10 },
  model: { kind: "mlp", layers: 2, hidden: 8 },
  ...extra,
});

before(async () => {
  server = await startServer();
  const ids = [];
  for (const spec of [tiny("a11y-one"), tiny("a11y-two", { monitor: { every: 0 } })]) {
    const created = await server.api("POST", "/jobs", spec);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    ids.push(created.body.id);
  }
  const experiment = await server.api("POST", "/experiments", {
    name: "a11y-grid", base: tiny("cell"), axes: [{ path: "optimizer.lr", values: [0.01, 0.1] }], seeds: 1,
  });
  assert.equal(experiment.status, 201, JSON.stringify(experiment.body));
  await until(async () => (await server.api("GET", `/experiments/${experiment.body.id}`)).body.status === "finished",
    { timeout: 120_000, what: "the experiment to finish" });
  for (const id of ids) {
    await until(async () => ["succeeded", "diverged", "failed"].includes((await server.api("GET", `/jobs/${id}`)).body.status),
      { timeout: 120_000, what: `job ${id} to finish` });
  }
  Object.assign(pages, {
    jobs: "#/",
    "new job": "#/new",
    job: `#/jobs/${ids[0]}`,
    "job, monitoring off": `#/jobs/${ids[1]}`,
    compare: `#/compare?ids=${ids.join(",")}`,
    experiment: `#/experiments/${experiment.body.id}`,
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The serious and critical violations axe-core finds on the page as it is. */
async function violations(page) {
  if (!(await page.evaluate(() => "axe" in window))) await page.addScriptTag({ path: join(ROOT, "node_modules/axe-core/axe.min.js") });
  const found = await page.evaluate(async () => {
    const w = /** @type {any} */ (window);
    const result = await w.axe.run(document, { resultTypes: ["violations"] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 8).map((n) => {
      const c = n.any?.[0]?.data;
      return `${n.target.join(" ")}${c?.contrastRatio ? ` (${c.fgColor} on ${c.bgColor}: ${c.contrastRatio})` : ""}`;
    }) }));
  });
  return found.filter((v) => v.impact === "serious" || v.impact === "critical");
}

for (const scheme of ["light", "dark"]) {
  test(`no serious accessibility violation on any page (${scheme})`, async () => {
    await browser?.close();
    browser = await openBrowser({ colorScheme: scheme });
    const { page } = browser;
    const report = {};
    for (const [name, hash] of Object.entries(pages)) {
      await page.goto(`${server.url}/${hash}`);
      await page.reload();
      await page.waitForSelector("main#view:not([aria-busy])");
      await page.waitForSelector("main#view h2");
      await page.waitForTimeout(300);
      const found = await violations(page);
      if (found.length) report[name] = found;
    }
    assert.deepEqual(report, {}, JSON.stringify(report, null, 1));
    assert.deepEqual(browser.errors, [], "no errors in the browser console");
  });
}
