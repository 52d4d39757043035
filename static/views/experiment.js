// @ts-check
// One experiment: its progress, its results per cell as the server computes them (cells
// as rows, axes as columns), each cell's training loss over its seeds (the mean, and a
// band from the lowest to the highest seed), and its jobs.

import { del, download, get, post, query } from "../api.js";
import { lineChart, loadUPlot, positive, seriesColor, withAlpha } from "../charts.js";
import { el, num, pct, progressBar, statusBadge, setTitle } from "../widgets.js";

/** @typedef {import("../charts.js").LineChart} LineChart */
/**
 * @typedef {{mean: number | null, std: number | null, n: number}} Spread
 * @typedef {{cell: number, labels: string[], values: unknown[], jobs: number, completed: number,
 *   train_loss: Spread, val_loss: Spread, val_metric: Spread, divergence_rate: number | null,
 *   solved_rate: number | null, steps_to_threshold: number | null, reached: number, steps_per_second: Spread}} CellResult
 * @typedef {{metric: string, at_least?: number, at_most?: number}} Threshold
 * @typedef {{experiment: string, axes: string[], threshold?: Threshold, cells: CellResult[]}} Results
 * @typedef {{id: string, cell: number, seed: number, status: import("../types.js").JobStatus, step: number, total_steps: number}} ExperimentJob
 * @typedef {{id: string, name: string, created_at: string, status: string,
 *   progress: {jobs: number, finished: number, step: number, total_steps: number, by_status: Record<string, number>},
 *   spec: {seeds: number, threshold?: Threshold}, cells: {index: number, labels: string[]}[], jobs?: ExperimentJob[]}} Experiment
 * @typedef {{x: number[], mean: (number | null)[], min: (number | null)[], max: (number | null)[], runs: number}} Curve
 */

const REFRESH_MS = 3000;
/** Points read of each job's loss. */
const JOB_POINTS = 400;
/** Points of a cell's curve, at most. */
export const BINS = 100;

/**
 * A cell's training loss over its seeds: the steps 1 … `total` cut into at most `BINS`
 * bins of consecutive steps (one step each when there are fewer), each run's mean over
 * a bin's finite losses, then per bin the mean, lowest and highest of the runs that have
 * one. A bin's `x` is its last step.
 * @param {{step: number[], loss: (number | null)[]}[]} runs
 * @param {number} total
 * @returns {Curve}
 */
export function cellCurve(runs, total) {
  const bins = Math.max(1, Math.min(BINS, total));
  const bin = (/** @type {number} */ step) => Math.min(bins - 1, Math.floor(((step - 1) * bins) / total));
  const x = Array.from({ length: bins }, (_, b) => Math.floor(((b + 1) * total) / bins));
  /** @type {(number | null)[][]} */
  const perRun = runs.map((run) => {
    const sum = new Float64Array(bins);
    const count = new Uint32Array(bins);
    run.step.forEach((s, i) => {
      const v = run.loss[i];
      if (v === null || !Number.isFinite(v) || s < 1) return;
      const b = bin(s);
      sum[b] += v;
      count[b] += 1;
    });
    return Array.from(sum, (v, b) => (count[b] ? v / count[b] : null));
  });
  /** @type {Curve} */
  const curve = { x, mean: [], min: [], max: [], runs: runs.length };
  for (let b = 0; b < bins; b++) {
    const vs = /** @type {number[]} */ (perRun.map((r) => r[b]).filter((v) => v !== null));
    curve.mean.push(vs.length ? vs.reduce((a, v) => a + v, 0) / vs.length : null);
    curve.min.push(vs.length ? Math.min(...vs) : null);
    curve.max.push(vs.length ? Math.max(...vs) : null);
  }
  return curve;
}

const spread = (/** @type {Spread} */ s) => (s.mean === null ? "–" : s.std === null ? num(s.mean) : `${num(s.mean)} ± ${num(s.std, 2)}`);

function describeThreshold(/** @type {Threshold | undefined} */ t) {
  if (!t) return "no threshold stated";
  return t.at_least !== undefined && t.at_least !== null ? `${t.metric} ≥ ${t.at_least}` : `${t.metric} ≤ ${t.at_most}`;
}

/**
 * @param {HTMLElement} root
 * @param {import("../types.js").ViewContext} ctx
 * @param {string} id
 * @returns {Promise<import("../types.js").Teardown>}
 */
export async function experimentView(root, ctx, id) {
  const uPlot = await loadUPlot();
  /** @type {Experiment} */
  let experiment = await get(`/experiments/${id}`);
  /** @type {Results} */
  let results = await get(`/experiments/${id}/results`);
  /** Each job's loss as last read, and the step it was read at. @type {Map<string, {step: number, data: {step: number[], loss: (number | null)[]}}>} */
  const losses = new Map();
  /** @type {LineChart[]} */
  let charts = [];
  let closed = false;

  const title = el("h2", {});
  const head = el("div", { class: "experiment-head" });
  const tableHead = el("thead");
  const tableBody = el("tbody");
  const curves = el("div", { class: "cell-curves" });
  const jobsBody = el("tbody");
  const cancelButton = el("button", { type: "button", class: "danger", onclick: async () => {
    try {
      experiment = await post(`/experiments/${id}/cancel`);
      draw();
    } catch (err) {
      ctx.toast(`Could not cancel: ${err instanceof Error ? err.message : err}`);
    }
  } }, "Cancel");
  const deleteButton = el("button", { type: "button", class: "danger", onclick: async () => {
    if (!confirm(`Delete experiment ${experiment.name} and its ${experiment.progress.jobs} jobs?`)) return;
    try {
      await del(`/experiments/${id}`);
      location.hash = "#/";
    } catch (err) {
      ctx.toast(`Could not delete: ${err instanceof Error ? err.message : err}`);
    }
  } }, "Delete");
  const csvButton = el("button", { type: "button", onclick: () => {
    download(`/experiments/${id}/results.csv`, `experiment-${id}.csv`).catch((err) => ctx.toast(`Could not download: ${err instanceof Error ? err.message : err}`));
  } }, "Download CSV");

  root.replaceChildren(
    el("section", { class: "panel" },
      el("div", { class: "section-head" }, title, el("div", { class: "actions" }, csvButton, cancelButton, deleteButton)),
      head),
    el("section", { class: "panel" },
      el("h3", {}, "Results per cell ", el("span", { class: "muted small" }, "over each cell's completed runs (succeeded or diverged): rates, the median step at which the threshold was first met, and the losses and metric (mean ± standard deviation) of the runs that did not diverge")),
      el("div", { class: "table-wrap" }, el("table", { class: "summary", id: "experiment-results" }, tableHead, tableBody))),
    el("section", { class: "panel" },
      el("h3", {}, "Training loss per cell ", el("span", { class: "muted small" }, "the mean over the seeds, with a band from the lowest to the highest seed")),
      curves),
    el("section", { class: "panel" }, el("h3", {}, "Jobs"),
      el("div", { class: "table-wrap" }, el("table", { class: "jobs", id: "experiment-jobs" },
        el("thead", {}, el("tr", {}, ["job", "cell", "seed", "status", "progress"].map((h) => el("th", {}, h)))),
        jobsBody))),
  );

  function draw() {
    const p = experiment.progress;
    title.replaceChildren(experiment.name, " ", statusBadge(experiment.status));
    setTitle(`${experiment.name} (experiment)`);
    head.replaceChildren(
      el("p", { class: "muted" }, `${experiment.cells.length} cells × ${experiment.spec.seeds} seeds = ${p.jobs} jobs; solved: ${describeThreshold(results.threshold)}`),
      progressBar({ step: p.step, total_steps: p.total_steps, status: experiment.status === "finished" ? "succeeded" : "running" }),
      el("p", { class: "small muted" }, Object.entries(p.by_status).map(([s, n]) => `${n} ${s}`).join(", ")));
    cancelButton.disabled = experiment.status === "finished";
    deleteButton.disabled = experiment.status !== "finished";

    tableHead.replaceChildren(el("tr", {},
      el("th", {}, "cell"), results.axes.map((a) => el("th", {}, a)),
      ["runs", "train loss", "val loss", "val metric", "diverged", "solved", "steps to threshold", "steps/s"].map((h) => el("th", { class: "num" }, h))));
    tableBody.replaceChildren(...results.cells.map((c) => el("tr", { dataset: { cell: String(c.cell) } },
      el("td", {}, el("span", { class: "swatch", style: `background:var(--series-${c.cell % 10})` }), " ", String(c.cell)),
      c.labels.map((l) => el("td", {}, l)),
      el("td", { class: "num", dataset: { key: "runs" } }, `${c.completed}/${c.jobs}`),
      [["train_loss", c.train_loss], ["val_loss", c.val_loss], ["val_metric", c.val_metric]].map(([key, s]) =>
        el("td", { class: "num", dataset: { key: String(key), value: String(/** @type {Spread} */ (s).mean) } }, spread(/** @type {Spread} */ (s)))),
      el("td", { class: "num", dataset: { key: "divergence_rate", value: String(c.divergence_rate) } }, pct(c.divergence_rate)),
      el("td", { class: "num", dataset: { key: "solved_rate", value: String(c.solved_rate) } }, pct(c.solved_rate)),
      el("td", { class: "num", dataset: { key: "steps_to_threshold", value: String(c.steps_to_threshold) } },
        c.steps_to_threshold === null ? "–" : `${num(c.steps_to_threshold)} (${c.reached})`),
      el("td", { class: "num", dataset: { key: "steps_per_second" } }, num(c.steps_per_second.mean, 3)))));

    jobsBody.replaceChildren(...(experiment.jobs ?? []).map((j) => el("tr", { dataset: { id: j.id } },
      // A UUIDv7 starts with its time, the same for jobs queued together: its end tells them apart.
      el("td", {}, el("a", { href: `#/jobs/${j.id}`, title: j.id }, `…${j.id.slice(-8)}`)),
      el("td", {}, String(j.cell)), el("td", {}, String(j.seed)),
      el("td", {}, statusBadge(j.status)), el("td", {}, progressBar(j)))));
  }

  async function loadCurves() {
    const jobs = experiment.jobs ?? [];
    for (const j of jobs) {
      const known = losses.get(j.id);
      if (j.step === 0 || (known && known.step === j.step)) continue;
      /** @type {import("../types.js").StepsResponse} */
      const steps = await get(`/jobs/${j.id}/steps${query({ max_points: JOB_POINTS })}`);
      losses.set(j.id, { step: j.step, data: { step: steps.step, loss: steps.loss } });
      if (closed) return;
    }
    drawCurves();
  }

  function drawCurves() {
    charts.forEach((c) => c.destroy());
    charts = [];
    const jobs = experiment.jobs ?? [];
    const built = experiment.cells.map((cell) => {
      const mine = jobs.filter((j) => j.cell === cell.index);
      const total = Math.max(1, ...mine.map((j) => j.total_steps));
      const runs = mine.flatMap((j) => { const l = losses.get(j.id); return l ? [l.data] : []; });
      return { cell, curve: cellCurve(runs, total) };
    });
    // One scale for every cell, so that their losses compare at a glance.
    const all = built.flatMap(({ curve }) => [...curve.min, ...curve.max]).map(positive).filter((v) => v !== null);
    /** @type {[number, number] | undefined} */
    const range = all.length ? [Math.min(...all) * 0.9, Math.max(...all) * 1.1] : undefined;
    curves.replaceChildren(...built.map(({ cell, curve }) => {
      const box = el("div", { class: "chart" });
      const last = curve.mean.length - 1;
      const card = el("article", { class: "card cell-curve", dataset: {
        cell: String(cell.index), runs: String(curve.runs),
        last: JSON.stringify({ step: curve.x[last], mean: curve.mean[last], min: curve.min[last], max: curve.max[last] }),
      } }, el("h4", {}, el("span", { class: "swatch", style: `background:var(--series-${cell.index % 10})` }), ` cell ${cell.index}`,
        cell.labels.length ? el("span", { class: "muted" }, ` · ${cell.labels.join(" · ")}`) : null), box);
      return { card, box, curve, cell };
    }).map(({ card, box, curve, cell }) => {
      requestAnimationFrame(() => {
        if (closed) return;
        const color = seriesColor(cell.index);
        const chart = lineChart(uPlot, box, {
          series: [
            { label: "mean", color, width: 2, spanGaps: true },
            { label: "highest", color: withAlpha(color, 0.35), width: 1, spanGaps: true },
            { label: "lowest", color: withAlpha(color, 0.35), width: 1, spanGaps: true },
          ],
          bands: [{ series: [2, 3], fill: withAlpha(color, 0.18) }],
          yLog: true, yLabel: "loss", height: 180, ...(range ? { yRange: range } : {}),
        });
        chart.setData([curve.x, curve.mean.map(positive), curve.max.map(positive), curve.min.map(positive)]);
        charts.push(chart);
      });
      return card;
    }));
  }

  draw();
  await loadCurves();
  const timer = setInterval(async () => {
    if (closed || document.visibilityState !== "visible" || experiment.status === "finished") return;
    try {
      [experiment, results] = await Promise.all([get(`/experiments/${id}`), get(`/experiments/${id}/results`)]);
      if (closed) return;
      draw();
      await loadCurves();
    } catch (err) {
      ctx.offline(err);
    }
  }, REFRESH_MS);
  return () => {
    closed = true;
    clearInterval(timer);
    charts.forEach((c) => c.destroy());
  };
}
