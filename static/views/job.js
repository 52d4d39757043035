// One job, live: history from the REST API first, then the WebSocket stream. Loss and
// validation loss, global gradient norm before and after the policies (clipped and
// skipped steps marked), learning rate, the per-layer gradient-norm heatmap, the
// per-layer statistics table, the selected layer's gradient histogram over time, events.

import { downloadCheckpoint, get, isFinished, post, query, streamUrl } from "../api.js";
import { cssVar, frames, lineChart, loadUPlot, PALETTE, throttled, verticalLines } from "../charts.js";
import { el, duration, num, pct } from "../format.js";
import { cellAt, drawGrid } from "../heatmap.js";
import { HIST_BINS, JobData, STATS } from "../store.js";
import { diagnosisBadges, progressBar, statusBadge } from "./jobs.js";

const HISTORY_POINTS = 4000;
const HEATMAP_POINTS = 2400;
const HIST_POINTS = 300;
const POLL_MS = 2500;
const TABLE_MS = 300;
/** Event kinds drawn as vertical lines on the gradient-norm chart. */
const LINE_EVENTS = { exploding: "--bad", nonfinite: "--bad" };

const STAT_LABELS = {
  grad_norm: "‖g‖", grad_max: "max |g|", grad_mean: "mean g", grad_std: "std g",
  zero_frac: "zeros", nonfinite: "NaN/Inf", weight_norm: "‖w‖", update_ratio: "update ratio",
};

export function describeSpec(spec) {
  const m = spec.model;
  const t = spec.task;
  const o = spec.optimizer;
  const model = `${m.kind} ${m.layers}×${m.hidden}${m.norm && m.norm !== "none" ? ` ${m.norm}-norm` : ""}${m.kind === "transformer" ? ` ${m.norm_position}-LN` : ""}${m.activation ? ` ${m.activation}` : ""}${m.residual ? " residual" : ""}${m.init_scale !== 1 ? ` init×${m.init_scale}` : ""}`;
  const task = `${t.kind}${t.seq_len ? ` (seq ${t.seq_len})` : ""}`;
  const opt = `${o.kind} lr ${o.lr}${o.warmup_steps ? ` warm-up ${o.warmup_steps}` : ""}${o.schedule && o.schedule !== "constant" ? ` ${o.schedule}` : ""}`;
  const pols = [...(spec.policy?.grad ?? []), ...(spec.policy?.weight ?? []).map((p) => ({ ...p, kind: `weight ${p.kind}` }))]
    .map((p) => `${p.kind}(${Object.entries(p).filter(([k]) => k !== "kind").map(([, v]) => v).join(", ")})`);
  return [model, task, opt, pols.length ? pols.join(" → ") : "no policies"].join(" · ");
}

/** Health flags of one layer from its latest statistics. */
function health(i, s, maxNorm, monitor, issues, redundant) {
  const flags = [];
  // A bias right before a batch norm has no gradient by construction (the diagnosis says
  // so once, as a `redundant` event): not a vanishing or dead layer.
  if (redundant.has(i)) flags.push({ text: "redundant", level: "info", title: "the batch norm after it removes this parameter's effect, so its gradient is zero" });
  for (const issue of issues.filter((x) => x.layer === i)) flags.push({ text: issue.kind, level: issue.kind === "nonfinite" ? "bad" : "warn", title: issue.message });
  const nf = s.nonfinite?.[i];
  if (nf > 0 && !flags.some((f) => f.text === "nonfinite")) flags.push({ text: "NaN/Inf", level: "bad" });
  const zf = s.zero_frac?.[i];
  if (zf >= (monitor?.dead_frac ?? 0.99) && !redundant.has(i) && !flags.some((f) => f.text === "dead")) flags.push({ text: "dead", level: "warn", title: "almost every gradient entry is exactly zero" });
  const gn = s.grad_norm?.[i];
  if (gn !== null && gn !== undefined && maxNorm > 0 && gn < maxNorm * (monitor?.vanish_ratio ?? 1e-4) && !redundant.has(i) && !flags.some((f) => f.text === "vanishing"))
    flags.push({ text: "vanishing", level: "warn", title: "gradient far below the largest layer's" });
  const ur = s.update_ratio?.[i];
  if (ur > 1e-2) flags.push({ text: "big steps", level: "warn", title: "weights change by more than 1% per step (healthy is about 0.1%)" });
  else if (ur > 0 && ur < 1e-5) flags.push({ text: "frozen", level: "info", title: "weights change by less than 0.001% per step" });
  if (!flags.length) flags.push({ text: "ok", level: "ok" });
  return flags;
}

export async function jobView(root, ctx, id) {
  const uPlot = await loadUPlot();
  let job = await get(`/jobs/${id}`);
  const data = new JobData();
  const events = [];
  let closed = false;
  let socket = null;
  let buffering = true;
  const buffer = [];
  const arrivals = []; // [time ms, step] of recent step messages, for the rate
  let gap = null; // steps missed by a lagging socket: {from, to}
  let pollTimer = 0;
  let sortKey = "index";
  let sortDir = 1;
  let lastTable = 0;
  let tableTimer = 0;

  // ---- layout ----
  const counter = el("span", { id: "step-counter", class: "big num" });
  const figures = el("div", { class: "figures" });
  const badges = el("span", { class: "badges" });
  const statusSlot = el("span");
  const progressSlot = el("div", { class: "progress-slot" });
  const cancelButton = el("button", { type: "button", class: "danger", onclick: cancel }, "Cancel");
  const checkpoint = el("button", { type: "button", class: "button", onclick: saveCheckpoint }, "Checkpoint");
  const errorLine = el("p", { class: "form-error", hidden: true });
  const lossBox = el("div", { class: "chart" });
  const normBox = el("div", { class: "chart" });
  const lrBox = el("div", { class: "chart" });
  const heat = el("canvas", { id: "heatmap", class: "grid-canvas" });
  const heatTip = el("div", { class: "tip", hidden: true });
  const histCanvas = el("canvas", { id: "histogram", class: "grid-canvas" });
  const histSelect = el("select", { "aria-label": "layer for the histogram" });
  const histNote = el("span", { class: "muted small" });
  const tableHead = el("tr");
  const tableBody = el("tbody");
  const feed = el("ol", { class: "events", reversed: true });
  const feedEmpty = el("p", { class: "muted small" }, "No events yet.");

  root.replaceChildren(
    el("section", { class: "panel job-head" },
      el("div", { class: "title-row" },
        el("h2", {}, job.name), statusSlot, badges,
        el("span", { class: "spacer" }),
        el("a", { class: "button", href: `#/compare${query({ ids: [id] })}` }, "Compare…"),
        checkpoint, cancelButton),
      el("p", { class: "muted spec-line" }, describeSpec(job.spec)),
      el("div", { class: "counter-row" }, el("span", { class: "muted" }, "step "), counter, progressSlot),
      figures, errorLine,
      el("details", {}, el("summary", {}, "Spec"), el("pre", { class: "spec-json" }, JSON.stringify(job.spec, null, 2)))),
    el("div", { class: "job-grid" },
      el("section", { class: "panel" }, el("h3", {}, "Loss ", el("span", { class: "muted small" }, "training and validation")), lossBox,
        el("h3", { class: "sub" }, "Learning rate"), lrBox),
      el("section", { class: "panel" }, el("h3", {}, "Global gradient norm ",
        el("span", { class: "muted small" }, "before vs after the policies; ticks: ",
          el("span", { class: "tick clip" }), " clipped, ", el("span", { class: "tick skip" }), " skipped")), normBox),
      el("section", { class: "panel wide" }, el("h3", {}, "Per-layer gradient norm ",
        el("span", { class: "muted small" }, "layers × steps, log colour scale; click a layer for its histogram")),
      el("div", { class: "heat-wrap" }, heat, heatTip)),
      el("section", { class: "panel" }, el("h3", {}, "Gradient histogram "), el("div", { class: "hist-head" }, histSelect, histNote), histCanvas),
      el("section", { class: "panel" }, el("h3", {}, "Events"), feedEmpty, el("div", { class: "feed-wrap" }, feed)),
      el("section", { class: "panel wide table-panel" }, el("h3", {}, "Layers ", el("span", { class: "muted small", id: "table-step" })),
        el("div", { class: "table-wrap" }, el("table", { class: "layers", id: "layer-table" }, el("thead", {}, tableHead), tableBody)))),
  );

  const sync = { key: `job-${id}`, setSeries: false };
  const lossChart = lineChart(uPlot, lossBox, {
    series: [
      { label: "train", color: PALETTE[0] },
      { label: "validation", color: PALETTE[1], width: 2, spanGaps: true, points: { show: true, size: 5 } },
    ],
    yLabel: "loss", height: 220, sync,
  });
  const normChart = lineChart(uPlot, normBox, {
    series: [
      { label: "before", color: PALETTE[2] },
      { label: "after", color: PALETTE[0] },
    ],
    yLog: true, yLabel: "‖g‖", height: 370, sync,
    hooks: { ...verticalLines(() => events.filter((e) => LINE_EVENTS[e.kind]).map((e) => ({ x: e.step, color: cssVar(LINE_EVENTS[e.kind]) }))), draw: [drawPolicyTicks] },
  });
  const lrChart = lineChart(uPlot, lrBox, { series: [{ label: "lr", color: PALETTE[3] }], yLabel: "lr", height: 110, sync, legend: false });
  const charts = [lossChart, normChart, lrChart];

  function drawPolicyTicks(u) {
    const c = data.cols;
    if (!c.step.length) return;
    const dpr = devicePixelRatio || 1;
    const [i0, i1] = u.series[0].idxs ?? [0, c.step.length - 1];
    const y = u.bbox.top + u.bbox.height;
    const clipColor = cssVar("--warn");
    const skipColor = cssVar("--bad");
    const { ctx: g } = u;
    g.save();
    let last = -1;
    for (let i = i0; i <= i1 && i < c.step.length; i++) {
      const skipped = c.skipped[i] === 1;
      const clipped = c.clip[i] !== null && c.clip[i] < 1 - 1e-6;
      if (!skipped && !clipped) continue;
      const px = Math.round(u.valToPos(c.step[i], "x", true));
      if (px === last && !skipped) continue;
      last = px;
      g.fillStyle = skipped ? skipColor : clipColor;
      const h = (skipped ? 9 : 5) * dpr;
      g.fillRect(px, y - h, Math.max(1, dpr), h);
    }
    g.restore();
  }

  // ---- drawing ----
  function drawCharts() {
    const c = data.cols;
    lossChart.setData([c.step, c.loss, c.valid]);
    normChart.setData([c.step, c.gn, c.gnc]);
    lrChart.setData([c.step, c.lr]);
  }

  function drawHeat() {
    drawGrid(heat, data.grid, {
      rowLabel: (r) => data.layers[r]?.name ?? `#${r}`,
      selectedRow: data.histLayer,
      gutter: Math.min(200, Math.max(90, heat.clientWidth * 0.18)),
      empty: job.spec.monitor?.every === 0 ? "per-layer statistics are off for this job (monitor.every = 0)" : "waiting for the first step…",
    });
  }

  function histRows(grid) {
    let lo = HIST_BINS;
    let hi = -1;
    let zero = false;
    let nonfinite = false;
    for (let c = 0; c < grid.columns; c++) {
      for (let b = 1; b < HIST_BINS - 1; b++) if (grid.at(b, c) > 0) { lo = Math.min(lo, b); hi = Math.max(hi, b); }
      if (grid.at(0, c) > 0) zero = true;
      if (grid.at(HIST_BINS - 1, c) > 0) nonfinite = true;
    }
    const rows = [];
    if (nonfinite) rows.push(HIST_BINS - 1);
    for (let b = hi; b >= lo; b--) rows.push(b);
    if (zero) rows.push(0);
    return rows;
  }

  function binLabel(b) {
    if (b === 0) return "exactly 0";
    if (b === HIST_BINS - 1) return "NaN/Inf";
    const e = b - 41;
    if (b === 1) return `< 2^${e + 1}`;
    if (b === HIST_BINS - 2) return `≥ 2^${e}`;
    return `2^${e}`;
  }

  function drawHist() {
    const g = data.histGrid;
    const rows = histRows(g);
    const view = {
      rows: Math.max(1, rows.length), columns: rows.length ? g.columns : 0, bucket: g.bucket, maxStep: g.maxStep,
      at: (r, c) => {
        const f = g.at(rows[r], c);
        return f > 0 ? Math.max(-6, Math.log10(f)) : f === 0 ? -Infinity : NaN;
      },
      range: () => {
        let lo = 0;
        for (let r = 0; r < rows.length; r++) for (let c = 0; c < g.columns; c++) {
          const f = g.at(rows[r], c);
          if (f > 0) lo = Math.min(lo, Math.max(-6, Math.log10(f)));
        }
        return rows.length ? [lo, 0] : [Infinity, -Infinity];
      },
    };
    drawGrid(histCanvas, view, {
      rowLabel: (r) => binLabel(rows[r]),
      gutter: 74,
      legend: (t) => `${Number((10 ** t * 100).toPrecision(1))}%`,
      empty: job.spec.monitor?.histogram === false ? "this job records no histograms (monitor.histogram = false)" : "waiting for histograms…",
    });
    histNote.textContent = rows.length ? "share of entries per power-of-two bucket of |g|" : "";
  }

  function buildTable() {
    const cols = [["index", "#"], ["name", "layer"], ["shape", "shape"], ...STATS.map((s) => [s, STAT_LABELS[s]]), ["health", "health"]];
    tableHead.replaceChildren(...cols.map(([key, label]) => el("th", {
      class: `${key === "name" || key === "shape" || key === "health" ? "" : "num"} sortable${key === sortKey ? (sortDir > 0 ? " asc" : " desc") : ""}`,
      dataset: { key }, title: "sort", onclick: () => {
        sortDir = sortKey === key ? -sortDir : key === "index" || key === "name" ? 1 : -1;
        sortKey = key;
        buildTable();
        updateTable(true);
      },
    }, label)));
    tableBody.replaceChildren(...data.layers.map((l) => {
      const tr = el("tr", { dataset: { layer: l.index }, onclick: () => selectLayer(l.index) },
        el("td", { class: "num" }, l.index), el("td", { class: "layer-name", title: l.name }, l.name),
        el("td", { class: "muted" }, (l.shape ?? []).join("×")),
        ...STATS.map((s) => el("td", { class: `num stat-${s}` }, "–")), el("td", { class: "health" }));
      l.row = tr;
      return tr;
    }));
    histSelect.replaceChildren(...data.layers.map((l) => el("option", { value: l.index, selected: l.index === data.histLayer }, `${l.index}: ${l.name}`)));
  }

  function updateTable(force = false) {
    const now = performance.now();
    if (!force && now - lastTable < TABLE_MS) {
      if (!tableTimer) tableTimer = setTimeout(() => { tableTimer = 0; frames.request("table", () => updateTable()); }, TABLE_MS);
      return;
    }
    lastTable = now;
    const latest = data.latest;
    if (!latest || !data.layers.length) return;
    const s = latest.stats;
    document.getElementById("table-step").textContent = `statistics of step ${latest.step}`;
    const maxNorm = Math.max(0, ...(s.grad_norm ?? []).filter((v) => v !== null));
    const issues = job.diagnosis?.issues ?? [];
    const keyOf = (l) => {
      if (sortKey === "index") return l.index;
      if (sortKey === "name") return l.name;
      if (sortKey === "shape") return l.numel ?? 0;
      if (sortKey === "health") return l.flags?.some((f) => f.level === "bad") ? 3 : l.flags?.some((f) => f.level === "warn") ? 2 : l.flags?.[0]?.level === "info" ? 1 : 0;
      const v = s[sortKey]?.[l.index];
      return v === null || v === undefined ? -Infinity : v;
    };
    const redundant = new Set(events.filter((e) => e.kind === "redundant").map((e) => e.layer));
    for (const l of data.layers) {
      if (!l.row) continue;
      const cells = l.row.children;
      STATS.forEach((name, k) => {
        const v = s[name]?.[l.index];
        const text = name === "zero_frac" ? pct(v) : name === "nonfinite" ? (v === null || v === undefined ? "–" : String(v)) : num(v, 3);
        const cell = cells[3 + k];
        if (cell.textContent !== text) cell.textContent = text;
      });
      l.flags = health(l.index, s, maxNorm, job.spec.monitor, issues, redundant);
      const flagsText = l.flags.map((f) => f.text).join(" ");
      const hcell = cells[3 + STATS.length];
      if (hcell.dataset.flags !== flagsText) {
        hcell.dataset.flags = flagsText;
        hcell.replaceChildren(...l.flags.map((f) => el("span", { class: `flag ${f.level}`, title: f.title }, f.text)));
      }
      l.row.classList.toggle("selected", l.index === data.histLayer);
    }
    const order = [...data.layers].sort((a, b) => {
      const ka = keyOf(a);
      const kb = keyOf(b);
      return (ka < kb ? -1 : ka > kb ? 1 : a.index - b.index) * sortDir;
    });
    const current = [...tableBody.children];
    if (order.some((l, i) => current[i] !== l.row)) tableBody.append(...order.map((l) => l.row));
  }

  function updateCounter() {
    counter.textContent = `${data.lastStep || job.step} / ${job.total_steps}`;
  }

  const updateFigures = throttled(() => {
    statusSlot.replaceChildren(statusBadge(job.status));
    badges.replaceChildren(...diagnosisBadges(job));
    progressSlot.replaceChildren(progressBar({ ...job, step: Math.max(job.step, data.lastStep) }));
    cancelButton.hidden = isFinished(job);
    checkpoint.hidden = job.step === 0 && data.lastStep === 0;
    errorLine.hidden = !job.error;
    errorLine.textContent = job.error ?? "";
    const c = data.cols;
    const n = c.step.length;
    const last = (arr) => {
      for (let i = arr.length - 1; i >= Math.max(0, arr.length - 50); i--) if (arr[i] !== null) return arr[i];
      return null;
    };
    let rate = null;
    if (arrivals.length > 1 && !isFinished(job)) {
      const [t0, s0] = arrivals[0];
      const [t1, s1] = arrivals[arrivals.length - 1];
      if (t1 > t0) rate = ((s1 - s0) * 1000) / (t1 - t0);
    }
    const elapsed = job.started_at ? (job.finished_at ? new Date(job.finished_at) : new Date()) - new Date(job.started_at) : null;
    const ev = data.evals;
    const fig = [
      ["loss", num(last(c.loss))],
      ["validation", ev.loss.length ? num(ev.loss[ev.loss.length - 1]) : "–"],
      [ev.metric ?? "metric", ev.value.length && ev.value[ev.value.length - 1] !== null ? num(ev.value[ev.value.length - 1], 3) : "–"],
      ["‖g‖ before", num(last(c.gn), 3)],
      ["‖g‖ after", num(last(c.gnc), 3)],
      ["lr", num(last(c.lr), 3)],
      ["clipped", n ? pct(data.clippedSteps / n) : "–"],
      ["skipped", String(data.skippedSteps)],
      ["steps/s", rate === null ? "–" : num(rate, 3)],
      ["elapsed", elapsed === null ? "–" : duration(elapsed)],
      ["device", job.device ?? job.spec.device],
    ];
    figures.replaceChildren(...fig.map(([k, v]) => el("div", { class: "figure" }, el("span", {}, k), el("b", { class: "num" }, v))));
  }, 300);

  function redraw() {
    frames.request(`charts-${id}`, drawCharts);
    frames.request(`heat-${id}`, drawHeat);
    frames.request(`hist-${id}`, drawHist);
    frames.request(`counter-${id}`, updateCounter);
    frames.request(`head-${id}`, updateFigures);
    frames.request("table", () => updateTable());
  }

  function addEvent(e) {
    events.push(e);
    feedEmpty.hidden = true;
    const layer = e.layer !== null && e.layer !== undefined ? data.layers[e.layer]?.name ?? `#${e.layer}` : null;
    feed.prepend(el("li", { class: `event kind-${e.kind}` },
      el("span", { class: "num muted" }, `step ${e.step}`), " ",
      el("span", { class: `badge issue-${e.kind}` }, e.kind), " ",
      layer && !e.message.startsWith(layer) ? [el("code", {}, layer), " "] : null, e.message));
    while (feed.children.length > 300) feed.lastChild.remove();
  }

  // ---- data in ----
  function setLayers(layers) {
    data.setLayers(layers);
    if (data.histLayer === null || data.histLayer >= layers.length) {
      const firstMatrix = layers.find((l) => (l.shape ?? []).length >= 2);
      data.selectHistLayer(firstMatrix ? firstMatrix.index : 0);
    }
    heat.style.height = `${Math.min(460, Math.max(150, layers.length * 16 + 24))}px`;
    buildTable();
  }

  async function ensureLayerNames(count) {
    if (data.layers.length) return;
    setLayers(Array.from({ length: count }, (_, i) => ({ index: i, name: `#${i}`, shape: [] })));
    const { layers } = await get(`/jobs/${id}/layers`);
    if (layers.length === count) {
      data.layers.forEach((l, i) => Object.assign(l, layers[i]));
      buildTable();
      updateTable(true);
    }
  }

  function handle(m) {
    switch (m.type) {
      case "hello":
        job = { ...job, ...m.job };
        if (m.layers?.length && !data.layers.length) setLayers(m.layers);
        break;
      case "step": {
        if (gap && gap.to === null) gap.to = m.step - 1;
        data.addStep(m.step, m.loss, m.grad_norm, m.grad_norm_clipped, m.clip_coef, m.lr, m.skipped);
        if (m.layers) {
          if (!data.layers.length && m.layers.grad_norm) ensureLayerNames(m.layers.grad_norm.length).catch(ctx.offline);
          data.addLayerStats(m.step, m.layers);
        }
        const now = performance.now();
        arrivals.push([now, m.step]);
        while (arrivals.length > 2 && now - arrivals[0][0] > 3000) arrivals.shift();
        if (m.step > job.step) job.step = m.step;
        if (job.status === "queued") job.status = "running";
        break;
      }
      case "event":
        // Validation passes arrive live as events; their metric follows by REST.
        if (m.kind === "validation") data.addEvals({ step: [m.step], loss: [m.value], value: [null] });
        addEvent(m);
        break;
      case "lagged":
        gap = { from: data.lastStep + 1, to: null };
        setTimeout(fillGap, 1500);
        break;
      case "status":
        job.status = m.status;
        job.error = m.error ?? job.error;
        finish();
        break;
      default:
        break;
    }
    redraw();
  }

  /** Fetches from the REST API the steps a lagging socket skipped. */
  async function fillGap() {
    if (!gap || gap.to === null || gap.to < gap.from) {
      if (gap && gap.to === null) setTimeout(fillGap, 1000);
      else gap = null;
      return;
    }
    const { from, to } = gap;
    gap = null;
    const range = { from, to, max_points: Math.min(100000, Math.max(10, to - from + 1)) };
    const [steps, stats] = await Promise.all([
      get(`/jobs/${id}/steps${query(range)}`),
      get(`/jobs/${id}/layer-stats${query({ ...range, stat: "grad_norm" })}`),
    ]);
    applySteps(steps);
    applyHeat(stats);
    redraw();
  }

  function applySteps(s) {
    for (let i = 0; i < s.step.length; i++) {
      data.addStep(s.step[i], s.loss[i], s.grad_norm[i], s.grad_norm_clipped[i], s.clip_coef[i], s.lr[i], s.skipped[i]);
    }
    data.addEvals(s.eval);
  }

  function applyHeat(stats) {
    for (const series of stats.layers) {
      const gn = series.grad_norm ?? [];
      for (let k = 0; k < series.step.length; k++) if (gn[k] > 0) data.grid.set(series.index, series.step[k], Math.log10(gn[k]));
    }
  }

  async function loadHist(layer) {
    data.selectHistLayer(layer);
    if (job.spec.monitor?.histogram === false || job.step === 0) return;
    const res = await get(`/jobs/${id}/layer-stats${query({ layers: layer, stat: "hist", max_points: HIST_POINTS })}`);
    const series = res.layers[0];
    if (data.histLayer !== layer || !series) return;
    series.hist?.forEach((h, k) => h && data.addHist(series.step[k], h));
  }

  function selectLayer(layer) {
    histSelect.value = String(layer);
    loadHist(layer).then(redraw, ctx.offline);
    updateTable(true);
    redraw();
  }
  histSelect.addEventListener("change", () => selectLayer(Number(histSelect.value)));

  heat.addEventListener("mousemove", (e) => {
    const cell = cellAt(heat, e);
    if (!cell) { heatTip.hidden = true; return; }
    const layer = data.layers[cell.row];
    const v = cell.col === null ? NaN : data.grid.at(cell.row, cell.col);
    heatTip.hidden = false;
    heatTip.textContent = cell.col === null ? layer?.name ?? "" :
      `${layer?.name ?? `#${cell.row}`} · steps ${cell.from}–${cell.to} · max ‖g‖ ${Number.isNaN(v) ? "–" : num(10 ** v, 3)}`;
    const rect = heat.getBoundingClientRect();
    heatTip.style.left = `${Math.min(rect.width - 260, e.clientX - rect.left + 12)}px`;
    heatTip.style.top = `${e.clientY - rect.top + 12}px`;
  });
  heat.addEventListener("mouseleave", () => { heatTip.hidden = true; });
  heat.addEventListener("click", (e) => {
    const cell = cellAt(heat, e);
    if (cell && data.layers[cell.row]) selectLayer(cell.row);
  });
  const resize = new ResizeObserver(() => { frames.request(`heat-${id}`, drawHeat); frames.request(`hist-${id}`, drawHist); });
  resize.observe(heat);
  resize.observe(histCanvas);

  async function saveCheckpoint() {
    checkpoint.disabled = true;
    try {
      await downloadCheckpoint(id, `${job.name}.safetensors`);
    } catch (err) {
      ctx.toast(`Could not download the checkpoint: ${err.message}`);
    } finally {
      checkpoint.disabled = false;
    }
  }

  async function cancel() {
    cancelButton.disabled = true;
    try {
      job = await post(`/jobs/${id}/cancel`);
    } catch (err) {
      ctx.toast(`Could not cancel: ${err.message}`);
    } finally {
      cancelButton.disabled = false;
      redraw();
    }
  }

  async function poll() {
    pollTimer = 0;
    if (closed) return;
    try {
      const fresh = await get(`/jobs/${id}`);
      job = { ...fresh, step: Math.max(fresh.step, data.lastStep) };
      if ((job.spec.task.eval_every ?? 0) > 0 && job.step > data.lastEvalStep) {
        const s = await get(`/jobs/${id}/steps${query({ from: data.lastEvalStep + 1, max_points: 10 })}`);
        data.addEvals(s.eval);
      }
      redraw();
    } catch (err) {
      ctx.offline(err);
    }
    if (!closed && !isFinished(job)) pollTimer = setTimeout(poll, POLL_MS);
  }

  let finishing = false;
  async function finish() {
    if (finishing) return;
    finishing = true;
    clearTimeout(pollTimer);
    // The store writes in batches: read the final record once it has landed.
    const fresh = await get(`/jobs/${id}`);
    job = fresh;
    const s = await get(`/jobs/${id}/steps${query({ from: data.lastEvalStep + 1, max_points: 10 })}`);
    data.addEvals(s.eval);
    if (data.lastStep < job.step) applySteps(await get(`/jobs/${id}/steps${query({ from: data.lastStep + 1, max_points: HISTORY_POINTS })}`));
    redraw();
  }

  function connect() {
    socket = new WebSocket(streamUrl(id));
    socket.onmessage = (e) => {
      const m = JSON.parse(e.data);
      if (buffering) buffer.push(m);
      else handle(m);
    };
    socket.onclose = () => {
      if (closed || isFinished(job)) return;
      // Dropped while the job runs: reconnect; the backlog and a REST read fill the gap.
      setTimeout(() => {
        if (closed) return;
        gap = { from: data.lastStep + 1, to: null };
        connect();
        setTimeout(fillGap, 1500);
      }, 1000);
    };
  }

  // ---- start: open the stream (buffered), read the history, then go live ----
  connect();
  const every = job.spec.monitor?.every ?? 1;
  const [layers, steps, heatStats, latestStats, evs] = await Promise.all([
    get(`/jobs/${id}/layers`),
    get(`/jobs/${id}/steps${query({ max_points: HISTORY_POINTS })}`),
    get(`/jobs/${id}/layer-stats${query({ stat: "grad_norm", max_points: Math.min(HEATMAP_POINTS, Math.max(10, job.step)) })}`),
    job.step > 0 && every > 0
      ? get(`/jobs/${id}/layer-stats${query({ from: Math.max(1, job.step - 4 * every), stat: STATS.join(","), max_points: 10 })}`)
      : Promise.resolve({ layers: [] }),
    get(`/jobs/${id}/events`),
  ]);
  if (layers.layers.length) setLayers(layers.layers);
  applySteps(steps);
  applyHeat(heatStats);
  if (latestStats.layers.length) {
    const stats = {};
    let step = 0;
    for (const name of STATS) stats[name] = latestStats.layers.map((l) => l[name]?.[l[name].length - 1] ?? null);
    for (const l of latestStats.layers) step = Math.max(step, l.step[l.step.length - 1] ?? 0);
    data.addLayerStats(step, stats);
  }
  if (data.histLayer !== null) await loadHist(data.histLayer);
  evs.events.forEach(addEvent);
  buffering = false;
  for (const m of buffer.splice(0)) handle(m);
  redraw();
  if (!isFinished(job)) pollTimer = setTimeout(poll, POLL_MS);

  return () => {
    closed = true;
    clearTimeout(pollTimer);
    clearTimeout(tableTimer);
    socket?.close();
    resize.disconnect();
    charts.forEach((c) => c.destroy());
  };
}
