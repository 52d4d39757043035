// @ts-check
// How the loss and gradient-norm charts read, as users of W&B and TensorBoard expect: a
// log or linear y scale each, "ignore outliers" (the y range, and the heatmap's colour
// scale, span the 2nd to the 98th percentile of what is drawn, so one spike or one
// diverged run does not flatten every other curve) and smoothing (an exponential moving
// average, debiased as TensorBoard's, with the raw curve faint behind). The choice is
// kept in localStorage and shared by the job and compare pages.

import { el } from "./widgets.js";

/**
 * @typedef {object} ReadOptions
 * @property {boolean} logLoss the loss on a log scale
 * @property {boolean} logNorm the gradient norm on a log scale
 * @property {boolean} outliers ignore outliers
 * @property {number} smoothing the EMA's weight of the past, 0 (off) to 0.99
 */

const KEY = "gradscope.chart-options";

/** @type {ReadOptions} */
export const DEFAULTS = { logLoss: false, logNorm: true, outliers: false, smoothing: 0 };

/** The largest smoothing weight: 0.99 averages over about a hundred steps. */
export const MAX_SMOOTHING = 0.99;

/** The options last chosen (the defaults where none were, or what was stored is unreadable). */
export function readOptions() {
  /** @type {Record<string, unknown>} */
  let stored = {};
  try {
    stored = JSON.parse(localStorage.getItem(KEY) ?? "{}") ?? {};
  } catch {
    stored = {};
  }
  const bool = (/** @type {string} */ k, /** @type {boolean} */ d) => (typeof stored[k] === "boolean" ? /** @type {boolean} */ (stored[k]) : d);
  const s = Number(stored.smoothing);
  return {
    logLoss: bool("logLoss", DEFAULTS.logLoss),
    logNorm: bool("logNorm", DEFAULTS.logNorm),
    outliers: bool("outliers", DEFAULTS.outliers),
    smoothing: Number.isFinite(s) ? Math.min(MAX_SMOOTHING, Math.max(0, s)) : DEFAULTS.smoothing,
  };
}

export function saveOptions(/** @type {ReadOptions} */ options) {
  localStorage.setItem(KEY, JSON.stringify(options));
}

/**
 * An exponential moving average of `values` with weight `weight` on the past, debiased
 * as TensorBoard's (divided by 1 − weightⁿ after n values, so the start is not pulled
 * towards 0). A missing or non-finite value stays missing and leaves the average as it
 * was. Weight 0 returns the values.
 * @param {(number | null)[]} values
 * @param {number} weight
 * @returns {(number | null)[]}
 */
export function ema(values, weight) {
  if (!(weight > 0)) return values.slice();
  /** @type {(number | null)[]} */
  const out = new Array(values.length);
  let acc = 0;
  let n = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || !Number.isFinite(v)) {
      out[i] = null;
      continue;
    }
    acc = acc * weight + (1 - weight) * v;
    n++;
    out[i] = acc / (1 - weight ** n);
  }
  return out;
}

/** The share of values below the lower end, and above the upper end, of an outlier-free range. */
export const OUTLIER_SHARE = 0.02;

/**
 * The range from the 2nd to the 98th percentile of `values` with a tenth of its width
 * as margin (on a log scale, of positive values, in decades); null with fewer than two.
 * @param {Iterable<number | null>} values
 * @param {boolean} log
 * @returns {[number, number] | null}
 */
export function robustRange(values, log) {
  /** @type {number[]} */
  const v = [];
  for (const x of values) {
    if (x === null || !Number.isFinite(x) || (log && !(x > 0))) continue;
    v.push(log ? Math.log10(x) : x);
  }
  if (v.length < 2) return null;
  v.sort((a, b) => a - b);
  const q = (/** @type {number} */ p) => v[Math.min(v.length - 1, Math.max(0, Math.round(p * (v.length - 1))))];
  const lo = q(OUTLIER_SHARE);
  const hi = q(1 - OUTLIER_SHARE);
  const pad = (hi - lo) * 0.1 || (log ? 0.5 : Math.abs(lo) * 0.1 || 1);
  return log ? [10 ** (lo - pad), 10 ** (hi + pad)] : [lo - pad, hi + pad];
}

/**
 * The bar of controls above the charts: log scales, ignore outliers, smoothing. Each
 * change is stored and handed to `onChange`.
 * @param {ReadOptions} options changed in place
 * @param {(options: ReadOptions) => void} onChange
 */
export function optionsBar(options, onChange) {
  const changed = () => {
    saveOptions(options);
    onChange(options);
  };
  const box = (/** @type {"logLoss" | "logNorm" | "outliers"} */ key, /** @type {string} */ label, /** @type {string} */ title) =>
    el("label", { class: "check", title },
      el("input", { type: "checkbox", name: key, checked: options[key], onchange: (/** @type {Event} */ e) => {
        options[key] = /** @type {HTMLInputElement} */ (e.target).checked;
        changed();
      } }), ` ${label}`);
  const shown = el("output", { class: "num" }, options.smoothing.toFixed(2));
  const slider = /** @type {HTMLInputElement} */ (el("input", {
    type: "range", name: "smoothing", min: "0", max: String(MAX_SMOOTHING), step: "0.01", value: String(options.smoothing),
    "aria-label": "smoothing",
  }));
  slider.addEventListener("input", () => {
    options.smoothing = Math.min(MAX_SMOOTHING, Math.max(0, Number(slider.value)));
    shown.textContent = options.smoothing.toFixed(2);
    changed();
  });
  return el("div", { class: "chart-options small" },
    box("logLoss", "log loss", "the loss on a log scale"),
    box("logNorm", "log ‖g‖", "the gradient norm on a log scale"),
    box("outliers", "ignore outliers", "scales span the 2nd to the 98th percentile: a spike or a diverged run does not flatten the rest"),
    el("label", { class: "smoothing", title: "exponential moving average (as TensorBoard's); the raw curve stays faint behind" },
      "smoothing ", slider, " ", shown));
}
