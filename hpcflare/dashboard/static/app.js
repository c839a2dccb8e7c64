// hpcflare dashboard: polls the read-only API and redraws. No framework; Chart.js for the charts.
"use strict";

const charts = new Map();
let refresh = 2000;
let timer = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c === null || c === undefined ? "" : c);
  return node;
}

function state(text) {
  return el("span", { class: `state state-${text}` }, text);
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

function route() {
  const match = location.hash.match(/^#\/job\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function showList() {
  const body = await api("api/jobs");
  refresh = (body.refresh || 2) * 1000;
  document.getElementById("root").textContent = body.root;
  document.getElementById("note").textContent = body.note;
  const rows = body.jobs.map((job) => {
    const tr = el("tr", { class: "clickable", "data-job": job.id, "data-state": job.state },
      el("td", {}, el("a", { href: `#/job/${encodeURIComponent(job.id)}` }, job.id)),
      el("td", {}, state(job.state)),
      el("td", {}, `${job.round} / ${job.num_rounds}`),
      el("td", {}, duration(job.eta_seconds)),
      el("td", {}, job.live === null ? "" : `${job.live} / ${job.clients}`),
      el("td", {}, job.dead === null ? "" : String(job.dead)),
      el("td", { class: "muted" }, (job.message || "").slice(0, 160)));
    tr.addEventListener("click", () => { location.hash = `#/job/${encodeURIComponent(job.id)}`; });
    return tr;
  });
  document.querySelector("#jobs tbody").replaceChildren(...rows);
}

function lineChart(container, key, title, labels, datasets, yTitle) {
  let box = container.querySelector(`[data-chart="${CSS.escape(key)}"]`);
  if (!box) {
    box = el("div", { class: "chart", "data-chart": key }, el("canvas"));
    container.append(box);
  }
  box.setAttribute("data-points", String(labels.length));
  let chart = charts.get(key);
  if (!chart) {
    chart = new Chart(box.querySelector("canvas"), {
      type: "line",
      data: { labels, datasets },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, spanGaps: true,
        plugins: { title: { display: true, text: title }, legend: { position: "bottom", labels: { boxWidth: 10 } } },
        scales: { y: { title: { display: Boolean(yTitle), text: yTitle || "" } } },
      },
    });
    charts.set(key, chart);
  } else {
    chart.data.labels = labels;
    chart.data.datasets = datasets;
    chart.update("none");
  }
}

function drawTraining(training) {
  const container = document.getElementById("training");
  if (!Object.keys(training).length) {
    container.replaceChildren(el("p", { class: "muted" }, "no round metrics yet (sites report them with their results)"));
    return;
  }
  container.querySelector("p")?.remove();
  for (const [metric, sites] of Object.entries(training).sort()) {
    const rounds = [...new Set(Object.values(sites).flat().map((p) => p[0]))].sort((a, b) => a - b);
    const datasets = Object.entries(sites).sort().map(([site, points]) => {
      const byRound = new Map(points.map(([r, v]) => [r, v]));
      return { label: site, data: rounds.map((r) => byRound.get(r) ?? null), borderWidth: site === "global" ? 3 : 1.5, pointRadius: 2 };
    });
    lineChart(container, `train:${metric}`, metric, rounds, datasets, "");
  }
}

function drawSystem(system) {
  const container = document.getElementById("system");
  if (!system.t.length) {
    container.replaceChildren(el("p", { class: "muted" }, "no system samples yet (every settings.metrics_interval)"));
    return;
  }
  container.querySelector("p")?.remove();
  const labels = system.t.map((t) => `${Math.round(t)}s`);
  const per = (field, scale = 1) => Object.entries(system.ranks).map(([rank, s]) => ({
    label: rank, data: s[field].map((v) => (v === null || v === undefined ? null : v * scale)), borderWidth: 1.5, pointRadius: 0,
  }));
  lineChart(container, "sys:cpu", "CPU per rank (% of one core)", labels, per("cpu_percent"), "%");
  lineChart(container, "sys:rss", "Memory per rank (MB)", labels, per("rss_bytes", 1e-6), "MB");
  if (Object.values(system.ranks).some((s) => s.gpu_utilization.some((v) => v !== null && v !== undefined))) {
    lineChart(container, "sys:gpu", "GPU busy (%)", labels, per("gpu_utilization", 100), "%");
  }
  lineChart(container, "sys:bytes", "Bytes through the server (MB)", labels, [
    { label: "in", data: system.bytes_in.map((v) => v / 1e6), pointRadius: 0 },
    { label: "out", data: system.bytes_out.map((v) => v / 1e6), pointRadius: 0 },
  ], "MB");
}

async function showJob(jobId) {
  const body = await api(`api/jobs/${encodeURIComponent(jobId)}`);
  const s = body.summary;
  document.getElementById("job-title").textContent = `${s.id}`;
  const line = document.getElementById("job-state");
  line.replaceChildren(state(s.state), `  round ${s.round} / ${s.num_rounds}`,
    s.eta_seconds !== null && s.eta_seconds !== undefined ? `  ·  ETA ${duration(s.eta_seconds)}` : "",
    s.message ? `  ·  ${s.message}` : "");
  line.setAttribute("data-state", s.state);
  document.getElementById("findings").replaceChildren(...body.findings.map((f) =>
    el("li", { class: f.severity }, `[${f.severity}] ${f.what}`, f.fix ? el("div", { class: "muted" }, `fix: ${f.fix}`) : "")));
  drawTraining(body.training);
  drawSystem(body.system);
  document.querySelector("#sites tbody").replaceChildren(...body.sites.map((r) =>
    el("tr", { "data-site": r.site, "data-state": r.state },
      el("td", {}, r.site), el("td", {}, state(r.state)),
      el("td", {}, r.last_seen === null || r.last_seen === undefined ? "" : `${duration(r.last_seen)} ago`),
      el("td", {}, r.round === null ? "" : String(r.round)),
      el("td", {}, r.round_seconds === null ? "" : `${r.round_seconds} s`),
      el("td", {}, bytes(r.bytes_in)), el("td", {}, bytes(r.bytes_out)),
      el("td", { class: "cause" }, r.cause))));
  document.getElementById("timeline").src = `api/jobs/${encodeURIComponent(jobId)}/timeline.png?t=${Math.floor(body.time / 10)}`;
}

async function tick() {
  const jobId = route();
  document.getElementById("list-view").hidden = jobId !== null;
  document.getElementById("job-view").hidden = jobId === null;
  try {
    if (jobId === null) await showList(); else await showJob(jobId);
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    document.getElementById("updated").textContent = String(err);
  }
  clearTimeout(timer);
  timer = setTimeout(tick, refresh);
}

window.addEventListener("hashchange", () => {
  for (const chart of charts.values()) chart.destroy();
  charts.clear();
  document.getElementById("training").replaceChildren();
  document.getElementById("system").replaceChildren();
  tick();
});
tick();
