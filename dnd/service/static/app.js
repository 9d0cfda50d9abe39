// The page calls the public API only: GET /v1/model, POST /predict?explain=true, POST /explain.
"use strict";
const $ = (id) => document.getElementById(id);
let pathUrl = null;

async function apiError(res) {
  try {
    const body = await res.json();
    const e = body.error;
    return typeof e === "string" ? e : `${e.message} (${e.code}, HTTP ${e.status})`;
  } catch (_) {
    return `HTTP ${res.status}`;
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function loadModel() {
  const res = await fetch("/v1/model");
  if (!res.ok) { $("model").textContent = `Model not ready: ${await apiError(res)}`; return; }
  const m = await res.json();
  $("model").textContent = `Model ${m.name}; flags images whose attack score is over ${m.threshold.toFixed(2)}.`;
}

async function loadSamples() {
  const res = await fetch("/v1/samples");
  if (!res.ok) return;
  const { samples } = await res.json();
  $("samples-hint").hidden = samples.length === 0;
  for (const s of samples) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.kind = s.kind;
    b.innerHTML = `<img src="${s.url}" alt="">${s.caption}`;
    b.addEventListener("click", async () => {
      const blob = await (await fetch(s.url)).blob();
      classify(blob, "image/png");
    });
    $("samples").appendChild(b);
  }
}

async function classify(blob, type) {
  $("error").hidden = true;
  const headers = { "content-type": type || blob.type || "application/octet-stream" };
  const res = await fetch("/predict?explain=true", { method: "POST", body: blob, headers });
  if (!res.ok) { $("result").hidden = true; showError(await apiError(res)); return; }
  const p = (await res.json()).predictions[0];
  $("preview").src = URL.createObjectURL(blob);
  $("label").textContent = p.label;
  $("confidence").textContent = `${(100 * p.probabilities[p.label]).toFixed(1)}%`;
  $("verdict").textContent = p.is_adversarial ? "Flagged as adversarial" : "Not flagged";
  $("verdict").className = p.is_adversarial ? "flagged" : "clean";
  const lo = Math.min(p.attack_score, p.threshold) - 4, hi = Math.max(p.attack_score, p.threshold) + 4;
  const pos = (v) => `${(100 * (v - lo)) / (hi - lo)}%`;
  $("score-bar").style.width = pos(p.attack_score);
  $("threshold-mark").style.left = pos(p.threshold);
  $("score-text").textContent = `attack score ${p.attack_score.toFixed(2)}, threshold ${p.threshold.toFixed(2)}` +
    (p.resized_from ? `; resized from ${p.resized_from[0]}x${p.resized_from[1]}` : "");
  $("probs").innerHTML = "";
  for (const [name, v] of Object.entries(p.probabilities).sort((a, b) => b[1] - a[1])) {
    const li = document.createElement("li");
    li.innerHTML = `<span></span><div class="bar" style="width:${(100 * v).toFixed(1)}%"></div><span></span>`;
    li.children[0].textContent = name;
    li.children[2].textContent = `${(100 * v).toFixed(1)}%`;
    $("probs").appendChild(li);
  }
  const svg = await fetch("/explain", { method: "POST", body: blob, headers });
  if (svg.ok) {
    if (pathUrl) URL.revokeObjectURL(pathUrl);
    pathUrl = URL.createObjectURL(await svg.blob());
    $("path-img").src = pathUrl;
  } else {
    showError(await apiError(svg));
  }
  $("result").hidden = false;
}

const drop = $("drop");
$("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) classify(f, f.type); });
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) classify(f, f.type);
});
loadModel();
loadSamples();
