// @ts-check
// Step-bucketed grids drawn on a canvas: the per-layer gradient-norm heatmap (layers ×
// steps, log colour scale) and a layer's gradient histogram over time (|g| buckets × steps).
//
// A grid keeps a fixed number of columns; when the run outgrows them, neighbouring
// columns merge and each column covers twice the steps. Merging keeps the maximum (for
// norms, so a spike stays visible) or the mean (for histogram fractions). Columns are
// picked by step number, so late or re-fetched data lands in the right place.

import { robustRange } from "./chart-options.js";
import { cssVar } from "./charts.js";

/**
 * What `drawGrid` draws: rows × columns of values (NaN: none), columns of `bucket` steps.
 * @typedef {object} GridView
 * @property {number} rows
 * @property {number} columns
 * @property {number} bucket
 * @property {number} maxStep
 * @property {(row: number, col: number) => number} at
 * @property {() => [number, number]} range
 */

export class StepGrid {
  /**
   * @param {number} rows
   * @param {{capacity?: number, agg?: "max" | "mean"}} [options]
   */
  constructor(rows, { capacity = 600, agg = "max" } = {}) {
    this.rows = rows;
    this.capacity = capacity;
    this.agg = agg;
    this.bucket = 1;
    this.maxStep = 0;
    this.values = new Float32Array(rows * capacity).fill(NaN);
    this.counts = new Uint32Array(agg === "mean" ? rows * capacity : 0);
  }

  /** Column count in use. */
  get columns() {
    return Math.min(this.capacity, Math.ceil(this.maxStep / this.bucket));
  }

  /** Stores `value` (already on the colour scale's axis, e.g. log10) for (row, step). */
  set(/** @type {number} */ row, /** @type {number} */ step, /** @type {number} */ value) {
    if (!Number.isFinite(value) || step < 1 || row < 0 || row >= this.rows) return;
    while (Math.floor((step - 1) / this.bucket) >= this.capacity) this.merge();
    const col = Math.floor((step - 1) / this.bucket);
    const i = col * this.rows + row;
    const old = this.values[i];
    if (this.agg === "max") {
      if (!(old >= value)) this.values[i] = value;
    } else {
      const n = this.counts[i];
      this.values[i] = n === 0 ? value : old + (value - old) / (n + 1);
      this.counts[i] = n + 1;
    }
    if (step > this.maxStep) this.maxStep = step;
  }

  merge() {
    const { rows, capacity, values, counts } = this;
    const half = capacity / 2;
    for (let c = 0; c < half; c++) {
      for (let r = 0; r < rows; r++) {
        const a = values[2 * c * rows + r];
        const b = values[(2 * c + 1) * rows + r];
        let v;
        if (this.agg === "max") v = Number.isNaN(a) ? b : Number.isNaN(b) ? a : Math.max(a, b);
        else {
          const na = counts[2 * c * rows + r];
          const nb = counts[(2 * c + 1) * rows + r];
          v = na + nb === 0 ? NaN : ((na ? a * na : 0) + (nb ? b * nb : 0)) / (na + nb);
          counts[c * rows + r] = na + nb;
        }
        values[c * rows + r] = v;
      }
    }
    values.fill(NaN, half * rows);
    counts.fill(0, half * rows);
    this.bucket *= 2;
  }

  /** Smallest and largest stored value. @returns {[number, number]} */
  range() {
    let lo = Infinity;
    let hi = -Infinity;
    const n = this.columns * this.rows;
    for (let i = 0; i < n; i++) {
      const v = this.values[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    return [lo, hi];
  }

  /** The value at (row, column), NaN when none. */
  at(/** @type {number} */ row, /** @type {number} */ col) {
    return this.values[col * this.rows + row];
  }
}

/**
 * A colour scale without outliers: the 2nd to the 98th percentile of the grid's values
 * (see `robustRange`), so that one explosion does not darken every other cell; cells
 * beyond it take the colour of its end. Null for fewer than two values.
 * @param {GridView} grid
 * @returns {[number, number] | null}
 */
export function robustScale(grid) {
  /** @type {number[]} */
  const values = [];
  for (let c = 0; c < grid.columns; c++) {
    for (let r = 0; r < grid.rows; r++) {
      const v = grid.at(r, c);
      if (Number.isFinite(v)) values.push(v);
    }
  }
  return robustRange(values, false);
}

// Perceptually ordered colour ramp from dark violet through teal to yellow.
const RAMP = [
  [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
];

/** RGB of t in [0, 1] on the ramp. */
export function ramp(/** @type {number} */ t) {
  const x = Math.min(1, Math.max(0, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  const a = RAMP[i];
  const b = RAMP[i + 1];
  return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
}

/**
 * @typedef {object} GridOptions
 * @property {(row: number) => string} [rowLabel]
 * @property {[number, number]} [scale] Colour scale (defaults to the grid's range).
 * @property {(v: number) => string} [legend] A colour-bar tick's label.
 * @property {(lo: number, hi: number) => number[]} [ticks] Values for the colour bar.
 * @property {number | null} [selectedRow]
 * @property {string} [xLabel]
 * @property {string} [empty] What an empty grid says.
 * @property {number} [gutter] Width of the row labels.
 * @property {number} [maxGap]
 * @property {number | null} [cursor] A step to mark with a vertical line (the step the views show).
 * @property {{row: number, col: number} | null} [focusCell] The keyboard's cell (`gridKeyboard`), outlined.
 * @property {Set<number>} [headRows] Rows that head a block: a line above each, and their
 *   labels drawn before any other, so that every block is named however many rows there are.
 *
 * @typedef {object} GridLayout Where a drawn grid's cells are, for `cellAt`.
 * @property {{x: number, y: number, w: number, h: number}} plot
 * @property {number} cols
 * @property {number} rows
 * @property {number} bucket
 * @property {[number, number]} [scale]
 */

/** @type {WeakMap<HTMLCanvasElement, GridLayout>} */
const layouts = new WeakMap();
/** @type {WeakMap<HTMLCanvasElement, HTMLCanvasElement>} */
const offscreens = new WeakMap();

/**
 * Draws `grid` into `canvas`: rows top to bottom, columns left to right, a label gutter
 * on the left and a colour bar on the right.
 * @param {HTMLCanvasElement} canvas
 * @param {GridView} grid
 * @param {GridOptions} [opts]
 */
export function drawGrid(canvas, grid, opts = {}) {
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 600;
  const cssH = canvas.clientHeight || 240;
  if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
  }
  const ctx = canvas.getContext("2d");
  if (!ctx) return null;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);
  const text = cssVar("--muted");
  const font = "11px system-ui, sans-serif";
  ctx.font = font;

  const gutter = opts.gutter ?? 130;
  const barW = 58;
  const bottom = 18;
  const plot = { x: gutter, y: 2, w: Math.max(10, cssW - gutter - barW), h: Math.max(10, cssH - bottom - 4) };
  const cols = grid.columns;
  /** @type {GridLayout} */
  const layout = { plot, cols, rows: grid.rows, bucket: grid.bucket };
  layouts.set(canvas, layout);

  let [lo, hi] = opts.scale ?? grid.range();
  if (!(hi >= lo)) {
    ctx.fillStyle = text;
    ctx.fillText(opts.empty ?? "waiting for statistics…", plot.x + 8, plot.y + 16);
    return layout;
  }
  if (hi - lo < 1e-9) {
    lo -= 0.5;
    hi += 0.5;
  }
  layout.scale = [lo, hi];

  // One pixel per cell, scaled up without smoothing.
  // Downsampled history can leave a column without a value for some row: such a gap
  // shows the row's previous value (for a few columns), not a hole.
  const img = new ImageData(Math.max(1, cols), grid.rows);
  const carry = new Float64Array(grid.rows).fill(NaN);
  const age = new Uint16Array(grid.rows);
  const maxGap = opts.maxGap ?? 8;
  for (let c = 0; c < cols; c++) {
    for (let r = 0; r < grid.rows; r++) {
      let v = grid.at(r, c);
      const p = (r * img.width + c) * 4;
      if (Number.isNaN(v)) {
        if (age[r] >= maxGap) continue;
        age[r]++;
        v = carry[r];
      } else {
        carry[r] = v;
        age[r] = 0;
      }
      // -Infinity: known to be empty (drawn as background, never carried).
      if (Number.isNaN(v) || v === -Infinity) continue;
      const [R, G, B] = ramp((v - lo) / (hi - lo));
      img.data[p] = R;
      img.data[p + 1] = G;
      img.data[p + 2] = B;
      img.data[p + 3] = 255;
    }
  }
  let off = offscreens.get(canvas);
  if (!off) offscreens.set(canvas, (off = document.createElement("canvas")));
  off.width = img.width;
  off.height = img.height;
  off.getContext("2d")?.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = cssVar("--panel-2");
  ctx.fillRect(plot.x, plot.y, plot.w, plot.h);
  if (cols > 0) ctx.drawImage(off, 0, 0, cols, grid.rows, plot.x, plot.y, plot.w, plot.h);

  // Row labels that do not overlap: blocks' heads first, then every other row that has
  // room (at least 12 px from any label drawn).
  const rowH = plot.h / grid.rows;
  const heads = opts.headRows ?? new Set();
  ctx.strokeStyle = cssVar("--border");
  ctx.lineWidth = 1;
  for (const r of heads) {
    if (r <= 0 || r >= grid.rows) continue;
    const y = Math.round(plot.y + r * rowH) + 0.5;
    ctx.beginPath();
    ctx.moveTo(8, y);
    ctx.lineTo(plot.x + plot.w, y);
    ctx.stroke();
  }
  ctx.fillStyle = text;
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  /** @type {number[]} */
  const drawn = [];
  const order = [...[...heads].filter((r) => r >= 0 && r < grid.rows).sort((a, b) => a - b)];
  for (let r = 0; r < grid.rows; r++) if (!heads.has(r)) order.push(r);
  for (const r of order) {
    const y = plot.y + (r + 0.5) * rowH;
    if (drawn.some((d) => Math.abs(d - y) < 12)) continue;
    const label = opts.rowLabel ? opts.rowLabel(r) : String(r);
    if (!label) continue;
    drawn.push(y);
    ctx.font = heads.has(r) ? `600 ${font}` : font;
    ctx.fillText(fit(ctx, label, gutter - 8), gutter - 6, y);
  }
  ctx.font = font;
  canvas.dataset.labels = String(drawn.length);
  if (opts.selectedRow !== undefined && opts.selectedRow !== null) {
    ctx.strokeStyle = cssVar("--accent");
    ctx.lineWidth = 1.5;
    ctx.strokeRect(plot.x + 0.5, plot.y + opts.selectedRow * rowH + 0.5, plot.w - 1, Math.max(1, rowH - 1));
  }
  // The keyboard's cell: a box around it, in the foreground colour and the page's.
  if (opts.focusCell && cols > 0) {
    const r = cellBox(layout, opts.focusCell.row, opts.focusCell.col);
    ctx.lineWidth = 2;
    ctx.strokeStyle = cssVar("--fg");
    ctx.strokeRect(r.x - 1, r.y - 1, r.w + 2, r.h + 2);
    ctx.strokeStyle = cssVar("--panel");
    ctx.strokeRect(r.x - 3, r.y - 3, r.w + 6, r.h + 6);
  }

  // The step the views show: a line through its column (and the canvas says which step).
  if (opts.cursor !== undefined && opts.cursor !== null && cols > 0 && opts.cursor >= 1) {
    const col = Math.min(cols - 1, Math.floor((opts.cursor - 1) / grid.bucket));
    const x = plot.x + ((col + 0.5) * plot.w) / cols;
    ctx.strokeStyle = cssVar("--accent");
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(x, plot.y);
    ctx.lineTo(x, plot.y + plot.h);
    ctx.stroke();
    canvas.dataset.cursor = String(opts.cursor);
  } else delete canvas.dataset.cursor;

  // Step axis: first and last step, and the middle.
  ctx.textBaseline = "top";
  const lastStep = cols * grid.bucket;
  ctx.textAlign = "left";
  ctx.fillText("1", plot.x, plot.y + plot.h + 3);
  ctx.textAlign = "center";
  ctx.fillText(opts.xLabel ?? "step", plot.x + plot.w / 2, plot.y + plot.h + 3);
  ctx.textAlign = "right";
  ctx.fillText(String(Math.min(lastStep, grid.maxStep)), plot.x + plot.w, plot.y + plot.h + 3);

  // Colour bar.
  const bx = plot.x + plot.w + 8;
  const bw = 10;
  for (let y = 0; y < plot.h; y++) {
    const [R, G, B] = ramp(1 - y / plot.h);
    ctx.fillStyle = `rgb(${R | 0},${G | 0},${B | 0})`;
    ctx.fillRect(bx, plot.y + y, bw, 1.5);
  }
  ctx.fillStyle = text;
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  const ticks = opts.ticks ? opts.ticks(lo, hi) : decadeTicks(lo, hi);
  for (const t of ticks) {
    const y = plot.y + (1 - (t - lo) / (hi - lo)) * plot.h;
    ctx.fillRect(bx + bw, y, 3, 1);
    ctx.fillText(opts.legend ? opts.legend(t) : `1e${t}`, bx + bw + 5, y);
  }
  return layout;
}

/** Integer decades between lo and hi, at most about six of them. */
export function decadeTicks(/** @type {number} */ lo, /** @type {number} */ hi) {
  const first = Math.ceil(lo);
  const last = Math.floor(hi);
  const step = Math.max(1, Math.ceil((last - first + 1) / 6));
  const out = [];
  for (let t = first; t <= last; t += step) out.push(t);
  if (!out.length) out.push((lo + hi) / 2);
  return out;
}

function fit(/** @type {CanvasRenderingContext2D} */ ctx, /** @type {string} */ label, /** @type {number} */ width) {
  if (ctx.measureText(label).width <= width) return label;
  let s = label;
  while (s.length > 3 && ctx.measureText(`…${s}`).width > width) s = s.slice(1);
  return `…${s}`;
}

/**
 * The (row, column, first step, last step) under a mouse event, or null; over the label
 * gutter, the row with a null column.
 * @param {HTMLCanvasElement} canvas
 * @param {MouseEvent} event
 * @returns {{row: number, col: number | null, from?: number, to?: number} | null}
 */
export function cellAt(canvas, event) {
  const layout = layouts.get(canvas);
  if (!layout || !layout.cols) return null;
  const rect = canvas.getBoundingClientRect();
  const x = event.clientX - rect.left - layout.plot.x;
  const y = event.clientY - rect.top - layout.plot.y;
  if (x < 0 || y < 0 || x >= layout.plot.w || y >= layout.plot.h) {
    // The label gutter selects a row too.
    if (x < 0 && y >= 0 && y < layout.plot.h) return { row: Math.floor((y / layout.plot.h) * layout.rows), col: null };
    return null;
  }
  const row = Math.floor((y / layout.plot.h) * layout.rows);
  const col = Math.floor((x / layout.plot.w) * layout.cols);
  return { row, col, from: col * layout.bucket + 1, to: (col + 1) * layout.bucket };
}

/**
 * Shows `tip` with `text` beside the mouse, kept inside the canvas's width.
 * @param {HTMLElement} tip
 * @param {HTMLCanvasElement} canvas
 * @param {MouseEvent} event
 * @param {string} text
 */
export function showTip(tip, canvas, event, text) {
  tip.hidden = false;
  tip.textContent = text;
  const rect = canvas.getBoundingClientRect();
  tip.style.left = `${Math.min(rect.width - 260, event.clientX - rect.left + 12)}px`;
  tip.style.top = `${event.clientY - rect.top + 12}px`;
}

/**
 * The mouse over a drawn grid: `tip` shows what the cell (or the label gutter's row) under
 * it holds, `describe`'s text, and hides where that is empty or when the mouse leaves,
 * unless the keyboard drives the grid (`keyboardActive`); a click calls `onClick` with its row.
 * @param {HTMLCanvasElement} canvas
 * @param {HTMLElement} tip
 * @param {(row: number, col: number | null) => string} describe
 * @param {{keyboardActive: () => boolean, onClick: (row: number) => void}} opts
 */
export function gridPointer(canvas, tip, describe, { keyboardActive, onClick }) {
  canvas.addEventListener("mousemove", (e) => {
    const cell = cellAt(canvas, e);
    const text = cell ? describe(cell.row, cell.col) : "";
    if (!cell || !text) {
      tip.hidden = true;
      return;
    }
    showTip(tip, canvas, e, text);
  });
  canvas.addEventListener("mouseleave", () => { if (!keyboardActive()) tip.hidden = true; });
  canvas.addEventListener("click", (e) => {
    const cell = cellAt(canvas, e);
    if (cell) onClick(cell.row);
  });
}

/**
 * Where cell (row, col) of a drawn grid lies on its canvas, in CSS pixels; a column at
 * least 3 px wide, so that a cursor on it shows.
 * @param {GridLayout} layout
 * @param {number} row
 * @param {number} col
 */
function cellBox(layout, row, col) {
  const { plot } = layout;
  const w = plot.w / Math.max(1, layout.cols);
  const h = plot.h / Math.max(1, layout.rows);
  const x = plot.x + col * w;
  const wide = Math.max(3, w);
  return { x: x + w / 2 - wide / 2, y: plot.y + row * h, w: wide, h };
}

/**
 * Makes a drawn grid reachable and operable by keyboard: the canvas takes the focus (Tab);
 * while the keyboard drives it (not after a mouse's click) the arrow keys move a cursor over
 * its cells (Home and End: the first and last column, Page Up and Page Down: ten rows), and
 * each move shows the cell in `tip` and says it in a live region; Enter or Space acts on the
 * row (`onEnter`, where there is one), as a click does. `redraw` draws the grid with
 * `focusCell()` outlined. `label` names the grid (and what Enter does) to a screen reader.
 * @param {HTMLCanvasElement} canvas
 * @param {HTMLElement} tip
 * @param {{label: string, describe: (row: number, col: number) => string, onEnter?: (row: number) => void, redraw: () => void, startRow?: () => number | null}} opts
 */
export function gridKeyboard(canvas, tip, { label, describe, onEnter, redraw, startRow }) {
  canvas.tabIndex = 0;
  canvas.setAttribute("role", "application");
  canvas.setAttribute("aria-roledescription", "heatmap");
  canvas.setAttribute("aria-label", `${label}; the arrow keys move over its cells`);
  const live = document.createElement("div");
  live.className = "sr-only";
  live.setAttribute("aria-live", "polite");
  canvas.after(live);
  /** @type {{row: number, col: number} | null} */
  let cell = null;
  /** Whether the keyboard drives the grid now (a mouse's click focuses it without a cursor). */
  let keyboard = false;
  const active = () => keyboard && document.activeElement === canvas;

  /** Shows the cursor's cell in the tip; `announce`: says it in the live region too. */
  function show(announce = true) {
    const layout = layouts.get(canvas);
    if (!layout || !cell || !layout.cols) {
      tip.hidden = true;
      return;
    }
    const text = describe(cell.row, cell.col);
    if (announce) live.textContent = text;
    canvas.dataset.focusRow = String(cell.row);
    canvas.dataset.focusCol = String(cell.col);
    const box = cellBox(layout, cell.row, cell.col);
    tip.hidden = false;
    tip.textContent = text;
    const width = tip.offsetWidth || 260;
    tip.style.left = `${Math.max(0, Math.min(canvas.clientWidth - width, box.x + box.w + 8))}px`;
    tip.style.top = `${box.y + box.h + 6}px`;
  }

  /** The cursor kept on the grid as drawn (rows come and go as blocks open and close). */
  function clamp() {
    const layout = layouts.get(canvas);
    if (!layout || !layout.cols) return null;
    if (!cell) {
      const start = startRow?.();
      cell = { row: start ?? 0, col: layout.cols - 1 };
    }
    cell.row = Math.max(0, Math.min(layout.rows - 1, cell.row));
    cell.col = Math.max(0, Math.min(layout.cols - 1, cell.col));
    return layout;
  }

  canvas.addEventListener("mousedown", (e) => {
    keyboard = false;
    const at = cellAt(canvas, e);
    if (at && at.col !== null) cell = { row: at.row, col: at.col };
  });
  canvas.addEventListener("focus", () => {
    keyboard = canvas.matches(":focus-visible");
    if (!keyboard || !clamp()) return;
    redraw();
    show();
  });
  canvas.addEventListener("blur", () => {
    keyboard = false;
    tip.hidden = true;
    redraw();
  });
  canvas.addEventListener("keydown", (e) => {
    keyboard = true;
    const layout = clamp();
    if (!layout || !cell) return;
    /** @type {Record<string, () => void>} */
    const moves = {
      ArrowUp: () => { if (cell) cell.row--; },
      ArrowDown: () => { if (cell) cell.row++; },
      ArrowLeft: () => { if (cell) cell.col--; },
      ArrowRight: () => { if (cell) cell.col++; },
      PageUp: () => { if (cell) cell.row -= 10; },
      PageDown: () => { if (cell) cell.row += 10; },
      Home: () => { if (cell) cell.col = 0; },
      End: () => { if (cell) cell.col = layout.cols - 1; },
    };
    const move = moves[e.key];
    if (move) {
      e.preventDefault();
      move();
      clamp();
      redraw();
      show();
    } else if ((e.key === "Enter" || e.key === " ") && onEnter) {
      e.preventDefault();
      onEnter(cell.row);
      clamp();
      redraw();
      show();
    }
  });

  return {
    /** The cell the keyboard's cursor is on while the grid has the focus, else null. */
    focusCell: () => (active() ? cell : null),
    /** Whether the keyboard drives the grid now (its tip stays while the mouse leaves). */
    active,
    /** After a redraw (new data, or rows that moved): the tip follows, without a new announcement. */
    refresh() {
      if (active() && clamp()) show(false);
    },
  };
}
