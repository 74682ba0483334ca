// What the contract needs from an ONNX file, read from the bytes the page loaded, before
// onnxruntime-web sees them (it cannot list a graph's nodes): the metadata_props, every random
// operator (main graph, If/Loop/Scan subgraphs, local functions) and any external-data tensor.
// A protobuf wire-format walk over ModelProto, with the field numbers of onnx/onnx.proto; the
// same walk as cpp/src/onnx_scan.cpp and the same findings as vae_deploy.contract.random_ops.
// No imports: node runs it in tests/test_web.py.

export const RANDOM_OPS = new Set([
  "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
]);

const F = {
  model: { graph: 7, metadata: 14, functions: 25 },
  graph: { node: 1, initializer: 5, sparseInitializer: 15 },
  node: { input: 1, name: 3, opType: 4, attribute: 5 },
  attr: { t: 5, g: 6, tensors: 10, graphs: 11, sparse: 22, sparses: 23 },
  tensor: { float: 4, int32: 5, int64: 7, name: 8, raw: 9, external: 13, location: 14 },
  sparse: { values: 1, indices: 2 },
  fn: { node: 7 },
  entry: { key: 1, value: 2 },
};
const MAX_DEPTH = 64;

function varint(buf, pos) {
  let value = 0, scale = 1, b, n = 0;
  do {
    if (pos >= buf.length) throw new Error("not an ONNX model (truncated protobuf)");
    if (++n > 10) throw new Error("not an ONNX model (varint longer than 10 bytes)");
    b = buf[pos++];
    value += (b & 0x7f) * scale;
    scale *= 128;
  } while (b & 0x80);
  return [value, pos];
}

// [field, wire, value, start, end] for each field of the message in buf[start:end]; for wire
// type 2, start..end is the payload, for 0 value is the varint.
function* fields(buf, start, end) {
  let pos = start;
  while (pos < end) {
    let key, len, value = 0;
    [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8), wire = key % 8;
    if (field === 0) throw new Error("not an ONNX model (protobuf field number 0)");
    if (wire === 0) { [value, pos] = varint(buf, pos); yield [field, wire, value, pos, pos]; continue; }
    if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      if (pos + n > end) throw new Error("not an ONNX model (truncated protobuf)");
      let any = 0;
      for (let i = 0; i < n; i++) any |= buf[pos + i];
      yield [field, wire, any, pos, pos + n];
      pos += n;
      continue;
    }
    if (wire !== 2) throw new Error(`not an ONNX model (protobuf wire type ${wire})`);
    [len, pos] = varint(buf, pos);
    if (pos + len > end) throw new Error("not an ONNX model (truncated protobuf)");
    yield [field, wire, 0, pos, pos + len];
    pos += len;
  }
}

const text = new TextDecoder();
const str = (buf, a, b) => text.decode(buf.subarray(a, b));
const anyByte = (buf, a, b) => { for (let i = a; i < b; i++) if (buf[i]) return true; return false; };

export function scanOnnx(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const nodes = [], truthy = new Map(), external = new Set(), metadata = {};

  const keyValue = (a, b) => {
    let key = "", value = "";
    for (const [f, w, , s, e] of fields(buf, a, b)) {
      if (w !== 2) continue;
      if (f === F.entry.key) key = str(buf, s, e);
      if (f === F.entry.value) value = str(buf, s, e);
    }
    return [key, value];
  };
  const tensor = (a, b, initializer) => {
    let name = "", nonzero = false, isExternal = false;
    const locations = [];
    for (const [f, w, v, s, e] of fields(buf, a, b)) {
      if (f === F.tensor.name && w === 2) name = str(buf, s, e);
      else if (f === F.tensor.raw && w === 2) nonzero ||= anyByte(buf, s, e);
      else if (f === F.tensor.float || f === F.tensor.int32 || f === F.tensor.int64) {
        nonzero ||= w === 2 ? anyByte(buf, s, e) : v !== 0;
      } else if (f === F.tensor.location && w === 0) isExternal ||= v === 1;
      else if (f === F.tensor.external && w === 2) {
        const [k, val] = keyValue(s, e);
        if (k === "location") locations.push(val);
      }
    }
    if (isExternal) locations.forEach((l) => external.add(l));
    if (initializer && name) truthy.set(name, nonzero || isExternal);
  };
  const sparse = (a, b) => {
    for (const [f, w, , s, e] of fields(buf, a, b)) {
      if (w === 2 && (f === F.sparse.values || f === F.sparse.indices)) tensor(s, e, false);
    }
  };
  const attribute = (a, b, depth) => {
    for (const [f, w, , s, e] of fields(buf, a, b)) {
      if (w !== 2) continue;
      if (f === F.attr.g || f === F.attr.graphs) graph(s, e, depth + 1);
      else if (f === F.attr.t || f === F.attr.tensors) tensor(s, e, false);
      else if (f === F.attr.sparse || f === F.attr.sparses) sparse(s, e);
    }
  };
  const node = (a, b, depth) => {
    const n = { name: "", opType: "", inputs: [] };
    for (const [f, w, , s, e] of fields(buf, a, b)) {
      if (w !== 2) continue;
      if (f === F.node.input) n.inputs.push(str(buf, s, e));
      else if (f === F.node.name) n.name = str(buf, s, e);
      else if (f === F.node.opType) n.opType = str(buf, s, e);
      else if (f === F.node.attribute) attribute(s, e, depth);
    }
    nodes.push(n);
  };
  function graph(a, b, depth) {
    if (depth > MAX_DEPTH) throw new Error(`not an ONNX model (subgraphs nested deeper than ${MAX_DEPTH})`);
    for (const [f, w, , s, e] of fields(buf, a, b)) {
      if (w !== 2) continue;
      if (f === F.graph.node) node(s, e, depth);
      else if (f === F.graph.initializer) tensor(s, e, true);
      else if (f === F.graph.sparseInitializer) sparse(s, e);
    }
  }

  for (const [f, w, , s, e] of fields(buf, 0, buf.length)) {
    if (w !== 2) continue;
    if (f === F.model.graph) graph(s, e, 0);
    else if (f === F.model.functions) {
      for (const [g, w2, , s2, e2] of fields(buf, s, e)) if (w2 === 2 && g === F.fn.node) node(s2, e2, 0);
    } else if (f === F.model.metadata) {
      const [k, v] = keyValue(s, e);
      metadata[k] = v;
    }
  }
  const randomOps = [];
  for (const n of nodes) {
    const label = n.name || "unnamed";
    if (RANDOM_OPS.has(n.opType)) randomOps.push(`${n.opType} (${label})`);
    else if (n.opType === "Dropout" && n.inputs.length > 2 && n.inputs[2]) {
      if (!truthy.has(n.inputs[2]) || truthy.get(n.inputs[2])) randomOps.push(`Dropout in training mode (${label})`);
    }
  }
  return { randomOps, externalData: [...external].sort(), metadata };
}
