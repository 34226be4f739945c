"""`commonweights bench browser`: how fast a browser tab trains, next to Python on the same machine.

One `tiny` unit's inner steps (batch × seq tokens each) in one run:
- headless Chromium on the real /volunteer page against a real coordinator (onnxruntime-web, wasm, 1
  and 2 threads; the page is cross-origin isolated so wasm threads work), timed by the page itself
  (each step's `session.run`, as it reports in its `volunteer-step` events);
- ONNX Runtime from Python with the same step graph (`OrtInnerLoop`), 1 and 2 threads;
- PyTorch on the CPU (`InnerLoop`), 1 and 2 threads.
Tokens/s is tokens per step ÷ the median step time (the first step, which warms up, is left out).
The target (issue 10): the browser at ≥ 0.5× PyTorch CPU at the same thread count. Also saves
screenshots of the page, desktop and phone. Needs Chromium (`/usr/bin/chromium` or --chromium) and
commonweights[onnx]; writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import machine_line, markdown_table, write_section
from coordinator.local import start_coordinator, stop
from training.data import TokenDataset, ensure_default_dataset
from training.inner import InnerConfig, InnerLoop, StepReport
from training.model import build_model, preset
from training.onnx_graphs import OrtInnerLoop, build_step_graph

__all__ = ["run_bench_browser"]

TARGET_RATIO = 0.5
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync", "--disable-component-update"]
RECORD_STEPS = """() => {
    window.__steps = [];
    window.addEventListener('volunteer-step', (event) => {
        if (event.detail.kind === 'train') window.__steps.push(event.detail);
    });
}"""


def _rate(tokens_per_step: int, seconds: list[float]) -> dict[str, float]:
    timed = seconds[1:] if len(seconds) > 2 else seconds
    median = statistics.median(timed)
    return {"step_s": median, "tokens_per_s": tokens_per_step / median, "steps": len(timed)}


class _StepTimer:
    """An `on_step` callback keeping the time between steps (from its creation for the first)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def __call__(self, _: StepReport) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def python_rates(dataset: Path, inner: InnerConfig, threads: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """ONNX Runtime and PyTorch on the campaign's model, the same tokens and recipe."""
    data = TokenDataset.open(dataset)
    config = preset("tiny", vocab_size=data.vocab_size)
    tokens = torch.as_tensor(data.train_slice(0, inner.tokens_needed).astype("int64"))
    tokens_per_step = inner.grad_accum * inner.batch_size * inner.seq_len
    print("building the step graph for ONNX Runtime (Python) …", flush=True)
    graph = build_step_graph(config)
    rates: dict[str, dict[int, dict[str, float]]] = {"onnxruntime": {}, "torch": {}}
    for n in threads:
        torch.set_num_threads(n)
        params = {name: p.detach().numpy().copy() for name, p in build_model(config, seed=0).named_parameters()}
        timer = _StepTimer()
        OrtInnerLoop(graph, inner, params, trainable=list(params), global_step=0, threads=n).run(tokens, on_step=timer)
        rates["onnxruntime"][n] = _rate(tokens_per_step, timer.seconds)
        print(f"onnxruntime, {n} thread(s): {rates['onnxruntime'][n]['tokens_per_s']:,.0f} tokens/s", flush=True)
        timer = _StepTimer()
        InnerLoop(build_model(config, seed=0), inner, global_step=0).run(tokens, on_step=timer)
        rates["torch"][n] = _rate(tokens_per_step, timer.seconds)
        print(f"torch, {n} thread(s): {rates['torch'][n]['tokens_per_s']:,.0f} tokens/s", flush=True)
    return rates


def browser_rates(
    dataset: Path, inner: InnerConfig, threads: list[int], chromium: Path, shots: Path | None, work: Path
) -> dict[int, dict[str, float]]:
    """The /volunteer page training the campaign's units in headless Chromium, per wasm thread count."""
    from playwright.sync_api import sync_playwright

    coordinator = start_coordinator(work / "coordinator", datasets={"bench": dataset}, log=work / "coordinator.log")
    tokens_per_step = inner.grad_accum * inner.batch_size * inner.seq_len
    rates: dict[int, dict[str, float]] = {}
    try:
        coordinator.api.post_campaign(
            {
                "name": "bench-browser",
                "dataset": "bench",
                "model": "tiny",
                "codec": "int8",
                "token_budget": 1_000_000_000,
                "inner": {
                    "steps": inner.steps,
                    "batch_size": inner.batch_size,
                    "seq_len": inner.seq_len,
                    "grad_accum": inner.grad_accum,
                    "warmup_steps": 2,
                },
                "rounds": {"units_per_round": 4, "min_accepted": 1, "lease_s": 600, "deadline_s": 3600},
                "validation": {"replication_rate": 0.0},
            }
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            for n in threads:
                context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=coordinator.base)
                page = context.new_page()
                page.goto("/volunteer")
                page.evaluate(RECORD_STEPS)
                page.select_option("#threads", str(n))
                page.get_by_role("button", name="Start").click()
                print(f"browser, {n} thread(s): waiting for a whole unit (the first builds the graph) …", flush=True)
                deadline = time.monotonic() + 900
                steps: list[dict[str, float]] = []
                while time.monotonic() < deadline:
                    steps = page.evaluate("window.__steps")
                    if len(steps) >= inner.steps:
                        break
                    time.sleep(0.5)
                else:
                    raise RuntimeError(f"the page trained {len(steps)} of {inner.steps} steps within 15 minutes")
                seconds = [tokens_per_step / s["tokensPerSecond"] for s in steps[: inner.steps]]
                rates[n] = _rate(tokens_per_step, seconds)
                print(f"browser, {n} thread(s): {rates[n]['tokens_per_s']:,.0f} tokens/s", flush=True)
                if shots is not None and n == threads[-1]:
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / "volunteer-desktop.png"), full_page=True)
                    page.set_viewport_size({"width": 390, "height": 844})
                    page.screenshot(path=str(shots / "volunteer-phone.png"), full_page=True)
                context.close()
            browser.close()
    finally:
        stop(coordinator.process)
    return rates


def run_bench_browser(args: argparse.Namespace) -> int:
    threads = [int(t) for t in args.threads.split(",") if t]
    if not args.chromium.exists():
        print(f"no Chromium at {args.chromium}: apt-get install chromium, or pass --chromium PATH")
        return 2
    inner = InnerConfig(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, grad_accum=1, lr=3e-3, warmup_steps=2
    )
    machine = machine_line()  # before the runs change torch's thread count
    dataset = ensure_default_dataset(progress=True)
    work = Path(tempfile.mkdtemp(prefix="commonweights-bench-browser-"))
    browser = browser_rates(dataset, inner, threads, args.chromium, args.screenshots, work)
    python = python_rates(dataset, inner, threads)
    rows = []
    for n in threads:
        reference = python["torch"][n]["tokens_per_s"]
        for name, rate in (
            ("Chromium, onnxruntime-web (wasm)", browser[n]),
            ("ONNX Runtime (Python)", python["onnxruntime"][n]),
            ("PyTorch (CPU)", python["torch"][n]),
        ):
            ratio = rate["tokens_per_s"] / reference
            verdict = ""
            if name.startswith("Chromium"):
                verdict = f"{'met' if ratio >= TARGET_RATIO else 'missed'} (≥ {TARGET_RATIO}×)"
            rows.append(
                [name, str(n), f"{rate['tokens_per_s']:,.0f}", f"{1000 * rate['step_s']:.0f}", f"{ratio:.2f}×", verdict]
            )
    table = markdown_table(["runtime", "threads", "tokens/s", "ms / step (median)", "vs PyTorch", "target"], rows)
    body = "\n\n".join(
        [
            "## Browser volunteers (`commonweights bench browser`)",
            machine,
            f"One `tiny` unit of {inner.steps} inner steps of {inner.batch_size}×{inner.seq_len} tokens (forward, "
            "backward, clipping and AdamW) per runtime and thread count, all in one run on this machine. Chromium: "
            "headless Debian Chromium on the real `/volunteer` page against a real coordinator, training with "
            "onnxruntime-web 1.30 (wasm; the page is cross-origin isolated, so wasm threads work), each step timed "
            "by the page around `session.run`. ONNX Runtime (Python): the same step graph through `OrtInnerLoop`. "
            "PyTorch: `InnerLoop`. Tokens/s = tokens per step ÷ median step time, the first step left out.",
            table,
            "Screenshots: docs/screenshots/volunteer-desktop.png and volunteer-phone.png.",
        ]
    )
    write_section(args.output, "browser", body)
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps({"browser": browser, "python": python}, indent=2))
    return 0
