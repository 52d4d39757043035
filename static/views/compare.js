// @ts-check
// Compare jobs: loss and gradient norm overlaid, and each job's per-layer gradient-norm
// profile and heatmap side by side on shared scales.

import { get, isFinished, query } from "../api.js";
import { ema, optionsBar, readOptions, robustRange } from "../chart-options.js";
import { lineChart, loadUPlot, positive, SERIES_COLORS, seriesColor } from "../charts.js";
import { showRaw, smoothedPair } from "../components/loss-charts.js";
import { drawGrid } from "../heatmap.js";
import { JobData } from "../store.js";
import { describeSpec, diagnosisBadges, el, num, pct, statusBadge, setTitle } from "../widgets.js";

/** @typedef {import("../types.js").Job} Job */
/** @typedef {import("../types.js").LayerSeries} LayerSeries */
/** @typedef {import("../charts.js").LineChart} LineChart */
/** @typedef {{job: Job, data: JobData, profile: {median: (number | null)[], last: (number | null)[]}}} Loaded */
/** @typedef {{chartBox: HTMLElement, canvas: HTMLCanvasElement, chart: LineChart, status: HTMLElement}} ProfilePanel */
/** @typedef {import("uplot").AlignedData} AlignedData */

/** The CSS colour of the i-th job (a custom property of style.css). */
const swatch = (/** @type {number} */ i) => `var(--series-${i % SERIES_COLORS})`;

const POINTS = 2000;
const LAYER_POINTS = 400;
const REFRESH_MS = 3000;

function median(/** @type {(number | null)[]} */ values) {
  const v = /** @type {number[]} */ (values.filter((x) => x !== null && x > 0)).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : null;
}

/**
 * Everything the comparison shows of one job.
 * @param {string} id
 * @returns {Promise<Loaded>}
 */
async function loadJob(id) {
  /** @type {[Job, import("../types.js").StepsResponse, {layers: import("../types.js").Layer[]}, {layers: LayerSeries[]}]} */
  const [job, steps, layers, stats] = await Promise.all([
    get(`/jobs/${id}`),
    get(`/jobs/${id}/steps${query({ max_points: POINTS })}`),
    get(`/jobs/${id}/layers`),
    get(`/jobs/${id}/layer-stats${query({ stat: "grad_norm", max_points: LAYER_POINTS })}`),
  ]);
  const data = new JobData(layers.layers);
  data.addSteps(steps);
  /** @type {Loaded["profile"]} */
  const profile = { median: [], last: [] };
  for (const s of stats.layers) {
    /** @type {(number | null)[]} */
    const gn = s.grad_norm ?? [];
    for (let k = 0; k < s.step.length; k++) data.addNorm(s.index, s.step[k], gn[k]);
    profile.median[s.index] = median(gn);
    profile.last[s.index] = positive(gn[gn.length - 1]);
  }
  return { job, data, profile };
}

/**
 * @param {HTMLElement} root
 * @param {import("../types.js").ViewContext} ctx
 * @param {URLSearchParams} params
 * @returns {Promise<import("../types.js").Teardown>}
 */
export async function compareView(root, ctx, params) {
  const uPlot = await loadUPlot();
  let ids = (params.get("ids") ?? "").split(",").filter(Boolean);
  /** @type {Job[]} */
  const all = (await get(`/jobs${query({ limit: 100 })}`)).jobs;
  /** @type {Loaded[]} */
  let loaded = [];
  /** @type {LineChart[]} */
  let charts = [];
  let timer = 0;
  let closed = false;

  /** Each chip's status, by job id: kept current as the jobs are read again. @type {Map<string, HTMLElement>} */
  const chipStatus = new Map();
  const chipBadge = (/** @type {Job} */ j) => {
    const slot = el("span", { class: "chip-status" }, statusBadge(j.status));
    chipStatus.set(j.id, slot);
    return slot;
  };
  const picker = el("div", { class: "picker" }, all.length ? all.map((j) => el("label", { class: "chip", dataset: { id: j.id } },
    el("input", { type: "checkbox", value: j.id, checked: ids.includes(j.id), onchange: (/** @type {Event} */ e) => {
      ids = /** @type {HTMLInputElement} */ (e.target).checked ? [...ids, j.id] : ids.filter((x) => x !== j.id);
      location.hash = `#/compare${query({ ids: ids.length ? ids : null })}`;
    } }), " ", j.name, " ", chipBadge(j))) : el("p", { class: "muted" }, "No jobs to compare yet."));
  const body = el("div", { class: "compare-body" });
  const named = ids.map((id) => all.find((j) => j.id === id)?.name ?? id.slice(0, 8));
  setTitle(named.length ? `Compare ${named.join(", ")}` : "Compare jobs");
  root.replaceChildren(
    el("section", { class: "panel" }, el("h2", {}, "Compare jobs"),
      el("p", { class: "muted" }, "Pick two or more jobs — a failing run and its remedy, say."), picker),
    body);

  if (ids.length === 0) {
    body.replaceChildren(el("p", { class: "empty" }, "Select jobs above to compare them."));
    return () => {};
  }

  const lossBox = el("div", { class: "chart" });
  const normBox = el("div", { class: "chart" });
  const summary = el("tbody");
  const profiles = el("div", { class: "profiles" });
  const allTensors = el("input", { type: "checkbox", onchange: () => update() });
  // How the loss and norm charts and the heatmaps read; the bar changes it.
  const options = readOptions();
  let builtLog = { loss: options.logLoss, norm: options.logNorm };
  const bar = optionsBar(options, () => {
    if (builtLog.loss !== options.logLoss || builtLog.norm !== options.logNorm) build();
    update();
  });
  body.replaceChildren(
    bar,
    el("section", { class: "panel" }, el("div", { class: "table-wrap" }, el("table", { class: "summary", id: "compare-summary" },
      el("thead", {}, el("tr", {}, ["", "job", "status", "step", "final loss", "validation", "metric", "max ‖g‖", "clipped", "skipped", "diagnosis"].map((h) => el("th", {}, h)))),
      summary))),
    el("div", { class: "compare-grid" },
      el("section", { class: "panel" }, el("h3", {}, "Loss ", el("span", { class: "muted small" }, "solid: training, dashed: validation")), lossBox),
      el("section", { class: "panel" }, el("h3", {}, "Global gradient norm ", el("span", { class: "muted small" }, "solid: before the policies, dotted: after")), normBox)),
    el("section", { class: "panel" }, el("h3", {}, "Per-layer gradient norm, side by side ",
      el("span", { class: "muted small" }, "median over the run (solid) and latest (dashed); heatmaps share one colour scale")),
      el("label", { class: "small muted" }, allTensors, " every tensor (biases and norm parameters too), not only weight matrices"), profiles),
  );

  /** Each job's profile chart and heatmap, in the order of `loaded`. @type {ProfilePanel[]} */
  let panels = [];

  function build() {
    charts.forEach((c) => c.destroy());
    charts = [];
    const sync = { key: "compare" };
    builtLog = { loss: options.logLoss, norm: options.logNorm };
    const outliers = () => options.outliers;
    // Per job: its training loss (raw and smoothed) and validation; its norm before and
    // after the policies (each raw and smoothed).
    const lossSeries = loaded.flatMap(({ job }, i) => [
      ...smoothedPair(job.name, seriesColor(i), { spanGaps: true }),
      { label: `${job.name} (val)`, color: seriesColor(i), dash: [6, 4], width: 2, spanGaps: true, points: { show: true, size: 4 } },
    ]);
    charts.push(lineChart(uPlot, lossBox, { series: lossSeries, yLog: builtLog.loss, yLabel: "loss", height: 280, sync, outliers }));
    const normSeries = loaded.flatMap(({ job }, i) => [
      ...smoothedPair(job.name, seriesColor(i), { spanGaps: true }),
      ...smoothedPair(`${job.name} (after)`, seriesColor(i), { dash: [2, 3], spanGaps: true }),
    ]);
    charts.push(lineChart(uPlot, normBox, { series: normSeries, yLog: builtLog.norm, yLabel: "‖g‖", height: 280, sync, outliers }));
    lossBox.dataset.log = String(builtLog.loss);
    normBox.dataset.log = String(builtLog.norm);
    const boxes = loaded.map(({ job, data }, i) => {
      const chartBox = el("div", { class: "chart" });
      const canvas = el("canvas", { class: "grid-canvas profile-heat", style: `height:${Math.min(300, Math.max(120, data.layers.length * 10 + 24))}px` });
      const status = el("span", { class: "profile-status" });
      const card = el("article", { class: "card profile", dataset: { id: job.id } },
        el("h4", {}, el("span", { class: "swatch", style: `background:${swatch(i)}` }), " ",
          el("a", { href: `#/jobs/${job.id}` }, job.name), " ", status),
        el("p", { class: "muted small" }, describeSpec(job.spec)), chartBox, canvas);
      return { card, chartBox, canvas, status };
    });
    profiles.replaceChildren(...boxes.map((b) => b.card));
    panels = boxes.map(({ chartBox, canvas, status }, i) => {
      const layers = loaded[i].data.layers;
      const chart = lineChart(uPlot, chartBox, {
        series: [
          { label: "median", color: seriesColor(i), width: 2, points: { show: true, size: 4 } },
          { label: "latest", color: seriesColor(i), dash: [5, 4] },
        ],
        yLog: true, yLabel: "‖g‖", xLabel: "layer", height: 200,
        xValue: (_u, v) => (v === null || v === undefined ? "–" : `${v}: ${layers[v]?.name ?? ""}`),
      });
      charts.push(chart);
      return { chartBox, canvas, chart, status };
    });
  }

  /** Several jobs' columns on one step axis. @param {(number | null)[][][]} tables */
  function join(tables) {
    return /** @type {(number | null)[][]} */ (tables.length ? uPlot.join(/** @type {AlignedData[]} */ (/** @type {unknown} */ (tables))) : [[]]);
  }

  /** Shows `status` in `slot` unless it shows it already. */
  function showStatus(/** @type {HTMLElement | undefined} */ slot, /** @type {string} */ status) {
    if (slot && slot.textContent !== status) slot.replaceChildren(statusBadge(status));
  }

  function update() {
    const w = options.smoothing;
    const train = (/** @type {(number | null)[]} */ v) => (builtLog.loss ? v.map(positive) : v);
    showRaw(charts[0], loaded.map((_, i) => 1 + 3 * i), w > 0);
    showRaw(charts[1], loaded.flatMap((_, i) => [1 + 4 * i, 3 + 4 * i]), w > 0);
    // The chips and the panels' badges say what the table says: every job as last read.
    for (const { job } of loaded) showStatus(chipStatus.get(job.id), job.status);
    panels.forEach((panel, i) => showStatus(panel.status, loaded[i].job.status));
    charts[0].setData(join(loaded.map(({ data: { cols: c } }) => [c.step, train(c.loss), ema(train(c.loss), w), train(c.valid)])));
    charts[1].setData(join(loaded.map(({ data: { cols: c } }) => [c.step, c.gn, ema(c.gn, w), c.gnc, ema(c.gnc, w)])));

    // One y range and one colour scale for every profile, so they read side by side.
    let lo = Infinity;
    let hi = -Infinity;
    for (const { profile, data } of loaded) {
      for (const v of [...profile.median, ...profile.last]) if (v !== null && v > 0) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      const [a, b] = data.grid.range();
      if (a <= b) { lo = Math.min(lo, 10 ** a); hi = Math.max(hi, 10 ** b); }
    }
    /** @type {[number, number] | undefined} */
    let scale = lo <= hi ? [Math.log10(lo), Math.log10(hi)] : undefined;
    if (options.outliers) {
      // Without outliers: one explosion does not set every job's colours.
      /** @type {number[]} */
      const values = [];
      for (const { profile, data } of loaded) {
        for (const v of [...profile.median, ...profile.last]) if (v !== null && v > 0) values.push(Math.log10(v));
        for (let c = 0; c < data.grid.columns; c++) for (let r = 0; r < data.grid.rows; r++) {
          const v = data.grid.at(r, c);
          if (Number.isFinite(v)) values.push(v);
        }
      }
      const robust = robustRange(values, false);
      if (robust) {
        scale = robust;
        [lo, hi] = [10 ** robust[0], 10 ** robust[1]];
      }
    }
    profiles.dataset.scale = JSON.stringify(scale ?? null);
    panels.forEach((panel, i) => {
      const { data, profile } = loaded[i];
      const matrices = data.layers.filter((l) => (l.shape ?? []).length >= 2);
      const xs = (allTensors.checked || !matrices.length ? data.layers : matrices).map((l) => l.index);
      if (scale) panel.chart.u.setScale("y", { min: lo / 1.5, max: hi * 1.5 });
      panel.chart.setData([xs, xs.map((x) => profile.median[x] ?? null), xs.map((x) => profile.last[x] ?? null)]);
      if (scale) panel.chart.u.setScale("y", { min: lo / 1.5, max: hi * 1.5 });
      drawGrid(panel.canvas, data.grid, { scale, rowLabel: (r) => data.layers[r]?.name ?? `#${r}`, gutter: 150, empty: "no per-layer statistics yet" });
    });

    summary.replaceChildren(...loaded.map(({ job, data }, i) => {
      const c = data.cols;
      const ev = data.evals;
      const lastLoss = [...c.loss].reverse().find((v) => v !== null);
      const bestVal = ev.loss.filter((v) => v !== null);
      const maxNorm = Math.max(0, .../** @type {number[]} */ (c.gn.filter((v) => v !== null)));
      return el("tr", { dataset: { id: job.id } },
        el("td", {}, el("span", { class: "swatch", style: `background:${swatch(i)}` })),
        el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.name)),
        el("td", {}, statusBadge(job.status)),
        el("td", { class: "num" }, `${job.step} / ${job.total_steps}`),
        el("td", { class: "num" }, num(lastLoss)),
        el("td", { class: "num" }, bestVal.length ? num(bestVal[bestVal.length - 1]) : "–"),
        el("td", { class: "num" }, ev.value.length && ev.value[ev.value.length - 1] !== null ? `${ev.metric ?? ""} ${num(ev.value[ev.value.length - 1], 3)}` : "–"),
        el("td", { class: "num" }, num(maxNorm, 3)),
        el("td", { class: "num" }, c.step.length ? pct(data.clippedSteps / c.step.length) : "–"),
        el("td", { class: "num" }, String(data.skippedSteps)),
        el("td", { class: "badges" }, diagnosisBadges(job)));
    }));
  }

  async function load() {
    timer = 0;
    const next = await Promise.all(ids.map((id) => loadJob(id).catch(() => null)));
    if (closed) return;
    const shape = (/** @type {Loaded[]} */ list) => list.map(({ data }) => data.layers.length).join(",");
    const found = next.filter((x) => x !== null);
    const rebuild = loaded.length === 0 || shape(loaded) !== shape(found);
    loaded = found;
    if (rebuild) build();
    update();
    if (!closed && loaded.some(({ job }) => !isFinished(job))) {
      timer = setTimeout(() => load().catch((err) => ctx.offline(err)), REFRESH_MS);
    }
  }

  await load();
  return () => {
    closed = true;
    clearTimeout(timer);
    charts.forEach((c) => c.destroy());
  };
}
