// @ts-check
// The temporal gradient profile: input positions × steps, log colour scale, the gradient
// norm reaching the embedded input at each position. On the adding problem without
// clipping the early positions go dark as training goes (the gradient no longer reaches
// them); with clipping or gating they stay lit.

import { StepGrid, cellAt, drawGrid, gridKeyboard, showTip } from "../heatmap.js";
import { el, num } from "../widgets.js";

/** @typedef {import("../feed.js").JobFeed} JobFeed */

/** The most rows drawn: longer sequences share a row among neighbouring positions (their maximum). */
const MAX_ROWS = 128;

/**
 * @param {HTMLElement} container
 * @param {JobFeed} feed
 * @param {{empty: () => string}} options
 */
export function timeHeatmap(container, feed, { empty }) {
  const canvas = el("canvas", { id: "time-heatmap", class: "grid-canvas" });
  const tip = el("div", { class: "tip", hidden: true });
  container.replaceChildren(el("div", { class: "heat-wrap" }, canvas, tip));
  canvas.style.height = "220px";
  let positions = 0;
  let rows = 1;
  let grid = new StepGrid(1);
  let taken = 0;

  /** The first position of display row `r`. */
  const firstOf = (/** @type {number} */ r) => Math.floor((r * positions) / rows);

  function ingest() {
    const { step, grad } = feed.timeProfile;
    if (!positions && grad.length) {
      positions = grad[0].length;
      rows = Math.max(1, Math.min(MAX_ROWS, positions));
      grid = new StepGrid(rows);
    }
    for (; taken < step.length; taken++) {
      grad[taken].forEach((v, t) => {
        if (v !== null && v > 0) grid.set(Math.floor((t * rows) / positions), step[taken], Math.log10(v));
      });
    }
  }

  /** What a cell holds: the positions of its row, the steps and the gradient's norm. */
  function describe(/** @type {number} */ r, /** @type {number} */ col) {
    const v = grid.at(r, col);
    const [a, b] = [firstOf(r), Math.max(firstOf(r), firstOf(r + 1) - 1)];
    const from = col * grid.bucket + 1;
    const to = Math.min((col + 1) * grid.bucket, grid.maxStep);
    return `position ${a === b ? a : `${a}–${b}`} · ${from === to ? `step ${from}` : `steps ${from}–${to}`} · ‖∂L/∂x_t‖ ${Number.isFinite(v) ? num(10 ** v, 3) : "–"}`;
  }

  canvas.addEventListener("mousemove", (e) => {
    const cell = cellAt(canvas, e);
    if (!cell || cell.col === null || !positions) {
      tip.hidden = true;
      return;
    }
    showTip(tip, canvas, e, describe(cell.row, cell.col));
  });
  canvas.addEventListener("mouseleave", () => { if (!keys.active()) tip.hidden = true; });
  const keys = gridKeyboard(canvas, tip, { label: "Gradient through time, input positions × steps", describe, redraw: () => draw() });

  function draw() {
    ingest();
    canvas.dataset.positions = String(positions);
    canvas.dataset.profiles = String(taken);
    drawGrid(canvas, grid, {
      rowLabel: (r) => (r === 0 || r === rows - 1 || r % Math.max(1, Math.round(rows / 8)) === 0 ? `t = ${firstOf(r)}` : ""),
      gutter: 70,
      empty: empty(),
      focusCell: keys.focusCell(),
    });
    keys.refresh();
  }

  return { canvas, draw };
}
