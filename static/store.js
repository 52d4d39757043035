// @ts-check
// A job's recorded history in the browser: per-step scalars as columns ready for uPlot,
// validation passes, the latest per-layer statistics, the heatmap grid and the selected
// layer's histogram grid. Every step that arrives is kept; only drawing is thinned.
// The statistic names and the histogram's buckets are the server's (its `hello`).

import { positive } from "./charts.js";
import { StepGrid } from "./heatmap.js";

/** @typedef {import("./types.js").Layer} Layer */
/** @typedef {import("./types.js").LayerStats} LayerStats */
/** @typedef {import("./types.js").EvalColumns} EvalColumns */
/** @typedef {import("./types.js").StepsResponse} StepsResponse */
/** @typedef {Layer & {row?: HTMLTableRowElement}} LayerRow */

/** Index of the first element of sorted `xs` that is ≥ v. */
export function lowerBound(/** @type {number[]} */ xs, /** @type {number} */ v) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Whether a step's clip coefficient says the gradient policies scaled it down (the
 * server records 1 when they left it alone).
 */
export const isClipped = (/** @type {number | null} */ coef) => coef !== null && coef < 1 - 1e-6;

/**
 * Per-step columns, aligned on `step`.
 * @typedef {object} Columns
 * @property {number[]} step
 * @property {(number | null)[]} loss
 * @property {(number | null)[]} valid Validation loss at the nearest recorded step.
 * @property {(number | null)[]} gn Global gradient norm before the policies.
 * @property {(number | null)[]} gnc ... and after.
 * @property {number[]} lr
 * @property {(number | null)[]} clip
 * @property {number[]} skipped 1 for a skipped step.
 * @property {(number | null)[]} scale fp16's loss scale (null without loss scaling).
 */

export class JobData {
  constructor(/** @type {Layer[]} */ layers = []) {
    /** @type {Columns} */
    this.cols = { step: [], loss: [], valid: [], gn: [], gnc: [], lr: [], clip: [], skipped: [], scale: [] };
    /** @type {{step: number[], loss: (number | null)[], value: (number | null)[], metric: string | null}} */
    this.evals = { step: [], loss: [], value: [], metric: null };
    /** @type {[number, number | null][]} validation losses beyond the last recorded step */
    this.pendingEvals = [];
    this.clippedSteps = 0;
    this.skippedSteps = 0;
    /** @type {{step: number, stats: LayerStats} | null} */
    this.latest = null;
    /** A step the user chose to look at (the scrubber), with its statistics; null: follow the latest. @type {{step: number, stats: LayerStats} | null} */
    this.pinned = null;
    /** @type {LayerRow[]} */
    this.layers = [];
    this.grid = new StepGrid(1);
    this.setLayers(layers);
    /** @type {number | null} */
    this.histLayer = null;
    /** Buckets of a histogram: exact zeros, one per edge, non-finite. */
    this.histBins = 0;
    this.histGrid = new StepGrid(1, { capacity: 300, agg: "mean" });
  }

  setLayers(/** @type {Layer[]} */ layers) {
    this.layers = layers;
    this.grid = new StepGrid(Math.max(1, layers.length), { capacity: 600, agg: "max" });
  }

  /** The server's histogram bucket edges (the `hello` message's `histogram_edges`). */
  setHistogramEdges(/** @type {number[]} */ edges) {
    this.histBins = edges.length + 2;
    this.histGrid = new StepGrid(Math.max(1, this.histBins), { capacity: 300, agg: "mean" });
  }

  /** The per-layer statistics the views show: the chosen step's, else the latest. */
  get shown() {
    return this.pinned ?? this.latest;
  }

  get lastStep() {
    const s = this.cols.step;
    return s.length ? s[s.length - 1] : 0;
  }

  /**
   * One step's scalars; out-of-order steps are inserted in place, duplicates ignored.
   * @param {number} step
   * @param {number | null} loss
   * @param {number | null} gn
   * @param {number | null} gnc
   * @param {number | null} clip
   * @param {number} lr
   * @param {boolean} skipped
   * @param {number | null} [scale] the loss scale, when the job scales its loss
   */
  addStep(step, loss, gn, gnc, clip, lr, skipped, scale = null) {
    const c = this.cols;
    let i = c.step.length;
    if (i && step <= c.step[i - 1]) {
      i = lowerBound(c.step, step);
      if (c.step[i] === step) return false;
    }
    /** @type {[keyof Columns, number | null][]} */
    const row = [["step", step], ["loss", loss], ["valid", null], ["gn", positive(gn)], ["gnc", positive(gnc)], ["lr", lr], ["clip", clip], ["skipped", skipped ? 1 : 0], ["scale", scale]];
    for (const [k, v] of row) /** @type {(number | null)[]} */ (c[k]).splice(i, 0, v);
    if (isClipped(clip)) this.clippedSteps++;
    if (skipped) this.skippedSteps++;
    if (this.pendingEvals.length) this.placeEvals();
    return true;
  }

  /** The steps of a `/steps` answer. */
  addSteps(/** @type {StepsResponse} */ s) {
    for (let i = 0; i < s.step.length; i++) {
      this.addStep(s.step[i], s.loss[i], s.grad_norm[i], s.grad_norm_clipped[i], s.clip_coef[i], s.lr[i], s.skipped[i], s.loss_scale?.[i] ?? null);
    }
    this.addEvals(s.eval);
  }

  /** Per-layer statistics of one step (arrays indexed by layer). */
  addLayerStats(/** @type {number} */ step, /** @type {LayerStats} */ stats) {
    const gn = stats.grad_norm;
    if (gn) for (let l = 0; l < gn.length; l++) this.addNorm(l, step, gn[l]);
    if (!this.latest || step >= this.latest.step) this.latest = { step, stats };
    if (stats.hist && this.histLayer !== null) {
      const h = stats.hist[this.histLayer];
      if (h) this.addHist(step, h);
    }
  }

  /** One layer's gradient norm at one step, for the heatmap. */
  addNorm(/** @type {number} */ layer, /** @type {number} */ step, /** @type {number | null | undefined} */ norm) {
    if (norm && norm > 0) this.grid.set(layer, step, Math.log10(norm));
  }

  addHist(/** @type {number} */ step, /** @type {number[]} */ counts) {
    let total = 0;
    for (const n of counts) total += n;
    if (!total) return;
    // Fractions, averaged when columns merge; the view puts them on a log scale.
    for (let b = 0; b < counts.length; b++) this.histGrid.set(b, step, counts[b] / total);
  }

  selectHistLayer(/** @type {number} */ layer) {
    this.histLayer = layer;
    this.histGrid = new StepGrid(Math.max(1, this.histBins), { capacity: 300, agg: "mean" });
  }

  /**
   * Validation passes (columnar, as /steps returns them under `eval`). A pass already
   * known whose metric was missing (it arrived live, before its metric) takes it now.
   * @param {EvalColumns | undefined} ev
   */
  addEvals(ev) {
    if (!ev) return;
    if (ev.metric) this.evals.metric = ev.metric;
    for (let i = 0; i < ev.step.length; i++) {
      const s = ev.step[i];
      const value = ev.value?.[i] ?? null;
      const at = lowerBound(this.evals.step, s);
      if (this.evals.step[at] === s) {
        if (value !== null) this.evals.value[at] = value;
        continue;
      }
      this.evals.step.splice(at, 0, s);
      this.evals.loss.splice(at, 0, ev.loss[i]);
      this.evals.value.splice(at, 0, value);
      this.pendingEvals.push([s, ev.loss[i]]);
    }
    this.placeEvals();
  }

  /** Puts validation losses on the step axis (at the nearest recorded step). */
  placeEvals() {
    const c = this.cols;
    /** @type {[number, number | null][]} */
    const keep = [];
    for (const [s, loss] of this.pendingEvals) {
      if (!c.step.length || s > c.step[c.step.length - 1]) {
        keep.push([s, loss]);
        continue;
      }
      let i = lowerBound(c.step, s);
      if (i > 0 && (i === c.step.length || c.step[i] - s > s - c.step[i - 1])) i--;
      c.valid[i] = loss;
    }
    this.pendingEvals = keep;
  }

  get lastEvalStep() {
    const s = this.evals.step;
    return s.length ? s[s.length - 1] : 0;
  }

  /** The last validation pass's metric, when the task reports one. */
  get lastMetric() {
    const v = this.evals.value;
    return v.length ? v[v.length - 1] : null;
  }
}
