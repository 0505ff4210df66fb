// VisionFM local web app: plain JavaScript, no build step, talks only to this server's JSON API.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { models: [], maxMB: 25, file: null, fileName: "", result: null, busy: false, again: false };

  const TASK_LABEL = {
    classification: "Classification", regression: "Measurement (regression)", segmentation: "Segmentation",
    landmark: "Landmark detection", forecasting: "Progression forecast",
  };

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }

  function pct(p) {
    const v = p * 100;
    return (v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)) + " %";
  }

  function fmt(v) {
    if (!Number.isFinite(v)) return String(v);
    const a = Math.abs(v);
    return a >= 100 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toPrecision(3);
  }

  function setStatus(text) { $("status").textContent = text; }

  // The `hidden` attribute (not the `.hidden` property, which SVG elements do not have) shows and hides
  // every element alike; the stylesheet's `[hidden] { display: none !important }` applies to both.
  function setShown(node, on) { node.toggleAttribute("hidden", !on); }
  function isShown(node) { return !node.hasAttribute("hidden"); }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    setShown(box, !!message);
  }

  // One sentence: the first letter upper-case, one final full stop.
  function sentence(text) {
    const t = String(text || "").trim().replace(/^(error|Error)\s*:\s*/, "");
    if (!t) return "";
    return t.charAt(0).toUpperCase() + t.slice(1) + (/[.!?)]$/.test(t) ? "" : ".");
  }

  class RequestError extends Error {}

  // The message of any failure, once: the server's own message when it sent one, else what the status means.
  function failureText(e) {
    if (e instanceof RequestError) return e.message;
    if (e instanceof TypeError) return "The server could not be reached. Is visionfm serve still running?";
    return sentence((e && e.message) || String(e)) || "Something went wrong.";
  }

  function setBusy(on) {
    state.busy = on;
    $("busy").hidden = !on;
    $("run-button").disabled = on || !state.file;
    $("model-select").disabled = on || state.models.length === 0;
  }

  // The server's messages are complete sentences ("this file is not a supported image: ..."): they are
  // shown as they are; a generic text per status is used only when the response carries none.
  async function errorMessage(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : "";
    } catch (e) {
      detail = "";
    }
    const generic = { 400: "The file could not be read", 404: "Not found", 413: "The file is too large",
      415: "Not a supported image", 422: "Invalid request", 500: "The analysis failed",
      503: "The server is busy or the model is unavailable" }[response.status] || "The request failed";
    return new RequestError(sentence(detail) || (generic + " (HTTP " + response.status + ")."));
  }

  // -- models ----------------------------------------------------------------------------------------
  function currentModel() {
    return state.models.find((m) => m.id === $("model-select").value);
  }

  function showModelInfo() {
    const m = currentModel();
    const info = $("model-info");
    info.replaceChildren();
    if (!m) return;
    const rows = [["Modality", m.modality], ["Task", (TASK_LABEL[m.task] || m.task) + (m.task_kind ? " (" + m.task_kind + ")" : "")]];
    const label = m.task === "regression" ? "Measures" : m.task === "landmark" ? "Landmarks" : "Classes";
    const names = m.output_names.map((n, i) => (m.units && m.units[i] ? n + " [" + m.units[i] + "]" : n));
    rows.push([label, names.join(", ")]);
    rows.push(["Encoder", m.arch + " · " + m.input_size + " px"]);
    for (const [k, v] of rows) info.append(el("dt", { text: k }), el("dd", { text: v }));
    if (m.demo) info.append(el("dd", { class: "tag-demo", text: "Demo model: outputs are meaningless" }));
    $("days-row").hidden = m.task !== "forecasting";
    if (m.max_days) $("days-input").max = m.max_days;
    showMetrics(m);
    showCard(m);
  }

  function fmtMetric(v) {
    if (Number.isInteger(v)) return String(v);
    return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(3);
  }

  // The model's evaluation: one row per metric (the selection metric first, marked), with its 95 % CI
  // when metrics.json recorded one, and which metric chose the checkpoint on which split.
  function showMetrics(m) {
    const box = $("model-metrics");
    box.replaceChildren(el("h3", { text: "Evaluation" }));
    const metrics = m.metrics || {};
    const ci = m.metrics_ci || {};
    const sel = m.selection;
    const keys = Object.keys(metrics);
    if (!keys.length) {
      box.append(el("p", { class: "muted small", text: m.demo ? "Demo model: never evaluated." : "No metrics recorded for this model." }));
      return;
    }
    const selKey = sel && sel.metric;
    keys.sort((a, b) => (b === selKey) - (a === selKey) || (b in ci) - (a in ci));
    const hasCi = keys.some((k) => k in ci);
    const level = hasCi ? Math.round(100 * (ci[keys.find((k) => k in ci)].level || 0.95)) : 95;
    if (m.evaluated_on) box.append(el("p", { class: "muted small", text: "On " + m.evaluated_on + "." }));
    const head = [el("th", { text: "Metric" }), el("th", { class: "num", text: "Value" })];
    if (hasCi) head.push(el("th", { class: "num", text: level + " % CI" }));
    const body = el("tbody");
    for (const k of keys) {
      const name = el("td", {}, [k]);
      if (k === selKey) name.append(" ", el("span", { class: "tag-sel", text: "selection", title: "the metric that selected the checkpoint" }));
      const row = el("tr", { "data-metric": k, class: k === selKey ? "selected" : "" }, [name, el("td", { class: "num", text: fmtMetric(metrics[k]) })]);
      if (hasCi) row.append(el("td", { class: "num ci", text: k in ci ? fmtMetric(ci[k].low) + "–" + fmtMetric(ci[k].high) : "" }));
      body.append(row);
    }
    box.append(el("div", { class: "metrics-scroll" }, [el("table", { class: "values metrics", id: "metrics-table" }, [
      el("thead", {}, [el("tr", {}, head)]), body])]));
    if (sel) {
      const dir = sel.higher_is_better ? "higher is better" : "lower is better";
      const value = sel.value === null || sel.value === undefined ? "" : ", " + fmtMetric(sel.value);
      box.append(el("p", { class: "muted small", id: "selection-note",
        text: "Checkpoint selected by " + sel.label + " on the " + sel.split + " split (" + dir + value + ")." }));
    }
  }

  // -- model card: Markdown-lite rendered with text nodes only (no HTML from the card reaches the page) ---
  function inline(text) {
    const out = [];
    const re = /(\*\*[^*]+\*\*|`[^`]+`|\[[^\]]+\]\([^)\s]+\))/g;
    let last = 0, mt;
    while ((mt = re.exec(text)) !== null) {
      if (mt.index > last) out.push(text.slice(last, mt.index));
      const t = mt[0];
      if (t.startsWith("**")) out.push(el("strong", { text: t.slice(2, -2) }));
      else if (t.startsWith("`")) out.push(el("code", { text: t.slice(1, -1) }));
      else out.push(t.slice(1, t.indexOf("]")));  // a link: its text only; the card links nowhere
      last = re.lastIndex;
    }
    if (last < text.length) out.push(text.slice(last));
    return out;
  }

  function cells(line) {
    return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
  }

  function renderMarkdown(md) {
    const frag = document.createDocumentFragment();
    const lines = md.replace(/\r\n?/g, "\n").split("\n");
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (/^```/.test(line)) {
        const code = [];
        for (i++; i < lines.length && !/^```/.test(lines[i]); i++) code.push(lines[i]);
        i++;
        frag.append(el("pre", {}, [el("code", { text: code.join("\n") })]));
      } else if (/^#{1,6}\s/.test(line)) {
        const level = Math.min(6, line.match(/^#+/)[0].length + 2);
        frag.append(el("h" + level, {}, inline(line.replace(/^#+\s*/, ""))));
        i++;
      } else if (/^\s*\|/.test(line)) {
        const rows = [];
        for (; i < lines.length && /^\s*\|/.test(lines[i]); i++) rows.push(lines[i]);
        const table = el("table", { class: "values" });
        const body = el("tbody");
        rows.forEach((r, k) => {
          if (/^\s*\|?[\s:|-]+$/.test(r)) return;  // the |---|---| separator
          const cs = cells(r);
          if (k === 0 && cs.every((c) => c === "")) return;  // an empty header row
          body.append(el("tr", {}, cs.map((c) => el(k === 0 ? "th" : "td", {}, inline(c)))));
        });
        table.append(body);
        frag.append(table);
      } else if (/^\s*[-*]\s/.test(line)) {
        const list = el("ul");
        for (; i < lines.length && /^\s*[-*]\s/.test(lines[i]); i++) list.append(el("li", {}, inline(lines[i].replace(/^\s*[-*]\s/, ""))));
        frag.append(list);
      } else if (!line.trim()) {
        i++;
      } else {
        const para = [];
        for (; i < lines.length && lines[i].trim() && !/^(```|#{1,6}\s|\s*\||\s*[-*]\s)/.test(lines[i]); i++) para.push(lines[i].trim());
        frag.append(el("p", {}, inline(para.join(" "))));
      }
    }
    return frag;
  }

  function showCard(m) {
    const panel = $("model-card-panel");
    if (!m.card) { setShown(panel, false); $("model-card-body").replaceChildren(); return; }
    $("model-card-title").textContent = "Model card: " + m.name;
    $("model-card-body").replaceChildren(renderMarkdown(m.card));
    setShown(panel, true);
  }

  async function loadModels() {
    try {
      const r = await fetch("/api/models");
      if (!r.ok) throw await errorMessage(r);
      const body = await r.json();
      state.models = body.models;
      state.maxMB = body.max_upload_mb;
      $("max-mb").textContent = String(body.max_upload_mb);
      const sel = $("model-select");
      sel.replaceChildren(...body.models.map((m) => el("option", { value: m.id, text: m.name })));
      sel.disabled = body.models.length === 0;
      if (body.models.length === 0) sel.append(el("option", { text: "No models available" }));
      if (body.demo_notice) { $("demo-notice").textContent = body.demo_notice; $("demo-notice").hidden = false; }
      if (body.problems && body.problems.length) {
        const box = $("model-problems");
        box.replaceChildren(el("strong", { text: "Model folders that could not be used:" }),
          el("ul", {}, body.problems.map((p) => el("li", { text: p.folder + ": " + p.error }))));
        box.hidden = false;
      }
      showModelInfo();
    } catch (e) {
      showError("Could not list the models. " + failureText(e));
    }
  }

  // -- examples --------------------------------------------------------------------------------------
  async function loadExamples() {
    const list = $("examples");
    try {
      const r = await fetch("/api/examples");
      if (!r.ok) throw await errorMessage(r);
      const body = await r.json();
      for (const ex of body.examples) {
        const btn = el("button", { type: "button", class: "example", "data-id": ex.id, title: ex.description }, [
          el("img", { src: ex.url, alt: "", loading: "lazy" }), el("span", { text: ex.title })]);
        btn.addEventListener("click", () => useExample(ex));
        list.append(el("li", {}, [btn]));
      }
    } catch (e) {
      list.append(el("li", { class: "muted", text: "Examples unavailable." }));
    }
  }

  async function useExample(ex) {
    try {
      const r = await fetch(ex.url);
      if (!r.ok) throw await errorMessage(r);
      const blob = await r.blob();
      chooseFile(new File([blob], ex.filename, { type: blob.type }));
    } catch (e) {
      showError("Could not load the example. " + failureText(e));
    }
  }

  // -- upload and prediction -------------------------------------------------------------------------
  // Nothing of an earlier result stays on the page once a new image is chosen or a request fails: the
  // photo, every overlay (attention, mask, landmark markers), the findings, the downloads and the timing.
  function clearResults(message) {
    state.result = null;
    $("results").replaceChildren(el("p", { class: "muted", text: "Results appear here." }));
    for (const id of ["layer-image", "layer-attention", "layer-mask"]) {
      $(id).removeAttribute("src");
    }
    for (const id of ["layer-attention", "layer-mask", "layer-points"]) setShown($(id), false);
    $("layer-points").replaceChildren();
    setShown($("stage"), false);
    $("placeholder").textContent = message || "No image yet";
    setShown($("placeholder"), true);
    $("viewer").classList.add("empty");
    for (const id of ["layer-controls", "downloads"]) setShown($(id), false);
    $("timing").textContent = "";
  }

  function rejectFile(message) {
    if (state.busy) state.again = true;  // the request in flight is for the previous file: drop its result
    state.file = null;
    state.fileName = "";
    $("run-button").disabled = true;
    clearResults("No result");
    setStatus("No result.");
    showError(message);
  }

  function chooseFile(file) {
    showError("");
    if (!file) return;
    if (file.size > state.maxMB * 1e6) {
      rejectFile("The file " + file.name + " is too large (" + (file.size / 1e6).toFixed(1) + " MB); the limit is " + state.maxMB + " MB.");
      return;
    }
    if (file.size === 0) { rejectFile("The file " + file.name + " is empty."); return; }
    state.file = file;
    state.fileName = file.name;
    predict();
  }

  async function predict() {
    const m = currentModel();
    if (!state.file || !m) return;
    if (state.busy) { state.again = true; return; }  // a new file or model while one runs: run it next
    state.again = false;
    showError("");
    clearResults("");
    setBusy(true);
    setStatus("Analysing " + state.fileName + " with " + m.name + "…");
    const form = new FormData();
    form.append("file", state.file, state.fileName);
    form.append("model", m.id);
    form.append("attention", $("want-attention").checked ? "true" : "false");
    form.append("overlay", "false");
    if (m.task === "forecasting") form.append("days", $("days-input").value);
    const t0 = performance.now();
    try {
      const r = await fetch("/api/predict", { method: "POST", body: form });
      if (r.status === 503) loadModels();  // a model that failed to load is now listed under the problems
      if (!r.ok) throw await errorMessage(r);
      const result = await r.json();
      if (state.again) return;  // superseded: the newer request runs next (see finally)
      state.result = result;
      render(result);
      setStatus("Done: " + result.image.filename + " (" + result.image.format + ", " + result.image.width + "×" + result.image.height + ")");
      $("timing").textContent = "Analysed in " + ((performance.now() - t0) / 1000).toFixed(2) + " s (model " + (result.timing_ms.model / 1000).toFixed(2) + " s).";
    } catch (e) {
      if (state.again) return;
      clearResults("No result");
      showError(failureText(e));
      setStatus("No result for " + state.fileName + ".");
    } finally {
      setBusy(false);
      if (state.again) predict();
    }
  }

  // -- rendering -------------------------------------------------------------------------------------
  function renderBars(result) {
    const multilabel = result.model.task_kind === "multilabel" || result.model.task_kind === "visionfm13";
    const wrap = el("div", {});
    const top = result.classes[0];
    const positives = result.classes.filter((c) => c.positive).map((c) => c.name);
    const headline = multilabel
      ? (positives.length ? "Findings: " + positives.join(", ") : "No finding above threshold")
      : "Most likely: " + top.name;
    wrap.append(el("p", { class: "headline", id: "headline", text: headline }));
    const list = el("ul", { id: "class-bars", class: "bars", "aria-label": multilabel ? "Probability per finding" : "Class probabilities" });
    for (const c of result.classes) {
      const fill = el("span", { class: "bar-fill" + (c.positive ? " positive" : "") });
      fill.style.width = Math.max(0.5, c.probability * 100).toFixed(1) + "%";
      list.append(el("li", { class: "bar-row", "data-class": c.name }, [
        el("span", { class: "bar-name", text: c.name + (multilabel && c.positive ? " ✓" : "") }),
        el("span", { class: "bar-track" }, [fill]),
        el("span", { class: "bar-value", text: pct(c.probability) }),
      ]));
    }
    wrap.append(list);
    if (multilabel) wrap.append(el("p", { class: "muted small", text: "Each finding is scored independently; ✓ = above the model's threshold." }));
    return wrap;
  }

  function renderValues(result) {
    const table = el("table", { class: "values", id: "values-table" }, [
      el("thead", {}, [el("tr", {}, [el("th", { text: "Measure" }), el("th", { text: "Value" }), el("th", { text: "Unit" })])])]);
    const body = el("tbody");
    for (const v of result.values) {
      body.append(el("tr", {}, [el("td", { text: v.name }), el("td", { class: "num", text: fmt(v.value) }), el("td", { text: v.unit || "" })]));
    }
    table.append(body);
    return table;
  }

  function renderSegmentation(result) {
    const list = el("ul", { class: "legend", id: "seg-legend" });
    for (const c of result.segmentation) {
      const sw = el("span", { class: "swatch" });
      sw.style.background = c.colour;
      list.append(el("li", {}, [sw, el("span", { text: c.name }), el("span", { class: "num", text: pct(c.fraction) + " of image" })]));
    }
    return list;
  }

  function renderLandmarks(result) {
    const list = el("ul", { class: "legend", id: "landmark-list" });
    for (const p of result.landmarks) {
      const sw = el("span", { class: "swatch round" });
      sw.style.background = p.colour;
      list.append(el("li", {}, [sw, el("span", { text: p.name }), el("span", { class: "num", text: "x " + p.x.toFixed(0) + ", y " + p.y.toFixed(0) })]));
    }
    return list;
  }

  // Landmark markers in original image pixels (the SVG's viewBox), each a ring, a cross in the landmark's
  // colour and its name beside it (left of the marker near the right edge).
  function drawPoints(result) {
    const svg = $("layer-points");
    const NS = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const w = result.image.width, h = result.image.height;
    svg.setAttribute("viewBox", "0 0 " + w + " " + h);
    svg.setAttribute("preserveAspectRatio", "none");
    const r = Math.max(w, h) / 60;
    for (const p of result.landmarks || []) {
      if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) continue;
      const g = document.createElementNS(NS, "g");
      g.setAttribute("class", "marker");
      g.setAttribute("data-name", p.name);
      const mk = (name, attrs, text) => {
        const n = document.createElementNS(NS, name);
        for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
        if (text !== undefined) n.textContent = text;
        g.append(n);
        return n;
      };
      mk("circle", { cx: p.x, cy: p.y, r: r, fill: "none", stroke: "#fff", "stroke-width": r / 4 });
      mk("line", { x1: p.x - r, y1: p.y, x2: p.x + r, y2: p.y, stroke: p.colour, "stroke-width": r / 4 });
      mk("line", { x1: p.x, y1: p.y - r, x2: p.x, y2: p.y + r, stroke: p.colour, "stroke-width": r / 4 });
      const right = p.x < w * 0.75;
      mk("text", { x: right ? p.x + 1.5 * r : p.x - 1.5 * r, y: p.y + 0.45 * r, "text-anchor": right ? "start" : "end",
        "font-size": 1.4 * r, "stroke-width": r / 5, class: "marker-label" }, p.name);
      mk("title", {}, p.name + " (x " + p.x.toFixed(0) + ", y " + p.y.toFixed(0) + ")");
      svg.append(g);
    }
  }

  function render(result) {
    const res = $("results");
    res.replaceChildren();
    if (result.model.demo) res.append(el("p", { class: "tag-demo", text: "Demo model: these numbers are meaningless." }));
    if (result.classes) res.append(renderBars(result));
    if (result.values) res.append(renderValues(result));
    if (result.segmentation) res.append(el("p", { class: "headline", text: "Segmented areas" }), renderSegmentation(result));
    if (result.landmarks) res.append(el("p", { class: "headline", text: "Landmarks (image pixels)" }), renderLandmarks(result));
    res.append(el("p", { class: "muted small", text: result.notice }));

    setShown($("placeholder"), false);
    $("viewer").classList.remove("empty");
    setShown($("stage"), true);
    $("layer-image").src = result.layers.image;
    const hasMask = !!result.layers.mask, hasAtt = !!result.layers.attention, hasPts = !!(result.landmarks && result.landmarks.length);
    if (hasMask) $("layer-mask").src = result.layers.mask;
    if (hasAtt) $("layer-attention").src = result.layers.attention;
    drawPoints(result);
    $("ctl-mask").hidden = !hasMask;
    $("ctl-attention").hidden = !hasAtt;
    $("ctl-points").hidden = !hasPts;
    // the task's own overlay is shown by default; the attention map is shown when there is no other overlay
    $("show-attention").checked = hasAtt && !hasMask && !hasPts;
    setShown($("layer-controls"), hasMask || hasAtt || hasPts);
    setShown($("downloads"), true);
    updateLayers();
  }

  function updateLayers() {
    const r = state.result;
    if (!r) return;
    const att = $("layer-attention"), mask = $("layer-mask"), pts = $("layer-points");
    setShown(att, !!(r.layers.attention && $("show-attention").checked));
    att.style.opacity = String($("opacity-attention").value / 100);
    setShown(mask, !!(r.layers.mask && $("show-mask").checked));
    mask.style.opacity = String($("opacity-mask").value / 100);
    setShown(pts, !!(r.landmarks && r.landmarks.length && $("show-points").checked));
  }

  // -- downloads -------------------------------------------------------------------------------------
  function stem() {
    const name = (state.result && state.result.image.filename) || "image";
    return name.replace(/\.[^.]+$/, "").replace(/[^A-Za-z0-9_.-]+/g, "_");
  }

  function save(href, filename) {
    const a = el("a", { href: href, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
  }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const im = new Image();
      im.onload = () => resolve(im);
      im.onerror = () => reject(new Error("could not draw a layer"));
      im.src = src;
    });
  }

  async function downloadPng() {
    const r = state.result;
    try {
      const base = await loadImage(r.layers.image);
      const canvas = el("canvas");
      canvas.width = base.naturalWidth;
      canvas.height = base.naturalHeight;
      const ctx = canvas.getContext("2d");
      ctx.drawImage(base, 0, 0);
      if (isShown($("layer-attention"))) {
        ctx.globalAlpha = $("opacity-attention").value / 100;
        ctx.drawImage(await loadImage(r.layers.attention), 0, 0, canvas.width, canvas.height);
      }
      if (isShown($("layer-mask"))) {
        ctx.globalAlpha = $("opacity-mask").value / 100;
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(await loadImage(r.layers.mask), 0, 0, canvas.width, canvas.height);
      }
      ctx.globalAlpha = 1;
      if (isShown($("layer-points"))) {
        const sx = canvas.width / r.image.width, sy = canvas.height / r.image.height;
        const rad = Math.max(4, Math.max(canvas.width, canvas.height) / 60);
        ctx.font = "600 " + Math.round(1.4 * rad) + "px system-ui, sans-serif";
        ctx.textBaseline = "middle";
        for (const p of r.landmarks) {
          if (!Number.isFinite(p.x) || !Number.isFinite(p.y)) continue;
          const x = p.x * sx, y = p.y * sy;
          ctx.strokeStyle = "#fff"; ctx.lineWidth = Math.max(1, rad / 4);
          ctx.beginPath(); ctx.arc(x, y, rad, 0, 2 * Math.PI); ctx.stroke();
          ctx.strokeStyle = p.colour; ctx.lineWidth = Math.max(2, rad / 4);
          ctx.beginPath();
          ctx.moveTo(x - rad, y); ctx.lineTo(x + rad, y);
          ctx.moveTo(x, y - rad); ctx.lineTo(x, y + rad);
          ctx.stroke();
          const right = x < canvas.width * 0.75;
          ctx.textAlign = right ? "left" : "right";
          const tx = right ? x + 1.5 * rad : x - 1.5 * rad;
          ctx.lineWidth = Math.max(2, rad / 5); ctx.strokeStyle = "rgba(0, 0, 0, 0.8)"; ctx.fillStyle = "#fff";
          ctx.strokeText(p.name, tx, y); ctx.fillText(p.name, tx, y);
        }
      }
      save(canvas.toDataURL("image/png"), stem() + "_" + r.model.id + "_overlay.png");
    } catch (e) {
      showError("Could not create the PNG: " + e.message);
    }
  }

  function downloadJson() {
    const r = state.result;
    const { layers, overlay_png, ...rest } = r;
    const blob = new Blob([JSON.stringify(rest, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    save(url, stem() + "_" + r.model.id + ".json");
    setTimeout(() => URL.revokeObjectURL(url), 5000);
  }

  // -- wiring ----------------------------------------------------------------------------------------
  function wire() {
    const drop = $("drop-zone"), input = $("file-input");
    drop.addEventListener("click", (e) => { if (e.target !== input) input.click(); });
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
    input.addEventListener("change", () => { if (input.files.length) chooseFile(input.files[0]); input.value = ""; });
    for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
    for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("dragging"); });
    drop.addEventListener("drop", (e) => {
      const files = e.dataTransfer && e.dataTransfer.files;
      if (!files || !files.length) { showError("Nothing to analyse: drop an image file."); return; }
      chooseFile(files[0]);
      if (files.length > 1 && state.file) showError("Several files were dropped; analysing the first one only.");
    });
    // a file dropped outside the drop zone must not make the browser navigate away
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("model-select").addEventListener("change", () => { showModelInfo(); if (state.file) predict(); });
    $("run-button").addEventListener("click", predict);
    for (const id of ["show-attention", "show-mask", "show-points", "opacity-attention", "opacity-mask"]) {
      $(id).addEventListener("input", updateLayers);
    }
    $("download-png").addEventListener("click", downloadPng);
    $("download-json").addEventListener("click", downloadJson);
  }

  wire();
  loadModels();
  loadExamples();
})();
