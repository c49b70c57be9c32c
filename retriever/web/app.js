// mae-search explorer. Plain JavaScript, no build step, no external resources.
// The view is a function of the URL (/?id=...&k=...&well=...): every change pushes a history entry,
// back/forward re-render from the URL. Metadata is always inserted as text (textContent), never HTML.
"use strict";

const BROWSE_PAGE = 60;
const FILTERS = ["plate", "well", "site", "channel", "z_min", "z_max", "max_distance", "backend"];
const $ = (sel) => document.querySelector(sel);
let config = { backends: [], reports: [], robustness: false };
let upload = null; // the last uploaded file: {name, bytes}; not in the URL (files never are)
let current = null; // the state last rendered
let facets = { tags: {} };
let nnScores = null; // the index's sorted nearest-neighbour scores (GET /api/scores), loaded at the first query
let hasWells = false;
let lastPlate = null; // the [lo, hi] of the plate map drawn last

function el(tag, attrs = {}, text = null) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = String(text);
  return node;
}

function setStatus(text, isError = false) {
  const s = $("#status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function api(method, path, body, raw = false) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    if (raw) { init.body = body; init.headers["Content-Type"] = "application/octet-stream"; }
    else { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  }
  const r = await fetch(path, init);
  // Ids are 63-bit: keep them as the decimal strings they are (a JS number is exact only to 2^53).
  const text = await r.text();
  let data = {};
  try {
    data = JSON.parse(text, (key, value, ctx) => (key === "id" && typeof value === "number" && ctx ? ctx.source : value));
  } catch (e) { data = {}; }
  if (!r.ok) throw new Error(data.error || `${r.status} ${r.statusText}`);
  return data;
}

// ---- state <-> URL ----------------------------------------------------------------------------

function readState() {
  const p = new URLSearchParams(location.search);
  const s = { k: p.get("k") || "10" };
  if (p.get("id")) s.id = p.get("id");
  if (p.get("q") === "upload") s.q = "upload";
  for (const f of FILTERS) if (p.get(f)) s[f] = p.get(f);
  if (p.getAll("tag").length) s.tag = p.getAll("tag");
  for (const f of ["pert", "sev", "seed", "shuffle", "color"]) if (p.get(f)) s[f] = p.get(f);
  return s;
}

function urlOf(state) {
  const p = new URLSearchParams();
  if (state.id) p.set("id", state.id);
  if (state.q) p.set("q", state.q);
  p.set("k", state.k || "10");
  for (const f of FILTERS) if (state[f]) p.set(f, state[f]);
  for (const t of state.tag || []) p.append("tag", t);
  for (const f of ["pert", "sev", "seed", "shuffle", "color"]) if (state[f]) p.set(f, state[f]);
  return "/?" + p.toString();
}

function navigate(state) {
  history.pushState(null, "", urlOf(state));
  render(state);
}

function formState() {
  const s = { k: $("#k").value || "10" };
  const map = { plate: "#f-plate", well: "#f-well", site: "#f-site", channel: "#f-channel",
    z_min: "#f-zmin", z_max: "#f-zmax", max_distance: "#f-maxd", backend: "#f-backend" };
  for (const [f, sel] of Object.entries(map)) {
    const v = ($(sel).value || "").trim();
    if (v) s[f] = v;
  }
  const tags = [...document.querySelectorAll("#tag-filters select")].filter((x) => x.value).map((x) => `${x.dataset.key}=${x.value}`);
  if (tags.length) s.tag = tags;
  if ($("#map-colour").value) s.color = $("#map-colour").value;
  return s;
}

function fillForm(state) {
  $("#k").value = state.k || "10";
  const map = { plate: "#f-plate", well: "#f-well", site: "#f-site", channel: "#f-channel",
    z_min: "#f-zmin", z_max: "#f-zmax", max_distance: "#f-maxd", backend: "#f-backend" };
  for (const [f, sel] of Object.entries(map)) $(sel).value = state[f] || (f === "backend" ? (config.backends[0] || "") : "");
  const chosen = new Map((state.tag || []).map((t) => [t.slice(0, t.indexOf("=")), t.slice(t.indexOf("=") + 1)]));
  for (const x of document.querySelectorAll("#tag-filters select")) x.value = chosen.get(x.dataset.key) || "";
}

function where(state) {
  const w = {};
  for (const f of ["plate", "well", "channel"]) if (state[f]) w[f] = state[f].split(",").map((v) => v.trim()).filter(Boolean);
  if (state.site) w.site = state.site.split(",").map(Number);
  if (state.z_min) w.z_min = Number(state.z_min);
  if (state.z_max) w.z_max = Number(state.z_max);
  if (state.tag && state.tag.length) w.tags = state.tag;
  return w;
}

// ---- rendering --------------------------------------------------------------------------------

// Percent of the index's sampled images whose nearest neighbour scores at most `score` (as mae-search's).
function percentile(score) {
  if (!nnScores || !nnScores.length) return null;
  let lo = 0, hi = nnScores.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (nnScores[mid] <= score) lo = mid + 1; else hi = mid; }
  return 100 * lo / nnScores.length;
}

// The pNN of each result card, once the index's nearest-neighbour scores are here.
function fillPercentiles() {
  for (const c of document.querySelectorAll(".card[data-score]")) {
    const p = percentile(Number(c.dataset.score));
    if (p === null || c.querySelector(".pct")) continue;
    c.querySelector(".score").after(el("span", { class: "pct", "data-pct": p.toFixed(1),
      title: `closer than the nearest neighbour of ${p.toFixed(0)}% of this index's images` }, `p${Math.floor(p)}`));
  }
}

// The index's sorted nearest-neighbour scores: asked for once (the server computes them at the first ask).
let nnLoad = null;
function loadScores() {
  if (!nnLoad) nnLoad = api("GET", "/api/scores").then((r) => { nnScores = r.scores; }).catch(() => { nnLoad = null; });
  return nnLoad;
}

function card(hit) {
  const c = el("div", { class: "card", "data-id": String(hit.id), title: "query with this image" });
  const img = el("img", { alt: "", loading: "lazy", src: `/thumb/${hit.id}?size=160` });
  c.append(img);
  const meta = el("div", { class: "meta" });
  if (hit.score !== undefined) {
    c.dataset.score = String(hit.score);
    meta.append(el("span", { class: "score" }, hit.score.toFixed(4)));
  }
  // Only the fields an image has: data without plates or wells shows its tags, not a row of dashes.
  for (const [f, label] of [["plate", ""], ["well", ""], ["site", "s"], ["channel", ""], ["z", "z"]]) {
    if (hit[f] !== null && hit[f] !== undefined) meta.append(el("span", { class: f }, label + hit[f]));
  }
  for (const [k, v] of Object.entries(hit.tags || {})) meta.append(el("span", { class: "tag", "data-key": k }, `${k}=${v}`));
  c.append(meta);
  c.append(el("div", { class: "path" }, hit.path));
  c.addEventListener("click", () => { const s = formState(); delete s.shuffle; navigate({ ...s, id: String(hit.id) }); });
  return c;
}

function showResults(hits) {
  const box = $("#results");
  box.replaceChildren(...hits.map(card));
  if (!hits.length) box.append(el("p", { class: "hint" }, "(no results: loosen the filters)"));
}

// No query: the images the filters keep, in a seeded shuffled order, a page at a time.
async function browse(state, offset = 0) {
  const seed = Number(state.shuffle || 0);
  const page = await api("POST", "/api/browse", { where: where(state), offset, limit: BROWSE_PAGE, seed });
  const cards = page.records.map(card);
  if (offset === 0) $("#results").replaceChildren(...cards);
  else { $("#browse-more").remove(); $("#results").append(...cards); }
  const shown = offset + page.records.length;
  if (!page.total) $("#results").append(el("p", { class: "hint" }, "(no images match: loosen the filters)"));
  if (shown < page.total) {
    const more = el("button", { type: "button", id: "browse-more" }, `more (${page.total - shown} left)`);
    more.addEventListener("click", () => browse(state, shown).catch((e) => setStatus(e.message, true)));
    $("#results").append(more);
  }
  $("#results-title").textContent = "Browse";
  setStatus(`${page.total} images match; ${shown} shown, in a shuffled order. Click one to query with it.`);
}

async function render(state) {
  current = state;
  fillForm(state);
  const k = Number(state.k || 10);
  const backend = state.backend || undefined;
  try {
    let hits;
    const qnow = $("#query-now");
    if (state.id) {
      setStatus("searching…");
      const res = await api("POST", "/query/ids", { ids: [state.id], k, where: where(state), backend,
        ...(state.max_distance ? { max_distance: Number(state.max_distance) } : {}) });
      hits = res.results[0];
      qnow.replaceChildren(el("img", { alt: "query", src: `/thumb/${state.id}?size=256` }), el("div", {}, `id ${state.id}`));
    } else if (state.q === "upload" && upload) {
      setStatus("searching…");
      const p = new URLSearchParams({ k: String(k) });
      const w = where(state);
      for (const [f, v] of Object.entries(w)) for (const x of [].concat(v)) p.append(f, String(x));
      if (state.max_distance) p.set("max_distance", state.max_distance);
      if (backend) p.set("backend", backend);
      hits = (await api("POST", "/query?" + p.toString(), upload.bytes, true)).hits;
      qnow.replaceChildren(el("div", {}, `uploaded: ${upload.name}`));
    } else {
      qnow.replaceChildren(el("div", {}, state.q === "upload" ? "the uploaded file is gone: upload it again" : "no query: browsing"));
      for (const s of ["#view-panel", "#plate-panel", "#robust-panel", "#score-note"]) $(s).hidden = true;
      EmbeddingMap.mark(null, null);
      await browse(state);
      return;
    }
    $("#results-title").textContent = "Results";
    showResults(hits);
    // Results first; their percentiles as soon as the index's nearest-neighbour scores are here.
    loadScores().then(() => { fillPercentiles(); showScoreNote(); if (current === state && hasWells && lastPlate) plateLegend(...lastPlate); });
    setStatus(`${hits.length} results`);
    EmbeddingMap.mark(state.id || null, hits.map((h) => h.id));
    await Promise.all([showPlate(state, hits), showView(state), showRobust(state)]);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function showScoreNote() {
  const note = $("#score-note");
  const mid = nnScores && nnScores.length ? nnScores[nnScores.length >> 1] : null;
  note.hidden = mid === null;
  if (mid !== null) {
    note.textContent = `score: cosine similarity. pNN: the hit is closer than the nearest neighbour of NN% of ` +
      `this index's images (median nearest-neighbour score ${mid.toFixed(4)}, from ${nnScores.length} sampled images).`;
  }
}

async function showPlate(state) {
  if (!hasWells) { $("#plate-panel").hidden = true; return; }
  const body = { channel: state.channel || undefined, site: state.site ? Number(state.site) : undefined,
    plate: state.plate || undefined };
  if (state.id) body.id = state.id;
  else body.image = await b64(upload.bytes);
  const map = await api("POST", "/api/plate", body);
  if (!Object.keys(map.images || {}).length) { $("#plate-panel").hidden = true; return; }
  $("#plate-panel").hidden = false;
  $("#plate-name").textContent = map.plate || "";
  const grid = $("#plate");
  const cells = [el("div", { class: "lab" }, "")];
  for (let c = 1; c <= map.columns; c++) cells.push(el("div", { class: "lab" }, c));
  const values = Object.values(map.wells).filter((v) => v !== null);
  const lo = Math.min(...values), hi = Math.max(...values);
  for (const r of map.rows) {
    cells.push(el("div", { class: "lab" }, r));
    for (let c = 1; c <= map.columns; c++) {
      const well = r + String(c).padStart(2, "0");
      const v = map.wells[well];
      const cell = el("div", { class: "cell", "data-well": well, title: v === null ? `${well}: no image` : `${well}: ${v.toFixed(4)}` });
      if (v !== null) {
        cell.classList.add("has");
        cell.dataset.score = String(v);
        const t = hi > lo ? (v - lo) / (hi - lo) : 1;
        cell.style.background = `hsl(${Math.round(220 - 200 * t)}, 80%, ${Math.round(25 + 35 * t)}%)`;
        if (v === hi) cell.classList.add("best");
      }
      cell.addEventListener("mouseenter", () => { $("#plate-tip").textContent = cell.title; });
      cell.addEventListener("click", () => navigate({ ...formState(), id: state.id, q: state.q, well }));
      cells.push(cell);
    }
  }
  grid.replaceChildren(...cells);
  lastPlate = [lo, hi];
  plateLegend(lo, hi);
}

// The colour scale of this query's plate map: the lowest to the highest well, with their percentiles.
function plateLegend(lo, hi) {
  const bar = el("div", { class: "ramp" });
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => `hsl(${Math.round(220 - 200 * t)}, 80%, ${Math.round(25 + 35 * t)}%)`);
  bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const label = (v) => { const p = percentile(v); return v.toFixed(4) + (p === null ? "" : ` (p${Math.floor(p)})`); };
  $("#plate-legend").replaceChildren(el("span", { class: "lo" }, label(lo)), bar, el("span", { class: "hi" }, label(hi)));
  $("#plate-legend").title = "colours run from this query's least to its most similar well (rescaled per query); pNN as on the cards";
}

async function showView(state) {
  const panel = $("#view-panel");
  if (!state.id) { panel.hidden = true; return; }
  const info = await api("GET", `/api/record/${state.id}`);
  panel.hidden = false;
  const showZ = (entry) => {
    const img = $("#view-main img");
    img.src = `/image/${entry.id}`;
    img.dataset.id = String(entry.id);
    $("#view-z").textContent = entry.z === null ? "–" : String(entry.z);
    const rec = info.record;
    const parts = [rec.well, rec.site === null ? null : `s${rec.site}`, rec.channel, entry.z === null ? null : `z${entry.z}`]
      .filter((x) => x !== null && x !== undefined && x !== "");
    for (const [k, v] of Object.entries(rec.tags || {})) parts.push(`${k}=${v}`);
    $("#view-main figcaption").textContent = parts.join(" ");
  };
  const stack = info.stack;
  const slider = $("#z-slider");
  slider.max = String(stack.length - 1);
  slider.value = String(Math.max(0, stack.findIndex((e) => String(e.id) === String(state.id))));
  slider.disabled = stack.length < 2;
  $("#z-label").hidden = stack.length < 2; // no z stack, no slider
  slider.oninput = () => showZ(stack[Number(slider.value)]);
  showZ(stack[Number(slider.value)]);
  const others = info.other_channels.map((r) => {
    const f = el("figure", { "data-id": String(r.id) });
    f.append(el("img", { alt: `channel ${r.channel}`, src: `/image/${r.id}` }), el("figcaption", {}, `other channel: ${r.channel}`));
    return f;
  });
  $("#view-others").replaceChildren(...others);
}

async function showRobust(state) {
  $("#robust-panel").hidden = !(config.robustness && state.id);
}

async function runPerturb() {
  if (!current || !current.id) return;
  const body = { id: current.id, perturbation: $("#pert-name").value, severity: Number($("#pert-sev").value),
    k: Number(current.k || 10), seed: Number($("#pert-seed").value || 0) };
  if (current.backend) body.backend = current.backend;
  setStatus("perturbing…");
  try {
    const r = await api("POST", "/api/perturb", body);
    $("#pert-image").src = r.image;
    $("#pert-overlap").textContent = r.metrics.overlap_at_k.toFixed(4);
    $("#pert-rbo").textContent = r.metrics.rbo.toFixed(4);
    $("#pert-self").textContent = r.metrics.self_rank === null ? "not in top-k" : String(r.metrics.self_rank);
    // The floor each score is read against: random top-k lists from the same gallery (eval/chance.py).
    let chance = $("#pert-chance");
    if (!chance) { chance = el("span", { id: "pert-chance" }); $("#pert-metrics").append(chance); }
    chance.textContent = ` · chance: overlap@k ${r.chance.overlap_at_k.toFixed(4)}, RBO ${r.chance.rbo.toFixed(4)}` +
      ` · ${r.candidates} candidates, excluding the query's ${r.exclude}`;
    const clean = new Set(r.clean.map((h) => h.id));
    const pert = new Set(r.perturbed.map((h) => h.id));
    const li = (h, other) => {
      const item = el("li", { "data-id": String(h.id) }, `${h.well || "–"} s${h.site ?? "–"} ${h.channel || ""} z${h.z ?? "–"} · ${h.score.toFixed(4)}`);
      if (other.has(h.id)) item.classList.add("common");
      return item;
    };
    $("#pert-clean").replaceChildren(...r.clean.map((h) => li(h, pert)));
    $("#pert-perturbed").replaceChildren(...r.perturbed.map((h) => li(h, clean)));
    $("#pert-metrics").dataset.result = JSON.stringify(r.metrics);
    setStatus(`${r.perturbation} severity ${r.severity} (value ${r.value})`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function b64(bytes) {
  return new Promise((resolve) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",")[1]);
    reader.readAsDataURL(new Blob([bytes]));
  });
}

async function takeFile(file) {
  if (!file) return;
  if (file.size > (config.limits ? config.limits.max_upload_bytes : 64 << 20)) {
    setStatus(`${file.name} is larger than the server's upload limit`, true);
    return;
  }
  upload = { name: file.name, bytes: await file.arrayBuffer() };
  const s = formState();
  delete s.id;
  navigate({ ...s, q: "upload" });
}

// ---- start ------------------------------------------------------------------------------------

function fillSelect(sel, facet, label = (v) => v) {
  const box = $(sel);
  for (const { value, count } of facet) {
    if (value === null) continue;
    box.append(el("option", { value: String(value) }, `${label(value)} (${count})`));
  }
}

function fillTags(tags) {
  const box = $("#tag-filters");
  for (const [key, values] of Object.entries(tags)) {
    const select = el("select", { "data-key": key, name: "tag:" + key });
    select.append(el("option", { value: "" }, "any"));
    for (const { value, count } of values) select.append(el("option", { value }, `${value} (${count})`));
    const label = el("label", {}, key + " ");
    label.append(select);
    box.append(label);
  }
}

async function start() {
  // The first images come first (a query's results, or the browse gallery); the controls fill in beside.
  const first = readState().q === "upload" ? null : render(readState());
  const [cfg, fac] = await Promise.all([api("GET", "/api/config"), api("GET", "/api/facets")]);
  config = cfg;
  facets = fac;
  $("#index-info").textContent = `${facets.count} images`;
  fillSelect("#f-plate", facets.plate);
  fillSelect("#f-site", facets.site);
  fillSelect("#f-channel", facets.channel);
  fillTags(facets.tags || {});
  const held = (f) => facets[f].some((x) => x.value !== null);
  hasWells = held("well");
  // Fields the index has no value of are no filters: a folder of own TIFFs has no plate or well.
  for (const [f, sel] of [["plate", "#f-plate"], ["well", "#f-well"], ["site", "#f-site"], ["channel", "#f-channel"], ["z", "#f-zmin"]]) {
    $(sel).closest("label").hidden = !held(f);
    if (f === "z") $("#f-zmax").closest("label").hidden = !held(f);
  }
  if (config.backends.length > 1) {
    $("#backend-label").hidden = false;
    for (const b of config.backends) $("#f-backend").append(el("option", { value: b }, b));
  }
  for (const r of config.reports) {
    $("#reports").append(el("a", { href: `/reports/${r.index}/report.html`, target: "_blank", rel: "noopener" }, `report: ${r.name}`));
  }
  if (config.robustness) {
    const p = await api("GET", "/api/perturbations");
    for (const x of p.perturbations) $("#pert-name").append(el("option", { value: x.name }, x.name));
  }
  $("#pert-sev").addEventListener("input", () => { $("#pert-sev-value").textContent = $("#pert-sev").value; });
  $("#pert-sev-value").textContent = $("#pert-sev").value;
  $("#pert-form").addEventListener("submit", (e) => { e.preventDefault(); runPerturb(); });
  $("#filters").addEventListener("submit", (e) => {
    e.preventDefault();
    const s = formState();
    if (current && current.id) s.id = current.id;
    if (current && current.q) s.q = current.q;
    navigate(s);
  });
  $("#clear").addEventListener("click", () => navigate({ k: $("#k").value, id: current && current.id, q: current && current.q }));
  $("#shuffle").addEventListener("click", () => { const s = formState(); navigate({ ...s, shuffle: String(1 + Math.floor(Math.random() * 1e9)) }); });
  $("#map-canvas").addEventListener("click", (e) => {
    const id = EmbeddingMap.pick(e);
    if (id) { const s = formState(); delete s.shuffle; navigate({ ...s, id }); }
  });
  $("#file").addEventListener("change", (e) => takeFile(e.target.files[0]));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); takeFile(e.dataTransfer.files[0]); });
  window.addEventListener("popstate", () => render(readState()));
  $("#map-colour").addEventListener("change", () => {
    if (!current) return;
    current = { ...current, color: $("#map-colour").value }; // the colouring is part of the view's URL
    history.replaceState(null, "", urlOf(current));
  });
  const mapLoad = EmbeddingMap.load(api, readState().color).then(() => {
    if (current && current.id) EmbeddingMap.mark(current.id, [...document.querySelectorAll(".card")].map((c) => c.dataset.id));
  }).catch((e) => setStatus("map: " + e.message, true));
  if (first) {
    await first;
    fillForm(readState());
    if (current && current.id && hasWells) await showPlate(current);
    if (config.robustness) await showRobust(readState());
  } else await render(readState());
  document.body.dataset.ready = "1";
  loadScores(); // computed once per index by the server: ask once the first images are up, while the user browses
  await mapLoad;
}

start().catch((e) => setStatus(e.message, true));
