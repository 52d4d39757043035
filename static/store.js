// A job's recorded history in the browser: per-step scalars as columns ready for uPlot,
// validation passes, the latest per-layer statistics, the heatmap grid and the selected
// layer's histogram grid. Every step that arrives is kept; only drawing is thinned.

import { positive } from "./charts.js";
import { StepGrid } from "./heatmap.js";

export const STATS = ["grad_norm", "grad_max", "grad_mean", "grad_std", "zero_frac", "nonfinite", "weight_norm", "update_ratio"];
export const HIST_BINS = 51;

/** Index of the first element of sorted `xs` that is ≥ v. */
export function lowerBound(xs, v) {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (xs[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class JobData {
  constructor(layers = []) {
    this.cols = { step: [], loss: [], valid: [], gn: [], gnc: [], lr: [], clip: [], skipped: [] };
    this.evals = { step: [], loss: [], value: [], metric: null };
    this.pendingEvals = [];
    this.clippedSteps = 0;
    this.skippedSteps = 0;
    this.latest = null; // {step, stats: {name: [per layer]}}
    this.setLayers(layers);
    this.histLayer = null;
    this.histGrid = new StepGrid(HIST_BINS, { capacity: 300, agg: "mean" });
    this.version = 0;
  }

  setLayers(layers) {
    this.layers = layers;
    this.grid = new StepGrid(Math.max(1, layers.length), { capacity: 600, agg: "max" });
  }

  get lastStep() {
    const s = this.cols.step;
    return s.length ? s[s.length - 1] : 0;
  }

  /** One step's scalars; out-of-order steps are inserted in place, duplicates ignored. */
  addStep(step, loss, gn, gnc, clip, lr, skipped) {
    const c = this.cols;
    let i = c.step.length;
    if (i && step <= c.step[i - 1]) {
      i = lowerBound(c.step, step);
      if (c.step[i] === step) return false;
    }
    const row = [step, loss, null, positive(gn), positive(gnc), lr, clip, skipped ? 1 : 0];
    const keys = ["step", "loss", "valid", "gn", "gnc", "lr", "clip", "skipped"];
    if (i === c.step.length) keys.forEach((k, j) => c[k].push(row[j]));
    else keys.forEach((k, j) => c[k].splice(i, 0, row[j]));
    if (clip !== null && clip < 1 - 1e-6) this.clippedSteps++;
    if (skipped) this.skippedSteps++;
    if (this.pendingEvals.length) this.placeEvals();
    this.version++;
    return true;
  }

  /** Per-layer statistics of one step (arrays indexed by layer). */
  addLayerStats(step, stats) {
    const gn = stats.grad_norm;
    if (gn) for (let l = 0; l < gn.length; l++) if (gn[l] > 0) this.grid.set(l, step, Math.log10(gn[l]));
    if (!this.latest || step >= this.latest.step) this.latest = { step, stats };
    if (stats.hist && this.histLayer !== null) {
      const h = stats.hist[this.histLayer];
      if (h) this.addHist(step, h);
    }
    this.version++;
  }

  addHist(step, counts) {
    let total = 0;
    for (const n of counts) total += n;
    if (!total) return;
    // Fractions, averaged when columns merge; the view puts them on a log scale.
    for (let b = 0; b < counts.length; b++) this.histGrid.set(b, step, counts[b] / total);
  }

  selectHistLayer(layer) {
    this.histLayer = layer;
    this.histGrid = new StepGrid(HIST_BINS, { capacity: 300, agg: "mean" });
  }

  /** Validation passes (columnar, as /steps returns them under `eval`). */
  addEvals(ev) {
    if (!ev) return;
    if (ev.metric) this.evals.metric = ev.metric;
    for (let i = 0; i < ev.step.length; i++) {
      const s = ev.step[i];
      const at = lowerBound(this.evals.step, s);
      if (this.evals.step[at] === s) continue;
      this.evals.step.splice(at, 0, s);
      this.evals.loss.splice(at, 0, ev.loss[i]);
      this.evals.value.splice(at, 0, ev.value?.[i] ?? null);
      this.pendingEvals.push([s, ev.loss[i]]);
    }
    this.placeEvals();
    this.version++;
  }

  /** Puts validation losses on the step axis (at the nearest recorded step). */
  placeEvals() {
    const c = this.cols;
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
}
