// Wiring: the feed into the model, the model into the panels, the keys into every read.
import { follow, getJSON, keys, send } from "./api.js";
import { Charts } from "./charts.js";
import { Chat } from "./chat.js";
import { ClusterModel } from "./model.js";
import { ModelsPanel } from "./models.js";
import { renderGroups, renderNodes, renderOverview } from "./panels.js";
import { renderErrors, renderHistory } from "./tables.js";
import { renderTopology } from "./topology.js";

const $ = (selector) => document.querySelector(selector);
const model = new ClusterModel();
let feed = null; // the AbortController of the feed being followed
let everOpen = false;
let errors = [];

const conn = $("#conn");
const banner = $("#banner");

function setConnection(text, cls) {
  conn.textContent = text;
  conn.className = `pill ${cls}`;
  document.body.classList.toggle("offline", cls !== "ok");
}

function say(text, cls = "info") {
  banner.textContent = text;
  banner.className = `banner ${cls}`;
  banner.hidden = !text;
}

// ---- drawing: at most once per frame, whatever the number of events -------------------

let drawPending = false;
function draw() {
  if (drawPending) return;
  drawPending = true;
  setTimeout(() => {
    drawPending = false;
    renderOverview($("#overview .body"), model);
    renderNodes($("#nodes .body"), model, { admin: !!keys.admin, onRemove: removeHost });
    renderGroups($("#groups .body"), model, errors);
    renderTopology($("#topology .body"), model);
    models.render(model, { admin: !!keys.admin });
  }, 16);
}

// ---- reads the feed asks for: one at a time, once more if asked while running ---------

function reader(load) {
  let running = false;
  let again = false;
  return async function read() {
    if (running) { again = true; return; }
    running = true;
    try { await load(); } catch { /* shown by the connection state */ }
    running = false;
    if (again) { again = false; read(); }
  };
}

const readHistory = reader(async () => {
  renderHistory($("#history .body"), await getJSON("/api/cluster/requests?limit=100"));
});
const readErrors = reader(async () => {
  errors = await getJSON("/api/cluster/errors?limit=100");
  renderErrors($("#errors .body"), errors);
  draw(); // a group's last failure
});

// ---- the feed ------------------------------------------------------------------------

function onItem(item) {
  const need = model.apply(item);
  models.apply(item); // model jobs; the disks are re-read on a snapshot and when a job ends
  if (item.event === "snapshot") {
    renderHistory($("#history .body"), model.state.history || []); // at once; the read follows
    chat.loadModels();
  }
  if (item.event?.startsWith("Group")) chat.loadModels();
  if (need.history) readHistory();
  if (need.errors) readErrors();
  draw();
}

function onState(state, detail) {
  if (state === "open") {
    everOpen = true;
    model.connected = true;
    setConnection("live", "ok");
    say("");
    charts.refresh();
  } else if (state === "denied") {
    model.connected = false;
    setConnection("key needed", "warn");
    askKey("api", detail);
  } else {
    model.connected = false;
    setConnection("disconnected", "bad");
    if (everOpen) say(`Disconnected from the supervisor (${detail}); reconnecting…`, "bad");
  }
  draw();
}

function start() {
  feed?.abort();
  feed = new AbortController();
  setConnection("connecting…", "warn");
  follow(onItem, onState, feed.signal);
}

// ---- keys ----------------------------------------------------------------------------

const keyForm = $("#key-form");
function askKey(kind, why = "") {
  keyForm.dataset.kind = kind;
  keyForm.hidden = false;
  $("#key-label").textContent = kind === "admin" ? "Admin key" : "API key";
  $("#key-why").textContent = why;
  const input = $("#key-input");
  input.value = "";
  input.focus();
}

keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  keys.set(keyForm.dataset.kind, $("#key-input").value.trim());
  keyForm.hidden = true;
  showKeys();
  start();
  draw();
});
$("#key-cancel").addEventListener("click", () => { keyForm.hidden = true; });
$("#key-button").addEventListener("click", () => askKey("api"));
$("#admin-button").addEventListener("click", () => askKey("admin",
  "Admin actions (remove a host, download or delete a model) appear once it is entered. Leave empty to forget it."));

function showKeys() {
  $("#key-button").textContent = keys.api ? "API key ✓" : "API key";
  $("#admin-button").textContent = keys.admin ? "Admin key ✓" : "Admin key";
}

async function removeHost(node) {
  if (!window.confirm(`Remove host ${node}? Its groups are drained and stopped.`)) return;
  try {
    await send("DELETE", `/api/cluster/hosts/${encodeURIComponent(node)}`, { kind: "admin" });
    say(`Host ${node} is leaving the cluster.`, "info");
  } catch (error) {
    say(`Removing ${node} failed: ${error.message}`, "bad");
  }
}

// ---- start ---------------------------------------------------------------------------

const models = new ModelsPanel($("#models .body"), { say, redraw: draw });
const chat = new Chat($("#chat"), { onDenied: () => askKey("api", "the API asked for a key") });
$("#performance .charts").append(...Charts.markup());
const charts = new Charts($("#performance"), { isConnected: () => model.connected });
charts.select("15m");
new ResizeObserver(() => draw()).observe($("#topology .body"));
showKeys();
start();
draw();
