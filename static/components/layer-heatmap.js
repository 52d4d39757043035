// @ts-check
// The per-layer gradient-norm heatmap: layers × steps on a log colour scale, a tooltip
// with the cell's steps and norm, and a click on a layer (or its label) to select it.

import { cellAt, drawGrid } from "../heatmap.js";
import { el, num } from "../widgets.js";

/** @typedef {import("../store.js").JobData} JobData */

/**
 * @param {HTMLElement} container
 * @param {JobData} data
 * @param {{onSelect: (layer: number) => void, empty: () => string}} options
 */
export function layerHeatmap(container, data, { onSelect, empty }) {
  const canvas = el("canvas", { id: "heatmap", class: "grid-canvas" });
  const tip = el("div", { class: "tip", hidden: true });
  container.replaceChildren(el("div", { class: "heat-wrap" }, canvas, tip));

  canvas.addEventListener("mousemove", (e) => {
    const cell = cellAt(canvas, e);
    if (!cell) {
      tip.hidden = true;
      return;
    }
    const layer = data.layers[cell.row];
    const name = layer?.name ?? `#${cell.row}`;
    const v = cell.col === null ? NaN : data.grid.at(cell.row, cell.col);
    tip.hidden = false;
    tip.textContent = cell.col === null ? name : `${name} · steps ${cell.from}–${cell.to} · max ‖g‖ ${Number.isNaN(v) ? "–" : num(10 ** v, 3)}`;
    const rect = canvas.getBoundingClientRect();
    tip.style.left = `${Math.min(rect.width - 260, e.clientX - rect.left + 12)}px`;
    tip.style.top = `${e.clientY - rect.top + 12}px`;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (e) => {
    const cell = cellAt(canvas, e);
    if (cell && data.layers[cell.row]) onSelect(cell.row);
  });

  return {
    canvas,
    /** Fits the height to the layer count. */
    setLayers() {
      canvas.style.height = `${Math.min(460, Math.max(150, data.layers.length * 16 + 24))}px`;
    },
    draw() {
      drawGrid(canvas, data.grid, {
        rowLabel: (r) => data.layers[r]?.name ?? `#${r}`,
        selectedRow: data.histLayer,
        gutter: Math.min(200, Math.max(90, canvas.clientWidth * 0.18)),
        empty: empty(),
      });
    },
  };
}
