"""Which compute devices this machine has, which one a volunteer trains on, and memory-size flags.

    >>> devices = detect_devices()                    # CUDA first, then MPS, then the CPU
    >>> chosen = choose_device("auto", devices)
    >>> parse_memory("4GiB"), parse_memory("512M"), parse_memory("1.5GB")
    (4294967296, 536870912, 1500000000)

Memory sizes follow the usual tool conventions: bare suffixes and the IEC ones are binary
(`K`/`KiB` = 1024 bytes, like `docker --memory`), the SI ones with a `B` are decimal (`KB` = 1000).
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_CHOICES",
    "DeviceError",
    "DeviceInfo",
    "choose_device",
    "cpu_name",
    "detect_devices",
    "parse_memory",
    "platform_tag",
    "system_memory_bytes",
]

DeviceKind = Literal["cpu", "cuda", "mps"]
DEVICE_CHOICES: Final = ("auto", "cpu", "cuda", "mps")

_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "kb": 10**3,
    "m": 1 << 20,
    "mib": 1 << 20,
    "mb": 10**6,
    "g": 1 << 30,
    "gib": 1 << 30,
    "gb": 10**9,
    "t": 1 << 40,
    "tib": 1 << 40,
    "tb": 10**12,
}
_MEMORY: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*")
_NAME_LIMIT: Final = 128  # protocol.limits.MAX_NAME_LEN


class DeviceError(ValueError):
    """A device request this machine can't serve, or a memory size that doesn't parse."""

    code = "bad_device"


@dataclass(frozen=True)
class DeviceInfo:
    """One device: `torch_device` is what to move tensors to (`cuda:1`, `mps`, `cpu`)."""

    kind: DeviceKind
    name: str
    memory_bytes: int
    index: int = 0

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(f"cuda:{self.index}") if self.kind == "cuda" else torch.device(self.kind)


def system_memory_bytes() -> int:
    """Total physical memory, or 0 where the OS won't say (Windows has no sysconf)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return 0


def cpu_name() -> str:
    """A human-readable CPU model, falling back to the architecture."""
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "CPU"
    return _printable(f"{name} ({os.cpu_count() or 1} threads)")


def platform_tag() -> str:
    """Operating system and architecture, for example linux-x86_64."""
    return _printable(f"{platform.system().lower() or 'unknown'}-{platform.machine().lower() or 'unknown'}")


def detect_devices() -> list[DeviceInfo]:
    """Every device PyTorch can train on here, preferred first; the CPU is always the last entry."""
    import torch  # here, so that parsing a --memory-limit doesn't pay for importing torch

    found: list[DeviceInfo] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(DeviceInfo("cuda", _printable(props.name), int(props.total_memory), index))
    if torch.backends.mps.is_available():
        # MPS shares the system memory; Metal reports what it would let one process allocate.
        memory = int(torch.mps.recommended_max_memory()) if hasattr(torch.mps, "recommended_max_memory") else 0
        found.append(DeviceInfo("mps", "Apple GPU (Metal)", memory or system_memory_bytes()))
    found.append(DeviceInfo("cpu", cpu_name(), system_memory_bytes()))
    return found


def choose_device(requested: str, devices: list[DeviceInfo] | None = None) -> DeviceInfo:
    """The device for `--device` (`auto`, `cpu`, `cuda`, `cuda:N`, `mps`): auto takes the first."""
    devices = detect_devices() if devices is None else devices
    if requested == "auto":
        return devices[0]
    kind, _, index_text = requested.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index_text and (kind != "cuda" or not index_text.isdigit())):
        raise DeviceError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    index = int(index_text or 0)
    for device in devices:
        if device.kind == kind and (kind != "cuda" or device.index == index):
            return device
    hint = "no CUDA GPU that PyTorch can use" if kind == "cuda" else "no Metal (MPS) device"
    if kind == "cuda" and any(d.kind == "cuda" for d in devices):
        hint = f"no CUDA device {index}"
    raise DeviceError(f"--device {requested}: this machine has {hint}; use --device auto or cpu")


def parse_memory(text: str) -> int:
    """Bytes in a size such as `4GiB`, `512M`, `1.5GB` or `1073741824`."""
    match = _MEMORY.fullmatch(text)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise DeviceError(f"can't read the memory size {text!r}; write it like 4GiB, 512M or 1.5GB")
    value = int(float(match.group(1)) * unit)
    if value <= 0:
        raise DeviceError(f"the memory size {text!r} must be more than zero bytes")
    return value


def _printable(text: str) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text).strip() or "unknown"
    return cleaned[:_NAME_LIMIT]
