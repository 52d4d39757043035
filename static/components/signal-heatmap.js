// @ts-check
// The forward signal through depth: the root mean square of each block's output × steps,
// log colour scale, so activations that grow or fade through the blocks (init scale,
// normalisation, residuals) show beside the gradients.

import { StepGrid, cellAt, drawGrid, gridKeyboard, showTip } from "../heatmap.js";
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

  /** What a cell holds: the block, the steps and the output's RMS. */
  function describe(/** @type {number} */ r, /** @type {number} */ col) {
    const v = grid.at(r, col);
    const from = col * grid.bucket + 1;
    const to = Math.min((col + 1) * grid.bucket, grid.maxStep);
    return `${feed.blocks[r] ?? ""} · ${from === to ? `step ${from}` : `steps ${from}–${to}`} · output RMS ${Number.isFinite(v) ? num(10 ** v, 3) : "–"}`;
  }

  canvas.addEventListener("mousemove", (e) => {
    const cell = cellAt(canvas, e);
    if (!cell || cell.col === null || !blocks) {
      tip.hidden = true;
      return;
    }
    showTip(tip, canvas, e, describe(cell.row, cell.col));
  });
  canvas.addEventListener("mouseleave", () => { if (!keys.active()) tip.hidden = true; });
  const keys = gridKeyboard(canvas, tip, { label: "Forward signal, blocks × steps", describe, redraw: () => draw() });

  function draw() {
    ingest();
    canvas.dataset.blocks = String(blocks);
    canvas.dataset.steps = String(taken);
    drawGrid(canvas, grid, { rowLabel: (r) => feed.blocks[r] ?? "", gutter: 110, empty: empty(), focusCell: keys.focusCell() });
    keys.refresh();
  }

  return { canvas, draw };
}
