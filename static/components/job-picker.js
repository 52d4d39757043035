// @ts-check
// The compare page's picker: the jobs picked, as chips (status, date, short id; unticking
// one drops it), and a search over every job the server holds, by name, status, model and
// task, a page at a time (`GET /jobs` filters and pages; older jobs are a page away, never
// dropped). Each job shows its creation time and the end of its id, so that runs of one
// name are told apart.

import { FINISHED, get, query } from "../api.js";
import { el, jobsPager, statusBadge } from "../widgets.js";

/** @typedef {import("../types.js").Job} Job */

/** Jobs on a page of the picker's list. */
export const PICK_PAGE = 20;
/** Every status a job has, in its life's order. */
const STATUSES = ["queued", "running", ...FINISHED];
/** How long the search waits for typing to pause. */
const SEARCH_MS = 250;
/** How often the list is read again (statuses change while it shows). */
const REFRESH_MS = 5000;

/**
 * The end of a job's id: enough to tell runs apart. (Its start is the time it was created,
 * the same for every job of a minute: ids are UUIDv7.)
 */
export const shortId = (/** @type {string} */ id) => id.slice(-8);

/** A time as `YYYY-MM-DD HH:MM` in the browser's time zone. */
export function when(/** @type {string | null | undefined} */ iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const two = (/** @type {number} */ n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}`;
}

/** What tells a job apart from others of its name: when it was created, and its id's start. */
const whichRun = (/** @type {Job} */ job) => el("span", { class: "muted small run-id", title: `created ${job.created_at}, id ${job.id}` },
  `${when(job.created_at)} · ${shortId(job.id)}`);

/**
 * @param {HTMLElement} container
 * @param {{
 *   selected: () => string[],
 *   onChange: (ids: string[]) => void,
 *   kinds: {model: string[], task: string[]},
 *   swatch: (id: string) => string | null,
 *   offline: (err: unknown) => void,
 * }} options
 *   `selected`: the ids picked, in order; `onChange`: the user picked or dropped one;
 *   `swatch`: the colour a picked job has on the page
 */
export function jobPicker(container, { selected, onChange, kinds, swatch, offline }) {
  /** Records of the picked jobs, by id, as the page last read them. @type {Map<string, Job>} */
  const known = new Map();
  const chips = el("div", { class: "picker", id: "compare-picked", role: "group", "aria-label": "jobs compared" });
  const view = { name: "", status: "", model: "", task: "", page: 0 };

  const toggle = (/** @type {string} */ id, /** @type {boolean} */ on) => {
    const ids = selected().filter((x) => x !== id);
    onChange(on ? [...ids, id] : ids);
  };

  let searchTimer = 0;
  const search = el("input", { type: "search", id: "pick-search", placeholder: "Search jobs by name", "aria-label": "search jobs to compare by name",
    oninput: (/** @type {Event} */ e) => {
      clearTimeout(searchTimer);
      const value = /** @type {HTMLInputElement} */ (e.target).value.trim().slice(0, 200);
      searchTimer = setTimeout(() => {
        view.name = value;
        view.page = 0;
        refresh().catch(offline);
      }, SEARCH_MS);
    } });
  /** A select of `label`, "any" first. @param {"status" | "model" | "task"} key @param {string[]} values */
  const filter = (key, values) => el("select", { id: `pick-${key}`, "aria-label": `${key} of the jobs to compare`, onchange: (/** @type {Event} */ e) => {
    view[key] = /** @type {HTMLSelectElement} */ (e.target).value;
    view.page = 0;
    refresh().catch(offline);
  } }, el("option", { value: "" }, `any ${key}`), values.map((v) => el("option", { value: v }, v)));
  const filters = el("div", { class: "list-filters", role: "search" },
    search, filter("status", STATUSES), filter("model", kinds.model), filter("task", kinds.task));

  const tbody = el("tbody");
  const table = el("table", { class: "jobs pick-list", id: "pick-list" },
    el("thead", {}, el("tr", {}, ["", "name", "status", "model / task", "created · id"].map((h) => el("th", {}, h)))), tbody);
  const empty = el("p", { class: "empty", hidden: true });
  const pager = jobsPager("pick", (by) => {
    view.page = Math.max(0, view.page + by);
    refresh().catch(offline);
  });

  container.replaceChildren(chips, filters, el("div", { class: "table-wrap pick-wrap" }, table), empty, pager.element);

  let chipsDrawn = "";
  /** The chips of the picked jobs, in the order picked (redrawn only when one changed). */
  function drawChips() {
    const ids = selected();
    const key = JSON.stringify(ids.map((id) => [id, known.get(id)?.name, known.get(id)?.status, swatch(id)]));
    if (key === chipsDrawn) return;
    chipsDrawn = key;
    const focused = document.activeElement;
    const focusedId = focused instanceof HTMLInputElement && chips.contains(focused) ? focused.value : null;
    chips.replaceChildren(...(ids.length ? ids.map((id) => {
      const job = known.get(id);
      const colour = swatch(id);
      return el("label", { class: "chip", dataset: { id } },
        el("input", { type: "checkbox", value: id, checked: true, "aria-label": `compare ${job?.name ?? shortId(id)} (${shortId(id)})`,
          onchange: (/** @type {Event} */ e) => toggle(id, /** @type {HTMLInputElement} */ (e.target).checked) }),
        colour ? el("span", { class: "swatch", style: `background:${colour}` }) : null,
        " ", job ? [job.name, " ", whichRun(job)] : el("span", { class: "muted small run-id" }, shortId(id)), " ",
        el("span", { class: "chip-status" }, job ? statusBadge(job.status) : null));
    }) : [el("span", { class: "muted" }, "No job picked yet: tick two or more below.")]));
    if (focusedId) /** @type {HTMLElement | null} */ (chips.querySelector(`input[value="${CSS.escape(focusedId)}"]`))?.focus();
  }

  /** One row of the list, kept (and updated in place) while the job is on the page. @type {Map<string, HTMLTableRowElement>} */
  const rows = new Map();
  function row(/** @type {Job} */ job) {
    let tr = rows.get(job.id);
    if (!tr) {
      const box = `pick-${job.id}`;
      const spec = job.spec;
      tr = el("tr", { dataset: { id: job.id } },
        el("td", { class: "pick" }, el("input", { type: "checkbox", id: box, value: job.id,
          onchange: (/** @type {Event} */ e) => {
            known.set(job.id, job);
            toggle(job.id, /** @type {HTMLInputElement} */ (e.target).checked);
          } })),
        el("td", {}, el("label", { for: box, class: "pick-name" }, job.name)),
        el("td", { class: "pick-status" }),
        el("td", { class: "muted" }, `${spec.model.kind} ${spec.model.layers}×${spec.model.hidden} / ${spec.task.kind}`),
        el("td", {}, whichRun(job)));
      rows.set(job.id, tr);
    }
    const input = /** @type {HTMLInputElement} */ (tr.querySelector("input"));
    input.checked = selected().includes(job.id);
    const status = /** @type {HTMLElement} */ (tr.querySelector(".pick-status"));
    if (status.textContent !== job.status) status.replaceChildren(statusBadge(job.status));
    return tr;
  }

  let reading = 0;
  async function refresh() {
    const mine = ++reading;
    /** @type {{jobs: Job[], total: number}} */
    const answer = await get(`/jobs${query({
      limit: PICK_PAGE, offset: view.page * PICK_PAGE, name: view.name || null, status: view.status || null,
      model: view.model || null, task: view.task || null,
    })}`);
    if (mine !== reading) return;
    const pages = Math.max(1, Math.ceil(answer.total / PICK_PAGE));
    if (view.page >= pages && answer.total > 0) {
      view.page = pages - 1;
      return refresh();
    }
    const list = answer.jobs;
    for (const job of list) if (known.has(job.id)) known.set(job.id, job);
    const shown = list.map(row);
    for (const id of [...rows.keys()]) if (!list.some((j) => j.id === id)) rows.delete(id);
    const current = [...tbody.children];
    if (shown.length !== current.length || shown.some((tr, i) => current[i] !== tr)) {
      const focused = document.activeElement;
      tbody.replaceChildren(...shown);
      if (focused instanceof HTMLElement && tbody.contains(focused) && document.activeElement !== focused) focused.focus();
    }
    table.hidden = list.length === 0;
    const filtered = !!(view.name || view.status || view.model || view.task);
    empty.hidden = list.length > 0;
    empty.textContent = filtered ? "No job matches these filters." : "No jobs to compare yet.";
    pager.show(view.page, PICK_PAGE, list.length, answer.total);
    drawChips();
  }

  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh().catch(offline);
  }, REFRESH_MS);

  return {
    refresh,
    /** The picked jobs' records as last read (their chips show these), then the chips and the list's ticks. */
    setJobs(/** @type {Job[]} */ jobs) {
      for (const job of jobs) known.set(job.id, job);
      drawChips();
      for (const [id, tr] of rows) /** @type {HTMLInputElement} */ (tr.querySelector("input")).checked = selected().includes(id);
    },
    destroy() {
      clearInterval(timer);
      clearTimeout(searchTimer);
    },
  };
}
