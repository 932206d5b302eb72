// DOM building and number formatting shared by the panels. Text goes in as text
// (textContent), never as HTML: model names, reasons and errors are data.

export const DASH = "—"; // shown instead of a figure we do not have (or no longer trust)

/** h("td", {class: "num"}, "12") -> <td class="num">12</td>; null/false children skipped. */
export function h(tag, attrs, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "width%") el.style.width = `${v}%`; // CSSOM: allowed by the page's CSP
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replace ``el``'s children only when what they show changed (keeps focus and selection). */
const shown = new WeakMap(); // element -> the HTML it shows

export function show(el, ...children) {
  const next = document.createElement("div");
  next.append(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  const key = next.innerHTML;
  if (shown.get(el) === key) return;
  shown.set(el, key);
  el.replaceChildren(...next.childNodes);
}

export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function num(n, digits = 0) {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH;
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function ms(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return DASH;
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return DASH;
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${s % 60}s`;
  return `${s}s`;
}

export function clock(unixSeconds) {
  if (!unixSeconds) return DASH;
  return new Date(unixSeconds * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

/** The 70/85 % memory thresholds (supervisor/state/nodes.py) as a CSS class. */
export function level(fraction) {
  if (!(fraction >= 0)) return "unknown";
  if (fraction >= 0.85) return "critical";
  if (fraction >= 0.7) return "warning";
  return "ok";
}

/** One colour per group, stable for a name across reloads. */
const PALETTE = ["#2f6fde", "#d9730d", "#0f9d58", "#a142f4", "#d93025", "#00897b", "#c2185b",
  "#5f6368", "#f9ab00", "#3949ab"];
export function groupColour(name, names) {
  const i = names.indexOf(name);
  return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
}
