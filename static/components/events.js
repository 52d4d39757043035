// @ts-check
// The run's events as the server reported them (the diagnosis, validation passes),
// newest first.

import { el } from "../widgets.js";

/** @typedef {import("../types.js").JobEvent} JobEvent */
/** @typedef {import("../types.js").Layer} Layer */

/** Events kept in the list. */
const MAX_SHOWN = 300;

/**
 * @param {HTMLElement} container
 * @param {{layers: () => Layer[], onStep?: (step: number) => void}} options
 *   `onStep`: an event's step was clicked
 */
export function eventList(container, { layers, onStep }) {
  const list = el("ol", { class: "events", reversed: true });
  const empty = el("p", { class: "muted small" }, "No events yet.");
  container.replaceChildren(empty, el("div", { class: "feed-wrap" }, list));
  return {
    /** @param {JobEvent} e */
    add(e) {
      empty.hidden = true;
      const layer = e.layer !== null && e.layer !== undefined ? layers()[e.layer]?.name ?? `#${e.layer}` : null;
      list.prepend(el("li", { class: `event kind-${e.kind}` },
        onStep
          ? el("button", { type: "button", class: "link num step-link", title: "show the per-layer views at this step", onclick: () => onStep(e.step) }, `step ${e.step}`)
          : el("span", { class: "num muted" }, `step ${e.step}`), " ",
        el("span", { class: `badge issue-${e.kind}` }, e.kind), " ",
        layer && !e.message.startsWith(layer) ? [el("code", {}, layer), " "] : null, e.message));
      while (list.children.length > MAX_SHOWN) list.lastChild?.remove();
    },
  };
}
