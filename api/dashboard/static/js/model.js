// The page's copy of the cluster state: the feed's snapshot, folded with each event the
// way supervisor/state/store.py folds it (only what the panels show), and the coalesced
// ``live`` figures on top. History and errors are read from their endpoints on the events
// that change them.

const byName = (list, key = "name") => Object.fromEntries((list || []).map((x) => [x[key], x]));

// Events after which the errors ring may have a new entry (store.py's _error calls).
const ERROR_EVENTS = new Set(["NodeStatus", "ActorStopped", "SupervisorRestarted",
  "GroupState", "RequestRefused", "RequestEnded", "LinkMeasured", "LinkDown"]);
const HISTORY_EVENTS = new Set(["RequestEnded", "RequestRefused"]);

export class ClusterModel {
  constructor() {
    this.connected = false;
    this.reset({});
    this.groupRates = {}; // group -> {tokens, at, rate}: tok/s from the live token counts
  }

  reset(state) {
    this.state = state;
    this.nodes = byName(state.nodes);
    this.groups = byName(state.groups);
    this.actors = byName(state.actors, "id");
    this.supervisors = byName(state.supervisors);
    this.linkViews = Object.fromEntries((state.links || []).map((l) => [`${l.group}:${l.id}`, l]));
    this.live = null; // figures newer than the snapshot's
    this.running = {}; // request id -> its group, for the in-flight counts
    this.liveAt = performance.now();
  }

  /** Fold one feed item; returns what to re-read: {history, errors}. */
  apply({ event, data }) {
    if (event === "snapshot") {
      this.reset(data.state ?? data);
      return { history: true, errors: true };
    }
    if (event === "live") {
      this.live = data.figures ?? data;
      this.liveAt = performance.now();
      if (this.live.links) { // the state's own statuses (baselines, thresholds): taken whole
        this.linkViews = Object.fromEntries(this.live.links.map((l) => [`${l.group}:${l.id}`, l]));
      }
      this.rates();
      return {};
    }
    this.fold(event || data.type, data);
    return { history: HISTORY_EVENTS.has(event), errors: ERROR_EVENTS.has(event) };
  }

  fold(type, e) {
    const s = this.state;
    const actor = (id, changes) => { if (this.actors[id]) Object.assign(this.actors[id], changes); };
    switch (type) {
      case "NodeDeclared":
        this.nodes[e.node] ??= { name: e.node, ssh: e.ssh, local: e.local, state: "connecting",
          reason: "", health: null, hardware: {} };
        break;
      case "NodeStatus":
        if (this.nodes[e.node]) Object.assign(this.nodes[e.node], { state: e.state, reason: e.reason });
        break;
      case "NodeRemoved":
        delete this.nodes[e.node];
        for (const a of Object.values(this.actors)) if (a.node === e.node) delete this.actors[a.id];
        break;
      case "NodeHealth":
        if (this.nodes[e.node]) Object.assign(this.nodes[e.node], { health: e.health, health_reason: e.reason });
        break;
      case "GroupDeclared":
        this.groups[e.group] = { name: e.group, model: e.model, nodes: e.nodes, parallel: e.parallel,
          backend: e.backend, state: "starting", reason: "", restarts: 0, in_flight: 0 };
        break;
      case "GroupState": {
        const g = this.groups[e.group];
        if (!g) break;
        Object.assign(g, { state: e.state, reason: e.reason, restarts: g.restarts + (e.restarted ? 1 : 0),
          leader: e.state === "ready" ? e.leader : null });
        if (e.context_length) g.context_length = e.context_length;
        break;
      }
      case "GroupLeaving":
        if (this.groups[e.group]) this.groups[e.group].leaving = true;
        break;
      case "GroupRemoved":
        delete this.groups[e.group];
        for (const a of Object.values(this.actors)) if (a.group === e.group) delete this.actors[a.id];
        break;
      case "SupervisorStarted": {
        const old = this.supervisors[e.supervisor];
        this.supervisors[e.supervisor] = { name: e.supervisor, group: e.group, intensity: e.intensity,
          period: e.period, restarts: old?.restarts ?? 0,
          restart_budget: old?.restart_budget ?? { intensity: e.intensity, period: e.period, used: 0, left: e.intensity } };
        break;
      }
      case "SupervisorRestarted": {
        const sup = this.supervisors[e.supervisor];
        if (!sup) break;
        sup.restarts += 1;
        const b = sup.restart_budget;
        // Restarts older than the period give budget back; the next snapshot says exactly.
        if (b) Object.assign(b, { used: Math.min(b.intensity, b.used + 1), left: Math.max(0, b.left - 1) });
        if (sup.group && this.groups[sup.group]) this.groups[sup.group].restart_budget = b;
        break;
      }
      case "SupervisorRemoved":
        delete this.supervisors[e.supervisor];
        break;
      case "ActorStarting":
        if (this.actors[e.actor_id]) {
          actor(e.actor_id, { state: "starting", pid: null, reason: "", last_heartbeat_age: null });
        } else {
          this.actors[e.actor_id] = { id: e.actor_id, kind: e.kind, node: e.node, group: e.group,
            rank: e.rank, pid: null, state: "starting", restarts: 0, reason: "", vitals: {}, info: {},
            load: { stage: "", fraction: 0 } };
        }
        break;
      case "ActorSpawned": actor(e.actor_id, { pid: e.pid }); break;
      case "ActorLoading": actor(e.actor_id, { state: "loading", load: { stage: e.stage, fraction: e.fraction } }); break;
      case "ActorReady": actor(e.actor_id, { state: "running", info: e.info || {} }); break;
      case "ActorStopped": actor(e.actor_id, { state: e.state, reason: e.reason }); break;
      case "ActorRestarted":
        if (this.actors[e.actor_id]) this.actors[e.actor_id].restarts += 1;
        break;
      case "RequestStarted":
        s.requests_total = (s.requests_total || 0) + 1;
        if (this.live) this.live.requests_total = s.requests_total;
        this.running[e.request_id] = e.group;
        this.inFlight(e.group, 1);
        break;
      case "RequestMoved":
        this.inFlight(e.from_group, -1);
        this.inFlight(e.to_group, 1);
        this.running[e.request_id] = e.to_group;
        break;
      case "RequestEnded":
      case "RequestRefused":
        if (e.request_id in this.running) this.inFlight(this.running[e.request_id], -1);
        delete this.running[e.request_id];
        break;
      case "LinkMeasured":
      case "LinkDown": { // figures at once; the status the state derives comes with "live"
        const key = `${e.group}:${e.link}`;
        const l = (this.linkViews[key] ??= { id: e.link, group: e.group, nodes: e.nodes,
          interface: e.interface, status: "active", probes: 0 });
        Object.assign(l, { last_probe: e.at, probes: (l.probes || 0) + 1 });
        if (type === "LinkDown") Object.assign(l, { status: "down", reason: e.reason });
        if (e.latency_us != null) l.latency_us = e.latency_us;
        if (e.bandwidth_gbps != null) l.bandwidth_gbps = e.bandwidth_gbps;
        break;
      }
      case "DrainStarted": s.draining = true; break;
      default: break; // events whose effect arrives with the live figures or the reads
    }
  }

  /** Requests in flight move with the events, not half a second later with the figures. */
  inFlight(group, delta) {
    const bump = (o, k) => { if (o && typeof o[k] === "number") o[k] = Math.max(0, o[k] + delta); };
    bump(this.live, "in_flight");
    bump(this.state, "queue_depth");
    bump(this.live?.groups?.[group], "in_flight");
    bump(this.groups[group], "in_flight");
  }

  /** Per-group tok/s from the live token counts: a rate over the last few seconds. */
  rates() {
    const now = performance.now() / 1000;
    for (const [name, g] of Object.entries(this.live?.groups || {})) {
      const prev = this.groupRates[name];
      if (g.tokens === undefined) continue;
      if (!prev || g.tokens < prev.tokens) {
        this.groupRates[name] = { tokens: g.tokens, at: now, rate: 0 };
      } else if (now - prev.at >= 2 || g.tokens === prev.tokens) {
        const span = Math.max(now - prev.at, 0.5);
        this.groupRates[name] = { tokens: g.tokens, at: now, rate: (g.tokens - prev.tokens) / span };
      }
    }
  }

  // ---- reads the panels share --------------------------------------------------------

  figure(name) {
    if (!this.connected) return null; // "disconnected" rather than stale numbers
    const v = this.live && name in this.live ? this.live[name] : this.state[name];
    return v === undefined ? null : v;
  }

  memory() { return this.live?.memory ?? this.state.memory ?? { nodes: {}, ranks: {} }; }

  actorLive(id) { return this.live?.actors?.[id] ?? {}; }

  groupLive(name) { return this.live?.groups?.[name] ?? {}; }

  groupNames() { return Object.keys(this.groups).sort(); }

  /** The links the live probe measured (state.links), folded with their events. */
  links() { return Object.values(this.linkViews); }

  /** The models served and the groups serving each (ready first). */
  models() {
    const out = {};
    for (const g of Object.values(this.groups)) (out[g.model] ??= []).push(g);
    return out;
  }

  actorsOf(pred) {
    return Object.values(this.actors).filter(pred).sort((a, b) =>
      (a.group || "").localeCompare(b.group || "") || a.rank - b.rank || a.id.localeCompare(b.id));
  }
}
