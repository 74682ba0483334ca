// vae-deploy in the browser: load the exported decoder with onnxruntime-web (WASM), check it
// against the manifest copied into the site, and decode latents. No framework, no build step.
import * as ort from "./ort/ort.wasm.min.mjs";
import { scanOnnx } from "./onnxscan.js";

// ---- seeded noise -----------------------------------------------------------------------
// mulberry32 (a 32-bit PRNG) + Box-Muller. Reproducible in every browser; mirrored in Python
// by vae_deploy/serving/web/prng.py. It is NOT numpy's generator: Runtime.sample(seed) draws other z.
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

// n standard normal float32 values: u = (r + 0.5) / 2^32 lies in (0, 1), so log(u) is finite.
export function normal(n, seed) {
  const next = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = (next() + 0.5) / 4294967296;
    const u2 = (next() + 0.5) / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

// ---- the ONNX model's contract facts, read from the protobuf bytes -------------------------
// onnxruntime-web exposes input/output names and shapes but neither metadata_props nor the
// graph's nodes, so the page walks ModelProto itself (onnxscan.js).
export function onnxMetadata(bytes) {
  return scanOnnx(bytes).metadata;
}

const shape = (s) => (s ? s.split(",").filter((v) => v.trim() !== "").map(Number) : []);
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);
const fmt = (s) => `[${s.join(", ")}]`;

async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) {
    throw new Error("WebCrypto is unavailable (the page is not a secure context): open it through " +
      "http://localhost / 127.0.0.1 or https so the decoder's checksum can be checked");
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fetchOk(url, as) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`could not load ${url}: HTTP ${r.status}`);
  return as === "json" ? r.json() : new Uint8Array(await r.arrayBuffer());
}

// The contract: from the model's metadata, checked against the manifest and the session.
function contractFrom(meta, manifest, session, site) {
  const P = "vae_deploy.";
  if (!(P + "latent_shape" in meta)) throw new Error("the decoder has no vae_deploy metadata: not a vae-deploy export");
  const c = {
    latentShape: shape(meta[P + "latent_shape"]),
    outputShape: shape(meta[P + "input_shape"]),
    exampleLatentShape: shape(meta[P + "example_latent_shape"] || meta[P + "latent_shape"]),
    exampleOutputShape: shape(meta[P + "example_input_shape"] || meta[P + "input_shape"]),
    likelihood: meta[P + "likelihood"] || "unknown",
    family: meta[P + "family"] || "",
    precision: meta[P + "precision"] || "fp32",
    input: session.inputNames[0],
    output: session.outputNames[0],
    limits: site.limits,
    metadata: meta,
  };
  const m = manifest.model;
  if (!same(c.latentShape, m.latent_shape) || !same(c.outputShape, m.input_shape)) {
    throw new Error(`the decoder's metadata (latent ${fmt(c.latentShape)}, output ${fmt(c.outputShape)}) ` +
      `disagrees with the manifest (latent ${fmt(m.latent_shape)}, output ${fmt(m.input_shape)})`);
  }
  if (session.inputNames.length !== 1 || c.input !== site.decoder.input || c.output !== site.decoder.output) {
    throw new Error(`the session has inputs ${session.inputNames} / outputs ${session.outputNames}; ` +
      `expected ${site.decoder.input} / ${site.decoder.output}`);
  }
  const declared = session.inputMetadata?.[0]?.shape;
  if (declared && declared.length) {
    const per = declared.slice(1);
    const ok = per.length === c.latentShape.length &&
      per.every((d, i) => typeof d !== "number" || c.latentShape[i] < 0 || d === c.latentShape[i]);
    if (!ok) throw new Error(`the graph declares z as [N, ${per}] but the metadata says [N, ${c.latentShape}]`);
  }
  c.spatial = c.latentShape.length > 1;
  return c;
}

// Threads: WASM threads need SharedArrayBuffer, i.e. a cross-origin isolated page (COOP/COEP
// headers); otherwise 1. When isolated: ?threads=N, else onnxruntime-web's default.
export function configureWasm(params) {
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  const t = Number(params.get("threads"));
  if (!globalThis.crossOriginIsolated) ort.env.wasm.numThreads = 1;
  else if (t > 0) ort.env.wasm.numThreads = t;
  return ort.env.wasm.numThreads;
}

export async function load(params = new URLSearchParams(location.search)) {
  const threads = configureWasm(params);
  const [site, manifest] = await Promise.all([fetchOk("site.json", "json"), fetchOk("manifest.json", "json")]);
  const file = site.decoder.file;
  const entry = manifest.files?.[file];
  if (!entry) throw new Error(`manifest.json does not list ${file}`);
  const bytes = await fetchOk(file);
  const got = await sha256Hex(bytes);
  if (got !== entry.sha256 || bytes.length !== entry.size) {
    throw new Error(`${file} failed its checksum check: sha256 ${got.slice(0, 16)}…, ${bytes.length} bytes; ` +
      `the manifest says ${entry.sha256.slice(0, 16)}…, ${entry.size} bytes. Refusing to run a modified decoder.`);
  }
  // Like every consumer: no random operator, no weights outside the checked file, before a session exists.
  const scan = scanOnnx(bytes);
  if (scan.randomOps.length) {
    throw new Error(`${file}: random operator ${scan.randomOps.join(", ")}: outputs would differ between runs ` +
      "(sampling noise belongs in the host). Refusing to run it.");
  }
  if (scan.externalData.length) {
    throw new Error(`${file} keeps weights in external files (${scan.externalData.join(", ")}) that the page ` +
      "cannot check. Refusing to run it.");
  }
  const meta = scan.metadata;
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const contract = contractFrom(meta, manifest, session, site);
  return new Decoder(session, contract, { threads: ort.env.wasm.numThreads || threads, sha256: got, manifest, site });
}

export class Decoder {
  constructor(session, contract, info) {
    this.session = session;
    this.contract = contract;
    this.info = info;
    this.queue = Promise.resolve(); // one run at a time: WASM sessions are not re-entrant
  }

  // dims = [N, ...latent]; fixed latent axes must match, spatial ones stay within the limit.
  checkDims(z, dims) {
    const c = this.contract;
    if (!(z instanceof Float32Array)) throw new TypeError("z must be a Float32Array");
    if (!Array.isArray(dims) || dims.length !== c.latentShape.length + 1 || !dims.every(Number.isInteger)) {
      throw new Error(`dims must be [N, ${c.latentShape.map((d) => (d < 0 ? "?" : d))}], got ${JSON.stringify(dims)}`);
    }
    c.latentShape.forEach((d, i) => {
      const got = dims[i + 1];
      if (d >= 0 && got !== d) throw new Error(`latent axis ${i + 1} must be ${d}, got ${got}`);
      if (d < 0 && (got < 1 || got > c.limits.max_latent_side)) {
        throw new Error(`latent axis ${i + 1} is ${got}; this page decodes spatial latents up to ` +
          `${c.limits.max_latent_side} cells per side`);
      }
    });
    if (dims[0] < 1 || dims[0] > c.limits.max_batch) throw new Error(`N must be 1..${c.limits.max_batch}, got ${dims[0]}`);
    const n = dims.reduce((a, b) => a * b, 1);
    if (z.length !== n) throw new Error(`z has ${z.length} values; dims ${JSON.stringify(dims)} need ${n}`);
  }

  decode(z, dims) {
    const run = async () => {
      this.checkDims(z, dims);
      const feeds = { [this.contract.input]: new ort.Tensor("float32", z, dims) };
      const out = (await this.session.run(feeds))[this.contract.output];
      return { data: out.data, dims: Array.from(out.dims) };
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => {});
    return p;
  }

  latentDims(n, side) {
    const ex = this.contract.exampleLatentShape;
    return [n, ...this.contract.latentShape.map((d, i) => (d >= 0 ? d : side || ex[i]))];
  }

  noise(n, seed, side) {
    const dims = this.latentDims(n, side);
    return { z: normal(dims.reduce((a, b) => a * b, 1), seed), dims };
  }

  async sample(n, seed, side) {
    const { z, dims } = this.noise(n, seed, side);
    const out = await this.decode(z, dims);
    return { ...out, z, zDims: dims };
  }
}

// ---- pixels: pixels.js (no imports, so node tests it against Python) ------------------------
export { outputRange, roundHalfEven, toByte, toImages } from "./pixels.js";
