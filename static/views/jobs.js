// @ts-check
// The jobs view: the seed experiments, the job list (status, progress, loss sparkline,
// diagnosis) and the submit form.

import { get, isFinished, post, query } from "../api.js";
import { cssVar, lineChart, loadUPlot } from "../charts.js";
import { ago, diagnosisBadges, el, groupBy, num, progressBar, statusBadge } from "../widgets.js";
import { specForm } from "./spec-form.js";

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
const SPARK_POINTS = 80;

/**
 * @param {HTMLElement} root
 * @param {import("../types.js").ViewContext} ctx
 * @returns {Promise<import("../types.js").Teardown>}
 */
export async function jobsView(root, ctx) {
  const uPlot = await loadUPlot();
  /** @type {Preset[]} */
  const presets = (await get("/presets")).presets;
  /** @type {Set<string>} */
  const selected = new Set();
  /** @type {Map<string, {box: HTMLElement, chart: LineChart | null, step: number, fetched: number}>} */
  const sparks = new Map();

  const tbody = el("tbody");
  const empty = el("p", { class: "empty", hidden: true },
    "No jobs yet. Run one of the experiments below — each is a failing run and its remedy — or fill in the form.");
  const compareButton = el("button", { type: "button", disabled: true, onclick: () => {
    location.hash = `#/compare${query({ ids: [...selected] })}`;
  } }, "Compare selected");
  const table = el("table", { class: "jobs" },
    el("thead", {}, el("tr", {},
      el("th", { class: "pick" }), el("th", {}, "name"), el("th", {}, "status"), el("th", {}, "progress"),
      el("th", {}, "loss"), el("th", { class: "num" }, "last"), el("th", {}, "diagnosis"),
      el("th", {}, "model / task"), el("th", {}, "device"), el("th", {}, "created"))),
    tbody);

  const formRoot = el("div");
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
      } }, `Run all ${items.length} and compare`))));

  root.replaceChildren(
    el("section", { class: "panel" },
      el("div", { class: "section-head" }, el("h2", {}, "Jobs"), compareButton),
      el("div", { class: "table-wrap" }, table), empty),
    el("div", { class: "jobs-lower" },
      el("section", { class: "panel" }, el("h2", {}, "New job"), formRoot),
      el("section", { class: "panel" }, el("h2", {}, "Experiments"),
        el("p", { class: "muted" }, "Ready-made pairs from the article on exploding and vanishing gradients: the failing run beside its remedy."),
        experiments)),
  );
  const form = specForm(formRoot, { presets, onSubmitted: (/** @type {Job} */ job) => { location.hash = `#/jobs/${job.id}`; } });

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
      el("td", {}, el("a", { href: `#/jobs/${job.id}` }, job.name)),
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

  async function refresh() {
    /** @type {Job[]} */
    const list = (await get(`/jobs${query({ limit: 100 })}`)).jobs;
    const rows = list.map(row);
    tbody.replaceChildren(...rows);
    empty.hidden = list.length > 0;
    for (const id of [...selected]) if (!list.some((j) => j.id === id)) selected.delete(id);
    compareButton.disabled = selected.size < 2;
    await Promise.all(list.map((j) => refreshSpark(j).catch(() => {})));
  }

  await refresh();
  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh().catch((err) => ctx.offline(err));
  }, REFRESH_MS);
  return () => {
    clearInterval(timer);
    for (const s of sparks.values()) s.chart?.destroy();
  };
}
