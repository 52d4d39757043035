// The submit form: a JobSpec edited field by field (or as JSON), seeded from a preset,
// with the server's 422 shown next to the field it names.

import { ApiError, post } from "../api.js";
import { el } from "../format.js";

const TASKS = {
  char_lm: { corpus: "builtin:tiny", seq_len: 128, eval_every: 100 },
  adding: { seq_len: 128, eval_every: 100 },
  copy: { seq_len: 128, symbols: 8, length: 10, eval_every: 100 },
  classification: { features: 32, classes: 10, clusters: 2, noise: 1.0, eval_every: 100 },
};

const GRAD_POLICIES = {
  clip_norm: { max_norm: 1.0, norm_type: 2 },
  clip_value: { limit: 1.0 },
  clip_layer_norm: { max_norm: 1.0 },
  agc: { lambda: 0.01, eps: 0.001 },
  autoclip: { percentile: 10, history: 10000 },
  zclip: { alpha: 0.97, z_threshold: 2.5, warmup: 25 },
  skip_spike: { z_threshold: 6, alpha: 0.97, warmup: 25 },
};

const WEIGHT_POLICIES = {
  clip: { limit: 0.3 },
  max_norm: { max: 1.0, dim: 0 },
  scale: { factor: 0.99, every: 1 },
};

/** A small spec that trains in seconds on a CPU. */
export function defaultSpec() {
  return {
    name: "",
    seed: 42,
    steps: 500,
    batch_size: 32,
    device: "auto",
    task: { kind: "char_lm", ...TASKS.char_lm, seq_len: 64 },
    model: { kind: "lstm", layers: 2, hidden: 64, norm: "none", activation: "", residual: false, heads: 4, norm_position: "pre", init_scale: 1.0, dropout: 0.0 },
    optimizer: { kind: "adamw", lr: 0.001, weight_decay: "", momentum: 0, nesterov: false, beta1: 0.9, beta2: 0.999, eps: 1e-8, warmup_steps: 0, schedule: "constant" },
    policy: { grad: [{ kind: "clip_norm", max_norm: 1.0, norm_type: 2 }], weight: [], on_nonfinite: "skip" },
    monitor: { every: 1, histogram: true, prometheus_layers: 32, explode_factor: 10, vanish_ratio: 1e-4, dead_frac: 0.99, diagnose_window: 50, summary_every: 100, cooldown: 100 },
  };
}

/** The form's editable state from a full spec (a preset's, or a job's). */
function fromSpec(spec) {
  const base = defaultSpec();
  const s = structuredClone(spec);
  return {
    ...base,
    ...s,
    name: s.name ?? "",
    task: { ...s.task },
    model: { ...base.model, ...s.model, activation: s.model.activation ?? "" },
    optimizer: { ...base.optimizer, ...(s.optimizer ?? {}), weight_decay: s.optimizer?.weight_decay ?? "" },
    policy: { ...base.policy, grad: [], weight: [], ...(s.policy ?? {}) },
    monitor: { ...base.monitor, ...(s.monitor ?? {}) },
  };
}

/** The JSON body to POST: optional blanks left out, fields that do not apply dropped. */
export function toSpec(state) {
  const s = structuredClone(state);
  if (!s.name.trim()) delete s.name;
  if (s.model.activation === "") delete s.model.activation;
  if (s.optimizer.weight_decay === "") delete s.optimizer.weight_decay;
  if (s.optimizer.kind !== "sgd") {
    s.optimizer.momentum = 0;
    s.optimizer.nesterov = false;
  }
  const allowed = Object.keys(TASKS[s.task.kind] ?? {});
  s.task = Object.fromEntries(Object.entries(s.task).filter(([k]) => k === "kind" || allowed.includes(k)));
  return s;
}

function getPath(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function setPath(obj, path, value) {
  const keys = path.split(".");
  const last = keys.pop();
  const target = keys.reduce((o, k) => o[k], obj);
  target[last] = value;
}

/**
 * Builds the form into `root`. presets: the /presets list. onSubmitted(job) is called
 * with the created job.
 */
export function specForm(root, { presets, onSubmitted, initial }) {
  let state = fromSpec(initial ?? defaultSpec());
  const form = el("form", { class: "spec-form", novalidate: true, autocomplete: "off" });
  const banner = el("div", { class: "form-error", role: "alert", hidden: true });
  const presetNote = el("p", { class: "muted preset-note" });
  const json = el("textarea", { class: "spec-json", spellcheck: false, rows: 14, "aria-label": "Spec as JSON" });
  root.replaceChildren(form);

  // Parse problems found here, before the server sees the spec.
  const localErrors = new Map();

  function input(path, { type = "number", label, help, options, integer = false, placeholder, list } = {}) {
    const value = getPath(state, path);
    let control;
    if (options) {
      control = el("select", { name: path }, options.map((o) => {
        const [v, text] = Array.isArray(o) ? o : [o, o];
        return el("option", { value: String(v), selected: String(v) === String(value) }, text);
      }));
      control.addEventListener("change", () => {
        const raw = control.value;
        const numeric = options.every((o) => typeof (Array.isArray(o) ? o[0] : o) === "number" || o === "inf");
        setPath(state, path, numeric && raw !== "inf" ? Number(raw) : raw);
        changed(path);
      });
    } else if (type === "bool") {
      control = el("input", { type: "checkbox", name: path, checked: Boolean(value) });
      control.addEventListener("change", () => {
        setPath(state, path, control.checked);
        changed(path);
      });
    } else {
      control = el("input", {
        type: "text",
        name: path,
        value: value === undefined || value === null ? "" : String(value),
        inputmode: type === "number" ? (integer ? "numeric" : "decimal") : undefined,
        placeholder,
        list,
      });
      control.addEventListener("input", () => {
        const raw = control.value.trim();
        if (type === "number") {
          const n = Number(raw);
          if (raw === "" && placeholder !== undefined) {
            setPath(state, path, "");
            localErrors.delete(path);
          } else if (raw === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
            localErrors.set(path, integer ? "must be a whole number" : "must be a number");
          } else {
            setPath(state, path, n);
            localErrors.delete(path);
          }
        } else {
          setPath(state, path, control.value);
        }
        changed(path, false);
      });
    }
    const wrap = el("label", { class: `field${type === "bool" ? " check" : ""}`, dataset: { field: path } },
      type === "bool" ? [control, el("span", {}, label)] : [el("span", { class: "label" }, label), control],
      help ? el("small", { class: "help" }, help) : null,
      el("small", { class: "field-error", role: "alert" }));
    return wrap;
  }

  function changed(path, rerender = true) {
    clearErrors();
    if (rerender && /(^|\.)kind$/.test(path)) render();
    json.value = JSON.stringify(toSpec(state), null, 2);
  }

  function policyList(which, kinds) {
    const list = state.policy[which];
    const rows = list.map((p, i) => {
      const kindSelect = el("select", { name: `policy.${which}[${i}].kind`, "aria-label": `${which} policy ${i + 1}` },
        Object.keys(kinds).map((k) => el("option", { value: k, selected: k === p.kind }, k)));
      kindSelect.addEventListener("change", () => {
        list[i] = { kind: kindSelect.value, ...kinds[kindSelect.value] };
        changed("policy.kind");
      });
      const params = Object.keys(kinds[p.kind]).map((param) => {
        const path = `policy.${which}.${i}.${param}`;
        const field = param === "norm_type"
          ? input(path, { label: param, options: [2, "inf"] })
          : input(path, { label: param, integer: ["history", "warmup", "every", "dim"].includes(param) });
        field.dataset.field = `policy.${which}[${i}].${param}`;
        return field;
      });
      const remove = el("button", { type: "button", class: "link", title: "Remove", onclick: () => {
        list.splice(i, 1);
        changed("policy.kind");
      } }, "remove");
      return el("div", { class: "policy-row", dataset: { field: `policy.${which}[${i}]` } },
        el("span", { class: "policy-index" }, `${i + 1}.`), kindSelect, ...params, remove,
        el("small", { class: "field-error", role: "alert" }));
    });
    const add = el("button", { type: "button", class: "small", onclick: () => {
      const first = Object.keys(kinds)[0];
      list.push({ kind: first, ...kinds[first] });
      changed("policy.kind");
    } }, `+ ${which} policy`);
    return el("div", { class: "policy-list", dataset: { field: `policy.${which}` } }, rows, add);
  }

  function render() {
    const t = state.task.kind;
    // Keep what carries over between task kinds, fill the rest with defaults.
    state.task = { kind: t, ...TASKS[t], ...Object.fromEntries(Object.entries(state.task).filter(([k]) => k in TASKS[t])) };
    const m = state.model.kind;
    const presetSelect = el("select", { name: "preset", "aria-label": "Start from a preset" },
      el("option", { value: "" }, "— start from a preset —"),
      groupBy(presets, (p) => p.group).map(([group, items]) => el("optgroup", { label: group },
        items.map((p) => el("option", { value: p.name }, `${p.name} (${p.role})`)))));
    presetSelect.addEventListener("change", () => {
      const p = presets.find((x) => x.name === presetSelect.value);
      if (!p) return;
      state = fromSpec(p.spec);
      render();
      form.querySelector("select[name=preset]").value = p.name;
      presetNote.textContent = p.description;
    });

    form.replaceChildren(
      el("div", { class: "form-head" }, presetSelect, presetNote),
      banner,
      el("div", { class: "form-grid" },
        el("fieldset", {}, el("legend", {}, "Run"),
          input("name", { type: "text", label: "name", placeholder: "model-task" }),
          input("steps", { label: "steps", integer: true }),
          input("batch_size", { label: "batch size", integer: true }),
          input("seed", { label: "seed", integer: true }),
          input("device", { type: "text", label: "device", list: "devices", help: "auto, cpu, cuda or cuda:N" }),
          el("datalist", { id: "devices" }, ["auto", "cpu", "cuda", "cuda:0"].map((d) => el("option", { value: d })))),
        el("fieldset", {}, el("legend", {}, "Task"),
          input("task.kind", { label: "kind", options: Object.keys(TASKS) }),
          t === "char_lm" ? input("task.corpus", { type: "text", label: "corpus", help: "builtin:tiny or an uploaded corpus id" }) : null,
          t !== "classification" ? input("task.seq_len", { label: "sequence length", integer: true }) : null,
          t === "copy" ? [input("task.symbols", { label: "symbols", integer: true }), input("task.length", { label: "length", integer: true })] : null,
          t === "classification" ? [
            input("task.features", { label: "features", integer: true }),
            input("task.classes", { label: "classes", integer: true }),
            input("task.clusters", { label: "clusters per class", integer: true }),
            input("task.noise", { label: "noise" })] : null,
          input("task.eval_every", { label: "validate every", integer: true, help: "steps; 0 turns validation off" })),
        el("fieldset", {}, el("legend", {}, "Model"),
          input("model.kind", { label: "kind", options: ["mlp", "rnn", "lstm", "gru", "transformer"],
            help: t === "classification" ? "classification feeds an mlp" : "sequence tasks feed rnn, lstm, gru or transformer" }),
          input("model.layers", { label: "layers", integer: true }),
          input("model.hidden", { label: "hidden", integer: true }),
          input("model.norm", { label: "norm", options: ["none", "batch", "layer", "rms"] }),
          input("model.activation", { label: "activation", options: [["", "default"], "tanh", "relu", "sigmoid", "gelu"] }),
          m === "transformer" ? [
            input("model.heads", { label: "heads", integer: true }),
            input("model.norm_position", { label: "norm position", options: ["pre", "post"] })] : null,
          m === "mlp" ? input("model.residual", { type: "bool", label: "residual connections" }) : null,
          input("model.init_scale", { label: "init scale", help: ">1 provokes explosion, <1 vanishing" }),
          input("model.dropout", { label: "dropout" })),
        el("fieldset", {}, el("legend", {}, "Optimizer"),
          input("optimizer.kind", { label: "kind", options: ["sgd", "adam", "adamw"] }),
          input("optimizer.lr", { label: "learning rate" }),
          input("optimizer.weight_decay", { label: "weight decay", placeholder: "default" }),
          state.optimizer.kind === "sgd"
            ? [input("optimizer.momentum", { label: "momentum" }), input("optimizer.nesterov", { type: "bool", label: "Nesterov" })]
            : [input("optimizer.beta1", { label: "beta1" }), input("optimizer.beta2", { label: "beta2" }), input("optimizer.eps", { label: "eps" })],
          input("optimizer.warmup_steps", { label: "warm-up steps", integer: true }),
          input("optimizer.schedule", { label: "schedule", options: ["constant", "linear", "cosine"] })),
        el("fieldset", { class: "wide" }, el("legend", {}, "Policies"),
          el("div", { class: "policy-block" }, el("h4", {}, "Gradient (after backward, in order)"), policyList("grad", GRAD_POLICIES)),
          el("div", { class: "policy-block" }, el("h4", {}, "Weight (after the optimizer step)"), policyList("weight", WEIGHT_POLICIES)),
          input("policy.on_nonfinite", { label: "on NaN/Inf", options: ["skip", "stop"] })),
        el("details", { class: "wide monitor" }, el("summary", {}, "Monitoring and diagnosis thresholds"),
          el("div", { class: "monitor-grid" },
            input("monitor.every", { label: "statistics every", integer: true, help: "steps; 0 turns per-layer statistics off" }),
            input("monitor.histogram", { type: "bool", label: "gradient histograms" }),
            input("monitor.prometheus_layers", { label: "Prometheus layers", integer: true }),
            input("monitor.explode_factor", { label: "exploding factor" }),
            input("monitor.vanish_ratio", { label: "vanishing ratio" }),
            input("monitor.dead_frac", { label: "dead fraction" }),
            input("monitor.diagnose_window", { label: "diagnosis window", integer: true }),
            input("monitor.summary_every", { label: "summary every", integer: true }),
            input("monitor.cooldown", { label: "event cool-down", integer: true }))),
        el("details", { class: "wide" }, el("summary", {}, "Spec as JSON"), json,
          el("button", { type: "button", class: "small", onclick: applyJson }, "Apply JSON to the form"))),
      el("div", { class: "form-actions" },
        el("button", { type: "submit", class: "primary" }, "Submit job"),
        el("span", { class: "muted submit-status", role: "status" })),
    );
    json.value = JSON.stringify(toSpec(state), null, 2);
  }

  function applyJson() {
    try {
      state = fromSpec(JSON.parse(json.value));
      render();
    } catch (err) {
      showError(null, `The JSON does not parse: ${err.message}`);
    }
  }

  function clearErrors() {
    banner.hidden = true;
    banner.textContent = "";
    for (const f of form.querySelectorAll(".has-error")) f.classList.remove("has-error");
    for (const m of form.querySelectorAll(".field-error")) m.textContent = "";
  }

  /** Puts `message` under the field the server named (or the nearest enclosing one). */
  function showError(field, message) {
    clearErrors();
    let target = null;
    if (field) {
      let path = field;
      while (path && !target) {
        target = form.querySelector(`[data-field="${CSS.escape(path)}"]`);
        const cut = Math.max(path.lastIndexOf("."), path.lastIndexOf("["));
        path = cut > 0 ? path.slice(0, cut) : "";
      }
    }
    if (target) {
      const details = target.closest("details");
      if (details) details.open = true;
      target.classList.add("has-error");
      const slot = target.querySelector(":scope > .field-error") ?? target.querySelector(".field-error");
      slot.textContent = message;
      target.scrollIntoView({ block: "center", behavior: "instant" });
      target.querySelector("input, select")?.focus({ preventScroll: true });
    } else {
      banner.hidden = false;
      banner.textContent = field ? `${field}: ${message}` : message;
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (localErrors.size) {
      const [path, message] = localErrors.entries().next().value;
      showError(path.replace(/\.(\d+)\./, "[$1]."), message);
      return;
    }
    const status = form.querySelector(".submit-status");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    status.textContent = "submitting…";
    try {
      const job = await post("/jobs", toSpec(state));
      status.textContent = "";
      onSubmitted(job);
    } catch (err) {
      status.textContent = "";
      if (err instanceof ApiError) showError(err.field, err.message);
      else showError(null, `Could not reach the server: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  });

  render();
  return {
    load(spec) {
      state = fromSpec(spec);
      render();
    },
  };
}

export function groupBy(items, key) {
  const groups = new Map();
  for (const item of items) {
    const k = key(item);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(item);
  }
  return [...groups.entries()];
}
