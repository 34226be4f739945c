// The training recipe's arithmetic (docs/protocol.md, "Training a unit"): the learning rate of a step
// and the micro-batches of a data slice. The step graph computes the rest.

/** Learning rate at global step g: linear warmup, then cosine decay to lr × min_lr_ratio. */
export function learningRate(recipe, g) {
  const { lr, warmup_steps: warmup, total_steps: total, min_lr_ratio: ratio } = recipe;
  if (g < warmup) return (lr * (g + 1)) / warmup;
  if (total <= warmup) return lr;
  const progress = Math.min(1, (g - warmup) / (total - warmup));
  const floor = lr * ratio;
  return floor + (lr - floor) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Learning rate of the unit's inner step i (from 0): the schedule at global step global_step + i,
 * ramped linearly over the unit's first unit_warmup_steps steps. */
export function unitRate(recipe, i) {
  const rate = learningRate(recipe, recipe.global_step + i);
  const warmup = recipe.unit_warmup_steps ?? 0;
  return i < warmup ? rate * ((i + 1) / warmup) : rate; // the reference's order of operations
}

export function tokensNeeded(recipe) {
  return recipe.steps * recipe.grad_accum * recipe.batch_size * recipe.seq_len + 1;
}

/** Token ids of a data slice blob: little-endian uint16 or uint32. */
export function tokenIds(bytes, dtype, count) {
  const width = dtype === "uint16" ? 2 : 4;
  if (bytes.byteLength !== count * width) throw new Error(`a data slice of ${bytes.byteLength} bytes, not ${count} ids`);
  const copy = bytes.slice().buffer; // aligned
  return dtype === "uint16" ? new Uint16Array(copy) : new Uint32Array(copy);
}

/**
 * Inputs and targets of step s: grad_accum micro-batches of batch_size × seq_len, stacked, as
 * BigInt64Array (ONNX int64) of grad_accum·batch_size rows.
 */
export function stepBatch(ids, recipe, s) {
  const span = recipe.batch_size * recipe.seq_len;
  const count = recipe.grad_accum * span;
  const inputs = new BigInt64Array(count);
  const targets = new BigInt64Array(count);
  const first = s * count;
  for (let i = 0; i < count; i++) {
    inputs[i] = BigInt(ids[first + i]);
    targets[i] = BigInt(ids[first + i + 1]);
  }
  return { inputs, targets, rows: recipe.grad_accum * recipe.batch_size };
}
