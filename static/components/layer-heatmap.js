// @ts-check
// The per-layer gradient-norm heatmap: layers × steps on a log colour scale, a tooltip
// with the cell's steps and norm, and a click on a layer (or its label) to select it.
// Layers of one block (`transformer.h.3`) sit under their block's row, which holds the
// block's norm; a click on it collapses or opens the block. Tab reaches it; the arrow keys
// then move a cursor over its cells, each shown and announced, and Enter does what a click does.

import { drawGrid, gridKeyboard, gridPointer, robustScale } from "../heatmap.js";
import { describeGroupedCell, groupedGrid } from "../layer-groups.js";
import { el } from "../widgets.js";

/** @typedef {import("../store.js").JobData} JobData */
/** @typedef {import("../layer-groups.js").LayerGroups} LayerGroups */
/** @typedef {import("../layer-groups.js").DisplayRow} DisplayRow */

/** A display row's label: a block with its state and size, a layer of a block by the rest of its name. */
function rowLabel(/** @type {JobData} */ data, /** @type {LayerGroups} */ groups, /** @type {DisplayRow | undefined} */ row) {
  if (!row) return "";
  if (row.kind === "group") {
    const open = !groups.isCollapsed(row.group);
    return `${open ? "▾" : "▸"} ${row.group.name} (${row.group.members.length})`;
  }
  const name = data.layers[row.layer]?.name ?? `#${row.layer}`;
  return row.group ? `· ${name.slice(row.group.name.length + 1)}` : name;
}

/**
 * @param {HTMLElement} container
 * @param {JobData} data
 * @param {{onSelect: (layer: number) => void, onToggle: (block: string) => void, groups: LayerGroups, empty: () => string, outliers?: () => boolean}} options
 *   `outliers`: while it says so, the colour scale leaves out outliers (`robustScale`)
 */
export function layerHeatmap(container, data, { onSelect, onToggle, groups, empty, outliers }) {
  const canvas = el("canvas", { id: "heatmap", class: "grid-canvas" });
  const tip = el("div", { class: "tip", hidden: true });
  container.replaceChildren(el("div", { class: "heat-wrap" }, canvas, tip));

  /** @type {DisplayRow[]} */
  let rows = groups.rows();
  let grid = groupedGrid(data.grid, rows);

  /** What a cell holds: the row's full name, its steps and norm (a block's: √Σ of its layers'). */
  const describe = (/** @type {number} */ r, /** @type {number | null} */ col) =>
    describeGroupedCell({ rows, grid, groups, layers: data.layers }, { block: "block ‖g‖ (√Σ‖g‖² of max ‖g‖)", layer: "max ‖g‖" }, r, col);
  /** A click or Enter on a row: a block opens or collapses, a layer is selected. */
  function act(/** @type {number} */ r) {
    const row = rows[r];
    if (row?.kind === "group") onToggle(row.group.name);
    else if (row && data.layers[row.layer]) onSelect(row.layer);
  }

  gridPointer(canvas, tip, describe, { keyboardActive: () => keys.active(), onClick: act });
  const keys = gridKeyboard(canvas, tip, {
    label: "Per-layer gradient norm, layers × steps; Enter selects a layer or opens and collapses a block",
    describe,
    onEnter: act,
    redraw: () => draw(),
    startRow: () => selectedRow(),
  });

  /** The display row of the selected layer: its own, or its collapsed block's. */
  function selectedRow() {
    const layer = data.histLayer;
    if (layer === null) return null;
    const i = rows.findIndex((r) => (r.kind === "layer" ? r.layer === layer : groups.isCollapsed(r.group) && r.group.members.includes(layer)));
    return i < 0 ? null : i;
  }

  function draw() {
    // The layers' grid is replaced when the layers are.
    grid = groupedGrid(data.grid, rows);
    const scale = outliers?.() ? robustScale(grid) : null;
    canvas.dataset.scale = JSON.stringify(scale ?? grid.range());
    drawGrid(canvas, grid, {
      ...(scale ? { scale } : {}),
      rowLabel: (r) => rowLabel(data, groups, rows[r]),
      headRows: new Set(rows.flatMap((row, r) => (row.kind === "group" ? [r] : []))),
      selectedRow: selectedRow(),
      cursor: data.pinned?.step ?? null,
      focusCell: keys.focusCell(),
      gutter: Math.min(200, Math.max(90, canvas.clientWidth * 0.18)),
      empty: empty(),
    });
    keys.refresh();
  }

  return {
    canvas,
    /** Fits the height to the rows shown (after new layers, or a block opened or collapsed). */
    setLayers() {
      rows = groups.rows();
      canvas.style.height = `${Math.min(460, Math.max(150, rows.length * 16 + 24))}px`;
      canvas.dataset.rows = String(rows.length);
    },
    draw,
  };
}
