// @ts-check
// The submit form: a JobSpec edited field by field (or as JSON), seeded from a preset,
// with the server's 422 shown next to the field it names. Every default, range and kind
// of task or policy comes from the server's OpenAPI document, read once.

import { ApiError, get, post, upload } from "../api.js";
import { el, groupBy } from "../widgets.js";

/**
 * The part of a JSON Schema the form reads.
 * @typedef {object} Schema
 * @property {string} [$ref]
 * @property {string | string[]} [type]
 * @property {unknown} [default]
 * @property {number} [minimum]
 * @property {number} [maximum]
 * @property {number} [exclusiveMinimum]
 * @property {number} [exclusiveMaximum]
 * @property {unknown[]} [enum]
 * @property {Record<string, Schema>} [properties]
 * @property {Schema[]} [oneOf]
 * @property {Schema[]} [allOf]
 */

/**
 * What the schema says about one field.
 * @typedef {object} Field
 * @property {unknown} default  `undefined` when the server has none
 * @property {boolean} integer
 * @property {boolean} boolean
 * @property {boolean} nullable  `null` is a value of its own (e.g. "no cap")
 * @property {string[]} [options]  the values of an enumeration
 * @property {string} range  what the server accepts, in words ("" when unbounded)
 */

/**
 * The JobSpec's schema, read for the form.
 * @typedef {object} SpecSchema
 * @property {(component: string) => Record<string, Field>} fields  a component's fields, in order
 * @property {Record<string, Record<string, Field>>} tasks  each task kind's fields
 * @property {Record<string, Record<string, Field>>} grad  each grad policy's fields
 * @property {Record<string, Record<string, Field>>} weight  each weight policy's fields
 */

/** A JobSpec as JSON, or the form's editable copy of one. @typedef {Record<string, any>} Spec */

/**
 * Starting values for the fields a policy requires: the server has no default for them,
 * so the form suggests these when a policy is added.
 * @type {Record<string, Record<string, number>>}
 */
const REQUIRED_START = {
  clip_norm: { max_norm: 1.0 },
  clip_value: { limit: 1.0 },
  clip_layer_norm: { max_norm: 1.0 },
  clip: { limit: 0.3 },
  max_norm: { max: 1.0 },
  scale: { factor: 0.99 },
};

/** The form starts smaller than the server's defaults: a spec that trains in seconds on a CPU. */
const QUICK = { steps: 500, hidden: 64, seq_len: 64 };

/** @type {Promise<SpecSchema> | undefined} */
let cached;

/** The JobSpec's schema from `/api/v1/openapi.json`, fetched once. */
export function specSchema() {
  cached ??= get("/openapi.json").then(readSchema);
  return cached;
}

/**
 * @param {any} doc the OpenAPI document
 * @returns {SpecSchema}
 */
export function readSchema(doc) {
  /** @type {Record<string, Schema>} */
  const schemas = doc.components.schemas;
  /** @param {Schema} s @returns {Schema} */
  const resolve = (s) => (s.$ref ? schemas[s.$ref.split("/").pop() ?? ""] ?? {} : s);

  /** @param {Schema} raw @returns {Field} */
  function field(raw) {
    const s = resolve(raw);
    const types = Array.isArray(s.type) ? s.type : [s.type];
    return {
      default: raw.default ?? s.default,
      integer: types.includes("integer"),
      boolean: types.includes("boolean"),
      nullable: types.includes("null"),
      options: choices(raw),
      range: range(s),
    };
  }

  /**
   * The values of an enumeration, however it is written: `enum`, or a `oneOf` of
   * documented values, possibly behind references.
   * @param {Schema} raw
   * @returns {string[] | undefined}
   */
  function choices(raw) {
    const s = resolve(raw);
    if (s.enum) return s.enum.map(String);
    const values = s.oneOf?.flatMap((o) => choices(o) ?? []);
    return values?.length ? values : undefined;
  }

  /**
   * @param {Record<string, Schema>} properties
   * @param {boolean} [tagged] leave out `kind`, the tag the form edits on its own
   * @returns {Record<string, Field>}
   */
  const fieldsOf = (properties, tagged = false) =>
    Object.fromEntries(Object.entries(properties).filter(([k]) => !tagged || k !== "kind").map(([k, s]) => [k, field(s)]));

  /** @param {string} name */
  const fields = (name) => fieldsOf(resolve({ $ref: name }).properties ?? {});

  /**
   * Each kind of a tagged enum: an inline object with a `kind`, or (for kinds with a
   * settings type) a `$ref` beside one.
   * @param {string} name
   */
  function variants(name) {
    /** @type {Record<string, Record<string, Field>>} */
    const out = {};
    for (const item of schemas[name]?.oneOf ?? []) {
      const parts = (item.allOf ?? [item]).map(resolve);
      /** @type {Record<string, Schema>} */
      const properties = Object.assign({}, ...parts.map((p) => p.properties ?? {}));
      const kind = properties.kind?.enum?.[0];
      if (typeof kind === "string") out[kind] = fieldsOf(properties, true);
    }
    return out;
  }

  return { fields, tasks: variants("TaskSpec"), grad: variants("GradPolicy"), weight: variants("WeightPolicy") };
}

/** @param {Schema} s what the schema bounds, in words */
function range(s) {
  const { minimum: min, maximum: max, exclusiveMinimum: above, exclusiveMaximum: below } = s;
  if (min !== undefined && max !== undefined) return `${min} to ${max}`;
  const low = above !== undefined ? `above ${above}` : min !== undefined ? `at least ${min}` : null;
  const high = below !== undefined ? `below ${below}` : max !== undefined ? `at most ${max}` : null;
  return [low, high].filter(Boolean).join(", ");
}

/**
 * The defaults of `fields`, with required ones from `start`.
 * @param {Record<string, Field>} fields
 * @param {Record<string, unknown>} [start]
 * @returns {Record<string, unknown>}
 */
function defaultsOf(fields, start = {}) {
  return Object.fromEntries(Object.entries(fields).map(([k, f]) => [k, start[k] ?? f.default]));
}

/**
 * A new policy of `kind` with its defaults.
 * @param {Record<string, Record<string, Field>>} kinds
 * @param {string} kind
 */
function newPolicy(kinds, kind) {
  return { kind, ...defaultsOf(kinds[kind], REQUIRED_START[kind]) };
}

/**
 * A small spec that trains in seconds on a CPU: the server's defaults, a little smaller.
 * @param {SpecSchema} schema
 * @returns {Spec}
 */
export function defaultSpec(schema) {
  const run = defaultsOf(schema.fields("JobSpec"));
  return {
    ...run,
    name: "",
    steps: QUICK.steps,
    task: { kind: "char_lm", ...defaultsOf(schema.tasks.char_lm), seq_len: QUICK.seq_len },
    model: { ...defaultsOf(schema.fields("ModelSpec")), kind: "lstm", hidden: QUICK.hidden, norm: "", activation: "" },
    optimizer: { ...defaultsOf(schema.fields("OptimizerSpec")), weight_decay: "" },
    policy: { ...defaultsOf(schema.fields("PolicySpec")), grad: [newPolicy(schema.grad, "clip_norm")], weight: [] },
    monitor: defaultsOf(schema.fields("MonitorSpec")),
  };
}

/**
 * The form's editable state from a full spec (a preset's, or a job's).
 * @param {SpecSchema} schema
 * @param {Spec} spec
 * @returns {Spec}
 */
function fromSpec(schema, spec) {
  const base = defaultSpec(schema);
  const s = structuredClone(spec);
  return {
    ...base,
    ...s,
    name: s.name ?? "",
    task: { ...s.task },
    model: { ...base.model, ...s.model, norm: s.model?.norm ?? "", activation: s.model?.activation ?? "" },
    optimizer: { ...base.optimizer, ...(s.optimizer ?? {}), weight_decay: s.optimizer?.weight_decay ?? "" },
    policy: { ...base.policy, grad: [], weight: [], ...(s.policy ?? {}) },
    monitor: { ...base.monitor, ...(s.monitor ?? {}) },
  };
}

/**
 * The JSON body to POST: optional blanks left out, fields that do not apply dropped.
 * @param {SpecSchema} schema
 * @param {Spec} state
 * @returns {Spec}
 */
export function toSpec(schema, state) {
  const s = structuredClone(state);
  if (!s.name.trim()) delete s.name;
  if (s.model.norm === "") delete s.model.norm;
  if (s.model.activation === "") delete s.model.activation;
  if (s.optimizer.weight_decay === "") delete s.optimizer.weight_decay;
  if (s.model.kind !== "torchscript" || !s.model.id) delete s.model.id;
  if (s.optimizer.kind !== "sgd") {
    s.optimizer.momentum = 0;
    s.optimizer.nesterov = false;
  }
  const allowed = Object.keys(schema.tasks[s.task.kind] ?? {});
  s.task = Object.fromEntries(Object.entries(s.task).filter(([k]) => k === "kind" || allowed.includes(k)));
  return s;
}

/** @param {any} obj @param {string} path */
function getPath(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

/** @param {any} obj @param {string} path @param {unknown} value */
function setPath(obj, path, value) {
  const keys = path.split(".");
  const last = keys.pop() ?? "";
  const target = keys.reduce((o, k) => o[k], obj);
  target[last] = value;
}

/**
 * @typedef {object} InputOptions
 * @property {"number" | "text" | "bool"} [type]
 * @property {string} [label]
 * @property {string} [help]
 * @property {Array<string | number | [string | number, string]>} [options]
 * @property {boolean} [integer]
 * @property {string} [placeholder]  a blank input is allowed, and means this
 * @property {boolean} [nullable]  a blank number is `null`
 * @property {string} [list]
 * @property {Field} [field]  what the schema says: its range is shown, its type used
 */

/**
 * @typedef {object} FormOptions
 * @property {Array<{name: string, group: string, role: string, description: string, spec: Spec}>} presets  the /presets list
 * @property {(job: any) => void} onSubmitted  called with the created job
 * @property {Spec} [initial]
 */

/**
 * Builds the form into `root`; it draws once the schema has arrived.
 * @param {HTMLElement} root
 * @param {FormOptions} options
 */
export function specForm(root, { presets, onSubmitted, initial }) {
  const form = el("form", { class: "spec-form", novalidate: true, autocomplete: "off" });
  const banner = el("div", { class: "form-error", role: "alert", hidden: true });
  const presetNote = el("p", { class: "muted preset-note" });
  const json = /** @type {HTMLTextAreaElement} */ (
    el("textarea", { class: "spec-json", spellcheck: false, rows: 14, "aria-label": "Spec as JSON" }));
  const jsonNote = el("small", { class: "help json-note", role: "status" });
  // Typed into the JSON since the form last wrote it: Submit sends the JSON, not the form.
  let jsonEdited = false;
  json.addEventListener("input", () => {
    jsonEdited = true;
    jsonNote.textContent = "Edited: Submit sends this JSON. Editing a field above replaces it with the form's values.";
  });
  root.replaceChildren(form);

  /** @type {SpecSchema | null} */
  let schema = null;
  /** @type {Spec} */
  let state = {};
  /** A spec loaded before the schema arrived. @type {Spec | undefined} */
  let pending = initial;

  // Parse problems found here, before the server sees the spec.
  /** @type {Map<string, string>} */
  const localErrors = new Map();

  /**
   * @param {string} path
   * @param {InputOptions} [opts]
   */
  function input(path, { type, label, help, options, integer, placeholder, nullable, list, field } = {}) {
    const kind = type ?? (field?.boolean ? "bool" : field?.options ? "options" : "number");
    const whole = integer ?? field?.integer ?? false;
    const blank = nullable ?? field?.nullable ?? false;
    const choices = options ?? (kind === "options" ? field?.options : undefined);
    const value = getPath(state, path);
    /** @type {HTMLElement} */
    let control;
    if (choices) {
      const select = /** @type {HTMLSelectElement} */ (el("select", { name: path }, choices.map((o) => {
        const [v, text] = Array.isArray(o) ? o : [o, o];
        return el("option", { value: String(v), selected: String(v) === String(value) }, text);
      })));
      select.addEventListener("change", () => {
        const raw = select.value;
        const numeric = choices.every((o) => typeof (Array.isArray(o) ? o[0] : o) === "number" || o === "inf");
        setPath(state, path, numeric && raw !== "inf" ? Number(raw) : raw);
        changed(path);
      });
      control = select;
    } else if (kind === "bool") {
      const box = /** @type {HTMLInputElement} */ (el("input", { type: "checkbox", name: path, checked: Boolean(value) }));
      box.addEventListener("change", () => {
        setPath(state, path, box.checked);
        changed(path);
      });
      control = box;
    } else {
      const text = /** @type {HTMLInputElement} */ (el("input", {
        type: "text",
        name: path,
        value: value === undefined || value === null ? "" : String(value),
        inputmode: kind === "number" ? (whole ? "numeric" : "decimal") : undefined,
        placeholder: placeholder ?? (blank ? "off" : undefined),
        list,
      }));
      text.addEventListener("input", () => {
        const raw = text.value.trim();
        if (kind === "number") {
          const n = Number(raw);
          if (raw === "" && (placeholder !== undefined || blank)) {
            setPath(state, path, blank ? null : "");
            localErrors.delete(path);
          } else if (raw === "" || !Number.isFinite(n) || (whole && !Number.isInteger(n))) {
            localErrors.set(path, whole ? "must be a whole number" : "must be a number");
          } else {
            setPath(state, path, n);
            localErrors.delete(path);
          }
        } else {
          setPath(state, path, text.value);
        }
        changed(path, false);
      });
      control = text;
    }
    const hint = [help, field?.range].filter(Boolean).join("; ");
    return el("label", { class: `field${kind === "bool" ? " check" : ""}`, dataset: { field: path } },
      kind === "bool" ? [control, el("span", {}, label)] : [el("span", { class: "label" }, label), control],
      hint ? el("small", { class: "help" }, hint) : null,
      el("small", { class: "field-error", role: "alert" }));
  }

  /** @param {string} path @param {boolean} [rerender] */
  function changed(path, rerender = true) {
    clearErrors();
    if (rerender && /(^|\.)kind$/.test(path)) render();
    showJson();
  }

  function showJson() {
    if (!schema) return;
    json.value = JSON.stringify(toSpec(schema, state), null, 2);
    jsonEdited = false;
    jsonNote.textContent = "";
  }

  /**
   * @param {"grad" | "weight"} which
   * @param {Record<string, Record<string, Field>>} kinds
   */
  function policyList(which, kinds) {
    /** @type {Spec[]} */
    const list = state.policy[which];
    const rows = list.map((p, i) => {
      const kindSelect = /** @type {HTMLSelectElement} */ (
        el("select", { name: `policy.${which}[${i}].kind`, "aria-label": `${which} policy ${i + 1}` },
          Object.keys(kinds).map((k) => el("option", { value: k, selected: k === p.kind }, k))));
      kindSelect.addEventListener("change", () => {
        list[i] = newPolicy(kinds, kindSelect.value);
        changed("policy.kind");
      });
      const params = Object.entries(kinds[p.kind] ?? {}).map(([param, field]) => {
        const path = `policy.${which}.${i}.${param}`;
        const control = param === "norm_type"
          ? input(path, { label: param, options: [2, "inf"] })
          : input(path, { label: param, field });
        control.dataset.field = `policy.${which}[${i}].${param}`;
        return control;
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
      list.push(newPolicy(kinds, Object.keys(kinds)[0]));
      changed("policy.kind");
    } }, `+ ${which} policy`);
    return el("div", { class: "policy-list", dataset: { field: `policy.${which}` } }, rows, add);
  }

  /**
   * Picks an uploaded model or data set for `path` (`model.id`, `task.id`), or uploads a
   * new one from a file and picks it.
   * @param {string} path
   * @param {"models" | "datasets"} what
   * @param {string} label
   * @param {string} help
   */
  function uploadPicker(path, what, label, help) {
    const select = /** @type {HTMLSelectElement} */ (el("select", { name: path, "aria-label": label },
      el("option", { value: "" }, "— loading —")));
    const note = el("small", { class: "help" }, help);
    /** @param {string} [chosen] */
    const refresh = async (chosen) => {
      try {
        const list = await get(`/${what}`);
        /** @type {Array<{id: string, bytes: number, params?: number, samples?: number, created_at: string}>} */
        const items = list[what];
        const current = chosen ?? getPath(state, path) ?? "";
        select.replaceChildren(el("option", { value: "" }, items.length ? "— pick one —" : "— none uploaded yet —"),
          ...items.map((u) => el("option", { value: u.id, selected: u.id === current },
            `…${u.id.slice(-8)} ${what === "models" ? `${u.params} parameters` : `${u.samples} samples`}, ${u.created_at.slice(0, 16)}`)));
        if (chosen) {
          setPath(state, path, chosen);
          changed(path, false);
        }
      } catch (err) {
        note.textContent = `Could not list ${what}: ${err instanceof Error ? err.message : err}`;
      }
    };
    select.addEventListener("change", () => {
      setPath(state, path, select.value);
      changed(path, false);
    });
    const file = /** @type {HTMLInputElement} */ (el("input", { type: "file", name: `${path}-file`,
      "aria-label": `Upload a ${what === "models" ? "TorchScript model" : "safetensors data set"}`,
      accept: what === "models" ? ".pt,.pth,.zip" : ".safetensors" }));
    file.addEventListener("change", async () => {
      const chosen = file.files?.[0];
      if (!chosen) return;
      note.textContent = "uploading…";
      try {
        const created = await upload(`/${what}`, chosen);
        note.textContent = help;
        await refresh(created.id);
      } catch (err) {
        note.textContent = err instanceof ApiError ? `${err.field ? `${err.field}: ` : ""}${err.message}` : String(err);
      }
    });
    refresh();
    return el("label", { class: "field", dataset: { field: path } },
      el("span", { class: "label" }, label), select, file, note, el("small", { class: "field-error", role: "alert" }));
  }

  function render() {
    if (!schema) return;
    const s = schema;
    const tasks = s.tasks;
    const t = state.task.kind;
    // Keep what carries over between task kinds, fill the rest with defaults.
    state.task = { kind: t, ...defaultsOf(tasks[t]), ...Object.fromEntries(Object.entries(state.task).filter(([k]) => k in tasks[t])) };
    const m = state.model.kind;
    const run = s.fields("JobSpec");
    const task = tasks[t];
    const model = s.fields("ModelSpec");
    const opt = s.fields("OptimizerSpec");
    const mon = s.fields("MonitorSpec");
    /** @param {string} name @param {InputOptions} opts */
    const taskInput = (name, opts) => input(`task.${name}`, { ...opts, field: task[name] });
    /** @param {string} name @param {InputOptions} opts */
    const modelInput = (name, opts) => input(`model.${name}`, { ...opts, field: model[name] });
    /** @param {string} name @param {InputOptions} opts */
    const optInput = (name, opts) => input(`optimizer.${name}`, { ...opts, field: opt[name] });
    /** @param {string} name @param {InputOptions} opts */
    const monInput = (name, opts) => input(`monitor.${name}`, { ...opts, field: mon[name] });

    const presetSelect = /** @type {HTMLSelectElement} */ (el("select", { name: "preset", "aria-label": "Start from a preset" },
      el("option", { value: "" }, "— start from a preset —"),
      groupBy(presets, (p) => p.group).map(([group, items]) => el("optgroup", { label: group },
        items.map((p) => el("option", { value: p.name }, `${p.name} (${p.role})`))))));
    presetSelect.addEventListener("change", () => {
      const p = presets.find((x) => x.name === presetSelect.value);
      if (!p) return;
      state = fromSpec(s, p.spec);
      render();
      /** @type {HTMLSelectElement} */ (form.querySelector("select[name=preset]")).value = p.name;
      presetNote.textContent = p.description;
    });

    form.replaceChildren(
      el("div", { class: "form-head" }, presetSelect, presetNote),
      banner,
      el("div", { class: "form-grid" },
        el("fieldset", {}, el("legend", {}, "Run"),
          input("name", { type: "text", label: "name", placeholder: "model-task" }),
          input("steps", { label: "steps", field: run.steps }),
          input("batch_size", { label: "batch size", field: run.batch_size }),
          input("seed", { label: "seed", field: run.seed }),
          input("device", { type: "text", label: "device", list: "devices", help: "auto, cpu, cuda or cuda:N" }),
          el("datalist", { id: "devices" }, ["auto", "cpu", "cuda", "cuda:0"].map((d) => el("option", { value: d }))),
          input("checkpoint_every", { label: "checkpoint every", field: run.checkpoint_every, help: "steps; 0: only at the end" })),
        el("fieldset", {}, el("legend", {}, "Task"),
          input("task.kind", { label: "kind", options: Object.keys(tasks) }),
          t === "char_lm" ? taskInput("corpus", { type: "text", label: "corpus", help: "builtin:tiny or an uploaded corpus id" }) : null,
          t === "dataset" ? [
            uploadPicker("task.id", "datasets", "data set", "safetensors with x, y (and x_val, y_val)"),
            taskInput("loss", { label: "loss" })] : null,
          "seq_len" in task ? taskInput("seq_len", { label: "sequence length" }) : null,
          t === "copy" ? [taskInput("symbols", { label: "symbols" }), taskInput("length", { label: "length" })] : null,
          t === "classification" ? [
            taskInput("features", { label: "features" }),
            taskInput("classes", { label: "classes" }),
            taskInput("clusters", { label: "clusters per class" }),
            taskInput("noise", { label: "noise" })] : null,
          taskInput("eval_every", { label: "validate every", help: "steps; 0 turns validation off" })),
        el("fieldset", {}, el("legend", {}, "Model"),
          modelInput("kind", { label: "kind",
            help: t === "dataset" ? "a dataset task trains a torchscript model"
              : t === "classification" ? "classification feeds an mlp" : "sequence tasks feed rnn, lstm, gru or transformer" }),
          m === "torchscript" ? uploadPicker("model.id", "models", "module", "torch.jit.script(model).save(path)") : [
            modelInput("layers", { label: "layers" }),
            modelInput("hidden", { label: "hidden" }),
            modelInput("norm", { label: "norm", options: [["", "default for the kind"], ...(model.norm.options ?? [])] }),
            modelInput("activation", { label: "activation", options: [["", "default for the kind"], ...(model.activation.options ?? [])] }),
            m === "transformer" ? [
              modelInput("heads", { label: "heads" }),
              modelInput("norm_position", { label: "norm position" })] : null,
            m === "mlp" ? modelInput("residual", { label: "residual connections" }) : null,
            modelInput("init_scale", { label: "init scale", help: ">1 provokes explosion, <1 vanishing" }),
            modelInput("dropout", { label: "dropout" })].flat()),
        el("fieldset", {}, el("legend", {}, "Optimizer"),
          optInput("kind", { label: "kind" }),
          optInput("lr", { label: "learning rate" }),
          optInput("weight_decay", { label: "weight decay", placeholder: "default", nullable: false }),
          optInput("no_decay", { label: "no decay for" }),
          state.optimizer.kind === "sgd"
            ? [optInput("momentum", { label: "momentum" }), optInput("nesterov", { label: "Nesterov" })]
            : [optInput("beta1", { label: "beta1" }), optInput("beta2", { label: "beta2" }), optInput("eps", { label: "eps" })],
          optInput("warmup_steps", { label: "warm-up steps" }),
          optInput("schedule", { label: "schedule" })),
        el("fieldset", { class: "wide" }, el("legend", {}, "Policies"),
          el("div", { class: "policy-block" }, el("h4", {}, "Gradient (after backward, in order)"), policyList("grad", s.grad)),
          el("div", { class: "policy-block" }, el("h4", {}, "Weight (after the optimizer step)"), policyList("weight", s.weight)),
          input("policy.on_nonfinite", { label: "on NaN/Inf", field: s.fields("PolicySpec").on_nonfinite })),
        el("details", { class: "wide monitor" }, el("summary", {}, "Monitoring and diagnosis thresholds"),
          el("div", { class: "monitor-grid" },
            monInput("every", { label: "statistics every", help: "steps; 0 turns per-layer statistics off" }),
            monInput("histogram", { label: "gradient histograms" }),
            monInput("histogram_every", { label: "histograms every", help: "recorded steps; 1 records them with every statistic" }),
            monInput("prometheus_layers", { label: "Prometheus layers" }),
            monInput("explode_factor", { label: "exploding factor" }),
            monInput("explode_floor", { label: "exploding floor" }),
            monInput("vanish_ratio", { label: "vanishing ratio" }),
            monInput("dead_frac", { label: "dead fraction" }),
            monInput("diagnose_window", { label: "diagnosis window" }),
            monInput("summary_every", { label: "summary every" }),
            monInput("cooldown", { label: "event cool-down" }))),
        el("details", { class: "wide json-box", dataset: { field: "json" } }, el("summary", {}, "Spec as JSON"), json, jsonNote,
          el("button", { type: "button", class: "small", onclick: () => applyJson() }, "Apply JSON to the form"),
          el("small", { class: "field-error", role: "alert" }))),
      el("div", { class: "form-actions" },
        el("button", { type: "submit", class: "primary" }, "Submit job"),
        el("span", { class: "muted submit-status", role: "status" })),
    );
    showJson();
  }

  /**
   * Takes the JSON into the form; false (and says why, next to the JSON) when it does not
   * parse or fit.
   * @param {boolean} [submitting] on Submit: the message says the job was not submitted
   */
  function applyJson(submitting = false) {
    if (!schema) return false;
    const outcome = submitting ? "; the job was not submitted" : "";
    const text = json.value;
    /** @type {unknown} */
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      showError("json", `The JSON does not parse: ${err instanceof Error ? err.message : err}${outcome}`);
      return false;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      showError("json", `The JSON must be one object, a JobSpec${outcome}`);
      return false;
    }
    const before = state;
    try {
      state = fromSpec(schema, /** @type {Spec} */ (parsed));
      render();
    } catch (err) {
      // Back to the form as it was, the JSON kept as typed to fix.
      state = before;
      render();
      json.value = text;
      jsonEdited = true;
      showError("json", `The JSON does not fit the form: ${err instanceof Error ? err.message : err}${outcome}`);
      return false;
    }
    localErrors.clear();
    return true;
  }

  function clearErrors() {
    banner.hidden = true;
    banner.textContent = "";
    for (const f of form.querySelectorAll(".has-error")) f.classList.remove("has-error");
    for (const m of form.querySelectorAll(".field-error")) m.textContent = "";
  }

  /**
   * Puts `message` under the field the server named (or the nearest enclosing one).
   * @param {string | null} field
   * @param {string} message
   */
  function showError(field, message) {
    showErrors([{ field, message }]);
  }

  /**
   * Puts each message under its field (or the nearest enclosing one; two for one place
   * share it), those with no place in the banner; the first is scrolled to and focused.
   * @param {{field: string | null, message: string}[]} list
   */
  function showErrors(list) {
    clearErrors();
    /** @type {string[]} */
    const unplaced = [];
    /** @type {HTMLElement | null} */
    let first = null;
    for (const { field, message } of list) {
      /** @type {HTMLElement | null} */
      let target = null;
      if (field) {
        let path = field;
        while (path && !target) {
          target = form.querySelector(`[data-field="${CSS.escape(path)}"]`);
          const cut = Math.max(path.lastIndexOf("."), path.lastIndexOf("["));
          path = cut > 0 ? path.slice(0, cut) : "";
        }
      }
      if (!target) {
        unplaced.push(field ? `${field}: ${message}` : message);
        continue;
      }
      const details = target.closest("details");
      if (details) details.open = true;
      target.classList.add("has-error");
      const slot = target.querySelector(":scope > .field-error") ?? target.querySelector(".field-error");
      // A field that was not found itself (`task.id` inside its section) is named.
      const text = target.dataset.field === field || !field ? message : `${field}: ${message}`;
      if (slot) slot.textContent = slot.textContent ? `${slot.textContent}; ${text}` : text;
      first ??= target;
    }
    if (unplaced.length) {
      banner.hidden = false;
      banner.textContent = unplaced.join("\n");
    }
    if (first) {
      first.scrollIntoView({ block: "center", behavior: "instant" });
      /** @type {HTMLElement | null} */ (first.querySelector("input, select"))?.focus({ preventScroll: true });
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!schema) return;
    // What the user edited last is what is sent: JSON typed since the form last wrote it wins.
    if (jsonEdited && !applyJson(true)) return;
    if (localErrors.size) {
      showErrors([...localErrors].map(([path, message]) => ({ field: path.replace(/\.(\d+)\./, "[$1]."), message })));
      return;
    }
    const status = /** @type {HTMLElement} */ (form.querySelector(".submit-status"));
    const button = /** @type {HTMLButtonElement} */ (form.querySelector("button[type=submit]"));
    button.disabled = true;
    status.textContent = "submitting…";
    try {
      const job = await post("/jobs", toSpec(schema, state));
      status.textContent = "";
      onSubmitted(job);
    } catch (err) {
      status.textContent = "";
      if (err instanceof ApiError && err.errors.length) showErrors(err.errors);
      else if (err instanceof ApiError) showError(err.field, err.message);
      else showError(null, `Could not reach the server: ${err instanceof Error ? err.message : err}`);
    } finally {
      button.disabled = false;
    }
  });

  specSchema().then((s) => {
    schema = s;
    state = pending ? fromSpec(s, pending) : defaultSpec(s);
    render();
  }, (err) => showError(null, `Could not read the spec's schema: ${err instanceof Error ? err.message : err}`));

  return {
    /** @param {Spec} spec */
    load(spec) {
      if (!schema) {
        pending = spec;
        return;
      }
      state = fromSpec(schema, spec);
      render();
    },
  };
}
