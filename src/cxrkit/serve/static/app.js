// cxrkit web page: uploads files to /v1/predict one request per file, shows each result as it arrives.
"use strict";
const $ = (id) => document.getElementById(id);
const statusLine = $("status");

function headers() {
  const key = $("api-key").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// The answer's JSON, or an error saying what came back: a proxy in front of the service may answer an HTML page (413, 502).
async function readJson(res) {
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON: reported below */ }
  if (res.ok && data) return data;
  if (data && data.error) throw new Error(data.error.message);
  throw new Error(`HTTP ${res.status}${res.statusText ? " " + res.statusText : ""}${data ? "" : ": the server's answer is not the service's JSON"}`);
}

async function predictOne(file) {
  const explain = $("explain").checked;
  const body = new FormData();
  body.append("files", file, file.name);
  let res = await fetch(`/v1/predict?preview=true&explain=${explain}`, { method: "POST", body, headers: headers() });
  let note = "";
  if (res.status === 501 && explain) {  // heat maps not installed: answer without them
    note = "Heat maps are not available on this server.";
    res = await fetch("/v1/predict?preview=true", { method: "POST", body, headers: headers() });
  }
  const data = await readJson(res);
  return { result: data.results[0], model: data.model, note };
}

// A binary run has one threshold, a multi-label run one per finding ({finding: threshold}), a multiclass run none.
function thresholdText(t) {
  if (typeof t === "number") return ` (threshold ${t.toFixed(3)})`;
  if (t && typeof t === "object") return ` (thresholds ${Object.entries(t).map(([c, v]) => `${c} ${Number(v).toFixed(3)}`).join(", ")})`;
  return "";
}

// Red for the disease or a finding, amber for "refer" (a reader decides), green only for a binary run's negative class;
// "refer" and a multi-label run's findings were shown in the green of "healthy".
function decisionStyle(decision, pos) {
  if (decision.label === "refer") return "refer";
  if (pos) return decision.label === pos ? "positive" : "negative";
  if (decision.rule === "per-finding thresholds") return decision.label ? "positive" : "negative";
  return "neutral";
}

function showResult(file, { result, model, note }) {
  const pos = result.decision.positive_class;
  const img = el("img", { src: `data:image/png;base64,${result.image_png}`, alt: `X-ray ${file.name} as the model sees it` });
  const facts = el("div", { class: "facts" });
  facts.append(el("h3", {}, file.name));
  facts.append(el("p", { class: `${decisionStyle(result.decision, pos)} decision` }, result.decision.words));
  const probs = el("ul", { class: "probabilities" });
  for (const [c, p] of Object.entries(result.probabilities)) probs.append(el("li", {}, `P(${c}) = ${p.toFixed(3)}`));
  facts.append(probs);
  facts.append(el("p", {}, `Rule: ${result.decision.rule}` + thresholdText(result.decision.threshold) +
    `; probabilities ${result.calibrated ? "calibrated" : "not calibrated"}; model ${model.id} v${model.version}`));
  if (result.ood_warning) facts.append(el("p", { class: "ood", role: "alert" },
    "This image looks unlike the training images: " + result.ood_findings.join("; ")));
  else if (result.ood_warning === null) facts.append(el("p", { class: "ood" },
    "Not checked against the training images: this model has no record of them, so an unusual image is not flagged."));
  if (result.overlay_png) {
    const id = `overlay-${Math.random().toString(36).slice(2)}`;
    const toggle = el("input", { type: "checkbox", id, class: "overlay-toggle" });
    toggle.addEventListener("change", () => {
      img.src = `data:image/png;base64,${toggle.checked ? result.overlay_png : result.image_png}`;
      img.alt = `X-ray ${file.name}${toggle.checked ? " with heat-map overlay" : ""}`;
    });
    facts.append(el("p", {}, toggle, " ", el("label", { for: id }, "Show heat-map overlay")));
  } else if (note) {
    facts.append(el("p", { class: "muted" }, note));
  }
  $("results").prepend(el("li", { class: "result" }, img, facts));
}

async function handleFiles(files) {
  const list = Array.from(files);
  let failed = 0;
  for (const [i, file] of list.entries()) {
    statusLine.textContent = `Classifying ${file.name} (${i + 1} of ${list.length})…`;
    try {
      const out = await predictOne(file);
      showResult(file, out);
      recordRow(file, out, null);
    } catch (err) {
      failed += 1;
      $("results").prepend(el("li", { class: "result error", role: "alert" }, `${file.name}: ${err.message}`));
      recordRow(file, null, err.message);
    }
  }
  statusLine.textContent = `Done: ${list.length} file${list.length === 1 ? "" : "s"}${failed ? `, ${failed} not classified (see below)` : ""}.`;
}

async function loadSample() {
  statusLine.textContent = "Loading the synthetic sample…";
  let blob;
  try {
    const res = await fetch("/v1/sample.png", { headers: headers() });
    if (!res.ok) await readJson(res);  // throws the service's reason (a missing API key, say)
    blob = await res.blob();
  } catch (err) {
    $("results").prepend(el("li", { class: "result error", role: "alert" }, `The synthetic sample could not be loaded: ${err.message}`));
    statusLine.textContent = "The synthetic sample could not be loaded.";
    return;
  }
  await handleFiles([new File([blob], "synthetic-sample.png", { type: "image/png" })]);
}

// One row per file shown, for the CSV download (the page keeps nothing else).
const rows = [];

function csvCell(v) {
  let t = v === null || v === undefined ? "" : String(v);
  // A file named =HYPERLINK(...).png would run as a formula in a spreadsheet (OWASP CSV injection): quoted as text.
  if (/^[=+\-@\t\r]/.test(t)) t = `'${t}`;
  return /[",\n\r]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
}

function resultsCsv() {
  const classes = [...new Set(rows.flatMap((r) => Object.keys(r.probabilities || {})))];
  const head = ["file", "decision", "label", ...classes.map((c) => `p_${c}`), "threshold", "rule", "calibrated", "ood_warning", "error", "model_id", "model_version"];
  const lines = [head];
  for (const r of rows) {
    lines.push([r.file, r.words, r.label, ...classes.map((c) => (r.probabilities && c in r.probabilities ? r.probabilities[c].toFixed(6) : "")),
      r.threshold, r.rule, r.calibrated, r.ood, r.error, r.modelId, r.modelVersion]);
  }
  return lines.map((l) => l.map(csvCell).join(",")).join("\r\n") + "\r\n";
}

function downloadCsv() {
  const url = URL.createObjectURL(new Blob([resultsCsv()], { type: "text/csv" }));
  const a = el("a", { href: url, download: "cxrkit-results.csv" });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// A multi-label run's thresholds ({finding: threshold}) as "finding=threshold; …", not "[object Object]".
function csvThreshold(t) {
  return t && typeof t === "object" ? Object.entries(t).map(([c, v]) => `${c}=${v}`).join("; ") : t;
}

function recordRow(file, out, error) {
  if (error) rows.push({ file: file.name, error });
  else {
    const { result, model } = out;
    rows.push({ file: file.name, words: result.decision.words, label: result.decision.label, probabilities: result.probabilities,
      threshold: csvThreshold(result.decision.threshold), rule: result.decision.rule, calibrated: result.calibrated, ood: result.ood_warning,
      error: "", modelId: model.id, modelVersion: model.version });
  }
  $("download-csv").hidden = false;
  $("download-csv").textContent = `Download results as CSV (${rows.length} file${rows.length === 1 ? "" : "s"})`;
}

function cell(entry) {
  // "text" is the server's wording ("92.3% (95% CI 81.0–97.0%)"); the interval goes on its own line to keep columns narrow.
  if (!entry || !entry.text) return el("td", {}, "–");
  const m = entry.text.match(/^(.*?) \((95% CI .*)\)$/);
  return m ? el("td", {}, m[1], el("br"), el("span", { class: "ci" }, m[2])) : el("td", {}, entry.text);
}

async function loadCard() {
  const box = $("model-card");
  let card;
  try {
    card = await readJson(await fetch("/v1/model", { headers: headers() }));
  } catch (err) {
    box.replaceChildren(el("p", { role: "alert" }, `The model card could not be loaded: ${err.message}`));
    return;
  }
  $("model-name").textContent = `${card.model.id} (${card.model.architecture}, v${card.model.version})`;
  box.replaceChildren();
  box.append(el("p", {}, card.intended_use));
  box.append(el("p", {}, `Decision: ${card.decision.words}.`));
  const counts = card.training_data.counts || {};
  const splitWords = { train: "training", val: "validation", test: "test" };
  box.append(el("p", {}, `Training data: ${card.training_data.dataset || "unnamed dataset"} — ` +
    Object.entries(counts).map(([s, c]) => `${splitWords[s] || s}: ${Object.entries(c).map(([k, v]) => `${v} ${k}`).join(", ")}`).join("; ")));
  // Rows are metrics and columns are splits: two or three narrow columns fit a phone, five metric columns did not.
  const splits = Object.entries(card.metrics);
  const names = new Map();
  for (const [, m] of splits) for (const [k, v] of Object.entries(m)) if (v && typeof v === "object" && "text" in v) names.set(k, v.name);
  const table = el("table", { class: "metrics" }, el("caption", {}, "Metrics stored with the model, with 95% confidence intervals"));
  table.append(el("tr", {}, el("th", { scope: "col" }, "measure"),
    ...splits.map(([s, m]) => el("th", { scope: "col" }, `${m.split_name || s} (${m.n} images)`))));
  for (const [k, name] of names) table.append(el("tr", {}, el("th", { scope: "row" }, name), ...splits.map(([, m]) => cell(m[k]))));
  box.append(el("div", { class: "table-wrap" }, table));
  const lim = el("ul", {});
  for (const l of card.limitations) lim.append(el("li", {}, l));
  box.append(el("h3", {}, "Limitations"), lim);
}

const drop = $("drop-zone");
drop.addEventListener("click", () => $("files").click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("files").click(); } });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFiles(e.dataTransfer.files); });
$("files").addEventListener("change", (e) => {
  const files = Array.from(e.target.files);
  e.target.value = "";  // else choosing the same file again is no change, and nothing happens
  handleFiles(files);
});
$("sample-button").addEventListener("click", loadSample);
$("download-csv").addEventListener("click", downloadCsv);
$("api-key").addEventListener("change", loadCard);
loadCard();
