// Topology: nodes as boxes on an ellipse (a grid on narrow screens), one colour per group,
// a link between consecutive ranks of each group, labelled with the live link probe's latest
// figures once it reports them (state.links) and coloured by their status (active, degraded,
// down: the CSS's --ok/--warn/--bad), "no probe yet" until then.
import { groupColour, h, show } from "./format.js";

const BOX = { w: 150, h: 58 };

/** Centres for ``n`` boxes in a ``width``-wide drawing: no two boxes overlap. */
export function layout(n, width) {
  const W = Math.max(320, Math.min(960, width || 960));
  const box = { ...BOX };
  if (n <= 0) return { W, H: 80, box, points: [] };
  if (n === 1) return { W, H: 130, box, points: [{ x: W / 2, y: 65 }] };
  if (n === 2 && W >= 420) {
    return { W, H: 130, box, points: [{ x: W * 0.22, y: 65 }, { x: W * 0.78, y: 65 }] };
  }
  if (W < 640) { // a grid of two columns: the ellipse's labels would be unreadably small
    box.w = Math.min(BOX.w, (W - 60) / 2);
    const rows = Math.ceil(n / 2);
    const H = rows * (box.h + 46) + 20;
    const points = Array.from({ length: n }, (_, i) => ({
      x: i % 2 === 0 ? 20 + box.w / 2 : W - 20 - box.w / 2,
      y: 20 + box.h / 2 + Math.floor(i / 2) * (box.h + 46),
    }));
    return { W, H, box, points };
  }
  const H = n <= 4 ? 300 : 520;
  const rx = (W - box.w) / 2 - 12;
  const ry = (H - box.h) / 2 - 14;
  const points = Array.from({ length: n }, (_, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return { x: W / 2 + rx * Math.cos(a), y: H / 2 + ry * Math.sin(a) };
  });
  return { W, H, box, points };
}

/** The pairs of nodes a group's ranks talk over: consecutive ranks, a ring when > 2. */
export function groupLinks(model) {
  const out = [];
  for (const name of model.groupNames()) {
    const g = model.groups[name];
    const ranks = model.actorsOf((a) => a.group === name && a.kind === "generation");
    const nodes = ranks.length ? ranks.map((a) => a.node) : g.nodes || [];
    const distinct = [...new Set(nodes)];
    if (distinct.length < 2) continue;
    const pairs = distinct.length === 2 ? [[distinct[0], distinct[1]]]
      : distinct.map((a, i) => [a, distinct[(i + 1) % distinct.length]]);
    for (const [a, b] of pairs) out.push({ group: name, a, b });
  }
  return out;
}

/** The group's probed link between nodes ``a`` and ``b`` (either way round), if any. */
export function probe(links, group, a, b) {
  return (links || []).find((l) => {
    const ends = l.nodes || [];
    return l.group === group && ((ends[0] === a && ends[1] === b) || (ends[0] === b && ends[1] === a));
  });
}

/** The link's label: its figures (or "down"), its status as the CSS class, and a tooltip. */
export function probeLabel(p) {
  if (!p) return { text: "no probe yet", cls: "unprobed", title: "no live probe has run yet" };
  const parts = [];
  if (p.latency_us != null) parts.push(`${Number(p.latency_us).toFixed(1)} µs`);
  if (p.bandwidth_gbps != null) parts.push(`${Number(p.bandwidth_gbps).toFixed(2)} GB/s`);
  const status = p.status || "active";
  const text = status === "down" ? "down" : parts.join(" · ") || status;
  const when = p.last_probe ? new Date(p.last_probe * 1000).toLocaleTimeString() : "";
  const title = [`${p.id} ${status}`, p.interface, p.reason, when && `probed ${when}`]
    .filter(Boolean).join(" · ");
  return { text: status === "degraded" ? `${text} (degraded)` : text, cls: status, title };
}

export function renderTopology(el, model) {
  const names = Object.keys(model.nodes).sort();
  const groups = model.groupNames();
  const { W, H, box, points } = layout(names.length, el.clientWidth);
  const at = Object.fromEntries(names.map((n, i) => [n, points[i]]));
  const links = groupLinks(model);
  const seen = {};
  const linkEls = links.map(({ group, a, b }) => {
    const key = [a, b].sort().join("|");
    const k = (seen[key] = (seen[key] ?? -1) + 1); // several groups over one pair: fan out
    const p = at[a], q = at[b];
    const mx = (p.x + q.x) / 2, my = (p.y + q.y) / 2;
    const len = Math.hypot(q.x - p.x, q.y - p.y) || 1;
    const bend = k * 28;
    const cx = mx - ((q.y - p.y) / len) * bend, cy = my + ((q.x - p.x) / len) * bend;
    const label = probeLabel(probe(model.links(), group, a, b));
    return h("svg:g", { class: `link ${label.cls}`, "data-group": group },
      h("svg:title", {}, label.title),
      h("svg:path", { d: `M${p.x},${p.y} Q${cx},${cy} ${q.x},${q.y}`, stroke: groupColour(group, groups) }),
      h("svg:text", { x: (mx + cx) / 2, y: (my + cy) / 2 - 6, "text-anchor": "middle", class: "linklabel" },
        label.text));
  });
  const nodeEls = names.map((name) => {
    const n = model.nodes[name];
    const { x, y } = at[name];
    const mine = groups.filter((g) => (model.groups[g].nodes || []).includes(name));
    const ranks = model.actorsOf((a) => a.node === name && a.kind === "generation")
      .map((a) => `${a.group}/r${a.rank}`).join(" ");
    return h("svg:g", { class: `tnode ${n.state}`, "data-node": name },
      h("svg:rect", { x: x - box.w / 2, y: y - box.h / 2, width: box.w, height: box.h, rx: 8,
        stroke: mine.length ? groupColour(mine[0], groups) : "currentColor" }),
      mine.map((g, i) => h("svg:circle", { cx: x - box.w / 2 + 12 + i * 12, cy: y - box.h / 2 + 12, r: 4.5,
        fill: groupColour(g, groups) })),
      h("svg:text", { x, y: y + 2, "text-anchor": "middle", class: "tname" }, clip(name, box.w)),
      h("svg:text", { x, y: y + 19, "text-anchor": "middle", class: "tsub" },
        clip(ranks || n.state, box.w)));
  });
  const svg = h("svg:svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img",
    "aria-label": `${names.length} nodes, ${links.length} links between group ranks` },
  h("svg:title", {}, "Cluster topology"), linkEls, nodeEls);
  const legend = h("ul", { class: "legend" }, groups.map((g) =>
    h("li", {}, h("span", { class: "swatch", "data-colour": groupColour(g, groups), "aria-hidden": "true" }),
      `${g}: ${model.groups[g].model}`)));
  show(el, names.length ? [svg, legend] : h("p", { class: "muted" }, "No nodes yet."));
  for (const sw of el.querySelectorAll(".swatch")) sw.style.background = sw.dataset.colour;
}

function clip(text, width) {
  const max = Math.floor(width / 8);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
