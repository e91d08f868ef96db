"""Vocab-parallel loss: equal to the single-device loss and gradient for 1, 2, 3 and 4 ranks.

One group of gloo processes (CPU, file:// rendezvous, no network) is spawned per world size and
runs every case inside it; the workers never raise mid-run (a rank that raised while the others
wait in a collective would hang them) but write their failures to a file that the test reads.
Error paths that need no second rank are tested in this process (world size 1).
"""

from __future__ import annotations

import datetime
import doctest
import itertools
import os
import runpy
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import labelsmooth as ls
from labelsmooth import distributed as lsd

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tensor_parallel.py"

# Shard sizes per world size: vocabularies not divisible by the world size, unequal shards, a
# one-class shard (world 3) and an empty one (world 4).
SHARDS = {1: [7], 2: [3, 4], 3: [4, 1, 6], 4: [3, 0, 5, 3]}
TOL = {"rtol": 1e-6, "atol": 1e-6}
SPAWN_TIMEOUT_S = 180

# (style, prior, weight): the smoothing variants; prior is "uniform"-only.
VARIANTS = [
    ("uniform", False, False),
    ("uniform", False, True),
    ("uniform", True, False),
    ("uniform", True, True),
    ("others", False, False),
    ("others", False, True),
]
CASES = list(
    itertools.product(
        VARIANTS, ["none", "mean", "sum"], ["no", "some", "all"], [False, True]
    )  # reduction, which targets are ignored, return_nll
)
SHAPES = [(5,), (2, 3), ()]  # target shape: batch, sequence (B, T), unbatched
EPS = [0.1, 0.3, -0.05, 0.0, 0.6]


# ----------------------------------------------------------------------------------------------
# Shared helpers (the workers and the in-process tests use the same case builders)


def _offsets(sizes: list[int]) -> list[int]:
    return [sum(sizes[:r]) for r in range(len(sizes))]


def _class_first(x: torch.Tensor) -> torch.Tensor:
    """(..., V) -> the layout of ls.cross_entropy: class dimension 1 (or 0 unbatched)."""
    return x.movedim(-1, 1) if x.dim() > 2 else x


def _make_case(index: int, num_classes: int, dtype: torch.dtype = torch.float64) -> dict:
    """A case of CASES with its data; deterministic, so every rank builds the same one."""
    (style, use_prior, use_weight), reduction, ignored, return_nll = CASES[index]
    g = torch.Generator().manual_seed(1000 + index)
    shape = SHAPES[index % len(SHAPES)]
    ignore_index = 1 if index % 5 == 0 else -100  # a valid class may be the ignore index
    logits = (3 * torch.randn(*shape, num_classes, generator=g, dtype=torch.float64)).to(dtype)
    target = torch.randint(0, num_classes, shape, generator=g)
    if ignored == "some" and target.dim() > 0:
        target.view(-1)[::3] = ignore_index
    elif ignored == "all":
        target.fill_(ignore_index)
    prior = weight = None
    if use_prior:
        prior = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.05
        prior[num_classes // 2] = 0.0  # a class of zero prior mass
        prior = prior / prior.sum()
    if use_weight:
        weight = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.2
    return {
        "name": f"case {index}: {CASES[index]} shape={shape}",
        "logits": logits,
        "target": target,
        "eps": EPS[index % len(EPS)] if style == "uniform" else EPS[index % 4],
        "kwargs": {
            "style": style,
            "reduction": reduction,
            "ignore_index": ignore_index,
            "return_nll": return_nll,
        },
        "prior": prior,
        "weight": weight,
        "grad_out": torch.randn(shape, generator=g, dtype=torch.float64),
        "grad_nll": torch.randn(shape, generator=g, dtype=torch.float64),
    }


def _excluding_case(index: int, num_classes: int, exclude, weight_mode: str) -> dict:
    """A case of CASES with ``exclude_classes`` and ``weight_mode`` added; labels in an
    excluded class are ignored (``"others"`` refuses them)."""
    case = _make_case(index, num_classes)
    case["name"] += f" exclude_classes={exclude} weight_mode={weight_mode!r}"
    case["kwargs"] = {**case["kwargs"], "exclude_classes": exclude, "weight_mode": weight_mode}
    if exclude is not None:
        excluded = torch.isin(case["target"], torch.tensor(exclude))
        case["target"] = case["target"].masked_fill(excluded, case["kwargs"]["ignore_index"])
    return case


def _scalar(out, case: dict, reduction: str) -> torch.Tensor:
    """One scalar whose backward sends distinct upstream gradients to loss and nll."""
    loss, nll = out if isinstance(out, tuple) else (out, None)
    scale = case["grad_out"] if reduction == "none" else torch.tensor(0.7, dtype=torch.float64)
    total = (loss.double() * scale).sum()
    if nll is not None:
        scale = case["grad_nll"] if reduction == "none" else torch.tensor(-1.3, dtype=torch.float64)
        total = total + (nll.double() * scale).sum()
    return total


def _run_case(case: dict, sizes: list[int], rank: int, group=None, tol=TOL, grad_tol=TOL) -> None:
    """Vocab-parallel loss and shard gradient on this rank == ls.cross_entropy on the whole."""
    start = _offsets(sizes)[rank]
    stop = start + sizes[rank]
    kwargs = case["kwargs"]
    dtype = case["logits"].dtype

    local = case["logits"][..., start:stop].clone().requires_grad_()
    shard = {
        "prior": None if case["prior"] is None else case["prior"][start:stop],
        "weight": None if case["weight"] is None else case["weight"][start:stop],
    }
    out = lsd.vocab_parallel_cross_entropy(
        local, case["target"], case["eps"], group=group, **shard, **kwargs
    )
    _scalar(out, case, kwargs["reduction"]).backward()

    full = case["logits"].clone().requires_grad_()
    ref = ls.cross_entropy(
        _class_first(full),
        case["target"],
        case["eps"],
        prior=case["prior"],
        weight=case["weight"],
        **kwargs,
    )
    _scalar(ref, case, kwargs["reduction"]).backward()

    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    assert len(outs) == len(refs)
    for got, want in zip(outs, refs, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got.double(), want.double(), **tol)
    assert local.grad is not None and local.grad.dtype == dtype
    torch.testing.assert_close(local.grad.double(), full.grad[..., start:stop].double(), **grad_tol)


def _megatron_naive(local: torch.Tensor, target: torch.Tensor, eps: float, sizes, rank):
    """Megatron-LM's vocab-parallel label smoothing (mean reduction), loss and local gradient.

    The softmax is global (correct), but the smoothing uses the LOCAL shard size V_r:
    ``s = eps V_r / (V_r - 1)``, ``loss = (1 - s) nll - s mean_{local c} log p_c`` and
    ``grad = p - (1 - s) onehot - s / V_r``.
    """
    start = _offsets(sizes)[rank]
    shard = local.shape[-1]
    row_max = local.amax(-1) if shard else torch.full(target.shape, -torch.inf).to(local)
    if dist.is_initialized():
        dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
    shifted = local - row_max.unsqueeze(-1)
    parts = torch.stack([shifted.exp().sum(-1), torch.zeros_like(row_max)], -1)
    owned = (target >= start) & (target < start + shard)
    index = (target - start).clamp(0, max(shard - 1, 0))
    if shard:
        parts[:, 1] = torch.where(owned, shifted.gather(-1, index[:, None]).squeeze(-1), 0.0)
    if dist.is_initialized():
        dist.all_reduce(parts)
    log_sum_exp = parts[:, 0].log()
    nll = log_sum_exp - parts[:, 1]
    log_probs = shifted - log_sum_exp.unsqueeze(-1)
    if shard < 2:  # Megatron divides by V_r - 1: undefined on a shard of 0 or 1 classes
        return torch.tensor(torch.nan), torch.full_like(local, torch.nan)
    smoothing = eps * shard / (shard - 1)
    loss = ((1 - smoothing) * nll - smoothing * log_probs.mean(-1)).mean()
    grad = log_probs.exp() - smoothing / shard
    grad[owned, index[owned]] -= 1 - smoothing
    return loss, grad / len(target)


# ----------------------------------------------------------------------------------------------
# The spawned workers


def _worker(rank: int, world: int, folder: str) -> None:
    torch.set_num_threads(1)
    failures: list[str] = []
    checks = 0
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{folder}/rendezvous",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=30),
        )
        jobs = _worker_jobs(world)
        for name, job in jobs:
            try:
                job(rank, world)
                checks += 1
            except Exception:
                failures.append(f"rank {rank}/{world} {name}:\n{traceback.format_exc()}")
        dist.barrier()
        dist.destroy_process_group()
    except Exception:
        failures.append(f"rank {rank}/{world} setup:\n{traceback.format_exc()}")
    finally:
        Path(folder, f"rank{rank}.txt").write_text(f"{checks}\n" + "\n".join(failures))


def _worker_jobs(world: int) -> list[tuple[str, Callable[[int, int], None]]]:
    sizes = SHARDS[world]
    num_classes = sum(sizes)
    jobs: list[tuple[str, Callable[[int, int], None]]] = []
    for index in range(len(CASES)):
        case = _make_case(index, num_classes)
        jobs.append((case["name"], lambda r, w, c=case: _run_case(c, sizes, r)))
    for index, dtype in [(1, torch.float32), (7, torch.bfloat16), (20, torch.float16)]:
        case = _make_case(index, num_classes, dtype)
        # Both sides accumulate in float32; the gradient is rounded to the logits' dtype.
        low = {"rtol": 1e-5, "atol": 1e-5}
        grad_tol = low if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-3}
        jobs.append(
            (
                f"{case['name']} {dtype}",
                lambda r, w, c=case, t=low, g=grad_tol: _run_case(c, sizes, r, tol=t, grad_tol=g),
            )
        )
    # exclude_classes (global indices on the first and last shard) and weight_mode="sample".
    for index in range(0, len(CASES), 7):
        for exclude, weight_mode in [([0, num_classes - 1], "pytorch"), (None, "sample"),
                                     ([num_classes // 2], "sample")]:  # fmt: skip
            case = _excluding_case(index, num_classes, exclude, weight_mode)
            jobs.append((case["name"], lambda r, w, c=case: _run_case(c, sizes, r)))
    jobs.append(("megatron naive", lambda r, w: _check_naive_differs(r, w, sizes)))
    for index in range(6):
        jobs.append((f"linear {index}", lambda r, w, i=index: _check_linear(r, sizes, i)))
    jobs.append(("errors are raised on every rank", lambda r, w: _check_errors(r, w, sizes)))
    jobs.append(("arguments agree across ranks", lambda r, w: _check_agreement(r, w, sizes)))
    if world == 4:
        jobs.append(("subgroup", lambda r, w: _check_subgroup(r)))
    return jobs


def _check_naive_differs(rank: int, world: int, sizes: list[int]) -> None:
    """Megatron's local smoothing == exact "others" loss for one rank, != for several."""
    num_classes = sum(sizes)
    g = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(6, num_classes, generator=g, dtype=torch.float64)
    target = torch.randint(0, num_classes, (6,), generator=g)
    start = _offsets(sizes)[rank]
    local = logits[:, start : start + sizes[rank]].clone().requires_grad_()
    eps = 0.1
    exact = lsd.vocab_parallel_cross_entropy(local, target, eps, style="others")
    exact.backward()
    reference = ls.cross_entropy(logits, target, eps, style="others")
    torch.testing.assert_close(exact, reference, **TOL)  # the exact loss is right everywhere
    naive_loss, naive_grad = _megatron_naive(local.detach(), target, eps, sizes, rank)
    if sizes[rank] < 2:
        return  # Megatron divides by V_r - 1: undefined on a shard of 0 or 1 classes
    loss_gap = (naive_loss - exact).abs().item()
    grad_gap = (naive_grad - local.grad).abs().max().item()
    if world == 1:
        assert loss_gap < 1e-9 and grad_gap < 1e-9, (loss_gap, grad_gap)
    else:
        assert loss_gap > 1e-3 and grad_gap > 1e-3, (loss_gap, grad_gap)


def _check_linear(rank: int, sizes: list[int], index: int) -> None:
    """The sharded projection's loss and hidden/weight/bias gradients == the single device's."""
    num_classes, features = sum(sizes), 4
    g = torch.Generator().manual_seed(300 + index)
    batch = [(5,), (2, 3)][index % 2]
    style, use_prior, use_weight = VARIANTS[index]
    reduction = ["mean", "sum", "none"][index % 3]
    hidden = torch.randn(*batch, features, generator=g, dtype=torch.float64)
    proj = torch.randn(num_classes, features, generator=g, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=g, dtype=torch.float64) if index != 2 else None
    target = torch.randint(0, num_classes, batch, generator=g)
    target.view(-1)[0] = -100
    prior = torch.softmax(torch.randn(num_classes, generator=g, dtype=torch.float64), 0)
    weight = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.2
    prior = prior if use_prior else None
    weight = weight if use_weight else None
    case = {
        "grad_out": torch.randn(batch, generator=g, dtype=torch.float64),
        "grad_nll": torch.randn(batch, generator=g, dtype=torch.float64),
    }
    kwargs = {"style": style, "reduction": reduction, "return_nll": index % 2 == 1}
    start = _offsets(sizes)[rank]
    stop = start + sizes[rank]

    h = hidden.clone().requires_grad_()
    local_proj = proj[start:stop].clone().requires_grad_()
    local_bias = None if bias is None else bias[start:stop].clone().requires_grad_()
    out = lsd.vocab_parallel_linear_cross_entropy(
        h,
        local_proj,
        target,
        0.2,
        local_bias=local_bias,
        prior=None if prior is None else prior[start:stop],
        weight=None if weight is None else weight[start:stop],
        **kwargs,
    )
    _scalar(out, case, reduction).backward()

    h_ref, proj_ref = hidden.clone().requires_grad_(), proj.clone().requires_grad_()
    bias_ref = None if bias is None else bias.clone().requires_grad_()
    logits = h_ref @ proj_ref.T + (0 if bias_ref is None else bias_ref)
    ref = ls.cross_entropy(_class_first(logits), target, 0.2, prior=prior, weight=weight, **kwargs)
    _scalar(ref, case, reduction).backward()

    outs = out if isinstance(out, tuple) else (out,)
    refs = ref if isinstance(ref, tuple) else (ref,)
    for got, want in zip(outs, refs, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(h.grad, h_ref.grad, **TOL)  # all-reduced: the full gradient
    torch.testing.assert_close(local_proj.grad, proj_ref.grad[start:stop], **TOL)
    if bias_ref is not None:
        torch.testing.assert_close(local_bias.grad, bias_ref.grad[start:stop], **TOL)


def _expect_error(match: str, fn: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match=match):
        fn()


def _check_errors(rank: int, world: int, sizes: list[int]) -> None:
    """Shard-dependent argument errors raise on EVERY rank (so no rank hangs), eps uses V."""
    num_classes = sum(sizes)
    start = _offsets(sizes)[rank]
    stop = start + sizes[rank]
    g = torch.Generator().manual_seed(8)  # the same logits on every rank
    logits = torch.randn(4, num_classes, generator=g, dtype=torch.float64)
    local = logits[:, start:stop]
    target = torch.tensor([0, num_classes - 1, 2, 1])

    def loss(**kwargs):
        kwargs.setdefault("target", target)
        return lsd.vocab_parallel_cross_entropy(local, eps=kwargs.pop("eps", 0.1), **kwargs)

    # eps is checked against the GLOBAL vocabulary, whatever the shard size.
    top = (num_classes - 1) / num_classes
    ref = ls.cross_entropy(logits, target, top, style="others")
    torch.testing.assert_close(loss(eps=top, style="others"), ref, **TOL)
    _expect_error(
        rf"eps must be <= .* num_classes={num_classes}",
        lambda: loss(eps=top + 1e-3, style="others"),
    )
    # prior shards that each sum to 1 locally do not make a distribution over the vocabulary.
    if world > 1 and min(sizes) > 0:
        local_prior = torch.full((sizes[rank],), 1.0 / sizes[rank], dtype=torch.float64)
        _expect_error("sum to 1 over the whole vocabulary", lambda: loss(prior=local_prior))
    # A bad shard on the last rank only: that rank names it, the others raise too and repeat
    # its message.
    bad = torch.ones(sizes[rank] + (1 if rank == world - 1 else 0), dtype=torch.float64)
    match = "weight must be this rank's shard"
    if rank != world - 1:
        match = rf"rank {world - 1} rejected its arguments: ValueError: {match}"
    _expect_error(match, lambda: loss(weight=bad))
    if world > 1:
        # The batch must be replicated: a different target on rank 1 is caught on every rank,
        # and so is a different number of rows on rank 0.
        other = target.roll(1) if rank == 1 else target
        _expect_error("target must be the same on every rank", lambda: loss(target=other))
        rows = 3 if rank == 0 else 4
        _expect_error(
            r"target must be the same on every rank \(number of elements",
            lambda: lsd.vocab_parallel_cross_entropy(local[:rows], target[:rows], 0.1),
        )
    # Class indices are checked against the global vocabulary.
    _expect_error(
        rf"class index {num_classes}", lambda: loss(target=torch.tensor([0, num_classes, 1, 2]))
    )
    # After all of these the ranks are still in step.
    torch.testing.assert_close(loss(), ls.cross_entropy(logits, target, 0.1), **TOL)


# One rank's argument, valid on its own, that differs from the other ranks': (name, value on
# the last rank, value elsewhere). Each would give every rank a different loss.
DIFFERENT = [
    ("eps", 0.2, 0.1),
    ("eps", 0.1 + 1e-15, 0.1),  # float64 is compared exactly
    ("style", "others", "uniform"),
    ("ignore_index", 1, -100),
    ("reduction", "sum", "mean"),
    ("return_nll", True, False),
    ("validate", False, True),
    ("exclude_classes", [0], None),
    ("exclude_classes", [0, 2], [0, 1]),
    ("weight_mode", "sample", "pytorch"),
]
# One rank's argument that is invalid: (name, value on the last rank, its error, its match).
INVALID = [
    ("eps", "0.1", TypeError, "eps must be a real number"),
    ("eps", float("nan"), ValueError, "eps must be finite"),
    ("style", "fairseq", ValueError, "style must be one of"),
    ("reduction", "avg", ValueError, "reduction must be one of"),
    ("ignore_index", 1.5, TypeError, "ignore_index must be an int"),
    ("return_nll", 1, TypeError, "return_nll must be a bool"),
    ("validate", "yes", TypeError, "validate must be a bool"),
    ("exclude_classes", [1, 1], ValueError, "exclude_classes must not repeat a class"),
    ("exclude_classes", 1, TypeError, "exclude_classes must be None, a sequence of ints"),
    ("weight_mode", "class", ValueError, "weight_mode must be one of"),
    ("target", [0, 1, 2, 1], TypeError, "target must be a torch.Tensor"),
    ("target", "float", TypeError, "target must hold integer class indices"),
    ("local_logits", "long", TypeError, "local_logits must be a floating-point tensor"),
    ("local_logits", [1.0], TypeError, "local_logits must be a torch.Tensor"),
]


def _expect_raises(error: type[Exception], match: str, fn: Callable[[], object]) -> None:
    with pytest.raises(error, match=match):
        fn()


def _check_agreement(rank: int, world: int, sizes: list[int]) -> None:
    """Scalar arguments that differ between ranks, or are invalid on one rank, raise everywhere.

    Under the old code a difference gave each rank its own loss silently, and an invalid
    argument raised on its rank before the first collective, leaving the others waiting (here:
    until the gloo timeout, then out of step); every check below would then fail.
    """
    num_classes = sum(sizes)
    start = _offsets(sizes)[rank]
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, num_classes, generator=g, dtype=torch.float64)
    local = logits[:, start : start + sizes[rank]]
    target = torch.tensor([0, num_classes - 1, 2, 1])
    last = rank == world - 1
    base = {"eps": 0.1, "local_logits": local, "target": target}

    def call(**changes):
        kwargs = {**base, **changes}
        return lsd.vocab_parallel_cross_entropy(
            kwargs.pop("local_logits"), kwargs.pop("target"), kwargs.pop("eps"), **kwargs
        )

    if world > 1:
        for name, mine, theirs in DIFFERENT:
            _expect_error(
                rf"{name} must be the same on every rank .*rank {world - 1}: ",
                lambda n=name, a=mine, b=theirs: call(**{n: a if last else b}),
            )
    for name, value, error, match in INVALID:
        if value == "float":
            value = target.float()
        elif value == "long":
            value = local.long()
        if last:
            _expect_raises(error, match, lambda n=name, v=value: call(**{n: v}))
        else:
            _expect_error(
                rf"rank {world - 1} rejected its arguments: {error.__name__}: {match}",
                lambda: call(),
            )
    # The linear variant goes through the same exchange.
    hidden = torch.randn(4, 3, generator=g, dtype=torch.float64)
    proj = torch.randn(num_classes, 3, generator=g, dtype=torch.float64)
    proj = proj[start : start + sizes[rank]]

    def linear(local_weight=proj, eps=0.1, **kwargs):
        return lsd.vocab_parallel_linear_cross_entropy(hidden, local_weight, target, eps, **kwargs)

    if world > 1:
        _expect_error(
            "eps must be the same on every rank", lambda: linear(eps=0.3 if last else 0.1)
        )
        _expect_error(
            "reduction must be the same on every rank",
            lambda: linear(reduction="none" if last else "mean"),
        )
    match = "local_weight must have shape"
    if not last:
        match = rf"rank {world - 1} rejected its arguments: ValueError: {match}"
    _expect_error(match, lambda: linear(local_weight=proj[:, :2] if last else proj))
    match = "reduction must be one of"
    if not last:
        match = rf"rank {world - 1} rejected its arguments: ValueError: {match}"
    _expect_error(match, lambda: linear(reduction="avg" if last else "mean"))
    # After all of these the ranks are still in step.
    torch.testing.assert_close(call(), ls.cross_entropy(logits, target, 0.1), **TOL)


def _check_subgroup(rank: int) -> None:
    """group= selects the ranks: a vocabulary sharded over ranks 1 and 3 of four."""
    group = dist.new_group([1, 3])
    if rank not in (1, 3):
        return
    case = _make_case(13, 9)
    _run_case(case, [4, 5], dist.get_rank(group), group=group)


def _spawn(world: int, folder: Path) -> list[tuple[int, str]]:
    """Runs ``_worker`` on ``world`` fresh processes; returns each rank's (jobs done, failures).

    The forkserver start method is spawn's clean slate (a single-threaded server process) with
    torch imported once per session instead of once per worker: ~0.1 s per group, not ~4 s.
    """
    mp.get_context("forkserver").set_forkserver_preload(["torch", "labelsmooth", __name__])
    context = mp.start_processes(
        _worker, args=(world, str(folder)), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"world size {world}: workers still running after {SPAWN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    reports = [(folder / f"rank{r}.txt").read_text().split("\n", 1) for r in range(world)]
    return [(int(count), failures) for count, failures in reports]


@pytest.mark.parametrize("world", sorted(SHARDS))
def test_vocab_parallel_matches_single_device(world, tmp_path):
    reports = _spawn(world, tmp_path)
    failures = "\n".join(text for _, text in reports if text.strip())
    assert not failures, failures
    expected = len(_worker_jobs(world))
    assert [count for count, _ in reports] == [expected] * world


# ----------------------------------------------------------------------------------------------
# In-process tests (torch.distributed not initialised: a single rank)


def test_single_process_is_one_rank():
    assert not dist.is_initialized()
    for index in range(0, len(CASES), 7):
        _run_case(_make_case(index, 6), [6], 0)


def test_megatron_formula_agrees_for_one_rank():
    _check_naive_differs(0, 1, [9])


def test_linear_single_process():
    for index in range(len(VARIANTS)):
        _check_linear(0, [7], index)


def test_gradcheck():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0, 4], [-100, 2], [3, 3]])
    weight = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    prior = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4], dtype=torch.float64)
    for style, reduction, extra in [
        ("uniform", "none", {"prior": prior, "weight": weight}),
        ("others", "mean", {"weight": weight}),
        ("uniform", "sum", {}),
    ]:

        def fn(x, style=style, reduction=reduction, extra=extra):
            return lsd.vocab_parallel_cross_entropy(
                x, target, 0.2, style=style, reduction=reduction, return_nll=True, **extra
            )

        assert torch.autograd.gradcheck(fn, (logits,))


def test_low_precision_accumulates_in_float32():
    g = torch.Generator().manual_seed(4)
    logits = (4 * torch.randn(8, 50, generator=g)).to(torch.bfloat16)
    target = torch.randint(0, 50, (8,), generator=g)
    got = lsd.vocab_parallel_cross_entropy(logits, target, 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ls.cross_entropy(logits, target, 0.1))
    none = lsd.vocab_parallel_cross_entropy(logits, target, 0.1, reduction="none")
    assert none.dtype == torch.bfloat16


def test_large_and_infinite_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [2.0, -torch.inf, 1.0]], requires_grad=True)
    target = torch.tensor([1, 0])
    loss = lsd.vocab_parallel_cross_entropy(logits, target, 0.1, reduction="none")
    ref = ls.cross_entropy(logits.detach(), target, 0.1, reduction="none")
    torch.testing.assert_close(loss, ref)
    assert torch.isinf(loss[1])  # smoothing puts mass on the -inf class, as in PyTorch
    loss[0].backward()
    assert torch.isfinite(logits.grad).all()
    logits.grad = None
    lsd.vocab_parallel_cross_entropy(logits, target, 0.1, reduction="none")[1].backward()
    assert torch.isfinite(logits.grad).all()


def test_all_ignored_mean_is_zero_with_zero_gradient():
    logits = torch.randn(3, 4, requires_grad=True)
    loss, nll = lsd.vocab_parallel_cross_entropy(
        logits, torch.full((3,), -100), 0.1, weight=torch.rand(4), return_nll=True
    )
    (loss + nll).backward()
    assert loss.item() == 0 and nll.item() == 0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_double_backward_is_refused():
    # create_graph=True raises at once: a gradient without a graph would make a gradient
    # penalty silently vanish (the penalty's backward would add nothing).
    logits = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    loss = lsd.vocab_parallel_cross_entropy(logits, torch.tensor([0, 2]), 0.1)
    with pytest.raises(RuntimeError, match="first-order only.*impl='torch'"):
        torch.autograd.grad(loss, logits, create_graph=True)
    hidden = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    loss = lsd.vocab_parallel_linear_cross_entropy(hidden, proj, torch.tensor([0, 2]), 0.1)
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(loss, proj, create_graph=True)
    # First-order gradients are unaffected, also with retain_graph=True.
    loss = lsd.vocab_parallel_linear_cross_entropy(hidden, proj, torch.tensor([0, 2]), 0.1)
    first = torch.autograd.grad(loss, (hidden, proj), retain_graph=True)
    second = torch.autograd.grad(loss, (hidden, proj))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_single_process_runs_no_collective(monkeypatch):
    """Without a process group the checks and the loss call no collective at all."""

    def refuse(*args, **kwargs):
        raise AssertionError("a collective was called without a process group")

    for name in ("all_gather", "all_reduce", "all_gather_object", "broadcast", "barrier"):
        monkeypatch.setattr(dist, name, refuse)
    logits = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, 2])
    lsd.vocab_parallel_cross_entropy(logits, target, 0.1, return_nll=True)[0].backward()
    hidden = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    lsd.vocab_parallel_linear_cross_entropy(hidden, proj, target, 0.1).backward()
    with pytest.raises(ValueError, match="style must be one of"):
        lsd.vocab_parallel_cross_entropy(logits, target, 0.1, style="x")


def test_error_message_round_trip():
    """The message a rejecting rank sends through the check vector: UTF-8, cut with '...'."""
    assert lsd._decode_message(lsd._encode_message("eps must be finite, got eps=nan")) == (
        "eps must be finite, got eps=nan"
    )
    long = "prior ≥ 0 " * 100
    text = lsd._decode_message(lsd._encode_message(long))
    assert text.endswith("...") and long.startswith(text[:-3]) and len(text.encode()) <= 512


X = torch.randn(4, 5)
Y = torch.tensor([0, 1, 4, 2])
ERRORS = [
    (
        {"style": "fairseq"},
        ValueError,
        r"style must be one of 'uniform', 'others', got style='fairseq'",
    ),
    ({"reduction": "avg"}, ValueError, r"reduction must be one of .*got reduction='avg'"),
    (
        {"eps": 1.5},
        ValueError,
        r"eps must be <= 1 for style='uniform' with num_classes=5, got eps=1.5",
    ),
    ({"eps": 0.81, "style": "others"}, ValueError, r"eps must be <= 0.8 .*num_classes=5"),
    ({"eps": "0.1"}, TypeError, r"eps must be a real number"),
    ({"eps": float("nan")}, ValueError, r"eps must be finite"),
    ({"input": X.long()}, TypeError, r"local_logits must be a floating-point tensor.*int64"),
    ({"input": [1.0]}, TypeError, r"local_logits must be a torch.Tensor, got list"),
    ({"input": torch.tensor(1.0)}, ValueError, r"local_logits must have a last \(class\) dim"),
    ({"target": Y.float()}, TypeError, r"target must hold integer class indices.*float32"),
    ({"target": Y.bool()}, TypeError, r"target must hold integer class indices.*bool"),
    ({"target": [0, 1]}, TypeError, r"target must be a torch.Tensor, got list"),
    ({"target": Y[:3]}, ValueError, r"target must have shape \(4,\) .*got shape \(3,\)"),
    ({"target": torch.tensor([0, 1, 5, 2])}, ValueError, r"class index 5.*\[0, 4\]"),
    ({"target": torch.tensor([0, -1, 4, 2])}, ValueError, r"class index -1.*ignore_index=-100"),
    (
        {"weight": torch.ones(4)},
        ValueError,
        r"weight must be this rank's shard of shape \(5,\).*\(4,\)",
    ),
    ({"prior": torch.ones(6) / 6}, ValueError, r"prior must be this rank's shard of shape \(5,\)"),
    ({"prior": torch.ones(5) / 5, "style": "others"}, ValueError, r"needs style='uniform'"),
    ({"prior": torch.ones(5)}, ValueError, r"prior must sum to 1 .*got sum=5"),
    (
        {"prior": torch.tensor([-0.5, 0.5, 0.5, 0.5, 0.0])},
        ValueError,
        r"prior must be finite and >= 0",
    ),
    ({"ignore_index": 1.5}, TypeError, r"ignore_index must be an int, got ignore_index=1.5"),
    ({"return_nll": 1}, TypeError, r"return_nll must be a bool, got return_nll=1"),
    ({"validate": "yes"}, TypeError, r"validate must be a bool"),
    ({"group": object()}, RuntimeError, r"torch.distributed is not initialised"),
    ({"exclude_classes": [5]}, ValueError, r"exclude_classes must hold class indices in \[0, 4\]"),
    ({"exclude_classes": [-1]}, ValueError, r"exclude_classes must hold class indices >= 0"),
    (
        {"exclude_classes": [Y[0].item()], "style": "others"},
        ValueError,
        r"target contains class .* which is in exclude_classes",
    ),
    (
        {"exclude_classes": [0, 1, 2], "prior": torch.tensor([0.5, 0.25, 0.25, 0.0, 0.0])},
        ValueError,
        r"prior must put some mass on the classes not in exclude_classes",
    ),
    ({"weight_mode": "per-class"}, ValueError, r"weight_mode must be one of 'pytorch', 'sample'"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), ERRORS)
def test_argument_errors(kwargs, error, match):
    kwargs = dict(kwargs)
    logits, target = kwargs.pop("input", X), kwargs.pop("target", Y)
    with pytest.raises(error, match=match):
        lsd.vocab_parallel_cross_entropy(logits, target, kwargs.pop("eps", 0.1), **kwargs)


LINEAR_ERRORS = [
    ({"hidden": torch.randn(4, 3).long()}, TypeError, r"hidden must be a floating-point"),
    (
        {"local_weight": torch.randn(5, 2)},
        ValueError,
        r"local_weight must have shape \(V_local, 3\).*\(5, 2\)",
    ),
    (
        {"local_weight": torch.randn(5, 3).double()},
        TypeError,
        r"local_weight must have the dtype of hidden",
    ),
    ({"local_bias": torch.randn(4)}, ValueError, r"local_bias must have shape \(5,\).*\(4,\)"),
    ({"target": Y[:2]}, ValueError, r"target must have shape \(4,\) \(hidden without"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), LINEAR_ERRORS)
def test_linear_argument_errors(kwargs, error, match):
    args = {"hidden": torch.randn(4, 3), "local_weight": torch.randn(5, 3), "target": Y}
    args.update(kwargs)
    bias = args.pop("local_bias", None)
    with pytest.raises(error, match=match):
        lsd.vocab_parallel_linear_cross_entropy(**args, local_bias=bias)


def test_validate_false_skips_the_index_check():
    target = torch.tensor([0, 1, 4, 2])
    loss = lsd.vocab_parallel_cross_entropy(X, target, 0.1, validate=False)
    torch.testing.assert_close(loss, ls.cross_entropy(X, target, 0.1))


def test_docstring_examples():
    result = doctest.testmod(lsd, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_example_single_process(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert exit_info.value.code == 0
    assert "match" in capsys.readouterr().out


@pytest.mark.slow
def test_example_with_torchrun():
    torchrun = Path(sys.executable).with_name("torchrun")
    command = (
        [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--standalone", "--nproc-per-node", "2", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "match" in result.stdout


def test_linear_exclude_classes_and_sample_weights_single_process():
    g = torch.Generator().manual_seed(12)
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(7, generator=g, dtype=torch.float64) + 0.2
    target = torch.tensor([1, 2, 0, 3, 6, 0])
    options = dict(
        style="others", weight=weight, weight_mode="sample", exclude_classes=[0],
        ignore_index=0,
    )  # fmt: skip
    loss = lsd.vocab_parallel_linear_cross_entropy(hidden, proj, target, 0.2, **options)
    got = torch.autograd.grad(loss, (hidden, proj))
    ref = ls.cross_entropy(hidden @ proj.T, target, 0.2, impl="reference", **options)
    want = torch.autograd.grad(ref, (hidden, proj))
    torch.testing.assert_close(loss, ref)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
