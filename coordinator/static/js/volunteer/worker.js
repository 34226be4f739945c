// The browser volunteer: a module Web Worker that speaks the volunteer protocol over a WebSocket and
// trains units with ONNX Runtime Web (wasm). Written from docs/protocol.md.
//
// The page sends: {type: "start", url, token, name, threads, cpuShare, clientVersion, platform,
// leftover}, {type: "pause"}, {type: "resume"}, {type: "cpu", share}, {type: "stop"}. The worker
// posts: status, token, welcome, unit, download, step, result, unit-done, error (see post() calls).
import * as ort from "../../vendor/onnxruntime-web-1.30.0/ort.wasm.min.mjs";
import * as F from "./frames.js";
import { applyDelta, decodeMoments, encodeMoments, encodeUpdate, expandMoment, readSafetensors } from "./tensors.js";
import { stepBatch, tokenIds, tokensNeeded, unitRate } from "./recipe.js";

ort.env.wasm.wasmPaths = new URL("../../vendor/onnxruntime-web-1.30.0/", import.meta.url).href;
ort.env.wasm.proxy = false;
ort.env.logLevel = "error";

const CACHE = "commonweights-blobs-v1"; // graphs: one per campaign and shard, for its whole life
const CHECKPOINTS = "commonweights-checkpoints-v1"; // the latest versions' weights
const KEEP_CHECKPOINTS = 2;
const LOST = new Set(["lease_expired", "not_your_lease", "unknown_unit"]);
const NO_RECONNECT = new Set([4426, 4403, 4409]);
const MAX_BLOB_BYTES = 2 ** 30; // what a tab may hold of one blob (wasm32 memory is 4 GiB in all)
const REPLY_S = { request_work: 90, blob_request: 120, progress: 60, submit: 300, report: 60 }; // work_hold_s is at most 30
const PAUSE_HEARTBEATS = 3; // paused longer than this many heartbeats: give the unit back

let settings = null;
let paused = false;
let stopping = false;
let wake = () => {}; // ends the current sleep()
let unpause = () => {}; // ends the current wait in whileRunning()
const sessions = new Map(); // graph sha256 -> InferenceSession

const post = (message) => self.postMessage(message);
const status = (state, detail = "") => post({ type: "status", state, detail });

class Fatal extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

/** The WebSocket, with replies matched to requests (protocol.md: "a reply is matched by the ids it carries"). */
class Link {
  constructor(url) {
    this.url = url;
    this.waiters = [];
    this.closed = null;
    this.lastSent = 0;
    this.welcome = null;
  }

  open(helloFrame) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => this.send(helloFrame);
      ws.onmessage = (event) => {
        let message;
        try {
          message = F.readFrame(new Uint8Array(event.data));
        } catch (error) {
          post({ type: "error", message: `unreadable frame: ${error.message}` });
          return;
        }
        if (!this.welcome) {
          if (message.type === "welcome") {
            this.welcome = message;
            this.timer = setInterval(() => this.keepalive(), 1000);
            resolve(message);
          } else if (message.type === "error") {
            reject(new Fatal(message.message, message.code));
          }
          return;
        }
        this.route(message);
      };
      ws.onclose = (event) => {
        clearInterval(this.timer);
        this.closed = event.code || 1006;
        const error = new Fatal(`the connection closed (${this.closed})`, this.closed);
        reject(error);
        for (const waiter of this.waiters.splice(0)) waiter.reject(error);
      };
    });
  }

  send(bytes) {
    if (this.ws.readyState !== WebSocket.OPEN) throw new Fatal("not connected", 1006);
    this.ws.send(bytes);
    this.lastSent = performance.now();
  }

  keepalive() {
    const every = (this.welcome?.heartbeat_interval_s ?? 15) * 1000;
    if (this.ws.readyState === WebSocket.OPEN && performance.now() - this.lastSent > every / 2) this.send(F.keepalive());
  }

  route(message) {
    if (message.type === "error") {
      if (message.fatal) {
        for (const waiter of this.waiters.splice(0)) waiter.reject(new Fatal(message.message, message.code));
        post({ type: "error", message: message.message, code: message.code });
        return;
      }
      // An error about a request names it in ref_type (and ref_id); one that names nothing (an internal
      // error, a reply the coordinator could not encode) answers the oldest request still waiting.
      const waiter = message.ref_type
        ? this.waiters.find((w) => w.refType === message.ref_type && (!w.refId || w.refId === message.ref_id))
        : this.waiters[0];
      if (waiter) {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        waiter.reject(Object.assign(new Error(message.message), { code: message.code, retryAfter: message.retry_after_s }));
      }
      return;
    }
    const waiter = this.waiters.find((w) => w.matches(message));
    if (waiter) {
      this.waiters.splice(this.waiters.indexOf(waiter), 1);
      waiter.resolve(message);
    }
  }

  /** Send `bytes` and wait for the message `matches` accepts (or the error frame about it). */
  request(bytes, matches, refType, refId = null) {
    return new Promise((resolve, reject) => {
      const waiter = { matches, refType, refId };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(waiter), 1);
        reject(new Fatal(`no reply to ${refType} within ${REPLY_S[refType]} s`, "timeout"));
        this.ws.close(4000, "no reply"); // start over on a fresh connection
      }, REPLY_S[refType] * 1000);
      waiter.resolve = (message) => {
        clearTimeout(timer);
        resolve(message);
      };
      waiter.reject = (error) => {
        clearTimeout(timer);
        reject(error);
      };
      this.waiters.push(waiter);
      try {
        this.send(bytes);
      } catch (error) {
        waiter.reject(error);
      }
    });
  }

  close(reason) {
    try {
      if (this.ws.readyState === WebSocket.OPEN) this.send(F.goodbye(reason));
      this.ws.close(1000, reason.slice(0, 100));
    } catch {
      // already closed
    }
  }
}

function sleep(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    wake = () => {
      clearTimeout(timer);
      resolve();
    };
  });
}

/** Waits while the volunteer is paused; resolves true at once when not, false when `limitMs` ran out first. */
async function whileRunning(detail = "", limitMs = Infinity) {
  if (!paused || stopping) return true;
  status("paused", detail);
  const until = performance.now() + limitMs;
  while (paused && !stopping && performance.now() < until) {
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, Math.min(60_000, until - performance.now()));
      unpause = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
  return !paused || stopping;
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A blob by its BlobRef: from Cache Storage when there and intact, else in chunks from the coordinator. */
async function fetchBlob(link, ref, onBytes, { keep = null } = {}) {
  if (!(Number.isInteger(ref.size) && ref.size >= 0 && ref.size <= MAX_BLOB_BYTES)) {
    throw Object.assign(new Error(`a blob of ${ref.size} bytes is more than this tab takes`), { reason: "download_failed" });
  }
  if (!/^[0-9a-f]{64}$/.test(ref.sha256)) throw Object.assign(new Error("a blob without a SHA-256"), { reason: "error" });
  const key = `/blobs/${ref.sha256}`;
  // Graphs are kept for good, the weights of the latest KEEP_CHECKPOINTS versions (the next unit or
  // evaluation is often of the same version); data slices change every unit and are never kept.
  const cache = keep && self.caches ? await self.caches.open(keep === "graph" ? CACHE : CHECKPOINTS) : null;
  const cached = cache ? await cache.match(key) : null;
  if (cached) {
    const bytes = new Uint8Array(await cached.arrayBuffer());
    if (bytes.length === ref.size && (await sha256Hex(bytes)) === ref.sha256) return bytes;
    await cache.delete(key);
  }
  const bytes = new Uint8Array(ref.size);
  let offset = 0;
  while (offset < ref.size) {
    const length = Math.min(F.MAX_BLOB_CHUNK_BYTES, ref.size - offset);
    const at = offset;
    const chunk = await link.request(
      F.blobRequest(ref.sha256, at, length),
      (m) => m.type === "blob_chunk" && m.sha256 === ref.sha256 && m.offset === at,
      "blob_request",
      ref.sha256,
    );
    if (chunk.total_size !== ref.size || chunk.data.length === 0 || at + chunk.data.length > ref.size) {
      throw Object.assign(new Error("the coordinator sent a chunk that doesn't fit the blob"), { reason: "download_failed" });
    }
    bytes.set(chunk.data, at);
    offset += chunk.data.length;
    onBytes(offset, ref.size);
  }
  if ((await sha256Hex(bytes)) !== ref.sha256) {
    throw Object.assign(new Error(`blob ${ref.sha256.slice(0, 12)} failed its SHA-256 check`), { reason: "download_failed" });
  }
  if (cache && keep === "checkpoint") await keepCheckpoint(cache, ref.sha256, bytes);
  else if (cache) await cache.put(key, new Response(bytes));
  return bytes;
}

/** Store a version's weights, making room first: never more than KEEP_CHECKPOINTS, even for a moment. */
async function keepCheckpoint(cache, sha256, bytes) {
  const held = await cache.keys();
  for (const stale of held.slice(0, Math.max(0, held.length - (KEEP_CHECKPOINTS - 1)))) await cache.delete(stale);
  await cache.put(`/blobs/${sha256}`, new Response(bytes));
}

/**
 * The unit's checkpoint rebuilt from a cached earlier version and the deltas after it, when the
 * deltas are smaller than the checkpoint (docs/protocol.md, "Checkpoint deltas"); null when there
 * is nothing to build on or anything fails, and the caller downloads the checkpoint instead.
 */
async function fromDeltas(link, unit, onBytes) {
  const steps = unit.deltas ?? [];
  if (!steps.length || !self.caches) return null;
  const cache = await self.caches.open(CHECKPOINTS);
  if (await cache.match(`/blobs/${unit.checkpoint.sha256}`)) return null; // fetchBlob finds it
  let first = -1;
  for (let i = steps.length - 1; i >= 0 && first < 0; i--) if (await cache.match(`/blobs/${steps[i].base}`)) first = i;
  if (first < 0) return null;
  const chain = steps.slice(first);
  const bytes = chain.reduce((sum, step) => sum + step.delta.size, 0);
  if (bytes >= unit.checkpoint.size) return null;
  try {
    const held = await cache.match(`/blobs/${chain[0].base}`);
    let current = new Uint8Array(await held.arrayBuffer());
    if ((await sha256Hex(current)) !== chain[0].base) throw new Error("the cached base failed its SHA-256 check");
    let done = 0;
    for (const step of chain) {
      const delta = await fetchBlob(link, step.delta, (d) => onBytes(Math.min(unit.checkpoint.size, done + d)));
      done += step.delta.size;
      current = applyDelta(current, delta);
      if ((await sha256Hex(current)) !== step.result) throw new Error(`the delta to ${step.result.slice(0, 12)} rebuilt other bytes`);
    }
    await keepCheckpoint(cache, unit.checkpoint.sha256, current);
    post({ type: "checkpoint", how: "deltas", version: unit.model_version, deltas: chain.length, bytes, size: unit.checkpoint.size });
    return current;
  } catch (error) {
    post({ type: "error", message: `rebuilding version ${unit.model_version} from deltas failed (${error.message}); downloading it` });
    return null;
  }
}

async function sessionFor(sha256, graph) {
  if (!sessions.has(sha256)) {
    ort.env.wasm.numThreads = settings.threads;
    sessions.set(sha256, await ort.InferenceSession.create(graph, { executionProviders: ["wasm"] }));
  }
  return sessions.get(sha256);
}

/** Trains `unit` (protocol.md, "Training a unit") and submits it; resolves when the result is in. */
async function doUnit(link, unit) {
  post({ type: "unit", kind: unit.kind, unitId: unit.unit_id, leaseId: unit.lease_id, campaign: unit.campaign_name, steps: unit.recipe.steps });
  const progress = { step: 0, loss: null, tokens: 0, phase: "downloading", lost: null };
  const every = link.welcome.heartbeat_interval_s * 1000;
  const beat = async () => {
    try {
      await link.request(
        F.progress(unit, progress),
        (m) => m.type === "lease_extended" && m.unit_id === unit.unit_id,
        "progress",
        unit.unit_id,
      );
    } catch (error) {
      if (LOST.has(error.code)) progress.lost = error.message;
    }
  };
  const heartbeat = setInterval(beat, Math.max(1000, every * 0.8));
  try {
    if (unit.runtime !== "onnxruntime" || !unit.graph) throw Object.assign(new Error("a unit for another runtime"), { reason: "error" });
    if (!F.CODECS.includes(unit.codec.name)) throw Object.assign(new Error(`codec ${unit.codec.name}`), { reason: "error" });
    status("downloading", unit.campaign_name);
    const refs = [unit.graph, unit.checkpoint, unit.data, ...(unit.moments ? [unit.moments] : [])];
    const total = refs.reduce((sum, r) => sum + r.size, 0);
    let before = 0;
    const blobs = [];
    for (const ref of refs) {
      // A check unit's weights are one update's step: nobody asks for them again.
      const keep = ref === unit.graph ? "graph" : ref === unit.checkpoint && unit.kind !== "check" ? "checkpoint" : null;
      const onBytes = (done) => post({ type: "download", done: before + done, total });
      const rebuilt = keep === "checkpoint" ? await fromDeltas(link, unit, onBytes) : null;
      blobs.push(rebuilt ?? (await fetchBlob(link, ref, onBytes, { keep })));
      before += ref.size;
    }
    const [graph, checkpoint, data, momentsBlob] = blobs;
    const recipe = unit.recipe;
    const ids = tokenIds(data, unit.data_dtype, unit.data_tokens);
    if (ids.length < tokensNeeded(recipe)) throw new Error("the data slice is shorter than the recipe needs");
    const weights = readSafetensors(checkpoint);
    const session = await sessionFor(unit.graph.sha256, graph);
    if (unit.kind === "evaluate" || unit.kind === "check") {
      progress.phase = "training";
      await evaluate(link, unit, session, weights, ids, progress);
      return;
    }
    const shard = unit.shard;
    const params = {};
    const start = {};
    const m = {};
    const v = {};
    const feeds = {};
    for (const [name, { shape, data: values }] of weights) {
      if (shard.includes(name)) {
        const wanted = unit.shard_shapes[name];
        if (wanted.length !== shape.length || wanted.some((d, i) => d !== shape[i])) throw new Error(`${name} has the wrong shape`);
        start[name] = values;
        params[name] = values;
        m[name] = new Float32Array(values.length);
        v[name] = new Float32Array(values.length);
      } else {
        feeds[`frozen.${name}`] = new ort.Tensor("float32", values, shape);
      }
    }
    const shapes = Object.fromEntries(shard.map((n) => [n, unit.shard_shapes[n]]));
    if (momentsBlob) {
      // AdamW's v starts from the campaign's shared second moment (a frame of every checkpoint tensor).
      const all = Object.fromEntries([...weights].map(([name, { shape }]) => [name, shape]));
      const records = decodeMoments(momentsBlob, all);
      for (const n of shard) v[n] = expandMoment(records, n, shapes[n]);
    }
    const losses = [];
    let seconds = 0;
    for (let s = 0; s < recipe.steps; s++) {
      if (paused) {
        progress.phase = "paused";
        if (!(await whileRunning(`step ${s} of ${recipe.steps}`, PAUSE_HEARTBEATS * every))) {
          // Paused for long (tab hidden, on battery): the lease would run out; let someone else train it.
          throw Object.assign(new Error("paused too long; the unit was given back"), { reason: "user_request" });
        }
      }
      if (stopping) throw Object.assign(new Error("the page was closed"), { reason: "user_request" });
      if (link.closed) throw new Fatal(`the connection closed (${link.closed})`, link.closed);
      if (progress.lost) throw Object.assign(new Error(progress.lost), { lost: true });
      progress.phase = "training";
      status("training", unit.campaign_name);
      const began = performance.now();
      const { inputs, targets, rows } = stepBatch(ids, recipe, s);
      const lr = unitRate(recipe, s);
      for (const n of shard) {
        feeds[`param.${n}`] = new ort.Tensor("float32", params[n], shapes[n]);
        feeds[`m.${n}`] = new ort.Tensor("float32", m[n], shapes[n]);
        feeds[`v.${n}`] = new ort.Tensor("float32", v[n], shapes[n]);
      }
      feeds.input_ids = new ort.Tensor("int64", inputs, [rows, recipe.seq_len]);
      feeds.targets = new ort.Tensor("int64", targets, [rows, recipe.seq_len]);
      feeds.hyper = new ort.Tensor(
        "float32",
        new Float32Array([s + 1, lr, recipe.beta1, recipe.beta2, recipe.eps, recipe.weight_decay, recipe.grad_clip]),
        [7],
      );
      const out = await session.run(feeds);
      const loss = out.loss.data[0];
      if (!Number.isFinite(loss) || loss > 1e6) throw Object.assign(new Error(`training diverged: loss ${loss}`), { reason: "diverged" });
      for (const n of shard) {
        params[n] = out[`new_param.${n}`].data;
        m[n] = out[`new_m.${n}`].data;
        v[n] = out[`new_v.${n}`].data;
      }
      const elapsed = (performance.now() - began) / 1000;
      seconds += elapsed;
      losses.push(loss);
      progress.step = s + 1;
      progress.loss = loss;
      progress.tokens = (s + 1) * rows * recipe.seq_len;
      post({ type: "step", kind: "train", step: s + 1, steps: recipe.steps, loss, tokensPerSecond: (rows * recipe.seq_len) / elapsed });
      if (settings.cpuShare < 1) await sleep(elapsed * 1000 * (1 / settings.cpuShare - 1));
    }
    const delta = {};
    for (const n of shard) {
      const d = new Float32Array(start[n].length);
      for (let i = 0; i < d.length; i++) d[i] = start[n][i] - params[n][i];
      delta[n] = d;
    }
    const update = encodeUpdate(unit.codec, shard, shapes, delta);
    if (update.length > unit.max_update_bytes) throw new Error(`the update is ${update.length} bytes, over the unit's limit`);
    const metrics = { losses, tokens: progress.tokens, seconds: Math.min(seconds, 1e7), deviceName: settings.deviceName };
    const moments = recipe.shared_moments ? encodeMoments(shapes, v) : new Uint8Array(0);
    clearInterval(heartbeat);
    status("submitting", unit.campaign_name);
    const result = await link.request(
      F.submit(unit, update, await sha256Hex(update), metrics, moments),
      (message) => message.type === "result" && message.unit_id === unit.unit_id,
      "submit",
      unit.unit_id,
    );
    post({ type: "result", kind: "train", status: result.status, code: result.code, message: result.message, credit: result.credit });
  } catch (error) {
    if (error instanceof Fatal) {
      settings.leftover = { unit_id: unit.unit_id, lease_id: unit.lease_id }; // given back after reconnecting
      throw error;
    }
    if (!error.lost) {
      const reason = error.reason ?? "error";
      try {
        link.send(F.abandon(unit, reason, String(error.message)));
      } catch {
        // the connection is gone; the lease runs out
      }
    }
    post({ type: "error", message: `unit ${unit.unit_id.slice(0, 8)}: ${error.message}` });
  } finally {
    clearInterval(heartbeat);
    post({ type: "unit-done", unitId: unit.unit_id });
  }
}

/**
 * An evaluate or check unit: the loss graph over the unit's batches (protocol.md, "Training a unit": the
 * batches). A check unit's checkpoint is another volunteer's update applied to a version; the work is the same.
 */
async function evaluate(link, unit, session, weights, ids, progress) {
  const recipe = unit.recipe;
  const feeds = {};
  for (const [name, { shape, data }] of weights) feeds[`param.${name}`] = new ort.Tensor("float32", data, shape);
  const missing = session.inputNames.filter((name) => name.startsWith("param.") && !(name in feeds));
  if (missing.length) throw new Error(`the checkpoint lacks ${missing.slice(0, 3).join(", ")}`);
  status(unit.kind === "check" ? "checking" : "evaluating", `${unit.campaign_name}, version ${unit.model_version}`);
  const losses = [];
  const began = performance.now();
  for (let s = 0; s < recipe.steps; s++) {
    if (stopping) throw Object.assign(new Error("the page was closed"), { reason: "user_request" });
    if (link.closed) throw new Fatal(`the connection closed (${link.closed})`, link.closed);
    const { inputs, targets, rows } = stepBatch(ids, recipe, s);
    feeds.input_ids = new ort.Tensor("int64", inputs, [rows, recipe.seq_len]);
    feeds.targets = new ort.Tensor("int64", targets, [rows, recipe.seq_len]);
    const out = await session.run(feeds);
    const loss = out.loss.data[0];
    if (!Number.isFinite(loss) || loss < 0 || loss > 1e6) throw Object.assign(new Error(`loss ${loss}`), { reason: "diverged" });
    losses.push(loss);
    progress.step = s + 1;
    post({ type: "step", kind: unit.kind, step: s + 1, steps: recipe.steps, loss, tokensPerSecond: 0 });
  }
  const seconds = (performance.now() - began) / 1000;
  status("submitting", unit.campaign_name);
  const result = await link.request(
    F.report(unit, losses, seconds, settings.deviceName),
    (message) => message.type === "result" && message.unit_id === unit.unit_id,
    "report",
    unit.unit_id,
  );
  post({ type: "result", kind: unit.kind, status: result.status, code: result.code, message: result.message, credit: result.credit });
}

async function work(link) {
  if (settings.leftover) {
    // A unit held before a reload or a lost connection: its progress is gone, so give it back at once.
    link.send(F.abandon(settings.leftover, "user_request", "its progress was lost (a reload or a lost connection)"));
    post({ type: "unit-done", unitId: settings.leftover.unit_id });
    settings.leftover = null;
  }
  while (!stopping) {
    await whileRunning();
    if (stopping) return;
    status("waiting", "asking for work");
    let reply;
    try {
      reply = await link.request(F.requestWork(), (m) => m.type === "work_unit" || m.type === "no_work", "request_work");
    } catch (error) {
      if (error instanceof Fatal) throw error;
      status("waiting", error.message);
      await sleep((error.retryAfter ?? 30) * 1000);
      continue;
    }
    if (reply.type === "no_work") {
      status("waiting", reply.reason);
      await sleep(Math.max(1, reply.retry_after_s) * 1000);
      continue;
    }
    await doUnit(link, reply);
  }
}

async function run() {
  let attempt = 0;
  while (!stopping) {
    const link = new Link(settings.url);
    try {
      status("connecting", settings.url);
      const welcome = await link.open(
        F.hello({
          token: settings.token,
          name: settings.name,
          clientVersion: settings.clientVersion,
          memoryBytes: settings.memoryBytes,
          threads: settings.threads,
          platform: settings.platform,
          deviceName: settings.deviceName,
        }),
      );
      attempt = 0;
      if (welcome.token) {
        settings.token = welcome.token;
        post({ type: "token", token: welcome.token });
      }
      post({ type: "welcome", volunteerId: welcome.volunteer_id, credit: welcome.credit_total });
      self.currentLink = link;
      await work(link);
      link.close("the volunteer stopped");
      return;
    } catch (error) {
      link.close("error");
      if (error.code === "unauthorized") {
        settings.token = null;
        post({ type: "token", token: null });
        continue;
      }
      if (NO_RECONNECT.has(link.closed) || ["version_mismatch", "banned", "session_replaced"].includes(error.code)) {
        status("stopped", error.message);
        return;
      }
      attempt += 1;
      const delay = Math.min(300, 2 ** attempt) * (0.5 + Math.random() / 2);
      status("reconnecting", `${error.message}; again in ${delay.toFixed(0)} s`);
      await sleep(delay * 1000);
    }
  }
}

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === "start" && settings === null) {
    settings = { ...message, threads: self.crossOriginIsolated ? Math.max(1, message.threads) : 1 };
    run().then(() => status("stopped", "stopped"));
  } else if (message.type === "pause") {
    paused = true;
  } else if (message.type === "resume") {
    paused = false;
    unpause();
  } else if (message.type === "cpu") {
    if (settings) settings.cpuShare = Math.min(1, Math.max(0.1, message.share));
  } else if (message.type === "stop") {
    stopping = true;
    wake();
    unpause();
    self.currentLink?.close("the page was closed");
  }
};
