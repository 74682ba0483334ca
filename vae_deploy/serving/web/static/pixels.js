// Output pixels of the page. No imports: node runs it in tests/test_web.py.
//
// diffusers' VaeImageProcessor.postprocess rule (vae_deploy's float -> uint8 rule): with (lo, hi)
// the export's output_range (manifest model.output_range; (0, 1) when absent),
//   x01 = clip((x - lo) / (hi - lo), 0, 1),  uint8 = round_half_to_even(x01 * 255),
// computed in float32 like numpy. [N, D] with D a square shows as D = side x side, grey.
const f32 = Math.fround;

export function roundHalfEven(x) {
  const f = Math.floor(x), d = x - f;
  return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
}

export function toByte(v, lo, hi) {
  const x01 = Math.min(Math.max(f32(f32(v - lo) / f32(hi - lo)), 0), 1);
  return roundHalfEven(f32(x01 * 255));
}

export function outputRange(manifest) {
  const r = manifest?.model?.output_range;
  return Array.isArray(r) && r.length === 2 && r.every(Number.isFinite) && r[1] > r[0] ? r : [0, 1];
}

export function toImages(data, dims, range = [0, 1]) {
  let [n, c, h, w] = dims;
  if (dims.length === 2) { c = 1; h = w = Math.round(Math.sqrt(dims[1])); if (h * w !== dims[1]) return null; }
  else if (dims.length === 3) { c = 1; h = dims[1]; w = dims[2]; }
  else if (dims.length !== 4 || (c !== 1 && c !== 3)) return null;
  const [lo, hi] = range, plane = h * w, images = [];
  for (let k = 0; k < n; k++) {
    const img = new ImageData(w, h);
    for (let p = 0; p < plane; p++) {
      for (let ch = 0; ch < 3; ch++) {
        img.data[4 * p + ch] = toByte(data[k * c * plane + (c === 3 ? ch : 0) * plane + p], lo, hi);
      }
      img.data[4 * p + 3] = 255;
    }
    images.push(img);
  }
  return images;
}
