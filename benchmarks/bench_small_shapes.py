"""Small shapes and the dispatch of ``impl="auto"``: ``ls`` against PyTorch's own loss.

Forward + backward of ``ls.cross_entropy(x, y, 0.1)`` (``impl="auto"``, ``reduction="mean"``)
against ``F.cross_entropy(x, y, label_smoothing=0.1)``, and of
``ls.binary_cross_entropy_with_logits(x, t, 0.1)`` against
``F.binary_cross_entropy_with_logits(x, smooth_binary(t, 0.1))`` (targets smoothed outside the
clock: the smoothing is part of our cost), in float32 and bfloat16 (native runs in the input's
dtype; ours accumulates in float32).

Everything runs in this one process, interleaved: each of ``--reps`` rounds times a batch of
calls of every contender in turn (a batch lasts about ``--batch-ms``), and the table reports
the median time per call over the rounds, so that the load of a shared machine hits all
contenders alike. The ratio is ls / native from the same rounds (below 1: ours is faster).
The column ``auto`` is what ``impl="auto"`` runs (:func:`labelsmooth.functional.auto_choice`):
``native`` is ``F.cross_entropy`` itself (the common case), else an ``impl`` name. The
1-minute load average is printed before and after. No timed assertion lives in the tests.

    python benchmarks/bench_small_shapes.py                  # the table of benchmarks/results
    python benchmarks/bench_small_shapes.py --threads 1      # one torch thread
    python benchmarks/bench_small_shapes.py --clock cpu      # CPU time of one thread (busy box)
    python benchmarks/bench_small_shapes.py --crossover      # the data behind the auto rule
    python benchmarks/bench_small_shapes.py --quick          # two shapes, 5 rounds
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import labelsmooth as ls
from labelsmooth import functional, kernels

EPS = 0.1
CROSS_ENTROPY_SHAPES = [
    (32, 10),
    (256, 10),
    (256, 100),
    (1024, 1000),
    (64, 21, 16, 16),
    (8, 19, 64, 64),
]
BINARY_SHAPES = [(256, 14), (1024, 1)]
DENSE_SHAPES = [(8, 21, 16, 16), (64, 21, 16, 16), (8, 19, 64, 64), (4, 150, 32, 32)]


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# The clock: wall time (perf_counter), or with --clock cpu the CPU time of this thread
# (thread_time), which a busy machine's other processes do not inflate while they hold the
# CPU; it sees only this thread's work, so it is used with one torch thread only.
CLOCK = time.perf_counter


def _interleaved(
    contenders: dict[str, Callable[[], object]], reps: int, batch_ms: float
) -> dict[str, float]:
    """Median seconds per call of each contender, timed in interleaved batches."""
    for fn in contenders.values():  # warm-up (and builds, caches)
        for _ in range(3):
            fn()
    first = next(iter(contenders.values()))
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < batch_ms / 1e3:
        first()
        calls += 1
    batch = max(1, calls)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            begin = CLOCK()
            for _ in range(batch):
                fn()
            times[name].append((CLOCK() - begin) / batch)
    return {name: statistics.median(values) for name, values in times.items()}


def _step(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        x.grad = None
        loss_fn(x).backward()

    return run


def _auto_name(x: torch.Tensor, y: torch.Tensor) -> str:
    """What impl="auto" runs (also against a version of labelsmooth without auto_choice)."""
    if hasattr(functional, "auto_choice"):
        return functional.auto_choice(x, y, EPS)
    problem = functional._prepare(x, y, EPS, "uniform", None, None, -100, "mean", False, True)
    return functional.auto_impl(problem)


def _cross_entropy_case(shape: tuple[int, ...], dtype: torch.dtype, reps: int, batch_ms: float):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator) * 2).to(dtype).requires_grad_(True)
    y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    times = _interleaved(
        {
            "native": _step(lambda v: F.cross_entropy(v, y, label_smoothing=EPS), x),
            "ls": _step(lambda v: ls.cross_entropy(v, y, EPS), x),
        },
        reps,
        batch_ms,
    )
    return times, _auto_name(x, y)


def _binary_case(shape: tuple[int, ...], dtype: torch.dtype, reps: int, batch_ms: float):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=generator) * 2).to(dtype).requires_grad_(True)
    t = torch.randint(0, 2, shape, generator=generator).to(dtype)
    smoothed = ls.smooth_binary(t, EPS)
    times = _interleaved(
        {
            "native": _step(lambda v: F.binary_cross_entropy_with_logits(v, smoothed), x),
            "ls": _step(lambda v: ls.binary_cross_entropy_with_logits(v, t, EPS), x),
        },
        reps,
        batch_ms,
    )
    return times, "F.bce (always)"


def _table(args: argparse.Namespace) -> None:
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    ce_shapes, bce_shapes = CROSS_ENTROPY_SHAPES, BINARY_SHAPES
    if args.quick:
        ce_shapes, bce_shapes, args.reps = [(256, 100), (64, 21, 16, 16)], [(256, 14)], 5
    print("| loss | shape | dtype | native (us) | ls (us) | ls / native | auto |")
    print("|---|---|---|---|---|---|---|")
    cases = [("cross_entropy", s, _cross_entropy_case) for s in ce_shapes]
    cases += [("binary", s, _binary_case) for s in bce_shapes]
    for loss, shape, run in cases:
        for dtype in dtypes:
            times, picked = run(shape, dtype, args.reps, args.batch_ms)
            native, ours = times["native"], times["ls"]
            print(
                f"| {loss} | {tuple(shape)} | {str(dtype).removeprefix('torch.')} "
                f"| {1e6 * native:.0f} | {1e6 * ours:.0f} | {ours / native:.2f} | {picked} |",
                flush=True,
            )


def _crossover_row(layout: str, k: int, numel: int, dtype: torch.dtype, t: dict) -> None:
    print(
        f"| {layout} | {k} | {numel} | {str(dtype).removeprefix('torch.')} "
        f"| {1e6 * t['native']:.0f} | {t['compiled'] / t['native']:.2f} "
        f"| {t['torch'] / t['native']:.2f} | {t['ls-native'] / t['native']:.2f} "
        f"| {t['compiled'] / t['ls-native']:.2f} |",
        flush=True,
    )


def _crossover(args: argparse.Namespace) -> None:
    """native vs the C++ kernel vs the closed form over K and N*K (class dim last), and on
    (N, C, H, W) inputs (class dim not last)."""
    if not kernels.compiled_available():
        raise SystemExit("the C++ kernel does not build here: nothing to compare")
    dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]

    def contenders(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], None]]:
        def native(v: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(v, y, label_smoothing=EPS)

        def ours(impl: str) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda v: ls.cross_entropy(v, y, EPS, impl=impl)

        def native_path(v: torch.Tensor) -> torch.Tensor:  # what "auto" runs below the rule
            return functional._native_cross_entropy(v, y, EPS, None, -100, "mean", False, True)

        return {
            "native": _step(native, x),
            "compiled": _step(ours("compiled"), x),
            "torch": _step(ours("torch"), x),
            "ls-native": _step(native_path, x),
        }

    print(
        "| layout | K | N*K | dtype | native (us) | compiled / native | torch / native "
        "| ls-native / native | compiled / ls-native |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    classes = [int(k) for k in args.classes.split(",")]
    sizes = [int(e) for e in args.log2_sizes.split(",")]
    grid = [(k, 1 << e) for k in classes for e in sizes]
    grid = [(k, numel) for k, numel in grid if numel // k >= 4]
    for dtype in dtypes:
        for k, numel in grid:
            x = torch.randn(numel // k, k, generator=generator).to(dtype).requires_grad_(True)
            y = torch.randint(0, k, (numel // k,), generator=generator)
            t = _interleaved(contenders(x, y), args.reps, args.batch_ms)
            _crossover_row("rows", k, numel, dtype, t)
        for shape in [] if args.no_dense else DENSE_SHAPES:
            x = torch.randn(shape, generator=generator).to(dtype).requires_grad_(True)
            y = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
            t = _interleaved(contenders(x, y), args.reps, args.batch_ms)
            _crossover_row(str(tuple(shape)), shape[1], x.numel(), dtype, t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--reps", type=int, default=21, help="interleaved rounds")
    parser.add_argument("--batch-ms", type=float, default=20.0, help="length of one batch")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--crossover", action="store_true", help="the data behind auto's rule")
    parser.add_argument("--quick", action="store_true", help="three shapes, 5 rounds")
    parser.add_argument("--classes", default="2,4,8,16,32,100,256,1000,8000", help="crossover K")
    parser.add_argument("--log2-sizes", default="13,14,15,16,17,18,19,20,21", help="crossover")
    parser.add_argument("--no-dense", action="store_true", help="crossover: rows only")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this thread's CPU time (implies --threads 1; for a busy machine)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        global CLOCK
        CLOCK = time.thread_time
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, eps={EPS}, forward + backward, "
        f"median of {args.reps} interleaved rounds, {args.clock} clock; load before: {_load()}",
        flush=True,
    )
    if args.crossover:
        _crossover(args)
    else:
        _table(args)
    print(f"\nload after: {_load()}")


if __name__ == "__main__":
    main()
