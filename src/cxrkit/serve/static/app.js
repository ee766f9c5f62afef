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
  const data = await res.json();
  if (!res.ok) throw new Error(data.error ? data.error.message : `HTTP ${res.status}`);
  return { result: data.results[0], model: data.model, note };
}

function showResult(file, { result, model, note }) {
  const pos = result.decision.positive_class;
  const img = el("img", { src: `data:image/png;base64,${result.image_png}`, alt: `X-ray ${file.name} as the model sees it` });
  const facts = el("div", { class: "facts" });
  facts.append(el("h3", {}, file.name));
  const isPos = pos && result.decision.label === pos;
  facts.append(el("p", { class: isPos ? "positive decision" : "negative decision" }, result.decision.words));
  const probs = el("ul", { class: "probabilities" });
  for (const [c, p] of Object.entries(result.probabilities)) probs.append(el("li", {}, `P(${c}) = ${p.toFixed(3)}`));
  facts.append(probs);
  facts.append(el("p", {}, `Rule: ${result.decision.rule}` +
    (result.decision.threshold !== null ? ` (threshold ${result.decision.threshold.toFixed(3)})` : "") +
    `; probabilities ${result.calibrated ? "calibrated" : "not calibrated"}; model ${model.id} v${model.version}`));
  if (result.ood_warning) facts.append(el("p", { class: "ood", role: "alert" },
    "This image looks unlike the training images: " + result.ood_findings.join("; ")));
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
  for (const [i, file] of list.entries()) {
    statusLine.textContent = `Classifying ${file.name} (${i + 1} of ${list.length})…`;
    try {
      showResult(file, await predictOne(file));
    } catch (err) {
      $("results").prepend(el("li", { class: "result error", role: "alert" }, `${file.name}: ${err.message}`));
    }
  }
  statusLine.textContent = `Done: ${list.length} file(s).`;
}

async function loadSample() {
  statusLine.textContent = "Loading the synthetic sample…";
  const res = await fetch("/v1/sample.png", { headers: headers() });
  const blob = await res.blob();
  await handleFiles([new File([blob], "synthetic-sample.png", { type: "image/png" })]);
}

function fmt(entry) {
  if (!entry || entry.value === null || entry.value === undefined) return "–";
  const ci = entry.ci95 ? ` (95% CI ${entry.ci95[0].toFixed(3)}–${entry.ci95[1].toFixed(3)})` : "";
  return `${entry.value.toFixed(3)}${ci}`;
}

async function loadCard() {
  const box = $("model-card");
  const res = await fetch("/v1/model", { headers: headers() });
  const card = await res.json();
  if (!res.ok) { box.textContent = card.error ? card.error.message : `HTTP ${res.status}`; return; }
  $("model-name").textContent = `${card.model.id} (${card.model.architecture}, v${card.model.version})`;
  box.replaceChildren();
  box.append(el("p", {}, card.intended_use));
  box.append(el("p", {}, `Decision: ${card.decision.words}.`));
  const counts = card.training_data.counts || {};
  box.append(el("p", {}, `Training data: ${card.training_data.dataset} — ` +
    Object.entries(counts).map(([s, c]) => `${s}: ${Object.entries(c).map(([k, v]) => `${v} ${k}`).join(", ")}`).join("; ")));
  const table = el("table", {}, el("caption", {}, "Metrics stored with the model"));
  const keys = new Set();
  for (const m of Object.values(card.metrics)) for (const k of Object.keys(m)) if (!["n", "data", "shift_check"].includes(k)) keys.add(k);
  table.append(el("tr", {}, el("th", { scope: "col" }, "split"), el("th", { scope: "col" }, "n"), ...[...keys].map((k) => el("th", { scope: "col" }, k))));
  for (const [split, m] of Object.entries(card.metrics)) table.append(el("tr", {}, el("th", { scope: "row" }, split), el("td", {}, m.n), ...[...keys].map((k) => el("td", {}, fmt(m[k])))));
  box.append(table);
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
$("files").addEventListener("change", (e) => handleFiles(e.target.files));
$("sample-button").addEventListener("click", loadSample);
$("api-key").addEventListener("change", loadCard);
loadCard();
