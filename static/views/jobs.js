// @ts-check
// The jobs view: the seed experiments, the experiments (grids × seeds) and the job list
// (status, progress, loss sparkline, diagnosis), and the submit form.

import { get, isFinished, post, query } from "../api.js";
import { cssVar, lineChart, loadUPlot } from "../charts.js";
import { FINISHED } from "../api.js";
import { ago, diagnosisBadges, el, groupBy, jobsPager, num, progressBar, setTitle, sortableHead, statusBadge } from "../widgets.js";
import { specForm, specSchema } from "./spec-form.js";

/** @typedef {import("../types.js").Job} Job */
/** @typedef {import("../charts.js").LineChart} LineChart */
/** @typedef {{name: string, group: string, role: string, description: string, spec: import("../types.js").JobSpec}} Preset */

/** @type {Record<string, string>} */
const GROUP_TITLES = {
  exploding: "Exploding gradients → gradient clipping",
  vanishing: "Vanishing gradients → normalisation",
  weight_growth: "Growing weights → weight clipping and scaling",
  transformer: "Deep transformers → pre-LN or warm-up",
};

const REFRESH_MS = 2000;
const NO_JOBS = "No jobs yet. Run one of the experiments below — each is a failing run and its remedy — or fill in the form.";
/** Jobs on a page of the list. */
export const PAGE_SIZE = 25;
/** Every status a job has, in its life's order. */
const STATUSES = ["queued", "running", ...FINISHED];
/** How long the search waits for typing to pause. */
const SEARCH_MS = 250;
const SPARK_POINTS = 80;
/** Seeds of the ready-made experiments. */
export const PRESET_SEEDS = 5;

/**
 * The paths (dotted keys) where the specs differ, recursing into objects where they all
 * are objects; lists and other values are compared whole. `name` is left out.
 * @param {unknown[]} values
 * @param {string[]} [path]
 * @returns {string[][]}
 */
function differences(values, path = []) {
  const same = values.every((v) => JSON.stringify(v) === JSON.stringify(values[0]));
  if (same) return [];
  const objects = values.every((v) => v !== null && typeof v === "object" && !Array.isArray(v));
  if (!objects) return [path];
  const records = /** @type {Record<string, unknown>[]} */ (values);
  const keys = [...new Set(records.flatMap((v) => Object.keys(v)))].filter((k) => !(path.length === 0 && k === "name"));
  return keys.flatMap((k) => differences(records.map((v) => v[k]), [...path, k]));
}

/**
 * A group of presets as one experiment: the first (failing) spec as the base, one axis per
 * field where the group's specs differ (their values in order; with one axis, labelled by
 * the presets' names), `seeds` seeds each.
 * @param {string} name
 * @param {Preset[]} items
 * @param {number} seeds
 */
export function presetExperiment(name, items, seeds) {
  const specs = items.map((p) => p.spec);
  const base = { ...specs[0] };
  delete base.name;
  const paths = differences(specs);
  const axes = paths.map((path) => {
    const at = (/** @type {any} */ spec) => path.reduce((v, k) => (v === null || v === undefined ? v : v[k]), spec);
    /** @type {unknown[]} */
    const values = [];
    /** @type {string[]} */
    const labels = [];
    for (const [i, spec] of specs.entries()) {
      const v = at(spec);
      if (values.some((w) => JSON.stringify(w) === JSON.stringify(v))) continue;
      values.push(v);
      labels.push(items[i].name);
    }
    return paths.length === 1 ? { path: path.join("."), values, labels } : { path: path.join("."), values };
  });
  return { name, base, axes, seeds };
}

/**
 * @param {HTMLElement} root
 * @param {import("../types.js").ViewContext} ctx
 * @param {URLSearchParams} [params] `clone`: a job whose spec the form starts from
 * @returns {Promise<import("../types.js").Teardown>}
 */
export async function jobsView(root, ctx, params = new URLSearchParams()) {
  const uPlot = await loadUPlot();
  setTitle("Jobs");
  /** @type {Preset[]} */
  const presets = (await get("/presets")).presets;
  /** @type {Set<string>} */
  const selected = new Set();
  /** @type {Map<string, {box: HTMLElement, chart: LineChart | null, step: number, fetched: number}>} */
  const sparks = new Map();

  const tbody = el("tbody");
  const empty = el("p", { class: "empty", hidden: true }, NO_JOBS);
  const compareButton = el("button", { type: "button", disabled: true, onclick: () => {
    location.hash = `#/compare${query({ ids: [...selected] })}`;
  } }, "Compare selected");
  // The list's filters, order and page: the server filters, sorts and pages (older jobs
  // are a page away, never dropped).
  const view = { name: "", status: "", model: "", task: "", page: 0 };
  const sort = { key: "created", dir: -1 };
  /** A select of `label`, "any" first. @param {string} id @param {string} label @param {string[]} values */
  const picker = (id, label, values) => el("select", { id, "aria-label": label, onchange: (/** @type {Event} */ e) => {
    view[/** @type {"status" | "model" | "task"} */ (id.slice("filter-".length))] = /** @type {HTMLSelectElement} */ (e.target).value;
    view.page = 0;
    refresh().catch(ctx.offline);
  } }, el("option", { value: "" }, `any ${label}`), values.map((v) => el("option", { value: v }, v)));
  let searchTimer = 0;
  const search = el("input", { type: "search", id: "job-search", placeholder: "Search by name", "aria-label": "search jobs by name", oninput: (/** @type {Event} */ e) => {
    clearTimeout(searchTimer);
    const value = /** @type {HTMLInputElement} */ (e.target).value.trim().slice(0, 200);
    searchTimer = setTimeout(() => {
      view.name = value;
      view.page = 0;
      refresh().catch(ctx.offline);
    }, SEARCH_MS);
  } });
  const schema = await specSchema().catch(() => null);
  const modelKinds = schema?.fields("ModelSpec").kind?.options ?? [...new Set(presets.map((p) => p.spec.model.kind))];
  const taskKinds = schema ? Object.keys(schema.tasks) : [...new Set(presets.map((p) => p.spec.task.kind))];
  // A preset's jobs carry its spec's name: picking one searches for it.
  const presetNames = [...new Set(presets.map((p) => p.spec.name).filter((n) => typeof n === "string" && n))];
  const presetPicker = el("select", { id: "filter-preset", "aria-label": "preset", onchange: (/** @type {Event} */ e) => {
    const value = /** @type {HTMLSelectElement} */ (e.target).value;
    /** @type {HTMLInputElement} */ (search).value = value;
    view.name = value;
    view.page = 0;
    refresh().catch(ctx.offline);
  } }, el("option", { value: "" }, "any preset"), presetNames.map((n) => el("option", { value: n }, n)));
  const filters = el("div", { class: "list-filters", role: "search" },
    search, picker("filter-status", "status", STATUSES), picker("filter-model", "model", modelKinds),
    picker("filter-task", "task", taskKinds), presetPicker);
  const pager = jobsPager("page", (by) => {
    view.page = Math.max(0, view.page + by);
    refresh().catch(ctx.offline);
  });
  const headRow = el("tr");
  sortableHead(headRow, [
    { key: "pick", label: "", fixed: true }, { key: "name", label: "name" }, { key: "status", label: "status" },
    { key: "step", label: "progress", dir: -1 }, { key: "spark", label: "loss", fixed: true },
    { key: "loss", label: "last", numeric: true }, { key: "diagnosis", label: "diagnosis", fixed: true },
    { key: "kind", label: "model / task", fixed: true }, { key: "device", label: "device", fixed: true },
    { key: "created", label: "created", dir: -1 },
  ], sort, () => {
    view.page = 0;
    refresh().catch(ctx.offline);
  });
  const table = el("table", { class: "jobs", id: "job-list" }, el("thead", {}, headRow), tbody);

  const formRoot = el("div");
  const formNote = el("p", { class: "muted", id: "form-note", hidden: true });
  const formHeading = el("h2", { tabindex: -1, id: "new-job-heading" }, "New job");
  const experiments = el("div", { class: "experiments" },
    groupBy(presets, (p) => p.group).map(([group, items]) => el("article", { class: "card experiment" },
      el("h3", {}, GROUP_TITLES[group] ?? group),
      el("ul", {}, items.map((p) => el("li", {},
        el("span", { class: `role role-${p.role}` }, p.role), " ",
        el("button", { type: "button", class: "link", title: "Load into the form", onclick: () => {
          form.load(p.spec);
          formRoot.scrollIntoView({ behavior: "smooth" });
        } }, p.name),
        el("div", { class: "muted small" }, p.description)))),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "primary small", onclick: async (/** @type {MouseEvent} */ e) => {
          const button = /** @type {HTMLButtonElement} */ (e.target);
          button.disabled = true;
          try {
            /** @type {Job[]} */
            const created = [];
            for (const p of items) created.push(await post("/jobs", p.spec));
            location.hash = `#/compare${query({ ids: created.map((j) => j.id) })}`;
          } catch (err) {
            ctx.toast(`Could not submit: ${err instanceof Error ? err.message : err}`);
            button.disabled = false;
          }
        } }, `Run all ${items.length} and compare`),
        el("button", { type: "button", class: "small", dataset: { group }, title: `Every variant as an experiment, ${PRESET_SEEDS} seeds each, with error bars`, onclick: async (/** @type {MouseEvent} */ e) => {
          const button = /** @type {HTMLButtonElement} */ (e.target);
          button.disabled = true;
          try {
            const created = await post("/experiments", presetExperiment(`${group} × ${PRESET_SEEDS} seeds`, items, PRESET_SEEDS));
            location.hash = `#/experiments/${created.id}`;
          } catch (err) {
            ctx.toast(`Could not submit: ${err instanceof Error ? err.message : err}`);
            button.disabled = false;
          }
        } }, `Run with ${PRESET_SEEDS} seeds`)))));

  const experimentsBody = el("tbody");
  const experimentsPanel = el("section", { class: "panel", hidden: true },
    el("h2", {}, "Experiments"),
    el("div", { class: "table-wrap" }, el("table", { class: "jobs", id: "experiments" },
      el("thead", {}, el("tr", {}, ["name", "status", "progress", "grid", "created"].map((h) => el("th", {}, h)))),
      experimentsBody)));

  root.replaceChildren(
    experimentsPanel,
    el("section", { class: "panel" },
      el("div", { class: "section-head" }, el("h2", {}, "Jobs"), compareButton),
      filters,
      el("div", { class: "table-wrap" }, table), empty, pager.element),
    el("div", { class: "jobs-lower" },
      el("section", { class: "panel", id: "new-job" }, formHeading, formNote, formRoot),
      el("section", { class: "panel" }, el("h2", {}, "Experiments"),
        el("p", { class: "muted" }, "Ready-made pairs from the article on exploding and vanishing gradients: the failing run beside its remedy."),
        experiments)),
  );
  const form = specForm(formRoot, { presets, onSubmitted: (/** @type {Job} */ job) => { location.hash = `#/jobs/${job.id}`; } });
  const cloneOf = params.get("clone");
  if (cloneOf) {
    /** @type {Job} */
    const original = await get(`/jobs/${encodeURIComponent(cloneOf)}`);
    form.load({ ...original.spec, name: `${original.name} (copy)` });
    formNote.hidden = false;
    formNote.textContent = `A copy of ${original.name}'s spec: edit it and submit.`;
    setTitle(`New job from ${original.name}`);
  } else if (params.has("new")) setTitle("New job");
  // Opened for a new job: the form is where the page starts, and where the focus goes.
  if (cloneOf || params.has("new")) {
    formHeading.dataset.focus = "";
    formHeading.closest("section")?.scrollIntoView({ block: "start", behavior: "instant" });
  }

  function row(/** @type {Job} */ job) {
    const check = el("input", { type: "checkbox", checked: selected.has(job.id), "aria-label": `select ${job.name}`, onchange: () => {
      if (check.checked) selected.add(job.id);
      else selected.delete(job.id);
      compareButton.disabled = selected.size < 2;
    } });
    let spark = sparks.get(job.id);
    if (!spark) {
      spark = { box: el("div", { class: "spark" }), chart: null, step: -1, fetched: 0 };
      sparks.set(job.id, spark);
    }
    const spec = job.spec;
    return el("tr", { dataset: { id: job.id } },
      el("td", { class: "pick" }, check),
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.name),
        job.experiment_id ? [" ", el("a", { class: "small muted experiment-link", href: `#/experiments/${job.experiment_id}`, title: "its experiment" }, `experiment, cell ${job.cell}`)] : null),
      el("td", {}, statusBadge(job.status)),
      el("td", {}, progressBar(job)),
      el("td", { class: "spark-cell" }, spark.box),
      el("td", { class: "num" }, num(job.loss)),
      el("td", { class: "badges" }, diagnosisBadges(job)),
      el("td", { class: "muted" }, `${spec.model.kind} ${spec.model.layers}×${spec.model.hidden} / ${spec.task.kind}`),
      el("td", {}, job.device ?? spec.device),
      el("td", { title: job.created_at }, ago(job.created_at)));
  }

  async function refreshSpark(/** @type {Job} */ job) {
    const spark = sparks.get(job.id);
    const now = Date.now();
    if (!spark || job.step === spark.step || job.step === 0) return;
    if (!isFinished(job) && now - spark.fetched < 3000 && spark.chart) return;
    spark.step = job.step;
    spark.fetched = now;
    /** @type {import("../types.js").StepsResponse} */
    const steps = await get(`/jobs/${job.id}/steps${query({ max_points: SPARK_POINTS })}`);
    const loss = steps.loss;
    if (!spark.chart) {
      spark.chart = lineChart(uPlot, spark.box, {
        series: [{ label: "loss", color: cssVar("--accent"), width: 1.25 }],
        height: 28, sparkline: true,
      });
    }
    spark.chart.setData([steps.step, loss]);
  }

  async function refreshExperiments() {
    /** @type {{id: string, name: string, status: string, created_at: string, cells: unknown[], spec: {seeds: number}, progress: {step: number, total_steps: number, jobs: number}}[]} */
    const list = (await get(`/experiments${query({ limit: 20 })}`)).experiments;
    experimentsPanel.hidden = list.length === 0;
    experimentsBody.replaceChildren(...list.map((x) => el("tr", { dataset: { id: x.id } },
      el("td", {}, el("a", { href: `#/experiments/${x.id}` }, x.name)),
      el("td", {}, statusBadge(x.status)),
      el("td", {}, progressBar({ step: x.progress.step, total_steps: x.progress.total_steps, status: x.status === "finished" ? "succeeded" : "running" })),
      el("td", { class: "muted" }, `${x.cells.length} cells × ${x.spec.seeds} seeds`),
      el("td", { title: x.created_at }, ago(x.created_at)))));
  }

  async function refresh() {
    await refreshExperiments();
    /** @type {{jobs: Job[], total: number}} */
    const answer = await get(`/jobs${query({
      limit: PAGE_SIZE, offset: view.page * PAGE_SIZE, name: view.name || null, status: view.status || null,
      model: view.model || null, task: view.task || null, sort: sort.key, order: sort.dir > 0 ? "asc" : "desc",
    })}`);
    const pages = Math.max(1, Math.ceil(answer.total / PAGE_SIZE));
    // Jobs deleted since: back to the last page there is.
    if (view.page >= pages && answer.total > 0) {
      view.page = pages - 1;
      return refresh();
    }
    const list = answer.jobs;
    const filtered = !!(view.name || view.status || view.model || view.task);
    pager.show(view.page, PAGE_SIZE, list.length, answer.total);
    empty.textContent = filtered ? "No job matches these filters." : NO_JOBS;
    const rows = list.map(row);
    tbody.replaceChildren(...rows);
    empty.hidden = list.length > 0;
    // Picked jobs stay picked while they are on other pages or filtered out.
    compareButton.disabled = selected.size < 2;
    await Promise.all(list.map((j) => refreshSpark(j).catch(() => {})));
  }

  await refresh();
  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh().catch((err) => ctx.offline(err));
  }, REFRESH_MS);
  return () => {
    clearInterval(timer);
    clearTimeout(searchTimer);
    for (const s of sparks.values()) s.chart?.destroy();
  };
}
