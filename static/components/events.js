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
 * @param {{layers: () => Layer[]}} options
 */
export function eventList(container, { layers }) {
  const list = el("ol", { class: "events", reversed: true });
  const empty = el("p", { class: "muted small" }, "No events yet.");
  container.replaceChildren(empty, el("div", { class: "feed-wrap" }, list));
  return {
    /** @param {JobEvent} e */
    add(e) {
      empty.hidden = true;
      const layer = e.layer !== null && e.layer !== undefined ? layers()[e.layer]?.name ?? `#${e.layer}` : null;
      list.prepend(el("li", { class: `event kind-${e.kind}` },
        el("span", { class: "num muted" }, `step ${e.step}`), " ",
        el("span", { class: `badge issue-${e.kind}` }, e.kind), " ",
        layer && !e.message.startsWith(layer) ? [el("code", {}, layer), " "] : null, e.message));
      while (list.children.length > MAX_SHOWN) list.lastChild?.remove();
    },
  };
}
