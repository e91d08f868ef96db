"""Streaming metrics (labelsmooth.streaming) against the functions on the concatenated data.

In one process, and across 2 gloo processes (file:// rendezvous, forkserver, a timeout; the
workers never raise, they write their failures to a file, as in tests/test_distributed.py).
"""

from __future__ import annotations

import datetime
import doctest
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from labelsmooth import metrics, streaming
from labelsmooth.streaming import (
    AURC,
    BrierScore,
    CalibrationError,
    ClasswiseCalibrationError,
    NegativeLogLikelihood,
    TemperatureFit,
)

SPAWN_TIMEOUT_S = 180
K = 5
IGNORE = -100


def _batches(seed: int, sizes=(17, 1, 30, 8), k=K, ignore=True):
    """Batches of (logits, labels) with some labels = IGNORE (one batch all ignored)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(sizes):
        logits = 2.5 * torch.randn(n, k, generator=g, dtype=torch.float64)
        labels = torch.randint(0, k, (n,), generator=g)
        if ignore:
            labels[:: 3 + i] = IGNORE
            if n == 1:
                labels[:] = IGNORE
        out.append((logits, labels))
    return out


def _kept(batches):
    logits = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    keep = labels != IGNORE
    return logits[keep], labels[keep]


# (factory, functional reference on kept (probs, logits, labels), tolerance; 0 = exact)
CASES = {
    "ece-uniform": (
        lambda **kw: CalibrationError(7, **kw),
        lambda p, z, y: metrics.expected_calibration_error(p, y, 7),
        1e-12,
    ),
    "ece-quantile": (
        lambda **kw: CalibrationError(6, "quantile", **kw),
        lambda p, z, y: metrics.expected_calibration_error(p, y, 6, "quantile"),
        0,
    ),
    "mce": (
        lambda **kw: CalibrationError(7, norm="max", **kw),
        lambda p, z, y: metrics.maximum_calibration_error(p, y, 7),
        1e-12,
    ),
    "rms-quantile": (
        lambda **kw: CalibrationError(4, "quantile", "l2", **kw),
        lambda p, z, y: (
            metrics.reliability_curve(p, y, 4, "quantile").root_mean_square_calibration_error
        ),
        0,
    ),
    "classwise-uniform": (
        lambda **kw: ClasswiseCalibrationError(6, **kw),
        lambda p, z, y: metrics.classwise_calibration_error(p, y, 6),
        1e-12,
    ),
    "classwise-quantile": (
        lambda **kw: ClasswiseCalibrationError(3, "quantile", **kw),
        lambda p, z, y: metrics.classwise_calibration_error(p, y, 3, "quantile"),
        0,
    ),
    "brier": (lambda **kw: BrierScore(**kw), lambda p, z, y: metrics.brier_score(p, y), 1e-12),
    "nll": (
        lambda **kw: NegativeLogLikelihood(**kw),
        lambda p, z, y: metrics.negative_log_likelihood(p, y),
        1e-12,
    ),
    "aurc": (lambda **kw: AURC(**kw), lambda p, z, y: metrics.aurc(p, y), 0),
    "excess-aurc": (
        lambda **kw: AURC(excess=True, **kw),
        lambda p, z, y: metrics.excess_aurc(p, y),
        0,
    ),
}


def _check_case(name: str, batches, rank: int = 0, world: int = 1, from_logits=False) -> None:
    """The streaming metric on this rank's share of ``batches`` == the function on all."""
    factory, reference, tol = CASES[name]
    metric = factory(ignore_index=IGNORE, from_logits=from_logits)
    for logits, labels in batches[rank::world]:
        metric.update(logits if from_logits else logits.softmax(dim=1), labels)
    ordered = [b for r in range(world) for b in batches[r::world]]
    logits, labels = _kept(ordered)
    expected = reference(logits.softmax(dim=1), logits, labels)
    got = metric.compute()
    if tol == 0:
        assert got == expected, (name, got, expected)
    else:
        assert abs(got - expected) <= tol * max(1.0, abs(expected)), (name, got, expected)


def _check_temperature(batches, rank: int = 0, world: int = 1) -> None:
    metric = TemperatureFit(ignore_index=IGNORE)
    for logits, labels in batches[rank::world]:
        metric.update(3 * logits, labels)
    ordered = [b for r in range(world) for b in batches[r::world]]
    logits, labels = _kept(ordered)
    expected = metrics.fit_temperature(3 * logits, labels)
    got = metric.compute()
    if world == 1:
        assert got == expected
    else:
        assert got == pytest.approx(expected, rel=1e-10), (got, expected)
    assert abs(got - 3.0) > 0.1  # a temperature was fitted, not a bound or 1.0


# ----------------------------------------------------------------------------------------------
# One process


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_single_process_equals_the_function(name, from_logits):
    _check_case(name, _batches(1), from_logits=from_logits)


def test_single_process_temperature_is_bit_identical():
    _check_temperature(_batches(2))


@pytest.mark.parametrize("name", sorted(CASES))
def test_reset_forgets_and_compute_leaves_the_state(name):
    factory, reference, _tol = CASES[name]
    metric = factory(ignore_index=IGNORE)
    first, second = _batches(3, sizes=(20, 25))
    metric.update(first[0].softmax(dim=1), first[1])
    before = metric.compute()
    assert metric.compute() == before  # compute() does not consume the state
    metric.reset()
    assert metric.num_samples == 0
    metric.update(second[0].softmax(dim=1), second[1])
    logits, labels = _kept([second])
    assert metric.compute() == pytest.approx(
        reference(logits.softmax(dim=1), logits, labels), abs=1e-12
    )


def test_sequence_inputs_are_flattened():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 7, K, generator=g, dtype=torch.float64)
    labels = torch.randint(0, K, (3, 7), generator=g)
    labels[:, -2:] = IGNORE
    metric = NegativeLogLikelihood(from_logits=True, ignore_index=IGNORE)
    metric.update(logits, labels)
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, K), labels.reshape(-1), ignore_index=IGNORE
    )
    assert metric.compute() == pytest.approx(float(expected), abs=1e-14)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 7\)"):
        metric.update(logits, labels[:, :-1])


def test_against_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    batches = _batches(5, sizes=(50, 70, 40), ignore=True)
    for norm in ("l1", "l2", "max"):
        ours = CalibrationError(10, norm=norm, ignore_index=IGNORE)
        theirs = tm.MulticlassCalibrationError(K, n_bins=10, norm=norm, ignore_index=IGNORE)
        for logits, labels in batches:
            ours.update(logits.softmax(dim=1), labels)
            theirs.update(logits.softmax(dim=1), labels)
        assert ours.compute() == pytest.approx(float(theirs.compute()), abs=1e-6)


def test_errors():
    metric = CalibrationError(ignore_index=IGNORE)
    with pytest.raises(ValueError, match="no sample to evaluate"):
        metric.compute()
    metric.update(torch.full((3, K), 1 / K), torch.full((3,), IGNORE))  # accepted
    with pytest.raises(ValueError, match="all 3 labels seen equal ignore_index=-100"):
        metric.compute()
    with pytest.raises(ValueError, match="ignore_index=-100"):
        _temperature_all_ignored()
    metric.update(torch.full((2, K), 1 / K), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 classes.*earlier batches had 5"):
        metric.update(torch.full((2, 3), 1 / 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class index 7"):
        metric.update(torch.full((2, K), 1 / K), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="not logits"):
        metric.update(torch.randn(2, K), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="norm"):
        CalibrationError(norm="l3")
    with pytest.raises(ValueError, match="binning"):
        ClasswiseCalibrationError(binning="equal")
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationError(0)
    with pytest.raises(TypeError, match="ignore_index"):
        BrierScore(ignore_index="pad")
    with pytest.raises(TypeError, match="from_logits"):
        AURC(from_logits=1)
    with pytest.raises(ValueError, match="bounds"):
        TemperatureFit(bounds=(2.0, 1.0))


def _temperature_all_ignored():
    metric = TemperatureFit(ignore_index=IGNORE)
    metric.update(torch.randn(4, K), torch.full((4,), IGNORE))
    metric.compute()


def test_compute_curve():
    batches = _batches(6)
    metric = CalibrationError(5, ignore_index=IGNORE)
    for logits, labels in batches:
        metric.update(logits.softmax(dim=1), labels)
    logits, labels = _kept(batches)
    curve = metrics.reliability_curve(logits.softmax(dim=1), labels, 5)
    got = metric.compute_curve()
    np.testing.assert_array_equal(got.counts, curve.counts)
    np.testing.assert_allclose(got.confidence, curve.confidence, rtol=1e-14)


def test_docstring_examples():
    result = doctest.testmod(streaming, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# ----------------------------------------------------------------------------------------------
# Two gloo processes


def _worker_jobs(world: int):
    jobs = [
        (
            f"{name} from_logits={fl}",
            lambda r, w, n=name, f=fl: _check_case(n, _batches(11), r, w, f),
        )
        for name in sorted(CASES)
        for fl in (False, True)
    ]
    jobs.append(("temperature", lambda r, w: _check_temperature(_batches(12), r, w)))
    # A rank with no batch at all (rank 1 gets none of a single batch).
    jobs.append(
        ("empty rank", lambda r, w: _check_case("ece-quantile", _batches(13, sizes=(25,)), r, w))
    )
    jobs.append(
        (
            "empty rank uniform",
            lambda r, w: _check_case("classwise-uniform", _batches(13, sizes=(25,)), r, w),
        )
    )
    jobs.append(
        ("empty rank temperature", lambda r, w: _check_temperature(_batches(14, sizes=(25,)), r, w))
    )
    jobs.append(("disagreeing classes", _disagreeing_classes))
    return jobs


def _disagreeing_classes(rank: int, world: int) -> None:
    metric = BrierScore()
    k = 3 + rank
    metric.update(torch.full((2, k), 1 / k, dtype=torch.float64), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"ranks disagree on the number of classes: \[3, 4\]"):
        metric.compute()


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
        for name, job in _worker_jobs(world):
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


def test_two_processes_equal_the_function_on_all_the_data(tmp_path):
    world = 2
    mp.get_context("forkserver").set_forkserver_preload(["torch", "labelsmooth", __name__])
    context = mp.start_processes(
        _worker, args=(world, str(tmp_path)), nprocs=world, join=False, start_method="forkserver"
    )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"workers still running after {SPAWN_TIMEOUT_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    reports = [(tmp_path / f"rank{r}.txt").read_text().split("\n", 1) for r in range(world)]
    failures = "\n".join(text for _, text in reports if text.strip())
    assert not failures, failures
    assert [int(count) for count, _ in reports] == [len(_worker_jobs(world))] * world
