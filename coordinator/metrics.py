"""Prometheus metrics in the text exposition format, rendered from live counters and the store.

    GET /metrics  →  commonweights_volunteers_connected 3 …

Counters that restart with the process (frames, bytes on the wire) live here; totals that must
survive a restart (accepted and rejected updates by reason) come from the store.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coordinator.service import Coordinator

__all__ = ["Metrics", "render_metrics"]


@dataclass
class Metrics:
    connected: int = 0
    frames: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0  # every WebSocket frame received from volunteers
    bytes_out: int = 0  # every frame sent to them (blob chunks dominate)
    http_requests: int = 0


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def render_metrics(metrics: Metrics, service: Coordinator) -> str:
    lines: list[str] = []
    lines += _family(
        "commonweights_volunteers_connected",
        "gauge",
        "Volunteers with an open WebSocket.",
        [_line("commonweights_volunteers_connected", metrics.connected)],
    )
    lines += _family(
        "commonweights_frames_total",
        "counter",
        "Frames received from volunteers by type.",
        [_line("commonweights_frames_total", n, {"type": t}) for t, n in sorted(metrics.frames.items())],
    )
    lines += _family(
        "commonweights_ws_bytes_received_total",
        "counter",
        "WebSocket bytes received from volunteers.",
        [_line("commonweights_ws_bytes_received_total", metrics.bytes_in)],
    )
    lines += _family(
        "commonweights_ws_bytes_sent_total",
        "counter",
        "WebSocket bytes sent to volunteers.",
        [_line("commonweights_ws_bytes_sent_total", metrics.bytes_out)],
    )
    leased, accepted, rejected, bytes_in, versions, round_seconds = [], [], [], [], [], []
    for campaign_id, runtime in sorted(service.runtimes.items()):
        labels = {"campaign": runtime.row.name}
        counters = runtime.counters
        leased.append(_line("commonweights_units_leased_total", counters.leased, labels))
        accepted.append(
            _line(
                "commonweights_updates_accepted_total",
                len(service.store.submissions(campaign_id=campaign_id, statuses=("accepted",))),
                labels,
            )
        )
        for code, n in sorted(service.store.rejection_counts(campaign_id).items()):
            rejected.append(_line("commonweights_updates_rejected_total", n, {**labels, "reason": code}))
        bytes_in.append(_line("commonweights_update_bytes_received_total", counters.bytes_in, labels))
        versions.append(_line("commonweights_model_version", runtime.row.current_version, labels))
        if counters.round_seconds:
            total = sum(counters.round_seconds)
            round_seconds.append(_line("commonweights_round_duration_seconds_sum", total, labels))
            round_seconds.append(
                _line("commonweights_round_duration_seconds_count", len(counters.round_seconds), labels)
            )
    lines += _family("commonweights_units_leased_total", "counter", "Work units leased since start.", leased)
    lines += _family("commonweights_updates_accepted_total", "counter", "Updates accepted.", accepted)
    lines += _family("commonweights_updates_rejected_total", "counter", "Updates rejected, by reason.", rejected)
    lines += _family(
        "commonweights_update_bytes_received_total", "counter", "Update bytes received since start.", bytes_in
    )
    lines += _family("commonweights_model_version", "gauge", "Current model version per campaign.", versions)
    lines += _family(
        "commonweights_round_duration_seconds",
        "summary",
        "Time from a round's opening to its close.",
        round_seconds,
    )
    return "\n".join(lines) + "\n"
