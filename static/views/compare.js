// @ts-check
// Compare jobs: loss and gradient norm overlaid, and each job's per-layer gradient-norm
// profile and heatmap side by side on shared scales. The jobs are picked from a search over
// every job (components/job-picker.js); picking one changes the comparison in place.

import { get, isFinished, query } from "../api.js";
import { ema, optionsBar, readOptions, robustRange } from "../chart-options.js";
import { lineChart, loadUPlot, positive, SERIES_COLORS, seriesColor } from "../charts.js";
import { showRaw, smoothedPair } from "../components/loss-charts.js";
import { jobPicker, shortId } from "../components/job-picker.js";
import { drawGrid, gridKeyboard, gridPointer } from "../heatmap.js";
import { blockOf, describeGroupedCell, groupedGrid, LayerGroups } from "../layer-groups.js";
import { JobData } from "../store.js";
import { describeSpec, diagnosisBadges, el, num, pct, statusBadge, setTitle } from "../widgets.js";
import { specSchema } from "./spec-form.js";

/** @typedef {import("../types.js").Job} Job */
/** @typedef {import("../types.js").LayerSeries} LayerSeries */
/** @typedef {import("../charts.js").LineChart} LineChart */
/** @typedef {{job: Job, data: JobData, profile: {median: (number | null)[], last: (number | null)[]}}} Loaded */
/**
 * @typedef {object} ProfilePanel
 * @property {HTMLElement} chartBox
 * @property {HTMLCanvasElement} canvas
 * @property {LineChart} chart
 * @property {HTMLElement} status
 * @property {LayerGroups} groups The heatmap's rows by block.
 * @property {string[]} names The full names of the layers on the profile's x axis, in order.
 * @property {() => void} draw Draws the heatmap.
 */
/** @typedef {import("uplot").AlignedData} AlignedData */

/** The CSS colour of the i-th job (a custom property of style.css). */
const swatch = (/** @type {number} */ i) => `var(--series-${i % SERIES_COLORS})`;

const POINTS = 2000;
const LAYER_POINTS = 400;
const REFRESH_MS = 3000;

/**
 * A layer's name as the profile's x axis shows it: from its block's number on, without a
 * trailing `.weight` (`blocks.3.linear.weight` → `3.linear`, `head.weight` → `head`), and at
 * most 24 characters (the middle left out); hovering shows the full name.
 */
export function shortLayerName(/** @type {string} */ name) {
  const block = blockOf(name);
  let s = name.replace(/[._]weight$/, "");
  if (block) s = s.slice(block.lastIndexOf(".") + 1);
  return s.length <= 24 ? s : `${s.slice(0, 8)}…${s.slice(-15)}`;
}

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
  const schema = await specSchema().catch(() => null);
  const kinds = {
    model: schema?.fields("ModelSpec").kind?.options ?? [],
    task: schema ? Object.keys(schema.tasks) : [],
  };
  /** @type {Loaded[]} */
  let loaded = [];
  /** @type {LineChart[]} */
  let charts = [];
  let timer = 0;
  let closed = false;
  /** Counts the loads begun: a load that a newer one overtook shows nothing. */
  let loads = 0;

  const pickerBox = el("div", { class: "job-picker" });
  const picker = jobPicker(pickerBox, {
    selected: () => ids,
    onChange: select,
    kinds,
    swatch: (id) => {
      const i = loaded.findIndex(({ job }) => job.id === id);
      return i < 0 ? null : swatch(i);
    },
    offline: ctx.offline,
  });
  const body = el("div", { class: "compare-body" });
  setTitle("Compare jobs");
  root.replaceChildren(
    el("section", { class: "panel" }, el("h2", {}, "Compare jobs"),
      el("p", { class: "muted" }, "Pick two or more jobs — a failing run and its remedy, say. Search by name, or filter by status, model and task; runs of one name show when they were created and the end of their id."),
      pickerBox),
    body);

  const lossBox = el("div", { class: "chart" });
  const normBox = el("div", { class: "chart" });
  const summary = el("tbody");
  const profiles = el("div", { class: "profiles" });
  const allTensors = el("input", { type: "checkbox", onchange: () => {
    if (!loaded.length) return;
    build();
    update();
  } });
  // How the loss and norm charts and the heatmaps read; the bar changes it.
  const options = readOptions();
  let builtLog = { loss: options.logLoss, norm: options.logNorm };
  const bar = optionsBar(options, () => {
    if (!loaded.length) return;
    if (builtLog.loss !== options.logLoss || builtLog.norm !== options.logNorm) build();
    update();
  });
  const parts = [
    bar,
    el("section", { class: "panel" }, el("div", { class: "table-wrap" }, el("table", { class: "summary", id: "compare-summary" },
      el("thead", {}, el("tr", {}, ["", "job", "status", "step", "final loss", "validation", "metric", "max ‖g‖", "clipped", "skipped", "diagnosis"].map((h) => el("th", {}, h)))),
      summary))),
    el("div", { class: "compare-grid" },
      el("section", { class: "panel" }, el("h3", {}, "Loss ", el("span", { class: "muted small" }, "solid: training, dashed: validation")), lossBox),
      el("section", { class: "panel" }, el("h3", {}, "Global gradient norm ", el("span", { class: "muted small" }, "solid: before the policies, dotted: after")), normBox)),
    el("section", { class: "panel" }, el("h3", {}, "Per-layer gradient norm, side by side ",
      el("span", { class: "muted small" }, "median over the run (solid) and latest (dashed), one point per layer; heatmaps share one colour scale, their rows grouped by block (click or Enter on a block to open or collapse it)")),
      el("label", { class: "small muted" }, allTensors, " every tensor (biases and norm parameters too), not only weight matrices"), profiles),
  ];

  /** Each job's profile chart and heatmap, in the order of `loaded`. @type {ProfilePanel[]} */
  let panels = [];

  /** A job's name, with the end of its id where another job compared has the same name. */
  function label(/** @type {Job} */ job) {
    const twins = loaded.filter((l) => l.job.name === job.name).length;
    return twins > 1 ? `${job.name} (${shortId(job.id)})` : job.name;
  }

  /** The layers a job's profile shows: its weight matrices, or every tensor when asked (or when it has none). */
  function profileLayers(/** @type {JobData} */ data) {
    const matrices = data.layers.filter((l) => (l.shape ?? []).length >= 2);
    return allTensors.checked || !matrices.length ? data.layers : matrices;
  }

  function build() {
    charts.forEach((c) => c.destroy());
    charts = [];
    const sync = { key: "compare" };
    builtLog = { loss: options.logLoss, norm: options.logNorm };
    const outliers = () => options.outliers;
    // Per job: its training loss (raw and smoothed) and validation; its norm before and
    // after the policies (each raw and smoothed).
    const lossSeries = loaded.flatMap(({ job }, i) => [
      ...smoothedPair(label(job), seriesColor(i), { spanGaps: true }),
      { label: `${label(job)} (val)`, color: seriesColor(i), dash: [6, 4], width: 2, spanGaps: true, points: { show: true, size: 4 } },
    ]);
    charts.push(lineChart(uPlot, lossBox, { series: lossSeries, yLog: builtLog.loss, yLabel: "loss", height: 280, sync, outliers }));
    const normSeries = loaded.flatMap(({ job }, i) => [
      ...smoothedPair(label(job), seriesColor(i), { spanGaps: true }),
      ...smoothedPair(`${label(job)} (after)`, seriesColor(i), { dash: [2, 3], spanGaps: true }),
    ]);
    charts.push(lineChart(uPlot, normBox, { series: normSeries, yLog: builtLog.norm, yLabel: "‖g‖", height: 280, sync, outliers }));
    lossBox.dataset.log = String(builtLog.loss);
    normBox.dataset.log = String(builtLog.norm);
    const boxes = loaded.map(({ job }, i) => {
      const chartBox = el("div", { class: "chart profile-chart" });
      const canvas = el("canvas", { class: "grid-canvas profile-heat" });
      const tip = el("div", { class: "tip", hidden: true });
      const status = el("span", { class: "profile-status" });
      const card = el("article", { class: "card profile", dataset: { id: job.id } },
        el("h4", {}, el("span", { class: "swatch", style: `background:${swatch(i)}` }), " ",
          el("a", { href: `#/jobs/${job.id}` }, label(job)), " ", status),
        el("p", { class: "muted small" }, describeSpec(job.spec)), chartBox, el("div", { class: "heat-wrap" }, canvas, tip));
      return { card, chartBox, canvas, tip, status };
    });
    profiles.replaceChildren(...boxes.map((b) => b.card));
    panels = boxes.map(({ chartBox, canvas, tip, status }, i) => {
      const { data } = loaded[i];
      const names = profileLayers(data).map((l) => l.name);
      const chart = lineChart(uPlot, chartBox, {
        series: [
          { label: "median", color: seriesColor(i), width: 2, points: { show: true, size: 4 } },
          { label: "latest", color: seriesColor(i), dash: [5, 4] },
        ],
        yLog: true, yLabel: "‖g‖", xLabel: "layer", height: 300,
        xNames: () => names.map(shortLayerName),
        xValue: (_u, v) => (v === null || v === undefined ? "–" : names[v] ?? ""),
      });
      charts.push(chart);
      const panel = { chartBox, canvas, chart, status, names, groups: new LayerGroups(data.layers), draw: () => {} };
      panel.draw = heatmap(panel, data, tip, loaded[i].job);
      return panel;
    });
  }

  /**
   * A job's heatmap: rows by block (a block's row holds √Σ‖g‖² of its layers'; a model of
   * many layers starts with its blocks collapsed), every layer's full name and value on
   * hover, and the keyboard's cursor (`gridKeyboard`). Returns its drawing.
   * @param {ProfilePanel} panel
   * @param {JobData} data
   * @param {HTMLElement} tip
   * @param {Job} job
   */
  function heatmap(panel, data, tip, job) {
    const { canvas, groups } = panel;
    let rows = groups.rows();
    let grid = groupedGrid(data.grid, rows);
    const fit = () => {
      rows = groups.rows();
      canvas.style.height = `${Math.min(420, Math.max(120, rows.length * 14 + 24))}px`;
      canvas.dataset.rows = String(rows.length);
    };
    fit();
    const describe = (/** @type {number} */ r, /** @type {number | null} */ col) =>
      describeGroupedCell({ rows, grid, groups, layers: data.layers }, { block: "block ‖g‖", layer: "max ‖g‖" }, r, col);
    const act = (/** @type {number} */ r) => {
      const row = rows[r];
      if (row?.kind !== "group") return;
      groups.toggle(row.group.name);
      fit();
      draw();
    };
    gridPointer(canvas, tip, describe, { keyboardActive: () => keys.active(), onClick: act });
    const keys = gridKeyboard(canvas, tip, { label: `Per-layer gradient norm of ${label(job)}, layers × steps; Enter opens and collapses a block`, describe, onEnter: act, redraw: () => draw() });
    const rowLabel = (/** @type {number} */ r) => {
      const row = rows[r];
      if (!row) return "";
      if (row.kind === "group") return `${groups.isCollapsed(row.group) ? "▸" : "▾"} ${row.group.name} (${row.group.members.length})`;
      const name = data.layers[row.layer]?.name ?? `#${row.layer}`;
      return row.group ? `· ${name.slice(row.group.name.length + 1)}` : name;
    };
    function draw() {
      grid = groupedGrid(data.grid, rows);
      drawGrid(canvas, grid, {
        ...(scale ? { scale } : {}),
        rowLabel,
        headRows: new Set(rows.flatMap((row, r) => (row.kind === "group" ? [r] : []))),
        focusCell: keys.focusCell(),
        gutter: 150,
        empty: "no per-layer statistics yet",
      });
      keys.refresh();
    }
    return draw;
  }

  /** The heatmaps' shared colour scale (log10), set by `update`. @type {[number, number] | undefined} */
  let scale;

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
    picker.setJobs(loaded.map(({ job }) => job));
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
    scale = lo <= hi ? [Math.log10(lo), Math.log10(hi)] : undefined;
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
      const xs = profileLayers(data).map((l) => l.index);
      if (scale) panel.chart.u.setScale("y", { min: lo / 1.5, max: hi * 1.5 });
      panel.chart.setData([xs.map((_, k) => k), xs.map((x) => profile.median[x] ?? null), xs.map((x) => profile.last[x] ?? null)]);
      if (scale) panel.chart.u.setScale("y", { min: lo / 1.5, max: hi * 1.5 });
      panel.draw();
    });

    summary.replaceChildren(...loaded.map(({ job, data }, i) => {
      const c = data.cols;
      const ev = data.evals;
      const lastLoss = [...c.loss].reverse().find((v) => v !== null);
      const bestVal = ev.loss.filter((v) => v !== null);
      const maxNorm = Math.max(0, .../** @type {number[]} */ (c.gn.filter((v) => v !== null)));
      return el("tr", { dataset: { id: job.id } },
        el("td", {}, el("span", { class: "swatch", style: `background:${swatch(i)}` })),
        el("td", {}, el("a", { href: `#/jobs/${job.id}` }, label(job))),
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

  /** Drops the comparison's charts (none picked, or a new set to build). */
  function clear() {
    charts.forEach((c) => c.destroy());
    charts = [];
    panels = [];
    loaded = [];
  }

  async function load() {
    const mine = ++loads;
    clearTimeout(timer);
    timer = 0;
    if (ids.length === 0) {
      clear();
      body.replaceChildren(el("p", { class: "empty" }, "Select jobs above to compare them."));
      setTitle("Compare jobs");
      picker.setJobs([]);
      return;
    }
    const next = await Promise.all(ids.map((id) => loadJob(id).catch(() => null)));
    if (closed || mine !== loads) return;
    if (body.firstElementChild !== bar) body.replaceChildren(...parts);
    const shape = (/** @type {Loaded[]} */ list) => list.map(({ job, data }) => `${job.id}:${data.layers.length}`).join(",");
    const found = next.filter((x) => x !== null);
    const rebuild = loaded.length === 0 || shape(loaded) !== shape(found);
    loaded = found;
    setTitle(loaded.length ? `Compare ${loaded.map(({ job }) => label(job)).join(", ")}` : "Compare jobs");
    if (rebuild) build();
    update();
    if (!closed && loaded.some(({ job }) => !isFinished(job))) {
      timer = setTimeout(() => load().catch((err) => ctx.offline(err)), REFRESH_MS);
    }
  }

  /** The user picked or dropped a job: the URL says which (no new history entry), the comparison follows. */
  function select(/** @type {string[]} */ next) {
    ids = next;
    history.replaceState(history.state, "", `#/compare${query({ ids: ids.length ? ids : null })}`);
    picker.setJobs([]);
    clear();
    load().catch((err) => ctx.offline(err));
  }

  await Promise.all([picker.refresh(), load()]);
  return () => {
    closed = true;
    clearTimeout(timer);
    picker.destroy();
    charts.forEach((c) => c.destroy());
  };
}
