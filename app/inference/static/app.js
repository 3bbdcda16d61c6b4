"use strict";
// Relative URLs, so the page works behind any path prefix the proxy adds.
const form = document.getElementById("upload");
const input = document.getElementById("image");
const statusLine = document.getElementById("status");
const results = document.getElementById("results");
const preview = document.getElementById("preview");

// /readyz, not /metadata: the ops endpoints are private to the monitoring networks.
fetch("readyz").then((r) => r.json()).then((ready) => {
  document.getElementById("model").textContent =
    ready.status === "ready" ? `Model ${ready.model}, version ${ready.version}` : `Model ${ready.status}`;
}).catch(() => {});

input.addEventListener("change", () => {
  if (input.files.length) {
    preview.src = URL.createObjectURL(input.files[0]);
    preview.hidden = false;
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  results.replaceChildren();
  statusLine.className = "";
  statusLine.textContent = "Predicting…";
  const body = new FormData();
  body.append("image", input.files[0]);
  try {
    const response = await fetch("predict", { method: "POST", body });
    const data = await response.json();
    if (!response.ok) {
      statusLine.className = "error";
      statusLine.textContent = `Error ${response.status}: ${data.error}`;
      return;
    }
    statusLine.textContent = `Best prediction: ${data.best_prediction}`;
    statusLine.dataset.label = data.best_prediction;
    for (const p of data.predictions) {
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
  } catch (err) {
    statusLine.className = "error";
    statusLine.textContent = `Request failed: ${err}`;
  }
});
