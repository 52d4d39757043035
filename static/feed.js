// @ts-check
// One job's data as it arrives: the stream opened first (its `hello` names the layers,
// the statistics and the histogram buckets), the history read from the REST API while
// the stream's messages wait, then live. Steps a lagging or dropped stream missed are read
// back from the REST API; when the job ends, its final record and validation results are.
//
// The views listen with `feed.on(kind, fn)`:
//   job     the job record changed (status, step, diagnosis, error)
//   layers  the layer list is (re)set
//   data    steps, statistics or histograms were added
//   event   one event of the diagnosis arrived (it is in `feed.events` already)
//   error   the server did not answer

import { get, isFinished, query, streamUrl } from "./api.js";
import { JobData } from "./store.js";

/** @typedef {import("./types.js").Job} Job */
/** @typedef {import("./types.js").Layer} Layer */
/** @typedef {import("./types.js").JobEvent} JobEvent */
/** @typedef {import("./types.js").ServerMessage} ServerMessage */
/** @typedef {import("./types.js").HelloMessage} HelloMessage */
/** @typedef {import("./types.js").StepMessage} StepMessage */
/** @typedef {import("./types.js").LayerSeries} LayerSeries */
/** @typedef {import("./types.js").StepsResponse} StepsResponse */
/** @typedef {import("./types.js").MatrixInfo} MatrixInfo */
/** @typedef {import("./types.js").SpectralResponse} SpectralResponse */
/** @typedef {import("./types.js").TimeProfileResponse} TimeProfileResponse */
/** @typedef {import("./types.js").SignalResponse} SignalResponse */

/**
 * @typedef {object} FeedEvents
 * @property {Job} job
 * @property {Layer[]} layers
 * @property {void} data
 * @property {JobEvent} event
 * @property {unknown} error
 */

/** Steps of history read at first (the API thins a longer run to this many points). */
const HISTORY_POINTS = 4000;
/** Columns of history for the heatmap. */
const HEATMAP_POINTS = 2400;
/** Points of the selected layer's histogram history. */
const HIST_POINTS = 300;
/** Profiles the time heatmap reads back (each is up to seq_len numbers). */
const TIME_POINTS = 600;
/** How often the job record is read while it runs (its diagnosis, its validation). */
const POLL_MS = 2500;
/** Wait before reading a gap back: the store writes steps in batches. */
const GAP_DELAY_MS = 1500;
/** Wait before reconnecting a dropped stream. */
const RECONNECT_MS = 1000;
/** Attempts to open the stream before the page gives up. */
const CONNECT_TRIES = 5;
/** Window of recent step arrivals the live rate is measured over. */
const RATE_WINDOW_MS = 3000;

/**
 * The messages of one stream frame: a text frame holds one; a binary frame (`compress=gzip`)
 * is a gzip member of messages, each followed by a newline.
 * @param {string | ArrayBuffer} data
 * @returns {Promise<ServerMessage[]>}
 */
async function messagesOf(data) {
  if (typeof data === "string") return [JSON.parse(data)];
  const text = await new Response(new Blob([data]).stream().pipeThrough(new DecompressionStream("gzip"))).text();
  return text
    .split("\n")
    .filter((line) => line)
    .map((line) => JSON.parse(line));
}

export class JobFeed {
  /** @param {string} id */
  constructor(id) {
    this.id = id;
    /** @type {Job} */
    this.job = /** @type {Job} */ ({});
    this.data = new JobData();
    /** @type {JobEvent[]} */
    this.events = [];
    /** The per-layer statistics, in the server's order (`hello.statistics`). @type {string[]} */
    this.statistics = [];
    /** Lower edges of the histogram buckets (`hello.histogram_edges`). @type {number[]} */
    this.edges = [];
    /** The matrices whose spectral radius the job measures (`hello.matrices`). @type {MatrixInfo[]} */
    this.matrices = [];
    /** Their largest singular values over the measured steps. @type {{step: number[], radius: (number | null)[][]}} */
    this.spectral = { step: [], radius: [] };
    /** The temporal gradient profiles over the profiled steps. @type {{step: number[], grad: (number | null)[][]}} */
    this.timeProfile = { step: [], grad: [] };
    /** The blocks whose output the forward signal describes (`hello.blocks`). @type {string[]} */
    this.blocks = [];
    /** Each block output's RMS over the recorded steps. @type {{step: number[], rms: (number | null)[][]}} */
    this.signal = { step: [], rms: [] };
    /** @type {{[K in keyof FeedEvents]?: ((detail: FeedEvents[K]) => void)[]}} */
    this.listeners = {};
    /** @type {WebSocket | null} */
    this.socket = null;
    this.closed = false;
    /** Messages that arrive while the history loads. @type {ServerMessage[] | null} */
    this.buffer = [];
    /** Step ranges the stream skipped, to read back; `to` is open until the next step. @type {{from: number, to: number | null}[]} */
    this.gaps = [];
    this.gapTimer = 0;
    this.pollTimer = 0;
    /** [time ms, step] of recent step messages, for the live rate. @type {[number, number][]} */
    this.arrivals = [];
    this.finishing = false;
  }

  /**
   * @template {keyof FeedEvents} K
   * @param {K} kind
   * @param {(detail: FeedEvents[K]) => void} fn
   */
  on(kind, fn) {
    /** @type {((detail: FeedEvents[K]) => void)[]} */
    const list = (this.listeners[kind] ??= []);
    list.push(fn);
  }

  /**
   * @template {keyof FeedEvents} K
   * @param {K} kind
   * @param {FeedEvents[K]} detail
   */
  emit(kind, detail) {
    for (const fn of this.listeners[kind] ?? []) fn(detail);
  }

  /** Reads the job, opens its stream and loads its history; resolves once live. */
  async start() {
    this.job = await get(`/jobs/${this.id}`);
    const hello = await this.connect();
    this.takeHello(hello);
    const { id, job, statistics } = this;
    const every = job.spec.monitor?.every ?? 1;
    /** @type {[{layers: Layer[]}, StepsResponse, {layers: LayerSeries[]}, {layers: LayerSeries[]}, {events: JobEvent[]}, SpectralResponse, TimeProfileResponse, SignalResponse]} */
    const [layers, steps, heat, latest, events, spectral, time, signal] = await Promise.all([
      get(`/jobs/${id}/layers`),
      get(`/jobs/${id}/steps${query({ max_points: HISTORY_POINTS })}`),
      get(`/jobs/${id}/layer-stats${query({ stat: "grad_norm", max_points: Math.min(HEATMAP_POINTS, Math.max(10, job.step)) })}`),
      job.step > 0 && every > 0 && statistics.length
        ? get(`/jobs/${id}/layer-stats${query({ from: Math.max(1, job.step - 4 * every), stat: statistics, max_points: 10 })}`)
        : Promise.resolve({ layers: [] }),
      get(`/jobs/${id}/events`),
      get(`/jobs/${id}/spectral${query({ max_points: HISTORY_POINTS })}`),
      get(`/jobs/${id}/time-profile${query({ max_points: TIME_POINTS })}`),
      get(`/jobs/${id}/signal${query({ max_points: HEATMAP_POINTS })}`),
    ]);
    if (!this.blocks.length) this.blocks = signal.blocks;
    this.addSignal(signal.step, signal.rms);
    this.addSpectral(spectral);
    this.addTimeProfile(time.step, time.grad);
    if (layers.layers.length) this.setLayers(layers.layers);
    this.data.addSteps(steps);
    this.addHeat(heat.layers);
    this.addLatest(latest.layers);
    if (this.data.histLayer !== null) await this.loadHist(this.data.histLayer);
    for (const e of events.events) this.addEvent(e);
    const waiting = this.buffer ?? [];
    this.buffer = null;
    for (const m of waiting) this.handle(m);
    this.emit("job", this.job);
    this.emit("data", undefined);
    if (!isFinished(this.job)) this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
    else this.finish();
  }

  /** Stops the stream and the timers. */
  close() {
    this.closed = true;
    clearTimeout(this.pollTimer);
    clearTimeout(this.gapTimer);
    this.socket?.close();
  }

  /**
   * Opens the stream; resolves with its `hello`. A stream that closes before its hello is
   * opened again, a few times.
   * @returns {Promise<HelloMessage>}
   */
  connect(tries = CONNECT_TRIES) {
    return new Promise((resolve, reject) => {
      // Compressed: the server sends the feed in gzip'd batches, built once for every
      // dashboard watching the job, in about a third of the bytes.
      const socket = new WebSocket(streamUrl(this.id, { compress: "gzip" }));
      socket.binaryType = "arraybuffer";
      this.socket = socket;
      let greeted = false;
      /** @param {ServerMessage} m */
      const take = (m) => {
        if (!greeted && m.type === "hello") {
          greeted = true;
          resolve(m);
        } else if (this.buffer) this.buffer.push(m);
        else this.handle(m);
      };
      // Frames are decoded one after another, so their messages (and the close) are
      // taken in the order they came, whatever each takes to decompress.
      let order = Promise.resolve();
      socket.onmessage = (e) => {
        order = order
          .then(() => messagesOf(e.data))
          .then((messages) => messages.forEach(take))
          .catch((err) => this.emit("error", err));
      };
      socket.onclose = () => {
        order = order.then(() => this.streamClosed(socket, greeted, tries, resolve, reject));
      };
    });
  }

  /**
   * After the stream closed and every frame it sent was taken: opens it again unless the
   * job is over.
   * @param {WebSocket} socket
   * @param {boolean} greeted
   * @param {number} tries
   * @param {(hello: HelloMessage) => void} resolve
   * @param {(err: Error) => void} reject
   */
  streamClosed(socket, greeted, tries, resolve, reject) {
    if (this.closed || socket !== this.socket) return;
    if (!greeted) {
      if (tries > 1) setTimeout(() => this.connect(tries - 1).then(resolve, reject), RECONNECT_MS);
      else reject(new Error("the job's stream did not open"));
      return;
    }
    // Closed after the final status (perhaps still waiting in the buffer): done.
    if (isFinished(this.job) || this.buffer?.some((m) => m.type === "status")) return;
    // Dropped while the job runs: open it again; its backlog and a REST read fill
    // what was missed.
    setTimeout(() => {
      if (this.closed) return;
      this.openGap();
      this.connect().then((hello) => this.takeHello(hello), (err) => this.emit("error", err));
    }, RECONNECT_MS);
  }

  /** @param {HelloMessage} m */
  takeHello(m) {
    this.job = { ...this.job, ...m.job, step: Math.max(this.job.step ?? 0, m.job.step) };
    this.statistics = m.statistics ?? [];
    if (!this.edges.length && m.histogram_edges) {
      this.edges = m.histogram_edges;
      this.data.setHistogramEdges(this.edges);
    }
    if (m.layers?.length && !this.data.layers.length) this.setLayers(m.layers);
    if (m.blocks?.length && !this.blocks.length) this.blocks = m.blocks;
    if (m.matrices?.length && !this.matrices.length) {
      this.matrices = m.matrices;
      this.spectral.radius = this.matrices.map(() => []);
    }
  }

  /**
   * Block output RMS, merged in step order (per block, one value per step).
   * @param {number[]} steps
   * @param {(number | null)[][]} rms
   */
  addSignal(steps, rms) {
    if (this.signal.rms.length < rms.length) this.signal.rms = rms.map((_, b) => this.signal.rms[b] ?? this.signal.step.map(() => null));
    const last = this.signal.step.length ? this.signal.step[this.signal.step.length - 1] : 0;
    steps.forEach((step, i) => {
      if (step <= last) return;
      this.signal.step.push(step);
      this.signal.rms.forEach((series, b) => series.push(rms[b]?.[i] ?? null));
    });
  }

  /** The block of layer `name` among `this.blocks` (`blocks.3.linear.weight` → `blocks.3`, `lstm.weight_hh_l1` → `lstm.l1`). */
  blockOf(/** @type {string} */ name) {
    const recurrent = /^(\w+)\.\w+_l(\d+)$/.exec(name);
    const key = recurrent ? `${recurrent[1]}.l${recurrent[2]}` : null;
    return this.blocks.findIndex((b) => b === key || name.startsWith(`${b}.`));
  }

  /**
   * Temporal profiles, merged in step order.
   * @param {number[]} steps
   * @param {(number | null)[][]} grads
   */
  addTimeProfile(steps, grads) {
    const last = this.timeProfile.step.length ? this.timeProfile.step[this.timeProfile.step.length - 1] : 0;
    steps.forEach((step, i) => {
      if (step <= last) return;
      this.timeProfile.step.push(step);
      this.timeProfile.grad.push(grads[i]);
    });
  }

  /** Measurements read back from `/spectral`, merged in step order. @param {SpectralResponse} r */
  addSpectral(r) {
    if (!this.matrices.length && r.matrices.length) {
      this.matrices = r.matrices;
      this.spectral.radius = this.matrices.map(() => []);
    }
    const last = this.spectral.step.length ? this.spectral.step[this.spectral.step.length - 1] : 0;
    r.step.forEach((step, i) => {
      if (step <= last) return;
      this.spectral.step.push(step);
      this.spectral.radius.forEach((series, m) => series.push(r.radius[m]?.[i] ?? null));
    });
  }

  /** @param {Layer[]} layers */
  setLayers(layers) {
    this.data.setLayers(layers);
    if (this.data.histLayer === null || this.data.histLayer >= layers.length) {
      const firstMatrix = layers.find((l) => (l.shape ?? []).length >= 2);
      this.data.selectHistLayer(firstMatrix ? firstMatrix.index : 0);
    }
    this.emit("layers", layers);
  }

  /** One message of the stream, once the history is in. @param {ServerMessage} m */
  handle(m) {
    switch (m.type) {
      case "hello":
        this.takeHello(m);
        this.emit("job", this.job);
        break;
      case "step":
        this.addStep(m);
        break;
      case "event": {
        const { type: _, ...event } = m;
        this.addEvent(event);
        break;
      }
      case "lagged":
        // The server skipped ahead: the steps between are read back.
        this.openGap();
        break;
      case "status":
        this.job = { ...this.job, status: m.status, error: m.error ?? this.job.error };
        this.emit("job", this.job);
        this.finish();
        break;
      default:
        break;
    }
  }

  /** @param {StepMessage} m */
  addStep(m) {
    const open = this.gaps.find((g) => g.to === null);
    if (open) {
      open.to = m.step - 1;
      this.scheduleGaps();
    }
    const data = this.data;
    data.addStep(m.step, m.loss, m.grad_norm, m.grad_norm_clipped, m.clip_coef, m.lr, m.skipped, m.loss_scale ?? null);
    if (m.signal) {
      const { rms } = m.signal;
      this.addSignal([m.step], rms.map((v) => [v]));
      // The layer table's column: each layer shows its block's output RMS.
      if (m.layers) m.layers.signal_rms = data.layers.map((l) => rms[this.blockOf(l.name)] ?? null);
    }
    if (m.layers) {
      const norms = m.layers.grad_norm;
      if (!data.layers.length && norms) this.nameLayers(norms.length).catch((err) => this.emit("error", err));
      data.addLayerStats(m.step, m.layers);
    }
    if (m.time_profile) this.addTimeProfile([m.step], [m.time_profile]);
    if (m.spectral) {
      const radius = m.spectral;
      // Subscribed before the job started: the matrices are named once it has.
      if (!this.matrices.length) {
        this.matrices = radius.map((_, index) => ({ index, name: `#${index}`, layer: -1, side: 0 }));
        this.spectral.radius = this.matrices.map(() => []);
        get(`/jobs/${this.id}/spectral${query({ from: 0, to: 0 })}`).then(
          (/** @type {SpectralResponse} */ r) => { if (r.matrices.length) this.matrices = r.matrices; },
          (err) => this.emit("error", err));
      }
      this.addSpectral({ matrices: [], step: [m.step], radius: radius.map((v) => [v]) });
    }
    const now = performance.now();
    this.arrivals.push([now, m.step]);
    while (this.arrivals.length > 2 && now - this.arrivals[0][0] > RATE_WINDOW_MS) this.arrivals.shift();
    if (m.step > this.job.step || this.job.status === "queued") {
      this.job = { ...this.job, step: Math.max(m.step, this.job.step), status: this.job.status === "queued" ? "running" : this.job.status };
      this.emit("job", this.job);
    }
    this.emit("data", undefined);
  }

  /** @param {JobEvent} e */
  addEvent(e) {
    this.events.push(e);
    // Validation passes arrive as events: the loss first, then the task's metric.
    if (e.kind === "validation") this.data.addEvals({ step: [e.step], loss: [e.value ?? null], value: [null] });
    else if (e.kind.startsWith("validation_")) {
      this.data.addEvals({ step: [e.step], loss: [null], value: [e.value ?? null], metric: e.kind.slice("validation_".length) });
    }
    this.emit("event", e);
    this.emit("data", undefined);
  }

  /** Layers that started before their names could be read: placeholders, then the names. */
  async nameLayers(/** @type {number} */ count) {
    this.setLayers(Array.from({ length: count }, (_, i) => ({ index: i, name: `#${i}`, shape: [] })));
    /** @type {{layers: Layer[]}} */
    const { layers } = await get(`/jobs/${this.id}/layers`);
    if (layers.length === count) {
      this.data.layers.forEach((l, i) => Object.assign(l, layers[i]));
      this.emit("layers", this.data.layers);
    }
  }

  /** @param {LayerSeries[]} series */
  addHeat(series) {
    for (const s of series) {
      const gn = s.grad_norm ?? [];
      for (let k = 0; k < s.step.length; k++) this.data.addNorm(s.index, s.step[k], gn[k]);
    }
  }

  /** The newest step of each layer's series, as one step's statistics. @param {LayerSeries[]} series */
  addLatest(series) {
    if (!series.length) return;
    /** @type {import("./types.js").LayerStats} */
    const stats = {};
    for (const name of this.statistics) stats[name] = series.map((l) => l[name]?.[l[name].length - 1] ?? null);
    const step = Math.max(0, ...series.map((l) => l.step[l.step.length - 1] ?? 0));
    this.data.addLayerStats(step, stats);
  }

  /** Steps from the next one on are missing until the next step that arrives. */
  openGap() {
    if (!this.gaps.some((g) => g.to === null)) this.gaps.push({ from: this.data.lastStep + 1, to: null });
  }

  scheduleGaps() {
    if (!this.gapTimer && !this.closed) {
      this.gapTimer = setTimeout(() => {
        this.gapTimer = 0;
        this.fillGaps().catch((err) => this.emit("error", err));
      }, GAP_DELAY_MS);
    }
  }

  /** Reads back from the REST API the steps the stream skipped. */
  async fillGaps() {
    const ready = this.gaps.filter((g) => g.to !== null);
    this.gaps = this.gaps.filter((g) => g.to === null);
    for (const { from, to } of ready) {
      if (to === null || to < from) continue;
      const range = { from, to, max_points: Math.min(100000, Math.max(10, to - from + 1)) };
      /** @type {[StepsResponse, {layers: LayerSeries[]}]} */
      const [steps, heat] = await Promise.all([
        get(`/jobs/${this.id}/steps${query(range)}`),
        get(`/jobs/${this.id}/layer-stats${query({ ...range, stat: "grad_norm" })}`),
      ]);
      this.data.addSteps(steps);
      this.addHeat(heat.layers);
      // Not stored yet: the rest is read again shortly.
      const last = steps.step.length ? steps.step[steps.step.length - 1] : from - 1;
      if (last < to) this.gaps.push({ from: last + 1, to });
    }
    if (this.gaps.some((g) => g.to !== null)) this.scheduleGaps();
    this.emit("data", undefined);
  }

  /** Loads a layer's histogram history and shows it. */
  async selectHistLayer(/** @type {number} */ layer) {
    await this.loadHist(layer);
    this.emit("data", undefined);
  }

  async loadHist(/** @type {number} */ layer) {
    this.data.selectHistLayer(layer);
    if (this.job.spec.monitor?.histogram === false || this.job.step === 0 || !this.edges.length) return;
    /** @type {{layers: LayerSeries[]}} */
    const res = await get(`/jobs/${this.id}/layer-stats${query({ layers: layer, stat: "hist", max_points: HIST_POINTS })}`);
    const series = res.layers[0];
    if (this.data.histLayer !== layer || !series) return;
    series.hist?.forEach((/** @type {number[] | null} */ h, /** @type {number} */ k) => h && this.data.addHist(series.step[k], h));
  }

  /** Reads the job record (its diagnosis, the step the store has) while it runs. */
  async poll() {
    this.pollTimer = 0;
    if (this.closed) return;
    try {
      /** @type {Job} */
      const fresh = await get(`/jobs/${this.id}`);
      this.job = { ...fresh, step: Math.max(fresh.step, this.data.lastStep) };
      this.emit("job", this.job);
      if (isFinished(this.job)) this.finish();
    } catch (err) {
      this.emit("error", err);
    }
    if (!this.closed && !isFinished(this.job)) this.pollTimer = setTimeout(() => this.poll(), POLL_MS);
  }

  /** The job ended: its final record, every validation result, and any steps not seen. */
  async finish() {
    if (this.finishing) return;
    this.finishing = true;
    clearTimeout(this.pollTimer);
    try {
      // The store writes in batches: read the final record once it has landed.
      /** @type {Job} */
      const job = await get(`/jobs/${this.id}`);
      this.job = job;
      for (const g of this.gaps) if (g.to === null) g.to = job.step;
      if (this.gaps.length) await this.fillGaps();
      if (this.data.lastStep < job.step) this.data.addSteps(await get(`/jobs/${this.id}/steps${query({ from: this.data.lastStep + 1, max_points: HISTORY_POINTS })}`));
      // Every validation pass with its metric (the answer carries them all, unthinned).
      /** @type {StepsResponse} */
      const all = await get(`/jobs/${this.id}/steps${query({ max_points: 10 })}`);
      this.data.addEvals(all.eval);
      this.emit("job", this.job);
      this.emit("data", undefined);
    } catch (err) {
      this.emit("error", err);
    }
  }

  /**
   * Steps per second: a finished job's over its run (from its record: the steps it did
   * since it started or resumed, over the time from start to finish), a running job's
   * over the last seconds of arrivals. Null when unknown.
   * @returns {number | null}
   */
  rate() {
    const job = this.job;
    if (isFinished(job)) return finishedRate(job);
    if (this.arrivals.length < 2) return null;
    const [t0, s0] = this.arrivals[0];
    const [t1, s1] = this.arrivals[this.arrivals.length - 1];
    return t1 > t0 ? ((s1 - s0) * 1000) / (t1 - t0) : null;
  }
}

/**
 * A finished job's steps per second over its (last) run, from its record.
 * @param {Job} job
 */
export function finishedRate(job) {
  if (!job.started_at || !job.finished_at) return null;
  const seconds = (Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000;
  const steps = job.step - (job.resumed_from ?? 0);
  return seconds > 0 && steps > 0 ? steps / seconds : null;
}
