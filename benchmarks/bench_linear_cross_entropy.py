"""CPU benchmark: the linear-head loss ls.linear_cross_entropy against what it replaces.

Methods (``--methods``, comma-separated):

* ``ours``: ``ls.linear_cross_entropy(hidden, weight, target, 0.1)`` (``impl="auto"``);
* ``native``: ``F.linear`` + ``F.cross_entropy(label_smoothing=0.1)``;
* ``ls_ce``: ``F.linear`` + ``ls.cross_entropy(eps=0.1)`` (the fused kernel on materialised
  logits: what ``ours`` must never be slower than);
* ``mm3``: the three matrix products alone, ``h @ W.T``, ``G @ W``, ``G.T @ h`` (G: the
  logits' buffer reused as their gradient), the floor of any implementation;
* ``torch_ref`` / ``torch_chunked``: PyTorch's own ``F.linear_cross_entropy`` with
  ``options=None`` (its reference) and ``options=LinearCrossEntropyOptions()`` (its chunked
  path), at eps=0: it refuses ``label_smoothing`` on the chunked path.

Shapes (``--shapes``, ``NxHxV``, comma-separated; default the four below) x weights
(``--weights``: ``scaled`` = ``randn(V, H) / sqrt(H)``, logits of standard deviation 1;
``unscaled`` = ``randn(V, H)``, standard deviation sqrt(H): large logits, most probabilities
tiny or subnormal). ``hidden`` is ``randn(N, H)``, 1/17 of the targets are padding.

Each measurement runs in a fresh subprocess: it creates the inputs, warms the libraries up on a
tiny shape, then times one forward+backward at the full shape (wall and CPU time) and reports
the peak resident memory above what the process held with its inputs in place
(``ru_maxrss``). Methods alternate within each repetition, so a change of load on a shared
machine hits all of them. Methods whose estimated peak exceeds ``--max-gib`` are skipped and
listed. The accuracy columns are the largest absolute difference of the loss and gradients
from ``impl="reference"`` (logits materialised, ``ls.cross_entropy``) relative to the largest
reference entry, at the same eps (eps=0 for PyTorch's), measured in one separate process.

    python benchmarks/bench_linear_cross_entropy.py                      # everything (~30 min)
    python benchmarks/bench_linear_cross_entropy.py --quick    # 2048x512x8000, scaled, ~1 min
    python benchmarks/bench_linear_cross_entropy.py --shapes 2048x1024x32000 --weights scaled
    python benchmarks/bench_linear_cross_entropy.py --write benchmarks/results/cpu_linear.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

EPS = 0.1
METHODS = {
    "ours": "ls.linear_cross_entropy",
    "native": "F.linear + F.cross_entropy(label_smoothing)",
    "ls_ce": "F.linear + ls.cross_entropy",
    "mm3": "three matmuls alone",
    "torch_ref": "F.linear_cross_entropy(options=None), eps=0",
    "torch_chunked": "F.linear_cross_entropy(options=LinearCrossEntropyOptions()), eps=0",
}
SHAPES = ((512, 256, 32000), (2048, 1024, 32000), (8192, 1024, 32000), (4096, 2048, 128256))
# Ratio columns: each method's time over these baselines' (same shape, weights and run).
BASELINES = ("native", "ls_ce", "mm3", "torch_ref", "torch_chunked")


def _inputs(n: int, h: int, v: int, weights: str, dtype_name: str = "float32", seed: int = 0):
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g)
    if weights == "scaled":
        weight /= h**0.5
    hidden = hidden.to(dtype).requires_grad_()
    weight = weight.to(dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    target[::17] = -100  # some padding
    return hidden, weight, target


def _step(method: str, hidden, weight, target):
    """One forward+backward; returns the loss (detached) and leaves the gradients in .grad."""
    import torch
    import torch.nn.functional as F

    import labelsmooth as ls

    if method == "ours":
        loss = ls.linear_cross_entropy(hidden, weight, target, EPS)
    elif method == "reference":
        loss = ls.linear_cross_entropy(hidden, weight, target, EPS, impl="reference")
    elif method == "reference_eps0":
        loss = ls.linear_cross_entropy(hidden, weight, target, 0.0, impl="reference")
    elif method == "native":
        loss = F.cross_entropy(F.linear(hidden, weight), target, label_smoothing=EPS)
    elif method == "ls_ce":
        loss = ls.cross_entropy(F.linear(hidden, weight), target, EPS)
    elif method == "torch_ref":
        loss = F.linear_cross_entropy(hidden, weight, target, ignore_index=-100)
    elif method == "torch_chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        loss = F.linear_cross_entropy(hidden, weight, target, ignore_index=-100, options=options)
    elif method == "mm3":
        with torch.no_grad():
            g = hidden @ weight.T
            hidden.grad = g @ weight
            weight.grad = g.T @ hidden
            return g[0, 0].clone()
    else:
        raise ValueError(f"unknown method {method!r}")
    loss.backward()
    return loss.detach()


def estimated_peak_bytes(method: str, n: int, h: int, v: int) -> int:
    """A rough upper estimate of the method's peak memory (float32), to skip what would not fit.

    L: the (N, V) logits; W: the (V, H) weight (its gradient is the second W)."""
    logits, weight = 4 * n * v, 4 * v * h
    factor = {"native": 3, "torch_ref": 3, "reference": 5, "ls_ce": 2, "mm3": 1}.get(method, 0)
    return factor * logits + 2 * weight + 8 * n * h


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(method: str, n: int, h: int, v: int, weights: str, threads: int) -> dict:
    """One measurement in this (fresh) process: time and peak memory of forward+backward."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    tiny = _inputs(256, 32, 512, weights)  # above ls.cross_entropy's AUTO_MIN_ELEMENTS
    _step(method, *tiny)  # library initialisation (thread pools, kernels), not the shape
    del tiny
    hidden, weight, target = _inputs(n, h, v, weights)
    before = _max_rss_bytes()
    start, cpu = time.perf_counter(), _cpu_seconds()
    _step(method, hidden, weight, target)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "extra_bytes": _max_rss_bytes() - before,
        "threads": torch.get_num_threads(),
    }


def accuracy(n: int, h: int, v: int, weights: str, methods: list[str]) -> dict:
    """Max |difference| of loss and gradients from impl='reference' (at the method's eps),
    relative to the largest |reference| value."""
    refs, results = {}, {}
    for method in methods:
        if method == "mm3":
            continue
        key = "reference_eps0" if method.startswith("torch") else "reference"
        if key not in refs:
            hidden, weight, target = _inputs(n, h, v, weights)
            loss = _step(key, hidden, weight, target)
            refs[key] = (loss.double(), hidden.grad.double(), weight.grad.double())
            del hidden, weight, target, loss
        hidden, weight, target = _inputs(n, h, v, weights)
        loss = _step(method, hidden, weight, target)
        values = (loss.double(), hidden.grad.double(), weight.grad.double())
        results[method] = [
            float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
            for a, b in zip(values, refs[key], strict=True)
        ]
        del hidden, weight, target, loss, values
    return results


def _spawn(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _shell(command: str) -> str:
    done = subprocess.run(command, shell=True, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _parse_shapes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        n, h, v = (int(x) for x in item.lower().split("x"))
        shapes.append((n, h, v))
    return shapes


def run_block(n, h, v, weights, methods, args) -> tuple[list[str], dict]:
    """Measures one (shape, weights) block; returns its markdown lines and raw results."""
    limit = args.max_gib * 2**30
    skipped = [m for m in methods if estimated_peak_bytes(m, n, h, v) > limit]
    measured = [m for m in methods if m not in skipped]
    load_before = _shell("uptime")
    runs: dict[str, list[dict]] = {m: [] for m in measured}
    for rep in range(args.reps):
        for method in measured:
            result = _spawn("--worker", method, str(n), str(h), str(v), weights, str(args.threads))
            runs[method].append(result)
            print(
                f"{n}x{h}x{v} {weights} rep {rep} {method:14s} {result['seconds']:8.3f} s "
                f"(cpu {result['cpu_seconds']:8.3f} s) +{result['extra_bytes'] / 2**20:8.1f} MiB",
                file=sys.stderr,
                flush=True,
            )
    diffs: dict = {}
    checked = [m for m in measured if m != "mm3"]
    if not args.no_accuracy and estimated_peak_bytes("reference", n, h, v) <= limit and checked:
        diffs = _spawn("--accuracy", str(n), str(h), str(v), weights, ",".join(checked))
    load_after = _shell("uptime")

    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    cpu_med = {m: statistics.median(r["cpu_seconds"] for r in rs) for m, rs in runs.items()}
    mib = 2**20
    logits_mib = 4 * n * v / mib
    lines = [
        f"### N={n}, H={h}, V={v}, float32, {weights} weights",
        "",
        f"Logits would be {logits_mib:.0f} MiB. Median of {args.reps} fresh subprocesses per "
        f"method, {runs[measured[0]][0]['threads']} torch threads. "
        f"Load before: `{load_before}`; after: `{load_after}`.",
        "",
        "| method | time (s) | / F.linear+F.CE | / F.linear+ls.CE | / 3 matmuls "
        "| / torch ref (eps 0) | / torch chunked (eps 0) | CPU time (s) | CPU / 3 matmuls "
        "| peak above inputs (MiB) | rel. diff loss | grad hidden | grad weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method in measured:
        seconds = med[method]
        ratios = "".join(f"| {seconds / med[b]:.2f} " if b in med else "| - " for b in BASELINES)
        cpu = cpu_med[method]
        cpu_ratio = f"{cpu / cpu_med['mm3']:.2f}" if "mm3" in cpu_med else "-"
        extra = statistics.median(r["extra_bytes"] for r in runs[method])
        d = diffs.get(method)
        acc = "".join(f"| {x:.1e} " for x in d) if d else "| - | - | - "
        lines.append(
            f"| {METHODS[method]} | {seconds:.3f} {ratios}| {cpu:.2f} | {cpu_ratio} "
            f"| {extra / mib:.0f} " + acc + "|"
        )
    all_times = {m: [round(r["seconds"], 3) for r in rs] for m, rs in runs.items()}
    all_cpu = {m: [round(r["cpu_seconds"], 3) for r in rs] for m, rs in runs.items()}
    lines += [
        "",
        f"All times (s): `{json.dumps(all_times)}`",
        "",
        f"All CPU times (s): `{json.dumps(all_cpu)}`",
    ]
    if skipped:
        lines += [
            "",
            "Skipped (estimated peak above "
            f"{args.max_gib:g} GiB): {', '.join(METHODS[m] for m in skipped)}.",
        ]
    if not diffs:
        lines += ["", "Accuracy not measured here (the reference would not fit the limit)."]
    return lines, {"runs": runs, "diffs": diffs, "skipped": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=_parse_shapes, default=list(SHAPES))
    parser.add_argument("--quick", action="store_true", help="2048x512x8000, scaled weights")
    parser.add_argument("--weights", default="scaled,unscaled")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--reps", type=int, default=3, help="measurements per method")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)"
    )
    parser.add_argument("--max-gib", type=float, default=7.0, help="skip methods above this")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown)")
    parser.add_argument(
        "--append", action="store_true", help="with --write: add this run's blocks to the file"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw results")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, n, h, v, weights, threads = args.worker
        print(json.dumps(worker(method, int(n), int(h), int(v), weights, int(threads))))
        return
    if args.accuracy:
        n, h, v, weights, methods = args.accuracy
        print(json.dumps(accuracy(int(n), int(h), int(v), weights, methods.split(","))))
        return

    if args.quick:
        args.shapes, args.weights = [(2048, 512, 8000)], "scaled"
    methods = args.methods.split(",")
    for method in methods:
        if method not in METHODS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    import torch

    lines, raw = [], {}
    for n, h, v in args.shapes:
        for weights in args.weights.split(","):
            block, raw[f"{n}x{h}x{v}/{weights}"] = run_block(n, h, v, weights, methods, args)
            print("\n".join(block), flush=True)
            lines += [*block, ""]
    command = " ".join(["python", "benchmarks/bench_linear_cross_entropy.py", *sys.argv[1:]])
    model = _shell("lscpu | grep 'Model name' | cut -d: -f2").strip()
    header = [
        f"Command: `{command}`",
        "",
        f"Date: {args.date}. Machine: torch {torch.__version__}, Python "
        f"{platform.python_version()}, {_shell('nproc')} CPUs ({model}), shared with other "
        "jobs (see the load lines).",
        "",
    ]
    if args.write and args.append:
        with open(args.write, "a") as handle:
            handle.write("\n".join(["", f"## Run: `{command}`", "", *lines]))
    elif args.write:
        with open(args.write, "w") as handle:
            handle.write("\n".join(["# linear_cross_entropy on CPU", "", *header, *lines]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(raw, handle, indent=1)


if __name__ == "__main__":
    main()
