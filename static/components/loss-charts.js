// @ts-check
// A job's step charts, on one synchronised step axis: training and validation loss, the
// global gradient norm before and after the policies (clipped and skipped steps ticked
// along the bottom, exploding and non-finite events as vertical lines), the learning rate,
// and fp16's loss scale (log scale) for jobs that scale their loss.

import { cssVar, lineChart, seriesColor, verticalLines } from "../charts.js";
import { isClipped } from "../store.js";

/** @typedef {import("../store.js").JobData} JobData */
/** @typedef {import("../types.js").JobEvent} JobEvent */
/** @typedef {import("../charts.js").UPlot} UPlot */

/** Event kinds drawn as vertical lines on the gradient-norm chart, with their colour. */
const LINE_EVENTS = new Map([["exploding", "--bad"], ["nonfinite", "--bad"]]);

/**
 * @param {import("../charts.js").UPlotClass} uPlot
 * @param {{loss: HTMLElement, norm: HTMLElement, lr: HTMLElement, scale: HTMLElement | null}} boxes
 * @param {JobData} data
 * @param {{events: JobEvent[], syncKey: string}} options
 */
export function lossCharts(uPlot, boxes, data, { events, syncKey }) {
  const sync = { key: syncKey, setSeries: false };
  const loss = lineChart(uPlot, boxes.loss, {
    series: [
      { label: "train", color: seriesColor(0) },
      { label: "validation", color: seriesColor(1), width: 2, spanGaps: true, points: { show: true, size: 5 } },
    ],
    yLabel: "loss", height: 220, sync,
  });
  const lines = () => events.flatMap((e) => {
    const color = LINE_EVENTS.get(e.kind);
    return color ? [{ x: e.step, color: cssVar(color) }] : [];
  });
  const norm = lineChart(uPlot, boxes.norm, {
    series: [
      { label: "before", color: seriesColor(2) },
      { label: "after", color: seriesColor(0) },
    ],
    yLog: true, yLabel: "‖g‖", height: 370, sync,
    hooks: { ...verticalLines(lines), draw: [drawPolicyTicks] },
  });
  const lr = lineChart(uPlot, boxes.lr, { series: [{ label: "lr", color: seriesColor(3) }], yLabel: "lr", height: 110, sync, legend: false });
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

  return {
    draw() {
      const c = data.cols;
      loss.setData([c.step, c.loss, c.valid]);
      norm.setData([c.step, c.gn, c.gnc]);
      lr.setData([c.step, c.lr]);
      scale?.setData([c.step, c.scale]);
      boxes.loss.dataset.points = String(c.step.length);
    },
    destroy() {
      for (const chart of [loss, norm, lr, scale]) chart?.destroy();
    },
  };
}
