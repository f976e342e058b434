// The chargers page. Everything a charger sends (ids, vendor, frames, configuration values) is
// untrusted: it reaches the page only through textContent, attribute values and form values,
// never through innerHTML. Every URL is relative to <base href> (the ingress prefix).
"use strict";

const MAX_FRAMES = 1000;
const MAX_RESULTS = 50;
const chargers = new Map();
let selected = null;
let socket = null;
let retry = 500;
let paused = false;
let frames = [];          // the selected charger's frames, newest first
let held = 0;             // frames that arrived while paused
const actions = new Set();

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, unit, digits) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "number" && digits !== undefined) value = value.toFixed(digits);
  return unit ? `${value} ${unit}` : String(value);
}

function when(seconds) {
  const d = new Date(seconds * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function connect() {
  const url = new URL("ws", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(url);
  socket.onopen = () => { retry = 500; setLink(true); };
  socket.onclose = () => {
    setLink(false);
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
  socket.onmessage = (event) => receive(JSON.parse(event.data));
}

function setLink(up) {
  const link = $("link");
  link.textContent = up ? "live" : "reconnecting…";
  link.className = "pill " + (up ? "on" : "off");
}

function receive(msg) {
  switch (msg.type) {
    case "hello":
      chargers.clear();
      for (const c of msg.chargers) chargers.set(c.id, c);
      if (!chargers.has(selected)) selected = chargers.size ? [...chargers.keys()][0] : null;
      renderList();
      select(selected);
      break;
    case "charger":
      chargers.set(msg.charger.id, msg.charger);
      renderList();
      if (selected === null) select(msg.charger.id);
      else if (msg.charger.id === selected) renderDetail();
      break;
    case "removed":
      chargers.delete(msg.id);
      if (selected === msg.id) select(chargers.size ? [...chargers.keys()][0] : null);
      renderList();
      break;
    case "frames":
      if (msg.id !== selected) break;
      frames = msg.frames.slice().reverse();
      document.body.dataset.watching = msg.id;
      actions.clear();
      for (const f of frames) if (f.action) actions.add(f.action);
      held = 0;
      renderFilter();
      renderFrames();
      break;
    case "frame":
      if (msg.id !== selected) break;
      frames.unshift(msg.frame);
      if (frames.length > MAX_FRAMES) frames.length = MAX_FRAMES;
      if (msg.frame.action && !actions.has(msg.frame.action)) { actions.add(msg.frame.action); renderFilter(); }
      if (paused) { held += 1; renderCount(); } else renderFrames();
      break;
    case "result":
      if (msg.id === selected) { configResult(msg.result); addResult(msg.result); }
      break;
    case "configuration":
      if (msg.id === selected) renderConfiguration(msg);
      break;
    case "error":
      addResult({ command: "page", status: "Error", reason: msg.reason });
      break;
  }
}

function renderList() {
  const nav = $("chargers");
  nav.replaceChildren();
  if (!chargers.size) { nav.append(el("p", { class: "empty" }, "No charger has connected yet.")); return; }
  for (const c of [...chargers.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    const button = el("button", { class: "charger" + (c.id === selected ? " selected" : ""), type: "button",
                                 dataset: { chargerId: c.id }, onclick: () => select(c.id) },
      el("div", { class: "name" }, el("span", { class: "dot" + (c.connected ? " on" : "") }), c.id),
      el("div", { class: "sub" }, [c.status || (c.connected ? "connected" : "offline"), c.power === null ? null : fmt(c.power, "W", 0)].filter(Boolean).join(" · ")),
      el("div", { class: "sub" }, [c.vendor, c.model].filter(Boolean).join(" ") || "–"));
    nav.append(button);
  }
}

function select(id) {
  const changed = id !== selected;
  selected = id;
  $("detail").hidden = id === null;
  if (id === null) return;
  if (changed) {
    $("results").replaceChildren();
    $("config").tBodies[0].replaceChildren();
    $("config-status").textContent = "";
    $("limit-input").value = "";
  }
  frames = [];
  held = 0;
  renderFrames();
  send({ type: "watch", id });
  renderList();
  renderDetail();
}

function dl(target, rows) {
  const node = $(target);
  node.replaceChildren();
  for (const [label, value, cls] of rows) {
    node.append(el("dt", {}, label), el("dd", cls ? { class: cls } : {}, value));
  }
}

function renderDetail() {
  const c = chargers.get(selected);
  if (!c) return;
  $("d-id").textContent = c.id;
  const online = $("d-online");
  online.textContent = c.connected ? "online" : "offline";
  online.className = "pill " + (c.connected ? "on" : "off");
  $("d-status").textContent = c.status || "no status yet";
  dl("d-now", [
    ["Power", fmt(c.power, "W", 0)],
    ["Energy", fmt(c.energy, "kWh", 2)],
    ["Current", fmt(c.current, "A", 1)],
    ["Charging", fmt(c.charging)],
    ["Available", fmt(c.available)],
    ["Error code", fmt(c.error_code), c.error_code && c.error_code !== "NoError" ? "bad" : ""],
    ["Heartbeat", fmt(c.last_heartbeat)],
  ]);
  const differs = c.limit_reason !== undefined;
  dl("d-limit", [
    ["Requested", fmt(c.requested_limit, c.requested_unit), differs ? "warn" : ""],
    ["Applied", fmt(c.charging_limit, c.charging_limit_unit)],
    ...(differs ? [["Why not applied", c.limit_reason, "warn"]] : []),
    ["Effective", fmt(c.effective_limit, c.effective_limit_unit)],
  ]);
  $("limit-unit").textContent = c.unit;
  const caps = c.capabilities || {};
  dl("d-info", [
    ["Vendor", fmt(c.vendor)],
    ["Model", fmt(c.model)],
    ["Firmware", fmt(c.firmware)],
    ["Serial", fmt(c.serial)],
    ["Smart charging", fmt(c.smart_charging)],
    ["Feature profiles", fmt((caps.feature_profiles || []).join(", "))],
    ["Units", fmt((caps.allowed_units || []).join(", "))],
    ["Connectors", fmt(Object.entries(c.connectors || {}).map(([n, x]) => `${n}: ${x.status || "?"}`).join(", "))],
  ]);
  const error = $("d-error");
  if (c.last_error) {
    const e = c.last_error;
    error.textContent = `Last error, ${when(e.time)}: ${e.command} ${e.status}${e.reason ? " (" + e.reason + ")" : ""}`;
    error.className = "banner bad";
  } else {
    error.textContent = "Last error: none";
    error.className = "banner muted";
  }
}

function addResult(result) {
  const list = $("results");
  const status = String(result.status);
  const ok = ["Accepted", "Unchanged", "Queued", "Scheduled", "Unlocked"].includes(status);
  const parts = [String(result.command || ""), status];
  if (result.key) parts.push(String(result.key));
  if (result.limit !== undefined && result.limit !== null) parts.push(`${result.limit} ${result.unit || ""}`.trim());
  if (result.reason) parts.push(String(result.reason));
  list.prepend(el("li", { class: ok ? "ok" : (status === "RebootRequired" ? "warn" : "bad") },
    `${new Date().toLocaleTimeString([], { hour12: false })} `, parts.join(" · ")));
  while (list.children.length > MAX_RESULTS) list.lastChild.remove();
}

function renderFilter() {
  const select = $("frames-filter");
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"));
  for (const action of [...actions].sort()) select.append(el("option", { value: action }, action));
  select.value = actions.has(current) ? current : "";
}

function renderCount() {
  $("frames-count").textContent = `${frames.length} frames` + (held ? `, ${held} new while paused` : "");
}

function renderFrames() {
  const filter = $("frames-filter").value;
  const body = $("frames").tBodies[0];
  const rows = [];
  for (const f of frames) {
    if (filter && f.action !== filter) continue;
    rows.push(el("tr", { class: "frame", dataset: { dir: f.dir, action: f.action } },
      el("td", { class: "when" }, when(f.t)),
      el("td", { title: f.dir === "in" ? "from the charger" : "to the charger" }, f.dir === "in" ? "⇠" : "⇢"),
      el("td", {}, f.type),
      el("td", {}, f.action),
      el("td", { class: "text" }, el("div", { title: "click to show all", onclick: (e) => e.currentTarget.classList.toggle("open") }, f.text))));
    if (rows.length >= 300) break;
  }
  body.replaceChildren(...rows);
  renderCount();
}

// The one way frames reach a disk: the user asks, and the browser saves what this page holds.
function saveFrames() {
  if (selected === null) return;
  const text = JSON.stringify({ charger: selected, frames: frames.slice().reverse() }, null, 1);
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  el("a", { href: url, download: `ocpp-frames-${selected}-${stamp}.json` }).click();
  setTimeout(() => URL.revokeObjectURL(url), 60000);  // after the browser has read it
}

function renderConfiguration(msg) {
  $("config-status").textContent = msg.status === "Accepted" ? `${msg.keys.length} keys` : `${msg.status}${msg.reason ? ": " + msg.reason : ""}`;
  const body = $("config").tBodies[0];
  body.replaceChildren();
  for (const item of msg.keys) {
    const cell = el("td");
    const status = el("td", { class: "cfg-status" });
    if (item.readonly) {
      cell.append(el("span", {}, fmt(item.value)), " ", el("span", { class: "ro" }, "read-only"));
    } else {
      const input = el("input", { type: "text", "aria-label": item.key });
      input.value = item.value === null || item.value === undefined ? "" : String(item.value);
      const button = el("button", { type: "button", onclick: () => {
        status.textContent = "sending…";
        status.className = "cfg-status muted";
        send({ type: "change_configuration", id: selected, key: item.key, value: input.value });
      } }, "Change");
      cell.append(input);
      status.append(button);
    }
    body.append(el("tr", { dataset: { key: item.key } }, el("td", {}, item.key), cell, status));
  }
}

function configResult(result) {
  if (result.command !== "change_configuration") return;
  for (const row of $("config").tBodies[0].rows) {
    if (row.dataset.key !== result.key) continue;
    const cell = row.querySelector(".cfg-status");
    const status = String(result.status);
    cell.replaceChildren(el("span", { class: "outcome " + (status === "Accepted" ? "ok" : status === "RebootRequired" ? "warn" : "bad") }, status));
    const input = row.querySelector("input");
    if (input) cell.append(" ", el("button", { type: "button", onclick: () => {
      send({ type: "change_configuration", id: selected, key: result.key, value: input.value });
    } }, "Change"));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("limit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (selected !== null) send({ type: "command", id: selected, command: "charging_limit", payload: $("limit-input").value });
  });
  for (const button of document.querySelectorAll("button[data-command]")) {
    button.addEventListener("click", () => {
      if (selected === null) return;
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      send({ type: "command", id: selected, command: button.dataset.command, payload: button.dataset.payload });
    });
  }
  $("frames-pause").addEventListener("click", () => {
    paused = !paused;
    $("frames-pause").setAttribute("aria-pressed", String(paused));
    $("frames-pause").textContent = paused ? "Resume" : "Pause";
    if (!paused) { held = 0; renderFrames(); }
  });
  $("frames-filter").addEventListener("change", renderFrames);
  $("frames-save").addEventListener("click", saveFrames);
  $("config-load").addEventListener("click", () => {
    if (selected === null) return;
    $("config-status").textContent = "reading…";
    send({ type: "get_configuration", id: selected });
  });
  connect();
});

