"use strict";
// Relative URLs, so the page works behind any path prefix the proxy adds.
const form = document.getElementById("upload");
const select = document.getElementById("model-select");
const input = document.getElementById("image");
const imageField = document.getElementById("image-field");
const features = document.getElementById("features");
const textField = document.getElementById("text-field");
const text = document.getElementById("text");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const preview = document.getElementById("preview");
const answer = document.getElementById("answer");
let models = [];

const chosen = () => models.find((m) => m.name === select.value);

function showModel() {
  const model = chosen();
  if (!model) return;
  document.getElementById("model").textContent =
    `Model ${model.name}, version ${model.versions[model.versions.length - 1]}`;
  const image = model.input === "image";
  const isText = model.input === "text";
  imageField.hidden = !image;
  input.required = image;
  preview.hidden = !image || !input.files.length;
  textField.hidden = !isText;
  text.required = isText;
  features.hidden = image || isText;
  features.replaceChildren(Object.assign(document.createElement("legend"), { textContent: "Features" }));
  for (const name of image || isText ? [] : model.features || []) {
    const label = document.createElement("label");
    label.textContent = name;
    const field = Object.assign(document.createElement("input"), { type: "number", step: "any", required: true, name });
    field.dataset.feature = name;
    label.append(field);
    features.append(label);
  }
}

// /readyz, not /metadata: the ops endpoints are private to the monitoring networks.
fetch("readyz").then((r) => r.json()).then((ready) => {
  if (ready.status !== "ready") {
    document.getElementById("model").textContent = `Model ${ready.status}`;
    return;
  }
  models = ready.models || [{ name: ready.model, versions: [ready.version], input: "image" }];
  for (const m of models) {
    select.append(Object.assign(document.createElement("option"), { value: m.name, textContent: m.name }));
  }
  select.disabled = false;
  showModel();
}).catch(() => {});

select.addEventListener("change", showModel);

input.addEventListener("change", () => {
  if (input.files.length) {
    preview.src = URL.createObjectURL(input.files[0]);
    preview.hidden = false;
  }
});

function showRows(rows) {
  for (const [name, value] of rows) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = name;
    const val = document.createElement("span");
    val.className = "prob";
    val.textContent = value;
    li.append(label, val);
    results.append(li);
  }
}

// What a model answers, by its task: top labels, a tag per token, pixels per class, named outputs.
function showAnswer(data) {
  if (data.predictions) {
    statusLine.textContent = `Best prediction: ${data.best_prediction}`;
    statusLine.dataset.label = data.best_prediction;
    showBars(data.predictions);
  } else if (data.tokens) {
    statusLine.textContent = `Tags: ${data.tokens.map((t) => t.tag).join(" ")}`;
    showRows(data.tokens.map((t) => [t.token, `${t.tag} ${(t.probability * 100).toFixed(1)}%`]));
  } else if (data.pixels) {
    statusLine.textContent = "Pixels per class";
    showRows(Object.entries(data.pixels));
  } else {
    statusLine.textContent = "Outputs";
    showRows(Object.entries(data.outputs).map(([k, v]) => [k, v.map((x) => x.toPrecision(4)).join(", ")]));
  }
}

function showBars(predictions) {
  for (const p of predictions) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(p.probability * 100).toFixed(1)}%`;
    bar.append(fill);
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = `${(p.probability * 100).toFixed(1)}%`;
    li.append(label, bar, prob);
    results.append(li);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  results.replaceChildren();
  answer.hidden = true;
  statusLine.className = "";
  statusLine.textContent = "Predicting…";
  const model = chosen();
  const url = model ? `predict?model=${encodeURIComponent(model.name)}` : "predict";
  let request;
  if (!model || model.input === "image") {
    const body = new FormData();
    body.append("image", input.files[0]);
    request = { method: "POST", body };
  } else if (model.input === "text") {
    request = { method: "POST", body: JSON.stringify({ text: text.value }), headers: { "Content-Type": "application/json" } };
  } else {
    const values = {};
    for (const field of features.querySelectorAll("input")) values[field.dataset.feature] = Number(field.value);
    request = { method: "POST", body: JSON.stringify(values), headers: { "Content-Type": "application/json" } };
  }
  try {
    const started = performance.now();
    const response = await fetch(url, request);
    const data = await response.json();
    const elapsed = performance.now() - started;
    if (!response.ok) {
      statusLine.className = "error";
      statusLine.textContent = `Error ${response.status}: ${data.error}`;
      return;
    }
    showAnswer(data);
    // nginx names the app host that answered (a balancer adds its own name after it).
    const servedBy = response.headers.get("X-Served-By");
    document.getElementById("answer-model").textContent = `${data.model.name} version ${data.model.version}`;
    document.getElementById("answer-host").textContent = servedBy ? servedBy.split(",")[0].trim() : "this server";
    document.getElementById("answer-latency").textContent = `${Math.round(elapsed)} ms`;
    answer.hidden = false;
  } catch (err) {
    statusLine.className = "error";
    statusLine.textContent = `Request failed: ${err}`;
  }
});
