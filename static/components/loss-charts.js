// @ts-check
// A job's step charts, on one synchronised step axis: training and validation loss, the
// global gradient norm before and after the policies (clipped and skipped steps ticked
// along the bottom, exploding and non-finite events as vertical lines), the learning rate,
// and fp16's loss scale (log scale) for jobs that scale their loss. The loss and the norm
// read as the chart options say (see chart-options.js): log or linear, outliers ignored or
// not, smoothed with the raw curve faint behind.

import { ema } from "../chart-options.js";
import { cssVar, lineChart, positive, seriesColor, verticalLines, withAlpha } from "../charts.js";
import { isClipped } from "../store.js";

/** @typedef {import("../store.js").JobData} JobData */
/** @typedef {import("../types.js").JobEvent} JobEvent */
/** @typedef {import("../charts.js").UPlot} UPlot */
/** @typedef {import("../charts.js").LineChart} LineChart */
/** @typedef {import("../charts.js").SeriesOptions} SeriesOptions */
/** @typedef {import("../chart-options.js").ReadOptions} ReadOptions */

/** Event kinds drawn as vertical lines on the gradient-norm chart, with their colour. */
const LINE_EVENTS = new Map([["exploding", "--bad"], ["nonfinite", "--bad"]]);

/** How faint a raw curve is behind its smoothed one. */
export const RAW_ALPHA = 0.25;

/**
 * A curve as two series: its raw values, faint and shown only while smoothing, and the
 * curve itself (smoothed, or raw when smoothing is off), which keeps the label.
 * @param {string} label
 * @param {string} color
 * @param {Partial<SeriesOptions>} [rest]
 * @returns {SeriesOptions[]}
 */
export function smoothedPair(label, color, rest = {}) {
  return [
    { label: `${label} (raw)`, color: withAlpha(color, RAW_ALPHA), width: 1, show: false, ...rest },
    { label, color, ...rest },
  ];
}

/**
 * Shows or hides the raw series of a chart's smoothed pairs (`raw`: their indices).
 * @param {LineChart} chart
 * @param {number[]} raw
 * @param {boolean} smoothing
 */
export function showRaw(chart, raw, smoothing) {
  for (const i of raw) if (chart.u.series[i].show !== smoothing) chart.u.setSeries(i, { show: smoothing });
}

/**
 * @param {import("../charts.js").UPlotClass} uPlot
 * @param {{loss: HTMLElement, norm: HTMLElement, lr: HTMLElement, scale: HTMLElement | null}} boxes
 * @param {JobData} data
 * @param {{events: JobEvent[], syncKey: string, options: ReadOptions}} options
 */
export function lossCharts(uPlot, boxes, data, { events, syncKey, options }) {
  const sync = { key: syncKey, setSeries: false };
  const outliers = () => options.outliers;
  /** @type {LineChart} */
  let loss;
  /** @type {LineChart} */
  let norm;
  /** The log scales the two charts were built with. */
  let built = { loss: options.logLoss, norm: options.logNorm };
  const lines = () => events.flatMap((e) => {
    const color = LINE_EVENTS.get(e.kind);
    return color ? [{ x: e.step, color: cssVar(color) }] : [];
  });

  function build() {
    built = { loss: options.logLoss, norm: options.logNorm };
    loss = lineChart(uPlot, boxes.loss, {
      series: [
        ...smoothedPair("train", seriesColor(0)),
        { label: "validation", color: seriesColor(1), width: 2, spanGaps: true, points: { show: true, size: 5 } },
      ],
      yLabel: "loss", yLog: built.loss, height: 220, sync, outliers,
    });
    norm = lineChart(uPlot, boxes.norm, {
      series: [...smoothedPair("before", seriesColor(2)), ...smoothedPair("after", seriesColor(0))],
      yLog: built.norm, yLabel: "‖g‖", height: 370, sync, outliers,
      hooks: { ...verticalLines(lines), draw: [drawPolicyTicks] },
    });
    boxes.loss.dataset.log = String(built.loss);
    boxes.norm.dataset.log = String(built.norm);
  }
  build();
  // From 0 (where warm-up starts and schedules end) to a little above the largest rate, so
  // that a constant rate sits among ticks instead of on a range of its own width.
  const lr = lineChart(uPlot, boxes.lr, {
    series: [{ label: "lr", color: seriesColor(3) }], yLabel: "lr", height: 160, sync,
    yRange: (_u, _min, max) => [0, max !== null && max > 0 && Number.isFinite(max) ? max * 1.15 : 1],
  });
  const scale = boxes.scale
    ? lineChart(uPlot, boxes.scale, { series: [{ label: "loss scale", color: seriesColor(4) }], yLog: true, yLabel: "scale", height: 110, sync, legend: false })
    : null;

  /** Ticks along the bottom of the norm chart: clipped steps short, skipped ones tall. */
  function drawPolicyTicks(/** @type {UPlot} */ u) {
    const c = data.cols;
    if (!c.step.length) return;
    const dpr = devicePixelRatio || 1;
    const [i0, i1] = u.series[0].idxs ?? [0, c.step.length - 1];
    const y = u.bbox.top + u.bbox.height;
    const clipColor = cssVar("--warn");
    const skipColor = cssVar("--bad");
    const g = u.ctx;
    g.save();
    let last = -1;
    for (let i = i0; i <= i1 && i < c.step.length; i++) {
      const skipped = c.skipped[i] === 1;
      if (!skipped && !isClipped(c.clip[i])) continue;
      const px = Math.round(u.valToPos(c.step[i], "x", true));
      if (px === last && !skipped) continue;
      last = px;
      g.fillStyle = skipped ? skipColor : clipColor;
      const h = (skipped ? 9 : 5) * dpr;
      g.fillRect(px, y - h, Math.max(1, dpr), h);
    }
    g.restore();
  }

  function draw() {
    const c = data.cols;
    const w = options.smoothing;
    showRaw(loss, [1], w > 0);
    showRaw(norm, [1, 3], w > 0);
    // A log scale holds no zero or negative loss.
    const train = built.loss ? c.loss.map(positive) : c.loss;
    const valid = built.loss ? c.valid.map(positive) : c.valid;
    loss.setData([c.step, train, ema(train, w), valid]);
    norm.setData([c.step, c.gn, ema(c.gn, w), c.gnc, ema(c.gnc, w)]);
    lr.setData([c.step, c.lr]);
    scale?.setData([c.step, c.scale]);
    boxes.loss.dataset.points = String(c.step.length);
  }

  return {
    draw,
    /** Follows changed chart options: a new scale rebuilds a chart, the rest redraws. */
    update() {
      if (built.loss !== options.logLoss || built.norm !== options.logNorm) {
        loss.destroy();
        norm.destroy();
        build();
      }
      draw();
    },
    destroy() {
      for (const chart of [loss, norm, lr, scale]) chart?.destroy();
    },
  };
}
