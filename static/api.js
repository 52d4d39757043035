// Talking to the gradscope REST API and its WebSocket stream.
//
// A server started with an API token answers 401; the token the user types is kept in
// localStorage and sent as a bearer header (and as `?token=` on the WebSocket, which
// cannot carry headers).

const TOKEN_KEY = "gradscope.token";

/** An error answer from the API, with the contract's `code`, `message` and `field`. */
export class ApiError extends Error {
  constructor(status, body) {
    const detail = body?.error ?? {};
    super(detail.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = detail.code ?? "http_error";
    this.field = detail.field ?? null;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) ?? "";
}

export function setToken(value) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** Listeners told when the server asks for a token. */
const unauthorized = new Set();
export function onUnauthorized(fn) {
  unauthorized.add(fn);
}

export async function request(method, path, body) {
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

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const del = (path) => request("DELETE", path);

/** Query string from an object, leaving out null and undefined values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined) q.set(k, Array.isArray(v) ? v.join(",") : String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** The WebSocket URL of a job's stream. */
export function streamUrl(id, params = {}) {
  const t = token();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/api/v1/jobs/${id}/stream${query({ ...params, token: t || null })}`;
}

/** Where the browser downloads a job's checkpoint (a link cannot send headers). */
export function checkpointUrl(id) {
  const t = token();
  return `/api/v1/jobs/${id}/checkpoint${t ? query({ token: t }) : ""}`;
}

export const FINISHED = new Set(["succeeded", "failed", "cancelled", "diverged", "interrupted"]);
export const isFinished = (job) => FINISHED.has(job.status);
