// Performance charts (uPlot, vendored): tok/s, requests/s, TTFT p50/p95 and queue depth
// over 15 min / 1 h / 24 h, read from /api/cluster/timeseries when the window changes and
// then every few seconds (the series' own resolution is 2 s / 10 s / 60 s).
import { getJSON } from "./api.js";
import { h } from "./format.js";

export const WINDOWS = { "15m": 5000, "1h": 15000, "24h": 60000 }; // window -> re-read (ms)
const SPAN = { "15m": 900, "1h": 3600, "24h": 86400 }; // window -> seconds shown

const CHARTS = [
  { id: "throughput", title: "tok/s", series: [["throughput", "tok/s"]] },
  { id: "requests", title: "requests/s", series: [["requests", "req/s"]] },
  { id: "ttft", title: "TTFT", series: [["ttft_p50", "p50"], ["ttft_p95", "p95"]] },
  { id: "queue", title: "queue depth", series: [["queue_depth", "waiting"], ["in_flight", "in flight"]] },
];
const COLOURS = ["#2f6fde", "#d9730d"];

export class Charts {
  constructor(root, { isConnected }) {
    this.root = root;
    this.isConnected = isConnected;
    this.window = "15m";
    this.plots = {};
    this.timer = null;
    this.grid = root.querySelector(".charts");
    for (const button of root.querySelectorAll("[data-window]")) {
      button.addEventListener("click", () => this.select(button.dataset.window));
    }
    new ResizeObserver(() => this.resize()).observe(this.grid);
  }

  select(window) {
    this.window = window;
    for (const b of this.root.querySelectorAll("[data-window]")) {
      b.setAttribute("aria-pressed", String(b.dataset.window === window));
    }
    this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.refresh(), WINDOWS[this.window]);
    if (!this.isConnected()) return;
    const span = this.window;
    await Promise.all(CHARTS.map(async (chart) => {
      try {
        const bodies = await Promise.all(chart.series.map(([metric]) =>
          getJSON(`/api/cluster/timeseries?metric=${encodeURIComponent(metric)}&window=${span}`)));
        if (span === this.window) this.draw(chart, bodies);
      } catch (error) {
        this.note(chart, `no data: ${error.message}`);
      }
    }));
  }

  draw(chart, bodies) {
    const xs = bodies[0].points.map((p) => p[0]);
    const data = [xs, ...bodies.map((b) => b.points.map((p) => p[1]))];
    const unit = bodies[0].unit || "";
    // The whole window, even while the supervisor is younger than it.
    const hi = xs.length ? xs[xs.length - 1] : Date.now() / 1000;
    this.range = [hi - SPAN[this.window], hi];
    const values = data.slice(1).flat().filter((v) => v !== null).length;
    this.note(chart, values ? "" : "no data yet");
    const plot = this.plots[chart.id];
    if (plot && plot.series.length === data.length) {
      plot.setData(data);
      plot.setScale("x", { min: this.range[0], max: this.range[1] });
      return;
    }
    plot?.destroy();
    const box = this.grid.querySelector(`[data-chart="${chart.id}"] .plot`);
    const css = getComputedStyle(document.documentElement);
    const ink = css.getPropertyValue("--muted").trim() || "#888";
    const rule = css.getPropertyValue("--rule").trim() || "#ddd";
    const axis = { stroke: ink, grid: { stroke: rule, width: 1 }, ticks: { stroke: rule } };
    this.plots[chart.id] = new window.uPlot({
      width: Math.max(200, box.clientWidth),
      height: 150,
      legend: { show: chart.series.length > 1 },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: () => this.range } },
      axes: [axis, { ...axis, label: unit, size: 48 }],
      series: [{}, ...chart.series.map(([, label], i) => ({
        label, stroke: COLOURS[i], width: 1.5, spanGaps: false, points: { show: false },
        fill: i === 0 ? "rgba(47,111,222,0.12)" : undefined,
      }))],
    }, data, box);
  }

  note(chart, text) {
    const el = this.grid.querySelector(`[data-chart="${chart.id}"] .note`);
    if (el) el.textContent = text;
  }

  resize() {
    for (const [id, plot] of Object.entries(this.plots)) {
      const box = this.grid.querySelector(`[data-chart="${id}"] .plot`);
      if (box && Math.abs(box.clientWidth - plot.width) > 4) {
        plot.setSize({ width: Math.max(200, box.clientWidth), height: 150 });
      }
    }
  }

  /** The chart boxes, built once. */
  static markup() {
    return CHARTS.map((c) => h("figure", { class: "chart", "data-chart": c.id },
      h("figcaption", {}, c.title, h("span", { class: "note muted" })),
      h("div", { class: "plot" })));
  }
}
