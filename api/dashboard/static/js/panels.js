// Overview, Nodes and Groups: drawn from the ClusterModel on every change (Models: models.js).
import { DASH, bytes, duration, groupColour, h, level, ms, num, show } from "./format.js";

const tile = (label, value, extra) =>
  h("div", { class: "tile" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value), extra);

export function renderOverview(el, m) {
  const nodes = Object.values(m.nodes);
  const groups = Object.values(m.groups);
  const up = nodes.filter((n) => n.state === "up").length;
  const ready = groups.filter((g) => g.state === "ready").length;
  const live = m.connected;
  const inFlight = m.figure("in_flight") ?? m.figure("queue_depth");
  const waiting = m.figure("waiting");
  const size = inFlight === null || waiting === null ? null : inFlight + waiting;
  const max = m.state.queue_max;
  const share = size !== null && max ? Math.min(1, size / max) : 0;
  const queue = h("div", { class: "queue" },
    h("div", { class: "meter", role: "meter", "aria-label": "queue depth", "aria-valuemin": 0,
      "aria-valuemax": max || 0, "aria-valuenow": size ?? 0 },
      h("div", { class: `fill ${level(share)}`, "width%": (share * 100).toFixed(1) })));
  show(el,
    tile("Nodes up", live ? `${up}/${nodes.length}` : DASH),
    tile("Groups ready", live ? `${ready}/${groups.length}` : DASH),
    tile("Models", live ? num(Object.keys(m.models()).length) : DASH),
    tile("Uptime", duration(m.figure("uptime_seconds"))),
    tile("Requests", num(m.figure("requests_total"))),
    tile("Tokens", num(m.figure("tokens_total"))),
    tile("tok/s avg · peak (60 s)",
      `${num(m.figure("tokens_per_second_avg_60s"), 1)} · ${num(m.figure("tokens_per_second_peak_60s"), 1)}`),
    tile("Avg latency", ms(m.figure("latency_avg_ms"))),
    tile("Queue", size === null ? DASH : `${size} / ${max ?? DASH}`, queue),
  );
}

/** ok / warning / critical from the health, or the node's state when it is not up. */
function nodeBadge(node, used, total) {
  if (node.state !== "up") {
    const cls = node.state === "connecting" ? "pending" : "critical";
    return badge(node.state === "down" ? "unreachable" : node.state, cls, node.reason);
  }
  const health = node.health || (total ? level(used / total) : null);
  if (!health) return badge("waiting for memory", "pending", "");
  return badge(health, health, node.health_reason || (health !== "ok" ? `${Math.round((100 * used) / total)}% of memory used` : ""));
}

export function badge(text, cls, reason) {
  return h("span", { class: "state" },
    h("span", { class: `badge ${cls}` }, text), reason ? h("span", { class: "reason" }, reason) : null);
}

function memoryBar(figures, ranks) {
  const total = figures?.mem_total || 0;
  if (!total) return h("p", { class: "muted" }, "memory: no report yet");
  const used = figures.mem_used || 0;
  const active = ranks.reduce((s, r) => s + (r.mlx_active_bytes || 0), 0);
  const cache = ranks.reduce((s, r) => s + (r.mlx_cache_bytes || 0), 0);
  const mlxActive = Math.min(active, used);
  const mlxCache = Math.min(cache, used - mlxActive);
  const rest = Math.max(0, used - mlxActive - mlxCache);
  const cls = level(used / total);
  const pct = (b) => ((100 * b) / total).toFixed(2);
  return h("div", { class: "memory" },
    h("div", { class: `membar ${cls}`, role: "img",
      "aria-label": `memory ${Math.round((100 * used) / total)}% used: MLX active ${bytes(mlxActive)}, MLX cache ${bytes(mlxCache)}, rest of the machine ${bytes(rest)}` },
      h("span", { class: "seg active", "width%": pct(mlxActive), title: `MLX active ${bytes(mlxActive)}` }),
      h("span", { class: "seg cache", "width%": pct(mlxCache), title: `MLX cache ${bytes(mlxCache)}` }),
      h("span", { class: "seg rest", "width%": pct(rest), title: `rest of the machine ${bytes(rest)}` }),
      h("span", { class: "tick t70" }), h("span", { class: "tick t85" })),
    h("div", { class: "memtext" },
      h("strong", {}, `${bytes(used)} / ${bytes(total)} (${Math.round((100 * used) / total)}%)`),
      h("span", { class: "key active" }, `MLX active ${bytes(mlxActive)}`),
      h("span", { class: "key cache" }, `MLX cache ${bytes(mlxCache)}`),
      h("span", { class: "key rest" }, `rest ${bytes(rest)}`),
      h("span", {}, `swap ${bytes(figures.swap_used || 0)}`),
      figures.pressure ? h("span", {}, `pressure ${figures.pressure}`) : null));
}

function hardware(hw) {
  if (!hw) return DASH;
  const chip = hw.chip || hw.cpu || "";
  const cores = [hw.cpu_cores && `${hw.cpu_cores} CPU`, hw.gpu_cores && `${hw.gpu_cores} GPU`]
    .filter(Boolean).join(" · ");
  return [chip, cores && `${cores} cores`].filter(Boolean).join(", ") || DASH;
}

function actorLine(m, a) {
  const age = m.connected ? (m.actorLive(a.id).last_heartbeat_age ?? a.last_heartbeat_age) : null;
  const beat = age === null || age === undefined ? "no beat" : `beat ${age.toFixed(1)} s ago`;
  return h("li", { class: "actor", "data-actor": a.id },
    h("code", {}, a.id), " ",
    h("span", { class: `badge ${actorClass(a.state)}` }, a.state), " ",
    h("span", { class: "pid" }, a.pid ? `pid ${a.pid}` : "no pid"), " · ",
    h("span", {}, m.connected ? beat : "disconnected"),
    a.restarts ? h("span", { class: "restarts" }, ` · restarts ${a.restarts}`) : null);
}

export function actorClass(state) {
  if (state === "running") return "ok";
  if (["starting", "loading", "waiting"].includes(state)) return "pending";
  if (state === "stopped") return "muted";
  return "critical";
}

export function renderNodes(el, m, { admin, onRemove }) {
  const mem = m.memory();
  const ranks = Object.values(mem.ranks || {});
  const cards = Object.values(m.nodes).sort((a, b) => a.name.localeCompare(b.name)).map((n) => {
    const figures = m.connected ? mem.nodes?.[n.name] : null;
    const onNode = ranks.filter((r) => r.node === n.name);
    return h("article", { class: "card node", "data-node": n.name },
      h("header", {}, h("h3", {}, n.name), nodeBadge(n, figures?.mem_used || 0, figures?.mem_total || 0)),
      h("dl", { class: "facts" },
        h("dt", {}, "address"), h("dd", {}, n.ssh + (n.local ? " (local)" : "")),
        h("dt", {}, "chip"), h("dd", {}, hardware(n.hardware))),
      m.connected ? memoryBar(figures, onNode) : h("p", { class: "muted" }, "memory: disconnected"),
      h("ul", { class: "actors", "aria-label": `actors on ${n.name}` },
        m.actorsOf((a) => a.node === n.name).map((a) => actorLine(m, a))),
      admin ? h("button", { type: "button", class: "danger", onclick: () => onRemove(n.name) },
        `Remove host ${n.name}`) : null);
  });
  show(el, cards.length ? cards : h("p", { class: "muted" }, "No nodes yet."));
}

export function renderGroups(el, m, errors) {
  const names = m.groupNames();
  const cards = names.map((name) => {
    const g = m.groups[name];
    const ranks = m.actorsOf((a) => a.group === name && a.kind === "generation");
    const leader = ranks.find((a) => a.rank === 0);
    const live = m.groupLive(name);
    const budget = g.restart_budget;
    const failure = g.reason || errors.find((e) => e.group === name)?.message || "";
    const rate = m.groupRates[name]?.rate;
    return h("article", { class: "card group", "data-group": name },
      h("header", {},
        h("span", { class: "swatch", "aria-hidden": "true", "data-colour": groupColour(name, names) }),
        h("h3", {}, name), badge(g.leaving ? "leaving" : g.state, groupClass(g.state), "")),
      h("dl", { class: "facts" },
        h("dt", {}, "model"), h("dd", {}, h("code", {}, g.model)),
        h("dt", {}, "ranks"), h("dd", {}, ranks.length
          ? h("ul", { class: "ranks" }, ranks.map((a) =>
            h("li", {}, `rank ${a.rank}: ${a.node}`, a.pid ? ` (pid ${a.pid})` : "")))
          : (g.nodes || []).join(", ")),
        h("dt", {}, "in flight"), h("dd", {}, m.connected ? num(live.in_flight ?? g.in_flight) : DASH),
        h("dt", {}, "batch"), h("dd", {}, m.connected
          ? `${num(leader ? m.actorLive(leader.id).batch_size ?? 0 : 0)} (peak ${num(g.peak_batch_size ?? 0)})` : DASH),
        h("dt", {}, "tok/s"), h("dd", {}, m.connected ? num(rate ?? 0, 1) : DASH),
        h("dt", {}, "restarts"), h("dd", {}, num(g.restarts),
          budget ? ` · budget left ${budget.left}/${budget.intensity} per ${budget.period} s` : ""),
        h("dt", {}, "last failure"), h("dd", { class: failure ? "reason" : "muted" }, failure || "none")));
  });
  show(el, cards.length ? cards : h("p", { class: "muted" }, "No groups yet."));
  // Colours are data (one per group): set through CSSOM, which the page's CSP allows.
  for (const sw of el.querySelectorAll(".swatch")) sw.style.background = sw.dataset.colour;
}

export function groupClass(state) {
  if (state === "ready") return "ok";
  if (["starting", "restarting", "waiting"].includes(state)) return "pending";
  if (state === "stopped") return "muted";
  return "critical";
}
