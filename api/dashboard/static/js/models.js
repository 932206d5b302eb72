// Models panel (the roadmap's model-management wireframe): each model with its size,
// quantization, "✅ 2/2 nodes" and the groups serving it, then every running model job with a
// progress bar per node (bytes, MB/s, ETA). What is on the disks comes from
// GET /api/cluster/models, read on load and when a job ends; the jobs come from the feed
// (the snapshot's "model_jobs", then every ModelJob* event), folded the way
// supervisor/state/folds/models.py folds them.
import { getJSON, send } from "./api.js";
import { DASH, bytes, duration, h, num, show } from "./format.js";

const JOBS_KEPT = 50; // as the supervisor's models.jobs_kept default: the page's copy is bounded too
const ENDED_SHOWN = 3; // ended jobs stay under the table, newest first, with their outcome

/** ``45.0 MB/s`` (10^6 bytes, as the CLI says it); a dash while nothing moves. */
export function rate(bytesPerSecond) {
  return bytesPerSecond > 0 ? `${(bytesPerSecond / 1e6).toFixed(1)} MB/s` : DASH;
}

/** ``✅ 2/2 nodes`` / ``⚠️ 1/2 nodes`` / ``❌ 0/2 nodes`` and a class for its colour. */
export function nodesMark(model) {
  const complete = model.complete_nodes || 0;
  const total = model.total_nodes || 0;
  if (total && complete >= total) return { text: `✅ ${complete}/${total} nodes`, cls: "ok" };
  if (complete) return { text: `⚠️ ${complete}/${total} nodes`, cls: "warning" };
  return { text: `❌ ${complete}/${total} nodes`, cls: "critical" };
}

/** The nodes with some of the model's files but not all. */
export function partialNodes(model) {
  return Object.entries(model.nodes || {}).filter(([, v]) => v.present && !v.complete).map(([n]) => n).sort();
}

/** A node's line under its bar: ``62% — 1.5 GB / 2.4 GB — 45.0 MB/s — ETA 20s (sftp)``. */
export function progressText(p) {
  const moving = !["queued", "done", "failed"].includes(p.phase);
  const parts = [];
  if (p.total) parts.push(`${Math.min(100, Math.floor((100 * p.done) / p.total))}%`, `${bytes(p.done)} / ${bytes(p.total)}`);
  if (moving) parts.push(rate(p.rate));
  if (moving && p.eta !== null && p.eta !== undefined) parts.push(`ETA ${duration(p.eta)}`);
  const via = p.path ? ` (${p.path})` : "";
  return `${p.phase}${via}${parts.length ? ": " : ""}${parts.join(" — ")}${p.detail ? ` · ${p.detail}` : ""}`;
}

export function jobTitle(job) {
  const verb = { download: "Downloading", delete: "Deleting", swap: "Swapping" }[job.action] || job.action;
  const head = job.action === "swap" ? `${verb} group ${job.group} to ${job.model}` : `${verb} ${job.model}`;
  if (job.state === "done") return `${head}: done`;
  if (job.state === "failed") return `${head}: failed`;
  return head;
}

/** The model jobs, folded from the feed. ``apply`` says whether the disks may have changed. */
export class ModelJobs {
  constructor() { this.jobs = new Map(); } // id -> job view, oldest first

  reset(list) {
    this.jobs = new Map([...(list || [])].reverse().map((j) => [j.id, structuredClone(j)]));
  }

  apply({ event, data }) {
    if (event === "snapshot") {
      this.reset((data.state ?? data).model_jobs);
      return true;
    }
    if (event === "ModelJobStarted") {
      const progress = Object.fromEntries(data.nodes.map((n) => [n, { phase: "queued", done: 0, total: 0,
        rate: 0, eta: null, path: "", detail: "" }]));
      this.jobs.set(data.job_id, { id: data.job_id, action: data.action, model: data.model, nodes: data.nodes,
        started_at: data.at, source: data.source || "", group: data.group || "", state: "running", error: "",
        ended_at: null, moved_bytes: 0, progress });
      this.bound();
    } else if (event === "ModelJobProgress") {
      const job = this.jobs.get(data.job_id);
      if (job) job.progress[data.node] = { phase: data.phase, done: data.done, total: data.total,
        rate: data.rate, eta: data.eta, path: data.path, detail: data.detail };
    } else if (event === "ModelJobEnded") {
      const job = this.jobs.get(data.job_id);
      if (job) Object.assign(job, { state: data.ok ? "done" : "failed", error: data.error,
        ended_at: data.at, moved_bytes: data.moved_bytes });
      return true;
    }
    return false;
  }

  bound() {
    while (this.jobs.size > JOBS_KEPT) {
      const ended = [...this.jobs.values()].find((j) => j.state !== "running");
      this.jobs.delete(ended ? ended.id : this.jobs.keys().next().value);
    }
  }

  /** Running jobs, then the newest ended ones. */
  shown() {
    const newest = [...this.jobs.values()].reverse();
    return [...newest.filter((j) => j.state === "running"),
      ...newest.filter((j) => j.state !== "running").slice(0, ENDED_SHOWN)];
  }
}

/** The panel: the table, the jobs, and for an admin the download form. */
export class ModelsPanel {
  constructor(el, { say, redraw }) {
    this.say = say;
    this.redraw = redraw;
    this.jobs = new ModelJobs();
    this.listing = null; // GET /api/cluster/models's body, once read
    this.trouble = ""; // why the listing could not be read
    this.reading = null;
    this.again = false;
    this.list = h("div", { class: "models-list" });
    this.running = h("div", { class: "models-jobs", "aria-live": "polite" });
    this.input = h("input", { id: "model-input", type: "text", spellcheck: "false", autocomplete: "off",
      placeholder: "org/name[@revision]" });
    // The form is built once, outside what is redrawn: what is typed in it survives the feed.
    this.form = h("form", { class: "model-form", hidden: true, onsubmit: (e) => this.download(e) },
      h("label", { for: "model-input" }, "Download a model to every node"), this.input,
      h("button", { type: "submit" }, "Go"));
    el.replaceChildren(this.list, this.running, this.form);
  }

  /** Fold a feed item; re-read the disks after a snapshot or a job's end. */
  apply(item) {
    if (this.jobs.apply(item)) this.read();
  }

  async read() {
    if (this.reading) { this.again = true; return; }
    this.reading = (async () => {
      try {
        this.listing = await getJSON("/api/cluster/models");
        this.trouble = "";
      } catch (error) {
        this.trouble = error.message;
      }
    })();
    await this.reading;
    this.reading = null;
    this.redraw();
    if (this.again) { this.again = false; this.read(); }
  }

  async download(e) {
    e.preventDefault();
    const model = this.input.value.trim();
    if (!model) return;
    try {
      await send("POST", "/api/cluster/models", { kind: "admin", body: { model } });
      this.input.value = "";
      this.say(`Downloading ${model}: progress below.`, "info");
    } catch (error) {
      this.say(`Download of ${model} refused: ${error.message}`, "bad");
    }
  }

  async remove(model) {
    if (!window.confirm(`Delete ${model} from every node's disk?`)) return;
    try {
      await send("DELETE", `/api/cluster/models/${model.split("/").map(encodeURIComponent).join("/")}`,
        { kind: "admin" });
      this.say(`Deleted ${model}.`, "info");
      this.read();
    } catch (error) {
      this.say(`Deleting ${model} refused: ${error.message}`, "bad");
    }
  }

  render(m, { admin }) {
    this.form.hidden = !admin;
    show(this.list, this.table(m, admin));
    show(this.running, this.jobs.shown().map((job) => jobCard(job)));
  }

  table(m, admin) {
    const served = m.models(); // model -> the groups serving it (from the feed)
    const onDisk = Object.fromEntries((this.listing?.models || []).map((x) => [x.id, x]));
    const names = [...new Set([...Object.keys(served), ...Object.keys(onDisk)])].sort();
    const note = this.trouble ? h("p", { class: "muted" }, `Disks: ${this.trouble}`) : null;
    if (!names.length) return [h("p", { class: "muted" }, "No models yet."), note];
    const rows = names.map((name) => {
      const disk = onDisk[name];
      const groups = served[name] || [];
      const mark = disk ? nodesMark(disk) : null;
      const partial = disk ? partialNodes(disk) : [];
      const context = Math.max(0, ...groups.map((g) => g.context_length || 0));
      return h("tr", { "data-model": name },
        h("th", { scope: "row" }, h("code", {}, name)),
        h("td", { class: "num" }, disk ? bytes(disk.size) : DASH),
        h("td", {}, disk?.quantization || DASH),
        h("td", { "data-slot": "nodes" }, mark ? h("span", { class: `badge ${mark.cls}` }, mark.text) : DASH,
          partial.length ? h("span", { class: "reason" }, ` partial on ${partial.join(", ")}`) : null),
        h("td", {}, groups.length ? groups.map((g) => h("div", {}, `${g.name}: ${g.state}`,
          g.nodes?.length ? ` on ${g.nodes.join(", ")}` : "")) : DASH),
        h("td", { class: "num" }, context ? num(context) : DASH),
        admin && disk ? h("td", {}, h("button", { type: "button", class: "danger",
          onclick: () => this.remove(name) }, "Delete")) : null);
    });
    const columns = ["Model", "Size", "Quant", "On disk", "Served by", "Context"];
    const actions = admin ? h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")) : null;
    return [h("div", { class: "scroll", tabindex: 0, role: "region", "aria-label": "Models" },
      h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)), actions)),
        h("tbody", {}, rows))), note];
  }
}

function jobCard(job) {
  const nodes = Object.entries(job.progress || {}).sort(([a], [b]) => a.localeCompare(b));
  const cls = { running: "pending", done: "ok", failed: "critical" }[job.state] || "muted";
  return h("article", { class: "card model-job", "data-job": job.id },
    h("header", {}, h("h3", {}, jobTitle(job)), h("span", { class: `badge ${cls}` }, job.state)),
    job.error ? h("p", { class: "reason" }, job.error) : null,
    job.state === "done" ? h("p", { class: "muted" }, job.moved_bytes
      ? `${bytes(job.moved_bytes)} moved` : "nothing to move: every copy was already there") : null,
    job.state === "running" ? h("ul", { class: "transfers" }, nodes.map(([node, p]) => {
      const share = p.total ? Math.min(1, p.done / p.total) : (p.phase === "done" ? 1 : 0);
      return h("li", { "data-node": node },
        h("span", { class: "who" }, node),
        h("div", { class: "meter", role: "progressbar", "aria-label": `${job.model} on ${node}`,
          "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": Math.round(share * 100) },
        h("div", { class: `fill${p.phase === "failed" ? " critical" : ""}`, "width%": (share * 100).toFixed(1) })),
        h("span", { class: "muted" }, progressText(p)));
    })) : null);
}
