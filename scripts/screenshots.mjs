#!/usr/bin/env node
// Screenshots of every page of the dashboard, for a note or a review: starts the server
// (GRADSCOPE_BIN, default target/debug/gradscope) on a fresh database, trains a few tiny
// jobs (the vanishing-gradient preset pair, shortened; a 3-block transformer; a 2-cell
// experiment), and saves a PNG of each page at a 1280×800 viewport into OUT_DIR:
//
//   node scripts/screenshots.mjs OUT_DIR [STATIC_DIR]
//
// STATIC_DIR serves another dashboard than the checkout's static/ (an older commit's,
// checked out into a folder with static/vendor/ copied in), so that the same jobs can be
// shot before and after a change to it. Needs what the browser tests need (scripts/web-deps,
// Chromium).

import { mkdirSync } from "node:fs";
import { resolve } from "node:path";
import { openBrowser, startServer, tinyTransformer, until } from "../tests/browser/helpers.mjs";

const [out, staticDir] = process.argv.slice(2);
if (!out) {
  console.error("usage: node scripts/screenshots.mjs OUT_DIR [STATIC_DIR]");
  process.exit(2);
}
mkdirSync(out, { recursive: true });

const server = await startServer(staticDir ? { staticDir: resolve(staticDir) } : {});
let browser;
try {
  const { body } = await server.api("GET", "/presets");
  const pair = [];
  for (const name of ["vanishing-mlp", "vanishing-mlp-batchnorm"]) {
    const preset = body.presets.find((p) => p.name === name);
    pair.push(await server.submit({ ...preset.spec, steps: 200, device: "cpu" }));
  }
  const deep = await server.submit(tinyTransformer(3, { name: "tiny-transformer", steps: 60, monitor: { every: 1, histogram: true } }));
  const experiment = await server.api("POST", "/experiments", {
    name: "lr-grid",
    base: {
      steps: 40, batch_size: 16, device: "cpu",
      task: { kind: "classification", features: 8, classes: 4, eval_every: 10 },
      model: { kind: "mlp", layers: 3, hidden: 16 },
    },
    axes: [{ path: "optimizer.lr", values: [0.01, 0.1] }],
    seeds: 2,
  });
  if (experiment.status !== 201) throw new Error(`the experiment: ${JSON.stringify(experiment.body)}`);
  for (const job of [...pair, deep]) await server.finished(job.id);
  await until(async () => (await server.api("GET", `/experiments/${experiment.body.id}`)).body.status === "finished",
    { timeout: 120_000, what: "the experiment" });

  browser = await openBrowser({ width: 1280, height: 800 });
  const { page } = browser;
  const pages = [
    ["jobs", "#/", "#job-list tbody tr"],
    ["job", `#/jobs/${pair[0].id}`, "#layer-table tbody tr"],
    // A transformer's per-layer views: the page scrolled to its heatmap, then its table.
    ["job-transformer-heatmap", `#/jobs/${deep.id}`, "#layer-table tbody tr", "#heatmap"],
    ["job-transformer-table", `#/jobs/${deep.id}`, "#layer-table tbody tr", "#layer-table"],
    ["compare", `#/compare?ids=${pair.map((j) => j.id).join(",")}`, "#compare-summary tbody tr"],
    ["compare-profiles", `#/compare?ids=${pair.map((j) => j.id).join(",")}`, "#compare-summary tbody tr", ".profiles"],
    ["experiment", `#/experiments/${experiment.body.id}`, "main#view h2"],
  ];
  for (const [name, hash, ready, scrollTo] of pages) {
    await page.goto(`${server.url}/${hash}`);
    await page.reload();
    await page.waitForSelector(ready, { timeout: 30_000 }).catch(() => {});
    // The panel that holds it at the top, below the sticky header.
    if (scrollTo) {
      await page.evaluate((s) => {
        const target = document.querySelector(s);
        const panel = target?.closest("section") ?? target;
        if (panel) window.scrollTo(0, panel.getBoundingClientRect().top + window.scrollY - 60);
      }, scrollTo);
    }
    await page.waitForTimeout(800);
    const path = resolve(out, `${name}.png`);
    await page.screenshot({ path });
    console.log(path);
  }
} finally {
  await browser?.close();
  await server.stop();
}
