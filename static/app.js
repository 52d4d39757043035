// The dashboard shell: hash routes, the theme, the API token prompt and notices.
//
//   #/              jobs: experiments, the job list, the submit form
//   #/jobs/<id>     one job, live
//   #/compare?ids=  several jobs side by side

import { onUnauthorized, setToken, token } from "./api.js";
import { loadUPlot } from "./charts.js";
import { el } from "./format.js";

const main = document.querySelector("#view");
const notice = document.querySelector("#notice");
let teardown = null;
let generation = 0;

function toast(message) {
  notice.textContent = message;
  notice.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { notice.hidden = true; }, 6000);
}

function offline(err) {
  toast(`The server did not answer: ${err?.message ?? err}`);
}

const ctx = { toast, offline };

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
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.route === path.split("/")[1]);
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
    if (jobMatch) {
      const { jobView } = await import("./views/job.js");
      done = await jobView(view, ctx, jobMatch[1]);
    } else if (path === "/compare") {
      const { compareView } = await import("./views/compare.js");
      done = await compareView(view, ctx, params);
    } else {
      const { jobsView } = await import("./views/jobs.js");
      done = await jobsView(view, ctx);
    }
    if (gen !== generation) done?.();
    else teardown = done;
  } catch (err) {
    if (gen !== generation) return;
    view.replaceChildren(el("div", { class: "panel form-error" },
      err.status === 404 ? "No such job (it may have been deleted)." : `Could not load this page: ${err.message}`));
  } finally {
    if (gen === generation) main.removeAttribute("aria-busy");
  }
}

// Theme: follow the system unless the user picked one.
const THEME_KEY = "gradscope.theme";
const themeButton = document.querySelector("#theme");
function applyTheme() {
  const choice = localStorage.getItem(THEME_KEY) ?? "auto";
  if (choice === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = choice;
  themeButton.textContent = { auto: "◐ auto", light: "☀ light", dark: "☾ dark" }[choice];
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
const tokenForm = document.querySelector("#token-form");
onUnauthorized(() => { tokenForm.hidden = false; });
tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenForm.querySelector("input").value.trim());
  tokenForm.hidden = true;
  route();
});
tokenForm.querySelector("input").value = token();

window.addEventListener("hashchange", route);
route();
