// glassbox playground. Plain JavaScript, no dependencies, no build step: it talks to the
// service's JSON API on the same origin and draws the answers with HTML and SVG.
//
// The page reads /openapi.json to learn which explanation routes and parameters this server
// has, so a method that is not on the server yet is shown as unavailable, and a parameter is
// only sent when the route takes it (every route refuses unknown fields).
//
// Long work runs as a job (POST /jobs) when the server has the jobs API: LIME, SHAP, the head
// sweep and the comparison always do, whatever their size, so that every run of them shows
// the same progress bar (model rows done of rows submitted, from GET /jobs/{id}/events) and
// Cancel really stops the model work (DELETE /jobs/{id}). The events are read with fetch and a
// stream reader rather than EventSource, because EventSource cannot send the API key. The
// other methods answer in one request.
//
// Hooks for the end-to-end test: <body data-ready="1"> once /info and /openapi.json have been
// read; <body data-state="busy|done|error"> and data-method for the last run; the progress bar
// carries data-job (the job id), data-state and data-events (progress events received).
"use strict";

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOP_FEATURES = 12;

  const METHODS = {
    lime: { route: "/explain/lime", kind: "attribution", title: "LIME word weights" },
    shap: { route: "/explain/shap", kind: "attribution", title: "SHAP values" },
    occlusion: { route: "/explain/occlusion", kind: "attribution", title: "Occlusion: probability drop when a word is removed" },
    gradients: { route: "/explain/gradients", kind: "attribution", title: "Gradient attributions" },
    attention: { route: "/explain/attention", kind: "attention", title: "Attention" },
    heads: { route: "/explain/heads", kind: "heads", title: "Head importance" },
    counterfactual: { route: "/predict", kind: "counterfactual", title: "Counterfactuals" },
    compare: { route: "/explain/compare", kind: "compare", title: "Methods compared" },
  };
  // Methods run as jobs, by their name in POST /jobs.
  const JOB_METHODS = { lime: "lime", shap: "shap", heads: "heads", compare: "compare" };

  // The comparison's methods (the server's list comes from /openapi.json when it has one).
  const COMPARE_METHODS = ["lime", "shap", "occlusion", "integrated_gradients", "saliency", "grad_x_input", "attention_rollout", "random"];
  const COMPARE_CHECKED = ["lime", "shap", "occlusion", "integrated_gradients", "attention_rollout", "random"];
  const COMPARE_NAMES = {
    lime: "LIME",
    shap: "SHAP",
    occlusion: "occlusion",
    integrated_gradients: "integrated gradients",
    saliency: "saliency",
    grad_x_input: "gradient × input",
    attention_rollout: "attention rollout",
    random: "random (baseline)",
  };

  const NOTES = {
    lime: "Perturbs the text by removing words and fits a weighted linear surrogate; weights are in probability units.",
    shap: "Kernel SHAP: Shapley values of the words (exact for short texts); they sum to the probability minus the base value.",
    occlusion: "Removes each word (or window of words) and reports the drop of the target's probability.",
    gradients: "Gradients of the target's probability with respect to the word embeddings, summed per word.",
    attention: "Post-softmax attention of one head, the mean over heads, or the rollout through every layer.",
    heads: "Switches each attention head off in turn and reports the drop of the target's probability.",
    counterfactual: "Evaluates edited variants of the text and marks those whose predicted label flips.",
    compare: "Runs several methods on the same words, scores each with ERASER comprehensiveness and sufficiency, and ranks them by how faithful they are.",
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    info: null,
    openapi: null,
    text: "",
    body: null,
    method: "lime",
    labelsShown: [],
    controller: null,
    timer: null,
    attentionSeq: 0,
    compareLabel: 0,
  };

  // ---------------------------------------------------------------- helpers

  class ApiFailure extends Error {
    constructor(message, code, status, details) {
      super(message);
      this.code = code;
      this.status = status;
      this.details = details || {};
    }
  }

  /** The API's error body ({"error": {code, message, details}}) as an ApiFailure. */
  function failureOf(parsed, status, fallback) {
    const err = parsed && parsed.error;
    if (err && typeof err.message === "string") return new ApiFailure(err.message, err.code || "error", status, err.details);
    return new ApiFailure(fallback, "http", status);
  }

  function authHeaders(extra) {
    const headers = { ...extra };
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  /** POSTs JSON (or GETs when body is undefined); returns the parsed body or throws ApiFailure
   * with the API's own message. */
  async function api(path, body, signal) {
    const init = { signal, headers: authHeaders({ Accept: "application/json" }) };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error && error.name === "AbortError") throw error;
      throw new ApiFailure(`Could not reach the service (${error && error.message ? error.message : error}).`, "network", 0);
    }
    const raw = await response.text();
    let parsed = null;
    try {
      parsed = raw ? JSON.parse(raw) : null;
    } catch (_) {
      parsed = null;
    }
    if (!response.ok) throw failureOf(parsed, response.status, `${response.status} ${response.statusText}`.trim());
    if (parsed === null) throw new ApiFailure("The service answered with a body that is not JSON.", "bad_body", response.status);
    return parsed;
  }

  /** The API key of this tab, when the server asks for one (auth.api_keys). */
  function apiKey() {
    try {
      return sessionStorage.getItem("glassbox.apiKey") || "";
    } catch (_) {
      return "";
    }
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    for (const c of children) if (c) node.append(c);
    return node;
  }

  function fmt(v, digits = 3) {
    if (typeof v !== "number" || !isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return v.toFixed(digits);
  }

  function signed(v, digits = 3) {
    return (v > 0 ? "+" : "") + fmt(v, digits);
  }

  function truncateLabel(s, n = 18) {
    s = String(s);
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  const isNum = (v) => typeof v === "number" && isFinite(v);

  // Diverging scale (ColorBrewer RdBu ends): blue for negative, red for positive.
  const NEG = [33, 102, 172];
  const POS = [178, 24, 43];
  function diverging(value, max) {
    const t = max > 0 ? Math.max(-1, Math.min(1, value / max)) : 0;
    const c = t < 0 ? NEG : POS;
    const a = Math.abs(t);
    const mix = (i) => Math.round(255 + (c[i] - 255) * a);
    return { color: `rgb(${mix(0)}, ${mix(1)}, ${mix(2)})`, dark: a > 0.6 };
  }

  // Sequential scale for attention: white to dark blue.
  function sequential(value, max) {
    const t = max > 0 ? Math.max(0, Math.min(1, value / max)) : 0;
    const c = [8, 48, 107];
    const mix = (i) => Math.round(255 + (c[i] - 255) * t);
    return `rgb(${mix(0)}, ${mix(1)}, ${mix(2)})`;
  }

  /** Maps UTF-8 byte offsets of `text` to UTF-16 indices (for spans that only have bytes). */
  function byteToUtf16(text) {
    const map = [0];
    let u16 = 0;
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      const bytes = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
      u16 += ch.length;
      for (let i = 1; i < bytes; i++) map.push(u16 - ch.length);
      map.push(u16);
    }
    return (b) => (b >= 0 && b < map.length ? map[b] : text.length);
  }

  // ---------------------------------------------------------------- OpenAPI introspection

  function resolveRef(ref) {
    if (typeof ref !== "string" || !ref.startsWith("#/")) return null;
    let node = state.openapi;
    for (const part of ref.slice(2).split("/")) {
      if (!node) return null;
      node = node[part.replace(/~1/g, "/").replace(/~0/g, "~")];
    }
    return node || null;
  }

  function collectProps(schema, out, depth) {
    if (!schema || depth > 8) return out;
    if (schema.$ref) return collectProps(resolveRef(schema.$ref), out, depth + 1);
    if (schema.properties) for (const key of Object.keys(schema.properties)) out.set(key, schema.properties[key]);
    for (const k of ["allOf", "oneOf", "anyOf"]) {
      if (Array.isArray(schema[k])) for (const s of schema[k]) collectProps(s, out, depth + 1);
    }
    return out;
  }

  /** The route's request properties (name -> schema), or null when unknown. */
  function routeProps(route) {
    if (!state.openapi || !state.openapi.paths) return null;
    const op = state.openapi.paths[route] && state.openapi.paths[route].post;
    if (!op) return null;
    const content = op.requestBody && op.requestBody.content;
    const schema = content && content["application/json"] && content["application/json"].schema;
    return collectProps(schema, new Map(), 0);
  }

  /** Whether the server has the route; true when the document could not be read. */
  function hasRoute(route) {
    if (!state.openapi || !state.openapi.paths) return true;
    return Boolean(state.openapi.paths[route] && state.openapi.paths[route].post);
  }

  /** Whether the route takes the parameter; true when the document says nothing either way. */
  function takes(route, name) {
    const props = routeProps(route);
    if (!props || props.size === 0) return true;
    return props.has(name);
  }

  // ---------------------------------------------------------------- status and errors

  function showError(error) {
    const box = $("error");
    box.replaceChildren();
    if (!error) {
      box.hidden = true;
      return;
    }
    const message = error.message || String(error);
    box.append(el("strong", { text: "Error: " }), document.createTextNode(message));
    if (error.code && error.code !== "network") {
      box.append(" ", el("code", { text: `(${error.code}${error.status ? `, HTTP ${error.status}` : ""})` }));
    }
    box.hidden = false;
    if (error.status === 401) {
      box.append(" ", el("span", { text: "Enter an API key under “API key” at the top." }));
      $("settings").open = true;
    }
  }

  function startBusy(label) {
    stopBusy();
    const started = performance.now();
    const status = $("status");
    const spinner = el("span", { class: "spinner", "aria-hidden": "true" });
    const text = el("span", { text: `${label}…` });
    status.replaceChildren(spinner, text);
    state.timer = setInterval(() => {
      const s = (performance.now() - started) / 1000;
      text.textContent = `${label}… ${s.toFixed(1)} s`;
    }, 100);
    $("run").disabled = true;
    $("cancel").hidden = false;
    document.body.dataset.state = "busy";
    return started;
  }

  function stopBusy(message) {
    if (state.timer) clearInterval(state.timer);
    state.timer = null;
    // Cancel disappears: a keyboard user who pressed it lands back on the run button.
    const refocus = document.activeElement === $("cancel");
    $("run").disabled = false;
    $("cancel").hidden = true;
    if (refocus) $("run").focus();
    if (message !== undefined) $("status").replaceChildren(document.createTextNode(message));
  }

  // ---------------------------------------------------------------- jobs and progress

  /** Whether this server runs jobs (POST /jobs in its OpenAPI document). */
  function hasJobs() {
    return Boolean(state.openapi && state.openapi.paths && state.openapi.paths["/jobs"] && state.openapi.paths["/jobs"].post);
  }

  function resetProgress() {
    const bar = $("progress");
    bar.classList.remove("indeterminate");
    for (const a of ["aria-valuenow", "aria-valuemax", "aria-valuetext", "data-job", "data-state"]) bar.removeAttribute(a);
    bar.dataset.events = "0";
    $("progress-fill").style.width = "0";
    $("progress-text").textContent = "";
    $("progress-wrap").hidden = true;
  }

  /** Draws a job's progress: rows done of rows submitted so far (the total can still grow). */
  function showProgress(jobState, counts) {
    const bar = $("progress");
    const done = isNum(counts && counts.rows_done) ? counts.rows_done : 0;
    const total = isNum(counts && counts.rows_total) ? counts.rows_total : 0;
    bar.dataset.state = jobState;
    bar.dataset.events = String(Number(bar.dataset.events || 0) + 1);
    bar.setAttribute("aria-valuemin", "0");
    if (total > 0) {
      bar.classList.remove("indeterminate");
      bar.setAttribute("aria-valuemax", String(total));
      bar.setAttribute("aria-valuenow", String(Math.min(done, total)));
      bar.setAttribute("aria-valuetext", `${done} of ${total} model rows, ${jobState}`);
      $("progress-fill").style.width = `${((Math.min(done, total) / total) * 100).toFixed(1)}%`;
    } else {
      // Nothing submitted yet (queued, or the text itself being encoded): no value to show.
      bar.classList.toggle("indeterminate", !["done", "failed", "cancelled"].includes(jobState));
      bar.removeAttribute("aria-valuenow");
      bar.removeAttribute("aria-valuemax");
      bar.setAttribute("aria-valuetext", jobState);
      $("progress-fill").style.width = "0";
    }
    $("progress-text").textContent = total > 0 ? `${jobState}: ${done} / ${total} model rows` : `${jobState}…`;
    $("progress-wrap").hidden = false;
  }

  /** Reads a server-sent event stream, handing each event to `onEvent(name, data)` until it
   * returns something other than undefined (returned) or the stream ends (undefined). */
  async function readEvents(stream, onEvent) {
    const reader = stream.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let cr = ""; // a chunk's last "\r" waits for the next one, which may start with "\n"
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return undefined;
        const chunk = cr + decoder.decode(value, { stream: true });
        cr = chunk.endsWith("\r") ? "\r" : "";
        buffer += (cr ? chunk.slice(0, -1) : chunk).replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line === "" || line.startsWith(":")) continue; // comments keep the stream alive
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let v = colon < 0 ? "" : line.slice(colon + 1);
            if (v.startsWith(" ")) v = v.slice(1);
            if (field === "event") name = v;
            else if (field === "data") data.push(v);
          }
          if (data.length === 0) continue;
          const out = onEvent(name, data.join("\n"));
          if (out !== undefined) return out;
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function parseJson(text, what) {
    try {
      return JSON.parse(text);
    } catch (_) {
      throw new ApiFailure(`The service sent ${what} that is not JSON.`, "bad_body", 0);
    }
  }

  /** Runs `request` as a job of `jobMethod` and follows its events; resolves with the route's
   * body or throws the route's error. Aborting `signal` cancels the job (DELETE). */
  async function runJob(jobMethod, request, signal) {
    resetProgress();
    const created = await api("/jobs", { method: jobMethod, request }, signal);
    const id = created.id;
    const path = `/jobs/${encodeURIComponent(id)}`;
    $("progress").dataset.job = id;
    showProgress(created.state || "queued", created.progress);
    const cancel = () => {
      // keepalive: the cancellation still goes out if the page is being left.
      fetch(path, { method: "DELETE", keepalive: true, headers: authHeaders({ Accept: "application/json" }) }).catch(() => {});
    };
    signal.addEventListener("abort", cancel, { once: true });
    try {
      let final;
      const response = await fetch(`${path}/events`, { signal, headers: authHeaders({ Accept: "text/event-stream" }) });
      if (!response.ok || !response.body) {
        const raw = await response.text();
        let parsed = null;
        try {
          parsed = JSON.parse(raw);
        } catch (_) {
          parsed = null;
        }
        throw failureOf(parsed, response.status, `${response.status} ${response.statusText}`.trim());
      }
      final = await readEvents(response.body, (name, data) => {
        if (name === "progress") {
          const p = parseJson(data, "a progress event");
          showProgress(p.state, p);
          return undefined;
        }
        if (name === "result" || name === "error" || name === "cancelled") return { name, data };
        return undefined;
      });
      if (!final) {
        // The stream ended without its final event (a proxy cut it): ask for the job once.
        const view = await api(path, undefined, signal);
        showProgress(view.state, view.progress);
        if (view.state === "done") return view.result;
        if (view.state === "failed") throw failureOf({ error: view.error }, view.status, "The job failed.");
        if (view.state === "cancelled") throw new DOMException("The job was cancelled.", "AbortError");
        throw new ApiFailure(`The job's event stream ended while it was ${view.state}; its result will be at GET ${path}.`, "stream_ended", 0);
      }
      if (final.name === "result") return parseJson(final.data, "a result");
      if (final.name === "cancelled") throw new DOMException("The job was cancelled.", "AbortError");
      // The route's error body; the job view adds the HTTP status the route answered.
      let status = 0;
      try {
        const view = await api(path, undefined, signal);
        status = view.status || 0;
      } catch (_) {
        status = 0;
      }
      throw failureOf(parseJson(final.data, "an error"), status, "The job failed.");
    } finally {
      signal.removeEventListener("abort", cancel);
    }
  }

  /** Calls a method's route: as a job with progress when the server runs that method as a
   * job, else directly. */
  async function callMethod(method, request, signal) {
    const jobMethod = JOB_METHODS[method];
    if (jobMethod && hasJobs()) {
      try {
        return await runJob(jobMethod, request, signal);
      } catch (error) {
        // A server whose jobs do not know this method yet: the route directly.
        const unknownMethod = error instanceof ApiFailure && error.status === 422 && error.details && error.details.field === "method" && !$("progress").dataset.job;
        if (!unknownMethod) throw error;
        resetProgress();
      }
    }
    return api(METHODS[method].route, request, signal);
  }

  // ---------------------------------------------------------------- prediction

  function renderPrediction(prediction) {
    const section = $("prediction");
    const body = $("prediction-body");
    body.replaceChildren();
    if (!prediction) {
      section.hidden = true;
      return;
    }
    let ranked = Array.isArray(prediction.ranked) ? prediction.ranked : null;
    if (!ranked && prediction.probabilities && typeof prediction.probabilities === "object") {
      ranked = Object.entries(prediction.probabilities)
        .map(([label, probability]) => ({ label, probability }))
        .sort((a, b) => b.probability - a.probability);
    }
    body.append(el("p", {}, "Predicted label: ", el("strong", { text: prediction.label })));
    for (const { label, probability } of ranked || []) {
      const fill = el("div", { class: "fill" });
      fill.style.width = `${(Math.max(0, Math.min(1, probability)) * 100).toFixed(1)}%`;
      body.append(
        el("div", { class: label === prediction.label ? "prob best" : "prob" },
          el("span", { text: label }),
          el("div", { class: "track", role: "meter", "aria-label": `${label} probability`, "aria-valuemin": 0, "aria-valuemax": 1, "aria-valuenow": probability }, fill),
          el("span", { class: "num", text: `${(probability * 100).toFixed(1)}%` })),
      );
    }
    if (prediction.truncated) body.append(el("p", { class: "muted small", text: "The text was cut to the model's maximum length." }));
    section.hidden = false;
  }

  function labelName(index) {
    const labels = state.info && state.info.model && state.info.model.labels;
    if (typeof index === "number" && labels && labels[index] !== undefined) return labels[index];
    return String(index);
  }

  // ---------------------------------------------------------------- attributions

  function spanList(spans, toU16) {
    if (!Array.isArray(spans)) return [];
    const out = [];
    for (const s of spans) {
      if (!s) continue;
      if (isNum(s.utf16_start) && isNum(s.utf16_end)) out.push([s.utf16_start, s.utf16_end]);
      else if (isNum(s.start) && isNum(s.end)) out.push([toU16(s.start), toU16(s.end)]);
    }
    return out;
  }

  function featureSpans(body, index, toU16) {
    const f = Array.isArray(body.features) ? body.features[index] : null;
    return f ? spanList(f.spans, toU16) : [];
  }

  function tokenSpans(body, indices, toU16) {
    const tokens = Array.isArray(body.tokens) ? body.tokens : [];
    const out = [];
    for (const t of indices) {
      const tok = tokens[t];
      if (tok && !tok.special && isNum(tok.start) && isNum(tok.end) && tok.end > tok.start) out.push([toU16(tok.start), toU16(tok.end)]);
    }
    return out;
  }

  const SCORE_KEYS = ["weight", "value", "attribution", "score", "importance", "delta", "saliency"];

  /** Where a generic attribution item sits in the text. */
  function itemSpans(item, body, toU16) {
    if (Array.isArray(item.spans)) return spanList(item.spans, toU16);
    if (isNum(item.utf16_start) && isNum(item.utf16_end)) return [[item.utf16_start, item.utf16_end]];
    if (isNum(item.feature)) return featureSpans(body, item.feature, toU16);
    if (isNum(item.word) && Array.isArray(body.words)) return spanList((body.words[item.word] || {}).spans, toU16);
    if (isNum(item.token)) return tokenSpans(body, [item.token], toU16);
    if (Array.isArray(item.tokens)) return tokenSpans(body, item.tokens, toU16);
    if (isNum(item.start) && isNum(item.end)) return [[toU16(item.start), toU16(item.end)]];
    return [];
  }

  /** Per-label items from a response whose shape is not known in advance (new methods): the
   * first array of objects carrying a score, or an array of numbers aligned with `tokens`. */
  function genericLabels(body, toU16) {
    const entries = Array.isArray(body.labels) ? body.labels : Array.isArray(body.attributions) ? body.attributions : [body];
    const out = [];
    for (const entry of entries) {
      if (!entry || typeof entry !== "object") continue;
      let items = null;
      for (const value of Object.values(entry)) {
        if (!Array.isArray(value) || value.length === 0) continue;
        if (typeof value[0] === "object" && value[0] !== null) {
          const key = SCORE_KEYS.find((k) => isNum(value[0][k]));
          if (key) {
            items = value.map((it) => ({ text: it.text ?? it.word ?? it.token_text ?? "", value: it[key], spans: itemSpans(it, body, toU16), ci: ciOf(it) }));
            break;
          }
        } else if (isNum(value[0]) && Array.isArray(body.tokens) && value.length === body.tokens.length) {
          items = value.map((v, t) => ({ text: body.tokens[t].text, value: v, spans: tokenSpans(body, [t], toU16) }))
            .filter((it) => it.spans.length > 0);
          break;
        }
      }
      if (items) out.push({ label: entry.label ?? entry.index ?? (body.targets || [])[out.length], items, extra: entry });
    }
    return out;
  }

  function ciOf(item) {
    return isNum(item.ci_low) && isNum(item.ci_high) ? [item.ci_low, item.ci_high] : null;
  }

  /** The explanation as [{label, items: [{text, value, spans: [[u16start, u16end]]}]}]. */
  function attributionLabels(method, body, text) {
    const toU16 = byteToUtf16(text);
    if (method === "lime" && Array.isArray(body.labels) && body.labels.every((l) => Array.isArray(l.weights))) {
      return body.labels.map((l) => ({
        label: l.label,
        extra: l,
        items: l.weights.map((w) => ({ text: w.text, value: w.weight, ci: ciOf(w), spans: w.spans ? spanList(w.spans, toU16) : featureSpans(body, w.feature, toU16) })),
      }));
    }
    if (method === "shap" && Array.isArray(body.labels) && body.labels.every((l) => Array.isArray(l.values))) {
      return body.labels.map((l) => ({
        label: l.label,
        extra: l,
        items: l.values.map((v) => ({ text: v.text, value: v.value, spans: v.spans ? spanList(v.spans, toU16) : featureSpans(body, v.feature, toU16) })),
      }));
    }
    if (method === "occlusion" && Array.isArray(body.occlusions)) {
      const targets = Array.isArray(body.targets) && body.targets.length ? body.targets : [0];
      return targets.map((label, k) => {
        if (Array.isArray(body.features) && body.occlusions.every((o) => Array.isArray(o.features))) {
          // A word's score: the mean drop of the windows that removed it (its own drop when
          // the window is one word).
          const sum = new Array(body.features.length).fill(0);
          const count = new Array(body.features.length).fill(0);
          for (const o of body.occlusions) {
            const d = Array.isArray(o.deltas) ? o.deltas[k] : undefined;
            if (!isNum(d)) continue;
            for (const f of o.features) {
              if (f < sum.length) {
                sum[f] += d;
                count[f] += 1;
              }
            }
          }
          const items = body.features
            .map((f, i) => ({ text: f.text, value: count[i] ? sum[i] / count[i] : null, spans: spanList(f.spans, toU16) }))
            .filter((it) => it.value !== null);
          return { label, items, extra: body };
        }
        const items = body.occlusions.map((o) => ({ text: o.removed, value: (o.deltas || [])[k], spans: spanList(o.spans, toU16) }));
        return { label, items: items.filter((it) => isNum(it.value)), extra: body };
      });
    }
    if (method === "gradients" && Array.isArray(body.explanations)) {
      const words = body.granularity === "words" && Array.isArray(body.features);
      return body.explanations.map((e) => {
        const scores = Array.isArray(e.scores) ? e.scores : [];
        const items = words
          ? body.features.map((f, i) => ({ text: f.text, value: scores[i], spans: spanList(f.spans, toU16) }))
          : (body.tokens || []).map((t, i) => ({ text: t.text, value: scores[i], spans: tokenSpans(body, [i], toU16) }));
        const ig = e.integrated_gradients || {};
        return { label: e.label, extra: { ...e, delta: ig.delta }, items: items.filter((it) => isNum(it.value) && it.spans.length > 0) };
      });
    }
    return genericLabels(body, toU16);
  }

  function renderLegend(container, max, negText, posText) {
    container.replaceChildren();
    const id = `grad-${container.id}`;
    const lg = svg("linearGradient", { id, x1: "0", x2: "1", y1: "0", y2: "0" },
      svg("stop", { offset: "0%", "stop-color": diverging(-1, 1).color }),
      svg("stop", { offset: "50%", "stop-color": "rgb(255, 255, 255)" }),
      svg("stop", { offset: "100%", "stop-color": diverging(1, 1).color }));
    const bar = svg("svg", { viewBox: "0 0 120 10", preserveAspectRatio: "none", role: "img", "aria-label": `colour scale from ${signed(-max)} (${negText}) to ${signed(max)} (${posText})` },
      svg("defs", {}, lg),
      svg("rect", { x: 0, y: 0, width: 120, height: 10, fill: `url(#${id})`, stroke: "#d9dce1" }));
    container.append(
      el("span", { text: `${signed(-max)} ${negText}` }),
      bar,
      el("span", { text: `${signed(max)} ${posText}` }),
    );
  }

  /** The text with each scored span coloured; the value is in the tooltip (hover or focus). */
  function renderHighlight(container, text, items) {
    container.replaceChildren();
    const max = Math.max(1e-12, ...items.map((it) => Math.abs(it.value)));
    const pieces = [];
    for (const it of items) for (const [s, e] of it.spans) if (e > s) pieces.push({ s, e, it });
    pieces.sort((a, b) => a.s - b.s || b.e - a.e);
    let at = 0;
    for (const p of pieces) {
      if (p.s < at) continue; // overlapping spans: keep the first
      if (p.s > at) container.append(document.createTextNode(text.slice(at, p.s)));
      const { color, dark } = diverging(p.it.value, max);
      const tip = `${p.it.text}: ${signed(p.it.value, 4)}${p.it.ci ? ` (95% ${fmt(p.it.ci[0])} … ${fmt(p.it.ci[1])})` : ""}`;
      const mark = el("span", { class: dark ? "w dark" : "w", tabindex: 0, title: tip, "data-tip": tip, "data-value": p.it.value, "aria-label": tip },
        text.slice(p.s, p.e));
      mark.style.backgroundColor = color;
      container.append(mark);
      at = p.e;
    }
    if (at < text.length) container.append(document.createTextNode(text.slice(at)));
    return max;
  }

  /** Horizontal diverging bars of the largest |value| items, around a zero line. */
  function renderBars(container, items) {
    container.replaceChildren();
    const top = items.slice().sort((a, b) => Math.abs(b.value) - Math.abs(a.value)).slice(0, TOP_FEATURES);
    if (top.length === 0) {
      container.append(el("p", { class: "muted", text: "No features to show." }));
      return;
    }
    const max = Math.max(1e-12, ...top.map((it) => Math.abs(it.value)));
    const rowH = 24;
    const labelW = 130;
    const valueW = 70;
    const plotW = 360;
    const width = labelW + plotW + valueW;
    const height = top.length * rowH + 8;
    const mid = labelW + plotW / 2;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `Top ${top.length} features by absolute value` });
    chart.append(svg("line", { x1: mid, x2: mid, y1: 0, y2: height, stroke: "#9aa1ab" }));
    top.forEach((it, i) => {
      const y = 4 + i * rowH;
      const w = (Math.abs(it.value) / max) * (plotW / 2 - 4);
      const x = it.value >= 0 ? mid : mid - w;
      const { color } = diverging(it.value, max);
      const rect = svg("rect", { class: "bar", x, y: y + 3, width: Math.max(w, 1), height: rowH - 8, fill: color, tabindex: 0, "aria-label": `${it.text}: ${signed(it.value, 4)}` },
        svg("title", { text: `${it.text}: ${signed(it.value, 4)}` }));
      chart.append(rect);
      chart.append(svg("text", { x: labelW - 6, y: y + rowH / 2 + 4, "text-anchor": "end", text: truncateLabel(it.text) }));
      chart.append(svg("text", { class: "axis-label", x: width - 4, y: y + rowH / 2 + 4, "text-anchor": "end", text: signed(it.value) }));
    });
    container.append(chart);
  }

  function renderAttribution(method, body, text) {
    const labels = attributionLabels(method, body, text);
    state.labelsShown = labels;
    const pick = $("label-pick");
    pick.replaceChildren();
    labels.forEach((l, i) => pick.append(el("option", { value: i, text: labelName(l.label) })));
    $("label-pick-wrap").hidden = labels.length < 2;
    $("attribution-title").textContent = METHODS[method] ? METHODS[method].title : "Word attributions";
    $("view-attribution").hidden = false;
    if (labels.length === 0) {
      $("highlight").replaceChildren(document.createTextNode(text));
      $("bars").replaceChildren(el("p", { class: "muted", text: "The response held no attributions this page knows how to draw; see the raw JSON below." }));
      $("legend").replaceChildren();
      $("attribution-meta").textContent = "";
      return;
    }
    drawLabel(0);
  }

  function drawLabel(i) {
    const entry = state.labelsShown[i];
    if (!entry) return;
    const max = renderHighlight($("highlight"), state.text, entry.items);
    renderLegend($("legend"), max, `against ${labelName(entry.label)}`, `for ${labelName(entry.label)}`);
    renderBars($("bars"), entry.items);
    const meta = [];
    const x = entry.extra || {};
    meta.push(`label: ${labelName(entry.label)}`);
    if (isNum(x.probability)) meta.push(`probability ${fmt(x.probability)}`);
    if (isNum(x.intercept)) meta.push(`intercept ${fmt(x.intercept)}`);
    if (isNum(x.score)) meta.push(`surrogate R² ${fmt(x.score)}`);
    if (isNum(x.base_value)) meta.push(`base value ${fmt(x.base_value)}`);
    if (isNum(x.additivity_residual)) meta.push(`additivity residual ${fmt(x.additivity_residual)}`);
    if (isNum(x.delta)) meta.push(`completeness delta ${fmt(x.delta)}`);
    const b = state.body || {};
    if (b.params && isNum(b.params.num_samples)) meta.push(`${b.params.num_samples} samples`);
    if (b.params && isNum(b.params.seed)) meta.push(`seed ${b.params.seed}`);
    if (isNum(b.flips)) meta.push(`${b.flips} flip${b.flips === 1 ? "" : "s"}`);
    if (typeof b.exact === "boolean") meta.push(b.exact ? "exact" : "sampled");
    $("attribution-meta").textContent = meta.join(" · ");
    renderFaithLine($("attribution-faith"), faithfulnessOf(b, entry, i));
  }

  /** The faithfulness block of one drawn label: in the label's own entry (gradients) or in the
   * response's `faithfulness` list, by target (lime, shap, occlusion). */
  function faithfulnessOf(body, entry, i) {
    const own = entry.extra && entry.extra.faithfulness;
    if (own && !Array.isArray(own) && isNum(own.aopc_comprehensiveness)) return own;
    const list = Array.isArray(body.faithfulness) ? body.faithfulness : body.faithfulness ? [body.faithfulness] : [];
    return list.find((f) => f && f.target === entry.label) || (list.length === 1 ? list[0] : list[i]) || null;
  }

  /** AOPC under the highlighted text. */
  function renderFaithLine(box, f) {
    box.replaceChildren();
    if (!f || !isNum(f.aopc_comprehensiveness)) {
      box.hidden = true;
      return;
    }
    box.append(
      el("strong", { text: "Faithfulness: " }),
      "AOPC comprehensiveness ", el("span", { class: "aopc-comp", text: fmt(f.aopc_comprehensiveness, 4) }), " (higher is better) · ",
      "AOPC sufficiency ", el("span", { class: "aopc-suff", text: fmt(f.aopc_sufficiency, 4) }), " (lower is better)",
    );
    box.hidden = false;
  }

  // ---------------------------------------------------------------- comparison

  /** The comparison's method names this server knows (its CompareMethod enum). */
  function compareMethodNames() {
    const schemas = state.openapi && state.openapi.components && state.openapi.components.schemas;
    const e = schemas && schemas.CompareMethod && schemas.CompareMethod.enum;
    return Array.isArray(e) && e.length ? e : COMPARE_METHODS;
  }

  function fillCompareMethods() {
    const box = $("compare-methods");
    const checked = new Set(Array.from(box.querySelectorAll("input:checked")).map((i) => i.value));
    const first = box.children.length === 0;
    box.replaceChildren();
    for (const name of compareMethodNames()) {
      const on = first ? COMPARE_CHECKED.includes(name) : checked.has(name);
      box.append(el("label", {}, el("input", { type: "checkbox", name: "compare-method", value: name, checked: on }), ` ${COMPARE_NAMES[name] || name.replace(/_/g, " ")}`));
    }
  }

  function compareRequest() {
    const route = METHODS.compare.route;
    const request = { text: state.text };
    addTarget(request, route);
    numberParam(request, route, "seed", "seed");
    const methods = Array.from(document.querySelectorAll('input[name="compare-method"]:checked')).map((i) => i.value);
    // An empty list is sent as is: the API's own message says what to do.
    request.methods = methods;
    const samples = Number($("num_samples").value);
    if (methods.includes("lime") && $("num_samples").value.trim() !== "" && Number.isFinite(samples)) request.lime = { num_samples: samples };
    const evals = Number($("max_evals").value);
    if (methods.includes("shap") && $("max_evals").value.trim() !== "" && Number.isFinite(evals)) request.shap = { max_evals: evals };
    return request;
  }

  function renderCompare(body, text) {
    const targets = Array.isArray(body.targets) && body.targets.length ? body.targets : [0];
    const pick = $("compare-label");
    pick.replaceChildren();
    targets.forEach((t, k) => pick.append(el("option", { value: k, text: labelName(t) })));
    $("compare-label-wrap").hidden = targets.length < 2;
    state.compareLabel = Math.min(state.compareLabel, targets.length - 1);
    pick.value = String(state.compareLabel);
    const meta = [];
    if (body.params && isNum(body.params.seed)) meta.push(`seed ${body.params.seed}`);
    if (body.params && body.params.mask) meta.push(`words removed by ${body.params.mask}`);
    if (Array.isArray(body.features)) meta.push(`${body.features.length} words`);
    if (targets.length > 1) meta.push(`scores: mean over ${targets.length} labels`);
    if (body.faithfulness_usage && isNum(body.faithfulness_usage.model_evaluations)) meta.push(`faithfulness: ${body.faithfulness_usage.model_evaluations} model rows`);
    $("compare-meta").textContent = meta.join(" · ");
    $("view-compare").hidden = false;
    drawCompare(body, text, state.compareLabel);
  }

  function drawCompare(body, text, k) {
    const tbody = $("compare-table").querySelector("tbody");
    tbody.replaceChildren();
    const toU16 = byteToUtf16(text);
    const features = Array.isArray(body.features) ? body.features : [];
    const results = Array.isArray(body.methods) ? body.methods : [];
    const ranking = Array.isArray(body.ranking) && body.ranking.length
      ? body.ranking
      : results.map((m, i) => ({ rank: i + 1, method: m.method }));
    for (const r of ranking) {
      const m = results.find((x) => x.method === r.method) || {};
      const attribution = (m.attributions || [])[k] || (m.attributions || [])[0] || { scores: [] };
      const items = features
        .map((f, i) => ({ text: f.text, value: attribution.scores[i], spans: spanList(f.spans, toU16) }))
        .filter((it) => isNum(it.value) && it.spans.length > 0);
      const faith = (m.faithfulness || [])[k];
      const comp = isNum(r.aopc_comprehensiveness) ? r.aopc_comprehensiveness : faith && faith.aopc_comprehensiveness;
      const suff = isNum(r.aopc_sufficiency) ? r.aopc_sufficiency : faith && faith.aopc_sufficiency;
      const name = COMPARE_NAMES[r.method] || String(r.method).replace(/_/g, " ");
      const highlight = el("p", { class: "highlight", "aria-label": `The text coloured by ${name}` });
      renderHighlight(highlight, text, items);
      const u = m.usage || {};
      const usage = isNum(u.model_evaluations) ? `${u.model_evaluations} rows${isNum(u.shared_rows) && u.shared_rows ? ` (+${u.shared_rows} shared)` : ""}${isNum(u.total_ms) ? `, ${fmt(u.total_ms, 0)} ms` : ""}` : "";
      tbody.append(el("tr", { class: r.rank === 1 ? "best" : null, "data-method": r.method },
        el("td", { class: "rank", text: `#${r.rank}` }),
        el("th", { class: "method", scope: "row" }, name, usage ? el("span", { class: "method-usage muted small", text: usage }) : null),
        el("td", { class: "num comp", "data-label": "Compr. ↑", "data-value": comp, text: isNum(comp) ? fmt(comp, 4) : "–" }),
        el("td", { class: "num suff", "data-label": "Suff. ↓", "data-value": suff, text: isNum(suff) ? fmt(suff, 4) : "–" }),
        el("td", { class: "text" }, highlight)));
    }
  }

  // ---------------------------------------------------------------- faithfulness

  /** Numeric leaves of a faithfulness block as [path, value] rows. */
  function flattenNumbers(value, prefix, out, depth) {
    if (depth > 4 || value === null || value === undefined) return out;
    if (isNum(value)) out.push([prefix, value]);
    else if (Array.isArray(value)) {
      if (value.every(isNum)) out.push([prefix, value.map((v) => fmt(v)).join(", ")]);
      else value.forEach((v, i) => flattenNumbers(v, `${prefix}[${i}]`, out, depth + 1));
    } else if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) flattenNumbers(v, prefix ? `${prefix}.${k}` : k, out, depth + 1);
    }
    return out;
  }

  function faithfulnessTable(block) {
    if (Array.isArray(block.bins)) {
      const table = el("table", { class: "scores" },
        el("thead", {}, el("tr", {}, el("th", { text: "top k%" }), el("th", { text: "features" }), el("th", { text: "comprehensiveness" }), el("th", { text: "sufficiency" }))));
      const tbody = el("tbody");
      for (const b of block.bins) {
        tbody.append(el("tr", {}, el("td", { text: `${b.percent}%` }), el("td", { text: b.features }), el("td", { text: fmt(b.comprehensiveness, 4) }), el("td", { text: fmt(b.sufficiency, 4) })));
      }
      tbody.append(el("tr", {}, el("th", { text: "AOPC" }), el("td", { text: "" }), el("th", { text: fmt(block.aopc_comprehensiveness, 4) }), el("th", { text: fmt(block.aopc_sufficiency, 4) })));
      table.append(tbody);
      return table;
    }
    const table = el("table", { class: "scores" }, el("thead", {}, el("tr", {}, el("th", { text: "score" }), el("th", { text: "value" }))));
    const tbody = el("tbody");
    for (const [k, v] of flattenNumbers(block, "", [], 0)) tbody.append(el("tr", {}, el("td", { text: k }), el("td", { text: isNum(v) ? fmt(v, 4) : v })));
    table.append(tbody);
    return table;
  }

  function renderFaithfulness(body) {
    const blocks = [];
    if (Array.isArray(body.faithfulness)) body.faithfulness.forEach((f) => f && blocks.push([body.faithfulness.length > 1 || isNum(f.target) ? labelName(f.target) : "", f]));
    else if (body.faithfulness) blocks.push(["", body.faithfulness]);
    for (const key of ["labels", "explanations"]) {
      if (Array.isArray(body[key])) body[key].forEach((l) => l && l.faithfulness && blocks.push([labelName(l.label), l.faithfulness]));
    }
    const view = $("view-faithfulness");
    const box = $("faithfulness");
    box.replaceChildren();
    if (blocks.length === 0) {
      view.hidden = true;
      return;
    }
    for (const [label, block] of blocks) {
      if (label) box.append(el("h3", { text: `Label ${label}` }));
      box.append(faithfulnessTable(block));
    }
    box.append(el("p", { class: "muted small", text: "Comprehensiveness: the drop when the top features are removed (higher is more faithful). Sufficiency: the drop when only they are kept (lower is more faithful). ERASER, DeYoung et al. 2020." }));
    view.hidden = false;
  }

  // ---------------------------------------------------------------- attention

  function attentionRequest() {
    const view = $("att-view").value;
    const body = { text: state.text, granularity: $("att-granularity").value };
    if (view === "rollout") body.aggregation = "rollout";
    else {
      body.layers = [Number($("att-layer").value)];
      if (view === "head") {
        body.heads = [Number($("att-head").value)];
        body.aggregation = "none";
      } else body.aggregation = "mean";
    }
    return body;
  }

  function syncAttentionPickers() {
    const view = $("att-view").value;
    $("att-layer").disabled = view === "rollout";
    $("att-head").disabled = view !== "head";
  }

  async function runAttention(signal) {
    const seq = ++state.attentionSeq;
    const request = attentionRequest();
    const body = await api("/explain/attention", request, signal);
    if (seq !== state.attentionSeq) return null; // a newer selection is on its way
    renderAttention(body, request);
    return body;
  }

  function renderAttention(body, request) {
    const axis = Array.isArray(body.axis) ? body.axis : [];
    let values = null;
    let caption = "";
    if (request.aggregation === "rollout" && body.rollout) {
      values = body.rollout.values;
      caption = `Rollout through every layer (pooling: ${body.rollout.pooling}).`;
    } else if (Array.isArray(body.matrices) && body.matrices.length) {
      const m = body.matrices[0];
      values = m.values;
      caption = request.aggregation === "none" ? `Layer ${m.layer}, head ${m.head ?? request.heads[0]}.` : `Layer ${m.layer}, mean over heads.`;
    }
    const n = axis.length;
    const container = $("heatmap");
    container.replaceChildren();
    $("rollout-row").replaceChildren();
    if (!values || values.length !== n) {
      container.append(el("p", { class: "muted", text: "No attention matrix in the response." }));
      return;
    }
    let max = 0;
    for (const row of values) for (const v of row) if (v > max) max = v;
    $("attention-meta").textContent = `${caption} Row i, column j: attention from entry i to entry j (${n} × ${n}). Darker is more; scale 0 to ${fmt(max)}.`;

    const cell = n > 40 ? 12 : 22;
    const longest = Math.min(14, Math.max(3, ...axis.map((a) => String(a.text).length)));
    const margin = 8 + longest * 7;
    const size = margin + n * cell + 4;
    const chart = svg("svg", {
      viewBox: `0 0 ${size} ${size}`, width: size, height: size, role: "img", tabindex: 0,
      "aria-label": `Attention heatmap, ${n} by ${n}`,
      "data-view": $("att-view").value, "data-layer": request.layers ? request.layers[0] : "", "data-head": request.heads ? request.heads[0] : "", "data-n": n,
    });
    axis.forEach((a, i) => {
      const label = truncateLabel(a.text, 14);
      chart.append(svg("text", { x: margin - 4, y: margin + i * cell + cell / 2 + 4, "text-anchor": "end", text: label }));
      const cx = margin + i * cell + cell / 2 + 4;
      chart.append(svg("text", { x: cx, y: margin - 4, "text-anchor": "start", transform: `rotate(-90 ${cx} ${margin - 4})`, text: label }));
    });
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const v = values[i][j];
        chart.append(svg("rect", { class: "cell", x: margin + j * cell, y: margin + i * cell, width: cell - 1, height: cell - 1, fill: sequential(v, max) },
          svg("title", { text: `${axis[i].text} → ${axis[j].text}: ${fmt(v, 4)}` })));
      }
    }
    container.append(chart);

    if (body.rollout && Array.isArray(body.rollout.pooled)) {
      const toU16 = byteToUtf16(state.text);
      const items = axis.map((a, i) => ({
        text: a.text,
        value: body.rollout.pooled[i],
        spans: a.special || !(a.utf16_end > a.utf16_start || a.end > a.start) ? [] : [[isNum(a.utf16_start) ? a.utf16_start : toU16(a.start), isNum(a.utf16_end) ? a.utf16_end : toU16(a.end)]],
      }));
      const p = el("p", { class: "highlight", id: "rollout-highlight" });
      $("rollout-row").append(el("h3", { text: "Rollout attribution (the pooled row)" }), p);
      renderHighlight(p, state.text, items);
    }
  }

  // ---------------------------------------------------------------- head importance

  function renderHeads(body) {
    const container = $("heads-grid");
    container.replaceChildren();
    const entry = Array.isArray(body.importance) ? body.importance[0] : null;
    let grid = entry && Array.isArray(entry.grid) ? entry.grid : null;
    if (!grid && entry && Array.isArray(entry.drops) && state.info) {
      const h = state.info.model.num_heads;
      grid = [];
      for (let l = 0; l * h < entry.drops.length; l++) grid.push(entry.drops.slice(l * h, (l + 1) * h));
    }
    if (!grid) {
      container.append(el("p", { class: "muted", text: "No importance grid in the response." }));
      return;
    }
    let max = 1e-12;
    for (const row of grid) for (const v of row) max = Math.max(max, Math.abs(v));
    renderLegend($("heads-legend"), max, "masking helped", "head helped");
    // Cell labels in a common unit, so small drops fit in a cell (the tooltips are exact).
    const exponent = max < 0.01 ? Math.floor(Math.log10(max)) : 0;
    const unit = Math.pow(10, exponent);
    const cellText = (v) => (exponent ? (v / unit).toFixed(1) : v.toFixed(2));
    if (exponent) $("heads-legend").append(el("span", { class: "muted", text: `cells show values × 10^${-exponent}` }));
    const cell = 44;
    const left = 64;
    const topM = 24;
    const heads = Math.max(...grid.map((r) => r.length));
    const width = left + heads * cell + 4;
    const height = topM + grid.length * cell + 4;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `Head importance, ${grid.length} layers by ${heads} heads, for ${entry.label}` });
    for (let h = 0; h < heads; h++) chart.append(svg("text", { x: left + h * cell + cell / 2, y: topM - 8, "text-anchor": "middle", text: `h${h}` }));
    grid.forEach((row, l) => {
      chart.append(svg("text", { x: left - 8, y: topM + l * cell + cell / 2 + 4, "text-anchor": "end", text: `layer ${l}` }));
      row.forEach((v, h) => {
        const { color, dark } = diverging(v, max);
        const tip = `layer ${l}, head ${h}: ${signed(v, 4)}`;
        chart.append(svg("rect", { class: "cell", x: left + h * cell, y: topM + l * cell, width: cell - 2, height: cell - 2, fill: color, tabindex: 0, "aria-label": tip }, svg("title", { text: tip })));
        chart.append(svg("text", { x: left + h * cell + cell / 2 - 1, y: topM + l * cell + cell / 2 + 3, "text-anchor": "middle", fill: dark ? "#fff" : "#1f2937", "pointer-events": "none", "font-size": 10, text: cellText(v) }));
      });
    });
    container.append(chart);
  }

  // ---------------------------------------------------------------- counterfactuals

  function variantItem(text) {
    const li = el("li");
    const n = $("cf-list").children.length + 1;
    const area = el("textarea", { rows: 2, "aria-label": `Variant ${n}` });
    area.value = text;
    const result = el("div", { class: "cf-result cf-outcome", "aria-live": "polite" });
    const remove = el("button", { type: "button", class: "small", text: "Remove", "aria-label": `Remove variant ${n}` });
    remove.addEventListener("click", () => li.remove());
    area.addEventListener("input", () => result.replaceChildren());
    li.append(area, el("div", { class: "cf-row" }, result, remove));
    return li;
  }

  function seedVariants() {
    const list = $("cf-list");
    if (list.children.length > 0) return;
    const text = state.text;
    const swaps = [["wonderful", "dull"], ["good", "bad"], ["great", "terrible"], ["thin", "rich"], ["but", "and"], ["not ", ""]];
    const variants = [];
    for (const [a, b] of swaps) {
      const re = new RegExp(`\\b${a.trim()}\\b`, "i");
      if (re.test(text)) variants.push(text.replace(re, b.trim()).replace(/ {2,}/g, " "));
      if (variants.length >= 2) break;
    }
    if (variants.length === 0) variants.push(text);
    for (const v of variants) list.append(variantItem(v));
  }

  function probabilityText(probabilities) {
    if (Array.isArray(probabilities)) {
      return probabilities.map((p, i) => [labelName(i), p]).sort((a, b) => b[1] - a[1]).map(([l, p]) => `${l} ${(p * 100).toFixed(1)}%`).join(", ");
    }
    if (probabilities && typeof probabilities === "object") {
      return Object.entries(probabilities).sort((a, b) => b[1] - a[1]).map(([l, p]) => `${l} ${(p * 100).toFixed(1)}%`).join(", ");
    }
    return "";
  }

  function showOutcome(box, label, probabilities, flipped, delta) {
    box.replaceChildren(
      el("span", {}, "→ ", el("strong", { text: label })),
      el("span", { class: "muted", text: probabilityText(probabilities) }),
      isNum(delta) ? el("span", { class: "muted", text: `target probability ${signed(-delta)}` }) : null,
      flipped ? el("span", { class: "flip", text: "flipped" }) : el("span", { class: "muted", text: "same label" }),
    );
    box.dataset.flipped = flipped ? "1" : "0";
  }

  function renderFlipSearch(result) {
    const box = $("cf-search");
    box.replaceChildren();
    if (!result) return;
    box.append(el("h3", { text: "Minimal flip search" }), el("p", { text: result.message || (result.found ? "A flipping set was found." : "No flipping set was found.") }));
    if (result.found && result.result) {
      box.append(el("p", {},
        "Remove ", el("strong", { text: (result.words || []).join(", ") }), ": ",
        el("q", { text: result.result.text ?? "(token-level change)" }), " → ",
        el("strong", { text: labelName(result.result.label) }), " ",
        result.result.flipped ? el("span", { class: "flip", text: "flipped" }) : null));
    }
    const meta = [`strategy ${result.strategy}`];
    if (result.order) meta.push(`order: ${result.order}`);
    if (isNum(result.evaluations)) meta.push(`${result.evaluations} of at most ${result.max_evals} evaluations`);
    if (typeof result.minimal === "boolean") meta.push(result.minimal ? "minimal" : "not shown minimal");
    if (result.complete === false) meta.push("stopped by the cap");
    box.append(el("p", { class: "muted small", text: meta.join(" · ") }));
  }

  /** Evaluates the variants (and, with `search`, runs the flip search); returns the response
   * that carries the original's prediction. */
  async function evaluateCounterfactuals(signal, search) {
    const items = Array.from($("cf-list").children);
    const texts = items.map((li) => li.querySelector("textarea").value);
    const nonEmpty = texts.map((t, i) => [t, i]).filter(([t]) => t.trim() !== "");
    for (const li of items) {
      const box = li.querySelector(".cf-outcome");
      box.replaceChildren(el("span", { class: "muted", text: "empty variant: not evaluated" }));
      box.dataset.flipped = "0";
    }
    const route = "/explain/counterfactual";
    if (hasRoute(route)) {
      const request = { text: state.text };
      addTarget(request, route);
      if (nonEmpty.length) request.edits = nonEmpty.map(([t]) => t);
      if (search) request.flip_search = {};
      if (!request.edits && !request.flip_search) return api("/predict", { text: state.text }, signal);
      const body = await api(route, request, signal);
      const edits = (body.counterfactuals || []).filter((c) => c.kind === "edit");
      nonEmpty.forEach(([, i], k) => {
        const c = edits.find((e) => e.edit === k) || edits[k];
        if (!c) return;
        showOutcome(items[i].querySelector(".cf-outcome"), labelName(c.label), c.probabilities, Boolean(c.flipped), (c.deltas || [])[0]);
      });
      if (search) renderFlipSearch(body.flip_search);
      return body;
    }
    // Without the counterfactual route: the variants through /predict, flips compared here.
    const original = await api("/predict", { text: state.text }, signal);
    const answer = nonEmpty.length ? await api("/predict", { texts: nonEmpty.map(([t]) => t) }, signal) : { predictions: [] };
    nonEmpty.forEach(([, i], k) => {
      const p = (answer.predictions || [])[k];
      if (p) showOutcome(items[i].querySelector(".cf-outcome"), p.label, p.probabilities, p.label !== original.prediction.label);
    });
    if (search) {
      $("cf-search").replaceChildren(el("p", { class: "muted small", text: `Minimal flip search is not on this server yet (POST ${route}).` }));
    }
    return original;
  }

  // ---------------------------------------------------------------- running a method

  function selectedMethod() {
    const checked = document.querySelector('input[name="method"]:checked');
    return checked ? checked.value : "lime";
  }

  function addTarget(request, route) {
    const target = $("target").value;
    if (target === "") return;
    if (target === "*") {
      if (takes(route, "top_labels") && state.info) request.top_labels = state.info.model.labels.length;
    } else if (takes(route, "target")) request.target = target;
  }

  function numberParam(request, route, name, id) {
    const raw = $(id).value.trim();
    if (raw === "" || !takes(route, name)) return;
    const v = Number(raw);
    if (Number.isFinite(v)) request[name] = v;
  }

  function buildRequest(method) {
    const route = METHODS[method].route;
    const request = { text: state.text };
    addTarget(request, route);
    if (method === "lime") {
      numberParam(request, route, "num_samples", "num_samples");
      numberParam(request, route, "seed", "seed");
    } else if (method === "shap") {
      numberParam(request, route, "max_evals", "max_evals");
      numberParam(request, route, "seed", "seed");
    } else if (method === "occlusion") {
      // One word at a time is the route's default (leave-one-out), and the only mode that
      // `evaluate` scores: a window of 1 is left out rather than sent.
      if (Number($("window").value) !== 1) numberParam(request, route, "window", "window");
    } else if (method === "gradients") {
      const props = routeProps(route);
      const choice = $("gradient_method").value;
      const key = ["method", "methods", "kind", "attribution", "variant"].find((k) => props && props.has(k)) || "method";
      const schema = props && props.get(key);
      request[key] = schema && (schema.type === "array" || (Array.isArray(schema.type) && schema.type.includes("array"))) ? [choice] : choice;
      if (takes(route, "granularity")) request.granularity = "words";
    } else if (method === "heads") {
      request.sweep = "heads";
    }
    if ($("evaluate").checked && !$("evaluate-wrap").hidden) request.evaluate = true;
    return request;
  }

  function hideViews() {
    for (const v of document.querySelectorAll(".view")) v.hidden = true;
  }

  async function run() {
    const method = selectedMethod();
    const text = $("text").value;
    if (text.trim() === "") {
      showError(new ApiFailure("Type a text to explain first.", "", 0));
      $("text").focus();
      return;
    }
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    state.text = text;
    state.method = method;
    document.body.dataset.method = method;
    showError(null);
    resetProgress();
    const kind = METHODS[method].kind;
    const started = startBusy(kind === "counterfactual" ? "Evaluating" : kind === "compare" ? "Comparing" : "Explaining");
    try {
      let body;
      if (kind === "attention") {
        hideViews();
        $("view-attention").hidden = false;
        body = await runAttention(controller.signal);
      } else if (kind === "counterfactual") {
        hideViews();
        $("view-counterfactual").hidden = false;
        seedVariants();
        body = await evaluateCounterfactuals(controller.signal, true);
      } else if (kind === "compare") {
        body = await callMethod(method, compareRequest(), controller.signal);
        hideViews();
        state.body = body;
        renderCompare(body, text);
      } else {
        body = await callMethod(method, buildRequest(method), controller.signal);
        hideViews();
        if (kind === "heads") {
          $("view-heads").hidden = false;
          renderHeads(body);
        } else {
          state.body = body;
          renderAttribution(method, body, text);
        }
      }
      if (body) {
        state.body = body;
        renderPrediction(body.prediction);
        renderFaithfulness(body);
        $("raw").textContent = JSON.stringify(body, null, 2);
        $("raw-wrap").hidden = false;
      }
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      const server = body && body.usage && isNum(body.usage.total_ms) ? ` (server ${(body.usage.total_ms / 1000).toFixed(2)} s, ${body.usage.model_evaluations} model evaluations)` : "";
      stopBusy(`Done in ${seconds} s${server}.`);
      document.body.dataset.state = "done";
    } catch (error) {
      if (error && error.name === "AbortError") {
        if (state.controller === controller) {
          stopBusy("Cancelled.");
          document.body.dataset.state = "error";
        }
        return;
      }
      stopBusy("");
      showError(error);
      document.body.dataset.state = "error";
    } finally {
      if (state.controller === controller) state.controller = null;
    }
  }

  /** Re-draws the attention view after a picker changed, without touching the other views. */
  async function refreshAttention() {
    syncAttentionPickers();
    if (state.method !== "attention" || !state.text) return;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    showError(null);
    const started = startBusy("Loading attention");
    try {
      await runAttention(controller.signal);
      stopBusy(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
      document.body.dataset.state = "done";
    } catch (error) {
      if (error && error.name === "AbortError") return;
      stopBusy("");
      showError(error);
      document.body.dataset.state = "error";
    } finally {
      if (state.controller === controller) state.controller = null;
    }
  }

  function onMethodChange() {
    const method = selectedMethod();
    for (const p of document.querySelectorAll(".param")) {
      const wanted = (p.dataset.for || "").split(/\s+/);
      p.hidden = !wanted.includes(method);
    }
    const route = METHODS[method].route;
    const evaluable = ["lime", "shap", "occlusion", "gradients"].includes(method) && hasRoute(route) && routeProps(route) !== null && takes(route, "evaluate") && routeProps(route).size > 0;
    $("evaluate-wrap").hidden = !evaluable;
    const available = hasRoute(route);
    $("method-note").textContent = available ? NOTES[method] : `${NOTES[method]} Not on this server yet (POST ${route}).`;
    $("run").textContent = method === "counterfactual" ? "Evaluate" : method === "compare" ? "Compare" : "Explain";
  }

  // ---------------------------------------------------------------- start-up

  function fillSelect(select, count, prefix) {
    select.replaceChildren();
    for (let i = 0; i < count; i++) select.append(el("option", { value: i, text: `${prefix} ${i}` }));
  }

  async function init() {
    const [info, openapi] = await Promise.allSettled([api("/info"), api("/openapi.json")]);
    if (openapi.status === "fulfilled") state.openapi = openapi.value;
    if (info.status === "fulfilled") {
      state.info = info.value;
      const m = state.info.model || {};
      $("model-info").textContent = `Model ${m.id} (${m.architecture}, ${m.head}); labels: ${(m.labels || []).join(", ")}; ${m.num_layers} layers × ${m.num_heads} heads.`;
      const target = $("target");
      target.replaceChildren(el("option", { value: "", text: "predicted label" }));
      for (const label of m.labels || []) target.append(el("option", { value: label, text: label }));
      if ((m.labels || []).length > 1) target.append(el("option", { value: "*", text: "every label" }));
      fillSelect($("att-layer"), m.num_layers || 0, "layer");
      fillSelect($("att-head"), m.num_heads || 0, "head");
      if (m.num_layers) $("att-layer").value = String(m.num_layers - 1);
      const maxSamples = state.info.limits && state.info.limits.max_num_samples;
      if (isNum(maxSamples)) $("num_samples").max = String(maxSamples);
    } else {
      $("model-info").textContent = `Could not read /info: ${info.reason && info.reason.message}`;
      if (info.reason && info.reason.status === 401) showError(info.reason);
    }
    for (const input of document.querySelectorAll('input[name="method"]')) {
      const route = METHODS[input.value].route;
      if (!hasRoute(route)) {
        input.parentElement.classList.add("unavailable");
        input.parentElement.title = `Not on this server yet (POST ${route})`;
      }
    }
    fillCompareMethods();
    onMethodChange();
    syncAttentionPickers();
    document.body.dataset.ready = "1";
  }

  function wire() {
    $("form").addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
    $("text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        run();
      }
    });
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        sessionStorage.setItem("glassbox.apiKey", $("api-key").value.trim());
      } catch (_) {
        // Storage switched off: the key cannot be kept.
      }
      $("api-key").value = "";
      $("settings").open = false;
      showError(null);
      init().catch(showError);
    });
    $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("cancel").hidden && state.controller) {
        event.preventDefault();
        state.controller.abort();
      }
    });
    for (const input of document.querySelectorAll('input[name="method"]')) input.addEventListener("change", onMethodChange);
    $("label-pick").addEventListener("change", (e) => drawLabel(Number(e.target.value)));
    $("compare-label").addEventListener("change", (e) => {
      state.compareLabel = Number(e.target.value);
      if (state.method === "compare" && state.body) drawCompare(state.body, state.text, state.compareLabel);
    });
    for (const id of ["att-view", "att-layer", "att-head", "att-granularity"]) $(id).addEventListener("change", refreshAttention);
    $("cf-add").addEventListener("click", () => {
      const item = variantItem(state.text || $("text").value);
      $("cf-list").append(item);
      item.querySelector("textarea").focus();
    });
    $("cf-eval").addEventListener("click", async () => {
      if (state.controller) state.controller.abort();
      const controller = new AbortController();
      state.controller = controller;
      showError(null);
      const started = startBusy("Evaluating");
      try {
        if (!state.text) state.text = $("text").value;
        const body = await evaluateCounterfactuals(controller.signal, false);
        renderPrediction(body.prediction);
        stopBusy(`Done in ${((performance.now() - started) / 1000).toFixed(2)} s.`);
        document.body.dataset.state = "done";
      } catch (error) {
        if (error && error.name === "AbortError") return;
        stopBusy("");
        showError(error);
        document.body.dataset.state = "error";
      } finally {
        if (state.controller === controller) state.controller = null;
      }
    });
  }

  wire();
  init().catch((error) => {
    showError(error);
    document.body.dataset.ready = "1";
  });
})();
