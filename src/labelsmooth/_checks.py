"""Argument checks shared by every public function: the one source of truth for what is allowed.

Each check raises before any work is done, with a message that names the argument, the value
that was given and what is allowed: ``ValueError`` for values, ``TypeError`` for dtypes and
types. Targets (``targets.py``), losses (``functional.py``) and modules (``nn.py``) all call
these functions rather than testing arguments themselves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import numpy as np
import torch
from torch import Tensor

STYLES = ("uniform", "others")
REDUCTIONS = ("none", "mean", "sum")

# Relative slack on the upper bounds of eps, so that eps=(K-1)/K typed as a float passes.
_BOUND_SLACK = 1e-12
# How far sum(prior) may be from 1.
_PRIOR_SUM_TOL = 1e-4


def check_choice(name: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` must be one of the strings in ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name} must be one of {choices}, got {name}={value!r}")
    return value


def check_style(style: object) -> str:
    return check_choice("style", style, STYLES)


def check_reduction(reduction: object) -> str:
    return check_choice("reduction", reduction, REDUCTIONS)


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {name}={value!r}")
    return value


def check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {name}={value!r}")
    return int(value)


def eps_upper_bound(num_classes: int, style: str) -> float:
    """Largest eps for which the smoothed target is still a distribution with mass on y."""
    if style == "uniform":
        return 1.0
    return (num_classes - 1) / num_classes


def check_eps(
    eps: object,
    num_classes: int | None,
    style: str,
    *,
    kl: bool = False,
    binary: bool = False,
) -> float:
    """Checks the smoothing rate and returns it as a Python float.

    Ranges (DESIGN.md): ``"uniform"`` eps <= 1; ``"others"`` eps <= (K-1)/K (binary: 0.5).
    Negative eps (generalised label smoothing) is allowed except with ``kl=True``, where the
    target must be a distribution for its entropy to exist. ``num_classes=None`` checks only
    what does not depend on K (used by modules before they have seen the logits).
    """
    if isinstance(eps, Tensor):
        if eps.numel() != 1:
            raise ValueError(f"eps must be a number, got a tensor of shape {tuple(eps.shape)}")
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, Real):
        raise TypeError(f"eps must be a real number, got eps={eps!r}")
    eps = float(eps)
    if not math.isfinite(eps):
        raise ValueError(f"eps must be finite, got eps={eps}")
    what = "binary targets" if binary else f"num_classes={num_classes}"
    if kl and eps < 0:
        raise ValueError(
            f"eps must be >= 0 with kl=True (the smoothed target must be a distribution), "
            f"got eps={eps}"
        )
    bound = 1.0 if num_classes is None else eps_upper_bound(num_classes, style)
    if eps > bound * (1 + _BOUND_SLACK) + _BOUND_SLACK:
        raise ValueError(
            f"eps must be <= {bound:.6g} for style={style!r} with {what}, got eps={eps}"
        )
    if style == "others" and num_classes is not None and num_classes < 2 and eps != 0:
        raise ValueError(
            f"style='others' spreads eps over the K-1 other classes and needs num_classes >= 2, "
            f"got num_classes={num_classes} with eps={eps}"
        )
    return eps


def check_logits(input: object, name: str = "input") -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of logits, got dtype={input.dtype}"
        )
    return input


def as_float_vector(
    name: str,
    value: object,
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """A length-``num_classes`` floating vector (tensor, numpy array or sequence)."""
    if isinstance(value, Tensor):
        tensor = value
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a 1-D tensor of floats, got {value!r}") from err
    if not (tensor.is_floating_point() or tensor.dtype in _INTEGER_DTYPES):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype={tensor.dtype}")
    if tensor.shape != (num_classes,):
        raise ValueError(
            f"{name} must have shape ({num_classes},) (one entry per class), "
            f"got shape {tuple(tensor.shape)}"
        )
    return tensor.to(device=device, dtype=dtype)


def check_prior(
    prior: object,
    num_classes: int,
    style: str,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:
    """``prior`` must be a length-K distribution and is only defined for ``style="uniform"``."""
    if prior is None:
        return None
    if style != "uniform":
        raise ValueError(
            f"prior= replaces the uniform eps/K and needs style='uniform', got style={style!r}"
        )
    tensor = as_float_vector("prior", prior, num_classes, device, torch.float64)
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(f"prior must be finite and >= 0, got prior={_short(tensor)}")
    total = float(tensor.sum())
    if abs(total - 1.0) > _PRIOR_SUM_TOL:
        raise ValueError(f"prior must sum to 1 (a distribution over classes), got sum={total:.6g}")
    return tensor.to(dtype)


def check_weight(
    weight: object,
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype,
    name: str = "weight",
) -> Tensor | None:
    if weight is None:
        return None
    return as_float_vector(name, weight, num_classes, device, dtype)


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Every entry of ``target`` is a class index in [0, K) or ``ignore_index`` (host sync)."""
    if target.numel() == 0:
        return
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid |= target == ignore_index
    if not bool(valid.all()):
        bad = int(target[~valid].flatten()[0])
        allowed = f"[0, {num_classes - 1}] (num_classes={num_classes})"
        if ignore_index is not None:
            allowed += f" or equal ignore_index={ignore_index}"
        raise ValueError(
            f"target contains class index {bad}, but class indices must be in {allowed}"
        )


def check_unit_interval(name: str, tensor: Tensor) -> None:
    """Binary targets must lie in [0, 1] (host sync)."""
    if tensor.numel() == 0:
        return
    outside = ~((tensor >= 0) & (tensor <= 1))  # NaN counts as outside
    if bool(outside.any()):
        bad = float(tensor[outside].flatten()[0])
        raise ValueError(f"{name} must lie in [0, 1], got a value of {bad}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation for every floating dtype except float64, which stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _short(tensor: Tensor) -> str:
    values = tensor.flatten().tolist()
    text = ", ".join(f"{v:.4g}" for v in values[:6])
    return f"[{text}{', ...' if len(values) > 6 else ''}]"


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
