// Request history and error log: newest first, re-read from their endpoints when the feed
// says a request ended or something failed (never on a timer).
import { DASH, clock, h, ms, num, show } from "./format.js";

const STATUS = { ok: "ok", error: "critical", cancelled: "pending" };

function table(caption, columns, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": caption },
    h("table", {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}

export function renderHistory(el, records) {
  const rows = records.map((r) => h("tr", { "data-request": r.id },
    h("td", {}, clock(r.created)),
    h("td", {}, h("code", { class: "rid" }, r.id)),
    h("td", {}, r.dialect || DASH),
    h("td", {}, h("code", {}, r.model)),
    h("td", {}, (r.groups || []).join(" → ") || DASH),
    h("td", { class: "num" }, `${num(r.prompt_tokens)} / ${num(r.cached_tokens)} / ${num(r.completion_tokens)}`),
    h("td", { class: "num" }, ms(r.ttft_ms)),
    h("td", { class: "num" }, ms(r.duration_ms)),
    h("td", { class: "num" }, num(r.tokens_per_second, 1)),
    h("td", {}, h("span", { class: `badge ${STATUS[r.status] || "muted"}`, title: r.error || r.finish_reason || "" },
      r.status), r.error ? h("span", { class: "reason" }, ` ${r.error}`) : null)));
  show(el, table("Request history, newest first",
    ["Time", "Request id", "Dialect", "Model", "Group", "Tokens in / cached / out", "TTFT", "Duration",
      "tok/s", "Status"], rows, "No requests yet."));
}

export function renderErrors(el, records) {
  const rows = records.map((e) => h("tr", {},
    h("td", {}, clock(e.time)),
    h("td", {}, h("span", { class: "badge critical" }, e.kind)),
    h("td", {}, [e.node && `node ${e.node}`, e.group && `group ${e.group}`, e.actor && `actor ${e.actor}`,
      e.request_id && `request ${e.request_id}`].filter(Boolean).join(" · ") || DASH),
    h("td", { class: "message" }, e.message)));
  show(el, table("Error log, newest first", ["Time", "Kind", "Where", "Message"], rows, "No errors."));
}
