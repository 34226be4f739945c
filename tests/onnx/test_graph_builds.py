"""The coordinator's step graphs (coordinator/graphs.py): built on demand in a process of their own,
served as blobs, remembered across restarts, and chosen per volunteer by its list of runtimes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import onnx

from coordinator.campaign import CampaignSpec
from coordinator.engine import NoWork
from coordinator.graphs import GraphBlob, GraphPending
from coordinator.service import Coordinator, CoordinatorConfig, RuntimeChoice
from tests.support.live import poll
from training.model import ModelConfig


def test_a_campaigns_graph_is_built_once_served_as_a_blob_and_kept_across_a_restart(
    tmp_path: Path, small_dataset: Path
) -> None:
    config = CoordinatorConfig(data_dir=tmp_path, datasets={"small": small_dataset})
    spec = CampaignSpec.from_dict(
        {"name": "graphs", "dataset": "small", "model": "tiny", "inner": {"steps": 2, "batch_size": 2, "seq_len": 32}}
    )
    service = Coordinator.open(config)
    try:
        campaign = service.runtimes[service.create_campaign(spec, owner="test")]
        # Torch first, or torch as the fallback while the graph is built: no waiting.
        assert service.runtime_choice(campaign, ("torch", "onnxruntime")) == RuntimeChoice("torch")
        assert service.runtime_choice(campaign, ("onnxruntime", "torch")) == RuntimeChoice("torch")
        waiting = service.runtime_choice(campaign, ("onnxruntime",))
        assert isinstance(waiting, NoWork) and "building" in waiting.reason and waiting.retry_after_s == 15

        def built() -> RuntimeChoice | None:
            choice = service.runtime_choice(campaign, ("onnxruntime",))
            return choice if isinstance(choice, RuntimeChoice) else None

        choice = poll("the step graph", built, timeout=300)
        (graph,) = choice.graphs  # one shard
        data = service.blobs.get(graph.sha256)
        assert len(data) == graph.size and service.volunteer_may_read("anyone", graph.sha256)
        model = onnx.load_from_string(data)
        assert [i.name for i in model.graph.input][:1] == ["param.embed.weight"]
        assert service.runtime_choice(campaign, ("onnxruntime", "torch")) == choice
    finally:
        service.close()
    again = Coordinator.open(config)
    try:
        campaign = next(iter(again.runtimes.values()))
        assert again.runtime_choice(campaign, ("onnxruntime",)) == choice, "served at once, not exported again"
    finally:
        again.close()


def test_a_graph_that_cannot_be_built_is_reported_and_not_retried(tmp_path: Path, small_dataset: Path) -> None:
    service = Coordinator.open(CoordinatorConfig(data_dir=tmp_path, datasets={"small": small_dataset}))
    try:
        config = ModelConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, d_ff=32, max_seq_len=16)

        def failed() -> GraphPending | None:
            answer = service.graphs.step_graph(config, ["no.such.parameter"])
            assert not isinstance(answer, GraphBlob)
            return answer if answer.failed else None

        refused = poll("the failed build", failed, timeout=120)
        assert "doesn't export to ONNX" in refused.reason and "no.such.parameter" in refused.reason
    finally:
        service.close()


def test_a_build_process_that_dies_is_reported_as_a_failure_not_as_building_forever(
    tmp_path: Path, small_dataset: Path
) -> None:
    """Killed for memory, or a native crash: the process says nothing; the builder sees it end."""
    service = Coordinator.open(CoordinatorConfig(data_dir=tmp_path, datasets={"small": small_dataset}))
    try:
        config = ModelConfig(vocab_size=64, d_model=16, n_layer=1, n_head=2, d_ff=32, max_seq_len=16)
        shard = ["embed.weight"]
        assert isinstance(service.graphs.step_graph(config, shard), GraphPending)
        os.kill(poll("the build process", service.graphs.build_pid, timeout=60), signal.SIGKILL)

        def failed() -> GraphPending | None:
            answer = service.graphs.step_graph(config, shard)
            assert not isinstance(answer, GraphBlob)
            return answer if answer.failed else None

        refused = poll("the failure", failed, timeout=60)
        assert "the build process died (exit code -9)" in refused.reason
    finally:
        service.close()
