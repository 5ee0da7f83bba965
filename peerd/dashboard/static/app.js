// peerd dashboard: reads the daemon's views (/api/*) and renders them.
// Everything a node, peer or job said is put into the page as text (textContent or text
// nodes), never parsed as HTML: a job's output is untrusted input.
"use strict";

const state = { status: null, peers: [], tasks: [], receipts: [], selected: null, selectedView: null };
const MIN_BACKOFF = 1000;
const MAX_BACKOFF = 30000;
let source = null;
let backoff = MIN_BACKOFF;
let retryTimer = null;
let logSource = null;

// ---------------------------------------------------------------- DOM helpers (text only)
function $(id) { return document.getElementById(id); }

function el(tag, opts, ...children) {
  const node = document.createElement(tag);
  if (opts && opts.cls) node.className = opts.cls;
  if (opts && opts.title) node.title = opts.title;
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function short(id) {
  if (!id) return "—";
  return id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-6) : id;
}

function facts(dl, rows) {
  dl.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
}

function bytes(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return n.toFixed(i ? 1 : 0) + " " + units[i];
}

function duration(s) {
  if (typeof s !== "number") return "—";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + Math.floor(s % 60) + "s";
}

// "queued #2": a requester's task waiting for a provider with room, and its place (1 = placed next).
function stateText(t) {
  if (t.state !== "queued" || !t.queue) return t.state;
  return typeof t.queue.position === "number" ? "queued #" + t.queue.position : "queued (trying)";
}

function when(t) {
  return typeof t === "number" && t > 0 ? new Date(t * 1000).toLocaleString() : "—";
}

// Credits: 4 decimals, or 3 significant digits for the tiny sums of short jobs (never a bare "0.0000").
function money(x) {
  if (typeof x !== "number") return "—";
  return x !== 0 && Math.abs(x) < 0.01 ? Number(x.toPrecision(3)).toString() : x.toFixed(4);
}

// ---------------------------------------------------------------- panels
function renderNode() {
  const s = state.status;
  if (!s) return;
  $("node-id").textContent = s.peer_id;
  const reach = s.reachability ? s.reachability.reachability + (s.reachability.hint ? " — " + s.reachability.hint : "") : "—";
  facts($("node-facts"), [
    ["Role", s.role],
    ["Version", s.version],
    ["Reachability", reach],
    ["Peers", s.peers_connected + " connected, " + s.peers_known + " known"],
    ["Uptime", duration(s.uptime)],
    ["Draining", s.draining ? "yes — takes no new tasks" : "no"],
    ["Jobs running here", String(s.tasks_running)],
    ["Tasks waiting for placement", String(s.tasks_queued)],
    ["Addresses", s.addrs.length ? s.addrs.join("\n") : "—"],
  ]);
  renderCapacity(s.capacity);
}

function renderCapacity(c) {
  const body = $("capacity-body");
  if (!c) {
    body.replaceChildren(el("p", { cls: "muted" }, "No capacity offered (not a provider)."));
    return;
  }
  const meter = (used, total) => {
    const m = document.createElement("meter");
    m.min = 0; m.max = total || 1; m.value = used;
    return m;
  };
  const cpusUsed = c.cpus - c.cpus_free, memUsed = c.memory - c.memory_free;
  const gpusUsed = c.gpus.filter((g) => g.task_id).length;
  const dl = el("dl", null);
  dl.append(el("dt", null, "CPUs"), el("dd", null, meter(cpusUsed, c.cpus),
    " " + cpusUsed.toFixed(2) + " leased / " + c.cpus.toFixed(2) + " (" + c.cpus_free.toFixed(2) + " free)"));
  dl.append(el("dt", null, "Memory"), el("dd", null, meter(memUsed, c.memory),
    " " + bytes(memUsed) + " leased / " + bytes(c.memory)));
  dl.append(el("dt", null, "GPUs"), el("dd", null, gpusUsed + " leased / " + c.gpus.length));
  const rows = c.gpus.map((g) => el("tr", null, el("td", { cls: "mono", title: g.uuid }, short(g.uuid)),
    el("td", null, g.model), el("td", null, bytes(g.memory)),
    el("td", { cls: "mono", title: g.task_id }, g.task_id ? "leased: " + g.task_id : "free")));
  const parts = [dl];
  if (rows.length) {
    parts.push(el("table", null, el("thead", null, el("tr", null, el("th", null, "GPU"), el("th", null, "Model"),
      el("th", null, "Memory"), el("th", null, "Use"))), el("tbody", null, ...rows)));
  }
  body.replaceChildren(...parts);
}

function renderTasks() {
  const rows = state.tasks.map((t) => {
    const tr = el("tr", { cls: "task-row" + (t.task_id === state.selected ? " selected" : "") },
      el("td", { cls: "mono" }, t.task_id),
      el("td", { cls: "state-" + t.state }, stateText(t)),
      el("td", null, t.role),
      el("td", { cls: "mono" }, t.spec && t.spec.image ? String(t.spec.image) : "—"),
      el("td", { cls: "mono", title: t.provider || "" },
        Array.isArray(t.ranks) && t.ranks.length ? "gang of " + t.ranks.length : short(t.provider)),
      el("td", null, String(t.attempts.length)),
      el("td", null, when(t.updated_at)));
    tr.dataset.taskId = t.task_id;
    tr.addEventListener("click", () => select(t.task_id));
    return tr;
  });
  $("task-rows").replaceChildren(...rows);
  $("no-tasks").hidden = rows.length > 0;
  const current = state.tasks.find((t) => t.task_id === state.selected);
  if (current && state.selectedView && current.updated_at !== state.selectedView.updated_at) loadTask(current.task_id);
}

function renderPeers() {
  const rows = state.peers.map((p) => {
    const a = p.advert || {};
    const gpus = Array.isArray(a.gpus) ? a.gpus : [];
    const models = gpus.map((g) => g.model).join(", ");
    const rep = p.reputation || {};
    const score = typeof rep.score === "number"
      ? rep.score.toFixed(2) + (rep.distrusted ? " !" : rep.newcomer ? " new" : "")
      : "—";
    return el("tr", null,
      el("td", { cls: "mono", title: p.peer_id }, short(p.peer_id)),
      el("td", null, (typeof a.free_cpus === "number" ? a.free_cpus : "—") + " / " + (typeof a.cpus === "number" ? a.cpus : "—")),
      el("td", null, gpus.length ? gpus.length + " × " + models : "none"),
      el("td", null, money(a.price_cpu_hour)),
      el("td", null, money(a.price_gpu_hour)),
      el("td", null, score),
      el("td", { cls: "mono" }, p.addrs.length ? p.addrs[0] : "—"));
  });
  $("peer-rows").replaceChildren(...rows);
  $("no-peers").hidden = rows.length > 0;
}

// ---------------------------------------------------------------- one task, its attempts and live output
function select(taskId) {
  state.selected = taskId;
  state.selectedView = null;
  renderTasks();
  $("task").hidden = false;
  $("task-id").textContent = taskId;
  $("log").replaceChildren();
  followLogs(taskId);
  loadTask(taskId);
}

async function loadTask(taskId) {
  try {
    const response = await fetch("/api/tasks/" + encodeURIComponent(taskId), { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const t = await response.json();
    if (state.selected !== taskId) return;
    state.selectedView = t;
    facts($("task-facts"), [
      ["State", stateText(t)],
      ...(t.queue && t.state === "queued" ? [["Queued since", when(t.queue.queued_at)],
        ["Gives up at", when(t.queue.deadline)]] : []),
      ["Side", t.role],
      ["Provider", t.provider || "—"],
      ["Image", t.spec && t.spec.image ? String(t.spec.image) : "—"],
      ["Command", t.spec && Array.isArray(t.spec.command) ? t.spec.command.join(" ") : "—"],
      ["Exit code", t.exit_code === null ? "—" : String(t.exit_code)],
      ["Detail", t.detail || "—"],
      ["Created", when(t.created_at)],
      ["Cost", t.receipt ? money(t.receipt.cost) + (t.receipt.verified ? " (receipt signed by both)" : " (receipt NOT verified)") : "—"],
    ]);
    const ranks = Array.isArray(t.ranks) ? t.ranks : [];
    $("ranks").hidden = ranks.length === 0;
    $("rank-rows").replaceChildren(...ranks.map((r) => el("tr", { cls: "rank-row" },
      el("td", null, String(r.rank)), el("td", { cls: "mono", title: r.provider || "" }, short(r.provider)),
      el("td", { cls: "state-" + r.state }, r.state),
      el("td", null, r.exit_code === null || r.exit_code === undefined ? "—" : String(r.exit_code)),
      el("td", null, r.receipt ? money(r.receipt.cost) : "—"))));
    $("attempt-rows").replaceChildren(...t.attempts.map((a) => el("tr", null,
      el("td", { cls: "mono", title: a.provider }, short(a.provider)), el("td", null, a.outcome),
      el("td", { cls: "mono" }, a.reason || "—"), el("td", null, a.detail || ""))));
  } catch (err) {
    $("task-facts").replaceChildren(el("dt", null, "Error"), el("dd", null, String(err.message || err)));
  }
}

function followLogs(taskId) {
  if (logSource) logSource.close();
  const log = $("log");
  $("log-state").textContent = "(live)";
  logSource = new EventSource("/api/tasks/" + encodeURIComponent(taskId) + "/logs");
  logSource.addEventListener("chunk", (e) => {
    const chunk = JSON.parse(e.data);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(chunk.stream === "stderr" ? el("span", { cls: "stderr" }, chunk.text) : document.createTextNode(chunk.text));
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  logSource.addEventListener("end", () => {
    $("log-state").textContent = "(ended)";
    logSource.close();
  });
  logSource.onerror = () => {
    $("log-state").textContent = "(stream closed)";
    logSource.close();
  };
}

// ---------------------------------------------------------------- earnings and spending, from receipts
function renderMoney() {
  const me = state.status ? state.status.peer_id : null;
  const ordered = state.receipts.slice().sort((a, b) => (a.finished_at || 0) - (b.finished_at || 0));
  let earned = 0, spent = 0;
  const earn = [], spend = [];
  for (const r of ordered) {
    const t = r.finished_at || 0;
    if (r.provider === me) { earned += r.cost; earn.push([t, earned]); }
    if (r.requester === me) { spent += r.cost; spend.push([t, spent]); }
  }
  $("money-totals").textContent = "Earned " + money(earned) + " over " + earn.length + " receipt(s); spent " +
    money(spent) + " over " + spend.length + " receipt(s).";
  const plot = $("plot");
  const W = 640, H = 220, L = 56, R = 12, T = 12, B = 28;
  const all = earn.concat(spend);
  const parts = [svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" })];
  if (!all.length) {
    parts.push(svg("text", { x: L + 10, y: H / 2 }, "no receipts yet"));
    plot.replaceChildren(...parts);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const top = Math.max(...all.map((p) => p[1])) || 1;
  const x = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 1) * (W - L - R);
  const y = (v) => H - B - v / top * (H - T - B);
  const line = (pts, cls) => {
    const stepped = [[t0, 0], ...pts].map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    return svg("polyline", { points: stepped.join(" "), class: cls });
  };
  if (earn.length) parts.push(line(earn, "earn"));
  if (spend.length) parts.push(line(spend, "spend"));
  parts.push(svg("text", { x: 4, y: T + 8 }, money(top)), svg("text", { x: 4, y: H - B }, "0"),
    svg("text", { x: L, y: H - 8 }, when(t0)), svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, when(t1)),
    svg("text", { x: L + 10, y: T + 12, class: "earn-label" }, "earned"),
    svg("text", { x: L + 70, y: T + 12, class: "spend-label" }, "spent"));
  plot.replaceChildren(...parts);
}

// ---------------------------------------------------------------- live updates, unreachable state
const RENDER = { status: () => { renderNode(); renderMoney(); }, peers: renderPeers, tasks: renderTasks, receipts: renderMoney };

function online() {
  backoff = MIN_BACKOFF;
  $("unreachable").hidden = true;
  document.body.classList.remove("offline");
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function offline(why) {
  $("unreachable").hidden = false;
  document.body.classList.add("offline");
  $("unreachable-detail").textContent = why + " Retrying in " + Math.round(backoff / 1000) + " s.";
}

function connect() {
  if (source) source.close();
  source = new EventSource("/api/events");
  for (const name of Object.keys(RENDER)) {
    source.addEventListener(name, (e) => {
      state[name] = JSON.parse(e.data);
      online();
      RENDER[name]();
    });
  }
  source.onerror = () => {
    source.close();
    source = null;
    retry("The event stream from the daemon broke.");
  };
}

function retry(why) {
  offline(why);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(probe, backoff);
  backoff = Math.min(backoff * 2, MAX_BACKOFF);
}

async function probe() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    state.status = await response.json();
    online();
    RENDER.status();
    connect();
  } catch (err) {
    retry("Cannot reach the daemon's dashboard (" + String(err.message || err) + ").");
  }
}

document.addEventListener("DOMContentLoaded", probe);
