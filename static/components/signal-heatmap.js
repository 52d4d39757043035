// @ts-check
// The forward signal through depth: the root mean square of each block's output × steps,
// log colour scale, so activations that grow or fade through the blocks (init scale,
// normalisation, residuals) show beside the gradients.

import { StepGrid, cellAt, drawGrid, showTip } from "../heatmap.js";
import { el, num } from "../widgets.js";

/** @typedef {import("../feed.js").JobFeed} JobFeed */

/**
 * @param {HTMLElement} container
 * @param {JobFeed} feed
 * @param {{empty: () => string}} options
 */
export function signalHeatmap(container, feed, { empty }) {
  const canvas = el("canvas", { id: "signal-heatmap", class: "grid-canvas" });
  const tip = el("div", { class: "tip", hidden: true });
  container.replaceChildren(el("div", { class: "heat-wrap" }, canvas, tip));
  let grid = new StepGrid(1);
  let blocks = 0;
  let taken = 0;

  function ingest() {
    const { step, rms } = feed.signal;
    if (blocks !== feed.blocks.length) {
      blocks = feed.blocks.length;
      grid = new StepGrid(Math.max(1, blocks));
      taken = 0;
      canvas.style.height = `${Math.min(400, Math.max(120, blocks * 16 + 24))}px`;
    }
    for (; taken < step.length; taken++) {
      rms.forEach((series, b) => {
        const v = series[taken];
        if (v !== null && v !== undefined && v > 0) grid.set(b, step[taken], Math.log10(v));
      });
    }
  }

  canvas.addEventListener("mousemove", (e) => {
    const cell = cellAt(canvas, e);
    if (!cell || cell.col === null || !blocks) {
      tip.hidden = true;
      return;
    }
    const v = grid.at(cell.row, cell.col);
    showTip(tip, canvas, e, `${feed.blocks[cell.row] ?? ""} · steps ${cell.from}–${cell.to} · output RMS ${Number.isFinite(v) ? num(10 ** v, 3) : "–"}`);
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });

  return {
    canvas,
    draw() {
      ingest();
      canvas.dataset.blocks = String(blocks);
      canvas.dataset.steps = String(taken);
      drawGrid(canvas, grid, { rowLabel: (r) => feed.blocks[r] ?? "", gutter: 110, empty: empty() });
    },
  };
}
