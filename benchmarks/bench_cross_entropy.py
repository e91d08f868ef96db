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
``torch``, ``chunked``, ``compiled`` (and ``compiled+inplace``, ``chunked+inplace``), ``triton``
and ``auto`` (on ``--device cuda``).

``--device cuda`` runs the same on the GPU: the clock is read after ``torch.cuda.synchronize()``
on both sides of every timed call (kernels are asynchronous: without it the time would be the
launch overhead), and the memory column is ``torch.cuda.max_memory_allocated`` above what was
allocated before the call.

Roofline (CPU). In the same run, before and after the measurements (the better of the two
probes is used: the machine's capability under the load of the run), a fresh process measures
this machine's memory bandwidth (a copy of 256 MiB, counted as bytes read plus bytes written)
and its ``exp`` throughput (``torch.exp`` over 64 MiB of float32; its 8 bytes of traffic per
exp stay well under the copy bandwidth, so exp limits it), both with the thread count of the
measurements. The bound of one forward+backward of N x V logits is one read of the logits, one
write of the gradient and N V exponentials::

    bound = max(2 N V size / bandwidth, N V / exp_rate)

The maximum, not the sum: the two use different units (the memory system streams while the
cores evaluate exponentials; hardware prefetching overlaps them), so a kernel can at best hide
the smaller behind the larger, which is what a roofline states. The sum would be the bound of a
kernel that never overlaps them, and calling it "the bound" would flatter every row. The table
prints both terms and ``bound / median`` per row: the fraction of the bound achieved.

    python benchmarks/bench_cross_entropy.py             # the shapes of benchmarks/results
    python benchmarks/bench_cross_entropy.py --quick     # one small shape, 3 repetitions
    python benchmarks/bench_cross_entropy.py --shapes 4096x32000 --impls native,compiled
    python benchmarks/bench_cross_entropy.py --device cuda --impls native,triton,chunked,auto
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
COPY_BYTES = 256 * 2**20  # the bandwidth probe: a copy much larger than any cache
EXP_ELEMENTS = 1 << 24  # the exp probe: 64 MiB of float32


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
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(0)
    rows, classes = args.rows, args.classes
    source = (torch.randn(rows, classes, generator=generator) * 2).to(dtype).to(device)
    target = torch.randint(0, classes, (rows,), generator=generator).to(device)
    fn = _loss_fn(args.impl)
    inplace = args.impl.endswith("+inplace")
    logits_bytes = source.numel() * source.element_size()

    def sync() -> None:
        # CUDA kernels run asynchronously: without this the clock would time the launches.
        if cuda:
            torch.cuda.synchronize(device)

    def call() -> tuple[float, object, object]:
        # inplace=True destroys the logits: give it a fresh copy (made outside the clock).
        x = source.clone() if inplace else source
        x.requires_grad_(True)
        x.grad = None
        sync()
        start = time.perf_counter()
        loss = fn(x, target)
        loss.backward()
        sync()
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
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        exact, baseline = True, torch.cuda.memory_allocated(device)
    else:
        exact = _reset_peak()
        baseline = _rss_bytes("VmRSS") if exact else None
    loss = fn(x, target)
    loss.backward()
    if cuda:
        sync()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _rss_bytes("VmHWM") if exact else None
    if peak is None or baseline is None:
        exact = False
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        baseline = 0
    grad = x.grad
    x.requires_grad_(False)
    # Reference: the loss 256 rows at a time (forward only); the gradient of the first rows.
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float64, device=device)
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
        "device": str(device),
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


def _best_seconds(fn, min_seconds: float = 0.2, tries: int = 3) -> float:
    """Seconds per call: the best of ``tries`` runs of enough calls to last a while."""
    fn()
    calls, best = 1, float("inf")
    for _ in range(tries):
        while True:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
            calls *= 2
        best = min(best, elapsed / calls)
    return best


def _copy_bandwidth(torch) -> float:
    """Bytes read + bytes written per second by a copy of ``COPY_BYTES``."""
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch outside the clock
    return 2 * COPY_BYTES / _best_seconds(lambda: dst.copy_(src))


def _roofline_worker(args: argparse.Namespace) -> None:
    """This machine's copy bandwidth and float32 exp rate with the benchmark's thread count."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    bandwidth = _copy_bandwidth(torch)
    # A large tensor, as the kernels see one: each call spreads over all threads at once (small
    # blocks would time the thread pool's wake-ups, badly so on a loaded machine). Its memory
    # traffic, 8 bytes per exp, stays well under the copy bandwidth: exp limits it.
    block = torch.randn(EXP_ELEMENTS)
    out = torch.empty_like(block)
    exp_rate = block.numel() / _best_seconds(lambda: torch.exp(block, out=out))
    result = {"threads": threads, "bandwidth_Bps": bandwidth, "exp_per_s": exp_rate}
    print("RESULT " + json.dumps(result), flush=True)


def _bound(result: dict, roofline: dict | None) -> tuple[float, float] | None:
    """(memory seconds, exp seconds) of the bound for this row's shape and dtype."""
    if roofline is None or result.get("device", "cpu") != "cpu":
        return None
    elements = result["rows"] * result["classes"]
    size = result["logits_bytes"] / elements
    return 2 * elements * size / roofline["bandwidth_Bps"], elements / roofline["exp_per_s"]


def _run_worker(command: list[str], label: str) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"impl": label, "error": " | ".join(tail)}


def _roofline(threads: int, before: dict | None = None) -> dict | None:
    """The roofline probe, printed; with ``before``, the better of both probes per term."""
    command = [sys.executable, os.path.abspath(__file__), "--worker-roofline"]
    roofline = _run_worker([*command, "--threads", str(threads)], "roofline")
    if "error" in roofline:
        print(f"roofline probe failed: {roofline['error']}", file=sys.stderr)
        return before
    if before is not None:
        for key in ("bandwidth_Bps", "exp_per_s"):
            roofline[key] = max(roofline[key], before[key])
    print(
        f"# roofline ({roofline['threads']} threads, best so far): copy "
        f"{roofline['bandwidth_Bps'] / 1e9:.2f} GB/s (read + write), "
        f"exp {roofline['exp_per_s'] / 1e9:.3f} G/s (float32)",
        flush=True,
    )
    return roofline


def _measure(
    impl: str, rows: int, classes: int, dtype: str, reps: int, threads: int, device: str = "cpu"
) -> dict:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        "--device",
        device,
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
    return _run_worker(command, impl)


def _table(results: list[dict], roofline: dict | None = None) -> str:
    header = (
        "| impl | shape | dtype | median fwd+bwd (ms) | speed-up vs native | first call (s) "
        "| peak above logits | loss diff | grad diff | load "
        "| bound: memory / exp (ms) | of bound |"
    )
    lines = [header, "|" + "---|" * 12]
    native = {
        (r["rows"], r["classes"], r["dtype"]): r["median_s"]
        for r in results
        if r.get("impl") == "native" and "median_s" in r
    }
    for r in results:
        if "error" in r:
            lines.append(f"| {r['impl']} | | | error: {r['error']} | | | | | | | | |")
            continue
        key = (r["rows"], r["classes"], r["dtype"])
        speedup = native[key] / r["median_s"] if key in native else float("nan")
        peak = r["peak_above_bytes"]
        mark = "" if r["peak_exact"] else "*"
        bound = _bound(r, roofline)
        if bound is None:
            bound_text, fraction = "n/a", "n/a"
        else:
            bound_text = f"{1e3 * bound[0]:.0f} / {1e3 * bound[1]:.0f}"
            fraction = f"{max(bound) / r['median_s']:.0%}"
        lines.append(
            f"| {r['impl']} | {r['rows']}x{r['classes']} | {r['dtype']} "
            f"| {1e3 * r['median_s']:.0f} | {speedup:.2f}x | {r['first_s']:.2f} "
            f"| {peak / 2**20:.0f} MiB = {peak / r['logits_bytes']:.2f}x{mark} "
            f"| {r['loss_diff']:.1e} | {r['grad_diff']:.1e} | {r['load']:.1f} "
            f"| {bound_text} | {fraction} |"
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
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-roofline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.worker_roofline:
        _roofline_worker(args)
        return
    if args.quick:
        args.shapes, args.dtypes, args.reps = "1024x32000", "float32", 3
    import torch

    print(
        f"# torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"threads {args.threads or torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    roofline = _roofline(args.threads) if args.device == "cpu" else None
    results = []
    for shape in args.shapes.split(","):
        rows, classes = (int(v) for v in shape.lower().split("x"))
        for dtype in args.dtypes.split(","):
            for impl in args.impls.split(","):
                result = _measure(impl, rows, classes, dtype, args.reps, args.threads, args.device)
                results.append(result)
                summary = (
                    result.get("error")
                    or f"{1e3 * result['median_s']:.0f} ms, first {result['first_s']:.2f} s"
                )
                print(f"  {shape} {dtype} {impl}: {summary}", file=sys.stderr, flush=True)
    if roofline is not None:  # again after the run: the machine's best of the two
        roofline = _roofline(args.threads, roofline)
    print(_table(results, roofline))
    print(f"\nload average after the run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
