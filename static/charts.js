// @ts-check
// uPlot line charts that follow the theme and the container's width, and a frame
// scheduler: data arrives as fast as the server sends it, drawing happens at most once
// per animation frame (less often when drawing gets expensive).

import { robustRange } from "./chart-options.js";

/** @typedef {typeof import("uplot")} UPlotClass */
/** @typedef {import("uplot")} UPlot */

/** @type {UPlotClass | null} */
let uPlotModule = null;

/** Loads uPlot (copied into /vendor by scripts/web-deps; its types come from npm's uplot). */
export async function loadUPlot() {
  if (!uPlotModule) {
    /** @type {string} a variable, so that the type check does not look for the file */
    const url = "/vendor/uPlot.esm.js";
    /** @type {{default: UPlotClass}} */
    const module = await import(url);
    uPlotModule = module.default;
  }
  return uPlotModule;
}

/** @type {HTMLElement | null} */
let probe = null;

/**
 * A colour of the theme, from a custom property of style.css (`--muted`), as the canvas
 * takes it: resolved through an element's `color`, so that `light-dark()` and `var()`
 * come out as the colour the current scheme picks.
 */
export function cssVar(/** @type {string} */ name) {
  if (!probe || !probe.isConnected) {
    probe = document.createElement("span");
    probe.hidden = true;
    document.body.append(probe);
  }
  probe.style.color = "";
  probe.style.color = `var(${name})`;
  return getComputedStyle(probe).color;
}

/** `color` (as `cssVar` gives it, `rgb(r, g, b)`) with opacity `alpha`. */
export function withAlpha(/** @type {string} */ color, /** @type {number} */ alpha) {
  const m = color.match(/^rgba?\(([^,]+),([^,]+),([^,)]+)/);
  return m ? `rgba(${m[1].trim()}, ${m[2].trim()}, ${m[3].trim()}, ${alpha})` : color;
}

/** Colours of the data series (`--series-0` … `--series-9` in style.css). */
export const SERIES_COLORS = 10;

/** The colour of the i-th data series. */
export const seriesColor = (/** @type {number} */ i) => cssVar(`--series-${i % SERIES_COLORS}`);

/** Runs each dirty drawing at most once per frame, spacing frames out when they get slow. */
class Scheduler {
  constructor() {
    /** @type {Map<unknown, () => void>} */
    this.pending = new Map();
    this.frame = 0;
    this.last = 0;
    this.cost = 0;
  }

  /** Runs `fn` in the next frame; a later request with the same key replaces it. */
  request(/** @type {unknown} */ key, /** @type {() => void} */ fn) {
    this.pending.set(key, fn);
    if (!this.frame) this.frame = requestAnimationFrame((t) => this.run(t));
  }

  cancel(/** @type {unknown} */ key) {
    this.pending.delete(key);
  }

  run(/** @type {number} */ now) {
    this.frame = 0;
    // Leave the main thread free at least three quarters of the time.
    if (now - this.last < this.cost * 3) {
      this.frame = requestAnimationFrame((t) => this.run(t));
      return;
    }
    const jobs = [...this.pending.values()];
    this.pending.clear();
    const start = performance.now();
    for (const fn of jobs) {
      try {
        fn();
      } catch (err) {
        console.warn("drawing failed", err);
      }
    }
    this.last = performance.now();
    this.cost = this.last - start;
  }
}

export const frames = new Scheduler();

/** Values at or below zero cannot sit on a log axis. */
export const positive = (/** @type {number | null | undefined} */ v) => (v !== null && v !== undefined && v > 0 && Number.isFinite(v) ? v : null);

/**
 * @typedef {object} SeriesOptions
 * @property {string} label
 * @property {string} color
 * @property {number} [width]
 * @property {number[]} [dash]
 * @property {boolean} [show]
 * @property {boolean} [spanGaps]
 * @property {import("uplot").Series.PathBuilder} [paths]
 * @property {import("uplot").Series.Points} [points]
 *
 * @typedef {object} ChartOptions
 * @property {SeriesOptions[]} series
 * @property {boolean} [yLog]
 * @property {number} [height]
 * @property {string} [yLabel]
 * @property {string} [xLabel]
 * @property {import("uplot").Hooks.Arrays} [hooks]
 * @property {boolean} [legend]
 * @property {boolean} [sparkline]
 * @property {import("uplot").Range.MinMax | import("uplot").Range.Function} [yRange]
 * @property {() => boolean} [outliers] While it says so, the y range leaves out outliers
 *   (the 2nd to the 98th percentile of the series shown, see `robustRange`).
 * @property {import("uplot").Cursor.Sync} [sync]
 * @property {(u: UPlot, v: number) => string} [xValue]
 * @property {() => string[]} [xNames] An x axis of names, not numbers: the i-th name at x = i
 *   (ticks on whole numbers only, the labels upright, thinned to fit; the labels drawn are kept
 *   on the chart's box as `data-x-ticks`).
 * @property {import("uplot").Band[]} [bands] Areas filled between two series (by index, the x series 0).
 *
 * @typedef {object} LineChart
 * @property {UPlot} u
 * @property {(data: (number | null)[][]) => void} setData
 * @property {() => void} destroy
 */

/**
 * A line chart in `container`; data: [x, ...ys].
 * @param {UPlotClass} uPlot
 * @param {HTMLElement} container
 * @param {ChartOptions} options
 * @returns {LineChart}
 */
export function lineChart(uPlot, container, { series, yLog = false, height = 220, yLabel = "", xLabel = "step", hooks = {}, legend = true, sparkline = false, yRange, sync, xValue, xNames, bands, outliers }) {
  const axisColor = cssVar("--muted");
  const gridColor = cssVar("--grid");
  const axis = (/** @type {string} */ label) => ({
    stroke: axisColor,
    grid: { stroke: gridColor, width: 1 },
    ticks: { stroke: gridColor, width: 1 },
    label,
    labelSize: label ? 18 : 0,
    size: 48,
    font: "11px system-ui, sans-serif",
    labelFont: "11px system-ui, sans-serif",
  });
  const width = Math.max(120, container.clientWidth || 300);
  /** @type {import("uplot").Range.MinMax | import("uplot").Range.Function | undefined} */
  let range = yRange;
  if (outliers) {
    const given = yRange;
    range = (u, min, max, key) => {
      if (outliers()) {
        const r = robustRange(shownValues(u), yLog);
        if (r) return r;
      }
      if (typeof given === "function") return given(u, min, max, key);
      if (given) return given;
      if (min === null || max === null) return [min, max];
      return yLog ? uPlot.rangeLog(min, max, 10, false) : uPlot.rangeNum(min, max, { min: { pad: 0.1, soft: 0, mode: 3 }, max: { pad: 0.1, soft: 0, mode: 3 } });
    };
  }
  /** @type {import("uplot").Options} */
  const opts = {
    width,
    height,
    legend: { show: legend && !sparkline, live: true },
    cursor: sparkline ? { show: false } : { drag: { x: true, y: false }, points: { size: 5 }, sync },
    select: { show: !sparkline, left: 0, top: 0, width: 0, height: 0 },
    scales: {
      x: { time: false },
      y: yLog ? { distr: 3, log: 10, ...(range ? { range } : {}) } : range ? { range } : {},
    },
    axes: sparkline ? [{ show: false }, { show: false }] : [xNames ? namedAxis(axis(xLabel), xNames, container) : axis(xLabel), {
      ...axis(yLabel),
      // Steps of 1, 2, 2.5 and 5 at every power of ten a float32 holds, so that a diverged
      // run's 1e30 still gets ticks; labels short enough to read, the axis as wide as the
      // widest, and the labels drawn kept on the chart's box (`data-y-ticks`).
      size: axisSize,
      values: (/** @type {UPlot} */ u, /** @type {number[]} */ splits, /** @type {number} */ _i, /** @type {number} */ _space, /** @type {number} */ incr) => {
        const labels = yLog ? logValues(u, splits) : linearValues(splits, incr);
        container.dataset.yTicks = JSON.stringify(labels.filter((l) => l !== ""));
        return labels;
      },
      ...(yLog ? {} : { incrs: LINEAR_INCRS }),
    }],
    series: [
      { label: xLabel, value: xValue },
      ...series.map((s) => ({
        label: s.label,
        stroke: s.color,
        width: s.width ?? 1.5,
        dash: s.dash,
        show: s.show ?? true,
        spanGaps: s.spanGaps ?? false,
        paths: s.paths,
        points: s.points ?? { show: false },
        value: (/** @type {UPlot} */ _u, /** @type {number | null} */ v) => (v === null || v === undefined ? "–" : formatValue(v)),
      })),
    ],
  };
  if (sparkline) opts.padding = [2, 2, 2, 2];
  if (bands) opts.bands = bands;
  /** @type {import("uplot").AlignedData} */
  const data = [[], ...series.map(() => [])];
  // A zoomed chart (drag to zoom, double-click to reset) keeps its window as data arrives.
  let zoomed = false;
  opts.hooks = hooks;
  const u = new uPlot(opts, data, container);
  // A drag that ends with a selection zooms (uPlot applies it on the document's mouseup,
  // after this listener); uPlot's own double-click handler resets the zoom.
  u.over.addEventListener("mouseup", () => { if (u.select.width > 2) zoomed = true; });
  u.over.addEventListener("dblclick", () => { zoomed = false; });
  const observer = new ResizeObserver(() => {
    const w = container.clientWidth;
    if (w > 0 && Math.abs(w - u.width) > 1) u.setSize({ width: w, height });
  });
  observer.observe(container);
  return {
    u,
    setData(d) {
      const aligned = /** @type {import("uplot").AlignedData} */ (/** @type {unknown} */ (d));
      if (zoomed) {
        const { min, max } = u.scales.x;
        u.setData(aligned, false);
        if (min !== undefined && max !== undefined) u.setScale("x", { min, max });
      } else u.setData(aligned, true);
    },
    destroy() {
      observer.disconnect();
      u.destroy();
    },
  };
}

/**
 * An x axis that names its whole numbers (`names()[i]` at i): labels turned upright so that
 * a name per layer fits where numbers would, at least 14 px apart (uPlot thins them
 * to every 2nd, 5th… when they do not fit), and as tall as the longest.
 * @param {Record<string, any>} base
 * @param {() => string[]} names
 * @param {HTMLElement} container
 */
function namedAxis(base, names, container) {
  return {
    ...base,
    rotate: -90,
    space: 14,
    incrs: [1, 2, 3, 4, 5, 10, 20, 25, 50, 100, 200, 500, 1000],
    values: (/** @type {UPlot} */ _u, /** @type {number[]} */ splits) => {
      const list = names();
      const labels = splits.map((v) => (Number.isInteger(v) && v >= 0 && v < list.length ? list[v] : ""));
      container.dataset.xTicks = JSON.stringify(labels.filter((l) => l !== ""));
      return labels;
    },
    size: (/** @type {UPlot} */ u, /** @type {string[] | null} */ values) => {
      const axis = u.axes[0];
      u.ctx.font = Array.isArray(axis.font) ? String(axis.font[0]) : String(axis.font ?? base.font);
      const longest = Math.max(0, ...(values ?? []).map((v) => u.ctx.measureText(v).width / (window.devicePixelRatio || 1)));
      return Math.ceil(longest + 18);
    },
  };
}

/** The values of the series a chart shows (not those hidden in its legend). */
function* shownValues(/** @type {UPlot} */ u) {
  for (let i = 1; i < u.data.length; i++) {
    if (u.series[i]?.show === false) continue;
    for (const v of u.data[i]) if (v !== null && v !== undefined) yield v;
  }
}

/** Tick steps of a linear axis: 1, 2, 2.5 and 5 times every power of ten from 1e-30 to 1e38. */
const LINEAR_INCRS = Array.from({ length: 69 }, (_, k) => [1, 2, 2.5, 5].map((m) => Number(`${m}e${k - 30}`))).flat();

/**
 * A linear axis's labels: as many decimals as the step needs, exponents for very large
 * or small values, so that a label stays short (`1.5e+30`, never `1,500,000,000,…`).
 * @param {number[]} splits
 * @param {number} incr the step between ticks
 */
export function linearValues(splits, incr) {
  const step = Math.abs(incr) || 1;
  // Two more than the step's leading digit needs (a step of 0.025 has three); the
  // conversion back to a number drops the zeros that are not.
  const decimals = Math.max(0, Math.min(20, 2 - Math.floor(Math.log10(step) + 1e-9)));
  return splits.map((v) => {
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) {
      // Mantissa digits enough to tell neighbouring ticks apart.
      const digits = Math.max(0, Math.min(4, Math.floor(Math.log10(a) + 1e-9) - Math.floor(Math.log10(step) + 1e-9) + 1));
      return Number(v.toExponential(digits)).toExponential();
    }
    return Number(v.toFixed(decimals)).toString();
  });
}

/**
 * A y axis as wide as its widest label (at least 48 px), with room between the labels and the axis title: long labels are never cut at the
 * chart's edge.
 * @param {UPlot} u
 * @param {string[] | null} values
 * @param {number} axisIdx
 */
function axisSize(u, values, axisIdx) {
  const axis = u.axes[axisIdx];
  const longest = (values ?? []).reduce((a, v) => (v.length > a.length ? v : a), "");
  u.ctx.font = Array.isArray(axis.font) ? String(axis.font[0]) : String(axis.font ?? "11px system-ui, sans-serif");
  const text = longest ? u.ctx.measureText(longest).width / (window.devicePixelRatio || 1) : 0;
  return Math.max(48, Math.ceil(text + (axis.gap ?? 5) + (axis.ticks?.size ?? 10) + 10));
}

/** Log-axis labels: every decade (thinned to fit), minor ticks only when few decades show. */
function logValues(/** @type {UPlot} */ u, /** @type {number[]} */ splits) {
  const whole = (/** @type {number} */ v) => Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-6;
  const decades = splits.filter((v) => v > 0 && whole(v)).length;
  const room = Math.max(2, Math.floor(u.bbox.height / (window.devicePixelRatio || 1) / 22));
  const every = Math.max(1, Math.ceil(decades / room));
  return splits.map((v) => {
    if (!(v > 0)) return "";
    if (decades > 2 && !whole(v)) return "";
    if (whole(v) && Math.round(Math.log10(v)) % every !== 0) return "";
    const a = Math.abs(v);
    return a >= 1e-3 && a < 1e4 ? String(Number(v.toPrecision(3))) : v.toExponential(0);
  });
}

function formatValue(/** @type {number} */ v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

/**
 * Draws vertical lines at the given x positions under a chart's series.
 * @param {() => {x: number, color: string}[]} getLines
 * @returns {import("uplot").Hooks.Arrays}
 */
export function verticalLines(getLines) {
  return {
    drawClear: [
      (u) => {
        const lines = getLines();
        if (!lines.length) return;
        const { ctx } = u;
        const top = u.bbox.top;
        const bottom = top + u.bbox.height;
        ctx.save();
        ctx.lineWidth = Math.max(1, devicePixelRatio);
        for (const { x, color } of lines) {
          const px = u.valToPos(x, "x", true);
          if (px < u.bbox.left || px > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = color;
          ctx.globalAlpha = 0.55;
          ctx.beginPath();
          ctx.moveTo(px, top);
          ctx.lineTo(px, bottom);
          ctx.stroke();
        }
        ctx.restore();
      },
    ],
  };
}

/** `fn` at most once per `ms`, the last call always honoured (drawn in a frame). */
export function throttled(/** @type {() => void} */ fn, /** @type {number} */ ms) {
  let last = 0;
  let timer = 0;
  return function run() {
    const now = performance.now();
    if (now - last >= ms) {
      last = now;
      fn();
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = 0;
        frames.request(run, run);
      }, ms - (now - last));
    }
  };
}
