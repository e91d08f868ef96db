"""Training loop shared by the demo and the study: mini-batch Adam, deterministic on CPU."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


def train_classifier(
    model: nn.Module,
    loss_fn: LossFn,
    x_train: Tensor,
    y_train: Tensor,
    config: TrainConfig,
) -> nn.Module:
    """Trains ``model`` in place on (x_train, y_train) with ``loss_fn(logits, target)``.

    Under a process group of N > 1 ranks (``torchrun``), the model is wrapped in
    DistributedDataParallel and each rank takes every N-th example of each mini-batch (all
    ranks draw the same batch order from ``config.seed``). ``loss_fn`` must return the mean over
    its examples; the loss is rescaled by ``N * local / batch`` so that DDP's gradient average
    is the gradient of the whole batch's mean, as in a single process.
    """
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    count = len(x_train)
    for _ in range(config.epochs):
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < world:
                continue  # every rank needs an example; all ranks skip the same tail
            local = batch[rank::world]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(trained(x_train[local]), y_train[local])
            if world > 1:
                loss = loss * (world * len(local) / len(batch))
            loss.backward()
            optimiser.step()
    model.eval()
    return model


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
