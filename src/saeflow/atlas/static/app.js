/* saeflow feature atlas: a static single-page app (plain JS, no build step).
 * Data files are scripts (data/<key>.js) that call SAEFLOW.put(key, obj); they are loaded on demand
 * by <script> injection, which works from file:// (where fetch of local JSON does not) and any host.
 * Routes (location.hash): #/ overview, #/<sae>/layer/<L>, #/<sae>/layer/<L>/feature/<f>,
 * #/<sae>/search?q=..., #/<sae>/modules/<L>, #/<sae>/flow.
 */
(function () {
  "use strict";
  const S = (window.SAEFLOW = window.SAEFLOW || {});
  S.data = {};
  const waiting = {};
  S.put = function (key, obj) {
    S.data[key] = obj;
    if (waiting[key]) waiting[key].resolve(obj);
  };
  function load(key) {
    if (key in S.data) return Promise.resolve(S.data[key]);
    if (waiting[key]) return waiting[key].promise;
    const w = {};
    w.promise = new Promise((res, rej) => { w.resolve = res; w.reject = rej; });
    waiting[key] = w;
    if (key !== "index") {
      const s = document.createElement("script");
      s.src = "data/" + key.split("/").map(encodeURIComponent).join("/") + ".js";
      s.onerror = () => { delete waiting[key]; w.reject(new Error("cannot load data/" + key + ".js")); };
      s.onload = () => { if (!(key in S.data)) w.reject(new Error("data/" + key + ".js did not define " + key)); };
      document.head.appendChild(s);
    }
    return w.promise;
  }
  S.load = load;

  // --- DOM helpers ------------------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "html") e.innerHTML = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  const main = () => document.getElementById("main");
  function fmt(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") {
      if (Number.isInteger(v)) return String(v);
      const a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
      return String(+v.toPrecision(4));
    }
    return String(v);
  }
  const isNum = (v) => typeof v === "number";
  function table(columns, rows, opts) {
    opts = opts || {};
    const numeric = columns.map((_, j) => rows.some((r) => isNum(r[j])));
    return el("table", { class: "t" },
      el("thead", {}, el("tr", {}, columns.map((c, j) => el("th", { class: numeric[j] ? "n" : null, text: c })))),
      el("tbody", {}, rows.map((r) => el("tr", {}, r.map((v, j) => {
        const cell = opts.cell && opts.cell(columns[j], v, r);
        return el("td", { class: numeric[j] ? "n" : null }, cell !== undefined && cell !== null ? cell : fmt(v));
      })))));
  }
  const fhref = (sae, L, f) => `#/${encodeURIComponent(sae)}/layer/${L}/feature/${f}`;
  const flink = (sae, L, f, text) => el("a", { href: fhref(sae, L, f), class: "flink" }, text || `L${L}:${f}`);

  // --- charts (inline SVG) ----------------------------------------------------------------------
  const NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...kids) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const k of kids) if (k) e.append(k);
    return e;
  }
  function lineChart(title, xs, ys, w, h) {
    w = w || 220; h = h || 120;
    const pad = { l: 38, r: 8, t: 6, b: 18 };
    const pts = xs.map((x, i) => [x, ys[i]]).filter((p) => isNum(p[1]));
    const box = svg("svg", { width: w, height: h });
    if (!pts.length) return null;
    const x0 = Math.min(...xs), x1 = Math.max(...xs);
    let y0 = Math.min(...pts.map((p) => p[1])), y1 = Math.max(...pts.map((p) => p[1]));
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const X = (x) => pad.l + (x1 === x0 ? (w - pad.l - pad.r) / 2 : ((x - x0) / (x1 - x0)) * (w - pad.l - pad.r));
    const Y = (y) => h - pad.b - ((y - y0) / (y1 - y0)) * (h - pad.t - pad.b);
    box.append(svg("line", { x1: pad.l, y1: h - pad.b, x2: w - pad.r, y2: h - pad.b, stroke: "#ccc" }));
    box.append(svg("text", { x: 2, y: pad.t + 8 }, document.createTextNode(fmt(y1))));
    box.append(svg("text", { x: 2, y: h - pad.b }, document.createTextNode(fmt(y0))));
    for (const x of xs) box.append(svg("text", { x: X(x) - 3, y: h - 4 }, document.createTextNode(String(x))));
    box.append(svg("polyline", { points: pts.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: "#2f5fd0", "stroke-width": 1.5 }));
    for (const p of pts) box.append(svg("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.5, fill: "#2f5fd0" }));
    return el("div", { class: "chart" }, el("div", { class: "title", text: title }), box);
  }
  function histogram(hist, edges) {
    const [start, counts] = hist;
    if (!counts.length) return el("p", { class: "muted", text: "never fires" });
    const w = 460, h = 140, pad = { l: 40, r: 6, t: 6, b: 22 };
    const box = svg("svg", { width: w, height: h });
    const logc = counts.map((c) => (c > 0 ? Math.log10(c) + 1 : 0));
    const ymax = Math.max(...logc), bw = (w - pad.l - pad.r) / counts.length;
    counts.forEach((c, i) => {
      const bh = ((logc[i] / ymax) * (h - pad.t - pad.b)) || 0;
      const r = svg("rect", { x: pad.l + i * bw, y: h - pad.b - bh, width: Math.max(bw - 1, 1), height: bh, fill: "#2f5fd0" });
      r.append(svg("title", {}, document.createTextNode(`[${fmt(edges[start + i])}, ${fmt(edges[start + i + 1])}): ${c} tokens`)));
      box.append(r);
    });
    box.append(svg("text", { x: pad.l, y: h - 6 }, document.createTextNode(fmt(edges[start]))));
    box.append(svg("text", { x: w - pad.r - 30, y: h - 6 }, document.createTextNode(fmt(edges[start + counts.length]))));
    box.append(svg("text", { x: 2, y: pad.t + 8 }, document.createTextNode(fmt(Math.max(...counts)))));
    box.append(svg("text", { x: 2, y: h - pad.b }, document.createTextNode("1")));
    return el("div", { class: "chart" }, el("div", { class: "title", text: "activation (log bins) vs tokens (log scale)" }), box);
  }

  // --- state, navigation -----------------------------------------------------------------------
  let INDEX = null;
  const saeOf = (name) => INDEX.saes.find((s) => s.name === name) || INDEX.saes[0];
  function parse() {
    const h = location.hash.replace(/^#\/?/, "");
    const qi = h.indexOf("?");
    const path = qi < 0 ? h : h.slice(0, qi), query = qi < 0 ? "" : h.slice(qi + 1);
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(query || "");
    if (!parts.length) return { page: "overview", sae: INDEX.saes[0].name };
    const sae = parts[0];
    if (parts[1] === "layer" && parts[3] === "feature") return { page: "feature", sae, layer: +parts[2], feature: +parts[4] };
    if (parts[1] === "layer") return { page: "layer", sae, layer: +parts[2] };
    if (parts[1] === "search") return { page: "search", sae, q: params.get("q") || "" };
    if (parts[1] === "modules") return { page: "modules", sae, layer: parts[2] !== undefined ? +parts[2] : null };
    if (parts[1] === "flow") return { page: "flow", sae };
    return { page: "overview", sae };
  }
  function nav(r) {
    const sae = saeOf(r.sae);
    const n = document.getElementById("nav");
    n.replaceChildren(
      el("label", {}, "SAE ", el("select", { id: "saesel", onchange: (e) => { location.hash = `#/${encodeURIComponent(e.target.value)}`; } },
        INDEX.saes.map((s) => el("option", { value: s.name, selected: s.name === sae.name ? "selected" : null, text: s.name })))),
      el("a", { href: `#/${encodeURIComponent(sae.name)}` }, "Overview"),
      el("span", {}, "Layers: ", sae.layers.map((L) => el("a", { href: `#/${encodeURIComponent(sae.name)}/layer/${L}`, class: "chip" }, String(L)))),
      el("a", { href: `#/${encodeURIComponent(sae.name)}/modules` }, "Modules"),
      el("a", { href: `#/${encodeURIComponent(sae.name)}/flow` }, "Flow"));
    document.getElementById("q").value = r.page === "search" ? r.q : "";
  }
  let renderId = 0;
  async function route() {
    const t0 = performance.now();
    const id = ++renderId;
    const r = parse();
    delete document.body.dataset.ready;
    nav(r);
    try {
      const page = { overview, layer: layerPage, feature: featurePage, search: searchPage, modules: modulesPage, flow: flowPage }[r.page];
      const content = await page(r, saeOf(r.sae));
      if (id !== renderId) return;
      main().replaceChildren(content);
    } catch (e) {
      if (id !== renderId) return;
      main().replaceChildren(el("p", { class: "err", text: String(e && e.message ? e.message : e) }));
      console.error(e);
    }
    const ms = performance.now() - t0;
    // ms: this route (data loads + render); at: since the document's navigation started
    S.lastRender = { route: location.hash || "#/", ms, at: performance.now(), page: r.page };
    document.body.dataset.ready = r.page;
    if (S.onrender) S.onrender(S.lastRender);
  }

  // --- overview ---------------------------------------------------------------------------------
  async function overview(r, sae) {
    const out = el("div", {});
    out.append(el("h1", { text: `${INDEX.title} — ${sae.name}` }),
      el("p", { class: "muted", text: `${INDEX.kind === "cells" ? "Single-cell" : "DNA"} run; ${INDEX.saes.length} SAE recipe(s); layers ${sae.layers.join(", ")}.` }));
    const order = sae.columns;
    out.append(el("h2", { text: "Layers" }), table(order, sae.summary.map((row) => order.map((c) => row[c])), {
      cell: (c, v) => (c === "layer" ? el("a", { href: `#/${encodeURIComponent(sae.name)}/layer/${v}` }, `layer ${v}`) : undefined),
    }));
    const charts = el("div", {});
    const prefer = ["l0", "explained_variance", "loss_recovered", "Alive", "Dead", "VarExpl", "SVD-aligned", "MeanCos", "Annotated", "Ann%", "CellTypeFeatures", "Modules", "dead_fraction", "dense_fraction"];
    const xs = sae.summary.map((row) => row.layer);
    for (const c of prefer.filter((c) => order.includes(c)).slice(0, 10)) {
      const ch = lineChart(c, xs, sae.summary.map((row) => row[c]));
      if (ch) charts.append(ch);
    }
    out.append(el("h2", { text: "Per layer" }), charts);
    if (sae.flow.length) {
      out.append(el("h2", { text: "Cross-layer flow" }), table(["layer", "next_layer", "persistent", "moderate", "transient", "mean_cos"],
        sae.flow.map((f) => [f.layer, f.next_layer, f.persistent, f.moderate, f.transient, f.mean_cos])),
        el("p", {}, el("a", { href: `#/${encodeURIComponent(sae.name)}/flow` }, "flow and persistent chains →")));
    }
    if (sae.recovery) {
      const c = sae.recovery.columns, li = c.indexOf("layer");
      out.append(el("h2", { text: "Ground-truth recovery (planted motifs)" }), table(c, sae.recovery.rows, {
        cell: (col, v, row) => (col === "feature" || col === "best_auroc_feature") && isNum(v) ? flink(sae.name, row[li], v, String(v)) : undefined,
      }));
    }
    if ((INDEX.evidence || []).length) out.append(el("h2", { text: "Evidence (run-level tables)" }));
    for (const ev of INDEX.evidence || []) {
      out.append(el("details", { open: ev.n_rows <= 30 ? "open" : null, class: "evidence" },
        el("summary", { text: `${ev.name} (${ev.n_rows} rows${ev.n_rows > ev.rows.length ? `, first ${ev.rows.length} shown` : ""})` }),
        evidenceTable(sae, ev.columns, ev.rows)));
    }
    return out;
  }
  function evidenceTable(sae, columns, rows, layer) {
    const li = columns.indexOf("layer");
    return table(columns, rows, {
      cell: (c, v, row) => {
        if (c !== "feature" || !isNum(v)) return undefined;
        const L = li >= 0 ? row[li] : layer;
        return isNum(L) ? flink(sae.name, L, v, String(v)) : undefined;
      },
    });
  }

  // --- layer: virtualised, sortable, filterable feature table ----------------------------------
  async function layerPage(r, sae) {
    const t = await load(`${sae.name}/layer${r.layer}/table`);
    const out = el("div", {});
    out.append(el("h1", { text: `${sae.name} · layer ${r.layer}` }),
      el("p", { class: "muted", text: `${t.n} features. Click a column to sort; the filter matches the text columns (or a feature id).` }));
    const cols = t.columns;
    const widths = cols.map((c) => (c.type === "str" ? "minmax(120px, 2fr)" : c.type === "bool" ? "70px" : "90px")).join(" ");
    let idx = Int32Array.from({ length: t.n }, (_, i) => i);
    let view = idx;
    let sortKey = "feature", sortDir = 1;
    const filt = el("input", { type: "text", placeholder: "filter", id: "filter" });
    const aliveOnly = el("input", { type: "checkbox", id: "aliveonly" });
    const minFreq = el("input", { type: "number", step: "any", min: "0", placeholder: "min freq", style: "width:8em" });
    const count = el("span", { class: "muted" });
    const head = el("div", { class: "head", style: `grid-template-columns:${widths}` });
    const body = el("div", { class: "body" });
    const spacer = el("div", { class: "spacer" });
    body.append(spacer);
    const ROW = 26;
    function headers() {
      head.replaceChildren(...cols.map((c) => el("div", { class: c.type === "num" || c.type === "int" ? "num" : null, "data-key": c.key,
        onclick: () => { if (sortKey === c.key) sortDir = -sortDir; else { sortKey = c.key; sortDir = c.type === "num" ? -1 : 1; } apply(); } },
        c.title + (sortKey === c.key ? (sortDir > 0 ? " ▲" : " ▼") : ""))));
    }
    function apply() {
      const q = filt.value.trim().toLowerCase();
      const mf = parseFloat(minFreq.value);
      const strCols = cols.filter((c) => c.type === "str").map((c) => t.data[c.key]);
      const feat = t.data.feature, alive = t.data.alive, freq = t.data.frequency;
      const keep = [];
      for (let i = 0; i < t.n; i++) {
        if (aliveOnly.checked && alive && !alive[i]) continue;
        if (!isNaN(mf) && freq && !(freq[i] >= mf)) continue;
        if (q) {
          let hit = String(feat[i]) === q;
          for (let j = 0; !hit && j < strCols.length; j++) hit = strCols[j][i].toLowerCase().includes(q);
          if (!hit) continue;
        }
        keep.push(i);
      }
      const v = t.data[sortKey];
      keep.sort((a, b) => {
        const x = v[a], y = v[b];
        if (x === y) return a - b;
        if (x === null || x === "") return 1;
        if (y === null || y === "") return -1;
        return (x < y ? -1 : 1) * sortDir;
      });
      view = Int32Array.from(keep);
      count.textContent = `${view.length} shown`;
      spacer.style.height = view.length * ROW + "px";
      headers();
      rendered = -1;
      draw();
    }
    let rendered = -1;
    function draw() {
      const first = Math.max(0, Math.floor(body.scrollTop / ROW) - 10);
      if (first === rendered && spacer.childElementCount) return;
      rendered = first;
      const last = Math.min(view.length, first + Math.ceil((body.clientHeight || 600) / ROW) + 20);
      const rows = [];
      for (let k = first; k < last; k++) {
        const i = view[k];
        rows.push(el("div", { class: "row", style: `top:${k * ROW}px;grid-template-columns:${widths}` }, cols.map((c) => {
          const v = t.data[c.key][i];
          if (c.key === "feature") return el("div", { class: "num" }, el("a", { href: fhref(sae.name, r.layer, v) }, String(v)));
          if (c.type === "bool") return el("div", { text: v ? "yes" : "" });
          return el("div", { class: c.type === "str" ? null : "num", title: c.type === "str" ? v : null, text: fmt(v) });
        })));
      }
      spacer.replaceChildren(...rows);
    }
    let pending = false;
    body.addEventListener("scroll", () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } });
    let timer = null;
    const later = () => { clearTimeout(timer); timer = setTimeout(apply, 120); };
    filt.addEventListener("input", later);
    minFreq.addEventListener("input", later);
    aliveOnly.addEventListener("change", apply);
    out.append(el("div", { class: "controls" }, filt, el("label", {}, aliveOnly, " alive only"), minFreq, count,
      t.modules && t.modules.length ? el("a", { href: `#/${encodeURIComponent(sae.name)}/modules/${r.layer}` }, `${t.modules.length} modules`) : null),
    el("div", { class: "vt", id: "ftable" }, head, body));
    apply();
    requestAnimationFrame(draw);
    return out;
  }

  // --- feature page -----------------------------------------------------------------------------
  function context(s) {
    const e = el("span", { class: "ctx" });
    for (const m of String(s).matchAll(/([A-Z]+)|([^A-Z]+)/g)) e.append(m[1] ? el("mark", { text: m[1] }) : m[2]);
    return e;
  }
  function nFeatures(sae, L) {
    const row = sae.summary.find((x) => x.layer === L);
    return row ? row.features : Infinity;
  }
  async function featurePage(r, sae) {
    const chunk = INDEX.chunk;
    const data = await load(`${sae.name}/layer${r.layer}/f${Math.floor(r.feature / chunk)}`);
    const d = data[String(r.feature)];
    if (!d) throw new Error(`no feature ${r.feature} in layer ${r.layer} of ${sae.name}`);
    const out = el("div", { id: "feature" });
    const row = d.row || {};
    out.append(el("h1", {}, `${sae.name} · `, el("a", { href: `#/${encodeURIComponent(sae.name)}/layer/${r.layer}` }, `layer ${r.layer}`), ` · feature ${r.feature}`,
      row.label ? el("span", { class: "muted", id: "flabel" }, ` — ${row.label}`) : null),
    el("p", {}, r.feature > 0 ? el("a", { href: fhref(sae.name, r.layer, r.feature - 1) }, "← previous") : null, " ",
      r.feature + 1 < nFeatures(sae, r.layer) ? el("a", { href: fhref(sae.name, r.layer, r.feature + 1) }, "next →") : null),
    el("div", { class: "kv card" }, Object.entries(row).filter(([k]) => k !== "feature" && k !== "label").map(([k, v]) => el("span", {}, el("b", { text: k + ": " }), fmt(v)))));
    if (d.hist) out.append(el("h2", { text: "Activation histogram" }), histogram(d.hist, INDEX.histogram_edges));
    if (sae.recovery) {
      const c = sae.recovery.columns, L = c.indexOf("layer"), F = c.indexOf("feature");
      const hits = sae.recovery.rows.filter((x) => x[L] === r.layer && x[F] === r.feature);
      if (hits.length) out.append(el("h2", { text: "Ground truth: best feature for a planted motif" }), table(c, hits));
    }
    if (d.kmers) out.append(el("h2", { text: "Top activating k-mers (upper-case runs of the top contexts)" }), table(["k-mer", "contexts"], d.kmers));
    if (d.tokens) out.append(el("h2", { text: "Top tokens" }), el("div", { id: "toptokens" }, d.tokens.map(([t, n]) => el("span", { class: "chip", text: `${t} ×${n}` }))));
    if (d.contexts) out.append(el("h2", { text: "Top contexts (activating bases highlighted)" }),
      table(["activation", "sequence", "start", "end", "token", "context"], d.contexts, { cell: (c, v) => (c === "context" ? context(v) : undefined) }));
    if (d.genes) {  // rows: gene, symbol (null without one), mean activation, count, fire fraction
      const sym = d.genes.some((g) => g[1] !== null && g[1] !== g[0]);
      const rows = sym ? d.genes : d.genes.map((g) => [g[0]].concat(g.slice(2)));
      out.append(el("h2", { text: "Top genes (mean activation at the gene's tokens)" }),
        el("div", { id: "topgenes" }, table((sym ? ["gene", "symbol"] : ["gene"]).concat(["mean act", "tokens", "fire fraction"]), rows)));
    }
    if (d.celltypes) out.append(el("h2", { text: "Cell types (top cells vs label, Fisher; BH)" }), table(["label", "overlap", "top cells", "label cells", "odds ratio", "p", "q"], d.celltypes));
    if (d.cells) out.append(el("h2", { text: "Top cells" }), table(["cell", "label", "activation"], d.cells));
    if (d.enrichment) {
      out.append(el("h2", { text: "Enrichment by ontology (top genes vs gene sets; BH over the layer)" }));
      for (const [lib, rows] of Object.entries(d.enrichment)) {
        const best = Math.min(...rows.map((x) => (isNum(x[6]) ? x[6] : 1)));
        out.append(el("details", { open: best < 0.05 ? "open" : null }, el("summary", { text: `${lib} (${rows.length} terms, best q ${fmt(best)})` }),
          table(["term", "overlap", "set size", "fold", "odds ratio", "p", "q", "overlap genes"], rows)));
      }
    }
    if (d.networks) out.append(el("h2", { text: "Networks (edges among the top genes vs degree-preserving nulls)" }), table(["network", "edges", "null mean", "fold", "p", "q", "edges"], d.networks));
    if (d.perturbation) out.append(el("h2", { text: "Perturbation response (target cells vs controls, Mann-Whitney; BH)" }),
      table(["target", "cells", "diff", "CI low", "CI high", "rank-biserial", "p", "q"], d.perturbation));
    if (d.module !== undefined && d.module >= 0) out.append(el("p", {}, "Co-activation module ", el("a", { href: `#/${encodeURIComponent(sae.name)}/modules/${r.layer}` }, String(d.module))));
    if (d.near) {
      out.append(el("h2", { text: "Nearest features in neighbouring layers (decoder cosine)" }));
      for (const dir of ["prev", "next"]) {
        const n = d.near[dir];
        if (!n) continue;
        out.append(el("h3", { text: `${dir === "prev" ? "previous" : "next"} layer (${n.layer})` }),
          table(["feature", "cosine", "label"], n.rows, { cell: (c, v) => (c === "feature" ? flink(sae.name, n.layer, v, `L${n.layer}:${v}`) : undefined) }));
      }
    }
    for (const [name, ev] of Object.entries(d.evidence || {})) {
      out.append(el("h2", { text: `Evidence: ${name}` }), table(ev.columns, ev.rows));
    }
    return out;
  }

  // --- search ---------------------------------------------------------------------------------
  const COMP = { A: "T", C: "G", G: "C", T: "A", N: "N" };
  const revcomp = (s) => s.split("").reverse().map((c) => COMP[c] || c).join("");
  function motifHits(contexts, pats) {
    let hits = 0;
    for (const ctx of contexts.split("|")) {
      const up = ctx.toUpperCase();
      let hit = false;
      for (const re of pats) {
        re.lastIndex = 0;
        let m;
        while (!hit && (m = re.exec(up))) {
          for (let i = m.index; i < m.index + m[0].length; i++) if (ctx[i] >= "A" && ctx[i] <= "Z") { hit = true; break; }
          re.lastIndex = m.index + 1;
        }
      }
      if (hit) hits++;
    }
    return hits;
  }
  async function searchPage(r, sae) {
    const q = r.q.trim();
    const out = el("div", { id: "search" }, el("h1", { text: `Search ${sae.name}: ${q}` }));
    if (!q) { out.append(el("p", { class: "muted", text: "Type a gene, a token, a DNA motif (ACGT, N = any base; both strands) or an ontology term." })); return out; }
    const shards = await Promise.all(sae.layers.map((L) => Promise.all([load(`${sae.name}/layer${L}/search`), load(`${sae.name}/layer${L}/table`)])));
    const Q = q.toUpperCase();
    const exact = [], terms = [], motif = [];
    const isDNA = /^[ACGTN]{3,}$/.test(Q) && INDEX.kind !== "cells";
    const pats = isDNA ? [...new Set([Q, revcomp(Q)])].map((p) => new RegExp(p.replace(/N/g, "[ACGTN]"), "g")) : [];
    sae.layers.forEach((L, li) => {
      const [s, t] = shards[li];
      const label = (f) => (t.data.label ? t.data.label[f] : "");
      const idx = s.genes || s.tokens || {};
      for (const [f, v] of idx[Q] || []) exact.push([L, f, v, label(f)]);
      for (const [term, rows] of Object.entries(s.terms || {})) {
        if (!term.toLowerCase().includes(q.toLowerCase())) continue;
        for (const [f, qv, p] of rows) terms.push([term, L, f, qv, p, label(f)]);
      }
      if (isDNA) for (const [f, ctx] of Object.entries(s.contexts || {})) {
        const h = motifHits(ctx, pats);
        if (h) motif.push([L, +f, h, ctx.split("|").length, label(+f)]);
      }
    });
    const linkAt = (li) => (c, v, row) => (c === "feature" ? flink(sae.name, row[li], v, String(v)) : undefined);
    const link = linkAt(0);
    if (isDNA) {
      motif.sort((a, b) => b[2] / b[3] - a[2] / a[3] || b[2] - a[2] || a[0] - b[0] || a[1] - b[1]);
      out.append(el("h2", { text: `Motif ${Q} (and its reverse complement) overlapping activating bases of the top contexts: ${motif.length} features` }),
        el("div", { id: "motifresults" }, table(["layer", "feature", "contexts hit", "contexts", "top k-mer"], motif.slice(0, 200), { cell: link })));
    }
    exact.sort((a, b) => a[2] - b[2] || a[0] - b[0] || a[1] - b[1]);
    out.append(el("h2", { text: `${INDEX.kind === "cells" ? "Gene" : "Token"} ${Q} among the features' top ${INDEX.kind === "cells" ? "genes" : "tokens"}: ${exact.length} features` }),
      el("div", { id: "generesults" }, table(["layer", "feature", INDEX.kind === "cells" ? "rank" : "count", "label"], exact.slice(0, 500), { cell: link })));
    if (INDEX.kind === "cells") {
      terms.sort((a, b) => (a[3] ?? 1) - (b[3] ?? 1) || a[1] - b[1] || a[2] - b[2]);
      out.append(el("h2", { text: `Ontology terms matching “${q}” (p < 0.05; q beside): ${terms.length} rows` }),
        el("div", { id: "termresults" }, table(["term", "layer", "feature", "q", "p", "top genes"], terms.slice(0, 500), { cell: linkAt(1) })));
    }
    return out;
  }

  // --- modules, flow --------------------------------------------------------------------------
  async function modulesPage(r, sae) {
    const L = r.layer === null ? sae.layers[0] : r.layer;
    const t = await load(`${sae.name}/layer${L}/table`);
    const out = el("div", {}, el("h1", { text: `${sae.name} · co-activation modules` }),
      el("p", {}, "Layer: ", sae.layers.map((x) => el("a", { href: `#/${encodeURIComponent(sae.name)}/modules/${x}`, class: "chip", style: x === L ? "font-weight:700" : null }, String(x)))));
    if (!t.modules || !t.modules.length) {
      out.append(el("p", { class: "muted", text: INDEX.kind === "cells" ? `No module in layer ${L}.` : "This run's outputs hold no co-activation modules (the DNA catalog does not compute them; the single-cell atlas does)." }));
      return out;
    }
    const label = t.data.label;
    for (const m of t.modules) {
      out.append(el("div", { class: "card", style: "margin:8px 0" }, el("b", { text: `module ${m.module}` }), ` · ${m.size} features`,
        m.term ? el("span", { class: "muted", text: ` · most common term: ${m.term} (${fmt(m.fraction)})` }) : null,
        el("div", {}, m.features.map((f) => el("a", { class: "chip", href: fhref(sae.name, L, f), title: label ? label[f] : "" }, `${f}${label && label[f] ? " " + label[f].split(",")[0] : ""}`)))));
    }
    return out;
  }
  async function flowPage(r, sae) {
    const out = el("div", {}, el("h1", { text: `${sae.name} · cross-layer flow` }),
      el("p", { class: "muted", text: `Each alive feature's best decoder-cosine match in the next layer: persistent ≥ ${INDEX.thresholds[1]}, moderate ≥ ${INDEX.thresholds[0]}, else transient.` }));
    if (!sae.flow.length) { out.append(el("p", { class: "muted", text: "One layer only (or no decoders): no flow." })); return out; }
    const w = 120 * sae.flow.length + 60, h = 180, box = svg("svg", { width: w, height: h });
    const colors = { persistent: "#2f5fd0", moderate: "#8fa8e6", transient: "#d9dfec" };
    sae.flow.forEach((f, i) => {
      const tot = f.persistent + f.moderate + f.transient || 1;
      let y = 10;
      for (const k of ["persistent", "moderate", "transient"]) {
        const bh = (f[k] / tot) * 140;
        const rect = svg("rect", { x: 30 + i * 120, y, width: 60, height: bh, fill: colors[k] });
        rect.append(svg("title", {}, document.createTextNode(`${k}: ${f[k]}`)));
        box.append(rect);
        y += bh;
      }
      box.append(svg("text", { x: 30 + i * 120, y: 168 }, document.createTextNode(`L${f.layer} → L${f.next_layer}`)));
    });
    out.append(box, el("p", {}, Object.entries(colors).map(([k, c]) => el("span", { class: "chip", style: `background:${c}` }, k))),
      table(["layer", "next layer", "persistent", "moderate", "transient", "mean cos"], sae.flow.map((f) => [f.layer, f.next_layer, f.persistent, f.moderate, f.transient, f.mean_cos])));
    if (sae.chains.length) {
      out.append(el("h2", { text: "Longest persistent chains" }));
      for (const c of sae.chains) out.append(el("div", {}, c.path.map(([L, f, lab]) => el("a", { class: "chip", href: fhref(sae.name, L, f), title: lab }, `L${L}:${f}${lab ? " " + lab.split(",")[0] : ""}`)),
        el("span", { class: "muted", text: ` min cos ${fmt(c.min_cos)}` })));
    }
    return out;
  }

  // --- start ------------------------------------------------------------------------------------
  document.getElementById("searchform").addEventListener("submit", (e) => {
    e.preventDefault();
    const r = parse();
    location.hash = `#/${encodeURIComponent(r.sae)}/search?q=${encodeURIComponent(document.getElementById("q").value.trim())}`;
  });
  load("index").then((idx) => {
    INDEX = idx;
    document.getElementById("run").textContent = idx.title;
    document.title = `${idx.title} · saeflow atlas`;
    window.addEventListener("hashchange", route);
    route();
  });
})();
