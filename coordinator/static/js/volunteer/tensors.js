// Update payloads (docs/protocol.md, "Update payloads (tensor frames)"): the fp32 and int8 codecs,
// and the safetensors checkpoints units start from. Written from the document.

const CODEC_IDS = { fp32: 1, int8: 4 };
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
  return 4 * Math.ceil(n / codec.block_size) + n;
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
