// The mmsearch web page: plain DOM, no framework, nothing loaded from elsewhere.
// Everything that comes from the API (ids, captions, metadata, messages) is untrusted: it is
// only ever put into the page as text (textContent / text nodes / attribute values), never as HTML.
"use strict";

(() => {
  const KEY_STORAGE = "mmsearch.apiKey";
  const COLLECTION_STORAGE = "mmsearch.collection";
  const JOBS_STORAGE = "mmsearch.jobs";
  const FINAL_STATES = new Set(["succeeded", "completed_with_errors", "failed", "cancelled"]);
  const JOB_STATES = new Set(["queued", "running", ...FINAL_STATES]);
  const THUMB_CONCURRENCY = 6;
  const UPLOAD_FILES_PER_REQUEST = 100;
  const UPLOAD_BYTES_PER_REQUEST = 48 * 1024 * 1024;
  const POLL_MS = 1000;
  const LONG_POLLS_MAX = 4;

  const $ = (selector) => document.querySelector(selector);
  const state = {
    collection: null,
    collections: [],
    queryImage: null,        // Blob
    queryImageName: "query.jpg",
    queryPreviewUrl: null,
    searchSeq: 0,
    thumbs: new Map(),       // item id -> Promise<Blob|null> for the results shown
    thumbUrls: [],
    jobs: new Map(),         // job id -> {id, collection, label, body}
    detailHit: null,
  };

  const { el } = window.mmsearchDom;  // dom.js

  // ---- messages --------------------------------------------------------------------------
  function showMessage(text, kind = "error") {
    const box = $("#message");
    box.textContent = text;
    box.className = `message ${kind}`;
    box.hidden = !text;
  }
  function clearMessage() { showMessage("", "info"); }

  // ---- API -------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || {};
    }
  }

  function apiKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = apiKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    for (let attempt = 0; ; attempt += 1) {
      try {
        response = await fetch(path, { ...options, headers });
      } catch (err) {
        throw new ApiError(0, "network", `The API did not answer (${err.message})`);
      }
      if (response.status !== 429 || attempt >= 2) break;
      // rate limited: wait as told (at most 5 s), then try again
      const wait = Math.min(5, Number(response.headers.get("Retry-After")) || 1);
      await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    }
    if (!response.ok) {
      let error = {};
      try { error = (await response.json()).error || {}; } catch (_) { /* not JSON */ }
      if (response.status === 401) needKey();
      throw new ApiError(response.status, error.code || `http_${response.status}`,
        error.message || response.statusText || "request failed", error.details);
    }
    return response;
  }
  const apiJson = async (path, options) => (await api(path, options)).json();
  const collPath = (name) => `/v1/collections/${encodeURIComponent(name)}`;
  const itemPath = (name, id) => `${collPath(name)}/items/${id.split("/").map(encodeURIComponent).join("/")}`;

  function needKey() {
    document.body.classList.add("needs-key");
    showMessage(apiKey() ? "The API key was refused: type a valid key." :
      "This server needs an API key: type it at the top right.");
  }

  // ---- collections -----------------------------------------------------------------------
  async function loadCollections(preferred) {
    let body;
    try {
      body = await apiJson("/v1/collections");
    } catch (err) {
      if (err.status !== 401) showMessage(`Collections: ${err.message}`);
      return;
    }
    document.body.classList.remove("needs-key");
    state.collections = body.collections || [];
    const select = $("#collection");
    const wanted = preferred || state.collection || sessionStorage.getItem(COLLECTION_STORAGE);
    select.replaceChildren(...state.collections.map((c) =>
      el("option", { value: c.name, text: `${c.name} (${c.count})` })));
    if (!state.collections.length) {
      select.append(el("option", { value: "", text: "no collections yet" }));
      state.collection = null;
      return;
    }
    const chosen = state.collections.find((c) => c.name === wanted) || state.collections[0];
    select.value = chosen.name;
    setCollection(chosen.name, false);
  }

  function setCollection(name, reset = true) {
    state.collection = name || null;
    if (name) sessionStorage.setItem(COLLECTION_STORAGE, name);
    document.body.dataset.collection = name || "";
    if (reset) {
      clearResults();
      $("#status").textContent = name ? `Collection ${name}: search by text, by an image, or both.` : "";
    }
  }

  // ---- query image -----------------------------------------------------------------------
  function setQueryImage(blob, name, search = true) {
    if (!blob || (blob.type && !blob.type.startsWith("image/"))) {
      showMessage("That is not an image.");
      return;
    }
    if (state.queryPreviewUrl) URL.revokeObjectURL(state.queryPreviewUrl);
    state.queryImage = blob;
    state.queryImageName = name || "query.jpg";
    state.queryPreviewUrl = URL.createObjectURL(blob);
    const preview = $("#q-preview");
    preview.src = state.queryPreviewUrl;
    preview.hidden = false;
    $("#q-clear").hidden = false;
    $("#drop").classList.add("has-image");
    if (search && state.collection) runSearch();
  }

  function clearQueryImage() {
    if (state.queryPreviewUrl) URL.revokeObjectURL(state.queryPreviewUrl);
    state.queryImage = null;
    state.queryPreviewUrl = null;
    $("#q-preview").hidden = true;
    $("#q-preview").removeAttribute("src");
    $("#q-clear").hidden = true;
    $("#q-file").value = "";
    $("#drop").classList.remove("has-image");
  }

  function weights() {
    const t = Number($("#q-weight").value) / 100;
    return { image: Math.round((1 - t) * 100) / 100, text: Math.round(t * 100) / 100 };
  }

  function showWeights() {
    const w = weights();
    $("#q-weight-out").textContent = `image ${w.image.toFixed(2)} · text ${w.text.toFixed(2)}`;
  }

  // ---- search ----------------------------------------------------------------------------
  async function runSearch() {
    clearMessage();
    const text = $("#q-text").value.trim();
    if (!state.collection) { showMessage("Pick (or create) a collection first."); return; }
    if (!text && !state.queryImage) { showMessage("Type a text, give an image, or both."); return; }
    const k = Math.max(1, Math.min(1000, parseInt($("#q-k").value, 10) || 24));
    const form = new FormData();
    if (state.queryImage) form.append("image", state.queryImage, state.queryImageName);
    if (text) form.append("text", text);
    form.append("k", String(k));
    if (state.queryImage && text) form.append("weights", JSON.stringify(weights()));
    const seq = ++state.searchSeq;
    const collection = state.collection;
    $("#status").textContent = "Searching…";
    document.body.classList.add("searching");
    try {
      const body = await apiJson(`${collPath(collection)}/search`, { method: "POST", body: form });
      if (seq !== state.searchSeq) return;  // a newer search was started meanwhile
      renderResults(collection, body);
    } catch (err) {
      if (seq !== state.searchSeq) return;
      $("#status").textContent = "";
      showMessage(`Search failed: ${err.message}`);
    } finally {
      if (seq === state.searchSeq) document.body.classList.remove("searching");
    }
  }

  function clearResults() {
    for (const url of state.thumbUrls) URL.revokeObjectURL(url);
    state.thumbUrls = [];
    state.thumbs = new Map();
    $("#results").replaceChildren();
    delete $("#results").dataset.state;
  }

  // Thumbnails are fetched (with the API key) and shown as blob: URLs, a few at a time.
  let thumbsRunning = 0;
  const thumbQueue = [];
  function thumbnail(collection, id) {
    if (!state.thumbs.has(id)) {
      state.thumbs.set(id, new Promise((resolve) => {
        thumbQueue.push({ collection, id, resolve });
        pumpThumbs();
      }));
    }
    return state.thumbs.get(id);
  }
  function pumpThumbs() {
    while (thumbsRunning < THUMB_CONCURRENCY && thumbQueue.length) {
      const job = thumbQueue.shift();
      thumbsRunning += 1;
      api(`${itemPath(job.collection, job.id)}/thumbnail`)
        .then((r) => r.blob(), () => null)
        .then((blob) => job.resolve(blob), () => job.resolve(null))
        .finally(() => { thumbsRunning -= 1; pumpThumbs(); });
    }
  }

  function fmt(value) { return value === null || value === undefined ? "–" : Number(value).toFixed(3); }
  function duration(ms) { return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`; }

  function scoreBar(label, value, kind) {
    const fill = el("span", { class: `bar-fill ${kind}` });
    const clamped = value === null || value === undefined ? 0 : Math.max(0, Math.min(1, value));
    fill.style.width = `${(clamped * 100).toFixed(1)}%`;
    return el("div", { class: "bar", title: `${label}: ${fmt(value)}` },
      el("span", { class: "bar-label", text: label }),
      el("span", { class: "bar-track" }, fill),
      el("span", { class: "bar-value", text: fmt(value) }));
  }

  function scoreBars(hit) {
    const scores = hit.scores || {};
    const bars = [scoreBar("score", hit.score, "total")];
    if (scores.image !== null && scores.image !== undefined) bars.push(scoreBar("image", scores.image, "image"));
    if (scores.text !== null && scores.text !== undefined) bars.push(scoreBar("text", scores.text, "text"));
    return el("div", { class: "bars" }, ...bars);
  }

  function renderResults(collection, body) {
    clearResults();
    const grid = $("#results");
    const hits = body.hits || [];
    const shards = body.shards || {};
    let status = `${hits.length} hit${hits.length === 1 ? "" : "s"} in ${duration(body.took_ms)}`;
    if (shards.total !== undefined) status += ` · ${shards.answered}/${shards.total} shards answered`;
    $("#status").textContent = status;
    if (shards.answered < shards.total) {
      showMessage(`Partial results: ${shards.message || "some shards did not answer"}`, "warning");
    }
    if (!hits.length) {
      grid.append(el("p", { class: "empty", text: "No results." }));
    }
    hits.forEach((hit, i) => {
      const img = el("img", { alt: hit.text || hit.id, loading: "lazy" });
      const frame = el("div", { class: "thumb loading" }, img);
      const card = el("article", {
        class: "card", tabindex: "0", role: "button", dataset: { id: hit.id, rank: String(i + 1) },
        "aria-label": `result ${i + 1}: ${hit.id}`,
        onclick: () => openDetail(collection, hit),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDetail(collection, hit); } },
      },
      frame,
      el("div", { class: "card-body" },
        el("div", { class: "card-title" }, el("span", { class: "rank", text: `#${i + 1}` }),
          el("span", { class: "item-id", text: hit.id, title: hit.id })),
        scoreBars(hit),
        el("p", { class: "caption", text: hit.text || "" })));
      grid.append(card);
      thumbnail(collection, hit.id).then((blob) => {
        frame.classList.remove("loading");
        if (!blob) {
          frame.classList.add("none");
          frame.replaceChildren(el("span", { text: hit.text ? "text only" : "no thumbnail" }));
          return;
        }
        const url = URL.createObjectURL(blob);
        state.thumbUrls.push(url);
        img.src = url;
      });
    });
    grid.dataset.state = "done";
  }

  // ---- item details ----------------------------------------------------------------------
  async function openDetail(collection, hit) {
    state.detailHit = { collection, hit };
    const dialog = $("#detail");
    $("#d-id").textContent = hit.id;
    $("#d-text").textContent = hit.text || "(no caption)";
    $("#d-scores").replaceChildren(scoreBars(hit));
    $("#d-shard").textContent = "";
    const rows = Object.entries(hit.metadata || {}).map(([key, value]) =>
      el("tr", {}, el("th", { text: key }),
        el("td", { text: typeof value === "string" ? value : JSON.stringify(value) })));
    $("#d-meta").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { text: "(none)" }))]));
    const image = $("#d-image");
    image.removeAttribute("src");
    image.hidden = true;
    $("#d-noimage").hidden = true;
    if (!dialog.open) dialog.showModal();
    const blob = await thumbnail(collection, hit.id);
    if (state.detailHit?.hit !== hit) return;
    if (blob) {
      const url = URL.createObjectURL(blob);
      state.thumbUrls.push(url);
      image.src = url;
      image.alt = hit.text || hit.id;
      image.hidden = false;
    } else {
      $("#d-noimage").hidden = false;
    }
    $("#d-more").disabled = !blob && !hit.text;
    try {
      const record = await apiJson(itemPath(collection, hit.id));
      if (state.detailHit?.hit === hit) {
        $("#d-shard").textContent = `shard ${record.shard} · ${record.has_image ? "has an image" : "text only"}`;
      }
    } catch (err) {
      if (state.detailHit?.hit === hit) $("#d-shard").textContent = `look-up failed: ${err.message}`;
    }
  }

  async function moreLikeThis() {
    const current = state.detailHit;
    if (!current) return;
    const blob = await thumbnail(current.collection, current.hit.id);
    $("#detail").close();
    if (blob) {
      $("#q-text").value = "";
      setQueryImage(blob, `${current.hit.id.split("/").pop()}.jpg`);
    } else if (current.hit.text) {
      clearQueryImage();
      $("#q-text").value = current.hit.text;
      runSearch();
    }
  }

  // ---- ingest and jobs -------------------------------------------------------------------
  function saveJobs() {
    const list = [...state.jobs.values()].map(({ id, collection, label }) => ({ id, collection, label }));
    sessionStorage.setItem(JOBS_STORAGE, JSON.stringify(list.slice(-50)));
  }

  function addJob(id, collection, label) {
    if (!state.jobs.has(id)) {
      state.jobs.set(id, { id, collection, label, body: null, row: null });
      saveJobs();
    }
    renderJob(state.jobs.get(id));
    pollJobs();
  }

  function renderJob(job) {
    if (!job.row) {
      job.row = el("li", { class: "job", dataset: { jobId: job.id } });
      $("#jobs").prepend(job.row);
    }
    const body = job.body;
    const jobState = body && JOB_STATES.has(body.state) ? body.state : (job.error ? "unknown" : "queued");
    job.row.dataset.state = jobState;
    const total = body ? body.total : 0;
    const finished = body ? body.done + body.failed : 0;
    const fill = el("span", { class: "bar-fill total" });
    fill.style.width = `${total ? (100 * finished / total).toFixed(1) : 0}%`;
    let detail = body ? `${body.done} done, ${body.failed} failed of ${total}` : (job.error || "waiting…");
    if (body && body.started_at && finished) {
      const end = body.finished_at || Date.now() / 1000;
      const rate = finished / Math.max(0.001, end - body.started_at);
      detail += ` · ${rate.toFixed(1)} items/s`;
      if (!FINAL_STATES.has(jobState) && rate > 0 && total > finished) {
        detail += ` · ETA ${Math.ceil((total - finished) / rate)} s`;
      }
    }
    const errors = (body && body.errors || []).slice(0, 5).map((e) =>
      el("li", { text: `${e.id ?? `#${e.index}`}: ${e.code}: ${e.message}` }));
    job.row.replaceChildren(...[
      el("div", { class: "job-head" },
        el("span", { class: `badge state-${jobState}`, text: jobState.replaceAll("_", " ") }),
        el("span", { class: "job-label", text: job.label || job.collection || "", title: job.id }),
        el("button", { type: "button", class: "small forget", title: "Forget this job", text: "×",
          onclick: () => { state.jobs.delete(job.id); job.row.remove(); saveJobs(); } })),
      el("span", { class: "bar-track job-progress" }, fill),
      el("div", { class: "job-detail", text: detail }),
      errors.length ? el("ul", { class: "job-errors" }, ...errors) : null].filter(Boolean));
  }

  let polling = false;
  async function pollJobs() {
    if (polling) return;
    polling = true;
    try {
      for (;;) {
        const open = [...state.jobs.values()].filter((j) => !(j.body && FINAL_STATES.has(j.body.state)) && !j.gone);
        if (!open.length) break;
        const started = Date.now();
        // Long-poll (the API answers as soon as a job is final, or after POLL_MS), but never with
        // more than a few requests held open: each holds one of the API's threads meanwhile.
        const wait = open.length <= LONG_POLLS_MAX ? `?wait=${POLL_MS / 1000}` : "";
        await Promise.all(open.map(async (job) => {
          try {
            const before = job.body && job.body.state;
            job.body = await apiJson(`/v1/jobs/${encodeURIComponent(job.id)}${wait}`);
            job.error = null;
            if (FINAL_STATES.has(job.body.state) && before !== job.body.state &&
                job.body.collection === state.collection) {
              loadCollections(state.collection);  // new counts
            }
          } catch (err) {
            job.error = err.message;
            if (err.status === 404) job.gone = true;
          }
          renderJob(job);
        }));
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, POLL_MS - (Date.now() - started))));
      }
    } finally {
      polling = false;
    }
  }

  function batches(files) {
    const out = [];
    let current = [], bytes = 0;
    for (const file of files) {
      if (current.length && (current.length >= UPLOAD_FILES_PER_REQUEST || bytes + file.size > UPLOAD_BYTES_PER_REQUEST)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(file);
      bytes += file.size;
    }
    if (current.length) out.push(current);
    return out;
  }

  async function upload(event) {
    event.preventDefault();
    clearMessage();
    const input = $("#ingest-files");
    const files = [...input.files];
    if (!state.collection) { showMessage("Pick (or create) a collection first."); return; }
    if (!files.length) { showMessage("Choose one or more images to upload."); return; }
    const collection = state.collection;
    const parts = batches(files);
    $("#upload-btn").disabled = true;
    try {
      for (const [n, part] of parts.entries()) {
        const form = new FormData();
        for (const file of part) form.append("image", file, file.name);
        form.append("items", JSON.stringify(part.map((file) => ({ id: file.name }))));
        const body = await apiJson(`${collPath(collection)}/items`, { method: "POST", body: form });
        const label = `${collection}: ${part.length} image${part.length === 1 ? "" : "s"}` +
          (parts.length > 1 ? ` (part ${n + 1}/${parts.length})` : "");
        addJob(body.job_id, collection, label);
      }
      input.value = "";
    } catch (err) {
      showMessage(`Upload failed: ${err.message}`);
    } finally {
      $("#upload-btn").disabled = false;
    }
  }

  async function createCollection(event) {
    event.preventDefault();
    clearMessage();
    const name = $("#create-name").value.trim();
    const shards = parseInt($("#create-shards").value, 10);
    const body = { name };
    if (shards) body.shards = shards;
    try {
      await apiJson("/v1/collections", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      $("#create-name").value = "";
      await loadCollections(name);
      setCollection(name);
    } catch (err) {
      showMessage(`Create failed: ${err.message}`);
    }
  }

  // ---- readiness -------------------------------------------------------------------------
  async function checkReady() {
    const badge = $("#ready");
    try {
      const response = await fetch("/readyz");
      badge.className = `ready ${response.ok ? "ok" : "bad"}`;
      if (!response.ok) {
        // What /readyz says is missing, e.g. "encode worker: compiling image model ... for batch 8, 32 s".
        const error = (await response.json()).error || {};
        badge.textContent = error.message ? `not ready: ${error.message}` : "not ready";
        badge.title = error.message || "not ready";
      } else {
        badge.textContent = "ready";
        badge.title = "the encode and query workers are ready and every shard has a live owner";
      }
    } catch (_) {
      badge.textContent = "offline";
      badge.className = "ready bad";
    }
  }

  // ---- wiring ----------------------------------------------------------------------------
  function wire() {
    $("#collection").addEventListener("change", (e) => setCollection(e.target.value));
    $("#key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("#api-key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORAGE, key); else sessionStorage.removeItem(KEY_STORAGE);
      $("#api-key").value = "";
      $("#api-key").placeholder = key ? "API key set (type to replace)" : "API key (if the server needs one)";
      clearMessage();
      loadCollections().then(() => pollJobs());
    });
    $("#search-form").addEventListener("submit", (e) => { e.preventDefault(); runSearch(); });
    $("#q-weight").addEventListener("input", showWeights);
    $("#q-weight").addEventListener("change", () => { if (state.queryImage && $("#q-text").value.trim()) runSearch(); });
    $("#q-file").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (file) setQueryImage(file, file.name);
    });
    $("#q-clear").addEventListener("click", clearQueryImage);
    const drop = $("#drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
      if (file) setQueryImage(file, file.name); else showMessage("Drop an image file.");
    });
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#q-file").click(); } });
    document.addEventListener("paste", (e) => {
      const item = [...(e.clipboardData?.items || [])].find((i) => i.kind === "file" && i.type.startsWith("image/"));
      if (item) { e.preventDefault(); setQueryImage(item.getAsFile(), "pasted.png"); }
    });
    $("#upload-form").addEventListener("submit", upload);
    $("#watch-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const id = $("#watch-id").value.trim();
      if (id) { addJob(id, "", `job ${id.slice(0, 8)}`); $("#watch-id").value = ""; }
    });
    $("#create-form").addEventListener("submit", createCollection);
    $("#d-close").addEventListener("click", () => $("#detail").close());
    $("#d-more").addEventListener("click", moreLikeThis);
    $("#detail").addEventListener("click", (e) => { if (e.target === $("#detail")) $("#detail").close(); });
    $("#detail").addEventListener("close", () => { state.detailHit = null; });
  }

  function restoreJobs() {
    let saved = [];
    try { saved = JSON.parse(sessionStorage.getItem(JOBS_STORAGE) || "[]"); } catch (_) { /* ignore */ }
    for (const job of Array.isArray(saved) ? saved : []) {
      if (job && typeof job.id === "string") {
        state.jobs.set(job.id, { id: job.id, collection: job.collection, label: job.label, body: null, row: null });
        renderJob(state.jobs.get(job.id));
      }
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    wire();
    showWeights();
    if (apiKey()) $("#api-key").placeholder = "API key set (type to replace)";
    restoreJobs();
    checkReady();
    setInterval(checkReady, 10000);
    loadCollections().then(() => { document.body.dataset.loaded = "1"; pollJobs(); });
  });
})();
