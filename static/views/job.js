// @ts-check
// One job, live: the head (status, the server's diagnosis, progress, figures), then the
// step charts, the per-layer heatmap, the selected layer's histogram, the events and the
// layer table. The data comes from a `JobFeed`; each panel is a component drawing from it.

import { del, downloadCheckpoint, get, isFinished, post, query } from "../api.js";
import { optionsBar, readOptions } from "../chart-options.js";
import { frames, loadUPlot, throttled } from "../charts.js";
import { layerHeatmap } from "../components/layer-heatmap.js";
import { eventList } from "../components/events.js";
import { histogram } from "../components/histogram.js";
import { layerTable } from "../components/layer-table.js";
import { LayerGroups } from "../layer-groups.js";
import { lossCharts } from "../components/loss-charts.js";
import { spectralChart } from "../components/spectral-chart.js";
import { timeHeatmap } from "../components/time-heatmap.js";
import { signalHeatmap } from "../components/signal-heatmap.js";
import { JobFeed } from "../feed.js";
import { confirmAction, describeSpec, diagnosisBadges, duration, el, figures, num, pct, progressBar, setTitle, statusBadge } from "../widgets.js";

/** @typedef {import("../types.js").Job} Job */

/** The statuses a job resumes from (its last checkpoint). */
const RESUMABLE = new Set(["interrupted", "cancelled", "failed"]);

/** The last non-null value among the last 50 of `arr`. @param {(number | null)[]} arr */
function last(arr) {
  for (let i = arr.length - 1; i >= Math.max(0, arr.length - 50); i--) if (arr[i] !== null) return arr[i];
  return null;
}

/**
 * @param {HTMLElement} root
 * @param {import("../types.js").ViewContext} ctx
 * @param {string} id
 * @returns {Promise<import("../types.js").Teardown>}
 */
export async function jobView(root, ctx, id) {
  const uPlot = await loadUPlot();
  const feed = new JobFeed(id);
  feed.on("error", ctx.offline);
  await feed.start().catch((err) => {
    feed.close();
    throw err;
  });
  const { data } = feed;
  const job = () => feed.job;

  // ---- layout ----
  const counter = el("span", { id: "step-counter", class: "big num" });
  const figureRow = el("div", { class: "figures" });
  const badges = el("span", { class: "badges" });
  const statusSlot = el("span");
  const progressSlot = el("div", { class: "progress-slot" });
  // The server's diagnosis in full: every issue in force, with its message.
  const issueList = el("ul", { class: "diagnosis", id: "diagnosis" });
  const issueSummary = el("summary");
  const diagnosisBox = el("details", { class: "diagnosis-box", hidden: true }, issueSummary, issueList);
  const cancelButton = el("button", { type: "button", class: "danger", id: "cancel-job", onclick: cancel }, "Cancel");
  // Run actions: resume an interrupted (or cancelled or failed) run from its checkpoint,
  // clone it into the form to edit, delete a finished one.
  const resumeButton = el("button", { type: "button", id: "resume-job", hidden: true, onclick: resume,
    title: "continue from its last checkpoint: the same step count, optimizer state and loss curve" }, "Resume");
  const cloneLink = el("a", { class: "button", id: "clone-job", href: `#/${query({ clone: id })}`, title: "a new job from this one's spec, in the form to edit" }, "Clone and edit");
  const deleteButton = el("button", { type: "button", class: "danger", id: "delete-job", hidden: true, onclick: remove }, "Delete");
  const checkpoint = el("button", { type: "button", class: "button", onclick: saveCheckpoint }, "Checkpoint");
  const errorLine = el("p", { class: "form-error", hidden: true });
  const lossBox = el("div", { class: "chart", id: "loss-chart" });
  const normBox = el("div", { class: "chart" });
  const lrBox = el("div", { class: "chart", id: "lr-chart" });
  // fp16's loss scale: shown for jobs that scale their loss.
  const scaleBox = el("div", { class: "chart", id: "loss-scale-chart" });
  const scaleTitle = el("h3", { class: "sub" }, "Loss scale ", el("span", { class: "muted small" }, "fp16 dynamic loss scaling; overflows in the events"));
  const scaled = job().spec.precision === "fp16" && job().spec.loss_scale?.enabled !== false;
  scaleBox.hidden = scaleTitle.hidden = !scaled;
  const heatBox = el("div");
  const histBox = el("div");
  const eventsBox = el("div");
  const spectralBox = el("div", { id: "spectral" });
  const timeBox = el("div");
  const signalBox = el("div");
  const tableBox = el("section", { class: "panel wide table-panel", dataset: { perLayer: "" } });
  // With the per-layer statistics off, their panels are left out and this says why.
  const layersOff = el("p", { class: "panel wide muted", id: "per-layer-off", hidden: true },
    "Per-layer statistics are off for this job (monitor.every = 0): no heatmap, histogram, forward signal or layer table.");
  // The step scrubber: the layer table, the histogram and the heatmap's cursor show the
  // chosen step's per-layer statistics (read from the REST API); "live" follows the latest.
  const scrubber = /** @type {HTMLInputElement} */ (el("input", {
    type: "range", id: "step-scrubber", min: 1, max: 1, step: 1, value: 1,
    "aria-label": "step the layer table, the histogram and the heatmap show",
    oninput: () => { scrubNote.textContent = `step ${scrubber.value}`; },
    onchange: () => pin(Number(scrubber.value)),
  }));
  const scrubNote = el("span", { class: "num", id: "scrub-note" }, "live");
  const liveButton = el("button", { type: "button", id: "scrub-live", onclick: follow, "aria-pressed": "true" }, "live");
  const scrubBar = el("div", { class: "panel wide scrubber" },
    el("label", { for: "step-scrubber" }, "Per-layer views at "), scrubber, scrubNote, liveButton);
  // How the loss and norm charts (and the heatmap's colour scale) read; the bar changes it.
  const options = readOptions();

  root.replaceChildren(
    el("section", { class: "panel job-head" },
      el("div", { class: "title-row" },
        el("h2", {}, job().name), statusSlot, badges,
        el("span", { class: "spacer" }),
        el("a", { class: "button", href: `#/compare${query({ ids: [id] })}` }, "Compare…"),
        checkpoint, cloneLink, resumeButton, cancelButton, deleteButton),
      el("p", { class: "muted spec-line" }, describeSpec(job().spec)),
      el("div", { class: "counter-row" }, el("span", { class: "muted" }, "step "), counter, progressSlot),
      figureRow, diagnosisBox, errorLine,
      el("details", {}, el("summary", {}, "Spec"), el("pre", { class: "spec-json" }, JSON.stringify(job().spec, null, 2)))),
    el("div", { class: "job-grid" },
      el("div", { class: "wide" }, optionsBar(options, () => {
        charts.update();
        frames.request(`heat-${id}`, heat.draw);
      })),
      el("section", { class: "panel" }, el("h3", {}, "Loss ", el("span", { class: "muted small" }, "training and validation")), lossBox,
        el("h3", { class: "sub" }, "Learning rate"), lrBox, scaleTitle, scaleBox),
      el("section", { class: "panel" }, el("h3", {}, "Global gradient norm ",
        el("span", { class: "muted small" }, "before vs after the policies; ticks: ",
          el("span", { class: "tick clip" }), " clipped, ", el("span", { class: "tick skip" }), " skipped")), normBox),
      scrubBar, layersOff,
      el("section", { class: "panel wide", dataset: { perLayer: "" } }, el("h3", {}, "Per-layer gradient norm ",
        el("span", { class: "muted small" }, "layers × steps, log colour scale; click a layer for its histogram (or Tab to the heatmap, move with the arrow keys, Enter)")), heatBox),
      el("section", { class: "panel wide" }, el("h3", {}, "Gradient through time ",
        el("span", { class: "muted small" }, "‖∂L/∂x_t‖ at each input position (0 at the top) × steps, log colour scale: dark early positions are a vanishing gradient")), timeBox),
      el("section", { class: "panel wide", dataset: { perLayer: "" } }, el("h3", {}, "Forward signal ",
        el("span", { class: "muted small" }, "RMS of each block's output (input side at the top) × steps, log colour scale: growing or fading activations through depth")), signalBox),
      el("section", { class: "panel", dataset: { perLayer: "" } }, el("h3", {}, "Gradient histogram "), histBox),
      el("section", { class: "panel" }, el("h3", {}, "Events"), eventsBox),
      el("section", { class: "panel" }, el("h3", {}, "Spectral radius ",
        el("span", { class: "muted small" }, "largest singular value of each recurrent (per gate) or square weight; dashed: 1.0")), spectralBox),
      tableBox),
  );

  const monitor = () => job().spec.monitor ?? {};
  if (monitor().every === 0) {
    for (const panel of [scrubBar, ...root.querySelectorAll("[data-per-layer]")]) /** @type {HTMLElement} */ (panel).hidden = true;
    layersOff.hidden = false;
  }
  const charts = lossCharts(uPlot, { loss: lossBox, norm: normBox, lr: lrBox, scale: scaled ? scaleBox : null }, data, { events: feed.events, syncKey: `job-${id}`, options });
  // Layers by block, shared by the heatmap and the table: a block collapses in both.
  const groups = new LayerGroups(data.layers);
  const heat = layerHeatmap(heatBox, data, {
    outliers: () => options.outliers,
    onSelect: selectLayer,
    onToggle: toggleBlock,
    groups,
    empty: () => (monitor().every === 0 ? "per-layer statistics are off for this job (monitor.every = 0)" : "waiting for the first step…"),
  });
  const hist = histogram(histBox, data, {
    edges: () => feed.edges,
    onSelect: selectLayer,
    empty: () => (monitor().histogram === false ? "this job records no histograms (monitor.histogram = false)" : "waiting for histograms…"),
  });
  // The forward signal's RMS beside the gradient statistics: each layer shows its block's.
  const columns = () => (feed.blocks.length ? [...feed.statistics, "signal_rms"] : feed.statistics);
  const table = layerTable(tableBox, data, { statistics: columns, onSelect: selectLayer, onToggle: toggleBlock, groups });
  const events = eventList(eventsBox, { layers: () => data.layers, onStep: (step) => {
    scrubber.value = String(step);
    pin(step);
  } });
  const signal = signalHeatmap(signalBox, feed, {
    empty: () => (monitor().every === 0 ? "recorded with the per-layer statistics, which are off for this job (monitor.every = 0)"
      : feed.blocks.length ? "waiting for the first recorded step…" : "a user's module has no known blocks"),
  });
  const time = timeHeatmap(timeBox, feed, {
    empty: () => (monitor().time_every === 0
      ? "the temporal gradient profile is off for this job (monitor.time_every = 0)"
      : job().spec.model.kind === "mlp" ? "an MLP's input is no sequence: no temporal profile" : "waiting for the first profile…"),
  });
  const spectral = spectralChart(uPlot, spectralBox, feed, {
    empty: () => (monitor().spectral_every === 0
      ? "the spectral radius is off for this job (monitor.spectral_every = 0)"
      : feed.matrices.length ? "waiting for the first measurement…" : "this model has no recurrent or square hidden weight"),
  });
  for (const e of feed.events) events.add(e);

  function setLayers() {
    groups.setLayers(data.layers);
    heat.setLayers();
    hist.setLayers(data.layers);
    table.build();
  }
  setLayers();

  // ---- drawing ----
  /** The step the head shows: the latest the page holds or the job record states. */
  const stepNow = () => Math.max(job().step, data.lastStep);
  let progressShown = "";
  /** The counter and the progress bar, always together, so that they show the same step. */
  function updateProgress() {
    const j = job();
    const step = stepNow();
    const key = `${step}/${j.total_steps}/${j.status}`;
    if (key === progressShown) return;
    progressShown = key;
    counter.textContent = `${step} / ${j.total_steps}`;
    scrubber.max = String(Math.max(1, step));
    if (pinnedAt === null) scrubber.value = scrubber.max;
    progressSlot.replaceChildren(progressBar({ ...j, step }));
  }

  // Set when the page is left: a throttled or frame-scheduled update still pending then
  // must not retitle the next page.
  let left = false;
  const updateHead = throttled(() => {
    if (left) return;
    const j = job();
    setTitle(`${j.name} (${j.status})`);
    statusSlot.replaceChildren(statusBadge(j.status));
    badges.replaceChildren(...diagnosisBadges(j));
    const issues = j.diagnosis?.issues ?? [];
    issueSummary.textContent = `Diagnosis: ${issues.length} issue${issues.length === 1 ? "" : "s"} in force`;
    diagnosisBox.hidden = !issues.length;
    issueList.replaceChildren(...issues.map((issue) => {
      const layer = issue.layer !== undefined && issue.layer !== null ? data.layers[issue.layer]?.name ?? `#${issue.layer}` : null;
      return el("li", { dataset: { kind: issue.kind } },
        el("span", { class: `badge issue-${issue.kind}` }, issue.kind), " ",
        layer && !issue.message.startsWith(layer) ? [el("code", {}, layer), " "] : null,
        issue.message, el("span", { class: "muted small" }, ` since step ${issue.since}`));
    }));
    cancelButton.hidden = isFinished(j);
    deleteButton.hidden = !isFinished(j);
    resumeButton.hidden = !RESUMABLE.has(j.status);
    checkpoint.hidden = stepNow() === 0;
    errorLine.hidden = !j.error;
    errorLine.textContent = j.error ?? "";
    const c = data.cols;
    const n = c.step.length;
    const rate = feed.rate();
    const elapsed = j.started_at ? (j.finished_at ? Date.parse(j.finished_at) : Date.now()) - Date.parse(j.started_at) : null;
    const ev = data.evals;
    const validation = ev.loss.length ? ev.loss[ev.loss.length - 1] : null;
    const metric = data.lastMetric;
    const lossNow = last(c.loss);
    const gn = last(c.gn);
    const gnc = last(c.gnc);
    const lr = c.lr.length ? c.lr[c.lr.length - 1] : null;
    figureRow.replaceChildren(...figures([
      { key: "loss", label: "loss", text: num(lossNow), value: lossNow },
      { key: "validation", label: "validation", text: num(validation), value: validation },
      { key: "metric", label: ev.metric ?? "metric", text: num(metric, 3), value: metric },
      { key: "grad-norm", label: "‖g‖ before", text: num(gn, 3), value: gn },
      { key: "grad-norm-after", label: "‖g‖ after", text: num(gnc, 3), value: gnc },
      { key: "lr", label: "lr", text: num(lr, 3), value: lr },
      { key: "clipped", label: "clipped", text: n ? pct(data.clippedSteps / n) : "–", value: n ? data.clippedSteps / n : null },
      { key: "skipped", label: "skipped", text: String(data.skippedSteps), value: data.skippedSteps },
      { key: "rate", label: "steps/s", text: num(rate, 3), value: rate },
      { key: "elapsed", label: "elapsed", text: elapsed === null ? "–" : duration(elapsed) },
      { key: "device", label: "device", text: j.device ?? j.spec.device },
    ]));
  }, 300);

  function redraw() {
    frames.request(`charts-${id}`, charts.draw);
    frames.request(`heat-${id}`, heat.draw);
    frames.request(`hist-${id}`, hist.draw);
    frames.request(`spectral-${id}`, spectral.draw);
    frames.request(`time-${id}`, time.draw);
    frames.request(`signal-${id}`, signal.draw);
    frames.request(`counter-${id}`, updateProgress);
    frames.request(`head-${id}`, updateHead);
    frames.request(`table-${id}`, () => table.update({ diagnosis: job().diagnosis, events: feed.events }));
  }

  function toggleBlock(/** @type {string} */ block) {
    groups.toggle(block);
    heat.setLayers();
    table.update({ diagnosis: job().diagnosis, events: feed.events }, true);
    frames.request(`heat-${id}`, heat.draw);
  }

  function selectLayer(/** @type {number} */ layer) {
    hist.select(layer);
    feed.selectHistLayer(layer).catch(ctx.offline);
    table.update({ diagnosis: job().diagnosis, events: feed.events }, true);
    redraw();
  }

  feed.on("layers", setLayers);
  feed.on("data", redraw);
  feed.on("job", redraw);
  feed.on("event", (e) => events.add(e));
  const resize = new ResizeObserver(() => {
    frames.request(`heat-${id}`, heat.draw);
    frames.request(`hist-${id}`, hist.draw);
    frames.request(`time-${id}`, time.draw);
    frames.request(`signal-${id}`, signal.draw);
  });
  resize.observe(heat.canvas);
  resize.observe(signal.canvas);
  resize.observe(time.canvas);
  resize.observe(hist.canvas);
  redraw();

  /** The step the user chose (null: live); its statistics are in `data.pinned` once read. @type {number | null} */
  let pinnedAt = null;

  /**
   * Shows the per-layer statistics of `step`: those of the last recorded step at or
   * before it (statistics are recorded every `monitor.every` steps).
   */
  async function pin(/** @type {number} */ step) {
    pinnedAt = step;
    liveButton.setAttribute("aria-pressed", "false");
    scrubNote.textContent = `step ${step}`;
    const every = monitor().every ?? 1;
    const stats = feed.statistics;
    /** @type {import("../types.js").LayerStats} */
    const shown = {};
    let at = step;
    try {
      if (every > 0 && stats.length) {
        const range = { from: Math.max(1, step - 4 * every), to: step };
        /** @type {[{layers: import("../types.js").LayerSeries[]}, import("../types.js").SignalResponse | null]} */
        const [res, signal] = await Promise.all([
          get(`/jobs/${id}/layer-stats${query({ ...range, stat: stats, max_points: 10 })}`),
          feed.blocks.length ? get(`/jobs/${id}/signal${query({ ...range, max_points: 10 })}`) : Promise.resolve(null),
        ]);
        if (pinnedAt !== step) return;
        at = Math.max(0, ...res.layers.map((l) => l.step[l.step.length - 1] ?? 0));
        for (const name of stats) {
          shown[name] = res.layers.map((l) => (l.step[l.step.length - 1] === at ? l[name]?.[l[name].length - 1] ?? null : null));
        }
        const k = signal ? signal.step.lastIndexOf(at) : -1;
        if (signal && k >= 0) shown.signal_rms = data.layers.map((l) => signal.rms[feed.blockOf(l.name)]?.[k] ?? null);
      }
    } catch (err) {
      ctx.offline(err);
      return;
    }
    data.pinned = { step: at, stats: shown };
    scrubNote.textContent = at === step ? `step ${step}` : `step ${step} (statistics of step ${at})`;
    table.update({ diagnosis: job().diagnosis, events: feed.events }, true);
    redraw();
  }

  /** Back to the latest step. */
  function follow() {
    pinnedAt = null;
    data.pinned = null;
    liveButton.setAttribute("aria-pressed", "true");
    scrubNote.textContent = "live";
    scrubber.value = scrubber.max;
    table.update({ diagnosis: job().diagnosis, events: feed.events }, true);
    redraw();
  }

  async function saveCheckpoint() {
    checkpoint.disabled = true;
    try {
      await downloadCheckpoint(id, `${job().name}.safetensors`);
    } catch (err) {
      ctx.toast(`Could not download the checkpoint: ${err instanceof Error ? err.message : err}`);
    } finally {
      checkpoint.disabled = false;
    }
  }

  async function cancel() {
    if (!(await confirmAction(`Cancel ${job().name}? It stops before its next step; a cancelled run can resume from its checkpoint.`, "Cancel the run", "Keep running"))) return;
    cancelButton.disabled = true;
    try {
      /** @type {Job} */
      const cancelled = await post(`/jobs/${id}/cancel`);
      feed.job = { ...cancelled, step: Math.max(cancelled.step, data.lastStep) };
    } catch (err) {
      ctx.toast(`Could not cancel: ${err instanceof Error ? err.message : err}`);
    } finally {
      cancelButton.disabled = false;
      redraw();
    }
  }

  async function resume() {
    resumeButton.disabled = true;
    try {
      await post(`/jobs/${id}/resume`);
      // A new run of the job: the page follows it from the start.
      ctx.reload();
    } catch (err) {
      ctx.toast(`Could not resume: ${err instanceof Error ? err.message : err}`);
      resumeButton.disabled = false;
    }
  }

  async function remove() {
    if (!(await confirmAction(`Delete ${job().name} with everything it recorded (its steps, statistics, events and checkpoint)? This cannot be undone.`, "Delete the job"))) return;
    deleteButton.disabled = true;
    try {
      await del(`/jobs/${id}`);
      ctx.toast(`Deleted ${job().name}.`);
      location.hash = "#/";
    } catch (err) {
      ctx.toast(`Could not delete: ${err instanceof Error ? err.message : err}`);
      deleteButton.disabled = false;
    }
  }

  return () => {
    left = true;
    feed.close();
    table.destroy();
    resize.disconnect();
    charts.destroy();
    spectral.destroy();
  };
}
