r"""Smoothing rates that change during training: eps as a function of the step.

A schedule is a callable ``schedule(step) -> eps`` (``step`` = 0, 1, 2, ... counted by you:
optimiser steps or epochs). The four here are small frozen dataclasses (picklable, printable,
comparable), and any function of the step works in their place:

* :func:`constant` — :math:`\epsilon(s) = \epsilon_0`;
* :func:`linear` — :math:`\epsilon(s) = \epsilon_0 + (\epsilon_1 - \epsilon_0)\min(s, S)/S`;
* :func:`cosine` — :math:`\epsilon(s) = \epsilon_1 + (\epsilon_0 - \epsilon_1)
  \tfrac12(1 + \cos(\pi \min(s, S)/S))` (the shape of ``CosineAnnealingLR``);
* :func:`piecewise` — ``values[i]`` from step ``boundaries[i-1]`` on (``MultiStepLR``'s shape
  with explicit values).

After ``steps`` the schedule holds its final value. :class:`EpsScheduler` applies one to a loss
module the way ``torch.optim.lr_scheduler`` applies a learning rate to an optimiser: it sets
``criterion.eps`` at construction and at every :meth:`EpsScheduler.step`. The losses take eps as
a plain Python float on every call, so a changing eps recompiles nothing (the fused kernels
receive it as a runtime argument, not a compile-time constant).

>>> import labelsmooth as ls
>>> schedule = ls.schedules.linear(0.2, 0.0, steps=4)
>>> [round(schedule(s), 3) for s in range(6)]
[0.2, 0.15, 0.1, 0.05, 0.0, 0.0]
>>> criterion = ls.nn.LabelSmoothingCrossEntropy()
>>> scheduler = ls.schedules.EpsScheduler(criterion, schedule)
>>> criterion.eps
0.2
>>> scheduler.step()
>>> round(criterion.eps, 6)
0.15
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _checks

__all__ = ["EpsScheduler", "constant", "cosine", "linear", "piecewise"]

Schedule = Callable[[int], float]


def _check_step(step: object) -> int:
    step = _checks.check_int("step", step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got step={step}")
    return step


def _check_steps(steps: object) -> int:
    steps = _checks.check_int("steps", steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got steps={steps}")
    return steps


@dataclass(frozen=True)
class constant:  # noqa: N801 - a schedule is used like a function: ls.schedules.constant(0.1)
    """eps(step) = ``eps`` at every step.

    >>> constant(0.1)(1000)
    0.1
    """

    eps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", _checks.check_real("eps", self.eps))

    def __call__(self, step: int) -> float:
        _check_step(step)
        return self.eps


@dataclass(frozen=True)
class _Ramp:
    """From ``start`` (step 0) to ``end`` (step ``steps``), then ``end``; the shape is the
    subclass's :meth:`shape` of the fraction of the way done."""

    start: float
    end: float
    steps: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _checks.check_real("start", self.start))
        object.__setattr__(self, "end", _checks.check_real("end", self.end))
        object.__setattr__(self, "steps", _check_steps(self.steps))

    @staticmethod
    def shape(fraction: float) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        fraction = min(_check_step(step), self.steps) / self.steps
        return self.start + (self.end - self.start) * self.shape(fraction)


@dataclass(frozen=True)
class linear(_Ramp):  # noqa: N801
    """eps goes linearly from ``start`` (step 0) to ``end`` (step ``steps``), then stays.

    >>> linear(0.0, 0.1, steps=10)(5)
    0.05
    """

    @staticmethod
    def shape(fraction: float) -> float:
        return fraction


@dataclass(frozen=True)
class cosine(_Ramp):  # noqa: N801
    """eps follows half a cosine from ``start`` (step 0) to ``end`` (step ``steps``), then stays.

    >>> round(cosine(0.2, 0.0, steps=10)(5), 6)
    0.1
    """

    @staticmethod
    def shape(fraction: float) -> float:
        return 0.5 * (1.0 - math.cos(math.pi * fraction))


@dataclass(frozen=True)
class piecewise:  # noqa: N801
    """``values[0]`` before ``boundaries[0]``, ``values[i]`` from step ``boundaries[i-1]`` on.

    ``len(values) == len(boundaries) + 1``; boundaries strictly increasing and positive.

    >>> schedule = piecewise([0.1, 0.05, 0.0], boundaries=[30, 60])
    >>> schedule(0), schedule(30), schedule(59), schedule(60)
    (0.1, 0.05, 0.05, 0.0)
    """

    values: Sequence[float]
    boundaries: Sequence[int]

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Sequence):
            raise TypeError(f"values must be a sequence of numbers, got values={self.values!r}")
        if isinstance(self.boundaries, (str, bytes)) or not isinstance(self.boundaries, Sequence):
            raise TypeError(
                f"boundaries must be a sequence of ints, got boundaries={self.boundaries!r}"
            )
        values = tuple(_checks.check_real("values", v) for v in self.values)
        boundaries = tuple(_checks.check_int("boundaries", b) for b in self.boundaries)
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"values must have one entry more than boundaries, got {len(values)} values "
                f"and {len(boundaries)} boundaries"
            )
        previous = 0
        for boundary in boundaries:
            if boundary <= previous:
                raise ValueError(
                    f"boundaries must be positive and strictly increasing, "
                    f"got boundaries={list(boundaries)}"
                )
            previous = boundary
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "boundaries", boundaries)

    def __call__(self, step: int) -> float:
        step = _check_step(step)
        index = sum(1 for boundary in self.boundaries if step >= boundary)
        return self.values[index]


class EpsScheduler:
    """Sets ``criterion.eps = schedule(step)``, like an LR scheduler sets an optimiser's rate.

    ``criterion`` is any object with an ``eps`` attribute (``ls.nn`` modules, the variants'
    modules that smooth). The value for step 0 is set at construction (``last_step=-1``, the
    default) and each :meth:`step` advances by one; call it once per optimiser step or per epoch,
    whichever your schedule counts. Each value is checked (a finite real number) before it is
    set; the loss checks its range for the logits' number of classes at the next call.
    :meth:`state_dict` / :meth:`load_state_dict` resume a run (the schedule itself is not saved:
    build it again, as with ``torch.optim.lr_scheduler``).

    >>> import labelsmooth as ls
    >>> criterion = ls.nn.LabelSmoothingCrossEntropy()
    >>> scheduler = EpsScheduler(criterion, piecewise([0.1, 0.0], boundaries=[2]))
    >>> for _ in range(3):
    ...     scheduler.step()
    >>> scheduler.last_step, criterion.eps
    (3, 0.0)
    """

    def __init__(self, criterion: Any, schedule: Schedule, *, last_step: int = -1) -> None:
        if not hasattr(criterion, "eps"):
            raise TypeError(
                f"criterion must have an eps attribute (a labelsmooth loss module), "
                f"got {type(criterion).__name__}"
            )
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (step -> eps), got {schedule!r}")
        last_step = _checks.check_int("last_step", last_step)
        if last_step < -1:
            raise ValueError(f"last_step must be >= -1, got last_step={last_step}")
        self.criterion = criterion
        self.schedule = schedule
        self.last_step = last_step
        self.step()

    def get_eps(self) -> float:
        """The rate for the current step (``last_step``), checked."""
        value = self.schedule(self.last_step)
        try:
            return _checks.check_real("eps", value)
        except (TypeError, ValueError) as error:
            raise type(error)(f"schedule({self.last_step}) returned {value!r}: {error}") from None

    def step(self) -> None:
        """Advances one step and sets ``criterion.eps``."""
        self.last_step += 1
        self.criterion.eps = self.get_eps()

    def state_dict(self) -> dict[str, int]:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if not isinstance(state_dict, Mapping):
            raise TypeError(
                f"state_dict must be a mapping (from state_dict()), got {type(state_dict).__name__}"
            )
        last_step = _checks.check_int("last_step", state_dict.get("last_step"))
        if last_step < 0:
            raise ValueError(f"last_step must be >= 0 in a saved state, got {last_step}")
        self.last_step = last_step
        self.criterion.eps = self.get_eps()

    def __repr__(self) -> str:
        return f"EpsScheduler(step={self.last_step}, eps={self.criterion.eps}, {self.schedule!r})"
