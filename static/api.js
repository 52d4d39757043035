// @ts-check
// Talking to the gradscope REST API and its WebSocket stream.
//
// A server started with an API token answers 401; the token the user types is kept in
// localStorage and sent as a bearer header (and as `?token=` on the WebSocket, which
// cannot carry headers; the server takes a token in the URL nowhere else).

const TOKEN_KEY = "gradscope.token";

/** One invalid field of a 422 and what is wrong with it. @typedef {{field: string, message: string}} FieldError */

/**
 * An error answer from the API, with the contract's `code`, `message` and `field`, and
 * (for a 422) `errors`, every invalid field at once.
 */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {{error?: {code?: string, message?: string, field?: string, errors?: FieldError[]}} | null} body
   */
  constructor(status, body) {
    const detail = body?.error ?? {};
    super(detail.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = detail.code ?? "http_error";
    this.field = detail.field ?? null;
    /** @type {FieldError[]} */
    this.errors = detail.errors ?? [];
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(/** @type {string} */ value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** Listeners told when the server asks for a token. @type {Set<() => void>} */
const unauthorized = new Set();
export function onUnauthorized(/** @type {() => void} */ fn) {
  unauthorized.add(fn);
}

/**
 * One API call; the answer's JSON (null for 204), or an `ApiError`.
 * @param {string} method
 * @param {string} path
 * @param {unknown} [body]
 * @returns {Promise<any>}
 */
export async function request(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) unauthorized.forEach((fn) => fn());
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

/**
 * Uploads a file as `application/octet-stream` (the only type upload routes take); the
 * answer's JSON, or an `ApiError`.
 * @param {string} path
 * @param {Blob} file
 * @returns {Promise<any>}
 */
export async function upload(path, file) {
  /** @type {Record<string, string>} */
  const headers = { "content-type": "application/octet-stream" };
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const response = await fetch(`/api/v1${path}`, { method: "POST", headers, body: file });
  if (response.status === 401) unauthorized.forEach((fn) => fn());
  let json = null;
  try {
    json = await response.json();
  } catch {
    json = null;
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return json;
}

export const get = (/** @type {string} */ path) => request("GET", path);
export const post = (/** @type {string} */ path, /** @type {unknown} */ body = undefined) => request("POST", path, body);
export const del = (/** @type {string} */ path) => request("DELETE", path);

/**
 * Query string from an object, leaving out null and undefined values.
 * @param {Record<string, string | number | boolean | (string | number)[] | null | undefined>} params
 */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined) q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** The WebSocket URL of a job's stream. */
export function streamUrl(/** @type {string} */ id, /** @type {Record<string, string | number>} */ params = {}) {
  const t = token();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api/v1/jobs/${id}/stream${query({ ...params, token: t || null })}`;
}

/**
 * Downloads `path` of the API and hands it to the browser as a file. A plain link cannot
 * send the bearer header, and a token in a URL ends up in history and server logs, so the
 * file is fetched here and saved from a blob.
 */
export async function download(/** @type {string} */ path, /** @type {string} */ filename) {
  /** @type {Record<string, string>} */
  const headers = {};
  const t = token();
  if (t) headers.authorization = `Bearer ${t}`;
  const response = await fetch(`/api/v1${path}`, { headers });
  if (response.status === 401) unauthorized.forEach((fn) => fn());
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    throw new ApiError(response.status, body);
  }
  const url = URL.createObjectURL(await response.blob());
  try {
    const link = document.createElement("a");
    link.href = url;
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
  } finally {
    // The click has started the download; the blob may go once it has been handed over.
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }
}

/** Downloads a job's checkpoint (see `download`). */
export function downloadCheckpoint(/** @type {string} */ id, /** @type {string} */ filename) {
  return download(`/jobs/${id}/checkpoint`, filename);
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled", "diverged", "interrupted"]);
export const isFinished = (/** @type {{status: string}} */ job) => FINISHED.has(job.status);
