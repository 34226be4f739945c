"""The GPU cap and the choice of GPUs, as far as they go without a GPU here: which share the training
process is held to on which device, which GPUs it is shown, and the preferences that carry them. (Their
effect on a real GPU is measured only where a CUDA machine is lent; none was, see the issue's note.)"""

from __future__ import annotations

import json

import pytest

from volunteer_app.preferences import Preferences, PreferencesError
from volunteer_app.tray.child import duty_percent, gpu_environment
from volunteer_app.tray.ipc import ChildConfig, IpcError, decode, encode


@pytest.mark.parametrize(
    ("kind", "cpu", "gpu", "held"),
    [("cpu", 70, 30, 70), ("cuda", 70, 30, 30), ("cuda", 20, 30, 20), ("mps", 100, 50, 50), ("rocm", 100, 100, 100)],
)
def test_on_a_gpu_the_process_is_held_to_the_smaller_of_the_two_caps(kind: str, cpu: int, gpu: int, held: int) -> None:
    assert duty_percent(ChildConfig("ws://x/ws", cpu_percent=cpu, gpu_percent=gpu), kind) == held


def test_the_chosen_gpus_are_the_only_ones_cuda_and_rocm_see() -> None:
    assert gpu_environment(()) == {}
    assert gpu_environment((0, 2)) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # nvidia-smi's numbers, not CUDA's fastest-first order
        "CUDA_VISIBLE_DEVICES": "0,2",
        "HIP_VISIBLE_DEVICES": "0,2",
    }
    config = ChildConfig("ws://x/ws", gpus=(1,), gpu_percent=40)
    assert decode(encode(config)) == config  # what the app sends the training process


def test_the_gpu_preferences_are_checked() -> None:
    assert Preferences(gpus=[2, 0, 2]).gpus == (0, 2)  # type: ignore[arg-type]
    assert Preferences(gpu_percent=35).gpu_percent == 35
    for bad in ([-1], [64], ["0"], "0"):
        with pytest.raises(PreferencesError, match="GPU numbers"):
            Preferences(gpus=bad)  # type: ignore[arg-type]
    with pytest.raises(PreferencesError):
        Preferences(gpu_percent=0)


@pytest.mark.parametrize("gpus", [["0"], [True], list(range(65)), 3])
def test_a_config_whose_gpus_are_not_a_short_list_of_numbers_is_refused(gpus: object) -> None:
    raw = json.dumps({"type": "ChildConfig", "coordinator_url": "ws://x/ws", "gpus": gpus}).encode()
    with pytest.raises(IpcError, match=r"ChildConfig\.gpus"):
        decode(raw)
