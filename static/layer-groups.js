// @ts-check
// Layers grouped by block, for the job page's heatmap and table. A model names its
// parameters by module path (`transformer.h.3.attn.c_attn.weight`), and a deep one reads
// best block by block: a block is a name's prefix up to its last numeric part
// (`transformer.h.3`), and consecutive layers of one block form a group. A group can be
// collapsed to one row that shows the block's aggregate. Layers outside any block
// (`head.weight`, `wte.weight`) and blocks of a single layer stay rows of their own.

import { num } from "./widgets.js";

/** @typedef {import("./types.js").Layer} Layer */
/** @typedef {import("./types.js").LayerStats} LayerStats */

/**
 * The block of a layer name: its dotted prefix up to the last numeric part before the
 * tensor's own name (`transformer.h.3.attn.c_attn.weight` → `transformer.h.3`,
 * `blocks.0.linear.weight` → `blocks.0`, `0.weight` → `0`), or null when there is none
 * (`head.weight`).
 */
export function blockOf(/** @type {string} */ name) {
  const parts = name.split(".");
  for (let i = parts.length - 2; i >= 0; i--) {
    if (/^\d+$/.test(parts[i])) return parts.slice(0, i + 1).join(".");
  }
  return null;
}

/**
 * @typedef {object} LayerGroup
 * @property {string} name The block.
 * @property {number[]} members Its layers' indices, in the module's order.
 *
 * @typedef {{kind: "group", group: LayerGroup} | {kind: "layer", layer: number, group: LayerGroup | null}} DisplayRow
 */

/** Models with more layers than this open with their groups collapsed. */
export const COLLAPSE_ABOVE = 32;

/** The groups of a layer list and which of them are collapsed. */
export class LayerGroups {
  constructor(/** @type {Layer[]} */ layers = []) {
    /** @type {LayerGroup[]} */
    this.groups = [];
    /** @type {(LayerGroup | null)[]} The group of each layer, by index. */
    this.ofLayer = [];
    /** @type {Set<string>} */
    this.collapsed = new Set();
    this.setLayers(layers);
  }

  /** Regroups for a new layer list; a model of many layers starts collapsed. */
  setLayers(/** @type {Layer[]} */ layers) {
    /** @type {LayerGroup[]} */
    const groups = [];
    /** @type {(LayerGroup | null)[]} */
    const ofLayer = layers.map(() => null);
    /** @type {{name: string | null, members: number[]}[]} */
    const runs = [];
    layers.forEach((layer, i) => {
      const block = blockOf(layer.name);
      const run = runs[runs.length - 1];
      if (run && block !== null && run.name === block) run.members.push(i);
      else runs.push({ name: block, members: [i] });
    });
    for (const run of runs) {
      if (run.name === null || run.members.length < 2) continue;
      const group = { name: run.name, members: run.members };
      groups.push(group);
      for (const m of run.members) ofLayer[m] = group;
    }
    this.groups = groups;
    this.ofLayer = ofLayer;
    this.collapsed = new Set(layers.length > COLLAPSE_ABOVE ? groups.map((g) => g.name) : []);
  }

  /** Collapses an open group, or opens a collapsed one. */
  toggle(/** @type {string} */ name) {
    if (!this.collapsed.delete(name)) this.collapsed.add(name);
  }

  isCollapsed(/** @type {LayerGroup} */ group) {
    return this.collapsed.has(group.name);
  }

  /** Rows top to bottom: each group's head, then its layers unless it is collapsed; lone layers. */
  rows() {
    /** @type {DisplayRow[]} */
    const out = [];
    for (let i = 0; i < this.ofLayer.length; i++) {
      const group = this.ofLayer[i];
      if (group && group.members[0] === i) out.push({ kind: "group", group });
      if (!group || !this.isCollapsed(group)) out.push({ kind: "layer", layer: i, group });
    }
    return out;
  }
}

/** Square root of the sum of squares of the finite values; NaN when there is none. */
function rootSumSquares(/** @type {(number | null | undefined)[]} */ values) {
  let sum = 0;
  let any = false;
  for (const v of values) {
    if (v === null || v === undefined || !Number.isFinite(v)) continue;
    sum += v * v;
    any = true;
  }
  return any ? Math.sqrt(sum) : NaN;
}

/**
 * A block's value of statistic `name` from its layers' values at one step (`stats`,
 * indexed by layer), as if the block were one tensor: norms combine as √Σx², `grad_max`
 * as the largest, `nonfinite` as the sum, `zero_frac`, `underflow` and `grad_mean` weighted by each
 * layer's size, `grad_std` pooled (sample deviation, as each layer's). `update_ratio`
 * needs the weights before the step, which the step does not carry: null, as for any
 * statistic it does not know.
 * @param {string} name
 * @param {LayerStats} stats
 * @param {number[]} members
 * @param {Layer[]} layers
 * @returns {number | null}
 */
export function aggregate(name, stats, members, layers) {
  const of = (/** @type {string} */ s) => {
    const column = stats[s];
    return column ? members.map((m) => column[m]) : null;
  };
  const values = of(name);
  if (!values) return null;
  const sizes = members.map((m) => layers[m]?.numel ?? 0);
  const total = sizes.reduce((a, b) => a + b, 0);
  const weighted = (/** @type {(number | null | undefined)[]} */ xs) => {
    if (!total) return null;
    let sum = 0;
    for (let k = 0; k < xs.length; k++) {
      const x = xs[k];
      if (x === null || x === undefined || Number.isNaN(x)) return null;
      sum += x * sizes[k];
    }
    return sum / total;
  };
  switch (name) {
    case "grad_norm":
    case "weight_norm": {
      const v = rootSumSquares(values);
      return Number.isNaN(v) ? null : v;
    }
    case "grad_max": {
      const finite = values.filter((v) => v !== null && v !== undefined && !Number.isNaN(v));
      return finite.length ? Math.max(.../** @type {number[]} */ (finite)) : null;
    }
    case "nonfinite":
      return values.reduce((/** @type {number} */ a, v) => a + (v ?? 0), 0);
    case "zero_frac":
    case "underflow":
    case "grad_mean":
      return weighted(values);
    case "grad_std": {
      const means = of("grad_mean");
      const mean = means ? weighted(means) : null;
      if (!means || mean === null || total < 2) return null;
      let squares = 0;
      for (let k = 0; k < members.length; k++) {
        const n = sizes[k];
        const s = values[k];
        const m = means[k] ?? 0;
        // A layer of one value has no deviation of its own (its std is NaN).
        if (n > 1 && (s === null || s === undefined || !Number.isFinite(s))) return null;
        squares += (n > 1 ? (n - 1) * /** @type {number} */ (s) ** 2 : 0) + n * (m - mean) ** 2;
      }
      return Math.sqrt(squares / (total - 1));
    }
    default:
      return null;
  }
}

/**
 * The heatmap's grid by display rows: a layer's row is its own, a group's row holds the
 * block's gradient norm, √Σ‖g‖² of its layers' values in the column. (A column that covers
 * several steps holds each layer's largest norm among them, so there the block's value is
 * an upper bound of its norm at any one of those steps.)
 * @param {import("./heatmap.js").GridView} grid Layers × steps, log10 of the norms.
 * @param {DisplayRow[]} rows
 * @returns {import("./heatmap.js").GridView}
 */
export function groupedGrid(grid, rows) {
  const at = (/** @type {number} */ r, /** @type {number} */ c) => {
    const row = rows[r];
    if (!row) return NaN;
    if (row.kind === "layer") return grid.at(row.layer, c);
    let sum = 0;
    let any = false;
    for (const m of row.group.members) {
      const v = grid.at(m, c);
      if (Number.isNaN(v)) continue;
      any = true;
      if (v !== -Infinity) sum += 10 ** (2 * v);
    }
    if (!any) return NaN;
    return sum > 0 ? Math.log10(sum) / 2 : -Infinity;
  };
  return {
    rows: Math.max(1, rows.length),
    columns: grid.columns,
    bucket: grid.bucket,
    maxStep: grid.maxStep,
    at,
    range() {
      let lo = Infinity;
      let hi = -Infinity;
      for (let r = 0; r < rows.length; r++) {
        for (let c = 0; c < grid.columns; c++) {
          const v = at(r, c);
          if (!Number.isFinite(v)) continue;
          if (v < lo) lo = v;
          if (v > hi) hi = v;
        }
      }
      return [lo, hi];
    },
  };
}

/**
 * What cell (r, col) of a grouped heatmap holds, as its tooltip and the keyboard's live
 * region say it: the row's full name (a block's size and what a click or Enter does), its
 * step or steps and the value, `what` naming the value of a block row and of a layer row.
 * With a null column, the row's name only.
 * @param {{rows: DisplayRow[], grid: import("./heatmap.js").GridView, groups: LayerGroups, layers: Layer[]}} heatmap
 * @param {{block: string, layer: string}} what
 * @param {number} r
 * @param {number | null} col
 */
export function describeGroupedCell({ rows, grid, groups, layers }, what, r, col) {
  const row = rows[r];
  if (!row) return "";
  const name = row.kind === "group"
    ? `${row.group.name} (${row.group.members.length} layers; ${groups.isCollapsed(row.group) ? "open" : "collapse"} with a click or Enter)`
    : layers[row.layer]?.name ?? `#${row.layer}`;
  if (col === null) return name;
  const v = grid.at(r, col);
  const from = col * grid.bucket + 1;
  const to = Math.min((col + 1) * grid.bucket, grid.maxStep);
  const value = Number.isFinite(v) ? num(10 ** v, 3) : "–";
  return `${name} · ${from === to ? `step ${from}` : `steps ${from}–${to}`} · ${row.kind === "group" ? what.block : what.layer} ${value}`;
}
