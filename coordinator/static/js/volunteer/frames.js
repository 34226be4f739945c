// Protocol frames (docs/protocol.md, "Frames" and "Messages"): one MessagePack map per binary
// WebSocket message, `type` and `v` first, then the message's fields in the documented order.
// Written from the document; tests/js checks the bytes against the Python reference.
import { encode, decode } from "../../vendor/msgpack-msgpack-3.1.3/dist.esm/index.mjs";

export const PROTOCOL_VERSION = 5;
export const MAX_FRAME_BYTES = 68157440;
export const MAX_BLOB_CHUNK_BYTES = 4194304;
export const CODECS = ["fp32", "int8"];

export class FrameError extends Error {}

/** The bytes of one frame: `type`, `v`, then `fields` in the order given. */
export function frame(type, fields = {}) {
  return encode({ type, v: PROTOCOL_VERSION, ...fields });
}

/** The message in a frame from the coordinator; refuses anything but a map with `type` and `v`. */
export function readFrame(bytes, maxBytes = MAX_FRAME_BYTES) {
  if (!(bytes instanceof Uint8Array)) bytes = new Uint8Array(bytes);
  if (bytes.byteLength > maxBytes) throw new FrameError(`a frame of ${bytes.byteLength} bytes is over the limit`);
  let message;
  try {
    message = decode(bytes);
  } catch (error) {
    throw new FrameError(`not one MessagePack value: ${error.message}`);
  }
  if (message === null || typeof message !== "object" || Array.isArray(message) || message instanceof Uint8Array) {
    throw new FrameError("a frame must be one MessagePack map");
  }
  if (typeof message.type !== "string" || !Number.isInteger(message.v)) {
    throw new FrameError("a frame needs a type string and an integer v");
  }
  if (message.v !== PROTOCOL_VERSION && message.type !== "error") {
    throw new FrameError(`the coordinator wrote protocol version ${message.v}; this page speaks ${PROTOCOL_VERSION}`);
  }
  return message;
}

export function hello({ token, name, clientVersion, memoryBytes, threads, platform, deviceName }) {
  return frame("hello", {
    protocol_version: PROTOCOL_VERSION,
    client_version: clientVersion,
    token: token ?? null,
    name,
    capabilities: {
      devices: [{ kind: "cpu", name: deviceName, memory_bytes: memoryBytes }],
      memory_bytes: memoryBytes,
      threads,
      codecs: CODECS,
      platform,
      runtimes: ["onnxruntime"],
      unit_kinds: ["train", "evaluate", "check"],
      own_data: false, // the page trains on no files of the person's own (no private units)
    },
  });
}

export const requestWork = (preferredCampaign = null) =>
  frame("request_work", { preferred_campaign: preferredCampaign });

export const blobRequest = (sha256, offset, length) => frame("blob_request", { sha256, offset, length });

export function progress(unit, { step, loss, tokens, phase }) {
  return frame("progress", {
    unit_id: unit.unit_id,
    lease_id: unit.lease_id,
    step,
    steps_total: unit.recipe.steps,
    loss: loss ?? null,
    tokens,
    phase,
  });
}

export function submit(unit, update, updateSha256, metrics, moments = new Uint8Array(0)) {
  return frame("submit", {
    unit_id: unit.unit_id,
    lease_id: unit.lease_id,
    update,
    update_sha256: updateSha256,
    metrics: {
      losses: metrics.losses,
      tokens: metrics.tokens,
      seconds: metrics.seconds,
      device: "cpu",
      device_name: metrics.deviceName,
      runtime: "onnxruntime",
      peak_memory_bytes: null,
    },
    moments,
  });
}

/** The losses of a finished evaluate unit, one per batch. */
export function report(unit, losses, seconds, deviceName) {
  return frame("report", {
    unit_id: unit.unit_id,
    lease_id: unit.lease_id,
    losses,
    seconds,
    device: "cpu",
    device_name: deviceName,
    runtime: "onnxruntime",
  });
}

export const abandon = (unit, reason, detail) =>
  frame("abandon", { unit_id: unit.unit_id, lease_id: unit.lease_id, reason, detail: detail.slice(0, 1000) });

export const goodbye = (reason) => frame("goodbye", { reason });

export const keepalive = () => frame("keepalive");
