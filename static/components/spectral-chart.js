// @ts-check
// The largest singular value of each measured weight matrix over steps (a line per matrix,
// log scale), with 1.0 marked: above it gradients through the matrix can grow from step
// to step, below it (with a tanh) they must shrink (Pascanu, Mikolov & Bengio, 2013).

import { cssVar, lineChart, seriesColor } from "../charts.js";

/** @typedef {import("../charts.js").UPlot} UPlot */
/** @typedef {import("../feed.js").JobFeed} JobFeed */

/** Draws a dashed horizontal line at y = 1 under the series. @param {UPlot} u */
function markOne(u) {
  const y = u.valToPos(1, "y", true);
  if (!(y >= u.bbox.top && y <= u.bbox.top + u.bbox.height)) return;
  const g = u.ctx;
  g.save();
  g.strokeStyle = cssVar("--bad");
  g.lineWidth = Math.max(1, devicePixelRatio);
  g.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
  g.beginPath();
  g.moveTo(u.bbox.left, y);
  g.lineTo(u.bbox.left + u.bbox.width, y);
  g.stroke();
  g.restore();
}

/**
 * @param {import("../charts.js").UPlotClass} uPlot
 * @param {HTMLElement} box
 * @param {JobFeed} feed
 * @param {{empty: () => string}} options
 */
export function spectralChart(uPlot, box, feed, { empty }) {
  /** @type {import("../charts.js").LineChart | null} */
  let chart = null;
  /** The matrix names the chart was built with: renamed matrices rebuild it. */
  let names = "";
  const note = document.createElement("p");
  note.className = "muted small";
  box.replaceChildren(note);

  return {
    draw() {
      const { matrices, spectral } = feed;
      if (!matrices.length || !spectral.step.length) {
        note.textContent = empty();
        return;
      }
      const now = matrices.map((m) => m.name).join("\n");
      if (chart && now !== names) {
        chart.destroy();
        chart = null;
      }
      if (!chart) {
        names = now;
        const area = document.createElement("div");
        area.className = "chart";
        area.id = "spectral-chart";
        box.replaceChildren(area);
        chart = lineChart(uPlot, area, {
          series: matrices.map((m, i) => ({ label: m.name, color: seriesColor(i), spanGaps: true })),
          yLog: true, yLabel: "σ max", height: 220,
          // The 1.0 line stays in view.
          yRange: (_u, min, max) => [Math.max(1e-3, Math.min(min, 0.5)), Math.max(max, 2)],
          hooks: { drawClear: [markOne] },
        });
      }
      box.dataset.points = String(spectral.step.length);
      chart.setData([spectral.step, ...spectral.radius]);
    },
    destroy() {
      chart?.destroy();
    },
  };
}
