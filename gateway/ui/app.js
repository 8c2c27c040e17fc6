// The dashboard: signs in through /auth/login and reads the admin API with that token.
// No build step, no CDN: this file, index.html and app.css are all of it.
"use strict";

const state = { token: sessionStorage.getItem("gateway.token"), series: {}, timers: [] };
const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401 && state.token) { signOut(); throw new Error("signed out"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || `${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (cls) td.className = cls;
}

function fill(tableId, items, columns) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    for (const column of columns) {
      const [value, cls] = column(item);
      cell(row, value, cls);
    }
  }
}

const time = (iso) => new Date(iso).toLocaleTimeString();

async function loadRoutes() {
  const { items } = await api("/admin/routes");
  fill("routes", items, [
    (r) => [r.index + 1], (r) => [r.methods ? r.methods.join(",") : "*"], (r) => [r.path],
    (r) => [r.static ? `static ${r.static}` : r.upstream ? `upstream ${r.upstream}` : `handler ${r.handler}`],
    (r) => [r.auth], (r) => [r.roles.length ? r.roles.join(",") : "any"], (r) => [r.rate_limit],
  ]);
}

async function loadUpstreams() {
  const { items } = await api("/admin/upstreams");
  const rows = items.flatMap((u) => u.targets.map((t) => ({ upstream: u.name, ...t })));
  fill("upstreams", rows, [
    (t) => [t.upstream], (t) => [t.url],
    (t) => [t.state, t.state === "healthy" ? "ok" : "bad"],
    (t) => [t.in_flight], (t) => [t.last_error ? t.last_error.error : null],
  ]);
}

async function loadAudit() {
  const { items } = await api("/admin/audit-logs?limit=15");
  fill("audit", items, [
    (a) => [time(a.ts)], (a) => [a.status, a.status < 400 ? "ok" : "bad"], (a) => [a.method],
    (a) => [a.path], (a) => [a.username], (a) => [Math.round(a.latency_ms * 10) / 10],
    (a) => [a.reason],
  ]);
  const rejected = await api("/admin/audit-logs?limit=10&status=429");
  fill("rejections", rejected.items, [
    (a) => [time(a.ts)], (a) => [a.path], (a) => [a.username], (a) => [a.reason],
  ]);
}

async function loadModels() {
  const since = new Date(Date.now() - 5 * 60 * 1000).toISOString();
  const { items } = await api(`/admin/reports?since=${encodeURIComponent(since)}`);
  const now = Date.now();
  for (const m of items) {
    const series = (state.series[m.model] ||= []);
    series.push({ t: now, calls: m.calls, p50: m.p50_ms, p95: m.p95_ms });
    while (series.length > 60) series.shift();
  }
  drawCharts();
}

async function loadUsage() {
  // failed_attempts: calls of the model that failed and went on to a fallback;
  // fell_back: requests for the model that a fallback took over (README "Token usage")
  const { items } = await api("/admin/usage?group_by=model");
  fill("usage", items, [
    (u) => [u.model], (u) => [u.calls], (u) => [u.errors, u.errors ? "bad" : null],
    (u) => [u.failed_attempts, u.failed_attempts ? "bad" : null], (u) => [u.fell_back],
    (u) => [u.total_tokens], (u) => [u.unknown_usage_calls], (u) => [u.p50_ms], (u) => [u.p95_ms],
  ]);
}

function polyline(points, color) {
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", color);
  line.setAttribute("stroke-width", "2");
  return line;
}

function chart(title, series, keys) {
  const width = 320, height = 120, pad = 4;
  const box = document.createElement("div");
  box.className = "chart";
  const heading = document.createElement("div");
  const last = series[series.length - 1];
  heading.textContent = `${title}: ` + keys.map(([k, , label]) => `${label} ${last[k]}`).join(", ");
  box.append(heading);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  // a quarter of headroom above the highest value, so no line hugs the frame
  const top = 1.25 * Math.max(1, ...series.flatMap((s) => keys.map(([k]) => s[k])));
  const step = series.length > 1 ? (width - 2 * pad) / (series.length - 1) : 0;
  svg.append(polyline([`${pad},${height - pad}`, `${width - pad},${height - pad}`], "#c9ced6"));
  for (const [key, color] of keys) {
    const points = series.map((s, i) =>
      `${(pad + i * step).toFixed(1)},${(height - pad - (s[key] / top) * (height - 2 * pad)).toFixed(1)}`);
    svg.append(polyline(points, color));
    for (const point of points) {  // a dot per sample: one sample is a point, not a line
      const [x, y] = point.split(",");
      const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("cx", x); dot.setAttribute("cy", y); dot.setAttribute("r", "3");
      dot.setAttribute("fill", color);
      svg.append(dot);
    }
  }
  box.append(svg);
  return box;
}

function drawCharts() {
  const charts = $("charts");
  const models = Object.keys(state.series).sort();
  if (!models.length) return;
  charts.replaceChildren();
  for (const model of models) {
    const series = state.series[model];
    charts.append(chart(`${model} calls`, series, [["calls", "#3b6fd8", "calls"]]));
    charts.append(chart(`${model} latency ms`, series,
      [["p50", "#1e7b34", "p50"], ["p95", "#c7711a", "p95"]]));
  }
}

function every(ms, load) {
  const run = () => load().catch((error) => console.warn(error));
  run();
  state.timers.push(setInterval(run, ms));
}

function showDashboard(username) {
  $("signin").hidden = true;
  $("dashboard").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = username ? `signed in as ${username}` : "";
  every(10000, loadRoutes);
  every(5000, loadUpstreams);
  every(2000, loadAudit);
  every(5000, loadModels);
  every(5000, loadUsage);
}

function signOut() {
  state.timers.forEach(clearInterval);
  state.timers = [];
  state.token = null;
  sessionStorage.removeItem("gateway.token");
  $("dashboard").hidden = true;
  $("signin").hidden = false;
  $("signout").hidden = true;
  $("who").textContent = "";
}

$("signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("signin-error").textContent = "";
  try {
    const body = await api("/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ username: $("username").value, password: $("password").value }),
    });
    state.token = body.access_token;
    sessionStorage.setItem("gateway.token", state.token);
    const me = await api("/users/me");
    // Whether this account may use the admin API is the gateway's policy decision
    // (roles inherit admin through policies/): ask it rather than compare role names.
    try {
      await api("/admin/config");
    } catch (refused) {
      signOut();
      // 403: the policy says no; anything else (503 database_down, ...) is not about the role
      $("signin-error").textContent =
        refused.status === 403 ? `an admin account is needed (${refused.message})` : refused.message;
      return;
    }
    showDashboard(me.username);
  } catch (error) {
    $("signin-error").textContent = error.message;
  }
});

$("signout").addEventListener("click", signOut);

if (state.token) {
  api("/users/me").then((me) => showDashboard(me.username)).catch(() => signOut());
}
