// @ts-check
// The run's events as the server reported them (the diagnosis, validation passes), newest
// first, filterable by kind. Repeated warnings of one kind are one finding with a count (49
// "vanishing" warnings are one line), opened to list each; validation passes, each with its
// own value, stay one line each.

import { el } from "../widgets.js";

/** @typedef {import("../types.js").JobEvent} JobEvent */
/** @typedef {import("../types.js").Layer} Layer */

/** Events kept (the oldest go first). */
const MAX_KEPT = 5000;
/** Lines of one finding listed when it is opened. */
const MAX_LISTED = 200;
/** How long the list waits before drawing again while events arrive. */
const DRAW_MS = 200;

/** Kinds each event of which stays a line of its own: results, not warnings. */
const single = (/** @type {string} */ kind) => kind === "validation" || kind.startsWith("validation_");

/**
 * @param {HTMLElement} container
 * @param {{layers: () => Layer[], onStep?: (step: number) => void}} options
 *   `onStep`: an event's step was clicked
 */
export function eventList(container, { layers, onStep }) {
  const list = el("ol", { class: "events", id: "event-list" });
  const empty = el("p", { class: "muted small" }, "No events yet.");
  const kindPicker = /** @type {HTMLSelectElement} */ (el("select", { id: "event-kind", "aria-label": "events of kind", onchange: draw }));
  container.replaceChildren(el("div", { class: "events-head" }, kindPicker), empty, el("div", { class: "feed-wrap" }, list));
  /** @type {JobEvent[]} */
  const events = [];
  let timer = 0;

  const layerOf = (/** @type {JobEvent} */ e) => (e.layer !== null && e.layer !== undefined ? layers()[e.layer]?.name ?? `#${e.layer}` : null);
  const stepOf = (/** @type {number} */ step) => (onStep
    ? el("button", { type: "button", class: "link num step-link", title: "show the per-layer views at this step", onclick: () => onStep(step) }, `step ${step}`)
    : el("span", { class: "num muted" }, `step ${step}`));
  /** One event's line. @param {JobEvent} e */
  const line = (e) => {
    const layer = layerOf(e);
    return el("li", { class: `event kind-${e.kind}`, dataset: { kind: e.kind } },
      stepOf(e.step), " ",
      el("span", { class: `badge issue-${e.kind}` }, e.kind), " ",
      layer && !e.message.startsWith(layer) ? [el("code", {}, layer), " "] : null, e.message);
  };

  function draw() {
    timer = 0;
    /** @type {Map<string, JobEvent[]>} */
    const byKind = new Map();
    for (const e of events) byKind.set(e.kind, [...(byKind.get(e.kind) ?? []), e]);
    const chosen = kindPicker.value;
    kindPicker.replaceChildren(el("option", { value: "" }, `all kinds (${events.length})`),
      ...[...byKind].map(([kind, of]) => el("option", { value: kind, selected: kind === chosen }, `${kind} (${of.length})`)));
    if (chosen && !byKind.has(chosen)) kindPicker.value = "";
    const kind = kindPicker.value;
    /** Lines, each with the step it sorts by (its newest event's). @type {[number, HTMLElement][]} */
    const lines = [];
    for (const [k, of] of byKind) {
      if (kind && k !== kind) continue;
      if (single(k) || of.length === 1) {
        for (const e of of) lines.push([e.step, line(e)]);
        continue;
      }
      const newest = of[of.length - 1];
      const named = new Set(of.map(layerOf).filter((n) => n !== null));
      lines.push([newest.step, el("li", { class: `event finding kind-${k}`, dataset: { kind: k, count: of.length } },
        el("details", {},
          el("summary", {},
            el("span", { class: `badge issue-${k}` }, k), " ", el("b", { class: "num" }, `×${of.length}`), " ",
            el("span", { class: "muted small" }, `steps ${of[0].step}–${newest.step}${named.size ? `, ${named.size} layer${named.size === 1 ? "" : "s"}` : ""}; latest: `),
            newest.message),
          el("ol", { class: "events" }, of.slice(-MAX_LISTED).reverse().map(line))))]);
    }
    lines.sort((a, b) => b[0] - a[0]);
    // Findings the user opened stay open.
    const open = new Set([...list.querySelectorAll("li.finding > details[open]")].map((d) => /** @type {HTMLElement} */ (d.parentElement).dataset.kind));
    list.replaceChildren(...lines.map(([, li]) => li));
    for (const li of list.querySelectorAll("li.finding")) if (open.has(/** @type {HTMLElement} */ (li).dataset.kind)) li.querySelector("details")?.setAttribute("open", "");
    empty.hidden = events.length > 0;
  }

  return {
    /** @param {JobEvent} e */
    add(e) {
      events.push(e);
      if (events.length > MAX_KEPT) events.splice(0, events.length - MAX_KEPT);
      if (!timer) timer = setTimeout(draw, DRAW_MS);
    },
  };
}
