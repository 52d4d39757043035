// Shared set-up for the browser tests: a real gradscope server on a free port with its
// own temporary database, and headless Chromium driven by playwright-core.

import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const ARTIFACTS = join(ROOT, "test-artifacts");

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

/** The statuses a job ends in. */
const ENDED = ["succeeded", "diverged", "failed", "cancelled", "interrupted"];

/**
 * A tiny transformer language model on the CPU (hidden 8, `blocks` blocks of 12 tensors
 * each, `encoder.layers.<i>.…`), with `extra` on top.
 */
export const tinyTransformer = (blocks, extra = {}) => ({
  batch_size: 4, device: "cpu",
  task: { kind: "char_lm", corpus: "builtin:tiny", seq_len: 8 },
  model: { kind: "transformer", layers: blocks, hidden: 8, heads: 2 },
  ...extra,
});

/** A tiny classification MLP (a few hundred parameters) on the CPU, with `extra` on top. */
export const tinyMlp = (extra = {}) => ({
  batch_size: 16, device: "cpu",
  task: { kind: "classification", features: 8, classes: 4 },
  model: { kind: "mlp", layers: 2, hidden: 16 },
  ...extra,
});

/**
 * Starts the server; resolves once /readyz answers. `token`: the server requires it
 * (`--api-token`), and `api`/`bytes` send it. `args`: more flags for `serve`
 * (`--max-queued 300`); `staticDir`: the dashboard to serve (default the checkout's).
 */
export async function startServer({ token = null, args = [], staticDir = join(ROOT, "static") } = {}) {
  const bin = resolve(ROOT, process.env.GRADSCOPE_BIN ?? "target/debug/gradscope");
  const dir = mkdtempSync(join(tmpdir(), "gradscope-browser-"));
  const port = await freePort();
  const log = [];
  const child = spawn(bin, [
    "serve",
    "--addr", `127.0.0.1:${port}`,
    "--database-url", `sqlite://${join(dir, "db.sqlite")}`,
    "--data-dir", join(dir, "data"),
    "--static-dir", staticDir,
    "--torch-threads", "1",
    "--log", "warn",
    ...(token ? ["--api-token", token] : []),
    ...args,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  child.stdout.on("data", (d) => log.push(String(d)));
  child.stderr.on("data", (d) => log.push(String(d)));
  const exited = new Promise((ok) => {
    child.on("exit", (code) => ok(code));
    child.on("error", (err) => ok(`${err.message}; set GRADSCOPE_BIN to the server binary`));
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    const code = await Promise.race([exited, new Promise((ok) => setTimeout(() => ok(undefined), 100))]);
    if (code !== undefined) throw new Error(`the server exited (${code}):\n${log.join("")}`);
    try {
      if ((await fetch(`${url}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`the server did not become ready:\n${log.join("")}`);
  }
  return {
    url,
    log,
    async api(method, path, body) {
      const headers = body ? { "content-type": "application/json" } : {};
      if (token) headers.authorization = `Bearer ${token}`;
      const r = await fetch(`${url}/api/v1${path}`, {
        method,
        headers,
        body: body ? JSON.stringify(body) : undefined,
      });
      return { status: r.status, body: r.status === 204 ? null : await r.json() };
    },
    /** Submits `spec` and returns the created job; anything but a 201 throws. */
    async submit(spec) {
      const created = await this.api("POST", "/jobs", spec);
      if (created.status !== 201) throw new Error(`submitting a job: ${created.status} ${JSON.stringify(created.body)}`);
      return created.body;
    },
    /** Waits up to two minutes for job `id` to end; returns its record. */
    async finished(id) {
      return until(async () => {
        const { body } = await this.api("GET", `/jobs/${id}`);
        return ENDED.includes(body.status) ? body : null;
      }, { timeout: 120_000, what: `job ${id} to finish` });
    },
    /** The raw bytes of a GET. */
    async bytes(path) {
      const r = await fetch(`${url}/api/v1${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
      return { status: r.status, body: Buffer.from(await r.arrayBuffer()) };
    },
    async stop() {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** Headless Chromium with a fresh profile; collects console errors and page errors. */
export async function openBrowser({ width = 1440, height = 900, colorScheme = "light" } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "gradscope-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width, height },
    colorScheme,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") errors.push(`console: ${msg.text()}`);
  });
  page.on("pageerror", (err) => errors.push(`page: ${err.message}`));
  mkdirSync(ARTIFACTS, { recursive: true });
  return {
    page,
    errors,
    async shot(name) {
      await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Non-blank pixels of a canvas (pixels that differ from fully transparent). */
export function paintedPixels(page, selector) {
  return page.$eval(selector, (canvas) => {
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) n++;
    return n;
  });
}

/** Polls `fn` until it returns a truthy value. */
export async function until(fn, { timeout = 30_000, interval = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, interval));
  }
}
