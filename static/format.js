// @ts-check
// The DOM builder under its older address, for modules that still import it from here;
// everything shared by the views lives in widgets.js.

export { el } from "./widgets.js";
