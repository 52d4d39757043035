// @ts-check
// What the views share: the DOM builder, number and time formatting, and the small
// widgets every page shows the same way (status, diagnosis badges, progress, figures,
// sortable table heads, a spec in one line).

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").JobSpec} JobSpec */

/** A number in at most `digits` significant digits; exponents for very small or large ones. */
export function num(/** @type {number | null | undefined} */ v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (!Number.isFinite(v)) return Number.isNaN(v) ? "NaN" : v > 0 ? "+Inf" : "−Inf";
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(Math.max(0, digits - 2));
  return Number(v.toPrecision(digits)).toString();
}

export function pct(/** @type {number | null | undefined} */ v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return `${(v * 100).toFixed(v < 0.1 ? 1 : 0)}%`;
}

export function duration(/** @type {number} */ ms) {
  if (!Number.isFinite(ms) || ms < 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

export function ago(/** @type {string | null | undefined} */ iso) {
  if (!iso) return "";
  const ms = Date.now() - new Date(iso).getTime();
  if (ms < 60_000) return "just now";
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ago`;
  if (ms < 86_400_000) return `${Math.floor(ms / 3_600_000)} h ago`;
  return new Date(iso).toLocaleDateString();
}

/** @typedef {Node | string | number | null | undefined | false} Leaf */
/** @typedef {Leaf | Leaf[] | Leaf[][]} Child */

/**
 * `el("div", {class: "x", onclick: f}, child, "text")`: a small DOM builder.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, any>} [attrs]
 * @param {...Child} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  /** @type {Record<string, any>} */
  const props = node;
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node && typeof v !== "string") props[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  append(node, children);
  return node;
}

function append(/** @type {Element} */ node, /** @type {Child[]} */ children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/**
 * Items grouped by `key`, groups in order of first appearance.
 * @template T, K
 * @param {T[]} items
 * @param {(item: T) => K} key
 * @returns {[K, T[]][]}
 */
export function groupBy(items, key) {
  /** @type {Map<K, T[]>} */
  const groups = new Map();
  for (const item of items) {
    const k = key(item);
    const group = groups.get(k);
    if (group) group.push(item);
    else groups.set(k, [item]);
  }
  return [...groups.entries()];
}

export function statusBadge(/** @type {string} */ status) {
  return el("span", { class: `status status-${status}` }, status);
}

/**
 * The server's diagnosis of a job as badges: one per kind of issue in force (its messages
 * in the tooltip), or the status when there is none.
 * @param {Job} job
 */
export function diagnosisBadges(job) {
  const d = job.diagnosis;
  if (!d) return [];
  const badges = groupBy(d.issues ?? [], (i) => i.kind).map(([kind, issues]) => el("span", {
    class: `badge issue-${kind} ${d.status}`,
    title: issues.map((i) => i.message).join("\n"),
  }, issues.length > 1 ? `${kind} ×${issues.length}` : kind));
  if (!badges.length) badges.push(el("span", { class: "badge healthy", title: "no active issues" }, d.status || "healthy"));
  return badges;
}

/** @param {Pick<Job, "step" | "total_steps" | "status">} job */
export function progressBar(job) {
  const frac = job.total_steps ? Math.min(1, job.step / job.total_steps) : 0;
  return el("div", { class: "progress", title: `${job.step} / ${job.total_steps}` },
    el("div", { class: `bar status-${job.status}`, style: `width:${(frac * 100).toFixed(1)}%` }),
    el("span", {}, `${job.step} / ${job.total_steps}`));
}

/**
 * @typedef {object} Figure One labelled number of a summary.
 * @property {string} key Stable name (the element's `data-figure`).
 * @property {string} label
 * @property {string} text
 * @property {number | null} [value] The number shown, unrounded (`data-value`).
 */

/** Labelled figures in a row: `data-figure` names each, `data-value` holds the number. */
export function figures(/** @type {Figure[]} */ list) {
  return list.map((f) => el("div", { class: "figure", dataset: { figure: f.key, ...(f.value !== null && f.value !== undefined ? { value: String(f.value) } : {}) } },
    el("span", {}, f.label), el("b", { class: "num" }, f.text)));
}

/**
 * A table head whose columns sort on click: the first click sorts by the column (in its
 * `dir`), the next ones reverse it. Each head is a button (reachable with Tab, pressed with
 * Enter or Space) and its cell says the order (`aria-sort`).
 * @param {HTMLTableRowElement} row
 * @param {{key: string, label: string, numeric?: boolean, dir?: 1 | -1, fixed?: boolean}[]} columns
 *   `fixed`: a column that does not sort
 * @param {{key: string, dir: number}} sort Current order; changed in place.
 * @param {() => void} onSort
 */
export function sortableHead(row, columns, sort, onSort) {
  const draw = (/** @type {string | null} */ focus = null) => {
    row.replaceChildren(...columns.map((c) => {
      if (c.fixed) return el("th", { class: c.numeric ? "num" : "", dataset: { key: c.key } }, c.label);
      const on = c.key === sort.key;
      return el("th", {
        class: `${c.numeric ? "num " : ""}sortable${on ? (sort.dir > 0 ? " asc" : " desc") : ""}`,
        dataset: { key: c.key }, "aria-sort": on ? (sort.dir > 0 ? "ascending" : "descending") : "none",
        onclick: () => {
          sort.dir = sort.key === c.key ? -sort.dir : (c.dir ?? 1);
          sort.key = c.key;
          draw(c.key);
          onSort();
        },
      }, el("button", { type: "button", class: "sort-button", title: `sort by ${c.label || c.key}` }, c.label));
    }));
    if (focus) /** @type {HTMLElement | null} */ (row.querySelector(`th[data-key="${CSS.escape(focus)}"] button`))?.focus();
  };
  draw();
}

/** A job's spec in one line: model, task, optimizer, policies. */
export function describeSpec(/** @type {JobSpec} */ spec) {
  const m = spec.model;
  const t = spec.task;
  const o = spec.optimizer;
  const model = `${m.kind} ${m.layers}×${m.hidden}${m.norm && m.norm !== "none" ? ` ${m.norm}-norm` : ""}${m.kind === "transformer" ? ` ${m.norm_position}-LN` : ""}${m.activation ? ` ${m.activation}` : ""}${m.residual ? " residual" : ""}${m.init_scale !== 1 ? ` init×${m.init_scale}` : ""}`;
  const task = `${t.kind}${t.seq_len ? ` (seq ${t.seq_len})` : ""}`;
  const opt = `${o.kind} lr ${o.lr}${o.warmup_steps ? ` warm-up ${o.warmup_steps}` : ""}${o.schedule && o.schedule !== "constant" ? ` ${o.schedule}` : ""}`;
  /** @type {Record<string, unknown>[]} */
  const policies = [...(spec.policy?.grad ?? []), ...(spec.policy?.weight ?? []).map((/** @type {Record<string, unknown>} */ p) => ({ ...p, kind: `weight ${p.kind}` }))];
  const pols = policies.map((p) => `${p.kind}(${Object.entries(p).filter(([k]) => k !== "kind").map(([, v]) => v).join(", ")})`);
  return [model, task, opt, pols.length ? pols.join(" → ") : "no policies"].join(" · ");
}

/**
 * Asks before an action that cannot be undone: a modal dialog with `message`, a button
 * that does it (`action`, focused last, so Enter does not do it by accident: the safe
 * choice has the focus) and one that keeps things as they are. Resolves true when the
 * user confirmed; Escape or the other button resolve false.
 * @param {string} message
 * @param {string} action
 * @param {string} [keep]
 * @returns {Promise<boolean>}
 */
export function confirmAction(message, action, keep = "Keep it") {
  return new Promise((resolve) => {
    const yes = el("button", { type: "button", class: "danger", value: "yes", id: "confirm-yes" }, action);
    const no = el("button", { type: "button", value: "no", id: "confirm-no" }, keep);
    const text = el("p", { id: "confirm-text" }, message);
    const dialog = /** @type {HTMLDialogElement} */ (el("dialog", { class: "confirm", "aria-labelledby": "confirm-text" },
      text, el("div", { class: "actions" }, no, yes)));
    let answer = false;
    yes.addEventListener("click", () => { answer = true; dialog.close(); });
    no.addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(answer);
    });
    document.body.append(dialog);
    dialog.showModal();
    no.focus();
  });
}

/** The document's title: what the page shows, then the service. @param {string} what */
export function setTitle(what) {
  document.title = `${what} · gradscope`;
}

/**
 * The pager of a list of jobs: "‹ Newer" and "Older ›" around a line such as "21–40 of 95
 * jobs, page 2 of 5"; its parts have the ids `PREFIX-prev`, `PREFIX-next` and
 * `PREFIX-note`. `turn` is called with -1 or 1; `show` sets it for a page of `size` rows
 * of which `shown` are shown, out of `total`, and hides it when one page holds them all.
 * @param {string} prefix
 * @param {(by: number) => void} turn
 */
export function jobsPager(prefix, turn) {
  const note = el("span", { id: `${prefix}-note`, class: "muted small", role: "status" });
  const prev = el("button", { type: "button", id: `${prefix}-prev`, onclick: () => turn(-1) }, "‹ Newer");
  const next = el("button", { type: "button", id: `${prefix}-next`, onclick: () => turn(1) }, "Older ›");
  const element = el("div", { class: "pager" }, prev, note, next);
  /** @param {number} page @param {number} size @param {number} shown @param {number} total */
  const show = (page, size, shown, total) => {
    const pages = Math.max(1, Math.ceil(total / size));
    note.textContent = total
      ? `${page * size + 1}–${page * size + shown} of ${total} job${total === 1 ? "" : "s"}, page ${page + 1} of ${pages}`
      : "";
    prev.disabled = page === 0;
    next.disabled = page + 1 >= pages;
    element.hidden = total <= size;
  };
  return { element, show };
}
