"""``labelsmooth study``: load the data, lock the folder, plan the runs, run what is missing,
write the report."""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist

from . import exp_sequence
from .config import ConfigError, StudyConfig, check_config
from .data import Split
from .experiments import Plan, Run, split_sizes
from .models import MLP
from .parallel import init_from_environment
from .prepare import prepare_data
from .registry import plan
from .report import render_report
from .runner import (
    ResultStore,
    StudyFolder,
    clock,
    default_workers,
    execute_plan,
)
from .train import TrainConfig, train_classifier

# What the profiles promise on 2 CPU cores; a study estimated at more than twice this warns.
PROFILE_MINUTES = {"full": 5.0, "quick": 2.0}


def _seconds_per_example_epoch(data: Split, config: StudyConfig) -> float:
    """Times one training epoch of the main model on (up to 1024 of) the training examples."""
    count = min(len(data.x_train), 1024)
    x = data.x_train[:count].to(config.device)
    y = torch.zeros(count, dtype=torch.long, device=config.device)
    if not data.multilabel:
        y = data.y_train[:count].to(config.device)
    model = MLP(data.num_features, max(data.num_classes, 2), config.width, config.depth)
    model = model.to(config.device)

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, target)

    train_config = TrainConfig(epochs=1, batch_size=config.batch_size, lr=config.lr)
    train_classifier(model, loss_fn, x, y, train_config)  # warm-up
    start = time.perf_counter()
    train_classifier(model, loss_fn, x, y, train_config)
    return (time.perf_counter() - start) / count


def estimate_seconds(runs: list[Run], data: Split, config: StudyConfig, workers: int) -> float:
    """Wall-clock estimate for ``runs``: their examples x epochs at the measured speed, plus
    a fifth for validation, measurement and process start-up, shared among ``workers``."""
    if not runs:
        return 0.0
    per_unit = _seconds_per_example_epoch(data, config)
    return 1.2 * per_unit * sum(run.cost for run in runs) / max(1, min(workers, len(runs)))


def _warn_if_long(
    seconds: float,
    data: Split,
    config: StudyConfig,
    profile: str,
    count: int,
    workers: int,
    stream: TextIO,
) -> None:
    promised = PROFILE_MINUTES[profile] * 60
    stream.write(
        f"labelsmooth study: {count} runs to train on {workers} worker"
        f"{'s' * (workers != 1)}, estimated {clock(seconds)} (min:s)\n"
    )
    if seconds > 2 * promised:
        fraction = promised / seconds
        suggestion = max(200, int(len(data.x_train) * fraction) // 100 * 100)
        stream.write(
            f"labelsmooth study: warning: that is far longer than the ~{PROFILE_MINUTES[profile]:g}"
            f" min of the {profile} profile ({len(data.x_train)} training examples); "
            f"--max-train {suggestion} would take about {clock(seconds * fraction)}\n"
        )
    stream.flush()


def run_study(
    config: StudyConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
    profile: str = "full",
) -> dict[str, Any]:
    """Runs (or resumes) the study described by ``config`` in ``out_dir`` and renders its report.

    ``out_dir`` holds one configuration: a different one raises :class:`ConfigError` naming
    what differs, and a folder another study is using raises
    :class:`~labelsmooth.study.runner.FolderInUseError`. Under ``torchrun`` every rank trains
    (data-parallel) and only rank 0 writes to ``out_dir``; the other ranks return a summary
    without report paths.

    Raises :class:`~labelsmooth.study.data.DatasetError` or :class:`ConfigError` for bad input,
    before any training.
    """
    stream = stream if stream is not None else sys.stderr
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} requested but CUDA is not available")
    world = init_from_environment(config.device)
    if world.device != config.device:
        config = dataclasses.replace(config, device=world.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    data, data_hash = prepare_data(config)
    if "sequence" in config.experiments:  # the text's contents are data too (ConfigError if bad)
        data_hash = f"{data_hash}+text:{exp_sequence.corpus_fingerprint(config)}"
    check_config(config, None if data.multilabel else data.num_classes)
    study_plan: Plan = plan(data, config)
    if not study_plan.runs:
        raise ConfigError(
            f"nothing to run: {data.name} supports none of the experiments "
            f"{', '.join(config.experiments)}"
        )
    sizes = split_sizes(data, config) if not data.multilabel else {}
    info = {
        "dataset": data.name,
        "num_classes": data.num_classes,
        "class_names": list(data.class_names),
        "multilabel": data.multilabel,
        "planned_runs": len(study_plan.runs),
        "notes": study_plan.notes,
        "settings": study_plan.settings,
        "profile": profile,
        **sizes,
    }
    workers = config.workers or default_workers()
    if world.size > 1:
        workers = 1  # every rank trains every run together (data-parallel)
    folder = StudyFolder(out_dir, config, data_hash, info) if world.is_main else None
    summary: dict[str, Any] = {}
    with folder if folder is not None else contextlib.nullcontext():
        store = ResultStore(out_dir, writable=world.is_main)
        if world.size > 1:
            dist.barrier()  # every rank has read results.jsonl before rank 0 appends to it
        pending = [run for run in study_plan.runs if run.key not in store]
        if pending and world.is_main and not quiet:
            seconds = estimate_seconds(pending, data, config, workers)
            _warn_if_long(seconds, data, config, profile, len(pending), workers, stream)
        computed = execute_plan(
            study_plan.runs,
            store,
            config,
            fingerprint=folder.fingerprint if folder is not None else "",
            quiet=quiet or not world.is_main,
            stream=stream,
            workers=workers,
            backend=config.backend if world.size == 1 else "local",
        )
        if world.is_main:
            summary = render_report(out_dir)
    summary.update(
        {
            "total_runs": len(study_plan.runs),
            "computed": computed,
            "dataset": data.name,
            "rank": world.rank,
            "world_size": world.size,
            "workers": workers,
        }
    )
    return summary
