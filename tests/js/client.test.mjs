// The browser volunteer's encoders and readers against byte vectors from the Python reference:
// tests/protocol/test_js_client.py writes the vectors to $CW_VECTORS and runs `node --test` here.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as frames from "../../coordinator/static/js/volunteer/frames.js";
import {
  applyDelta,
  decodeMoments,
  encodeMoments,
  encodeUpdate,
  expandMoment,
  readSafetensors,
  roundHalfEven,
  TensorError,
  writeCheckpoint,
} from "../../coordinator/static/js/volunteer/tensors.js";
import { learningRate, stepBatch, tokenIds, unitRate } from "../../coordinator/static/js/volunteer/recipe.js";

const vectors = JSON.parse(readFileSync(process.env.CW_VECTORS, "utf8"));
const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytesOf = (text) => new Uint8Array(Buffer.from(text, "hex"));
const floats = (text) => new Float32Array(bytesOf(text).buffer);

test("every frame the page sends is the reference's bytes", () => {
  const f = vectors.frames;
  assert.equal(hex(frames.hello(f.hello.args)), f.hello.hex);
  assert.equal(hex(frames.requestWork()), f.request_work.hex);
  const b = f.blob_request.args;
  assert.equal(hex(frames.blobRequest(b.sha256, b.offset, b.length)), f.blob_request.hex);
  const unit = f.unit;
  assert.equal(hex(frames.progress(unit, f.progress.args)), f.progress.hex);
  const s = f.submit.args;
  assert.equal(hex(frames.submit(unit, bytesOf(s.update), s.update_sha256, s.metrics)), f.submit.hex);
  assert.equal(
    hex(frames.submit(unit, bytesOf(s.update), s.update_sha256, s.metrics, bytesOf(s.moments))),
    f.submit.with_moments_hex,
  );
  assert.equal(hex(frames.abandon(unit, "user_request", "tab closed")), f.abandon.hex);
  const r = f.report.args;
  assert.equal(hex(frames.report(unit, r.losses, r.seconds, r.deviceName)), f.report.hex);
  assert.equal(hex(frames.goodbye("tab closed")), f.goodbye.hex);
  assert.equal(hex(frames.keepalive()), f.keepalive.hex);
});

test("frames from the coordinator read as the reference wrote them", () => {
  for (const [name, vector] of Object.entries(vectors.received)) {
    const message = frames.readFrame(bytesOf(vector.hex));
    const expected = JSON.parse(vector.json);
    for (const [key, value] of Object.entries(expected)) {
      if (value && typeof value === "object" && value.__bin__ !== undefined) {
        assert.equal(hex(message[key]), value.__bin__, `${name}.${key}`);
      } else {
        assert.deepEqual(message[key], value, `${name}.${key}`);
      }
    }
  }
  assert.throws(() => frames.readFrame(new Uint8Array([0x93, 1, 2, 3])), frames.FrameError);
  assert.throws(() => frames.readFrame(bytesOf(vectors.old_version_hex)), /protocol version 1/);
});

test("round half to even, as the reference quantizes", () => {
  assert.deepEqual([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4, -2.6].map(roundHalfEven), [-2, -2, -0, 0, 2, 2, 2, -3]);
});

test("updates encode to the reference's bytes: fp32, bf16 with ties, and int8 with ties, zeros and short blocks", () => {
  for (const vector of vectors.updates) {
    const tensors = Object.fromEntries(Object.entries(vector.tensors).map(([k, v]) => [k, floats(v)]));
    const encoded = encodeUpdate(vector.codec, vector.shard, vector.shapes, tensors);
    assert.equal(encoded.length, vector.hex.length / 2, vector.label);
    assert.equal(hex(encoded), vector.hex, vector.label);
  }
});

test("a safetensors checkpoint reads back to its tensors, and a broken one is refused", () => {
  const tensors = readSafetensors(bytesOf(vectors.checkpoint.hex));
  for (const [name, expected] of Object.entries(vectors.checkpoint.tensors)) {
    assert.deepEqual(tensors.get(name).shape, expected.shape);
    assert.equal(hex(new Uint8Array(tensors.get(name).data.buffer)), expected.hex);
  }
  const broken = bytesOf(vectors.checkpoint.hex).slice(0, 40);
  assert.throws(() => readSafetensors(broken));
});

test("a checkpoint rebuilt from a delta is the coordinator's, byte for byte; a broken delta is refused", () => {
  const { base, deltas, broken } = vectors.deltas;
  for (const delta of deltas) {
    assert.equal(hex(applyDelta(bytesOf(base), bytesOf(delta.hex))), delta.result, delta.codec);
  }
  // The canonical form: what the page writes of the base's tensors is the base.
  assert.equal(hex(writeCheckpoint(readSafetensors(bytesOf(base)))), base);
  for (const bad of broken) assert.throws(() => applyDelta(bytesOf(base), bytesOf(bad)), TensorError);
});

test("shared moments: the reference's frame expands to its second moments, the page's frame reads back to it", () => {
  const { shapes, v, hex: frame, expanded, broken } = vectors.moments;
  const close = (got, want, what, tolerance) => {
    assert.equal(got.length, want.length, what);
    got.forEach((x, i) => assert.ok(Math.abs(x - want[i]) <= tolerance * Math.abs(want[i]), `${what}[${i}]: ${x} vs ${want[i]}`));
  };
  const records = decodeMoments(bytesOf(frame), shapes);
  for (const [name, shape] of Object.entries(shapes)) close(expandMoment(records, name, shape), floats(expanded[name]), name, 1e-6);
  // The page's own frame of the same moments: the same records, up to a mean's rounding (one bf16 step).
  const mine = encodeMoments(shapes, Object.fromEntries(Object.entries(v).map(([n, h]) => [n, floats(h)])));
  assert.equal(mine.length, bytesOf(frame).length);
  const back = decodeMoments(mine, shapes);
  for (const [name, values] of records) close(back.get(name), values, name, 2 ** -7);
  for (const bad of broken) assert.throws(() => decodeMoments(bytesOf(bad), shapes), TensorError);
});

test("learning rates and step batches follow the recipe", () => {
  const { recipe, rates, unit_rates: unitRates, slice, dtype, steps } = vectors.recipe;
  rates.forEach(([g, expected]) => {
    const got = learningRate(recipe, g);
    assert.ok(Math.abs(got - expected) <= 1e-12 * Math.abs(expected), `step ${g}: ${got} vs ${expected}`);
  });
  unitRates.forEach(([i, expected]) => {
    const got = unitRate(recipe, i);
    assert.ok(Math.abs(got - expected) <= 1e-12 * Math.abs(expected), `unit step ${i}: ${got} vs ${expected}`);
  });
  const ids = tokenIds(bytesOf(slice), dtype, bytesOf(slice).length / 2);
  steps.forEach((expected, s) => {
    const batch = stepBatch(ids, recipe, s);
    assert.deepEqual(Array.from(batch.inputs, Number), expected.inputs, `inputs of step ${s}`);
    assert.deepEqual(Array.from(batch.targets, Number), expected.targets, `targets of step ${s}`);
    assert.equal(batch.rows, recipe.grad_accum * recipe.batch_size);
  });
});
