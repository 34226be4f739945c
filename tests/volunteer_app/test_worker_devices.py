from __future__ import annotations

import pytest

from volunteer_app.devices import DeviceError, DeviceInfo, choose_device, detect_devices, parse_memory

GPU_BOX = [
    DeviceInfo("cuda", "GPU zero", 8 << 30, 0),
    DeviceInfo("cuda", "GPU one", 24 << 30, 1),
    DeviceInfo("cpu", "CPU", 32 << 30),
]


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GiB", 4 << 30),
        ("512M", 512 << 20),
        ("1.5GB", 1_500_000_000),
        ("2g", 2 << 30),
        ("1024", 1024),
        ("64 KiB", 65536),
    ],
)
def test_memory_sizes_read_like_other_tools(text: str, size: int) -> None:
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["", "lots", "4 parsecs", "0", "-1G", "G"])
def test_unreadable_memory_sizes_say_how_to_write_them(text: str) -> None:
    with pytest.raises(DeviceError, match=r"4GiB|more than zero"):
        parse_memory(text)


def test_auto_prefers_the_first_gpu_and_explicit_choices_are_honoured() -> None:
    assert choose_device("auto", GPU_BOX).name == "GPU zero"
    assert choose_device("cuda:1", GPU_BOX).name == "GPU one"
    assert choose_device("cpu", GPU_BOX).kind == "cpu"
    assert str(choose_device("cuda:1", GPU_BOX).torch_device) == "cuda:1"


@pytest.mark.parametrize(
    ("requested", "message"), [("mps", "Metal"), ("cuda:7", "no CUDA device 7"), ("tpu", "unknown")]
)
def test_a_device_this_machine_lacks_is_a_clear_error(requested: str, message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        choose_device(requested, GPU_BOX)


def test_this_machine_always_offers_its_cpu_last_with_its_memory() -> None:
    devices = detect_devices()
    assert devices[-1].kind == "cpu" and devices[-1].memory_bytes > 0
    assert all(d.name and d.name.isprintable() for d in devices)
