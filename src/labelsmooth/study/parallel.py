"""Data-parallel training for the study under ``torchrun`` (DistributedDataParallel).

``torchrun --nproc-per-node N -m labelsmooth.cli study ...`` starts N processes; each joins the
process group (gloo on CPU, NCCL on CUDA), trains every run on its share of each mini-batch with
the gradients averaged by DDP, and only rank 0 writes results, arrays, figures and the report.
Each batch's loss is rescaled so that the averaged gradient is the gradient of the whole batch's
mean: the runs compute what a single process computes, up to the order of float additions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_world(device: str = "cpu") -> World:
    """The process group in force (a single process when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), device)
    return World(0, 1, device)


def init_from_environment(device: str) -> World:
    """Joins the process group that ``torchrun`` describes in the environment, if any.

    On CUDA each process takes the GPU of its ``LOCAL_RANK``.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return World(0, 1, device)
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    return World(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
