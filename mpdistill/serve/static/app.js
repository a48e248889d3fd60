// mpdistill dashboard: polls /api/dashboard every second and redraws each run in place.
// No libraries: plain DOM and a small canvas chart. All text goes in with textContent.
"use strict";

const POLL_MS = 1000;
const SERIES = [["rows/s", 2, "#2f6fdb"], ["429/s", 3, "#b54708"], ["errors/s", 4, "#c0262d"]];
const LIVE = new Set(["running", "stopping", "waiting for input", "starting", "stale"]);

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) { sessionStorage.setItem("mpdistill-token", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem("mpdistill-token");
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  if (res.status === 401) { askToken(); throw new Error("a token is needed"); }
  if (!res.ok) throw new Error((await res.json().catch(() => ({}))).detail || res.statusText);
  return res.json();
}

function askToken() {
  const form = document.getElementById("token-form");
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem("mpdistill-token", document.getElementById("token").value);
    form.hidden = true;
  };
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function duration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "-";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}` : `${m}:${String(sec).padStart(2, "0")}`;
}

function num(n, digits = 0) {
  if (n === null || n === undefined) return "-";
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function ago(ts) {
  if (!ts) return "-";
  return duration(Date.now() / 1000 - ts) + " ago";
}

function buildCard(run) {
  const card = el("section", "run");
  card.id = "run-" + run.id;
  card.dataset.runId = run.id;
  const head = el("div", "run-head");
  head.append(el("h2", "run-name"), el("span", "badge"), el("span", "run-id", run.id));
  const actions = el("div", "actions");
  const stop = el("button", "stop", "Stop");
  stop.onclick = () => act(run.id, "stop");
  const resume = el("button", "resume", "Resume");
  resume.onclick = () => act(run.id, "resume");
  actions.append(stop, resume);
  head.append(actions);
  const bar = el("div", "progress");
  bar.setAttribute("role", "progressbar");
  bar.append(el("div", "progress-fill"));
  const figures = el("div", "figures");
  for (const key of ["rate", "eta", "ok", "failed", "inflight", "tokens", "cost", "elapsed"]) {
    const f = el("div", "figure figure-" + key);
    f.append(el("b"), el("span"));
    figures.append(f);
  }
  const chartBox = el("div", "chart-box");
  const canvas = el("canvas", "chart");
  const legend = el("div", "legend");
  for (const [label, , color] of SERIES) {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = color;
    item.append(swatch, document.createTextNode(label));
    legend.append(item);
  }
  chartBox.append(canvas, legend);
  const tableBox = el("div", "table-box");
  const table = el("table", "endpoints");
  const thead = el("thead");
  const tr = el("tr");
  for (const h of ["endpoint", "health", "in flight", "rpm now / limit", "429s", "last 429", "errors", "disabled key"]) tr.append(el("th", "", h));
  thead.append(tr);
  table.append(thead, el("tbody"));
  tableBox.append(table);
  card.append(head, bar, el("div", "progress-text"), figures, chartBox, tableBox, el("div", "message"));
  return card;
}

function setFigure(card, key, value, label) {
  const f = card.querySelector(".figure-" + key);
  f.querySelector("b").textContent = value;
  f.querySelector("span").textContent = label;
}

function health(ep) {
  if (ep.disabled) return ["disabled", "health-off"];
  if (ep.cooldown_until) return [`cooling down ${Math.ceil(ep.cooldown_until)} s`, "health-cool"];
  if ((ep.errors || 0) > 0 && (ep.ok || 0) === 0) return ["failing", "health-off"];
  return ["ok", "health-ok"];
}

function updateCard(card, run) {
  const st = run.status || {};
  card.querySelector(".run-name").textContent = run.name || st.run || run.id;
  const badge = card.querySelector(".badge");
  badge.textContent = run.state;
  badge.className = "badge " + String(run.state).split(" ")[0];
  const live = LIVE.has(run.state);
  card.querySelector(".stop").hidden = !live;
  card.querySelector(".resume").hidden = live || run.source !== "api" || run.state === "finished";
  const done = st.done || 0, total = st.total;
  const pct = total ? Math.min(100, (100 * done) / total) : (run.state === "finished" ? 100 : 0);
  const bar = card.querySelector(".progress");
  bar.setAttribute("aria-valuenow", pct.toFixed(1));
  bar.dataset.done = done;
  card.querySelector(".progress-fill").style.width = pct.toFixed(2) + "%";
  card.querySelector(".progress-text").textContent =
    total ? `${num(done)} / ${num(total)} rows (${pct.toFixed(1)} %)` : `${num(done)} rows`;
  setFigure(card, "rate", num(st.rows_per_s, 1), "rows/s (last minute)");
  setFigure(card, "eta", live ? duration(st.eta_s) : "-", "ETA");
  setFigure(card, "ok", num(st.ok), "ok");
  setFigure(card, "failed", num(st.failed), "failed");
  setFigure(card, "inflight", num(st.in_flight), "in flight");
  const tk = st.tokens || {};
  setFigure(card, "tokens", `${num(tk.prompt)} / ${num(tk.completion)}`, "tokens in / out");
  setFigure(card, "cost", st.cost === null || st.cost === undefined ? "-" : "$" + num(st.cost, 4), "cost");
  setFigure(card, "elapsed", duration(st.elapsed_s), "elapsed");
  updateEndpoints(card.querySelector("table.endpoints tbody"), st);
  drawChart(card.querySelector("canvas.chart"), run.history || []);
  const message = card.querySelector(".message");
  message.textContent = run.state === "failed" || run.state === "crashed"
    ? `ended with exit code ${run.exit_code === null ? "?" : run.exit_code}` : "";
}

function updateEndpoints(tbody, st) {
  const counts = (st.requests && st.requests.endpoints) || {};
  const rows = (st.endpoints || []).map((ep) => {
    const c = counts[ep.name] || {};
    const [h, cls] = health(ep);
    // The limit the key pool applies now (it starts low and adapts to 429s), and the configured one.
    const current = ep.current_rpm !== null && ep.current_rpm !== undefined ? num(ep.current_rpm) : null;
    const limit = !ep.rpm ? (current || "∞") : (current && current !== num(ep.rpm) ? `${current} (max ${num(ep.rpm)})` : num(ep.rpm));
    return [[ep.name], [h, cls], [num(ep.in_flight)], [`${num(c.rpm_now)} / ${limit}`], [num(ep.rate_limited)],
            [ago(c.last_429_at)], [num(ep.errors)], [ep.disabled ? `${ep.name}: ${ep.disabled_reason || "disabled"}` : "-"]];
  });
  while (tbody.rows.length > rows.length) tbody.deleteRow(-1);
  rows.forEach((cells, i) => {
    const tr = tbody.rows[i] || tbody.insertRow();
    cells.forEach(([text, cls], j) => {
      const td = tr.cells[j] || tr.insertCell();
      td.textContent = text;
      td.className = cls || "";
    });
  });
}

function drawChart(canvas, points) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 36, r: 8, t: 8, b: 18 };
  const max = Math.max(1, ...points.flatMap((p) => SERIES.map(([, i]) => p[i])));
  const t0 = points.length ? points[0][0] : 0, t1 = points.length ? points[points.length - 1][0] : 1;
  const x = (t) => pad.l + ((t - t0) / Math.max(t1 - t0, 1)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#e3e6ea";
  ctx.fillStyle = "#667085";
  ctx.font = "11px system-ui, sans-serif";
  for (const f of [0, 0.5, 1]) {
    ctx.beginPath(); ctx.moveTo(pad.l, y(max * f)); ctx.lineTo(w - pad.r, y(max * f)); ctx.stroke();
    ctx.fillText(num(max * f, 1), 2, y(max * f) + 4);
  }
  ctx.fillText(points.length ? duration(t1 - t0) + " shown" : "collecting…", pad.l, h - 4);
  for (const [, i, color] of SERIES) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    points.forEach((p, k) => (k ? ctx.lineTo(x(p[0]), y(p[i])) : ctx.moveTo(x(p[0]), y(p[i]))));
    ctx.stroke();
  }
}

async function act(id, what) {
  try { await api(`/api/jobs/${encodeURIComponent(id)}/${what}`, { method: "POST" }); }
  catch (err) { alert(`${what}: ${err.message}`); }
}

async function poll() {
  const conn = document.getElementById("conn");
  try {
    const data = await api("/api/dashboard");
    const main = document.getElementById("runs");
    document.getElementById("empty").hidden = data.runs.length > 0;
    const seen = new Set();
    for (const run of data.runs) {
      seen.add("run-" + run.id);
      let card = document.getElementById("run-" + run.id);
      if (!card) { card = buildCard(run); main.append(card); }
      updateCard(card, run);
    }
    for (const card of main.querySelectorAll("section.run")) if (!seen.has(card.id)) card.remove();
    conn.textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    conn.textContent = "not connected: " + err.message;
  }
  setTimeout(poll, POLL_MS);
}

poll();
