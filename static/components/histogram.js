// @ts-check
// The selected layer's gradient histogram over time: the share of its entries in each of
// the server's power-of-two buckets of |g| (`hello.histogram_edges`), exact zeros and
// non-finite values apart, on a log colour scale. Only buckets that were ever used show.

import { drawGrid } from "../heatmap.js";
import { el } from "../widgets.js";

/** @typedef {import("../store.js").JobData} JobData */
/** @typedef {import("../types.js").Layer} Layer */

/** Smallest share drawn (log10): rarer buckets get the bottom colour. */
const FLOOR = -6;

/**
 * A bucket edge as a power of two (`2^-3`), or as a number when it is not one.
 * @param {number} edge
 */
function power(edge) {
  const e = Math.log2(edge);
  return Number.isInteger(e) ? `2^${e}` : String(edge);
}

/**
 * Labels of the histogram's rows: exact zeros, one per edge, non-finite.
 * @param {number[]} edges
 */
export function bucketLabels(edges) {
  const last = edges.length;
  return [
    "exactly 0",
    ...edges.map((edge, i) => (i === 0 && last > 1 ? `< ${power(edges[1])}` : i === last - 1 ? `≥ ${power(edge)}` : power(edge))),
    "NaN/Inf",
  ];
}

/**
 * @param {HTMLElement} container
 * @param {JobData} data
 * @param {{edges: () => number[], onSelect: (layer: number) => void, empty: () => string}} options
 */
export function histogram(container, data, { edges, onSelect, empty }) {
  const select = el("select", { "aria-label": "layer for the histogram" });
  const note = el("span", { class: "muted small" });
  const canvas = el("canvas", { id: "histogram", class: "grid-canvas" });
  container.replaceChildren(el("div", { class: "hist-head" }, select, note), canvas);
  select.addEventListener("change", () => onSelect(Number(select.value)));

  /** Rows to draw: non-finite on top, the used buckets by size, exact zeros at the bottom. */
  function rows() {
    const g = data.histGrid;
    const bins = data.histBins;
    let lo = bins;
    let hi = -1;
    let zero = false;
    let nonfinite = false;
    for (let c = 0; c < g.columns; c++) {
      for (let b = 1; b < bins - 1; b++) {
        if (g.at(b, c) > 0) {
          lo = Math.min(lo, b);
          hi = Math.max(hi, b);
        }
      }
      if (g.at(0, c) > 0) zero = true;
      if (g.at(bins - 1, c) > 0) nonfinite = true;
    }
    const out = [];
    if (nonfinite) out.push(bins - 1);
    for (let b = hi; b >= lo; b--) out.push(b);
    if (zero) out.push(0);
    return out;
  }

  return {
    canvas,
    /** The layer picker, after the layer list changed. @param {Layer[]} layers */
    setLayers(layers) {
      select.replaceChildren(...layers.map((l) => el("option", { value: l.index, selected: l.index === data.histLayer }, `${l.index}: ${l.name}`)));
    },
    /** Shows `layer` as the picked one. */
    select(/** @type {number} */ layer) {
      select.value = String(layer);
    },
    draw() {
      const g = data.histGrid;
      const shown = data.histBins ? rows() : [];
      const labels = bucketLabels(edges());
      /** @type {import("../heatmap.js").GridView} */
      const view = {
        rows: Math.max(1, shown.length), columns: shown.length ? g.columns : 0, bucket: g.bucket, maxStep: g.maxStep,
        at: (r, c) => {
          const f = g.at(shown[r], c);
          return f > 0 ? Math.max(FLOOR, Math.log10(f)) : f === 0 ? -Infinity : NaN;
        },
        range: () => {
          let lo = 0;
          for (const b of shown) {
            for (let c = 0; c < g.columns; c++) {
              const f = g.at(b, c);
              if (f > 0) lo = Math.min(lo, Math.max(FLOOR, Math.log10(f)));
            }
          }
          return shown.length ? [lo, 0] : [Infinity, -Infinity];
        },
      };
      drawGrid(canvas, view, {
        rowLabel: (r) => labels[shown[r]] ?? "",
        gutter: 74,
        cursor: data.pinned?.step ?? null,
        legend: (t) => `${Number((10 ** t * 100).toPrecision(1))}%`,
        empty: empty(),
      });
      note.textContent = shown.length ? "share of entries per power-of-two bucket of |g|" : "";
    },
  };
}
