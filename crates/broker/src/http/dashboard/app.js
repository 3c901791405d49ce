// Tern's dashboard: plain JavaScript, no libraries, nothing fetched from
// anywhere but this broker. Credentials are kept in sessionStorage (this tab
// only) and sent in the Authorization header of every request, as any API
// client does; live figures come from /api/v1/dashboard/stream
// (server-sent events, read with fetch so that the header can be sent).
"use strict";

const $ = (id) => document.getElementById(id);
const AUTH_KEY = "tern.authorization";
const HISTORY = 600; // samples kept for the overview plots (5 min at 2/s)
const RATE_WINDOW_MS = 5000; // a topic's rate: messages over the last 5 s

let authorization = sessionStorage.getItem(AUTH_KEY);
let streamAbort = null;
const history = []; // {t, connections, in, out, dropped, rss}
let last = null; // the previous stats sample
const topics = new Map(); // topic -> {count, value, bytes, retained, at, points, seen: [[t, count]]}
const expanded = new Set([""]);
let selected = null;
let tab = "overview";

// ---------------------------------------------------------------------------
// Signing in
// ---------------------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, headers: { Authorization: authorization } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    signOut("Signed out: the broker no longer accepts these credentials.");
    throw new Error("unauthorized");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(data.error || `${response.status} ${response.statusText}`);
  }
  return data;
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  const user = $("user").value.trim();
  authorization = token
    ? `Bearer ${token}`
    : `Basic ${btoa(unescape(encodeURIComponent(`${user}:${$("password").value}`)))}`;
  $("login-error").textContent = "";
  try {
    const response = await fetch("/api/v1/broker", { headers: { Authorization: authorization } });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `${response.status} ${response.statusText}`);
    }
    sessionStorage.setItem(AUTH_KEY, authorization);
    start(await response.json());
  } catch (err) {
    authorization = null;
    $("login-error").textContent = `Not signed in: ${err.message}`;
  }
});

$("logout").addEventListener("click", () => signOut(""));

function signOut(message) {
  authorization = null;
  sessionStorage.removeItem(AUTH_KEY);
  if (streamAbort) streamAbort.abort();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
}

function start(broker) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("broker").textContent = `${broker.version}, up ${duration(broker.uptime_secs)}`;
  stream();
}

// ---------------------------------------------------------------------------
// The live stream
// ---------------------------------------------------------------------------

async function stream() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  try {
    const response = await fetch("/api/v1/dashboard/stream", {
      headers: { Authorization: authorization },
      signal: abort.signal,
    });
    if (response.status === 401) return signOut("Signed out: the broker refused these credentials.");
    if (!response.ok || !response.body) throw new Error(`${response.status}`);
    $("live").classList.add("on");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  } catch (err) {
    if (abort.signal.aborted) return;
  } finally {
    $("live").classList.remove("on");
  }
  // The broker went away or restarted: try again.
  if (!abort.signal.aborted && authorization) setTimeout(stream, 2000);
}

function dispatch(block) {
  let name = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) name = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data) return;
  const value = JSON.parse(data);
  if (name === "stats") onStats(value);
  else if (name === "topics") onTopics(value);
}

function onStats(s) {
  if (last && s.t > last.t) {
    const secs = (s.t - last.t) / 1000;
    history.push({
      t: s.t,
      connections: s.connections,
      in: Math.max(0, s.received - last.received) / secs,
      out: Math.max(0, s.sent - last.sent) / secs,
      dropped: Math.max(0, s.dropped - last.dropped) / secs,
      rss: s.rss_bytes || 0,
    });
    if (history.length > HISTORY) history.shift();
  }
  last = s;
  const h = history[history.length - 1];
  $("card-connections").textContent = fmt(s.connections);
  $("card-sessions").textContent = fmt(s.sessions);
  $("card-subscriptions").textContent = fmt(s.subscriptions);
  $("card-retained").textContent = fmt(s.retained);
  $("card-memory").textContent = bytes(s.rss_bytes);
  if (h) {
    $("card-in").textContent = fmt(Math.round(h.in));
    $("card-out").textContent = fmt(Math.round(h.out));
    $("card-dropped").textContent = fmt(Math.round(h.dropped));
  }
  $("topic-count").textContent =
    `${fmt(s.topics)} topics` + (s.untracked ? `, ${fmt(s.untracked)} messages of topics past the limit` : "");
  if (tab === "overview") drawOverview();
}

function onTopics(changed) {
  for (const c of changed) {
    let t = topics.get(c.topic);
    if (!t) {
      t = { points: [], seen: [] };
      topics.set(c.topic, t);
    }
    Object.assign(t, { count: c.count, value: c.value, bytes: c.bytes, retained: c.retained, at: c.at_ms });
    for (const p of c.points) {
      if (!t.points.length || t.points[t.points.length - 1][0] < p[0]) t.points.push(p);
    }
    if (t.points.length > 120) t.points.splice(0, t.points.length - 120);
  }
  const now = last ? last.t : 0;
  for (const t of topics.values()) {
    t.seen.push([now, t.count]);
    while (t.seen.length > 2 && t.seen[1][0] <= now - RATE_WINDOW_MS) t.seen.shift();
  }
  if (tab === "topics") {
    renderTree();
    renderDetail();
  }
}

// ---------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------

// Draws series [{points: [[x, y]], color}] on a canvas, with the y range
// labelled; sets data-points to the number of points drawn.
function plot(canvas, series, format) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width;
  const hgt = canvas.height;
  const pad = { l: 56, r: 8, t: 8, b: 18 };
  ctx.clearRect(0, 0, w, hgt);
  const all = series.flatMap((s) => s.points);
  canvas.dataset.points = String(all.length);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#6b7482";
  if (all.length === 0) {
    ctx.fillText("waiting for data…", pad.l, hgt / 2);
    return;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs, x0 + 1);
  let y0 = Math.min(0, ...ys);
  let y1 = Math.max(...ys);
  if (y1 === y0) y1 = y0 + 1;
  const X = (x) => pad.l + ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r);
  const Y = (y) => hgt - pad.b - ((y - y0) / (y1 - y0)) * (hgt - pad.t - pad.b);
  ctx.strokeStyle = "#e2e5ea";
  ctx.beginPath();
  for (const y of [y0, (y0 + y1) / 2, y1]) {
    ctx.moveTo(pad.l, Y(y));
    ctx.lineTo(w - pad.r, Y(y));
    ctx.fillText(format(y), 2, Y(y) + 4);
  }
  ctx.stroke();
  ctx.fillText(`${Math.round((x1 - x0) / 1000)} s`, w - pad.r - 30, hgt - 4);
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.points.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
    ctx.stroke();
    if (s.points.length === 1) {
      ctx.fillStyle = s.color;
      ctx.fillRect(X(s.points[0][0]) - 2, Y(s.points[0][1]) - 2, 4, 4);
    }
  }
}

function drawOverview() {
  const pick = (key) => history.map((h) => [h.t, h[key]]);
  plot($("plot-connections"), [{ points: pick("connections"), color: "#1f6feb" }], axis);
  plot($("plot-messages"), [
    { points: pick("in"), color: "#1f6feb" },
    { points: pick("out"), color: "#2da44e" },
  ], axis);
  plot($("plot-dropped"), [{ points: pick("dropped"), color: "#cf222e" }], axis);
  plot($("plot-memory"), [{ points: pick("rss"), color: "#8250df" }], bytes);
}

// ---------------------------------------------------------------------------
// The topic tree
// ---------------------------------------------------------------------------

function rateOf(t) {
  if (t.seen.length < 2) return 0;
  const [a, b] = [t.seen[0], t.seen[t.seen.length - 1]];
  return b[0] > a[0] ? ((b[1] - a[1]) * 1000) / (b[0] - a[0]) : 0;
}

// The tree of the topics (filtered): nodes {name, path, children: Map,
// topic (if a topic ends here), count, rate, retained}.
function buildTree() {
  const filter = $("topic-filter").value.trim();
  const root = { name: "", path: "", children: new Map(), count: 0, rate: 0, retained: 0 };
  for (const [name, t] of topics) {
    if (filter && !name.includes(filter)) continue;
    const rate = rateOf(t);
    let node = root;
    const levels = name.split("/");
    levels.forEach((level, i) => {
      node.count += t.count;
      node.rate += rate;
      node.retained += t.retained ? 1 : 0;
      const path = levels.slice(0, i + 1).join("/");
      if (!node.children.has(level)) {
        node.children.set(level, { name: level, path, children: new Map(), count: 0, rate: 0, retained: 0 });
      }
      node = node.children.get(level);
    });
    node.count += t.count;
    node.rate += rate;
    node.retained += t.retained ? 1 : 0;
    node.topic = t;
  }
  return root;
}

function renderTree() {
  const root = buildTree();
  const list = $("tree");
  list.replaceChildren(...[...root.children.values()].sort(byName).map(renderNode));
  if (!root.children.size) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "No messages yet: topics appear as messages are published.";
    list.append(empty);
  }
}

const byName = (a, b) => a.name.localeCompare(b.name);

function renderNode(node) {
  const li = document.createElement("li");
  li.dataset.topic = node.path;
  const row = document.createElement("div");
  row.className = "row" + (selected === node.path ? " selected" : "");
  const open = expanded.has(node.path);
  const toggle = span("toggle", node.children.size ? (open ? "▾" : "▸") : "");
  const name = span("name", node.name === "" ? "(empty)" : node.name);
  row.append(toggle, name);
  if (node.topic) {
    row.append(span("value", node.topic.value ?? `(${node.topic.bytes} bytes)`));
    if (node.topic.retained) row.append(span("badge", "retained"));
  }
  const stats = node.children.size
    ? `${fmt(node.count)} msgs · ${rate(node.rate)} · ${countTopics(node)} topics`
    : `${fmt(node.count)} msgs · ${rate(node.rate)}`;
  row.append(span("stats", stats));
  row.addEventListener("click", () => {
    if (node.children.size) {
      if (open) expanded.delete(node.path);
      else expanded.add(node.path);
    }
    if (node.topic) selected = node.path;
    renderTree();
    renderDetail();
  });
  li.append(row);
  if (node.children.size && open) {
    const ul = document.createElement("ul");
    ul.append(...[...node.children.values()].sort(byName).map(renderNode));
    li.append(ul);
  }
  return li;
}

function countTopics(node) {
  let n = node.topic ? 1 : 0;
  for (const child of node.children.values()) n += countTopics(child);
  return n;
}

function renderDetail() {
  const t = selected !== null ? topics.get(selected) : undefined;
  $("topic-detail").hidden = !t;
  if (!t) return;
  $("detail-topic").textContent = selected;
  $("detail-value").textContent = t.value ?? `(${t.bytes} bytes, not text)`;
  $("detail-count").textContent = fmt(t.count);
  $("detail-rate").textContent = rate(rateOf(t));
  $("detail-retained").textContent = t.retained ? "yes" : "no";
  $("detail-at").textContent = last ? `${Math.max(0, Math.round((last.t - t.at) / 1000))} s ago` : "";
  const canvas = $("topic-plot");
  canvas.hidden = t.points.length === 0;
  $("detail-no-plot").hidden = t.points.length > 0;
  plot(canvas, [{ points: t.points, color: "#1f6feb" }], axis);
}

$("topic-filter").addEventListener("input", renderTree);

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

async function loadClients() {
  const prefix = $("client-search").value.trim();
  const query = new URLSearchParams({ limit: "200" });
  if (prefix) query.set("prefix", prefix);
  try {
    const page = await api("GET", `/api/v1/clients?${query}`);
    $("clients").tBodies[0].replaceChildren(...page.data.map(clientRow));
    $("client-count").textContent = `${page.data.length}${page.next ? "+" : ""} connected`;
  } catch (err) {
    $("client-count").textContent = err.message;
  }
}

function clientRow(c) {
  const tr = document.createElement("tr");
  tr.dataset.clientId = c.client_id;
  const cells = [c.client_id, c.username ?? "", c.subscriptions, c.queued, c.in_flight];
  cells.forEach((v, i) => {
    const td = document.createElement("td");
    td.textContent = String(v);
    if (i >= 2) td.className = "num";
    tr.append(td);
  });
  const td = document.createElement("td");
  const button = document.createElement("button");
  button.className = "disconnect";
  button.textContent = "Disconnect";
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api("DELETE", `/api/v1/clients/${encodeURIComponent(c.client_id)}`);
    } catch (err) {
      alert(`Not disconnected: ${err.message}`);
    }
    loadClients();
  });
  td.append(button);
  tr.append(td);
  return tr;
}

$("client-search").addEventListener("input", loadClients);
setInterval(() => tab === "clients" && authorization && loadClients(), 3000);

// ---------------------------------------------------------------------------
// Publish
// ---------------------------------------------------------------------------

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    topic: $("publish-topic").value,
    payload: $("publish-payload").value,
    encoding: "utf8",
    qos: Number($("publish-qos").value),
    retain: $("publish-retain").checked,
  };
  try {
    const result = await api("POST", "/api/v1/publish", body);
    $("publish-result").textContent = `Published to ${body.topic}: ${result.matched} matching session(s).`;
  } catch (err) {
    $("publish-result").textContent = `Not published: ${err.message}`;
  }
});

// ---------------------------------------------------------------------------
// Tabs and formatting
// ---------------------------------------------------------------------------

for (const button of document.querySelectorAll("nav button")) {
  button.addEventListener("click", () => {
    tab = button.dataset.tab;
    for (const b of document.querySelectorAll("nav button")) b.classList.toggle("active", b === button);
    for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== `tab-${tab}`;
    if (tab === "clients") loadClients();
    if (tab === "topics") { renderTree(); renderDetail(); }
    if (tab === "overview") drawOverview();
  });
}

function span(cls, text) {
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  return s;
}

function fmt(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "–";
}

// A y-axis label: whole numbers with separators, small ones to 3 digits.
function axis(v) {
  return Math.abs(v) >= 100 ? fmt(Math.round(v)) : String(+v.toPrecision(3));
}

function rate(r) {
  return r >= 10 ? `${fmt(Math.round(r))}/s` : `${r.toFixed(1)}/s`;
}

function bytes(n) {
  if (typeof n !== "number") return "–";
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(secs) {
  if (secs < 120) return `${secs} s`;
  if (secs < 7200) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${Math.round(secs / 3600)} h`;
  return `${Math.round(secs / 86400)} days`;
}

// Start: signed in already (this tab), or the sign-in form.
if (authorization) {
  fetch("/api/v1/broker", { headers: { Authorization: authorization } })
    .then((r) => (r.ok ? r.json().then(start) : signOut("")))
    .catch(() => signOut(""));
} else {
  $("login").hidden = false;
}
