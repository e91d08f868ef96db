"""CPU benchmark: fused linear-head label-smoothed loss vs F.linear + native smoothed CE.

For each method, each measurement runs in a fresh subprocess: it creates the inputs, warms the
libraries up on a tiny shape, then times one forward+backward at the full shape and reports
the peak resident memory above what the process held with its inputs in place
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Methods alternate, so a change of load on a
shared machine hits both. The table gives medians over the repetitions and ratios against the
baseline measured in the same run, plus the largest absolute difference of the loss and of the
gradients from ``impl="reference"`` (logits materialised, ``ls.cross_entropy``).

    python benchmarks/bench_linear_cross_entropy.py            # N=8192, H=1024, V=32000, fp32
    python benchmarks/bench_linear_cross_entropy.py --quick    # N=2048, H=512, V=8000
    python benchmarks/bench_linear_cross_entropy.py --write benchmarks/results/cpu_linear.md
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

EPS = 0.1
METHODS = {
    "native": "F.linear + F.cross_entropy(label_smoothing=0.1)",
    "chunked": "ls.linear_cross_entropy(impl='chunked')",
}


def _inputs(n: int, h: int, v: int, dtype_name: str, seed: int = 0):
    import torch

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=g) / h**0.5).to(dtype).requires_grad_()
    weight = torch.randn(v, h, generator=g).to(dtype).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)
    target[::17] = -100  # some padding
    return hidden, weight, target


def _step(method: str, hidden, weight, target):
    import torch.nn.functional as F

    from labelsmooth.kernels.linear import linear_cross_entropy

    if method == "native":
        logits = F.linear(hidden, weight)
        loss = F.cross_entropy(logits, target, label_smoothing=EPS)
    elif method == "chunked":
        loss = linear_cross_entropy(hidden, weight, target, EPS, impl="chunked")
    elif method == "reference":
        loss = linear_cross_entropy(hidden, weight, target, EPS, impl="reference")
    else:
        raise ValueError(f"unknown method {method!r}")
    loss.backward()
    return loss.detach()


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(method: str, n: int, h: int, v: int, dtype_name: str, threads: int) -> dict:
    """One measurement in this (fresh) process: time and peak memory of forward+backward."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    tiny = _inputs(64, 32, 100, dtype_name)
    _step(method, *tiny)  # library initialisation (thread pools, kernels), not the shape
    del tiny
    hidden, weight, target = _inputs(n, h, v, dtype_name)
    before = _max_rss_bytes()
    start, cpu = time.perf_counter(), _cpu_seconds()
    _step(method, hidden, weight, target)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    peak = _max_rss_bytes()
    grad_bytes = sum(t.grad.numel() * t.grad.element_size() for t in (hidden, weight))
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "extra_bytes": peak - before,
        "grad_bytes": grad_bytes,
        "threads": torch.get_num_threads(),
    }


def accuracy(n: int, h: int, v: int, dtype_name: str) -> dict:
    """Max |difference| of loss and gradients of each method from impl='reference', absolute
    and relative to the largest |reference| value."""
    results, reference = {}, None
    for method in ("reference", *METHODS):
        hidden, weight, target = _inputs(n, h, v, dtype_name)
        loss = _step(method, hidden, weight, target)
        values = (loss.float(), hidden.grad.float(), weight.grad.float())
        if reference is None:
            reference = values
            continue
        diffs = [
            (float((a - b).abs().max()), float((a - b).abs().max() / b.abs().max()))
            for a, b in zip(values, reference, strict=True)
        ]
        results[method] = dict(zip(("loss", "grad_hidden", "grad_weight"), diffs, strict=True))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=2048, H=512, V=8000")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("N", "H", "V"))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--reps", type=int, default=3, help="measurements per method")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)"
    )
    parser.add_argument("--write", metavar="PATH", help="also write the report (markdown)")
    parser.add_argument(
        "--append", action="store_true", help="with --write: add this run's table to the file"
    )
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        method, n, h, v, dtype_name, threads = args.worker
        print(json.dumps(worker(method, int(n), int(h), int(v), dtype_name, int(threads))))
        return
    if args.accuracy:
        n, h, v, dtype_name = args.accuracy
        print(json.dumps(accuracy(int(n), int(h), int(v), dtype_name)))
        return

    n, h, v = args.shape or ((2048, 512, 8000) if args.quick else (8192, 1024, 32000))
    import torch

    logits_bytes = n * v * torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    load_before = _shell("uptime")
    runs: dict[str, list[dict]] = {m: [] for m in METHODS}
    for rep in range(args.reps):
        for method in METHODS:
            result = _spawn(
                "--worker", method, str(n), str(h), str(v), args.dtype, str(args.threads)
            )
            runs[method].append(result)
            print(
                f"rep {rep} {method:8s} {result['seconds']:8.3f} s "
                f"(cpu {result['cpu_seconds']:8.3f} s) "
                f"+{result['extra_bytes'] / 2**20:8.1f} MiB",
                file=sys.stderr,
            )
    diffs = _spawn("--accuracy", str(n), str(h), str(v), args.dtype)
    load_after = _shell("uptime")

    base_time = statistics.median(r["seconds"] for r in runs["native"])
    base_cpu = statistics.median(r["cpu_seconds"] for r in runs["native"])
    base_mem = statistics.median(r["extra_bytes"] for r in runs["native"])
    mib = 2**20
    lines = [
        f"Shape N={n}, H={h}, V={v}, {args.dtype}, eps={EPS}, targets 1/17 padding; "
        f"logits would be {logits_bytes / mib:.0f} MiB. Median of {args.reps} fresh "
        f"subprocesses per method, one forward+backward each, "
        f"{runs['native'][0]['threads']} torch threads.",
        "",
        "| method | time (s) | time / native | CPU time (s) | CPU / native "
        "| peak above inputs (MiB) | mem / native "
        "| peak above inputs + grads (MiB) | that / logits size "
        "| max abs diff (rel.) loss | grad hidden | grad weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, label in METHODS.items():
        seconds = statistics.median(r["seconds"] for r in runs[method])
        cpu = statistics.median(r["cpu_seconds"] for r in runs[method])
        extra = statistics.median(r["extra_bytes"] for r in runs[method])
        over_grads = extra - runs[method][0]["grad_bytes"]
        d = diffs[method]
        lines.append(
            f"| {label} | {seconds:.2f} | {seconds / base_time:.2f} "
            f"| {cpu:.2f} | {cpu / base_cpu:.2f} | {extra / mib:.0f} "
            f"| {extra / base_mem:.3f} | {over_grads / mib:.0f} "
            f"| {100 * over_grads / logits_bytes:.1f}% "
            + "".join(f"| {d[k][0]:.1e} ({d[k][1]:.0e}) " for k in d)
            + "|"
        )
    all_times = {m: [round(r["seconds"], 2) for r in rs] for m, rs in runs.items()}
    lines += ["", f"All times (s): {all_times}", f"Load before: `{load_before}`",
              f"Load after: `{load_after}`"]  # fmt: skip
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = " ".join(["python", "benchmarks/bench_linear_cross_entropy.py", *sys.argv[1:]])
        machine = _shell("lscpu | head -20")
        report = [
            "# linear_cross_entropy on CPU",
            "",
            f"Command: `{command}`",
            "",
            table,
            "",
            "Gradients count as memory above the inputs for both methods (hidden.grad and "
            "weight.grad are the result, "
            f"{runs['native'][0]['grad_bytes'] / mib:.0f} MiB here); the column "
            "'above inputs + grads' is what the method needs beyond them, to be compared with "
            "the size of the logits.",
            "",
            f"Machine: torch {torch.__version__}, Python {platform.python_version()}, "
            f"{torch.get_num_threads()} torch threads. The CPU is shared with other engineers' "
            "jobs: see the load lines above.",
            "",
            "```",
            machine,
            "```",
            "",
        ]
        if args.append:
            report = ["", f"## Run: `{command}`", "", table, ""]
        with open(args.write, "a" if args.append else "w") as handle:
            handle.write("\n".join(report))


if __name__ == "__main__":
    main()
