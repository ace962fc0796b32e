"use strict";
// keygate's status page: read-only, talks only to this admin listener's
// /admin/* JSON with the admin token kept in sessionStorage (never in a URL).
const $ = (id) => document.getElementById(id);
const TOKEN = "keygate-admin-token";
// The clients table shows one page of the admin API's listing (by name).
const CLIENTS_PAGE = 100;
let clientsAfter = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c === null || c === undefined ? "" : c);
  return node;
}

function ago(unix) {
  if (!unix) return "never";
  const s = Math.max(0, Math.floor(Date.now() / 1000) - unix);
  if (s >= 86400) return Math.floor(s / 86400) + "d ago";
  if (s >= 3600) return Math.floor(s / 3600) + "h ago";
  if (s >= 60) return Math.floor(s / 60) + "m ago";
  return s + "s ago";
}

function countdown(unix) {
  if (!unix) return "-";
  const s = unix - Math.floor(Date.now() / 1000);
  if (s <= 0) return "ended";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return (h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

async function admin(path) {
  const token = sessionStorage.getItem(TOKEN) || "";
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || response.statusText);
    error.code = body.error && body.error.code;
    throw error;
  }
  return body;
}

function bar(value, max) {
  const width = max > 0 ? Math.round((value / max) * 160) : 0;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", "170");
  svg.setAttribute("height", "12");
  const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
  rect.setAttribute("width", String(width));
  rect.setAttribute("height", "12");
  rect.setAttribute("class", "bar");
  svg.append(rect);
  return svg;
}

// A sparkline of one series (oldest minute first), with its total in the title.
function sparkline(values, label) {
  const ns = "http://www.w3.org/2000/svg";
  const max = Math.max(1, ...values);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", "120");
  svg.setAttribute("height", "20");
  svg.setAttribute("class", "spark");
  svg.setAttribute("data-total", String(values.reduce((a, b) => a + b, 0)));
  const title = document.createElementNS(ns, "title");
  title.textContent = label + ": " + svg.getAttribute("data-total") + " in the last hour";
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", values.map((v, i) => (i * 2) + "," + (19 - Math.round((v / max) * 18))).join(" "));
  svg.append(title, line);
  return svg;
}

function refusal(r) {
  if (!r) return "-";
  return r.status + (r.code ? " " + r.code : "") + " (" + r.reason.replace("_", " ") + ") " + ago(r.at);
}

// What the provider last said is left of a key's limits (docs/design.md §17).
function headroom(h) {
  if (!h) return "-";
  const parts = [];
  if (h.requests !== null && h.requests !== undefined) parts.push(h.requests + " req");
  if (h.tokens !== null && h.tokens !== undefined) parts.push(h.tokens + " tok");
  const open = h.in_flight ? ", " + h.in_flight + " open" : "";
  return parts.length ? parts.join(", ") + " left" + open : (h.in_flight ? h.in_flight + " open" : "-");
}

function rotation(r) {
  if (!r) return "-";
  return r.stage === "pending" ? r.key_id + " pending verification" : r.key_id + " in grace, ends in " + countdown(r.grace_until);
}

function totals(rows) {
  const byClient = {};
  for (const r of rows) byClient[r.client] = (byClient[r.client] || 0) + r.total_tokens + r.estimated_tokens;
  return byClient;
}

async function refresh() {
  let status, activity, providers, keys, clients, hour, day, events;
  try {
    [status, activity, providers, keys, clients, hour, day, events] = await Promise.all([
      admin("/admin/status"),
      admin("/admin/activity"),
      admin("/admin/providers"),
      admin("/admin/keys"),
      admin("/admin/clients?limit=" + CLIENTS_PAGE + (clientsAfter === null ? "" : "&after=" + encodeURIComponent(clientsAfter))),
      admin("/admin/usage?since=1h"),
      admin("/admin/usage?since=1d"),
      admin("/admin/events?since=7d&limit=15"),
    ]);
  } catch (error) {
    $("data").hidden = true;
    $("message").hidden = false;
    $("message").textContent =
      error.code === "admin_api_off"
        ? "The admin API is off: set KEYGATE_ADMIN_TOKEN (or the variable [admin] token_env names) and restart keygate serve."
        : error.code === "invalid_admin_token"
          ? "Wrong admin token: enter the value of KEYGATE_ADMIN_TOKEN."
          : "Cannot read the admin API: " + error.message;
    if (error.code === "invalid_admin_token" || error.code === "admin_api_off") $("login").hidden = false;
    return;
  }
  $("message").hidden = true;
  $("login").hidden = true;
  $("data").hidden = false;
  const reload = status.last_reload;
  $("generation").textContent = "vault generation " + status.vault_generation;
  $("reload").textContent = !reload ? "" : " · last reload " + ago(reload.at) + ": " +
    (reload.result === "ok" ? "ok" : "failed, still serving generation " + reload.generation + " (" + reload.error + ")");
  $("reload").className = reload && reload.result !== "ok" ? "failed" : "";
  const cluster = status.cluster;
  $("cluster").textContent = !cluster ? "" : " · cluster " + cluster.redis + ": " +
    (cluster.shared ? "shared" : "Redis unreachable, limits and key health per replica");
  const list = $("providers");
  list.replaceChildren(el("tr", {}, ...["provider", "kind", "usable keys", "keys created by keygate", "rotation in flight", "refusals, last hour", "fallbacks, last hour", "keys at the provider"].map((h) => el("th", {}, h))));
  for (const p of providers) {
    const managed = p.management_credential ? "yes" : p.admin_configured ? "no: `keygate admin-key set " + p.name + "`" : "no";
    const minutes = activity.providers[p.name] || { refusals: [], fallbacks: [] };
    list.append(el("tr", { "data-provider": p.name },
      el("td", {}, p.name + (p.default ? " (default)" : "")), el("td", {}, p.kind),
      // Red only for a provider someone set up; one the defaults merely offer is grey.
      el("td", { class: p.usable_keys ? "num" : p.set_up ? "num none-usable" : "num not-set-up" },
        p.usable_keys || p.set_up ? String(p.usable_keys) : "not set up"),
      el("td", {}, managed), el("td", {}, rotation(p.rotation)),
      el("td", { class: "refusals" }, sparkline(minutes.refusals, "refusals")),
      el("td", { class: "fallbacks" }, sparkline(minutes.fallbacks, "fallbacks")),
      el("td", { class: p.inventory && (p.inventory.unmanaged || p.inventory.orphan || p.inventory.error) ? "inventory failed" : "inventory" },
        !p.inventory ? "-" : p.inventory.error ? "inventory failed: " + p.inventory.error
          : p.inventory.unmanaged + " unmanaged, " + p.inventory.orphan + " orphan, " + p.inventory.managed + " managed")));
  }
  const table = $("keys");
  table.replaceChildren(el("tr", {}, ...["provider", "key", "label", "state", "health", "headroom", "age", "grace ends in", "last verified", "last refusal", "reason"].map((h) => el("th", {}, h))));
  if (keys.length === 0) {
    table.append(el("tr", {}, el("td", { colspan: "11", class: "empty" },
      "No upstream key yet: printf '%s' \"$OPENAI_API_KEY\" | keygate key add openai")));
  }
  for (const k of keys) {
    const row = el("tr", { "data-key": k.id },
      el("td", {}, k.provider), el("td", {}, k.id), el("td", {}, k.label || "-"),
      el("td", { class: "state " + k.state }, k.state + (k.at_provider && k.at_provider.pending ? " (delete pending)" : "")),
      el("td", { class: "health " + (k.health || "none") }, k.health || "-"),
      el("td", { class: "headroom" }, headroom(k.headroom)),
      el("td", {}, ago(k.created).replace(" ago", "") + (k.due_for_rotation ? " · due for rotation" : "")),
      el("td", {}, countdown(k.grace_until)),
      el("td", {}, ago(k.last_verified)),
      el("td", {}, refusal(k.last_refusal)),
      el("td", {}, k.reason || "-"));
    table.append(row);
  }
  const usage = $("clients");
  usage.replaceChildren(el("tr", {}, ...["client", "status", "limits", "tokens, last hour", "", "tokens, last day", "", "spend, last day"].map((h) => el("th", {}, h))));
  const spend = {};
  for (const r of day) spend[r.client] = (spend[r.client] || 0) + (r.cost_usd || 0);
  const h = totals(hour), d = totals(day);
  const maxH = Math.max(0, ...Object.values(h)), maxD = Math.max(0, ...Object.values(d));
  for (const c of clients) {
    // How close this replica's counts are to each limit.
    const n = c.counted || {};
    const limits = [
      c.rpm && (n.requests_this_minute || 0) + "/" + c.rpm + " rpm",
      c.tpm && (n.tokens_this_minute || 0) + "/" + c.tpm + " tpm",
      c.budget_tokens && (n.tokens_spent || 0) + "/" + c.budget_tokens + " budget",
      c.budget_usd && "$" + (n.usd_spent || 0).toFixed(2) + "/$" + c.budget_usd.toFixed(2),
    ].filter(Boolean).join(", ") + (c.budget_period && (c.budget_usd || c.budget_tokens) ? " per " + c.budget_period : "") || "none";
    usage.append(el("tr", { "data-client": c.name },
      el("td", {}, c.name), el("td", {}, c.revoked ? "revoked" : "active"), el("td", {}, limits),
      el("td", { class: "num" }, String(h[c.name] || 0)), el("td", {}, bar(h[c.name] || 0, maxH)),
      el("td", { class: "num" }, String(d[c.name] || 0)), el("td", {}, bar(d[c.name] || 0, maxD)),
      el("td", { class: "num spend" }, "$" + (spend[c.name] || 0).toFixed(4))));
  }
  $("clients-first").hidden = clientsAfter === null;
  $("clients-next").hidden = clients.length < CLIENTS_PAGE;
  $("clients-next").dataset.after = clients.length ? clients[clients.length - 1].name : "";
  const happened = $("events");
  happened.replaceChildren(el("tr", {}, ...["when", "event", "about", "delivery"].map((h) => el("th", {}, h))));
  if (events.length === 0) {
    happened.append(el("tr", {}, el("td", { colspan: "4", class: "empty" }, "No event in the last 7 days.")));
  }
  for (const e of events) {
    const about = Object.entries(e)
      .filter(([name, value]) => !["id", "type", "time", "deliveries"].includes(name) && value !== null)
      .map(([name, value]) => name + " " + (typeof value === "string" ? value : JSON.stringify(value)))
      .join(" · ");
    const delivery = e.deliveries.length === 0 ? "-" : e.deliveries
      .map((d) => d.receiver + ": " + d.state.replace("_", " ") + (d.state === "delivered" ? "" : " (" + d.attempts + " attempts)"))
      .join(", ");
    happened.append(el("tr", { "data-event": e.id, class: "event " + e.type },
      el("td", {}, ago(Date.parse(e.time) / 1000)), el("td", {}, e.type), el("td", {}, about),
      el("td", { class: e.deliveries.some((d) => d.state !== "delivered") ? "failed" : "" }, delivery)));
  }
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

$("clients-next").addEventListener("click", () => {
  clientsAfter = $("clients-next").dataset.after;
  refresh();
});
$("clients-first").addEventListener("click", () => {
  clientsAfter = null;
  refresh();
});

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN, $("token").value);
  $("token").value = "";
  refresh();
});

if (sessionStorage.getItem(TOKEN)) refresh(); else $("login").hidden = false;
setInterval(() => { if (sessionStorage.getItem(TOKEN)) refresh(); }, 5000);
