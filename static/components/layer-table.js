// @ts-check
// The per-layer table: each layer's latest statistics (the columns the server's `hello`
// names, in its order) and its health as the server's diagnosis states it — the issues in
// force for the layer, and the layers it reported redundant. Click a row to select the
// layer; click a head to sort. By keyboard, Tab reaches the rows (one stop for the whole
// table), the arrow keys move between them and select each layer as they go, Enter or Space
// selects it (or opens or collapses a block), and on a block's row the right and left arrows
// open and collapse it. In the module's order (`#`), the layers of a block
// (`transformer.h.3`) follow a row of the block's own: its aggregate statistics and its
// layers' health, and a button that collapses or opens it. Sorted by anything else, the
// table ranks the layers themselves, without blocks.

import { aggregate } from "../layer-groups.js";
import { el, num, pct, sortableHead } from "../widgets.js";

/** @typedef {import("../store.js").JobData} JobData */
/** @typedef {import("../store.js").LayerRow} LayerRow */
/** @typedef {import("../types.js").Diagnosis} Diagnosis */
/** @typedef {import("../types.js").JobEvent} JobEvent */
/** @typedef {import("../layer-groups.js").LayerGroups} LayerGroups */
/** @typedef {import("../layer-groups.js").LayerGroup} LayerGroup */

/** Short heads for the statistics the dashboard knows; any other shows its own name. */
const LABELS = new Map([
  ["grad_norm", "‖g‖"], ["grad_max", "max |g|"], ["grad_mean", "mean g"], ["grad_std", "std g"],
  ["zero_frac", "zeros"], ["nonfinite", "NaN/Inf"], ["underflow", "underflow"], ["weight_norm", "‖w‖"], ["update_ratio", "update ratio"],
  ["signal_rms", "block out RMS"],
]);

/** Statistics of the gradient, which have no value where it holds a NaN or ±Inf. */
const GRAD_STATS = new Set(["grad_norm", "grad_max", "grad_mean", "grad_std"]);

/**
 * The largest |g| whose square a float32 holds: beyond it a layer's ‖g‖ in single
 * precision is infinite (or is about to be, one step further).
 */
const F32_SQRT_MAX = Math.sqrt(3.4028234663852886e38);

/**
 * How a statistic's value reads: fractions as percentages, counts as integers. A value
 * that was recorded but does not exist says why: `NaN/Inf` where the gradient holds
 * non-finite values, `overflow` for a norm of finite values too large for a float32, and
 * `non-finite` for weights; `–` is no data (or, for a one-element layer's std, no value).
 * @param {string} name
 * @param {import("../types.js").LayerStats | undefined} stats one step's statistics
 * @param {number[]} members the layer (or a block's layers)
 * @param {number | null | undefined} v the value shown
 */
function format(name, stats, members, v) {
  if (name === "zero_frac" || name === "underflow") return pct(v);
  if (name === "nonfinite") return v === null || v === undefined ? "–" : String(v);
  // A layer was recorded at this step when it has a count of non-finite values.
  const recorded = members.filter((m) => typeof stats?.nonfinite?.[m] === "number");
  if ((v === null || v === undefined) && stats?.[name] && recorded.length) {
    const broken = recorded.some((m) => (stats.nonfinite?.[m] ?? 0) > 0);
    if (GRAD_STATS.has(name) && broken) return "NaN/Inf";
    if (name === "grad_norm") return "overflow";
    if (name === "weight_norm") return "non-finite";
  }
  return num(v, 3);
}

/**
 * A block's norm: √Σ of its layers' (`aggregate`), but none where a recorded layer's
 * norm does not exist (overflowed or NaN), since the block's would not either.
 * @param {string} name
 * @param {import("../types.js").LayerStats} stats
 * @param {number[]} members
 * @param {import("../types.js").Layer[]} layers
 */
function blockValue(name, stats, members, layers) {
  const column = stats[name];
  const missing = (name === "grad_norm" || name === "weight_norm") && column
    && members.some((m) => typeof stats.nonfinite?.[m] === "number" && (column[m] === null || column[m] === undefined));
  return missing ? null : aggregate(name, stats, members, layers);
}

/** What `format` shows for a value recorded but not finite. */
const NO_VALUE = new Set(["NaN/Inf", "overflow", "non-finite"]);

/**
 * What one layer's own statistics say, beside the server's diagnosis: gradient values
 * that are NaN/±Inf, and a gradient too large for its norm to exist in a float32.
 * @param {import("../types.js").LayerStats} stats
 * @param {number} step
 * @param {number} layer
 * @returns {Flag[]}
 */
function ownFlags(stats, step, layer) {
  /** @type {Flag[]} */
  const out = [];
  const bad = stats.nonfinite?.[layer] ?? 0;
  if (bad > 0) out.push({ text: "nonfinite", kind: "nonfinite", title: `${bad} NaN/Inf gradient values at step ${step}` });
  const norm = stats.grad_norm?.[layer];
  const max = stats.grad_max?.[layer];
  if (bad === 0 && typeof stats.nonfinite?.[layer] === "number" && stats.grad_norm && (norm === null || norm === undefined)) {
    out.push({ text: "overflow", kind: "overflow", title: `‖g‖ overflowed a float32 at step ${step}` });
  } else if (max !== null && max !== undefined && max > F32_SQRT_MAX) {
    out.push({ text: "overflow", kind: "overflow", title: `max |g| ${num(max, 3)} at step ${step}: its square overflows a float32, so ‖g‖ can no longer be computed in single precision` });
  }
  return out;
}

/** How long the table waits between redraws while steps stream in. */
const TABLE_MS = 300;

/**
 * @typedef {object} Flag
 * @property {string} text
 * @property {string} kind The issue or event kind (its CSS class).
 * @property {string} [title]
 */

/**
 * @param {HTMLElement} container
 * @param {JobData} data
 * @param {{statistics: () => string[], onSelect: (layer: number) => void, onToggle: (block: string) => void, groups: LayerGroups}} options
 */
export function layerTable(container, data, { statistics, onSelect, onToggle, groups }) {
  const stepNote = el("span", { class: "muted small", id: "table-step" });
  const head = el("tr");
  const body = el("tbody");
  container.replaceChildren(
    el("h3", {}, "Layers ", stepNote),
    el("div", { class: "table-wrap" }, el("table", { class: "layers", id: "layer-table" }, el("thead", {}, head), body)));
  const sort = { key: "index", dir: 1 };
  /** @type {Map<number, Flag[]>} */
  let flags = new Map();
  let columns = /** @type {string[]} */ ([]);
  /** @type {Map<LayerGroup, HTMLTableRowElement>} */
  let groupRows = new Map();
  let last = 0;
  let timer = 0;
  /** The row that Tab reaches (the others are out of the tab order). @type {HTMLTableRowElement | null} */
  let active = null;

  /** Puts `tr` in the tab order in place of the row that was, and focuses it if asked. */
  function activate(/** @type {HTMLTableRowElement} */ tr, focus = false) {
    if (active && active !== tr) active.tabIndex = -1;
    active = tr;
    tr.tabIndex = 0;
    if (focus) tr.focus();
  }

  /** What a click does: a layer's row selects it, a block's opens or collapses it. */
  function press(/** @type {HTMLTableRowElement} */ tr) {
    if (tr.dataset.group !== undefined) onToggle(tr.dataset.group);
    else if (tr.dataset.layer !== undefined) onSelect(Number(tr.dataset.layer));
  }

  body.addEventListener("keydown", (e) => {
    const target = /** @type {HTMLElement} */ (e.target);
    const tr = /** @type {HTMLTableRowElement | null} */ (target.closest("tbody > tr"));
    if (!tr || tr.parentElement !== body) return;
    const rows = /** @type {HTMLTableRowElement[]} */ ([...body.children].filter((r) => !(/** @type {HTMLElement} */ (r).hidden)));
    const i = rows.indexOf(tr);
    const group = tr.dataset.group;
    const collapsed = group !== undefined && tr.classList.contains("collapsed");
    /** @type {HTMLTableRowElement | undefined} */
    let next;
    switch (e.key) {
      case "ArrowDown": next = rows[i + 1]; break;
      case "ArrowUp": next = rows[i - 1]; break;
      case "PageDown": next = rows[Math.min(rows.length - 1, i + 10)]; break;
      case "PageUp": next = rows[Math.max(0, i - 10)]; break;
      case "Home": next = rows[0]; break;
      case "End": next = rows[rows.length - 1]; break;
      case "ArrowRight":
      case "ArrowLeft":
        if (group === undefined || collapsed === (e.key === "ArrowLeft")) return;
        e.preventDefault();
        onToggle(group);
        return;
      case "Enter":
      case " ":
        e.preventDefault();
        press(tr);
        return;
      default:
        return;
    }
    e.preventDefault();
    if (!next || next === tr) return;
    activate(next, true);
    if (next.dataset.layer !== undefined) onSelect(Number(next.dataset.layer));
  });

  /**
   * The health flags of every layer from the server's diagnosis and events, and from its
   * latest statistics (non-finite and overflowing gradients).
   */
  function health(/** @type {Diagnosis | null | undefined} */ diagnosis, /** @type {JobEvent[]} */ events) {
    /** @type {Map<number, Flag[]>} */
    const out = new Map();
    const add = (/** @type {number} */ layer, /** @type {Flag} */ flag) => {
      const list = out.get(layer) ?? [];
      if (!list.some((f) => f.kind === flag.kind)) list.push(flag);
      out.set(layer, list);
    };
    for (const issue of diagnosis?.issues ?? []) {
      if (issue.layer !== undefined && issue.layer !== null) add(issue.layer, { text: issue.kind, kind: issue.kind, title: issue.message });
    }
    for (const e of events) if (e.kind === "redundant" && e.layer !== undefined && e.layer !== null) add(e.layer, { text: "redundant", kind: e.kind, title: e.message });
    const latest = data.shown;
    if (latest) for (const l of data.layers) for (const f of ownFlags(latest.stats, latest.step, l.index)) add(l.index, f);
    return out;
  }

  /** @param {LayerRow} l */
  function sortKey(l) {
    if (sort.key === "index") return l.index;
    if (sort.key === "name") return l.name;
    if (sort.key === "shape") return l.numel ?? 0;
    if (sort.key === "health") {
      const f = flags.get(l.index) ?? [];
      return f.filter((x) => x.kind !== "redundant").length * 2 + f.length;
    }
    const v = data.shown?.stats[sort.key]?.[l.index];
    return v === null || v === undefined ? -Infinity : v;
  }

  /** @type {{diagnosis?: Diagnosis | null, events: JobEvent[]}} */
  let source = { events: [] };

  function build() {
    columns = statistics();
    sortableHead(head, [
      { key: "index", label: "#", numeric: true },
      { key: "name", label: "layer" },
      { key: "shape", label: "shape", dir: -1 },
      ...columns.map((s) => ({ key: s, label: LABELS.get(s) ?? s, numeric: true, dir: /** @type {-1} */ (-1) })),
      { key: "health", label: "health", dir: -1 },
    ], sort, () => update(true));
    body.replaceChildren(...data.layers.map((l) => {
      const tr = el("tr", { dataset: { layer: l.index }, tabindex: -1, onclick: () => { activate(tr); onSelect(l.index); } },
        el("td", { class: "num" }, l.index), el("td", { class: "layer-name", title: l.name }, l.name),
        el("td", { class: "muted" }, (l.shape ?? []).join("×")),
        ...columns.map((s) => el("td", { class: `num stat-${s}` }, "–")), el("td", { class: "health" }));
      l.row = tr;
      return tr;
    }));
    groupRows = new Map(groups.groups.map((g) => {
      const numel = g.members.reduce((sum, m) => sum + (data.layers[m]?.numel ?? 0), 0);
      // The row is the keyboard's stop (Enter, or the arrows), so the button is out of the tab order.
      const toggle = el("button", { type: "button", class: "group-toggle", tabindex: -1, "aria-label": `open or collapse ${g.name}`,
        title: "collapse or open the block",
        onclick: (/** @type {Event} */ e) => { e.stopPropagation(); activate(tr); onToggle(g.name); } });
      const tr = el("tr", { class: "group-row", dataset: { group: g.name }, tabindex: -1, onclick: () => { activate(tr); onToggle(g.name); } },
        el("td", { class: "num" }, toggle),
        el("td", { class: "group-name", title: `${g.members.length} layers` }, g.name, el("span", { class: "muted small" }, ` ${g.members.length} layers`)),
        el("td", { class: "muted", title: "parameters in the block" }, numel ? numel.toLocaleString() : ""),
        ...columns.map((s) => el("td", { class: `num group-stat-${s}` }, "–")), el("td", { class: "health" }));
      return [g, tr];
    }));
    active = null;
    update(true);
  }

  /** A block's row: its aggregate statistics, its layers' flags, its state. */
  function updateGroup(/** @type {LayerGroup} */ g, /** @type {HTMLTableRowElement} */ tr) {
    const cells = tr.children;
    const open = !groups.isCollapsed(g);
    tr.classList.toggle("collapsed", !open);
    const toggle = cells[0].firstElementChild;
    if (toggle && toggle.textContent !== (open ? "▾" : "▸")) toggle.textContent = open ? "▾" : "▸";
    toggle?.setAttribute("aria-expanded", String(open));
    const latest = data.shown;
    if (latest) {
      columns.forEach((name, k) => {
        const text = format(name, latest.stats, g.members, blockValue(name, latest.stats, g.members, data.layers));
        const cell = cells[3 + k];
        if (cell.textContent !== text) cell.textContent = text;
      });
    }
    /** @type {Map<string, number>} */
    const kinds = new Map();
    for (const m of g.members) for (const f of flags.get(m) ?? []) kinds.set(f.kind, (kinds.get(f.kind) ?? 0) + 1);
    const text = [...kinds].map(([k, n]) => `${k}×${n}`).join(" ");
    const cell = /** @type {HTMLElement} */ (cells[3 + columns.length]);
    if (cell.dataset.flags !== text) {
      cell.dataset.flags = text;
      cell.replaceChildren(...(kinds.size
        ? [...kinds].map(([k, n]) => el("span", { class: `flag issue-${k}`, title: `${n} of the block's layers` }, n > 1 ? `${k} ×${n}` : k))
        : [el("span", { class: "flag issue-ok" }, "ok")]));
    }
    tr.classList.toggle("selected", !open && data.histLayer !== null && g.members.includes(data.histLayer));
  }

  function update(force = false) {
    const now = performance.now();
    if (!force && now - last < TABLE_MS) {
      if (!timer) timer = setTimeout(() => { timer = 0; update(); }, TABLE_MS);
      return;
    }
    last = now;
    flags = health(source.diagnosis, source.events);
    const latest = data.shown;
    if (latest) stepNote.textContent = `statistics of step ${latest.step}`;
    for (const l of data.layers) {
      if (!l.row) continue;
      const cells = l.row.children;
      if (latest) {
        columns.forEach((name, k) => {
          const text = format(name, latest.stats, [l.index], latest.stats[name]?.[l.index]);
          const cell = cells[3 + k];
          if (cell.textContent !== text) {
            cell.textContent = text;
            cell.classList.toggle("nonfinite-value", NO_VALUE.has(text));
          }
        });
      }
      const own = flags.get(l.index) ?? [{ text: "ok", kind: "ok" }];
      const text = own.map((f) => f.text).join(" ");
      const cell = /** @type {HTMLElement} */ (cells[3 + columns.length]);
      if (cell.dataset.flags !== text) {
        cell.dataset.flags = text;
        cell.replaceChildren(...own.map((f) => el("span", { class: `flag issue-${f.kind}`, title: f.title }, f.text)));
      }
      l.row.classList.toggle("selected", l.index === data.histLayer);
      if (l.index === data.histLayer) l.row.setAttribute("aria-current", "true");
      else l.row.removeAttribute("aria-current");
    }
    // Blocks in the module's order only (either direction); ranked by anything else, layers alone.
    const blocks = sort.key === "index" && groupRows.size > 0;
    /** @type {HTMLTableRowElement[]} */
    let order;
    if (blocks) {
      const rows = groups.rows();
      if (sort.dir < 0) rows.reverse();
      order = [];
      for (const row of rows) {
        const tr = row.kind === "group" ? groupRows.get(row.group) : data.layers[row.layer]?.row;
        // Reversed, a block's row still heads its layers.
        if (tr && row.kind === "group" && sort.dir < 0) {
          const start = order.length - (groups.isCollapsed(row.group) ? 0 : row.group.members.length);
          order.splice(start, 0, tr);
        } else if (tr) order.push(tr);
      }
      for (const [g, tr] of groupRows) updateGroup(g, tr);
    } else {
      order = /** @type {HTMLTableRowElement[]} */ ([...data.layers].sort((a, b) => {
        const ka = sortKey(a);
        const kb = sortKey(b);
        return (ka < kb ? -1 : ka > kb ? 1 : a.index - b.index) * sort.dir;
      }).map((l) => l.row));
    }
    for (const [, tr] of groupRows) tr.hidden = !blocks;
    for (const l of data.layers) {
      if (l.row) l.row.hidden = blocks && !!groups.ofLayer[l.index] && groups.isCollapsed(/** @type {LayerGroup} */ (groups.ofLayer[l.index]));
      l.row?.classList.toggle("in-group", blocks && !!groups.ofLayer[l.index]);
    }
    const shown = new Set(order);
    const hidden = [...groupRows.values(), .../** @type {HTMLTableRowElement[]} */ (data.layers.map((l) => l.row))].filter((tr) => tr && !shown.has(tr));
    const all = [...order, ...hidden];
    const current = [...body.children];
    if (all.some((tr, i) => current[i] !== tr)) {
      const focused = document.activeElement;
      body.append(...all);
      if (focused instanceof HTMLElement && body.contains(focused) && document.activeElement !== focused) focused.focus();
    }
    // Tab reaches one row: the last one used while it shows, else the selected layer's, else the first.
    if (!active || active.hidden || active.parentElement !== body) {
      const selected = data.histLayer === null ? undefined : data.layers[data.histLayer]?.row;
      const first = /** @type {HTMLTableRowElement | undefined} */ (order.find((tr) => !tr.hidden));
      const row = selected && !selected.hidden ? selected : first;
      if (row) activate(row);
    }
  }

  return {
    /** Rebuilds the rows (the layer list or the statistics changed). */
    build,
    /**
     * Shows the latest statistics and the server's diagnosis (at most every 300 ms unless forced).
     * @param {{diagnosis?: Diagnosis | null, events: JobEvent[]}} next
     * @param {boolean} [force]
     */
    update(next, force = false) {
      source = next;
      update(force);
    },
    destroy() {
      clearTimeout(timer);
    },
  };
}
