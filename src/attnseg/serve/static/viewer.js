// attnseg viewer: upload a file, show the server's slice PNGs (image + RGBA mask), the legend and the downloads.
// The server renders every slice (docs/serve.md); this script only swaps <img> sources and sets the overlay opacity.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, result: null };

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function formatSize(size, unit) {
  if (unit === "ml") return size >= 100 ? size.toFixed(0) : size >= 1 ? size.toFixed(1) : size.toFixed(2);
  return size >= 100 ? size.toFixed(0) : size.toFixed(1);
}

async function loadInfo() {
  try {
    const response = await fetch("/api/info");
    state.info = await response.json();
  } catch (err) {
    showError(`the server does not answer (${err.message}); is attnseg serve still running?`);
    return;
  }
  const info = state.info;
  $("run-info").textContent = `run ${info.run || "?"} · model ${info.model || "?"} · trained on ${info.data}`;
  const mb = info.max_upload_bytes / 2 ** 20;
  $("accepted").textContent = `${info.accepted}; up to ${mb >= 10 ? mb.toFixed(0) : mb.toFixed(2)} MB`;
}

async function upload(file) {
  clearError();
  if (state.info && file.size > state.info.max_upload_bytes) {
    const mb = (file.size / 2 ** 20).toFixed(1);
    const limit = (state.info.max_upload_bytes / 2 ** 20).toFixed(2).replace(/\.?0+$/, "");
    showError(`${file.name}: ${mb} MB is above the upload limit of ${limit} MB (attnseg serve --max-upload-mb)`);
    return;
  }
  const previous = state.result;
  $("status").textContent = `segmenting ${file.name}…`;
  $("file").disabled = true;
  let response;
  try {
    response = await fetch(`/api/predict?name=${encodeURIComponent(file.name)}`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream" },
      body: file,
    });
  } catch (err) {
    showError(`${file.name}: the upload failed (${err.message})`);
    return;
  } finally {
    $("file").disabled = false;
    $("file").value = "";
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : `server error (HTTP ${response.status}); the traceback is in the server's log`;
    showError(why);
    return;
  }
  if (previous) fetch(`/api/results/${previous.token}`, { method: "DELETE" });  // its files leave the server
  show(body);
}

function show(result) {
  state.result = result;
  $("status").textContent = `${result.name}: segmented in ${result.seconds.toFixed(1)} s`;
  $("result").hidden = false;
  $("result-name").textContent = result.name;
  const shape = result.shape.join(" × ");
  const spacing = result.spacing.map((s) => +s.toFixed(3)).join(" × ");
  $("result-info").textContent = `${result.kind === "volume" ? "volume" : "2D image"} ${shape}, spacing ${spacing} mm`;
  const [rowMm, colMm] = result.pixel_mm;
  const stack = $("stack");
  const [rows, cols] = result.display_shape;
  stack.style.aspectRatio = `${cols * colMm} / ${rows * rowMm}`;
  const slider = $("slice");
  slider.max = String(result.slices - 1);
  slider.value = String(result.slice);
  $("slice-control").hidden = result.slices < 2;
  fillLegend(result);
  fillDownloads(result);
  showSlice(result.slice);
}

function fillLegend(result) {
  const body = $("legend").querySelector("tbody");
  body.replaceChildren();
  const volume = result.unit === "ml";
  $("size-head").textContent = volume ? "volume (ml)" : "area (mm²)";
  for (const label of result.labels) {
    const row = document.createElement("tr");
    row.dataset.label = label.name;
    row.dataset.value = String(label.value);
    if (label.voxels === 0) row.classList.add("absent");
    const swatchCell = document.createElement("td");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = label.color;
    swatchCell.append(swatch);
    const name = document.createElement("td");
    name.textContent = label.name;
    const size = document.createElement("td");
    size.className = "size";
    size.dataset.label = label.name;
    size.dataset.voxels = String(label.voxels);
    size.dataset[volume ? "volumeMl" : "areaMm2"] = String(label.size);
    size.textContent = formatSize(label.size, result.unit);
    size.title = `${label.voxels} ${volume ? "voxels" : "pixels"}`;
    row.append(swatchCell, name, size);
    body.append(row);
  }
  $("size-note").textContent = volume
    ? "voxels × voxel volume, on the input's grid"
    : "pixels × pixel area; PNG/JPEG have unit spacing (1 pixel = 1 mm²)";
}

function fillDownloads(result) {
  const box = $("downloads");
  box.replaceChildren();
  const names = { nifti: "NIfTI", png: "PNG", "dicom-seg": "DICOM SEG", rtstruct: "RT Structure Set" };
  for (const item of result.downloads) {
    const link = document.createElement("a");
    link.href = item.url;
    link.download = item.filename;
    link.dataset.format = item.format;
    link.textContent = names[item.format] || item.format;
    link.title = item.filename;
    box.append(link);
  }
  const missing = Object.entries(result.unavailable || {}).map(([fmt, why]) => `${fmt}: ${why}`);
  $("unavailable").textContent = missing.join("; ");
}

function showSlice(index) {
  const result = state.result;
  const stack = $("stack");
  stack.dataset.state = "loading";
  stack.dataset.slice = String(index);
  $("slice-index").textContent = `${index + 1} / ${result.slices}`;
  const base = `/api/results/${result.token}/slices/${index}`;
  const pending = [$("image"), $("overlay")].map(
    (img) => new Promise((resolve, reject) => {
      img.onload = resolve;
      img.onerror = reject;
    }),
  );
  $("image").src = `${base}/image.png`;
  $("overlay").src = `${base}/mask.png`;
  Promise.all(pending).then(
    () => {
      if (stack.dataset.slice === String(index) && state.result === result) stack.dataset.state = "ready";
    },
    () => showError("a slice could not be loaded; the result may have been removed from the server (upload again)"),
  );
}

function setOpacity() {
  const value = Number($("opacity").value);
  $("overlay").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value} %`;
}

function init() {
  loadInfo();
  $("file").addEventListener("change", () => {
    if ($("file").files.length) upload($("file").files[0]);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) upload(event.dataTransfer.files[0]);
  });
  $("slice").addEventListener("input", () => {
    if (state.result) showSlice(Number($("slice").value));
  });
  $("opacity").addEventListener("input", setOpacity);
  setOpacity();
}

document.addEventListener("DOMContentLoaded", init);
