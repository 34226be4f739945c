from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from protocol.codecs import CodecConfig, CodecError, TensorSpec, decode, encoded_size_bound
from protocol.messages import BlobRef, InnerRecipe, ModelSpec, WorkUnit, encode
from protocol.messages import ModelConfig as WireModelConfig
from training.checkpoint import save_weights
from training.model import build_model
from volunteer_app.devices import DeviceInfo
from volunteer_app.unit_runner import Fault, RunnerError, TrainedUnit, UnitRunner, UnitStore, model_config_of

CPU = DeviceInfo("cpu", "test CPU", 1 << 30)
WIRE_CONFIG = WireModelConfig(
    vocab_size=64, d_model=32, n_layer=2, n_head=2, d_ff=64, max_seq_len=16, rope_theta=10000.0, norm_eps=1e-5
)
RECIPE = InnerRecipe(
    steps=4, batch_size=2, seq_len=16, grad_accum=1, lr=1e-2, min_lr_ratio=0.1, warmup_steps=1, total_steps=8,
    global_step=0, weight_decay=0.1, grad_clip=1.0, beta1=0.9, beta2=0.95, eps=1e-8,
)  # fmt: skip
MODEL = build_model(model_config_of(WIRE_CONFIG), seed=3)
CHECKPOINT = save_weights(dict(MODEL.named_parameters()))
SHAPES = {name: tuple(p.shape) for name, p in MODEL.named_parameters()}
TOKENS = (np.arange(RECIPE.tokens_needed) * 7 % 64).astype("<u2")
DATA = TOKENS.tobytes()
INT8 = CodecConfig("int8", block_size=64)


def make_unit(*, shard: tuple[str, ...] | None = None, max_update_bytes: int | None = None) -> WorkUnit:
    shard = shard or tuple(SHAPES)
    specs = {n: TensorSpec(SHAPES[n]) for n in shard}
    return WorkUnit(
        kind="train",
        runtime="torch",
        unit_id="u-1",
        lease_id="l-1",
        lease_deadline=2e9,
        campaign_id="7",
        campaign_name="test",
        model_version=0,
        model=ModelSpec(preset="tiny", config=WIRE_CONFIG),
        checkpoint=BlobRef(sha256=hashlib.sha256(CHECKPOINT).hexdigest(), size=len(CHECKPOINT)),
        checkpoint_format="safetensors",
        data=BlobRef(sha256=hashlib.sha256(DATA).hexdigest(), size=len(DATA)),
        data_dtype="uint16",
        data_tokens=len(TOKENS),
        shard=shard,
        shard_shapes={n: SHAPES[n] for n in shard},
        recipe=RECIPE,
        seed=11,
        codec=INT8.to_dict(),  # type: ignore[arg-type]
        max_update_bytes=max_update_bytes or encoded_size_bound(specs, INT8),
    )


def run(tmp_path: Path, unit: WorkUnit, *, fault: Fault | None = None) -> TrainedUnit:
    store = UnitStore(tmp_path)
    store.save_unit(encode(unit))
    trained = UnitRunner(unit, store, CPU, fault=fault).run(CHECKPOINT, DATA)
    assert trained is not None
    return trained


def decoded(unit: WorkUnit, update: bytes) -> dict[str, torch.Tensor]:
    return decode(update, {n: TensorSpec(unit.shard_shapes[n]) for n in unit.shard}, config=INT8)


def test_a_tiny_unit_trains_and_its_update_fits_the_unit(tmp_path: Path) -> None:
    unit = make_unit()
    steps: list[int] = []
    store = UnitStore(tmp_path)
    trained = UnitRunner(unit, store, CPU).run(CHECKPOINT, DATA, on_step=lambda r: steps.append(r.step))
    assert trained is not None
    assert steps == [1, 2, 3, 4]
    assert len(trained.metrics.losses) == 4 and trained.metrics.tokens == 4 * 2 * 16
    assert trained.metrics.device == "cpu" and trained.metrics.device_name == "test CPU"
    assert len(trained.update) <= unit.max_update_bytes
    assert trained.update_sha256 == hashlib.sha256(trained.update).hexdigest()
    delta = decoded(unit, trained.update)
    assert list(delta) == list(unit.shard)
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in delta.values())


def test_pausing_at_step_2_and_resuming_gives_the_same_update_as_an_uninterrupted_run(tmp_path: Path) -> None:
    unit = make_unit()
    whole = run(tmp_path / "whole", unit)

    store = UnitStore(tmp_path / "paused")
    store.save_unit(encode(unit))
    done: list[int] = []
    paused = UnitRunner(unit, store, CPU).run(
        CHECKPOINT, DATA, on_step=lambda r: done.append(r.step), should_stop=lambda: len(done) >= 2
    )
    assert paused is None and done == [1, 2]
    assert store.has_state(unit.unit_id)
    # A new runner, as after a restart: it must pick up at step 3 from the local checkpoint.
    resumed_steps: list[int] = []
    resumed = UnitRunner(unit, store, CPU).run(CHECKPOINT, DATA, on_step=lambda r: resumed_steps.append(r.step))
    assert resumed is not None and resumed_steps == [3, 4]
    assert resumed.metrics.losses == whole.metrics.losses
    assert resumed.update == whole.update


def test_only_the_shard_is_trained_and_sent(tmp_path: Path) -> None:
    shard = ("blocks.1.attn.qkv.weight", "norm.weight")
    unit = make_unit(shard=shard)
    trained = run(tmp_path, unit)
    assert list(decoded(unit, trained.update)) == list(shard)


def test_an_update_larger_than_the_unit_allows_is_not_submitted(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="at most 100"):
        run(tmp_path, make_unit(max_update_bytes=100))


def test_error_feedback_carries_what_the_codec_dropped_into_the_next_unit(tmp_path: Path) -> None:
    unit = make_unit()
    first = run(tmp_path, unit)
    assert UnitStore(tmp_path).load_feedback(unit.campaign_id).residual == {}  # not before the update is kept
    UnitStore(tmp_path).save_submit(unit.unit_id, b"submit frame", trained=first)
    residual = UnitStore(tmp_path).load_feedback(unit.campaign_id).residual
    assert sorted(residual) == sorted(unit.shard)
    assert any(t.abs().sum() > 0 for t in residual.values())
    second = run(tmp_path, unit)  # same slice and start: only the residual differs
    assert second.update != first.update
    assert UnitStore(tmp_path).load_feedback("another campaign").residual == {}


def test_a_data_slice_outside_the_vocabulary_is_refused(tmp_path: Path) -> None:
    unit = make_unit()
    bad = np.full(len(TOKENS), 64, dtype="<u2").tobytes()
    with pytest.raises(RunnerError, match="outside the vocabulary"):
        UnitRunner(unit, UnitStore(tmp_path), CPU).run(CHECKPOINT, bad)


def test_a_checkpoint_for_another_model_is_refused(tmp_path: Path) -> None:
    unit = make_unit()
    wrong = save_weights({"embed.weight": torch.zeros(3, 3)})
    with pytest.raises(RunnerError, match="checkpoint"):
        UnitRunner(unit, UnitStore(tmp_path), CPU).run(wrong, DATA)


@pytest.mark.parametrize("fault", ["nan", "shape", "norm100", "flipped"])
def test_injected_faults_corrupt_the_update_as_named(tmp_path: Path, fault: Fault) -> None:
    unit = make_unit()
    honest = decoded(unit, run(tmp_path / "honest", unit).update)
    bad = run(tmp_path / fault, unit, fault=fault).update
    if fault in ("nan", "shape"):
        with pytest.raises(CodecError):
            decoded(unit, bad)
        return
    got = decoded(unit, bad)
    scale = 100.0 if fault == "norm100" else -1.0
    for name in unit.shard:
        assert torch.allclose(got[name], scale * honest[name], rtol=0.05, atol=0.05 * got[name].abs().max().item())


def test_the_store_keeps_units_until_discarded(tmp_path: Path) -> None:
    store = UnitStore(tmp_path)
    unit = make_unit()
    store.save_unit(encode(unit))
    store.save_submit(unit.unit_id, b"frame")
    assert [u.unit_id for u, _ in store.units()] == ["u-1"]
    assert store.load_submit("u-1") == b"frame"
    store.discard("u-1")
    assert store.units() == [] and store.load_submit("u-1") is None
    other = msgspec.structs.replace(unit, unit_id="u:2")  # ':' is an id character but not a Windows file name one
    store.save_unit(encode(other))
    assert [u.unit_id for u, _ in store.units()] == ["u:2"]


def _shared(fill: float) -> bytes:
    from protocol.moments import encode_moments, moment_specs

    return encode_moments({name: torch.full(spec.shape, fill) for name, spec in moment_specs(SHAPES).items()})


def _sharing(moments: bytes | None, shard: tuple[str, ...] | None = None) -> WorkUnit:
    ref = BlobRef(sha256=hashlib.sha256(moments).hexdigest(), size=len(moments)) if moments is not None else None
    unit = make_unit(shard=shard)
    return msgspec.structs.replace(unit, recipe=msgspec.structs.replace(RECIPE, shared_moments=True), moments=ref)


def test_a_unit_that_shares_moments_starts_from_them_and_returns_its_own(tmp_path: Path) -> None:
    from protocol.moments import decode_moments

    fresh = run(tmp_path / "fresh", _sharing(None))
    assert fresh.moments and run(tmp_path / "plain", make_unit()).moments == b""
    shard = ("blocks.1.mlp.up.weight", "norm.weight")
    unit = _sharing(_shared(1e-3), shard)
    store = UnitStore(tmp_path / "seeded")
    seeded = UnitRunner(unit, store, CPU).run(CHECKPOINT, DATA, moments=_shared(1e-3))
    assert seeded is not None
    # A large seed keeps the first steps small: a unit that moved much less than a fresh one's.
    moved = sum(float(t.abs().sum()) for t in decoded(unit, seeded.update).values())
    moved_fresh = sum(float(decoded(fresh_unit := make_unit(), fresh.update)[n].abs().sum()) for n in shard)
    assert fresh_unit.shard != shard and moved < 0.5 * moved_fresh
    records = decode_moments(seeded.moments, {n: SHAPES[n] for n in shard})
    assert sorted(records) == ["blocks.1.mlp.up.weight:cols", "blocks.1.mlp.up.weight:rows", "norm.weight"]
    assert all(bool((values > 0).all()) for values in records.values())


def test_a_moments_blob_that_is_missing_or_not_a_moments_frame_is_refused(tmp_path: Path) -> None:
    unit = _sharing(_shared(1.0))
    with pytest.raises(RunnerError, match="moments blob is missing"):
        UnitRunner(unit, UnitStore(tmp_path / "a"), CPU).run(CHECKPOINT, DATA)
    with pytest.raises(RunnerError, match="moments are unusable"):
        UnitRunner(unit, UnitStore(tmp_path / "b"), CPU).run(CHECKPOINT, DATA, moments=_shared(-1.0))
