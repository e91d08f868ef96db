"""Label-smoothed cross-entropy, forward + backward: time, memory and accuracy per implementation.

Every measurement runs in a fresh subprocess, which

1. builds the logits (N, V) (``randn * 2``, seeded) in the given dtype and random targets;
2. calls forward + backward once (warm-up: compiles where something compiles; reported as
   "first call");
3. times ``--reps`` calls of forward + backward (``x.grad = None`` between calls) and reports
   the median;
4. measures the peak resident memory of one more call above the resident memory before it:
   freed memory is handed back to the OS first (``malloc_trim``), the kernel's high-water mark
   is reset (``/proc/self/clear_refs``), and the peak is read from ``VmHWM``. The result
   includes the gradient ``x.grad`` itself, so 1.0x the logits' size is the floor for a
   float32 gradient (0.5x for bf16 logits, whose gradient is bf16); where the high-water mark
   cannot be reset it falls back to ``ru_maxrss`` of the whole run (marked ``*``);
5. compares the loss with ``impl="reference"`` (computed in float32, 256 rows at a time) and
   the gradient of the first 256 rows with the reference gradient of those rows.

Implementations: ``native`` (``F.cross_entropy(x, y, label_smoothing=eps)``),
``native+compile`` (the same under ``torch.compile``), ``composite`` (the timm / fastai
``LabelSmoothingCrossEntropy``: ``(1-eps) nll + eps * mean(-log p)``), and ours:
``torch``, ``chunked``, ``compiled`` (and ``compiled+inplace``, ``chunked+inplace``).

    python benchmarks/bench_cross_entropy.py             # the shapes of benchmarks/results
    python benchmarks/bench_cross_entropy.py --quick     # one small shape, 3 repetitions
    python benchmarks/bench_cross_entropy.py --shapes 4096x32000 --impls native,compiled
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

IMPLS = [
    "native",
    "native+compile",
    "composite",
    "torch",
    "chunked",
    "chunked+inplace",
    "compiled",
    "compiled+inplace",
]
EPS = 0.1
CHECK_ROWS = 256


def _rss_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _loss_fn(impl: str):
    import torch
    import torch.nn.functional as F

    import labelsmooth as ls

    if impl in ("native", "native+compile"):

        def native(x, y):
            return F.cross_entropy(x, y, label_smoothing=EPS)

        return torch.compile(native) if impl == "native+compile" else native
    if impl == "composite":

        def composite(x, y):  # timm.loss.LabelSmoothingCrossEntropy, fastai's equivalent
            log_probs = F.log_softmax(x, dim=-1)
            nll = -log_probs.gather(dim=-1, index=y.unsqueeze(1)).squeeze(1)
            smooth = -log_probs.mean(dim=-1)
            return ((1.0 - EPS) * nll + EPS * smooth).mean()

        return composite
    name, _, inplace = impl.partition("+")

    def ours(x, y):
        return ls.cross_entropy(x, y, EPS, impl=name, inplace=inplace == "inplace")

    return ours


def _worker(args: argparse.Namespace) -> None:
    import torch

    import labelsmooth as ls

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    rows, classes = args.rows, args.classes
    source = (torch.randn(rows, classes, generator=generator) * 2).to(dtype)
    target = torch.randint(0, classes, (rows,), generator=generator)
    fn = _loss_fn(args.impl)
    inplace = args.impl.endswith("+inplace")
    logits_bytes = source.numel() * source.element_size()

    def call() -> tuple[float, object, object]:
        # inplace=True destroys the logits: give it a fresh copy (made outside the clock).
        x = source.clone() if inplace else source
        x.requires_grad_(True)
        x.grad = None
        start = time.perf_counter()
        loss = fn(x, target)
        loss.backward()
        elapsed = time.perf_counter() - start
        grad = x.grad
        x.grad = None
        x.requires_grad_(False)
        return elapsed, loss.detach(), grad

    first, _, _ = call()
    times = []
    for _ in range(args.reps):
        elapsed, _, _ = call()
        times.append(elapsed)
    gc.collect()
    x = source.clone() if inplace else source
    x.requires_grad_(True)
    exact = _reset_peak()
    baseline = _rss_bytes("VmRSS") if exact else None
    loss = fn(x, target)
    loss.backward()
    peak = _rss_bytes("VmHWM") if exact else None
    if peak is None or baseline is None:
        exact = False
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        baseline = 0
    grad = x.grad
    x.requires_grad_(False)
    # Reference: the loss 256 rows at a time (forward only); the gradient of the first rows.
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64)
        for start in range(0, rows, CHECK_ROWS):
            block = source[start : start + CHECK_ROWS]
            per_row = ls.cross_entropy(
                block.float(),
                target[start : start + CHECK_ROWS],
                EPS,
                reduction="none",
                impl="reference",
            )
            total += per_row.double().sum()
    reference_loss = total / rows
    head = source[:CHECK_ROWS].detach().float().clone().requires_grad_(True)
    (
        ls.cross_entropy(head, target[:CHECK_ROWS], EPS, reduction="sum", impl="reference") / rows
    ).backward()
    result = {
        "impl": args.impl,
        "rows": rows,
        "classes": classes,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "median_s": statistics.median(times),
        "times_s": times,
        "first_s": first,
        "peak_above_bytes": peak - baseline,
        "peak_exact": exact,
        "logits_bytes": logits_bytes,
        "loss_diff": abs(float(loss) - float(reference_loss)),
        "grad_diff": float((grad[:CHECK_ROWS].float() - head.grad).abs().max()),
        "load": os.getloadavg()[0],
    }
    print("RESULT " + json.dumps(result), flush=True)


def _measure(impl: str, rows: int, classes: int, dtype: str, reps: int, threads: int) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--impl",
        impl,
        "--rows",
        str(rows),
        "--classes",
        str(classes),
        "--dtype",
        dtype,
        "--reps",
        str(reps),
        "--threads",
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"impl": impl, "error": " | ".join(tail)}


def _table(results: list[dict]) -> str:
    header = (
        "| impl | shape | dtype | median fwd+bwd (ms) | speed-up vs native | first call (s) "
        "| peak above logits | loss diff | grad diff | load |"
    )
    lines = [header, "|" + "---|" * 10]
    native = {
        (r["rows"], r["classes"], r["dtype"]): r["median_s"]
        for r in results
        if r.get("impl") == "native" and "median_s" in r
    }
    for r in results:
        if "error" in r:
            lines.append(f"| {r['impl']} | | | error: {r['error']} | | | | | | |")
            continue
        key = (r["rows"], r["classes"], r["dtype"])
        speedup = native[key] / r["median_s"] if key in native else float("nan")
        peak = r["peak_above_bytes"]
        mark = "" if r["peak_exact"] else "*"
        lines.append(
            f"| {r['impl']} | {r['rows']}x{r['classes']} | {r['dtype']} "
            f"| {1e3 * r['median_s']:.0f} | {speedup:.2f}x | {r['first_s']:.2f} "
            f"| {peak / 2**20:.0f} MiB = {peak / r['logits_bytes']:.2f}x{mark} "
            f"| {r['loss_diff']:.1e} | {r['grad_diff']:.1e} | {r['load']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, 3 repetitions")
    parser.add_argument("--shapes", default="4096x32000,2048x128256", help="NxV,NxV,...")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.quick:
        args.shapes, args.dtypes, args.reps = "1024x32000", "float32", 3
    import torch

    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"threads {args.threads or torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results = []
    for shape in args.shapes.split(","):
        rows, classes = (int(v) for v in shape.lower().split("x"))
        for dtype in args.dtypes.split(","):
            for impl in args.impls.split(","):
                result = _measure(impl, rows, classes, dtype, args.reps, args.threads)
                results.append(result)
                summary = (
                    result.get("error")
                    or f"{1e3 * result['median_s']:.0f} ms, first {result['first_s']:.2f} s"
                )
                print(f"  {shape} {dtype} {impl}: {summary}", file=sys.stderr, flush=True)
    print(_table(results))
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
