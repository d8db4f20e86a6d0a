// The playground: build a fal request from the form, send it through fal's queue API on this
// server, follow its status and logs, then compare input and output. Plain JavaScript, no
// dependencies, nothing fetched from outside this server.
"use strict";

const APP_ID = "fal-ai/chrono-edit-lora-gallery/upscaler";
const OWNER_ALIAS = "fal-ai/chrono-edit-lora-gallery";
const KEY_STORAGE = "chrono-upscaler.api-key";
// fal's list price for one image: $0.02 up to 854×480 output pixels, $0.03 above
const LIST_PRICE_TIER_PIXELS = 854 * 480;
// a data: URI longer than this is shown as a placeholder in the copied snippets
const SNIPPET_INLINE_LIMIT = 300;
const SEED_MARK = "__playground_seed__";
const NUMBER_FIELDS = ["upscale_factor", "num_inference_steps", "guidance_scale", "lora_scale"];
const FIELDS = [
  "image_url", ...NUMBER_FIELDS, "seed", "output_format", "enable_safety_checker",
  "sync_mode", "loras",
];

const $ = (id) => document.getElementById(id);

const state = {
  info: null,
  key: "",
  image: null, // {uri, name, bytes, width, height}
  running: null, // {requestId, controller}
};

// URLs relative to the page, so that the page works behind a path prefix too
function api(path) {
  return new URL(path, document.baseURI).href;
}

function requestPath(requestId) {
  return `queue/${OWNER_ALIAS}/requests/${encodeURIComponent(requestId)}`;
}

function authHeaders() {
  const key = currentKey();
  return key ? { Authorization: `Key ${key}` } : {};
}

function currentKey() {
  return $("api-key").value.trim() || state.key;
}

async function fetchJson(path, options = {}) {
  let response;
  try {
    response = await fetch(api(path), {
      ...options,
      headers: { Accept: "application/json", ...authHeaders(), ...(options.headers || {}) },
    });
  } catch (error) {
    return { ok: false, status: 0, data: null, text: String(error), headers: new Headers() };
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  return { ok: response.ok, status: response.status, data, text, headers: response.headers };
}

// ---------------------------------------------------------------------------- formatting

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MB`;
}

function formatUsd(value) {
  if (value >= 0.01) return `$${value.toFixed(4)}`;
  return `$${value.toPrecision(2)}`;
}

function listPriceUsd(width, height) {
  return width * height <= LIST_PRICE_TIER_PIXELS ? 0.02 : 0.03;
}

// ---------------------------------------------------------------------------- errors

function clearErrors() {
  for (const element of document.querySelectorAll(".error")) element.textContent = "";
  for (const element of document.querySelectorAll("[aria-invalid]")) {
    element.removeAttribute("aria-invalid");
  }
}

function fieldInput(field) {
  if (field === "image_url") {
    return state.image && !state.image.remote ? $("image") : $("image_url_text");
  }
  if (field === "loras") return document.querySelector("#lora-rows select");
  return $(field);
}

function showFieldError(field, message) {
  const slot = $(`err-${field}`);
  if (!slot) return false;
  slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
  const input = fieldInput(field);
  if (input) input.setAttribute("aria-invalid", "true");
  return true;
}

function showGeneralError(message) {
  const slot = $("err-general");
  slot.textContent = slot.textContent ? `${slot.textContent} ${message}` : message;
}

function focusFirstError() {
  const invalid = document.querySelector("[aria-invalid='true']");
  if (invalid) invalid.focus();
}

function retryAfter(response) {
  const value = Number(response.headers.get("Retry-After"));
  return Number.isFinite(value) && value > 0 ? Math.ceil(value) : null;
}

// Show a fal error answer next to the field at fault (by `loc`), or by the Upscale button.
function showErrorResponse(response) {
  const data = response.data || {};
  if (response.status === 0) {
    showGeneralError(`The server could not be reached (${response.text}).`);
    return;
  }
  if (response.status === 401) {
    $("key-section").hidden = false;
    const text = currentKey()
      ? "The server refused this key. Check it and try again."
      : "This deployment needs a key: enter it here.";
    showFieldError("api_key", text);
    $("api-key").focus();
    return;
  }
  if (response.status === 429) {
    const seconds = retryAfter(response);
    showGeneralError(
      "The server is busy: every worker is taken and its queue is full. " +
        (seconds ? `Try again in about ${seconds} s.` : "Try again shortly."),
    );
    return;
  }
  if (response.status === 503) {
    const seconds = retryAfter(response) || 5;
    showGeneralError(`The engine is not ready yet. Try again in ${seconds} s.`);
    return;
  }
  const detail = data.detail;
  if (Array.isArray(detail)) {
    for (const item of detail) {
      const loc = Array.isArray(item.loc) ? item.loc : [];
      const field = loc[0] === "body" && loc.length > 1 ? String(loc[1]) : null;
      const message = item.msg || String(item.type || "invalid");
      if (!(field && FIELDS.includes(field) && showFieldError(field, message))) {
        showGeneralError(`${loc.join(".") || "request"}: ${message}`);
      }
    }
    focusFirstError();
    return;
  }
  const kind = data.error_type ? ` (${data.error_type})` : "";
  showGeneralError(`${typeof detail === "string" ? detail : response.text}${kind}`);
}

// ---------------------------------------------------------------------------- /info

async function loadInfo() {
  const response = await fetchJson("info");
  if (!response.ok) {
    const banner = $("banner");
    banner.hidden = false;
    banner.textContent =
      response.status === 503
        ? "The engine is still loading; this page retries in a moment."
        : `Could not read /info (${response.status || response.text}); retrying.`;
    setTimeout(loadInfo, 2000);
    return;
  }
  $("banner").hidden = true;
  const info = response.data;
  state.info = info;
  const engine = info.engine || {};
  const parts = [`engine <code>${escapeHtml(String(engine.engine || "?"))}</code>`];
  if (engine.device) parts.push(`on ${escapeHtml(String(engine.device))}`);
  parts.push(info.auth_required ? "keys required" : "open (no keys)");
  if (info.limits && info.limits.max_output_pixels) {
    parts.push(`up to ${(info.limits.max_output_pixels / 1e6).toFixed(1)} M output pixels`);
  }
  if (priceOf(info)) parts.push(`device time at $${priceOf(info)}/h`);
  $("deployment").innerHTML = parts.join(" · ");

  for (const [name, value] of Object.entries(info.defaults || {})) {
    const input = $(name);
    if (!input || value === null || value === undefined || value === "None") continue;
    if (input.type === "checkbox") input.checked = String(value).toLowerCase() === "true";
    else input.value = String(value);
  }
  if (info.auth_required) $("key-section").hidden = false;
  if (engine.engine === "sr") {
    const note = $("engine-note");
    note.hidden = false;
    note.textContent =
      "This deployment runs the sr engine: steps, guidance, LoRA scale and the safety checker " +
      "are validated but not used.";
  }
  setUpLoras(info);
  updateImageInfo();
}

function priceOf(info) {
  const price = Number(info && info.gpu_hourly_usd);
  return Number.isFinite(price) && price > 0 ? price : null;
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// LoRAs only from the deployment's catalog (`loras_catalog` in /info); hidden without one
function setUpLoras(info) {
  const catalog = Array.isArray(info.loras_catalog) ? info.loras_catalog : [];
  const supported = !info.engine || info.engine.supports_loras !== false;
  const fieldset = $("loras");
  const rows = $("lora-rows");
  rows.textContent = "";
  if (!catalog.length || !supported) {
    fieldset.hidden = true;
    return;
  }
  fieldset.hidden = false;
  const entries = catalog.map((item) =>
    typeof item === "string"
      ? { path: item, label: item }
      : { path: String(item.path || item.name), label: String(item.name || item.path) },
  );
  for (let index = 0; index < 3; index++) {
    const row = document.createElement("div");
    row.className = "lora-row";
    const select = document.createElement("select");
    select.id = `lora-${index}`;
    select.add(new Option("(none)", ""));
    for (const entry of entries) select.add(new Option(entry.label, entry.path));
    const scale = document.createElement("input");
    Object.assign(scale, { id: `lora-scale-${index}`, type: "number", min: 0, max: 4 });
    scale.step = "0.05";
    scale.value = "1";
    row.append(labelled(select, `LoRA ${index + 1}`), labelled(scale, `Scale ${index + 1}`));
    rows.append(row);
  }
}

function labelled(input, text) {
  const wrapper = document.createElement("div");
  const label = document.createElement("label");
  label.htmlFor = input.id;
  label.textContent = text;
  wrapper.append(label, input);
  return wrapper;
}

// ---------------------------------------------------------------------------- the image

function setImageFromFile(file) {
  clearErrors();
  if (!file) return;
  if (!/^image\/(jpeg|png|webp)$/.test(file.type)) {
    showFieldError("image_url", `${file.name || "This file"} is not a JPEG, PNG or WebP image.`);
  }
  const limit = state.info && state.info.limits && state.info.limits.max_download_bytes;
  if (limit && file.size > limit) {
    showFieldError("image_url", `${formatBytes(file.size)} is over this server's limit.`);
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = { uri: reader.result, name: file.name || "image.png", bytes: file.size };
    $("image_url_text").value = "";
    showPreview(reader.result);
  };
  reader.onerror = () => showFieldError("image_url", "The file could not be read.");
  reader.readAsDataURL(file);
}

function showPreview(src) {
  const preview = $("preview");
  preview.onload = () => {
    if (state.image) {
      state.image.width = preview.naturalWidth;
      state.image.height = preview.naturalHeight;
    }
    updateImageInfo();
  };
  preview.onerror = () => {
    preview.hidden = true;
    updateImageInfo();
  };
  preview.hidden = false;
  preview.src = src;
}

function updateImageInfo() {
  const info = $("image-info");
  const image = state.image;
  if (!image) {
    info.textContent = "";
    return;
  }
  let text = `${image.name}, ${formatBytes(image.bytes)}`;
  if (image.width) {
    text += `, ${image.width}×${image.height}`;
    const factor = Number($("upscale_factor").value);
    if (factor > 0) {
      const width = Math.round(image.width * factor);
      const height = Math.round(image.height * factor);
      text += ` → about ${width}×${height} (fal's list price $${listPriceUsd(width, height).toFixed(2)})`;
    }
  }
  info.textContent = text;
}

function setUpImageInput() {
  const zone = $("dropzone");
  $("image").addEventListener("change", (event) => setImageFromFile(event.target.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) setImageFromFile(file);
  });
  document.addEventListener("paste", (event) => {
    const file = event.clipboardData && event.clipboardData.files[0];
    if (file) setImageFromFile(file);
  });
  $("image_url_text").addEventListener("change", (event) => {
    const url = event.target.value.trim();
    if (!url) return;
    $("image").value = "";
    state.image = { uri: url, name: url.split("/").pop() || "image", bytes: 0, remote: true };
    showPreview(url);
  });
  $("upscale_factor").addEventListener("input", updateImageInfo);
}

// ---------------------------------------------------------------------------- the request

// The request as fal takes it, from the form; null (with errors shown) when it cannot be built.
function buildRequest() {
  const urlText = $("image_url_text").value.trim();
  const imageUrl = urlText || (state.image && state.image.uri);
  if (!imageUrl) {
    showFieldError("image_url", "Choose, drop or paste an image, or give its URL.");
    return null;
  }
  const body = { image_url: imageUrl };
  for (const name of NUMBER_FIELDS) {
    const raw = $(name).value.trim();
    if (raw !== "") body[name] = Number.isFinite(Number(raw)) ? Number(raw) : raw;
  }
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = /^\d+$/.test(seed) ? SEED_MARK : seed;
  body.output_format = $("output_format").value;
  body.enable_safety_checker = $("enable_safety_checker").checked;
  body.sync_mode = $("sync_mode").checked;
  const loras = [];
  for (const select of document.querySelectorAll("#lora-rows select")) {
    if (!select.value) continue;
    const scale = $(select.id.replace("lora-", "lora-scale-")).value.trim();
    loras.push({ path: select.value, scale: scale === "" ? 1 : Number(scale) });
  }
  if (loras.length) body.loras = loras;
  return { body, seed: /^\d+$/.test(seed) ? seed : null };
}

// JSON text of a request; a seed up to 2^64 - 1 is written as digits (a JS number would round it)
function requestJson(request, indent) {
  const text = JSON.stringify(request.body, null, indent);
  return request.seed ? text.replace(`"${SEED_MARK}"`, request.seed) : text;
}

// ---------------------------------------------------------------------------- running it

function setBusy(busy) {
  $("submit").disabled = busy;
  $("submit").textContent = busy ? "Upscaling…" : "Upscale";
  $("cancel").hidden = !busy;
}

async function submit(event) {
  event.preventDefault();
  if (state.running) return;
  clearErrors();
  const request = buildRequest();
  if (!request) {
    focusFirstError();
    return;
  }
  if (state.info && state.info.auth_required && !currentKey()) {
    showFieldError("api_key", "This deployment needs a key: enter it here.");
    $("api-key").focus();
    return;
  }
  rememberKey();
  setBusy(true);
  $("result-section").hidden = true;
  $("progress-section").hidden = false;
  $("logs").textContent = "";
  setProgress("Submitting…", 0);
  const started = performance.now();
  try {
    await run(request, started);
  } finally {
    state.running = null;
    setBusy(false);
  }
}

async function run(request, started) {
  const submitted = await fetchJson(`queue/${APP_ID}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: requestJson(request),
  });
  if (!submitted.ok) {
    setProgress("Not submitted.", 0);
    showErrorResponse(submitted);
    return;
  }
  const requestId = submitted.data.request_id;
  state.running = { requestId, controller: new AbortController() };
  showStatus({ status: "IN_QUEUE", queue_position: submitted.data.queue_position, logs: [] });
  const final = await follow(requestId);
  if (!final) return;
  const result = await fetchJson(requestPath(requestId));
  if (!result.ok) {
    if (!final.error) setProgress(`Failed (HTTP ${result.status}).`, $("progress").value);
    showErrorResponse(result);
    return;
  }
  await showResult(request, result, final, (performance.now() - started) / 1000);
}

// Follow the request until COMPLETED: the SSE stream (read with fetch, so it can carry the key),
// else polling ?logs=1. Returns the final status document, or null after an error was shown.
async function follow(requestId) {
  const path = requestPath(requestId);
  try {
    const response = await fetch(api(`${path}/status/stream?logs=1`), {
      headers: { Accept: "text/event-stream", ...authHeaders() },
      signal: state.running.controller.signal,
    });
    if (response.status === 401) {
      showErrorResponse({ ok: false, status: 401, data: null, headers: response.headers });
      return null;
    }
    if (response.ok && response.body) {
      const final = await readEvents(response.body);
      if (final) return final;
    }
  } catch {
    // fall back to polling below
  }
  return poll(path);
}

async function readEvents(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      const document_ = JSON.parse(data);
      showStatus(document_); // each event carries only the new log lines
      if (document_.status === "COMPLETED") {
        reader.cancel().catch(() => {});
        return document_;
      }
    }
  }
}

async function poll(path) {
  let seen = 0;
  $("logs").textContent = ""; // polling sends every line again
  for (;;) {
    const response = await fetchJson(`${path}/status?logs=1`);
    if (!response.ok) {
      showErrorResponse(response);
      return null;
    }
    const document_ = response.data;
    const logs = document_.logs || [];
    showStatus({ ...document_, logs: logs.slice(seen) });
    seen = logs.length;
    if (document_.status === "COMPLETED") return document_;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

const progressState = { unit: null, done: 0, total: 0 };

function setProgress(text, fraction) {
  $("status").textContent = text;
  $("progress").value = fraction;
}

function showStatus(document_) {
  const list = $("logs");
  for (const line of document_.logs || []) {
    const item = document.createElement("li");
    item.textContent = line.message;
    if (line.level && line.level !== "INFO") item.className = line.level.toLowerCase();
    list.append(item);
    const match = /^(tile|step) (\d+)\/(\d+)$/.exec(line.message);
    if (match) {
      progressState.unit = match[1];
      progressState.done = Number(match[2]);
      progressState.total = Number(match[3]);
    }
  }
  list.scrollTop = list.scrollHeight;
  if (document_.status === "IN_QUEUE") {
    progressState.unit = null;
    const position = document_.queue_position;
    setProgress(
      position === 0
        ? "In the queue: next to run."
        : `In the queue: position ${position} (${position} ahead of this request).`,
      0,
    );
  } else if (document_.status === "IN_PROGRESS") {
    const { unit, done, total } = progressState;
    setProgress(
      unit ? `Running: ${unit} ${done}/${total}` : "Running…",
      unit && total ? done / total : 0,
    );
  } else if (document_.status === "COMPLETED") {
    setProgress(
      document_.error ? `Failed: ${document_.error}` : "Completed.",
      document_.error ? $("progress").value : 1,
    );
  }
}

async function cancel() {
  if (!state.running) return;
  await fetchJson(`${requestPath(state.running.requestId)}/cancel`, { method: "PUT" });
}

// ---------------------------------------------------------------------------- the result

async function showResult(request, result, final, wallSeconds) {
  const image = result.data.images[0];
  const after = $("after");
  const before = $("before");
  after.src = image.url;
  before.src = request.body.image_url;
  $("compare").style.width = `${image.width}px`;
  try {
    await Promise.all([after.decode(), before.decode()]);
  } catch {
    // the facts below still hold; a broken image shows as such
  }
  $("result-section").hidden = false;
  updateCompare();

  const seedMatch = /"seed"\s*:\s*(\d+)/.exec(result.text);
  const inference = final.metrics && final.metrics.inference_time;
  const price = priceOf(state.info);
  const facts = [
    ["Output", `${image.width}×${image.height} px, ${image.content_type}, ${formatBytes(image.file_size)}`],
  ];
  if (before.naturalWidth) {
    facts.push(["Input", `${before.naturalWidth}×${before.naturalHeight} px`]);
  }
  facts.push(["Seed", seedMatch ? seedMatch[1] : String(result.data.seed)]);
  facts.push([
    "Time",
    (inference ? `${inference.toFixed(2)} s on the engine, ` : "") +
      `${wallSeconds.toFixed(2)} s in all (queue, upload and download included)`,
  ]);
  if (price && inference) {
    facts.push(["Cost", `${formatUsd((inference * price) / 3600)} of device time at $${price}/h`]);
  }
  facts.push([
    "fal list price",
    `$${listPriceUsd(image.width, image.height).toFixed(2)} ` +
      "($0.02 per image up to 854×480 output pixels, $0.03 above)",
  ]);
  const list = $("facts");
  list.textContent = "";
  for (const [name, value] of facts) {
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = value;
    detail.dataset.fact = name.toLowerCase().replace(/\s+/g, "-");
    list.append(term, detail);
  }
  const download = $("download");
  download.href = image.url;
  download.download = image.file_name;
  download.textContent = `Download ${image.file_name}`;
  $("result-section").scrollIntoView({ block: "start" });
}

function updateCompare() {
  $("compare").style.setProperty("--pos", `${$("compare-range").value}%`);
}

// ---------------------------------------------------------------------------- snippets

function snippetRequest() {
  clearErrors();
  const request = buildRequest();
  if (!request) return null;
  const image = request.body.image_url;
  const inline = image.length <= SNIPPET_INLINE_LIMIT;
  return { request, inline, fileName: (state.image && state.image.name) || "photo.png" };
}

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function curlSnippet({ request, inline, fileName }) {
  const copy = { ...request, body: { ...request.body } };
  const lines = [];
  if (!inline) {
    copy.body.image_url = "IMAGE_URL";
    lines.push(
      `# IMAGE_URL: an https URL, or a data: URI of ${fileName}, e.g.`,
      `#   "data:${mimeOf(fileName)};base64,$(base64 -w0 ${shellQuote(fileName)})"`,
    );
  }
  const json = requestJson(copy, 2);
  const auth = state.info && state.info.auth_required;
  lines.push(
    "# synchronous: one call, the answer is the result",
    `curl -s -X POST ${shellQuote(api(APP_ID))} \\`,
    "  -H 'Content-Type: application/json' \\",
  );
  if (auth) lines.push('  -H "Authorization: Key $FAL_KEY" \\');
  lines.push(`  -d ${shellQuote(json)}`);
  lines.push(`# queued, as this page does: POST ${api(`queue/${APP_ID}`)}`);
  return lines.join("\n");
}

function mimeOf(fileName) {
  const extension = fileName.split(".").pop().toLowerCase();
  return { jpg: "image/jpeg", jpeg: "image/jpeg", webp: "image/webp" }[extension] || "image/png";
}

function pythonValue(value, indent) {
  if (value === true) return "True";
  if (value === false) return "False";
  if (value === null) return "None";
  if (Array.isArray(value)) {
    const pad = " ".repeat(indent + 4);
    const items = value.map((item) => `${pad}${pythonValue(item, indent + 4)},`);
    return `[\n${items.join("\n")}\n${" ".repeat(indent)}]`;
  }
  if (typeof value === "object") {
    const parts = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pythonValue(v, indent)}`);
    return `{${parts.join(", ")}}`;
  }
  return JSON.stringify(value);
}

function pythonSnippet({ request, inline, fileName }) {
  const host = new URL(api("")).host + new URL(api("")).pathname.replace(/\/$/, "");
  const auth = state.info && state.info.auth_required;
  const fields = Object.entries(request.body).map(([name, value]) => {
    let text;
    if (name === "image_url" && !inline) text = `fal_client.encode_file(${JSON.stringify(fileName)})`;
    else if (name === "seed" && request.seed) text = request.seed;
    else text = pythonValue(value, 8);
    return `        ${JSON.stringify(name)}: ${text},`;
  });
  return [
    "import os",
    "",
    "# fal-client reads these when it is imported, and speaks https only: serve with",
    "# --tls-cert/--tls-key, or reach the server through an ingress that terminates TLS",
    `os.environ["FAL_RUN_HOST"] = ${JSON.stringify(host)}`,
    `os.environ["FAL_QUEUE_RUN_HOST"] = ${JSON.stringify(`${host}/queue`)}`,
    auth
      ? 'os.environ.setdefault("FAL_KEY", "<your key>")'
      : 'os.environ.setdefault("FAL_KEY", "unused")  # this deployment has no keys',
    "",
    "import fal_client",
    "",
    "result = fal_client.subscribe(",
    `    ${JSON.stringify(APP_ID)},`,
    "    arguments={",
    ...fields,
    "    },",
    "    with_logs=True,",
    "    on_queue_update=print,",
    ")",
    'print(result["images"][0]["url"][:100])',
  ].join("\n");
}

async function copySnippet(kind) {
  const snippet = snippetRequest();
  if (!snippet) {
    focusFirstError();
    return;
  }
  const text = kind === "curl" ? curlSnippet(snippet) : pythonSnippet(snippet);
  $("snippet-box").hidden = false;
  $("snippet").textContent = text;
  const label = kind === "curl" ? "curl command" : "Python (fal-client)";
  try {
    await navigator.clipboard.writeText(text);
    $("snippet-status").textContent = `Copied the ${label} to the clipboard.`;
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("snippet"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("snippet-status").textContent = `The ${label} is below, selected: copy it with Ctrl+C.`;
  }
  $("snippet").focus();
}

// ---------------------------------------------------------------------------- keys

function rememberKey() {
  const key = $("api-key").value.trim();
  state.key = key;
  if ($("remember-key").checked && key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

function setUpKey() {
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    $("api-key").value = saved;
    $("remember-key").checked = true;
    state.key = saved;
  }
  $("api-key").addEventListener("change", rememberKey);
  $("remember-key").addEventListener("change", rememberKey);
}

// ---------------------------------------------------------------------------- start

async function probeDocs() {
  try {
    const response = await fetch(api("docs"));
    if (response.ok) $("docs-link").hidden = false;
  } catch {
    // no /docs on this deployment: the schema link stays
  }
}

function start() {
  setUpKey();
  setUpImageInput();
  $("request").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  $("copy-curl").addEventListener("click", () => copySnippet("curl"));
  $("copy-python").addEventListener("click", () => copySnippet("python"));
  $("compare-range").addEventListener("input", updateCompare);
  $("actual-pixels").addEventListener("change", (event) => {
    $("compare").classList.toggle("actual", event.target.checked);
  });
  for (const name of FIELDS) {
    const input = $(name);
    if (input) input.addEventListener("input", () => {
      input.removeAttribute("aria-invalid");
      const slot = $(`err-${name}`);
      if (slot) slot.textContent = "";
    });
  }
  loadInfo();
  probeDocs();
}

start();
