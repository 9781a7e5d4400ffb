// ocpp2mqtt's page. No framework, no build step: the gateway serves this file as is.
// Views by URL hash: #/ (stations), #/station/<id>, #/sessions, #/gateway.
// Live values arrive as Server-Sent Events from /api/events; nothing is polled.
"use strict";

const PAGE_SIZE = 50;
const main = document.getElementById("main");
const liveBadge = document.getElementById("live");
const rows = new Map(); // station id → table row document
let gateway = null;
let source = null;
let view = null; // the current view: {name, station?, update?(kind, data)}
let scheduled = false;
const table = { sort: "id", dir: 1, page: 0, filter: "" };

// --- small helpers ---------------------------------------------------------------------
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    node.append(kid instanceof Node ? kid : String(kid));
  }
  return node;
}
const num = (v, digits) => (typeof v === "number" ? v.toLocaleString(undefined,
  { minimumFractionDigits: digits, maximumFractionDigits: digits }) : "–");
const kw = (w) => (typeof w === "number" ? `${num(w / 1000, 2)} kW` : "–");
const kwh = (wh) => (typeof wh === "number" ? `${num(wh / 1000, 3)} kWh` : "–");
const amps = (a) => (typeof a === "number" ? `${num(a, 1)} A` : "–");
function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (Number.isNaN(s)) return String(iso);
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
const when = (iso) => el("time", { datetime: iso || "", title: iso || "" }, ago(iso));
function stamp(iso) {
  const t = Date.parse(iso || "");
  return Number.isNaN(t) ? (iso || "–") : el("time", { datetime: iso, title: iso },
    new Date(t).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" }));
}
function badge(text, kind) { return el("span", { class: `badge ${kind || ""}` }, text); }
function connBadge(state) {
  return badge(state === "CONNECTED" ? "connected" : state === "DISCONNECTED" ?
    "disconnected" : "unknown", state === "CONNECTED" ? "ok" : "bad");
}
const stationHref = (id) => `#/station/${encodeURIComponent(id)}`;

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-Requested-With": "ocpp2mqtt" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) { location.href = "/login"; throw new Error("log in first"); }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}
const get = (path) => request("GET", path);
const post = (path, body) => request("POST", path, body);

function resultText(result) {
  if (!result) return "";
  const lines = [`${result.action} → ${result.status}`];
  if (result.error) lines.push(result.error);
  if (result.response !== undefined && result.response !== null) {
    lines.push(JSON.stringify(result.response, null, 1));
  }
  return lines.join("\n");
}

// --- live stream ----------------------------------------------------------------------------
function stream(query) {
  if (source && source.query === query) return;
  if (source) source.close();
  source = new EventSource(`/api/events${query}`);
  source.query = query;
  let lost = false;
  source.addEventListener("open", () => {
    liveBadge.textContent = "live"; liveBadge.className = "live on";
    if (lost) { lost = false; reload(); } // what changed while the stream was down
  });
  source.addEventListener("error", () => {
    lost = true;
    liveBadge.textContent = "reconnecting…"; liveBadge.className = "live off";
  });
  source.addEventListener("rows", (e) => {
    for (const row of JSON.parse(e.data)) rows.set(row.id, row);
    if (view && view.update) view.update("rows");
  });
  for (const kind of ["station", "frames", "configuration", "gateway"]) {
    source.addEventListener(kind, (e) => { if (view && view.update) view.update(kind, JSON.parse(e.data)); });
  }
  source.addEventListener("resync", () => { reload(); });
}

function schedule(fn) {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => { scheduled = false; fn(); });
}

// --- stations ---------------------------------------------------------------------------------
const COLUMNS = [
  { key: "id", label: "Station" },
  { key: "connection", label: "Connection" },
  { key: "since", label: "Since", narrow: true },
  { key: "version", label: "OCPP", narrow: true },
  { key: "status", label: "Status" },
  { key: "power", label: "Power", num: true },
  { key: "session_energy", label: "Session", num: true },
  { key: "energy", label: "Meter", num: true, narrow: true },
  { key: "current_limit", label: "Limit", num: true, narrow: true },
  { key: "firmware", label: "Firmware", narrow: true },
  { key: "last_seen", label: "Last seen", narrow: true },
  { key: "upstreams", label: "Upstreams", narrow: true },
];

function cell(column, row) {
  const v = row[column.key];
  switch (column.key) {
    case "id": return el("a", { href: stationHref(row.id) }, row.id);
    case "connection": return connBadge(v);
    case "since": case "last_seen": return when(v);
    case "power": return kw(v);
    case "session_energy": case "energy": return kwh(v);
    case "current_limit": return amps(v);
    case "upstreams": return Object.entries(v || {}).map(([name, u]) =>
      badge(`${name}${u.queue ? ` (${u.queue})` : ""}`, u.connected ? "ok" : "bad"));
    default: return v === null || v === undefined ? "–" : String(v);
  }
}

function sortedRows() {
  const filter = table.filter.trim().toLowerCase();
  let list = [...rows.values()];
  if (filter) {
    list = list.filter((r) => [r.id, r.status, r.vendor, r.model, r.firmware, r.connection]
      .some((x) => x && String(x).toLowerCase().includes(filter)));
  }
  const { sort, dir } = table;
  list.sort((a, b) => {
    const x = a[sort]; const y = b[sort];
    if (x === y) return a.id < b.id ? -1 : 1;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === "number" && typeof y === "number" ? x - y :
      String(x).localeCompare(String(y), undefined, { numeric: true })) * dir;
  });
  return list;
}

function stationsView() {
  const count = el("span", { class: "muted", role: "status", "aria-live": "polite" });
  const search = el("input", {
    type: "search", class: "grow", placeholder: "Search stations, status, vendor…",
    "aria-label": "Search stations", value: table.filter,
    oninput: (e) => { table.filter = e.target.value; table.page = 0; renderBody(); },
  });
  const head = el("tr", {}, COLUMNS.map((c) => el("th", {
    class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" "), scope: "col",
    "aria-sort": table.sort === c.key ? (table.dir > 0 ? "ascending" : "descending") : null,
  }, el("button", {
    type: "button", onclick: () => {
      table.dir = table.sort === c.key ? -table.dir : 1; table.sort = c.key; route();
    },
  }, c.label))));
  const body = el("tbody");
  const prev = el("button", { type: "button", class: "secondary", onclick: () => { table.page--; renderBody(); } }, "Previous");
  const next = el("button", { type: "button", class: "secondary", onclick: () => { table.page++; renderBody(); } }, "Next");
  const where = el("span", { class: "muted" });
  function renderBody() {
    const list = sortedRows();
    const pages = Math.max(1, Math.ceil(list.length / PAGE_SIZE));
    table.page = Math.min(Math.max(0, table.page), pages - 1);
    const start = table.page * PAGE_SIZE;
    const shown = list.slice(start, start + PAGE_SIZE);
    body.replaceChildren(...shown.map((row) => el("tr", { "data-station": row.id },
      COLUMNS.map((c) => el(c.key === "id" ? "th" : "td", {
        "data-k": c.key, scope: c.key === "id" ? "row" : null,
        class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" "),
      }, cell(c, row))))));
    const connected = list.filter((r) => r.connection === "CONNECTED").length;
    count.textContent = `${list.length} station${list.length === 1 ? "" : "s"}, ${connected} connected`;
    where.textContent = list.length ? `${start + 1}–${start + shown.length} of ${list.length}` : "";
    prev.disabled = table.page === 0;
    next.disabled = table.page >= pages - 1;
    if (!list.length) {
      body.append(el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted" },
        rows.size ? "No station matches." : "No station has connected yet. Point a charger at ws://<this host>:<LISTEN_PORT>/<station id>.")));
    }
  }
  main.replaceChildren(
    el("h1", {}, "Stations"),
    el("div", { class: "toolbar" }, search, count),
    el("div", { class: "card table-wrap" },
      el("table", { id: "stations" }, el("caption", { class: "skip" }, "Stations"), el("thead", {}, head), body),
      el("div", { class: "pager" }, where, prev, next)),
  );
  renderBody();
  return { name: "stations", update: () => schedule(renderBody) };
}

// --- one station ------------------------------------------------------------------------------
function kv(pairs) {
  return el("dl", { class: "kv" }, pairs.filter(([, v]) => v !== undefined).map(([k, v]) =>
    [el("dt", {}, k), el("dd", {}, v === null || v === "" ? "–" : v)]));
}

function readingsTable(meter) {
  if (!meter.length) return el("p", { class: "muted" }, "No readings yet.");
  const phases = [...new Set(meter.flatMap((m) => Object.keys(m.phases)))].sort();
  return el("div", { class: "table-wrap" }, el("table", {},
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Measurand"),
      el("th", { scope: "col", class: "num" }, "Value"),
      phases.map((p) => el("th", { scope: "col", class: "num" }, p.toUpperCase().replace("_", "-"))))),
    el("tbody", {}, meter.map((m) => el("tr", { "data-key": m.key },
      el("th", { scope: "row" }, m.measurand),
      el("td", { class: "num", "data-k": "value" }, m.value === null ? "–" : `${num(m.value, 2)} ${m.unit || ""}`),
      phases.map((p) => el("td", { class: "num" },
        p in m.phases ? `${num(m.phases[p], 2)} ${m.unit || ""}` : "")))))));
}

function overviewCards(detail) {
  const r = detail.row;
  const v = detail.values;
  const overview = el("section", { class: "card", "aria-labelledby": "h-overview" },
    el("h2", { id: "h-overview" }, "Overview"),
    kv([["Status", r.status], ["Power", el("span", { id: "power" }, kw(r.power))],
      ["Session energy", kwh(r.session_energy)], ["Meter", kwh(r.energy)],
      ["Current limit", `${amps(r.current_limit)}${v.current_limit_status ? ` (${v.current_limit_status})` : ""}`],
      ["Connected", r.connection === "CONNECTED" ? when(r.since) : "no"],
      ["Last seen", when(r.last_seen)], ["OCPP", r.version],
      ["Vendor / model", [r.vendor, r.model].filter(Boolean).join(" ") || null],
      ["Firmware", r.firmware], ["Serial", v.charge_point_serial_number || v.charge_box_serial_number || null],
      ["Error code", v.error_code && v.error_code !== "NoError" ? v.error_code : undefined],
      ["Charging enabled", v.charging_enabled === undefined ? undefined : String(v.charging_enabled)],
      ["Last boot", v.last_boot ? when(v.last_boot) : undefined], ["Boot reason", v.boot_reason || undefined],
      ["Firmware update", v.firmware_status || undefined], ["Diagnostics upload", v.diagnostics_status || undefined],
    ]));
  const t = detail.transaction;
  const transaction = el("section", { class: "card", "aria-labelledby": "h-tx" },
    el("h2", { id: "h-tx" }, "Transaction"),
    t ? kv([["Id", t.id], ["Connector", t.connector], ["Tag", t.id_tag], ["Started", when(t.start)],
      ["Meter start", kwh(t.meter_start)], ["Energy", kwh(t.energy)]])
      : el("p", { class: "muted" }, "No transaction running."));
  const readings = el("section", { class: "card wide", "aria-labelledby": "h-readings" },
    el("h2", { id: "h-readings" }, "Readings"),
    detail.meter.length || !detail.connectors.some((c) => c.meter.length) ? readingsTable(detail.meter) : null,
    detail.connectors.filter((c) => c.id > 0 && (c.meter.length || c.values.status)).map((c) =>
      el("div", {}, el("h3", {}, `Connector ${c.id}`, " ", c.values.status ? badge(c.values.status) : ""),
        c.meter.length ? readingsTable(c.meter) : null)));
  return [overview, transaction, readings];
}

function actionsCard(station) {
  const out = el("pre", { class: "result", role: "status", "aria-live": "polite", id: "action-result" });
  async function run(command, form) {
    const button = form.querySelector("button");
    button.disabled = true;
    out.textContent = `${command.action}: waiting for the charger…`;
    try {
      const data = await post(`/api/stations/${encodeURIComponent(station)}/command`,
        { id: `web-${Date.now()}`, ...command });
      out.textContent = resultText(data.result);
    } catch (err) { out.textContent = `${command.action}: ${err.message}`; }
    button.disabled = false;
  }
  function action(label, fields, build, confirmText) {
    const form = el("form", {
      onsubmit: (e) => {
        e.preventDefault();
        if (confirmText && !window.confirm(confirmText)) return;
        run(build(new FormData(form)), form);
      },
    }, fields, el("button", { type: "submit" }, label));
    return form;
  }
  const field = (label, input) => {
    input.setAttribute("aria-label", label); // not the label's whole text (a select's options)
    return el("label", {}, label, input);
  };
  const int = (v) => (v === "" || v === null ? undefined : Number(v));
  const clean = (args) => Object.fromEntries(Object.entries(args).filter(([, v]) => v !== undefined && v !== ""));
  return el("section", { class: "card actions", "aria-labelledby": "h-actions" },
    el("h2", { id: "h-actions" }, "Actions"),
    action("Start charging", [field("Tag (optional)", el("input", { name: "id_tag", maxlength: 20, size: 10 })),
      field("Connector", el("input", { name: "connector", type: "number", min: 1, size: 3 }))],
    (f) => ({ action: "start_charging", args: clean({ id_tag: f.get("id_tag"), connector: int(f.get("connector")) }) })),
    action("Stop charging", [], () => ({ action: "stop_charging" })),
    action("Set current limit", [field("Amps", el("input", { name: "limit", type: "number", min: 0, step: "0.1", required: true, size: 4 }))],
      (f) => ({ action: "set_current_limit", args: { limit: Number(f.get("limit")) } })),
    action("Clear limit", [], () => ({ action: "clear_current_limit" })),
    action("Unlock", [field("Connector", el("input", { name: "connector_id", type: "number", min: 1, value: 1, size: 3 }))],
      (f) => ({ action: "unlock_connector", args: { connector_id: int(f.get("connector_id")) } })),
    action("Trigger", [field("Message", el("select", { name: "requested_message" },
      ["StatusNotification", "MeterValues", "Heartbeat", "BootNotification",
        "DiagnosticsStatusNotification", "FirmwareStatusNotification"].map((m) => el("option", {}, m))))],
    (f) => ({ action: "trigger_message", args: { requested_message: f.get("requested_message") } })),
    action("Reset", [field("Type", el("select", { name: "type" }, el("option", {}, "Soft"), el("option", {}, "Hard")))],
      (f) => ({ action: "reset", args: { type: f.get("type") } }), "Reset the charger? A running session may end."),
    out);
}

function configurationCard(station) {
  const base = `/api/stations/${encodeURIComponent(station)}/configuration`;
  const info = el("span", { class: "muted", role: "status", "aria-live": "polite" });
  const filter = el("input", { type: "search", placeholder: "Filter keys", "aria-label": "Filter configuration keys", class: "grow" });
  const body = el("tbody");
  let config = null;
  function render() {
    if (!config) { body.replaceChildren(); info.textContent = "Not read from the charger yet."; return; }
    const f = filter.value.trim().toLowerCase();
    const keys = config.keys.filter((k) => !f || String(k.key).toLowerCase().includes(f));
    const writable = config.keys.filter((k) => !k.readonly).length;
    info.textContent = `${config.keys.length} keys (${writable} writable), read ${ago(new Date(config.at * 1000).toISOString())}`;
    body.replaceChildren(...keys.map((k) => {
      const answer = el("td", { "data-k": "answer", role: "status", "aria-live": "polite" });
      if (k.readonly) {
        return el("tr", { "data-key": k.key }, el("th", { scope: "row", class: "mono" }, k.key),
          el("td", { "data-k": "value" }, k.value ?? "–"), el("td", {}, badge("read-only")), answer);
      }
      const input = el("input", { value: k.value ?? "", "aria-label": `Value of ${k.key}`, name: "value" });
      const form = el("form", {
        class: "edit", onsubmit: async (e) => {
          e.preventDefault();
          answer.textContent = "sending…";
          try {
            const data = await post(base, { key: k.key, value: input.value });
            const r = data.result;
            answer.textContent = r.response && r.response.status ? r.response.status : `${r.status}${r.error ? `: ${r.error}` : ""}`;
            answer.className = r.status === "ok" ? "ok" : "error";
          } catch (err) { answer.textContent = err.message; answer.className = "error"; }
        },
      }, input, el("button", { type: "submit", class: "secondary" }, "Save"));
      return el("tr", { "data-key": k.key }, el("th", { scope: "row", class: "mono" }, k.key),
        el("td", { "data-k": "value" }, form), el("td", {}, ""), answer);
    }));
  }
  const refresh = el("button", {
    type: "button", onclick: async () => {
      refresh.disabled = true;
      info.textContent = "asking the charger…";
      try {
        const data = await post(`${base}/refresh`);
        config = data.configuration;
        render();
        if (data.result.status !== "ok") info.textContent = resultText(data.result);
        else if (data.reported && !config) info.textContent = "The charger accepted; its keys appear here as it reports them.";
      } catch (err) { info.textContent = err.message; }
      refresh.disabled = false;
    },
  }, "Read from charger");
  filter.addEventListener("input", render);
  get(base).then((data) => { config = data; render(); }).catch((err) => { info.textContent = err.message; });
  const card = el("section", { class: "card config", "aria-labelledby": "h-config" },
    el("h2", { id: "h-config" }, "Configuration"),
    el("div", { class: "toolbar" }, refresh, filter, info),
    el("div", { class: "table-wrap" }, el("table", { id: "configuration" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Key"), el("th", { scope: "col" }, "Value"),
        el("th", { scope: "col" }, ""), el("th", { scope: "col" }, "Answer"))), body)));
  // A 2.x report arrives in parts; redraw without losing what is being typed.
  const reported = (doc) => {
    config = doc;
    if (!(card.contains(document.activeElement) && document.activeElement.name === "value")) render();
  };
  return { card, reported };
}

function frameRow(f) {
  const short = f.frame.length > 160;
  return el("tr", { class: f.dir },
    el("td", { class: "mono" }, when(f.at), el("br"), el("span", { class: "muted" }, f.at.slice(11, 23))),
    el("td", { title: f.dir === "in" ? "charger → gateway" : "gateway → charger" }, f.dir === "in" ? "→ in" : "← out"),
    el("td", {}, f.type || ""), el("td", {}, f.action || ""),
    el("td", { class: "num" }, f.rtt_ms !== undefined ? `${num(f.rtt_ms, 1)} ms` : ""),
    el("td", { class: "frame" }, short ? el("details", {}, el("summary", { class: "mono" }, `${f.frame.slice(0, 160)}…`), el("pre", {}, f.frame))
      : el("pre", {}, f.frame)));
}

function logCard(station) {
  const body = el("tbody");
  const note = el("p", { class: "muted" });
  const refusals = el("div");
  let newest = null; // time of the newest frame shown; null until the log is loaded
  let early = []; // frames the stream pushed before the log arrived
  function add(frames) {
    const fresh = frames.filter((f) => f.t > newest);
    if (!fresh.length) return;
    newest = fresh[fresh.length - 1].t;
    body.prepend(...fresh.reverse().map(frameRow));
    while (body.children.length > 500) body.lastChild.remove();
  }
  get(`/api/stations/${encodeURIComponent(station)}/log`).then((data) => {
    newest = 0;
    add(data.frames);
    add(early);
    early = [];
    note.textContent = `The last ${data.kept} frames in each direction together, kept in memory; newest first.`;
    if (data.refusals.length) {
      refusals.replaceChildren(el("h3", {}, "Refused connection attempts"), el("table", {},
        el("tbody", {}, data.refusals.map((r) => el("tr", {}, el("td", {}, when(r.at)),
          el("td", {}, r.ip), el("td", {}, String(r.status)), el("td", {}, r.reason))))));
    }
  });
  return {
    card: el("section", { class: "card frames", "aria-labelledby": "h-log" },
      el("h2", { id: "h-log" }, "Message log"), note, refusals,
      el("div", { class: "table-wrap" }, el("table", { id: "log" },
        el("thead", {}, el("tr", {}, ["Time", "Dir", "Type", "Action", "Round trip", "Frame"].map((h) =>
          el("th", { scope: "col" }, h)))), body))),
    add(frames) { if (newest === null) early.push(...frames); else add(frames); },
  };
}

async function stationView(station, mine) {
  main.replaceChildren(el("h1", {}, station), el("p", { class: "muted" }, "Loading…"));
  let detail;
  try { detail = await get(`/api/stations/${encodeURIComponent(station)}`); } catch (err) {
    if (!current(mine)) return null;
    main.replaceChildren(el("h1", {}, station), el("p", { class: "error" }, `Unknown station: ${err.message}`),
      el("p", {}, el("a", { href: "#/" }, "All stations")));
    return { name: "station", station };
  }
  const title = el("h1");
  const live = el("div", { class: "grid", id: "overview" });
  function show(d) {
    title.replaceChildren(d.row.id, connBadge(d.row.connection), d.row.version ? badge(`OCPP ${d.row.version}`) : "");
    live.replaceChildren(...overviewCards(d));
    rows.set(d.row.id, d.row);
  }
  if (!current(mine)) return null;
  show(detail);
  const log = logCard(station);
  const configuration = configurationCard(station);
  main.replaceChildren(title, live,
    el("div", { class: "grid" }, actionsCard(station),
      el("section", { class: "card", "aria-labelledby": "h-sessions" }, el("h2", { id: "h-sessions" }, "Sessions"),
        el("p", {}, el("a", { href: `#/sessions?station=${encodeURIComponent(station)}` }, "Sessions of this station")),
        el("p", {}, el("a", { class: "button secondary", href: `/api/sessions.csv?station=${encodeURIComponent(station)}`, download: "" }, "Download CSV")))),
    configuration.card, log.card);
  return {
    name: "station", station,
    update(kind, data) {
      if (kind === "station" && data.row.id === station) schedule(() => show(data));
      if (kind === "frames") log.add(data);
      if (kind === "configuration") configuration.reported(data);
    },
  };
}

// --- sessions ---------------------------------------------------------------------------------
async function sessionsView(params, mine) {
  const station = params.get("station") || "";
  const q = station ? `?station=${encodeURIComponent(station)}` : "";
  main.replaceChildren(el("h1", {}, "Sessions"), el("p", { class: "muted" }, "Loading…"));
  const data = await get(`/api/sessions${q}`);
  if (!current(mine)) return null;
  const pick = el("select", {
    "aria-label": "Station", onchange: (e) => {
      location.hash = e.target.value ? `#/sessions?station=${encodeURIComponent(e.target.value)}` : "#/sessions";
    },
  }, el("option", { value: "" }, "All stations"), [...rows.keys()].sort().map((id) =>
    el("option", { value: id, selected: id === station }, id)));
  const th = (labels) => el("thead", {}, el("tr", {}, labels.map(([l, n]) => el("th", { scope: "col", class: n ? "num" : null }, l))));
  main.replaceChildren(
    el("h1", {}, "Sessions", station ? badge(station) : ""),
    el("div", { class: "toolbar" }, pick,
      el("a", { class: "button", id: "csv", href: `/api/sessions.csv${q}`, download: "" }, "Download CSV"),
      el("span", { class: "muted" }, `${data.total} session${data.total === 1 ? "" : "s"}`)),
    el("section", { class: "card table-wrap", "aria-labelledby": "h-month" },
      el("h2", { id: "h-month" }, "Per tag and month"),
      data.summary.length ? el("table", { id: "summary" }, th([["Month"], ["Tag"], ["Sessions", 1], ["Energy", 1]]),
        el("tbody", {}, data.summary.map((s) => el("tr", {}, el("td", {}, s.month), el("td", {}, s.id_tag || "–"),
          el("td", { class: "num" }, s.sessions), el("td", { class: "num" }, kwh(s.energy))))))
        : el("p", { class: "muted" }, "No finished session yet.")),
    el("section", { class: "card table-wrap", "aria-labelledby": "h-list" },
      el("h2", { id: "h-list" }, "Latest sessions"),
      el("table", { id: "sessions" }, th([["Station"], ["Transaction"], ["Connector"], ["Tag"], ["Start"], ["Stop"], ["Energy", 1], ["Reason"]]),
        el("tbody", {}, data.sessions.map((s) => el("tr", {},
          el("td", {}, el("a", { href: stationHref(s.station) }, s.station)), el("td", {}, s.transaction_id),
          el("td", {}, s.connector), el("td", {}, s.id_tag || "–"), el("td", {}, stamp(s.started_at)),
          el("td", {}, s.stopped_at ? stamp(s.stopped_at) : s.ended ? "ended" : "running"), el("td", { class: "num" }, kwh(s.energy)),
          el("td", {}, s.reason || "")))))));
  return { name: "sessions" };
}

// --- the gateway -------------------------------------------------------------------------------
function gatewayStatus(g) {
  const mqtt = g.mqtt;
  const upstreams = new Map();
  for (const row of rows.values()) {
    for (const [name, u] of Object.entries(row.upstreams || {})) {
      const s = upstreams.get(name) || { stations: 0, connected: 0, queue: 0 };
      s.stations++; if (u.connected) s.connected++; s.queue += u.queue;
      upstreams.set(name, s);
    }
  }
  return [
    el("h1", {}, "Gateway", badge(g.ready ? "ready" : "not ready", g.ready ? "ok" : "bad")),
    el("div", { class: "grid" },
      el("section", { class: "card", "aria-labelledby": "h-gw" }, el("h2", { id: "h-gw" }, "Status"),
        kv([["Version", g.version], ["Instance", g.instance], ["Started", when(g.started_at)],
          ["Readiness", g.readiness], ["Stations", `${g.stations.connected} connected of ${g.stations.known} known`],
          ["Message log", `${num(g.message_log_bytes / 1024, 0)} KiB in memory`],
          ["Page access", g.open_access ? "open (WEB_AUTH_TOKEN not set)" : "token required"]])),
      el("section", { class: "card", "aria-labelledby": "h-mqtt" }, el("h2", { id: "h-mqtt" }, "MQTT"),
        kv([["Broker", mqtt.broker], ["Link", mqtt.connected ? badge("connected", "ok") : badge("disconnected", "bad")],
          ["Waiting for the broker", String(mqtt.queue_depth)], ["Published", String(mqtt.published)],
          ["Failures", String(mqtt.failures)], ["Dropped (outbox full)", String(mqtt.dropped)]])),
      upstreams.size ? el("section", { class: "card", "aria-labelledby": "h-up" }, el("h2", { id: "h-up" }, "Back offices (relay)"),
        el("table", {}, el("tbody", {}, [...upstreams].map(([name, s]) => el("tr", {}, el("th", { scope: "row" }, name),
          el("td", {}, `${s.connected}/${s.stations} connected`), el("td", {}, `${s.queue} queued`)))))) : null),
    g.groups.map((grp) => el("section", { class: "card table-wrap", "aria-label": `Group ${grp.name}` },
      el("h2", {}, `Load-balancing group ${grp.name}`),
      kv([["Limit", amps(grp.max_current)], ["Metered", amps(grp.metered)], ["Available", amps(grp.available)],
        ["Meter", grp.meter_stale ? badge("stale", "bad") : badge("fresh", "ok")]]),
      el("table", {}, el("thead", {}, el("tr", {}, ["Station", "Share", "In force", "Mode"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, Object.entries(grp.allocations).map(([id, a]) => el("tr", {},
          el("td", {}, el("a", { href: stationHref(id) }, id)), el("td", {}, amps(a)),
          el("td", {}, amps(grp.in_force[id])), el("td", {}, grp.modes[id] || "–"))))))),
    el("section", { class: "card table-wrap", "aria-labelledby": "h-refused" }, el("h2", { id: "h-refused" }, "Refused connection attempts"),
      g.refusals.length ? el("table", {}, el("thead", {}, el("tr", {}, ["When", "Station id", "Address", "HTTP", "Reason"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, g.refusals.map((r) => el("tr", {}, el("td", {}, when(r.at)), el("td", {}, r.station || "–"),
          el("td", {}, r.ip), el("td", {}, String(r.status)), el("td", {}, r.reason)))))
        : el("p", { class: "muted" }, "None since the gateway started.")),
  ];
}

async function gatewayView(mine) {
  const g = await get("/api/gateway");
  if (!current(mine)) return null;
  gateway = g;
  const status = el("div", { id: "gateway-status" }, gatewayStatus(g));
  main.replaceChildren(status,
    el("section", { class: "card table-wrap", "aria-labelledby": "h-settings" }, el("h2", { id: "h-settings" }, "Settings in force"),
      el("p", { class: "muted" }, "Secrets are masked."),
      el("table", { id: "settings" }, el("tbody", {}, Object.entries(g.settings).map(([k, v]) => el("tr", {},
        el("th", { scope: "row", class: "mono" }, k), el("td", { class: "mono" }, typeof v === "string" ? v : JSON.stringify(v))))))));
  return {
    name: "gateway",
    update(kind, data) { if (kind === "gateway") status.replaceChildren(el("div", {}, gatewayStatus(data))); },
  };
}

// --- routing -----------------------------------------------------------------------------------
async function loadRows() {
  const list = await get("/api/stations");
  rows.clear();
  for (const row of list.rows) rows.set(row.id, row);
}

async function reload() {
  try { await loadRows(); } catch (err) { return; } // the stream's next error says so
  route();
}

let navigation = 0; // a view that finishes loading after the user moved on is dropped

async function route() {
  const mine = ++navigation;
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  const name = parts[0] || "stations";
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.toggleAttribute("aria-current", a.dataset.nav === name || (name === "station" && a.dataset.nav === "stations"));
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  const station = name === "station" ? decodeURIComponent(parts.slice(1).join("/")) : null;
  stream(station ? `?station=${encodeURIComponent(station)}` : name === "gateway" ? "?gateway=1" : "");
  view = null;
  const render = name === "station" && station ? () => stationView(station, mine)
    : name === "sessions" ? () => sessionsView(params, mine)
      : name === "gateway" ? () => gatewayView(mine) : async () => stationsView();
  try {
    const shown = await render(mine);
    if (mine !== navigation) return;
    view = shown;
    document.title = `${station || name[0].toUpperCase() + name.slice(1)} · ocpp2mqtt`;
  } catch (err) {
    if (mine === navigation) main.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
  }
}

// A view renders into `main` only while it is still the one the user asked for.
const current = (mine) => mine === navigation;

async function start() {
  try {
    const [g, list] = await Promise.all([get("/api/gateway"), get("/api/stations")]);
    gateway = g;
    for (const row of list.rows) rows.set(row.id, row);
    document.getElementById("open-banner").hidden = !g.open_access;
    document.getElementById("logout").hidden = g.open_access;
    document.getElementById("version").textContent = `ocpp2mqtt ${g.version}`;
  } catch (err) {
    main.replaceChildren(el("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  window.addEventListener("hashchange", route);
  await route();
  document.body.dataset.ready = "1";
}

start();
