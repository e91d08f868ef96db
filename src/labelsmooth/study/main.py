"""``labelsmooth study``: load the data, plan the runs, run what is missing, write the report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist

from .config import ConfigError, StudyConfig, check_config
from .data import load_dataset
from .experiments import plan
from .parallel import init_from_environment
from .report import render_report
from .runner import ResultStore, execute_plan


def run_study(
    config: StudyConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) the study described by ``config`` and renders its report.

    Under ``torchrun`` every rank trains (data-parallel) and only rank 0 writes to ``out_dir``;
    the other ranks return a summary without report paths.

    Raises :class:`~labelsmooth.study.data.DatasetError` or :class:`ConfigError` for bad input,
    before any training.
    """
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {config.device!r} requested but CUDA is not available")
    world = init_from_environment(config.device)
    if world.device != config.device:
        config = dataclasses.replace(config, device=world.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    data = load_dataset(config.dataset, seed=0)
    if config.max_train and len(data.x_train) > config.max_train:
        data = data.subset_train(config.max_train, seed=0)
    check_config(config, None if data.multilabel else data.num_classes)
    if not data.multilabel and max(config.projection_classes) >= data.num_classes:
        raise ConfigError(
            f"projection_classes {config.projection_classes} must be classes of the data set "
            f"(0..{data.num_classes - 1})"
        )
    runs = plan(data, config)
    store = ResultStore(out_dir, writable=world.is_main)
    if world.size > 1:
        dist.barrier()  # every rank has read results.jsonl before rank 0 appends to it
    computed = execute_plan(runs, store, config, quiet=quiet or not world.is_main, stream=stream)
    summary: dict[str, Any] = {}
    if world.is_main:
        summary = render_report(out_dir)
    summary.update(
        {
            "runs": len(runs),
            "computed": computed,
            "dataset": data.name,
            "rank": world.rank,
            "world_size": world.size,
        }
    )
    return summary
