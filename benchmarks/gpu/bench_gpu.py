"""GPU benchmark: label-smoothed cross-entropy and the linear head, ours against the others.

Cross-entropy on (N, V) logits: native ``F.cross_entropy(label_smoothing=eps)``, the same under
``torch.compile``, Liger-Kernel's ``LigerCrossEntropyLoss``, and ours (``impl="triton"``,
``"chunked"``, ``"auto"``). Linear head, (N, H) hidden and (V, H) weight: ``F.linear`` + native,
PyTorch's ``F.linear_cross_entropy``, Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss``, Apple's
Cut Cross-Entropy (``cut_cross_entropy.linear_cross_entropy``, which has no label smoothing: run
at eps 0, beside ours at eps 0), and ours (``ls.linear_cross_entropy``, same three impls).

Each case: fresh inputs, one warm-up call (compiles; reported as "first"), then ``--reps``
forward+backward calls timed with CUDA events (``torch.cuda.synchronize()`` before the first
event and after the last: the clock never reads launches only); the median is reported, with
the peak of ``torch.cuda.max_memory_allocated`` above the inputs during one call. Against the
machine, measured in the same run: cross-entropy as achieved bandwidth (one read of the logits
plus one write of their gradient, the least any implementation moves) over the bandwidth of a
device copy (``x.clone()`` of 4 GiB, bytes read plus written); the linear head as TFLOP/s (the
three products of forward+backward, 6 N V H) over a measured bf16 ``torch.mm``. Accuracy: the
loss against a float32 reference, and the gradient of the logits' (hidden's) first rows.

A competitor that is not available is skipped with a note. A time budget (``--budget``)
skips what would start after it. ``--dry-run`` lists the cases and what is available, without
a GPU.

    python benchmarks/gpu/bench_gpu.py                       # N 8192, 32768; V 128256; H 4096
    python benchmarks/gpu/bench_gpu.py --dry-run
    python benchmarks/gpu/bench_gpu.py --rows 4096 --only ce --json out.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

CHECK_ROWS = 256


@dataclass(frozen=True)
class Case:
    family: str  # "ce" (logits in) or "linear" (hidden and weight in)
    name: str
    eps: float
    needs: str | None = None  # "module" or "module:attribute" that must exist, else skipped
    note: str = ""


def cases(eps: float) -> list[Case]:
    return [
        Case("ce", "native", eps),
        Case("ce", "native+compile", eps),
        Case("ce", "liger", eps, "liger_kernel"),
        Case("ce", "ours:triton", eps, "triton"),
        Case("ce", "ours:chunked", eps),
        Case("ce", "ours:auto", eps),
        Case("linear", "native", eps, note="F.linear + F.cross_entropy"),
        Case(
            "linear", "torch:linear_cross_entropy", eps, "torch.nn.functional:linear_cross_entropy"
        ),
        Case("linear", "liger:flce", eps, "liger_kernel"),
        Case("linear", "ours:triton", eps, "triton"),
        Case("linear", "ours:chunked", eps),
        Case("linear", "ours:auto", eps),
        Case("linear", "cce", 0.0, "cut_cross_entropy", "no label smoothing: eps 0"),
        Case("linear", "ours:triton", 0.0, "triton", "eps 0, beside cce"),
    ]


def _available(needs: str | None) -> bool:
    if needs is None:
        return True
    module, _, attribute = needs.partition(":")
    if importlib.util.find_spec(module) is None:
        return False
    return not attribute or hasattr(importlib.import_module(module), attribute)


def _loss_fn(case: Case) -> Callable[..., Any]:
    """The callable of one case; raises ImportError / AttributeError when unavailable."""
    import torch
    import torch.nn.functional as F

    import labelsmooth as ls

    eps = case.eps
    impl = case.name.partition(":")[2]
    if case.family == "ce":
        if case.name in ("native", "native+compile"):

            def native(x, y):
                return F.cross_entropy(x, y, label_smoothing=eps)

            return torch.compile(native) if case.name == "native+compile" else native
        if case.name == "liger":
            from liger_kernel.transformers import LigerCrossEntropyLoss

            liger = LigerCrossEntropyLoss(label_smoothing=eps)
            return lambda x, y: liger(x, y)
        return lambda x, y: ls.cross_entropy(x, y, eps, impl=impl)
    if case.name == "native":
        return lambda h, w, y: F.cross_entropy(F.linear(h, w), y, label_smoothing=eps)
    if case.name == "torch:linear_cross_entropy":
        fused = F.linear_cross_entropy  # AttributeError on a torch without it
        return lambda h, w, y: fused(h, w, y, ignore_index=-100, label_smoothing=eps)
    if case.name == "liger:flce":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(label_smoothing=eps)
        return lambda h, w, y: flce(w, h, y)  # Liger takes the weight first
    if case.name == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        return lambda h, w, y: cce(h, w, y)
    return lambda h, w, y: ls.linear_cross_entropy(h, w, y, eps, impl=impl)


# ---------------------------------------------------------------------------------------------
# Device measurements.


def _events_ms(fn: Callable[[], Any], reps: int) -> list[float]:
    import torch

    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def copy_bandwidth(gib: float = 4.0) -> float:
    """Bytes read + written per second by ``x.clone()`` of ``gib`` GiB on the device."""
    import torch

    x = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device="cuda").fill_(1)
    x.clone()
    times = _events_ms(lambda: x.clone(), 10)
    return 2 * x.numel() * x.element_size() / (statistics.median(times) / 1e3)


def matmul_flops(size: int = 8192) -> float:
    """FLOP/s of a bf16 ``torch.mm`` of ``size`` cubed (random data)."""
    import torch

    a = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(size, size, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    times = _events_ms(lambda: a @ b, 10)
    return 2 * size**3 / (statistics.median(times) / 1e3)


def _inputs(family: str, n: int, v: int, h: int, dtype: Any, seed: int = 0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    y = torch.randint(0, v, (n,), device="cuda", generator=g)
    y[::17] = -100  # some padding
    if family == "ce":
        x = torch.randn(n, v, device="cuda", generator=g, dtype=torch.float32).mul_(2)
        return (x.to(dtype),), y
    hidden = torch.randn(n, h, device="cuda", generator=g, dtype=torch.float32) / h**0.5
    weight = torch.randn(v, h, device="cuda", generator=g, dtype=torch.float32) / h**0.25
    return (hidden.to(dtype), weight.to(dtype)), y


def _reference(family: str, tensors, y, eps: float):
    """(float32 loss, float32 gradient of the first rows of the first input)."""
    import torch
    import torch.nn.functional as F

    import labelsmooth as ls

    n = y.shape[0]
    valid = int((y != -100).sum())
    if family == "ce":
        (x,) = tensors
        with torch.no_grad():
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            for start in range(0, n, 4096):
                block = x[start : start + 4096].float()
                total += F.cross_entropy(
                    block, y[start : start + 4096], label_smoothing=eps, reduction="sum"
                ).double()
        head = x[:CHECK_ROWS].detach().float().requires_grad_(True)
        part = F.cross_entropy(head, y[:CHECK_ROWS], label_smoothing=eps, reduction="sum")
        (part / valid).backward()
        return float(total / valid), head.grad
    hidden, weight = tensors
    h32 = hidden.detach().float().requires_grad_(True)
    loss = ls.linear_cross_entropy(h32, weight.detach().float(), y, eps, impl="chunked")
    loss.backward()
    return float(loss), h32.grad[:CHECK_ROWS]


def run_case(case: Case, n: int, v: int, h: int, dtype: Any, reps: int, reference) -> dict:
    import torch

    fn = _loss_fn(case)
    tensors, y = _inputs(case.family, n, v, h, dtype)
    for t in tensors:
        t.requires_grad_(True)

    def step():
        for t in tensors:
            t.grad = None
        loss = fn(*tensors, y)
        loss.backward()
        return loss

    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    times = _events_ms(step, reps if first < 20 else 1)
    for t in tensors:
        t.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    ref_loss, ref_grad = reference
    grad = tensors[0].grad[:CHECK_ROWS].float()
    scale = float(ref_grad.abs().max()) or 1.0
    return {
        "family": case.family,
        "name": case.name,
        "eps": case.eps,
        "rows": n,
        "classes": v,
        "hidden": h if case.family == "linear" else None,
        "median_ms": statistics.median(times),
        "times_ms": times,
        "first_s": first,
        "peak_above_inputs_bytes": peak,
        "loss_diff": abs(float(loss) - ref_loss),
        "grad_rel_diff": float((grad - ref_grad).abs().max()) / scale,
    }


# ---------------------------------------------------------------------------------------------
# Report.


def _table(results: list[dict], machine: dict) -> str:
    lines = [
        "| case | eps | N x V (x H) | median fwd+bwd (ms) | vs native | first (s) "
        "| against the machine | peak above inputs | loss diff | grad rel diff |",
        "|" + "---|" * 10,
    ]
    native = {
        (r["family"], r["rows"], r["eps"]): r["median_ms"]
        for r in results
        if r["name"] == "native" and "median_ms" in r
    }
    for r in results:
        shape = f"{r['rows']}x{r['classes']}" + (
            f"x{r['hidden']}" if r["family"] == "linear" else ""
        )
        label = f"{r['family']} {r['name']}"
        if "median_ms" not in r:
            lines.append(f"| {label} | {r['eps']} | {shape} | {r['skipped']} | | | | | | |")
            continue
        seconds = r["median_ms"] / 1e3
        base = native.get((r["family"], r["rows"], r["eps"]))
        ratio = f"{base / r['median_ms']:.2f}x" if base else "n/a"
        if r["family"] == "ce":
            rate = 2 * r["rows"] * r["classes"] * r["itemsize"] / seconds
            machine_text = f"{rate / 1e12:.2f} TB/s = {rate / machine['copy_Bps']:.0%} of copy"
        else:
            rate = 6 * r["rows"] * r["classes"] * r["hidden"] / seconds
            machine_text = f"{rate / 1e12:.0f} TFLOP/s = {rate / machine['mm_flops']:.0%} of mm"
        lines.append(
            f"| {label} | {r['eps']} | {shape} | {r['median_ms']:.2f} | {ratio} "
            f"| {r['first_s']:.2f} | {machine_text} "
            f"| {r['peak_above_inputs_bytes'] / 2**30:.2f} GiB "
            f"| {r['loss_diff']:.1e} | {r['grad_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="8192,32768", help="N values, comma-separated")
    parser.add_argument("--classes", type=int, default=128256, help="V")
    parser.add_argument("--hidden", type=int, default=4096, help="H (linear head)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", default="ce,linear", help="families: ce, linear")
    parser.add_argument("--budget", type=float, default=330.0, help="seconds; later cases skip")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--dry-run", action="store_true", help="list the cases, run nothing")
    args = parser.parse_args(argv)
    try:
        rows = [int(r) for r in args.rows.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rows must be integers separated by commas, got {args.rows!r}")
    families = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(families) - {"ce", "linear"}
    if unknown or not rows or args.reps < 1:
        parser.error(f"--only takes ce and/or linear (got {args.only!r}); --rows, --reps >= 1")
    plan = [(c, n) for n in rows for c in cases(args.eps) if c.family in families]

    if args.dry_run:
        for case, n in plan:
            shape = f"N={n} V={args.classes}" + (
                f" H={args.hidden}" if case.family == "linear" else ""
            )
            ok = _available(case.needs)
            status = "ready" if ok else f"skipped: {case.needs} is not available"
            note = f" ({case.note})" if case.note else ""
            print(f"{case.family:6s} {case.name:28s} eps={case.eps:<4} {shape} {args.dtype}: "
                  f"{status}{note}")  # fmt: skip
        print(f"{len(plan)} cases")
        return 0

    import torch

    if not torch.cuda.is_available():
        print("bench_gpu.py needs a CUDA device (use --dry-run to list the cases)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    versions = {"torch": torch.__version__}
    dists = {"liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy"}
    for module in ("triton", "liger_kernel", "cut_cross_entropy"):
        try:
            from importlib.metadata import version

            versions[module] = version(dists.get(module, module))
        except Exception:  # any failure: not installed
            versions[module] = "not installed"
    machine = {
        "device": torch.cuda.get_device_name(),
        "copy_Bps": copy_bandwidth(),
        "mm_flops": matmul_flops(),
        **versions,
    }
    print(
        f"# {machine['device']}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        flush=True,
    )
    print(
        f"# copy (x.clone, read + write): {machine['copy_Bps'] / 1e12:.2f} TB/s; "
        f"bf16 mm 8192^3: {machine['mm_flops'] / 1e12:.0f} TFLOP/s",
        flush=True,
    )
    results: list[dict] = []
    references: dict[tuple, Any] = {}
    for case, n in plan:
        base = {"family": case.family, "name": case.name, "eps": case.eps, "rows": n,
                "classes": args.classes, "hidden": args.hidden}  # fmt: skip
        elapsed = time.perf_counter() - start
        if elapsed > args.budget:
            results.append({**base, "skipped": f"skipped: time budget ({elapsed:.0f} s)"})
            print(f"  {case.family} {case.name} N={n}: skipped (budget)", flush=True)
            continue
        if not _available(case.needs):
            results.append({**base, "skipped": f"skipped: {case.needs} is not available"})
            print(f"  {case.family} {case.name} N={n}: {case.needs} not available", flush=True)
            continue
        try:
            key = (case.family, n, case.eps)
            if key not in references:
                tensors, y = _inputs(case.family, n, args.classes, args.hidden, dtype)
                references[key] = _reference(case.family, tensors, y, case.eps)
                del tensors, y
            result = run_case(case, n, args.classes, args.hidden, dtype, args.reps, references[key])
        except Exception as err:  # report, go on with the next case
            message = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}"
            results.append({**base, "skipped": f"failed: {message}"})
            print(f"  {case.family} {case.name} N={n}: FAILED {message}", flush=True)
            continue
        finally:
            torch.cuda.empty_cache()
        result["itemsize"] = torch.empty((), dtype=dtype).element_size()
        results.append(result)
        print(
            f"  {case.family} {case.name} eps={case.eps} N={n}: {result['median_ms']:.2f} ms "
            f"(first {result['first_s']:.2f} s), loss diff {result['loss_diff']:.1e}",
            flush=True,
        )
    print(_table(results, machine))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "results": results}, handle, indent=1)
    return 0 if all(math.isfinite(r.get("median_ms", 0.0)) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
