// Update payloads (docs/protocol.md, "Update payloads (tensor frames)"): the fp32, bf16 and int8 codecs,
// the deltas between checkpoints (fp32, bf16, int8, int4, int2, sign1), and the safetensors checkpoints
// units start from. Written from the document.

const CODEC_IDS = { fp32: 1, bf16: 3, int8: 4 };
// The delta codecs this page decodes, by codec id: bits per element (0: f32 values; 8: i8 values;
// 4, 2, 1: codes packed least-significant bits first) and what a code decodes to, times its scale;
// bf16 (16) has no scale: each value is the upper half of a float32.
const DELTA_CODECS = {
  1: { name: "fp32", bits: 0 },
  3: { name: "bf16", bits: 16 },
  4: { name: "int8", bits: 8 },
  7: { name: "int4", bits: 4, level: (c) => c - 8 },
  8: { name: "int2", bits: 2, level: (c) => 2 * c - 3 },
  9: { name: "sign1", bits: 1, level: (c) => 2 * c - 1 },
};
const MAGIC = [0x43, 0x57, 0x54, 0x46]; // "CWTF"

export class TensorError extends Error {}

/** Round half to even, as the reference does (Math.round rounds halves up). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : r;
}

function elements(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function payloadBytes(codec, n) {
  if (codec.name === "fp32") return 4 * n;
  if (codec.name === "bf16") return 2 * n;
  return 4 * Math.ceil(n / codec.block_size) + n;
}

const f32Cell = new Float32Array(1);
const u32Cell = new Uint32Array(f32Cell.buffer);

/** The bf16 bits of a float32 value: its upper half, rounded to nearest, ties to even (finite values). */
function bf16Bits(x) {
  f32Cell[0] = x;
  const u = u32Cell[0];
  return Math.floor((u + 0x7fff + ((u >>> 16) & 1)) / 65536) & 0xffff;
}

/** One quantization group of float32 values: its f32 scale, and i8 values into `out`. */
function quantize(values, out) {
  let max = 0;
  for (const v of values) max = Math.max(max, Math.abs(v));
  const scale = Math.fround(max / 127);
  for (let j = 0; j < values.length; j++) {
    out[j] = scale === 0 ? 0 : Math.max(-127, Math.min(127, roundHalfEven(Math.fround(values[j] / scale))));
  }
  return scale;
}

/**
 * The tensor frame of an update: `tensors` maps each name of `shard` (in that order) to a
 * Float32Array of shape `shapes[name]`; `codec` is the unit's codec map.
 */
export function encodeUpdate(codec, shard, shapes, tensors) {
  const id = CODEC_IDS[codec.name];
  if (id === undefined) throw new TensorError(`this page can't encode codec ${codec.name}`);
  if (codec.name === "int8" && !(Number.isInteger(codec.block_size) && codec.block_size >= 1)) {
    throw new TensorError("an int8 codec needs a positive integer block_size");
  }
  const encoder = new TextEncoder();
  const names = shard.map((name) => encoder.encode(name));
  const params = codec.name === "int8" ? 4 : 0;
  let size = 12 + params;
  shard.forEach((name, i) => {
    const n = elements(shapes[name]);
    if (tensors[name].length !== n) throw new TensorError(`${name}: ${tensors[name].length} values for shape ${shapes[name]}`);
    size += 2 + names[i].length + 2 + 4 * shapes[name].length + 8 + payloadBytes(codec, n);
  });
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  bytes.set(MAGIC, 0);
  view.setUint16(4, 1, true);
  view.setUint8(6, id);
  view.setUint8(7, 0);
  let at = 8;
  if (codec.name === "int8") {
    view.setUint32(at, codec.block_size, true);
    at += 4;
  }
  view.setUint32(at, shard.length, true);
  at += 4;
  shard.forEach((name, i) => {
    const shape = shapes[name];
    const values = tensors[name];
    const n = values.length;
    view.setUint16(at, names[i].length, true);
    bytes.set(names[i], at + 2);
    at += 2 + names[i].length;
    view.setUint8(at, 1); // float32
    view.setUint8(at + 1, shape.length);
    at += 2;
    for (const dim of shape) {
      view.setUint32(at, dim, true);
      at += 4;
    }
    const length = payloadBytes(codec, n);
    view.setBigUint64(at, BigInt(length), true);
    at += 8;
    if (codec.name === "fp32") {
      for (let j = 0; j < n; j++) view.setFloat32(at + 4 * j, values[j], true);
    } else if (codec.name === "bf16") {
      for (let j = 0; j < n; j++) view.setUint16(at + 2 * j, bf16Bits(values[j]), true);
    } else {
      const block = codec.block_size;
      const blocks = Math.ceil(n / block);
      const q = new Int8Array(bytes.buffer, at + 4 * blocks, n);
      for (let b = 0; b < blocks; b++) {
        const scale = quantize(values.subarray(b * block, Math.min(n, (b + 1) * block)), q.subarray(b * block));
        view.setFloat32(at + 4 * b, scale, true);
      }
    }
    at += length;
  });
  return bytes;
}

/**
 * The float32 tensors of a safetensors file: name -> { shape, data: Float32Array }. Refuses a file
 * whose header or offsets don't hold together, and any dtype but F32.
 */
export function readSafetensors(buffer, maxHeader = 1 << 24) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.byteLength < 8) throw new TensorError("a checkpoint shorter than its header length");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  if (headerLength > maxHeader || 8 + headerLength > bytes.byteLength) throw new TensorError("a checkpoint header past its end");
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLength)));
  } catch (error) {
    throw new TensorError(`a checkpoint header that is not JSON: ${error.message}`);
  }
  const start = 8 + headerLength;
  const tensors = new Map();
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets: offsets } = entry;
    if (dtype !== "F32") throw new TensorError(`${name}: dtype ${dtype}; checkpoints are float32`);
    const n = elements(shape);
    const [begin, end] = offsets;
    if (!(Number.isInteger(begin) && end - begin === 4 * n && start + end <= bytes.byteLength && begin >= 0)) {
      throw new TensorError(`${name}: offsets that don't fit its shape or the file`);
    }
    const data = new Float32Array(n);
    new Uint8Array(data.buffer).set(bytes.subarray(start + begin, start + end));
    tensors.set(name, { shape, data });
  }
  return tensors;
}

/**
 * The delta frame of a checkpoint (docs/protocol.md, "Checkpoint deltas"), fp32, int8, int4, int2 or
 * sign1, decoded against the checkpoint's `tensors` (from readSafetensors): name -> Float32Array of
 * dequantized values. The frame must hold exactly the checkpoint's tensors with their shapes; anything else,
 * or a codec this page doesn't decode, is refused (the caller downloads the checkpoint instead).
 */
export function decodeDelta(buffer, tensors) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (at, n) => {
    if (at + n > bytes.byteLength) throw new TensorError("a delta cut short");
  };
  need(0, 12);
  if (MAGIC.some((b, i) => bytes[i] !== b) || view.getUint16(4, true) !== 1 || view.getUint8(7) !== 0) {
    throw new TensorError("not a version-1 tensor frame");
  }
  const id = view.getUint8(6);
  const codec = DELTA_CODECS[id];
  if (codec === undefined) throw new TensorError(`a delta in codec id ${id}, which this page doesn't decode`);
  const { bits } = codec;
  let at = 8;
  let block = 0;
  if (bits > 0 && bits < 16) {
    need(at, 4);
    block = view.getUint32(at, true);
    if (block < 1) throw new TensorError(`an ${codec.name} delta with block size 0`);
    at += 4;
  }
  need(at, 4);
  const count = view.getUint32(at, true);
  at += 4;
  if (count !== tensors.size) throw new TensorError(`a delta of ${count} tensors for a checkpoint of ${tensors.size}`);
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const out = new Map();
  for (let r = 0; r < count; r++) {
    need(at, 2);
    const nameLength = view.getUint16(at, true);
    need(at + 2, nameLength + 2);
    const name = decoder.decode(bytes.subarray(at + 2, at + 2 + nameLength));
    at += 2 + nameLength;
    const target = tensors.get(name);
    if (target === undefined || out.has(name)) throw new TensorError(`a delta for ${name}, which the checkpoint lacks or already had`);
    const [dtype, ndim] = [view.getUint8(at), view.getUint8(at + 1)];
    at += 2;
    need(at, 4 * ndim + 8);
    const shape = Array.from({ length: ndim }, (_, i) => view.getUint32(at + 4 * i, true));
    at += 4 * ndim;
    if (dtype !== 1 || shape.length !== target.shape.length || shape.some((d, i) => d !== target.shape[i])) {
      throw new TensorError(`${name}: a delta of another dtype or shape than the checkpoint's`);
    }
    const n = target.data.length;
    const length = Number(view.getBigUint64(at, true));
    at += 8;
    const blocks = bits > 0 && bits < 16 ? Math.ceil(n / block) : 0;
    if (length !== (bits === 0 ? 4 * n : bits === 16 ? 2 * n : 4 * blocks + Math.ceil((n * bits) / 8))) {
      throw new TensorError(`${name}: a payload of the wrong size`);
    }
    need(at, length);
    const values = new Float32Array(n);
    if (bits === 0) {
      for (let j = 0; j < n; j++) values[j] = view.getFloat32(at + 4 * j, true);
    } else if (bits === 16) {
      for (let j = 0; j < n; j++) {
        u32Cell[0] = view.getUint16(at + 2 * j, true) * 65536;
        values[j] = f32Cell[0];
      }
    } else {
      const codes = at + 4 * blocks;
      const q = new Int8Array(bytes.buffer, bytes.byteOffset + codes, bits === 8 ? n : 0);
      const perByte = 8 / bits;
      const mask = (1 << bits) - 1;
      for (let b = 0; b < blocks; b++) {
        const scale = view.getFloat32(at + 4 * b, true);
        if (!(Number.isFinite(scale) && scale >= 0)) throw new TensorError(`${name}: a scale that is not a finite number ≥ 0`);
        for (let j = b * block; j < Math.min(n, (b + 1) * block); j++) {
          // Each product is exact in a double and rounded once to float32 on store, as f32 arithmetic does.
          if (bits === 8) {
            if (q[j] === -128) throw new TensorError(`${name}: the int8 value -128`);
            values[j] = q[j] * scale;
            continue;
          }
          const c = (bytes[codes + Math.floor(j / perByte)] >> (bits * (j % perByte))) & mask;
          if (bits === 4 && c === 0) throw new TensorError(`${name}: the int4 code 0`);
          values[j] = codec.level(c) * scale;
        }
      }
      if (bits < 8 && n % perByte !== 0 && bytes[codes + Math.floor(n / perByte)] >> (bits * (n % perByte)) !== 0) {
        throw new TensorError(`${name}: the unused bits of the last byte are not 0`);
      }
    }
    if (!values.every(Number.isFinite)) throw new TensorError(`${name}: a delta value that is not finite`);
    out.set(name, values);
    at += length;
  }
  if (at !== bytes.byteLength) throw new TensorError("bytes after the delta's last tensor");
  return out;
}

/** The canonical checkpoint bytes of name -> { shape, data: Float32Array } (docs/protocol.md, "Checkpoint deltas"). */
export function writeCheckpoint(tensors) {
  const names = [...tensors.keys()].sort(); // parameter names are ASCII: code-unit order is byte order
  const header = {};
  let offset = 0;
  for (const name of names) {
    const { shape, data } = tensors.get(name);
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + 4 * data.length] };
    offset += 4 * data.length;
  }
  let text = JSON.stringify(header);
  text += " ".repeat((8 - (new TextEncoder().encode(text).length % 8)) % 8);
  const json = new TextEncoder().encode(text);
  const bytes = new Uint8Array(8 + json.length + offset);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
  bytes.set(json, 8);
  let at = 8 + json.length;
  const view = new DataView(bytes.buffer);
  for (const name of names) {
    for (const v of tensors.get(name).data) {
      view.setFloat32(at, v, true);
      at += 4;
    }
  }
  return bytes;
}

/** The checkpoint a delta makes of `base`: every value plus its delta in float32 (one rounding each). */
export function applyDelta(base, delta) {
  const tensors = readSafetensors(base);
  const changes = decodeDelta(delta, tensors);
  const result = new Map();
  for (const [name, { shape, data }] of tensors) {
    const change = changes.get(name);
    const sum = new Float32Array(data.length);
    for (let j = 0; j < data.length; j++) sum[j] = data[j] + change[j]; // binary64 sum, rounded once: the float32 sum
    result.set(name, { shape, data: sum });
  }
  return writeCheckpoint(result);
}

// Shared moments (docs/protocol.md, "Shared moments"): AdamW's second moment v travels as a moments
// frame, a bf16 tensor frame holding `p:rows` and `p:cols` (the means over each row and each column
// of p read as [shape[0], rest]) for a parameter of two or more dimensions, `p` whole for one of less.

/** The records of a moments frame for parameters of `shapes` (name -> shape): record name -> [length]. */
export function momentShapes(shapes) {
  const out = {};
  for (const [name, shape] of Object.entries(shapes)) {
    if (shape.length < 2) {
      out[name] = [elements(shape)];
    } else {
      out[`${name}:rows`] = [shape[0]];
      out[`${name}:cols`] = [elements(shape) / shape[0]];
    }
  }
  return out;
}

/** A moments frame's records (name -> Float32Array) for parameters of `shapes`; refuses any other frame. */
export function decodeMoments(buffer, shapes) {
  const bytes = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
  if (bytes.byteLength < 7 || bytes[6] !== CODEC_IDS.bf16) throw new TensorError("a moments frame not in bf16");
  const records = new Map(
    Object.entries(momentShapes(shapes)).map(([name, shape]) => [name, { shape, data: { length: shape[0] } }]),
  );
  const out = decodeDelta(bytes, records);
  for (const [name, values] of out) {
    if (values.some((x) => x < 0)) throw new TensorError(`${name}: a negative second moment`);
  }
  return out;
}

/** The second moment of a parameter of `shape` its records stand for: v[i, j] = rows[i]·cols[j] / mean(rows). */
export function expandMoment(records, name, shape) {
  if (shape.length < 2) return Float32Array.from(records.get(name));
  const rows = records.get(`${name}:rows`);
  const cols = records.get(`${name}:cols`);
  const mean = Math.fround(rows.reduce((a, b) => a + b, 0) / rows.length);
  const out = new Float32Array(rows.length * cols.length);
  if (!(mean > 0)) return out;
  for (let i = 0; i < rows.length; i++) {
    for (let j = 0; j < cols.length; j++) out[i * cols.length + j] = Math.fround(rows[i] * cols[j]) / mean;
  }
  return out;
}

/** A moments frame of the second moments `v` (name -> Float32Array) of parameters of `shapes`. */
export function encodeMoments(shapes, v) {
  const records = {};
  for (const [name, shape] of Object.entries(shapes)) {
    const values = v[name];
    if (shape.length < 2) {
      records[name] = Float32Array.from(values);
      continue;
    }
    const [n, m] = [shape[0], values.length / shape[0]];
    const rows = new Float64Array(n);
    const cols = new Float64Array(m);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < m; j++) {
        rows[i] += values[i * m + j];
        cols[j] += values[i * m + j];
      }
    }
    records[`${name}:rows`] = Float32Array.from(rows, (x) => x / m);
    records[`${name}:cols`] = Float32Array.from(cols, (x) => x / n);
  }
  const recordShapes = momentShapes(shapes);
  return encodeUpdate({ name: "bf16" }, Object.keys(recordShapes), recordShapes, records);
}
