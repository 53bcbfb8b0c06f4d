// rnnlab dashboard: plain JavaScript against the service's own API (no libraries, no CDN).
"use strict";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);
const state = { selected: null, ticked: new Set(), source: null, curve: null, runs: [] };

function el(id) { return document.getElementById(id); }

// --- the API key, when the server asks for one ------------------------------------------
// Requests from scripts send it as a bearer header. EventSource and <img> cannot, so it also
// goes into a SameSite=Strict cookie, which the server accepts for GET requests only.

const KEY_COOKIE = "rnnlab_key";
function apiKey() { return sessionStorage.getItem(KEY_COOKIE) || ""; }
function setApiKey(key) {
  sessionStorage.setItem(KEY_COOKIE, key);
  const secure = location.protocol === "https:" ? "; Secure" : "";
  document.cookie = `${KEY_COOKIE}=${encodeURIComponent(key)}; path=/; SameSite=Strict${secure}`;
}
function askForKey(message) {
  el("key-form").hidden = false;
  el("key-message").textContent = message;
}

class Unauthorised extends Error {}

async function api(path, options = {}) {
  const init = { headers: { "Accept": "application/json" }, ...options };
  if (apiKey()) init.headers["Authorization"] = "Bearer " + apiKey();
  if (options.json !== undefined) {
    init.method = init.method || "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (e) { body = { detail: text }; }
  if (resp.status === 401) {
    askForKey(apiKey() ? "that key was refused" : "");
    throw new Unauthorised(`401 ${(body && body.detail) || "API key needed"}`);
  }
  if (!resp.ok) {
    const where = body && body.errors ? body.errors.map(e => `${e.loc.slice(1).join(".")}: ${e.msg}`).join("; ") : "";
    throw new Error(`${resp.status} ${(body && body.detail) || resp.statusText}${where ? " (" + where + ")" : ""}`);
  }
  return body;
}

function pct(x) { return x === null || x === undefined ? "" : (100 * x).toFixed(x < 0.01 ? 2 : 1) + " %"; }

// --- runs table -------------------------------------------------------------------------

function renderRuns(runs) {
  const body = el("runs-table").tBodies[0];
  body.replaceChildren();
  for (const run of runs) {
    const tr = document.createElement("tr");
    tr.dataset.runId = run.id;
    tr.dataset.status = run.status;
    if (run.id === state.selected) tr.classList.add("selected");
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.className = "tick";
    tick.checked = state.ticked.has(run.id);
    tick.addEventListener("click", ev => {
      ev.stopPropagation();
      if (tick.checked) state.ticked.add(run.id); else state.ticked.delete(run.id);
    });
    const cells = [
      tick,
      run.id.slice(0, 8),
      run.status,
      `${run.model} H=${run.config.hidden_size}${run.config.population > 1 ? " K=" + run.config.population : ""}`,
      `${run.epochs_completed} / ${run.config.epochs}`,
      pct(run.metrics.error_ratio),
      run.metrics.verdict || "",
    ];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (c instanceof Node) td.append(c); else td.textContent = c;
      if (i === 2) td.className = "status-" + run.status;
      if (i === 2) td.classList.add("status");
      tr.append(td);
    });
    tr.addEventListener("click", () => select(run.id));
    body.append(tr);
  }
}

async function refreshRuns() {
  try {
    const page = await api("/runs?limit=50");
    state.runs = page.items;
    renderRuns(page.items);
    el("key-form").hidden = true;
  } catch (e) {
    if (!(e instanceof Unauthorised)) el("form-message").textContent = "cannot list runs: " + e.message;
  }
}

// --- the selected run: live curve from its event stream, plots, predict ------------------

function drawCurve() {
  const svg = el("loss-chart");
  const W = 720, H = 300, L = 60, R = 10, T = 10, B = 36;
  const c = state.curve;
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const values = c.train.concat(c.valid).filter(v => v > 0);
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#555" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#555" });
  add("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle", "font-size": 12 }, "epoch");
  add("text", { x: 12, y: H / 2, "font-size": 12, transform: `rotate(-90 12 ${H / 2})`, "text-anchor": "middle" }, "MSE (log)");
  if (!values.length) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no epoch yet");
    return;
  }
  const lo = Math.log10(Math.min(...values)), hi = Math.log10(Math.max(...values));
  const span = Math.max(hi - lo, 1e-6), n = Math.max(c.epochs.length, 2);
  const x = i => L + (W - L - R) * (c.epochs[i] - 1) / Math.max(c.epochs[n - 1] - 1 || 1, 1);
  const y = v => T + (H - T - B) * (hi - Math.log10(Math.max(v, 1e-300))) / span;
  for (const v of [hi, lo]) {
    add("text", { x: L - 4, y: y(10 ** v) + 4, "text-anchor": "end", "font-size": 11 }, (10 ** v).toPrecision(2));
  }
  add("text", { x: W - R, y: H - B + 14, "text-anchor": "end", "font-size": 11 }, String(c.epochs[c.epochs.length - 1]));
  const series = [["train", "#1f77b4", "training loss"], ["valid", "#ff7f0e", "validation loss"]];
  series.forEach(([key, color, label], k) => {
    const pts = c[key].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 1.5, class: "series-" + key });
    add("text", { x: W - R - 120, y: T + 14 + 16 * k, fill: color, "font-size": 12 }, label);
  });
}

let drawPending = false;
function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawCurve(); });
}

function showRun(run) {
  el("d-summary").textContent =
    `${run.model.toUpperCase()}, hidden size ${run.config.hidden_size}, population ${run.config.population}, ` +
    `seed ${run.config.seed}: ${run.status}, ${run.epochs_completed} of ${run.config.epochs} epochs` +
    (run.metrics.error_ratio !== null ? ` — ${pct(run.metrics.error_ratio)} of the zero predictor's error left: ${run.metrics.verdict}` : "") +
    (run.error ? ` — ${run.error}` : "");
  const plots = el("d-plots");
  if (run.status === "succeeded") {
    el("d-predictions").src = `/runs/${run.id}/plots/predictions.svg?index=0&start=0&steps=300`;
    el("d-scatter").src = `/runs/${run.id}/plots/scatter.svg?index=0`;
    plots.hidden = false;
  } else {
    plots.hidden = true;
  }
}

function select(runId) {
  if (state.source) state.source.close();
  state.selected = runId;
  state.curve = { attempt: null, epochs: [], train: [], valid: [] };
  el("detail").hidden = false;
  el("d-id").textContent = runId;
  el("p-output").textContent = "";
  for (const tr of el("runs-table").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.runId === runId);
  drawCurve();
  const source = new EventSource(`/runs/${runId}/events`);
  state.source = source;
  const restart = attempt => { state.curve = { attempt, epochs: [], train: [], valid: [] }; };
  source.addEventListener("status", ev => {
    const run = JSON.parse(ev.data);
    // A new attempt (the run was re-queued) starts its curve again. An ended status is the
    // stream's last event: everything it had to say has come.
    if (!ENDED.has(run.status) && state.curve.attempt !== null && run.attempt !== state.curve.attempt) restart(run.attempt);
    if (state.curve.attempt === null) state.curve.attempt = run.attempt;
    showRun(run);
    scheduleDraw();
    if (ENDED.has(run.status)) source.close();  // the stream ends; do not reconnect
  });
  source.addEventListener("epoch", ev => {
    const e = JSON.parse(ev.data);
    if (e.attempt !== undefined && e.attempt !== state.curve.attempt) restart(e.attempt);
    const c = state.curve;
    if (c.epochs.length && e.epoch <= c.epochs[c.epochs.length - 1]) return;
    c.epochs.push(e.epoch); c.train.push(e.train_loss); c.valid.push(e.valid_loss);
    scheduleDraw();
  });
}

// --- the form, predictions, comparison ---------------------------------------------------

el("run-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  const body = { model: form.get("model"), data: {} };
  for (const name of ["hidden_size", "epochs", "population", "seed"]) {
    if (form.get(name) !== "") body[name] = parseInt(form.get(name), 10);
  }
  if (form.get("learning_rate") !== "") body.learning_rate = parseFloat(form.get("learning_rate"));
  for (const name of ["n_sequences", "seq_len"]) {
    if (form.get(name) !== "") body.data[name] = parseInt(form.get(name), 10);
  }
  const msg = el("form-message");
  try {
    const run = await api("/runs", { json: body });
    msg.className = "message";
    msg.textContent = `started run ${run.id}`;
    await refreshRuns();
    select(run.id);
  } catch (e) {
    msg.className = "message error";
    msg.textContent = e.message;
  }
});

el("p-button").addEventListener("click", async () => {
  const out = el("p-output");
  let sequences;
  try { sequences = JSON.parse(el("p-input").value); } catch (e) { out.textContent = "not JSON: " + e.message; return; }
  try {
    const answer = await api("/predict", { json: { run_id: state.selected, sequences } });
    out.textContent = answer.outputs.map((o, i) => `sequence ${i}: ` + o.map(v => v.toFixed(4)).join(", ")).join("\n");
  } catch (e) {
    out.textContent = e.message;
  }
});

el("compare-button").addEventListener("click", async () => {
  const ids = [...state.ticked];
  const view = el("compare-view");
  view.hidden = false;
  if (!ids.length) { el("compare-summary").textContent = "tick some runs first"; return; }
  try {
    const cmp = await api("/compare?runs=" + ids.join(","));
    el("compare-summary").textContent = cmp.summary;
    const body = el("compare-table").tBodies[0];
    body.replaceChildren();
    for (const r of cmp.runs) {
      const tr = document.createElement("tr");
      for (const c of [r.run_id.slice(0, 8) + (r.run_id === cmp.best ? " ★" : ""), r.model, r.hidden_size, r.epochs,
                       r.test_mse === null ? "" : r.test_mse.toPrecision(3),
                       r.baseline_mse === null ? "" : r.baseline_mse.toPrecision(3), pct(r.error_ratio), r.verdict || ""]) {
        const td = document.createElement("td"); td.textContent = c; tr.append(td);
      }
      body.append(tr);
    }
    el("compare-plot").src = "/plots/compare.svg?runs=" + ids.join(",");
  } catch (e) {
    el("compare-summary").textContent = e.message;
  }
});

el("key-form").addEventListener("submit", ev => {
  ev.preventDefault();
  setApiKey(el("key-input").value.trim());
  el("key-input").value = "";
  el("key-message").textContent = "";
  refreshRuns();
  if (state.selected) select(state.selected);
});

if (apiKey()) setApiKey(apiKey());  // a reload: the cookie follows the tab's key
refreshRuns();
setInterval(refreshRuns, 1000);
