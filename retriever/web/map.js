// mae-search explorer: the embedding map (the layout `mae-index map` stored), drawn on one canvas.
// Points are pixels written into one ImageData (no DOM node, no path per point): a 52,224-point map
// draws in a few milliseconds. The query and its top-k are drawn over it as rings.
"use strict";

const EmbeddingMap = (() => {
  const PALETTE = ["#4fb3ff", "#ff9f43", "#7bd88f", "#ff6b81", "#c39bff", "#ffd166", "#5ce1e6", "#f78fb3",
    "#a0e426", "#ff7f50", "#9aa5ff", "#e0c097", "#50c9a8", "#ff4d4d", "#b8b8b8", "#d4a5ff", "#8bd3ff",
    "#ffb3a7", "#c2f970", "#f5e663"];
  const NONE = [80, 88, 96];
  const m = { ids: null, xy: null, codes: null, names: [], index: null, marks: null, size: 0, onPick: null };

  function hexRgb(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }

  // Colour of value code c of n: a palette for few values, a hue ramp (in value order) for many.
  function colour(c, n) {
    if (c < 0) return NONE;
    if (n <= PALETTE.length) return hexRgb(PALETTE[c]);
    const t = n > 1 ? c / (n - 1) : 0;
    return hslRgb(240 - 240 * t, 0.8, 0.6);
  }

  function hslRgb(h, s, l) {
    const a = s * Math.min(l, 1 - l);
    const f = (k0) => { const k = (k0 + h / 30) % 12; return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1)))); };
    return [f(0), f(8), f(4)];
  }

  function cssOf(rgb) { return `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`; }

  function pixel(i) { // canvas pixel of point i (a margin of 12 px: the query's ring stays whole)
    const s = m.size - 24;
    return [12 + m.xy[2 * i] * s, 12 + (1 - m.xy[2 * i + 1]) * s];
  }

  function draw() {
    const canvas = document.querySelector("#map-canvas");
    if (!m.ids || !canvas) return;
    const t0 = performance.now();
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    m.size = Math.min(w, h);
    const img = ctx.createImageData(w, h);
    const px = new Uint32Array(img.data.buffer);
    px.fill(0xff271b14); // the panel's background, ABGR
    const n = m.ids.length, k = m.names.length;
    const dot = n < 2000 ? 6 : n < 20000 ? 3 : 2, half = dot >> 1; // a few points big, many small
    const lut = [];
    for (let c = -1; c < k; c++) { const [r, g, b] = colour(c, k); lut.push((255 << 24) | (b << 16) | (g << 8) | r); }
    for (let i = 0; i < n; i++) {
      const [x, y] = pixel(i);
      const xi = x | 0, yi = y | 0;
      const v = lut[(m.codes ? m.codes[i] : -1) + 1];
      for (let dy = 0; dy < dot; dy++) { const row = (yi + dy - half) * w; for (let dx = 0; dx < dot; dx++) px[row + xi + dx - half] = v; }
    }
    ctx.putImageData(img, 0, 0);
    let marked = 0;
    if (m.marks) {
      ctx.lineWidth = 2;
      for (const [j, id] of m.marks.hits.entries()) {
        const i = m.index.get(id);
        if (i === undefined) continue;
        marked += 1;
        const [x, y] = pixel(i);
        ctx.strokeStyle = "#ffffff";
        ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.stroke();
        if (j < 3) { ctx.fillStyle = "#ffffff"; ctx.fillText(String(j + 1), x + 6, y - 6); }
      }
      const q = m.index.get(m.marks.query);
      if (q !== undefined) {
        const [x, y] = pixel(q);
        ctx.strokeStyle = "#ff3030"; ctx.lineWidth = 3;
        ctx.beginPath(); ctx.arc(x, y, 9, 0, 2 * Math.PI); ctx.stroke();
      }
    }
    canvas.dataset.drawn = String(n);
    canvas.dataset.marked = String(marked);
    canvas.dataset.drawMs = String(Math.round(performance.now() - t0));
  }

  function legend() {
    const box = document.querySelector("#map-legend");
    const items = m.names.slice(0, 24).map((name, c) => {
      const span = document.createElement("span");
      const sw = document.createElement("i");
      sw.style.background = cssOf(colour(c, m.names.length));
      span.append(sw, document.createTextNode(String(name)));
      return span;
    });
    if (m.names.length > 24) {
      const more = document.createElement("span");
      more.textContent = `… ${m.names.length} values, blue (first) to red (last)`;
      items.push(more);
    }
    box.replaceChildren(...items);
  }

  async function load(api, by) {
    const meta = await api("GET", "/api/map");
    const panel = document.querySelector("#map-panel");
    panel.hidden = false;
    const note = document.querySelector("#map-note");
    if (!meta.available) {
      note.textContent = meta.hint;
      document.querySelector("#map-canvas").hidden = true;
      document.querySelector("#map-colour").closest("label").hidden = true;
      return meta;
    }
    note.textContent = `${meta.points} images, ${meta.method}` + (meta.stale ? ` · stale: ${meta.hint}` : "");
    note.className = meta.stale ? "hint warn" : "hint";
    const select = document.querySelector("#map-colour");
    const options = [...meta.fields, ...meta.tags.map((t) => "tag:" + t)];
    select.replaceChildren(...options.map((o) => { const e = document.createElement("option"); e.value = o; e.textContent = o; return e; }));
    select.value = options.includes(by) ? by : (meta.tags.length ? "tag:" + meta.tags[0] : (options.includes("channel") ? "channel" : options[0] || ""));
    select.onchange = () => recolour(api, select.value);
    // The points and their colours in parallel: one round trip less before the first draw.
    const [buf, colours] = await Promise.all([fetch("/api/map/points").then((r) => r.arrayBuffer()), colourCodes(api, select.value)]);
    const n = buf.byteLength / 16;
    m.ids = new BigInt64Array(buf, 0, n);
    m.xy = new Float32Array(buf, 8 * n, 2 * n);
    m.index = null;
    show(colours);
    return meta;
  }

  function colourCodes(api, by) {
    return by ? api("GET", "/api/map/colours?by=" + encodeURIComponent(by)) : Promise.resolve({ codes: [], names: [] });
  }

  async function recolour(api, by) {
    show(await colourCodes(api, by));
  }

  function show(c) {
    m.codes = c.codes.length ? Int32Array.from(c.codes) : null;
    m.names = c.names;
    legend();
    draw();
  }

  function ensureIndex() {
    if (m.index || !m.ids) return;
    m.index = new Map();
    for (let i = 0; i < m.ids.length; i++) m.index.set(m.ids[i].toString(), i);
  }

  // Ring the query (an id) and its hits (ids, in rank order); null clears.
  function mark(queryId, hitIds) {
    if (!m.ids) return;
    ensureIndex();
    m.marks = queryId || (hitIds && hitIds.length) ? { query: queryId ? String(queryId) : null, hits: (hitIds || []).map(String) } : null;
    draw();
  }

  // The id of the point nearest a click (within 8 px), or null.
  function pick(event) {
    if (!m.ids) return null;
    const canvas = event.currentTarget;
    const r = canvas.getBoundingClientRect();
    const x = (event.clientX - r.left) * canvas.width / r.width, y = (event.clientY - r.top) * canvas.height / r.height;
    let best = -1, bestD = 64;
    for (let i = 0; i < m.ids.length; i++) {
      const [px, py] = pixel(i);
      const d = (px - x) * (px - x) + (py - y) * (py - y);
      if (d < bestD) { bestD = d; best = i; }
    }
    return best < 0 ? null : m.ids[best].toString();
  }

  // Canvas position (CSS pixels from the canvas's corner) of an id: for tests and the tooltip.
  function where(id) {
    ensureIndex();
    const i = m.index && m.index.get(String(id));
    if (i === undefined || i === null) return null;
    const canvas = document.querySelector("#map-canvas");
    const r = canvas.getBoundingClientRect();
    const [x, y] = pixel(i);
    return [x * r.width / canvas.width, y * r.height / canvas.height];
  }

  return { load, mark, pick, where, draw };
})();
