// @ts-check
// The dashboard shell: hash routes, the theme, the API token prompt and notices.
//
//   #/              jobs: experiments, the job list, the submit form (`?clone=<id>`: from a job's spec)
//   #/new           the same, opened at the form
//   #/jobs/<id>     one job, live
//   #/experiments/<id>  an experiment: results per cell, loss bands over seeds, its jobs
//   #/compare?ids=  several jobs side by side

import { ApiError, onUnauthorized, setToken, token } from "./api.js";
import { loadUPlot } from "./charts.js";
import { el } from "./widgets.js";

/** An element of index.html. @template {Element} T @param {string} selector @returns {T} */
function part(selector) {
  const found = document.querySelector(selector);
  if (!found) throw new Error(`index.html has no ${selector}`);
  return /** @type {T} */ (found);
}

/** @type {HTMLElement} */
const main = part("#view");
/** @type {HTMLElement} */
const notice = part("#notice");
/** @type {import("./types.js").Teardown | null} */
let teardown = null;
let generation = 0;
let noticeTimer = 0;

function toast(/** @type {string} */ message) {
  notice.textContent = message;
  notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { notice.hidden = true; }, 6000);
}

function offline(/** @type {unknown} */ err) {
  toast(`The server did not answer: ${err instanceof Error ? err.message : err}`);
}

/** @type {import("./types.js").ViewContext} */
const ctx = { toast, offline, reload: () => { route(); } };

async function route() {
  const gen = ++generation;
  if (teardown) {
    try {
      teardown();
    } catch (err) {
      console.warn(err);
    }
    teardown = null;
  }
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = hash.split("?");
  const params = new URLSearchParams(search);
  for (const a of document.querySelectorAll("nav a")) if (a instanceof HTMLElement) a.classList.toggle("active", a.dataset.route === path.split("/")[1]);
  const view = el("div", { class: "view" });
  main.replaceChildren(view);
  main.setAttribute("aria-busy", "true");
  try {
    await loadUPlot();
  } catch {
    view.replaceChildren(el("div", { class: "panel form-error" },
      "The chart library is missing from static/vendor/. Run scripts/web-deps (it installs uPlot from npm and copies it there), then reload."));
    main.removeAttribute("aria-busy");
    return;
  }
  try {
    let done;
    const jobMatch = path.match(/^\/jobs\/([0-9a-f-]+)$/i);
    const experimentMatch = path.match(/^\/experiments\/([0-9a-f-]+)$/i);
    if (experimentMatch) {
      const { experimentView } = await import("./views/experiment.js");
      done = await experimentView(view, ctx, experimentMatch[1]);
    } else if (jobMatch) {
      const { jobView } = await import("./views/job.js");
      done = await jobView(view, ctx, jobMatch[1]);
    } else if (path === "/new") {
      const { jobsView } = await import("./views/jobs.js");
      params.set("new", "");
      done = await jobsView(view, ctx, params);
    } else if (path === "/compare") {
      const { compareView } = await import("./views/compare.js");
      done = await compareView(view, ctx, params);
    } else {
      const { jobsView } = await import("./views/jobs.js");
      done = await jobsView(view, ctx, params);
    }
    if (gen !== generation) done?.();
    else {
      teardown = done;
      moveFocus(view);
    }
  } catch (err) {
    if (gen !== generation) return;
    const status = err instanceof ApiError ? err.status : null;
    view.replaceChildren(el("div", { class: "panel form-error" },
      status === 404 ? `No such ${experimentMatchOf(path) ? "experiment" : "job"} (it may have been deleted).` : `Could not load this page: ${err instanceof Error ? err.message : err}`));
  } finally {
    if (gen === generation) main.removeAttribute("aria-busy");
  }
}

let firstRoute = true;
/**
 * After navigating, the focus goes to the new page's heading (or the element it marks with
 * `data-focus`), so that a keyboard or screen reader user starts there; on the first load
 * it stays where the browser put it.
 */
function moveFocus(/** @type {HTMLElement} */ view) {
  if (firstRoute && !view.querySelector("[data-focus]")) {
    firstRoute = false;
    return;
  }
  firstRoute = false;
  /** @type {HTMLElement | null} */
  const target = view.querySelector("[data-focus]") ?? view.querySelector("h2:not([hidden])");
  if (!target) return;
  if (!target.hasAttribute("tabindex")) target.tabIndex = -1;
  target.focus({ preventScroll: !target.hasAttribute("data-focus") });
}

function experimentMatchOf(/** @type {string} */ path) {
  return path.startsWith("/experiments/");
}

// Theme: follow the system unless the user picked one.
const THEME_KEY = "gradscope.theme";
/** @type {HTMLButtonElement} */
const themeButton = part("#theme");
/** @type {Record<string, string>} */
const THEME_LABELS = { auto: "◐ auto", light: "☀ light", dark: "☾ dark" };
function applyTheme() {
  const choice = localStorage.getItem(THEME_KEY) ?? "auto";
  if (choice === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = choice;
  themeButton.textContent = THEME_LABELS[choice] ?? choice;
  themeButton.title = `Theme: ${choice} (click to change)`;
}
themeButton.addEventListener("click", () => {
  const order = ["auto", "light", "dark"];
  const now = localStorage.getItem(THEME_KEY) ?? "auto";
  localStorage.setItem(THEME_KEY, order[(order.indexOf(now) + 1) % order.length]);
  applyTheme();
  route(); // charts read their colours when they are built
});
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  if ((localStorage.getItem(THEME_KEY) ?? "auto") === "auto") route();
});
applyTheme();

// A server started with --api-token asks for it.
/** @type {HTMLFormElement} */
const tokenForm = part("#token-form");
/** @type {HTMLInputElement} */
const tokenInput = part("#token-form input");
onUnauthorized(() => { tokenForm.hidden = false; });
tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  tokenForm.hidden = true;
  route();
});
tokenInput.value = token();

// The skip link: past the header to the page (a hash link would be read as a route).
part("#skip").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", route);
route();
