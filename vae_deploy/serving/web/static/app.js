// The page: sample grid, one slider per latent dimension, interpolation; and window.vaeDeploy,
// the API tests and other pages use: decode(Float32Array, dims) and sample(n, seed).
import { load, normal, outputRange, toImages } from "./vae.js";

const $ = (id) => document.getElementById(id);
const PAD = 2;
const GRID_COLS = 4;

function draw(canvas, images, cols) {
  if (!images) { // e.g. flat outputs whose size is not a square: nothing to show, the API still decodes
    canvas.hidden = true;
    $("status").dataset.note = "The decoder's output is not an image; use window.vaeDeploy.decode.";
    return null;
  }
  const { width: w, height: h } = images[0];
  const scale = Math.max(1, Math.floor(96 / Math.max(w, h)));
  const rows = Math.ceil(images.length / cols);
  canvas.width = cols * (w * scale + PAD) + PAD;
  canvas.height = rows * (h * scale + PAD) + PAD;
  canvas.style.width = `${canvas.width}px`;
  canvas.style.height = `${canvas.height}px`;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#222";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tile = document.createElement("canvas");
  tile.width = w; tile.height = h;
  images.forEach((img, i) => {
    tile.getContext("2d").putImageData(img, 0, 0);
    const r = Math.floor(i / cols), k = i % cols;
    ctx.drawImage(tile, PAD + k * (w * scale + PAD), PAD + r * (h * scale + PAD), w * scale, h * scale);
  });
  return { cols, rows, scale, pad: PAD, w, h, n: images.length };
}

function slerp(a, b, t) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / Math.sqrt(na * nb || 1))));
  const out = new Float32Array(a.length);
  if (omega < 1e-6) { for (let i = 0; i < a.length; i++) out[i] = (1 - t) * a[i] + t * b[i]; return out; }
  const s = Math.sin(omega), ca = Math.sin((1 - t) * omega) / s, cb = Math.sin(t * omega) / s;
  for (let i = 0; i < a.length; i++) out[i] = ca * a[i] + cb * b[i];
  return out;
}

function showError(e) {
  const msg = e && e.message ? e.message : String(e);
  $("error").textContent = `Error: ${msg}`;
  $("error").hidden = false;
  $("status").textContent = "The decoder was not loaded.";
  document.body.dataset.state = "error";
  window.vaeDeploy.error = msg;
}

// Decode on every slider move, but never queue more than one pending run: the latest wins.
function latest(fn) {
  let running = false, pending = null;
  return async function go(...args) {
    if (running) { pending = args; return; }
    running = true;
    try { await fn(...args); } catch (e) { showError(e); } finally { running = false; }
    if (pending) { const next = pending; pending = null; go(...next); }
  };
}

async function main() {
  const t0 = performance.now();
  const params = new URLSearchParams(location.search);
  const dec = await load(params);
  const c = dec.contract;
  const range = outputRange(dec.info.manifest); // the export's output_range: how floats become pixels
  const layout = {};
  const api = window.vaeDeploy;
  Object.assign(api, { decoder: dec, contract: c, layout,
    decode: (z, dims) => dec.decode(z, dims), sample: (n, seed, side) => dec.sample(n, seed, side),
    noise: (n, seed, side) => dec.noise(n, seed, side), normal, range });
  api.timings.loadMs = performance.now() - t0;

  const limit = c.limits.max_latent_side;
  let side = c.spatial ? Math.min(c.exampleLatentShape[1] || 8, limit) : 0;
  if (c.spatial) {
    $("side-label").hidden = false;
    $("side").value = side; $("side").max = limit;
    const up = c.exampleOutputShape.at(-1) / c.exampleLatentShape.at(-1);
    $("limit").hidden = false;
    $("limit").textContent = `Spatial latent [${c.latentShape.map((d) => (d < 0 ? "?" : d))}]: this page decodes ` +
      `latents up to ${limit} x ${limit} cells (a ${limit * up} x ${limit * up} image); larger ones are refused.`;
  }
  $("info").textContent = `latent [${c.latentShape}] → output [${c.outputShape}], ${c.likelihood} likelihood, ` +
    `onnxruntime-web ${dec.info.site.onnxruntime_web} WASM, ${dec.info.threads} thread(s)` +
    `${crossOriginIsolated ? " (cross-origin isolated)" : ""}; decoder sha256 ${dec.info.sha256.slice(0, 12)}… ` +
    "matches the manifest.";
  const gridN = c.spatial ? 4 : 16;
  const cols = c.spatial ? 2 : GRID_COLS;

  let base = null; // the latent the sliders edit (sample 1 of the grid)
  const grid = latest(async () => {
    const seed = Number($("seed").value) >>> 0;
    const s = await dec.sample(gridN, seed, side);
    layout.grid = { ...draw($("grid"), toImages(s.data, s.dims, range), cols), seed, side };
    if (api.timings.firstImageMs === undefined) api.timings.firstImageMs = performance.now();
    base = { z: s.z.slice(0, s.z.length / gridN), dims: [1, ...s.zDims.slice(1)] };
    buildSliders(); await live(); await strip();
  });

  const perDim = () => base.z.length / (c.spatial ? c.latentShape[0] : base.z.length);
  let offsets = [];
  function edited() {
    const z = base.z.slice();
    if (!c.spatial) offsets.forEach((v, i) => { z[i] = v; });
    else offsets.forEach((v, ch) => { for (let p = 0; p < perDim(); p++) z[ch * perDim() + p] += v; });
    return z;
  }
  function buildSliders() {
    const k = c.spatial ? Math.min(c.latentShape[0], c.limits.sliders) : Math.min(base.z.length, c.limits.sliders);
    offsets = Array.from({ length: k }, (_, i) => (c.spatial ? 0 : base.z[i]));
    $("slider-note").textContent = c.spatial
      ? `One slider per latent channel (${k} of ${c.latentShape[0]}): it shifts that channel's whole plane.`
      : `One slider per latent dimension (the first ${k} of ${base.z.length}), starting at sample 1's value.`;
    const box = $("sliders");
    box.replaceChildren();
    offsets.forEach((v, i) => {
      const label = document.createElement("label");
      const input = Object.assign(document.createElement("input"), { type: "range", min: -3, max: 3, step: 0.01 });
      input.value = v; input.dataset.dim = i;
      const out = document.createElement("output");
      out.textContent = Number(v).toFixed(2);
      input.addEventListener("input", () => { offsets[i] = Number(input.value); out.textContent = offsets[i].toFixed(2); live(); });
      label.append(`${c.spatial ? "c" : "z"}${i}`, input, out);
      box.append(label);
    });
  }
  const live = latest(async () => {
    const t = performance.now();
    const out = await dec.decode(edited(), base.dims);
    api.timings.lastDecodeMs = performance.now() - t;
    $("latency").textContent = `decoded in ${api.timings.lastDecodeMs.toFixed(1)} ms`;
    layout.live = draw($("live"), toImages(out.data, out.dims, range), 1);
  });

  const STEPS = 8;
  function ends() {
    const a = dec.noise(1, Number($("seed-a").value) >>> 0, side), b = dec.noise(1, Number($("seed-b").value) >>> 0, side);
    return [a.z, b.z, a.dims];
  }
  const strip = latest(async () => {
    const [a, b, dims] = ends();
    const z = new Float32Array(a.length * STEPS);
    for (let i = 0; i < STEPS; i++) z.set(slerp(a, b, i / (STEPS - 1)), i * a.length);
    const out = await dec.decode(z, [STEPS, ...dims.slice(1)]);
    layout.strip = draw($("strip"), toImages(out.data, out.dims, range), STEPS);
    await between();
  });
  const between = latest(async () => {
    const [a, b, dims] = ends();
    const out = await dec.decode(slerp(a, b, Number($("t").value)), dims);
    layout.between = draw($("between"), toImages(out.data, out.dims, range), 1);
  });

  $("seed").addEventListener("change", grid);
  $("reseed").addEventListener("click", () => { $("seed").value = (Number($("seed").value) + 1) >>> 0; grid(); });
  $("side").addEventListener("change", () => {
    side = Math.min(Math.max(1, Number($("side").value) | 0), limit);
    $("side").value = side; grid();
  });
  $("reset").addEventListener("click", () => { buildSliders(); live(); });
  $("seed-a").addEventListener("change", strip);
  $("seed-b").addEventListener("change", strip);
  $("t").addEventListener("input", between);

  const seed = params.get("seed");
  if (seed !== null) $("seed").value = Number(seed) >>> 0;
  await grid();
  if (api.error) return;
  $("status").textContent = `Ready: first image ${api.timings.firstImageMs.toFixed(0)} ms after navigation. ` +
    ($("status").dataset.note || "");
  document.body.dataset.state = "ready";
}

window.vaeDeploy = { timings: {}, error: null };
window.vaeDeploy.ready = main().catch((e) => { showError(e); });
