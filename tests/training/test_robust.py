from __future__ import annotations

import doctest
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import training.robust
from tests.support.live import REPO
from training.robust import (
    UpdateStack,
    centered_clip,
    centered_clip_chunked,
    trimmed_mean,
    trimmed_mean_chunked,
)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The coordinator runs PyTorch on one thread (its parallelism is its workers); so do these tests,
    which on a busy two-core machine ran ten times slower on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the rules written out plainly, to check the real ones against ----------------------------


def reference_trimmed_mean(x: torch.Tensor, k: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    n = len(x)
    values, order = torch.sort(x.double(), dim=0, stable=True)
    kept, kept_rows = values[k : n - k], order[k : n - k]
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.double()
    return (kept * w[kept_rows]).sum(0) / w[kept_rows].sum(0)


def reference_centered_clip(
    x: torch.Tensor, v: torch.Tensor, tau: float, iterations: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    x, v = x.double(), v.double()
    w = torch.ones(len(x), dtype=torch.float64) if weights is None else weights.double()
    for _ in range(iterations):
        z = x - v
        scale = (tau / z.norm(dim=1)).clamp(max=1.0)
        v = v + (w[:, None] * scale[:, None] * z).sum(0) / w.sum()
    return v


def honest_and_liars(n: int, f: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    honest = 0.3 * torch.randn(m, generator=g) + torch.randn(n - f, m, generator=g)
    # Colluding liars: all the same huge vector, the worst direction for a mean.
    liars = torch.full((f, m), 1e6)
    return honest, torch.cat([honest, liars])


def stack_of(rows: torch.Tensor, folder: Path, weights: torch.Tensor | None = None) -> UpdateStack:
    """An UpdateStack of rows [n, 20 + k]: tensors "w" (4, 5) and "b" (k,)."""
    stack = UpdateStack({"w": (4, 5), "b": (rows.shape[1] - 20,)}, folder)
    for i, row in enumerate(rows):
        stack.append({"w": row[:20].view(4, 5), "b": row[20:]}, weight=1.0 if weights is None else float(weights[i]))
    return stack


def flat(named: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([named["w"].reshape(-1), named["b"]])


# --- trimmed mean ------------------------------------------------------------------------------


def test_trimmed_mean_with_trim_zero_is_the_mean_and_the_weighted_mean() -> None:
    x = torch.randn(7, 50)
    w = torch.rand(7) + 0.5
    torch.testing.assert_close(trimmed_mean(x, 0.0), x.mean(0))
    torch.testing.assert_close(trimmed_mean(x, 0.0, weights=w), (w[:, None] * x).sum(0) / w.sum())


@pytest.mark.parametrize(("n", "trim", "k"), [(5, 0.2, 1), (7, 0.3, 2), (10, 0.49, 4), (100, 0.29, 29), (3, 0.2, 0)])
def test_trimmed_mean_drops_floor_trim_n_values_from_each_end_per_coordinate(n: int, trim: float, k: int) -> None:
    x = torch.randn(n, 40)
    torch.testing.assert_close(trimmed_mean(x, trim), reference_trimmed_mean(x, k).float())


@pytest.mark.parametrize("liars", [1, 2])
def test_trimmed_mean_stays_within_the_honest_range_with_at_most_k_liars(liars: int) -> None:
    n, trim = 10, 0.2  # k = 2
    g = torch.Generator().manual_seed(liars)
    honest = torch.randn(n - liars, 300, generator=g)
    signs = torch.randint(0, 2, (liars, 300), generator=g) * 2.0 - 1.0  # ±1e6, per coordinate
    x = torch.cat([honest, 1e6 * signs])
    heavy = torch.cat([torch.ones(n - liars), torch.full((liars,), 1e6)])  # liars claim huge weights too
    for result in (trimmed_mean(x, trim), trimmed_mean(x, trim, weights=heavy)):
        assert bool((result >= honest.min(0).values).all()) and bool((result <= honest.max(0).values).all())
    assert not bool((x.mean(0).abs() <= honest.abs().max(0).values).all())  # the mean does not


def test_weighted_trimmed_mean_averages_the_kept_values_with_their_rows_weights() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (9, 200), generator=g).float()  # many ties: later rows count as larger
    w = torch.rand(9, generator=g) + 0.1
    torch.testing.assert_close(trimmed_mean(x, 0.25, weights=w), reference_trimmed_mean(x, 2, w).float())


# --- centered clipping -------------------------------------------------------------------------


@pytest.mark.parametrize("center", ["median", "zeros", "random"])
def test_centered_clip_with_infinite_tau_is_the_mean_after_one_iteration(center: str) -> None:
    x = torch.randn(6, 80) + 5
    w = torch.rand(6) + 0.5
    start = {"median": None, "zeros": torch.zeros(80), "random": torch.randn(80) * 10}[center]
    torch.testing.assert_close(centered_clip(x, center=start, tau=math.inf, iterations=1), x.mean(0))
    weighted = centered_clip(x, center=start, tau=math.inf, iterations=1, weights=w)
    torch.testing.assert_close(weighted, (w[:, None] * x).sum(0) / w.sum())


def test_centered_clip_follows_its_definition() -> None:
    x = torch.randn(9, 120) * torch.linspace(0.5, 3, 9)[:, None]
    w = torch.rand(9) + 0.5
    v0 = torch.randn(120)
    expected = reference_centered_clip(x, v0, tau=4.0, iterations=4, weights=w)
    torch.testing.assert_close(centered_clip(x, center=v0, tau=4.0, iterations=4, weights=w), expected.float())


def test_centered_clip_by_default_starts_at_the_median_with_tau_the_median_distance() -> None:
    x = torch.randn(8, 100) * torch.linspace(0.5, 3, 8)[:, None]
    median = x.quantile(0.5, dim=0)  # the midpoint of the middle two for even n
    tau = (x - median).norm(dim=1).quantile(0.5).item()
    expected = reference_centered_clip(x, median, tau=tau, iterations=3)
    torch.testing.assert_close(centered_clip(x), expected.float())


def test_centered_clip_ends_within_tau_times_f_over_n_minus_f_of_the_honest_mean() -> None:
    # One iteration from v with τ ≥ every honest row's distance to v: the honest rows land exactly,
    # each liar's pull is clipped to τ, so ‖v' − μ‖ ≤ (f/n)·(‖v − μ‖ + τ). Iterated T times:
    # ‖v_T − μ‖ ≤ (f/n)^T·‖v_0 − μ‖ + τ·f/(n − f), whatever the liars send.
    n, f, m, iterations = 20, 4, 500, 6
    honest, x = honest_and_liars(n, f, m, seed=0)
    mu = honest.mean(0)
    v = torch.zeros(m)
    tau = 1.5 * (honest - v).norm(dim=1).max().item()
    error0 = (v - mu).norm().item()
    for _ in range(iterations):
        assert (honest - v).norm(dim=1).max().item() <= tau  # the bound's condition holds along the way
        before = (v - mu).norm().item()
        v = centered_clip(x, center=v, tau=tau, iterations=1)
        assert (v - mu).norm().item() <= f / n * (before + tau) * (1 + 1e-5)
    bound = (f / n) ** iterations * error0 + tau * f / (n - f)
    assert (v - mu).norm().item() <= bound
    assert (x.mean(0) - mu).norm().item() > 1e3 * bound  # what the plain mean would have let through
    torch.testing.assert_close(v, centered_clip(x, center=torch.zeros(m), tau=tau, iterations=iterations))


def test_centered_clip_defaults_keep_colluding_liars_within_an_honest_distance() -> None:
    # With the automatic τ some honest rows are clipped too, so the bound above is not exact; what
    # holds: the result is nearer the honest mean than a typical honest update is.
    n, f, m = 20, 4, 500
    honest, x = honest_and_liars(n, f, m, seed=1)
    mu = honest.mean(0)
    typical = (honest - mu).norm(dim=1).median().item()
    assert (centered_clip(x) - mu).norm().item() < 0.5 * typical
    assert (centered_clip(honest) - mu).norm().item() < 0.05 * typical  # a clean round: about the mean


# --- the disk-backed stack and the chunked rules -----------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_rules_equal_the_in_memory_ones_for_any_chunk(tmp_path: Path, weighted: bool) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(11, 20 + 283, generator=g) * torch.linspace(0.5, 4, 11)[:, None]
    x[-2:] += 50.0  # two far rows, so clipping bites
    w = torch.rand(11, generator=g) + 0.5 if weighted else None
    center = torch.randn(303, generator=g)
    with stack_of(x, tmp_path, w) as stack:
        expected_trimmed = trimmed_mean(x, 0.2, weights=w)
        expected_clipped = centered_clip(x, iterations=3, weights=w)
        expected_from_center = centered_clip(x, center=center, tau=20.0, iterations=2, weights=w)
        for chunk in (3, 7, 64, 303, 1000):  # 7 and 64 do not divide 303
            trimmed = flat(trimmed_mean_chunked(stack, 0.2, chunk=chunk))
            clipped = flat(centered_clip_chunked(stack, iterations=3, chunk=chunk))
            from_center = flat(
                centered_clip_chunked(stack, center=stack.unflatten(center), tau=20.0, iterations=2, chunk=chunk)
            )
            torch.testing.assert_close(trimmed, expected_trimmed, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(clipped, expected_clipped, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(from_center, expected_from_center, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(trimmed_mean(x, 0.2, weights=w, chunk=chunk), expected_trimmed, rtol=0, atol=0)


def test_the_stack_gives_results_back_as_the_named_tensors_it_was_given(tmp_path: Path) -> None:
    shapes = {"embed": (3, 4), "norm": (4,), "scale": ()}
    update = {"embed": torch.randn(3, 4), "norm": torch.randn(4), "scale": torch.tensor(2.5)}
    with UpdateStack(shapes, tmp_path) as stack:
        stack.append(update)
        for result in (trimmed_mean_chunked(stack, 0.0, chunk=5), centered_clip_chunked(stack, chunk=5)):
            assert list(result) == list(shapes)
            for name in shapes:
                assert torch.equal(result[name], update[name])


def test_the_stack_removes_its_file_when_closed_even_after_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), UpdateStack({"w": (3,)}, tmp_path) as stack:
        stack.append({"w": torch.ones(3)})
        assert os.path.getsize(stack.path) == 12
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    stack.close()  # twice is harmless
    with pytest.raises(ValueError, match="closed"):
        stack.append({"w": torch.ones(3)})


@pytest.mark.parametrize(
    ("update", "weight", "message"),
    [
        ({"w": torch.ones(2, 3), "b": torch.ones(2)}, 1.0, r"w: shape \(2, 3\) does not match \(2, 2\)"),
        ({"w": torch.ones(2, 2)}, 1.0, "lacks 'b'"),
        ({"w": torch.ones(2, 2), "b": torch.ones(2), "x": torch.ones(1)}, 1.0, "has 'x' that the stack does not hold"),
        ({"w": torch.ones(2, 2), "b": torch.tensor([1.0, math.nan])}, 1.0, "b: the update has NaN or infinite"),
        ({"w": torch.ones(2, 2, dtype=torch.int64), "b": torch.ones(2)}, 1.0, "w: an update holds floating-point"),
        ({"w": torch.ones(2, 2), "b": torch.ones(2)}, 0.0, "weight must be a positive number"),
        ({"w": torch.ones(2, 2), "b": torch.ones(2)}, math.inf, "weight must be a positive number"),
    ],
)
def test_append_refuses_a_bad_update_and_leaves_the_stack_as_it_was(
    tmp_path: Path, update: dict[str, torch.Tensor], weight: float, message: str
) -> None:
    with UpdateStack({"w": (2, 2), "b": (2,)}, tmp_path) as stack:
        stack.append({"w": torch.full((2, 2), 3.0), "b": torch.full((2,), 3.0)})
        with pytest.raises(ValueError, match=message):
            stack.append(update, weight=weight)
        assert len(stack) == 1 and os.path.getsize(stack.path) == 6 * 4
        stack.append({"w": torch.full((2, 2), 5.0), "b": torch.full((2,), 5.0)})
        assert torch.equal(trimmed_mean_chunked(stack, 0.0)["b"], torch.full((2,), 4.0))


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE to make a write fail midway")
def test_a_write_that_fails_midway_leaves_the_stack_as_it_was(tmp_path: Path) -> None:
    with UpdateStack({"a": (1000,), "b": (1000,)}, tmp_path) as stack:
        stack.append({"a": torch.full((1000,), 1.0), "b": torch.full((1000,), 1.0)})
        # Like a full disk: the file may grow by about half a row, then writes fail (EFBIG).
        resource = pytest.importorskip("resource")
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8000 + 5000, hard))
        try:
            with pytest.raises(OSError):
                stack.append({"a": torch.full((1000,), 7.0), "b": torch.full((1000,), 7.0)})
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, handler)
        assert len(stack) == 1 and os.path.getsize(stack.path) == 8000
        stack.append({"a": torch.full((1000,), 3.0), "b": torch.full((1000,), 3.0)})
        assert torch.equal(trimmed_mean_chunked(stack, 0.0)["b"], torch.full((1000,), 2.0))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: trimmed_mean(x, 0.5), r"trim .* in \[0, 0.5\)"),
        (lambda x: trimmed_mean(x, -0.1), r"trim .* in \[0, 0.5\)"),
        (lambda x: trimmed_mean(x, math.nan), r"trim .* in \[0, 0.5\)"),
        (lambda x: centered_clip(x, tau=0.0), "tau must be a positive number"),
        (lambda x: centered_clip(x, tau=-1.0), "tau must be a positive number"),
        (lambda x: centered_clip(x, tau=math.nan), "tau must be a positive number"),
        (lambda x: centered_clip(x, iterations=0), "at least 1 iteration"),
        (lambda x: centered_clip(x, center=torch.zeros(5)), r"center has shape \(5,\), but the updates have 6"),
        (lambda x: trimmed_mean(x[:0], 0.1), "no updates to aggregate"),
        (lambda x: centered_clip(x[:0]), "no updates to aggregate"),
        (lambda x: trimmed_mean(x[0], 0.1), r"\[n, m\] matrix"),
        (lambda x: trimmed_mean(x, 0.1, weights=torch.ones(3)), r"one weight per update \(4\)"),
        (lambda x: trimmed_mean(x, 0.1, weights=-torch.ones(4)), "weight must be a positive number"),
        (lambda x: trimmed_mean(x, 0.1, chunk=0), "chunk .* at least 1"),
        (lambda x: trimmed_mean(x.clone().fill_(math.inf), 0.1), "NaN or infinite"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(torch.randn(4, 6))  # type: ignore[operator]


def test_an_empty_stack_or_a_mismatched_center_is_refused(tmp_path: Path) -> None:
    with UpdateStack({"w": (3,)}, tmp_path) as stack:
        with pytest.raises(ValueError, match="no updates to aggregate: the stack is empty"):
            trimmed_mean_chunked(stack, 0.1)
        stack.append({"w": torch.ones(3)})
        with pytest.raises(ValueError, match=r"w: shape \(4,\) does not match \(3,\)"):
            centered_clip_chunked(stack, center={"w": torch.zeros(4)})
    with pytest.raises(ValueError, match="at least one tensor"):
        UpdateStack({}, tmp_path)


MEASURE_AGGREGATION = """
import re, sys, torch
from pathlib import Path
from training.robust import UpdateStack, centered_clip_chunked, trimmed_mean_chunked

def peak() -> int:
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

n, m, chunk = 8, 1 << 20, 8192
with UpdateStack({"w": (m,)}, Path(sys.argv[1])) as stack:
    for i in range(n):
        stack.append({"w": torch.full((m,), float(i))})
    try:
        Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from now
    except OSError:
        print("no-reset")
        sys.exit(0)
    before = peak()
    trimmed = trimmed_mean_chunked(stack, 0.25, chunk=chunk)
    clipped = centered_clip_chunked(stack, chunk=chunk)
    grown = peak() - before
assert torch.equal(trimmed["w"], torch.full((m,), 3.5)) and torch.allclose(clipped["w"], torch.full((m,), 3.5))
print(grown)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="resets the peak RSS through /proc/self/clear_refs")
def test_aggregating_a_stack_holds_a_few_blocks_in_memory_not_the_stack(tmp_path: Path) -> None:
    # Measured in a process of its own: the peak RSS of a long test process also counts allocator slack
    # that depends on what ran before (glibc raises its mmap threshold after large frees, and later
    # result-sized vectors then come from the heap), which made the figure vary between test orders.
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_AGGREGATION, str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    if done.stdout.strip() == "no-reset":
        pytest.skip("this kernel does not let a process reset its peak RSS")
    grown = int(done.stdout)
    n, m, chunk = 8, 1 << 20, 8192  # a 32 MiB stack on disk, 256 KiB blocks, a 4 MiB result
    assert grown < 4 * m * 3 + 32 * n * chunk * 4  # three result-sized vectors and a few blocks
    assert grown < n * m * 4 / 2  # well below the stack itself


def test_the_module_docstring_example_runs() -> None:
    outcome = doctest.testmod(training.robust)
    assert outcome.attempted > 0 and outcome.failed == 0
