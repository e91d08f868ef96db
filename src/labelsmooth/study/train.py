"""Training loop shared by the demo and the study: mini-batch Adam, deterministic on CPU.

With validation data, the model is evaluated on it after every epoch and the kept model is the
best epoch under ``select`` (the study's checkpoint rule); the final epoch's weights are kept
beside it. A run whose weights or validation outputs stop being finite raises
:class:`TrainingDivergedError`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

LossFn = Callable[[Tensor, Tensor], Tensor]
# (validation logits, validation targets) -> (accuracy, nll)
ScoreFn = Callable[[Tensor, Tensor], tuple[float, float]]

SELECT_RULES = ("accuracy", "nll", "final")


class TrainingDivergedError(RuntimeError):
    """The loss, the weights or the outputs became non-finite during training."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0


@dataclass
class TrainResult:
    """What training kept.

    ``model`` holds the selected epoch's weights (the best validation epoch, or the last one
    for ``select="final"`` or without validation data); ``final_state`` the last epoch's
    weights; ``history`` one ``{"epoch", "accuracy", "nll"}`` per epoch on validation data.
    """

    model: nn.Module
    best_epoch: int
    epochs: int
    final_state: dict[str, Tensor]
    history: list[dict[str, float]] = field(default_factory=list)

    def final_model(self) -> nn.Module:
        """A copy of the model with the final epoch's weights."""
        final = copy.deepcopy(self.model)
        final.load_state_dict(self.final_state)
        final.eval()
        return final


def classification_score(logits: Tensor, target: Tensor) -> tuple[float, float]:
    """Accuracy and mean NLL of (N, K) logits against class indices."""
    logits = logits.double()
    accuracy = float((logits.argmax(-1) == target).double().mean())
    nll = float(nn.functional.cross_entropy(logits, target))
    return accuracy, nll


def multilabel_score(logits: Tensor, target: Tensor) -> tuple[float, float]:
    """Per-label accuracy at 0.5 and the mean binary cross-entropy."""
    logits = logits.double()
    accuracy = float(((logits > 0) == (target > 0.5)).double().mean())
    nll = float(nn.functional.binary_cross_entropy_with_logits(logits, target.double()))
    return accuracy, nll


def _better(candidate: tuple[float, float], best: tuple[float, float] | None, rule: str) -> bool:
    """Is (accuracy, nll) strictly better than ``best`` under ``rule``? Ties keep the earlier
    epoch; under "accuracy", equal accuracy is broken by the lower NLL."""
    if best is None:
        return True
    accuracy, nll = candidate
    if rule == "nll":
        return nll < best[1]
    if accuracy != best[0]:
        return accuracy > best[0]
    return nll < best[1]


def _finite_parameters(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train_classifier(
    model: nn.Module,
    loss_fn: LossFn,
    x_train: Tensor,
    y_train: Tensor,
    config: TrainConfig,
    *,
    validation: tuple[Tensor, Tensor] | None = None,
    select: str = "accuracy",
    score_fn: ScoreFn = classification_score,
    on_epoch_end: Callable[[int], None] | None = None,
) -> TrainResult:
    """Trains ``model`` in place on (x_train, y_train) with ``loss_fn(logits, target)``.

    With ``validation=(x_val, y_val)`` the model is scored by ``score_fn`` after every epoch
    and, unless ``select="final"``, the epoch with the best validation accuracy (ties: lower
    NLL, then the earlier epoch) or the lowest validation NLL (``select="nll"``) is loaded back
    into ``model`` at the end. Without validation the final epoch is kept.

    Under a process group of N > 1 ranks (``torchrun``), the model is wrapped in
    DistributedDataParallel and each rank takes every N-th example of each mini-batch (all
    ranks draw the same batch order from ``config.seed``). ``loss_fn`` must return the mean over
    its examples; the loss is rescaled by ``N * local / batch`` so that DDP's gradient average
    is the gradient of the whole batch's mean, as in a single process. A rank left without an
    example (a last batch smaller than N) contributes a zero gradient, so even that step equals
    the single process's. Every rank scores the
    whole validation set with identical weights, so all ranks keep the same epoch.

    ``on_epoch_end(epoch)`` is called after each epoch's updates, before validation (e.g. the
    ``epoch_end()`` of :class:`labelsmooth.variants.OnlineLabelSmoothing`, whose soft targets
    come from the previous epoch).

    Raises:
        TrainingDivergedError: a non-finite loss, weight or validation output.
        ValueError: ``select`` is not one of accuracy, nll, final.
    """
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {', '.join(SELECT_RULES)}, got {select!r}")
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    trained: nn.Module = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    count = len(x_train)
    history: list[dict[str, float]] = []
    best_score: tuple[float, float] | None = None
    best_state: dict[str, Tensor] | None = None
    best_epoch = config.epochs
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(count, generator=generator)
        finite = torch.ones((), dtype=torch.bool)
        for start in range(0, count, config.batch_size):
            batch = order[start : start + config.batch_size]
            local = batch[rank::world]
            optimiser.zero_grad(set_to_none=True)
            if len(local):
                loss = loss_fn(trained(x_train[local]), y_train[local])
                if world > 1:
                    loss = loss * (world * len(local) / len(batch))
            else:
                # a tail batch with fewer examples than ranks leaves this rank none: a zero loss
                # that still joins DDP's gradient average, so the step equals one process's
                loss = trained(x_train[local]).sum() * 0.0
            finite &= torch.isfinite(loss.detach()).cpu()
            loss.backward()
            optimiser.step()
        if not bool(finite) or not _finite_parameters(model):
            raise TrainingDivergedError(f"non-finite training loss or weights in epoch {epoch}")
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if validation is None:
            continue
        logits = predict_logits(model, validation[0])
        if not bool(torch.isfinite(logits).all()):
            raise TrainingDivergedError(f"non-finite validation logits in epoch {epoch}")
        accuracy, nll = score_fn(logits.cpu(), validation[1].to(logits.device).cpu())
        if not math.isfinite(nll):
            raise TrainingDivergedError(f"non-finite validation loss in epoch {epoch}")
        history.append({"epoch": epoch, "accuracy": accuracy, "nll": nll})
        if select != "final" and _better((accuracy, nll), best_score, select):
            best_score, best_epoch = (accuracy, nll), epoch
            best_state = copy.deepcopy(model.state_dict())
    final_state = copy.deepcopy(model.state_dict())
    if best_state is not None and best_epoch != config.epochs:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, config.epochs, final_state, history)


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return logits
