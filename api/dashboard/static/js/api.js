// Keys, JSON reads and the live feed. The keys live in this tab's sessionStorage only:
// asked once, gone when the tab closes.
import { fetchEventSource } from "../vendor/fetch-event-source/fetch.js";

const API_KEY = "mlx-supervisor.api-key";
const ADMIN_KEY = "mlx-supervisor.admin-key";

export const keys = {
  get api() { return sessionStorage.getItem(API_KEY) || ""; },
  get admin() { return sessionStorage.getItem(ADMIN_KEY) || ""; },
  set(kind, value) {
    const name = kind === "admin" ? ADMIN_KEY : API_KEY;
    if (value) sessionStorage.setItem(name, value);
    else sessionStorage.removeItem(name);
  },
};

/** Reads go with the API key, else the admin key (an admin may do everything). */
export function authHeaders(kind = "api") {
  const key = kind === "admin" ? keys.admin : keys.api || keys.admin;
  return key ? { Authorization: `Bearer ${key}` } : {};
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    message = body?.error?.message || body?.error || body?.detail || message;
  } catch { /* not JSON: keep the status line */ }
  return new HttpError(response.status, message);
}

export async function getJSON(path, { signal } = {}) {
  const response = await fetch(path, { headers: authHeaders(), signal, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function send(method, path, { kind = "api", body, signal } = {}) {
  const headers = { ...authHeaders(kind) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response;
}

const RETRY_MIN = 500; // ms: first retry after a lost feed
const RETRY_MAX = 5000; // ms: a supervisor restarting is back within seconds

/**
 * Follow /api/cluster/events until ``signal`` aborts: ``onItem({id, event, data})`` per
 * item, ``onState("open" | "down" | "denied", detail)`` as the connection changes.
 * fetchEventSource resends Last-Event-ID on a retry, so a reconnect repeats nothing
 * (or starts with a fresh snapshot when the supervisor no longer has those events).
 */
export function follow(onItem, onState, signal) {
  let delay = RETRY_MIN;
  fetchEventSource("/api/cluster/events", {
    signal,
    headers: authHeaders(),
    openWhenHidden: true, // a wall display in a background tab still wants the truth
    async onopen(response) {
      const type = response.headers.get("content-type") || "";
      if (response.ok && type.startsWith("text/event-stream")) {
        delay = RETRY_MIN;
        onState("open");
        return;
      }
      const error = await failure(response);
      if (response.status === 401 || response.status === 403) {
        onState("denied", error.message);
        throw new Fatal(error.message); // retrying with the same key is pointless
      }
      throw error;
    },
    onmessage(message) {
      if (!message.data) return; // a heartbeat
      let data;
      try { data = JSON.parse(message.data); } catch { return; }
      onItem({ id: Number(message.id) || 0, event: message.event || data.type || "", data });
    },
    onclose() {
      throw new Error("the feed ended"); // the supervisor stopped: retry below
    },
    onerror(error) {
      if (error instanceof Fatal) throw error;
      onState("down", error?.message || String(error));
      delay = Math.min(RETRY_MAX, delay * 2);
      return delay;
    },
  }).catch(() => { /* denied or aborted: the caller decides what next */ });
}

class Fatal extends Error {}
