// VisionFM local web app: plain JavaScript, no build step, talks only to this server's JSON API.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { models: [], maxMB: 25, file: null, fileName: "", result: null, busy: false };

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

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function setBusy(on) {
    state.busy = on;
    $("busy").hidden = !on;
    $("run-button").disabled = on || !state.file;
    $("model-select").disabled = on || state.models.length === 0;
  }

  async function errorMessage(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) {
      detail = response.statusText;
    }
    const prefix = { 400: "The file could not be read", 404: "Not found", 413: "Too large",
      415: "Not a supported image", 422: "Invalid request", 500: "The analysis failed",
      503: "Server busy" }[response.status] || ("Error " + response.status);
    return prefix + ": " + detail;
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
  }

  async function loadModels() {
    try {
      const r = await fetch("/api/models");
      if (!r.ok) throw new Error(await errorMessage(r));
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
      showError("Could not list the models: " + e.message);
    }
  }

  // -- examples --------------------------------------------------------------------------------------
  async function loadExamples() {
    const list = $("examples");
    try {
      const r = await fetch("/api/examples");
      if (!r.ok) throw new Error(await errorMessage(r));
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
      if (!r.ok) throw new Error(await errorMessage(r));
      const blob = await r.blob();
      chooseFile(new File([blob], ex.filename, { type: blob.type }));
    } catch (e) {
      showError("Could not load the example: " + e.message);
    }
  }

  // -- upload and prediction -------------------------------------------------------------------------
  function chooseFile(file) {
    showError("");
    if (!file) return;
    if (file.size > state.maxMB * 1e6) {
      showError("Too large: " + file.name + " is " + (file.size / 1e6).toFixed(1) + " MB; the limit is " + state.maxMB + " MB.");
      return;
    }
    if (file.size === 0) { showError("The file " + file.name + " is empty."); return; }
    state.file = file;
    state.fileName = file.name;
    predict();
  }

  async function predict() {
    const m = currentModel();
    if (!state.file || !m || state.busy) return;
    showError("");
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
      if (!r.ok) throw new Error(await errorMessage(r));
      const result = await r.json();
      state.result = result;
      render(result);
      setStatus("Done: " + result.image.filename + " (" + result.image.format + ", " + result.image.width + "×" + result.image.height + ")");
      $("timing").textContent = "Analysed in " + ((performance.now() - t0) / 1000).toFixed(2) + " s (model " + (result.timing_ms.model / 1000).toFixed(2) + " s).";
    } catch (e) {
      showError(e.message || String(e));
      setStatus("No result.");
    } finally {
      setBusy(false);
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

  function drawPoints(result) {
    const svg = $("layer-points");
    const NS = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    svg.setAttribute("viewBox", "0 0 " + result.image.width + " " + result.image.height);
    svg.setAttribute("preserveAspectRatio", "none");
    const r = Math.max(result.image.width, result.image.height) / 60;
    for (const p of result.landmarks || []) {
      const g = document.createElementNS(NS, "g");
      const mk = (name, attrs) => { const n = document.createElementNS(NS, name); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); g.append(n); };
      mk("circle", { cx: p.x, cy: p.y, r: r, fill: "none", stroke: "#fff", "stroke-width": r / 4 });
      mk("line", { x1: p.x - r, y1: p.y, x2: p.x + r, y2: p.y, stroke: p.colour, "stroke-width": r / 4 });
      mk("line", { x1: p.x, y1: p.y - r, x2: p.x, y2: p.y + r, stroke: p.colour, "stroke-width": r / 4 });
      const t = document.createElementNS(NS, "title"); t.textContent = p.name; g.append(t);
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

    $("placeholder").hidden = true;
    $("viewer").classList.remove("empty");
    $("stage").hidden = false;
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
    $("layer-controls").hidden = !(hasMask || hasAtt || hasPts);
    $("downloads").hidden = false;
    updateLayers();
  }

  function updateLayers() {
    const r = state.result;
    if (!r) return;
    const att = $("layer-attention"), mask = $("layer-mask"), pts = $("layer-points");
    att.hidden = !(r.layers.attention && $("show-attention").checked);
    att.style.opacity = String($("opacity-attention").value / 100);
    mask.hidden = !(r.layers.mask && $("show-mask").checked);
    mask.style.opacity = String($("opacity-mask").value / 100);
    pts.hidden = !(r.landmarks && r.landmarks.length && $("show-points").checked);
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
      if (!$("layer-attention").hidden) {
        ctx.globalAlpha = $("opacity-attention").value / 100;
        ctx.drawImage(await loadImage(r.layers.attention), 0, 0, canvas.width, canvas.height);
      }
      if (!$("layer-mask").hidden) {
        ctx.globalAlpha = $("opacity-mask").value / 100;
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(await loadImage(r.layers.mask), 0, 0, canvas.width, canvas.height);
      }
      ctx.globalAlpha = 1;
      if (!$("layer-points").hidden) {
        const sx = canvas.width / r.image.width, sy = canvas.height / r.image.height;
        const rad = Math.max(4, Math.min(canvas.width, canvas.height) / 60);
        for (const p of r.landmarks) {
          ctx.strokeStyle = p.colour; ctx.lineWidth = Math.max(2, rad / 3);
          ctx.beginPath();
          ctx.moveTo(p.x * sx - rad, p.y * sy); ctx.lineTo(p.x * sx + rad, p.y * sy);
          ctx.moveTo(p.x * sx, p.y * sy - rad); ctx.lineTo(p.x * sx, p.y * sy + rad);
          ctx.stroke();
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
      if (files.length > 1) showError("Several files were dropped; analysing the first one only.");
      chooseFile(files[0]);
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
