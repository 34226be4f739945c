"""Text from a trained model: greedy or sampled continuation, bounded in tokens and in time.

    >>> model = model_from_checkpoint(data, config)     # or load_model(path): a checkpoint or an exported folder
    >>> result = generate(model, tokenizer, "def main(", max_new_tokens=40)
    >>> result.text, result.stopped          # the continuation, and "length", "eos" or "time"

No KV cache: every new token runs the model over the last `max_seq_len` tokens. For the presets
volunteers train that is milliseconds per token on a CPU, and it keeps one forward pass — the one the
exports are checked against — as the only one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from training.checkpoint import CheckpointError, load_weights
from training.data.tokenizer import Tokenizer
from training.model import GPT, PRESETS, ModelConfig, build_model, rope_tables

__all__ = ["Generation", "config_for_weights", "generate", "load_model", "model_from_checkpoint", "model_from_weights"]

Stop = Literal["length", "eos", "time"]


@dataclass(frozen=True)
class Generation:
    text: str  # the continuation only
    ids: list[int]  # its token ids
    prompt_tokens: int
    seconds: float
    stopped: Stop


def config_for_weights(
    weights: Mapping[str, torch.Tensor], *, preset: str | None = None, max_seq_len: int | None = None
) -> ModelConfig:
    """The model config of a checkpoint: its shapes give the vocabulary, width, depth and MLP size;
    the heads and context come from the preset of that shape (or the one named). CheckpointError if
    no preset has that shape (pass the campaign's model_config instead)."""
    try:
        vocab, width = weights["embed.weight"].shape
        depth = len({name.split(".")[1] for name in weights if name.startswith("blocks.")})
        d_ff = weights["blocks.0.mlp.gate.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"not a Commonweights model checkpoint ({error})") from None
    names = [preset] if preset else list(PRESETS)
    for name in names:
        if name not in PRESETS:
            raise CheckpointError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        base = PRESETS[name]
        if (base.d_model, base.n_layer, base.d_ff) == (width, depth, d_ff):
            return ModelConfig(
                vocab_size=int(vocab),
                d_model=base.d_model,
                n_layer=base.n_layer,
                n_head=base.n_head,
                d_ff=base.d_ff,
                max_seq_len=max_seq_len or base.max_seq_len,
                rope_theta=base.rope_theta,
                norm_eps=base.norm_eps,
            )
    raise CheckpointError(
        f"no model preset has width {width}, {depth} layers and MLP {d_ff}: give the model config "
        "(the campaign's model_config) instead"
    )


def model_from_weights(weights: Mapping[str, torch.Tensor], config: ModelConfig) -> GPT:
    """An eval-mode model holding exactly `weights` (CheckpointError if they don't fit `config`)."""
    model = build_model(config, device="meta")
    try:
        model.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()}, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"the checkpoint does not fit the model config: {error}") from None
    model.rope = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta, torch.device("cpu"))
    return model.eval()


def model_from_checkpoint(data: bytes, config: ModelConfig | None = None) -> GPT:
    weights = load_weights(data)
    return model_from_weights(weights, config or config_for_weights(weights))


def load_model(path: Path, *, preset: str | None = None) -> GPT:
    """A model from a checkpoint file (ours), or from a Hugging Face folder `commonweights export`
    wrote (its config.json and Llama-named weights)."""
    if not path.is_dir():
        weights = load_weights(path.read_bytes())
        return model_from_weights(weights, config_for_weights(weights, preset=preset))
    from training.export.llama import from_llama_tensors

    try:
        hf = json.loads((path / "config.json").read_text(encoding="utf-8"))
        config = ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            d_model=int(hf["hidden_size"]),
            n_layer=int(hf["num_hidden_layers"]),
            n_head=int(hf["num_attention_heads"]),
            d_ff=int(hf["intermediate_size"]),
            max_seq_len=int(hf["max_position_embeddings"]),
            rope_theta=float(hf.get("rope_theta", 10000.0)),
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        )
        if hf.get("model_type") != "llama" or int(hf.get("num_key_value_heads", config.n_head)) != config.n_head:
            raise ValueError("not a Llama model with one key/value head per query head")
        tensors = load_weights((path / "model.safetensors").read_bytes())
        weights = from_llama_tensors(tensors, config)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a folder `commonweights export` wrote: {error}") from None
    return model_from_weights(weights, config)


@torch.no_grad()
def generate(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int = 0,
    time_limit_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Generation:
    """Continue `prompt`. temperature 0 is greedy (argmax); otherwise sample from the softmax at
    that temperature, over the `top_k` likeliest tokens if given. Stops after `max_new_tokens`, at
    end-of-document, or once `time_limit_s` has passed."""
    if max_new_tokens < 0 or not 0 <= temperature <= 100:
        raise ValueError("max_new_tokens must not be negative, and temperature must be from 0 to 100")
    if top_k is not None and top_k < 1:
        raise ValueError("top_k must be at least 1")
    start = clock()
    context = tokenizer.encode(prompt) or [tokenizer.eos_id]
    prompt_tokens = len(context)
    generator = torch.Generator().manual_seed(seed)
    window = model.config.max_seq_len
    new: list[int] = []
    stopped: Stop = "length"
    for _ in range(max_new_tokens):
        if time_limit_s is not None and clock() - start > time_limit_s:
            stopped = "time"
            break
        ids = torch.tensor([context[-window:]], dtype=torch.long)
        logits = model(ids)[0, -1].float()
        if temperature == 0:
            token = int(logits.argmax())
        else:
            if top_k is not None and top_k < logits.shape[0]:
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            # In float64 a temperature near 0 can't overflow the softmax into NaN: it just turns greedy.
            probabilities = torch.softmax(logits.double() / temperature, dim=-1)
            token = int(torch.multinomial(probabilities, 1, generator=generator))
        if token == tokenizer.eos_id:
            stopped = "eos"
            break
        new.append(token)
        context.append(token)
    return Generation(tokenizer.decode(new), new, prompt_tokens, clock() - start, stopped)
