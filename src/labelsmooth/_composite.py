"""The composite implementations of :func:`labelsmooth.cross_entropy`: plain torch through
autograd (``impl="reference"``, the oracle of the tests, and ``impl="torch"``, the closed form).

Below :mod:`labelsmooth.functional` and :mod:`labelsmooth.kernels`, both of which use them
(the fused kernels hand a call to the closed form when a class weight, a prior or probability
targets need a gradient too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._problem import CrossEntropyProblem
from .targets import smooth_labels

__all__ = ["closed_form", "reference"]


def _scale(coefficient: float | Tensor, values: Tensor) -> Tensor:
    """coefficient * values with 0 * inf := 0 (a zero-mass class contributes nothing)."""
    if isinstance(coefficient, Tensor):
        return torch.where(coefficient == 0, 0.0, coefficient * values)
    if coefficient == 0:
        return torch.zeros_like(values)
    return coefficient * values


def _scale_rows(coefficient: Tensor, values: Tensor) -> Tensor:
    """coefficient * values per row with 0 * inf := 0, differentiable in ``coefficient`` at 0
    too (the derivative is ``values`` where finite): for per-element rates of eps."""
    safe = torch.where((coefficient == 0) & ~torch.isfinite(values), 0.0, values)
    return coefficient * safe


def _dense_cross_entropy(
    log_probs: Tensor, target: Tensor, weight: Tensor | None, kl: bool
) -> Tensor:
    """Per row: sum_c w_c t_c (log t_c - log p_c) with kl, else -sum_c w_c t_c log p_c."""
    mass = target if weight is None else target * weight
    terms = _scale(mass, log_probs)
    if kl:
        entropy_terms = torch.xlogy(target, target)
        terms = terms - (entropy_terms if weight is None else entropy_terms * weight)
    return -terms.sum(-1)


def _capped_logits(problem: CrossEntropyProblem) -> Tensor:
    """Logits in compute dtype, soft-capped to ``softcap * tanh(logits / softcap)`` if asked."""
    logits = problem.logits.to(problem.compute_dtype)
    if problem.softcap is not None:
        logits = problem.softcap * torch.tanh(logits / problem.softcap)
    return logits


def _add_z_loss(loss: Tensor, logits: Tensor, problem: CrossEntropyProblem) -> Tensor:
    """loss + z_loss * logsumexp(logits)^2 (PaLM's auxiliary z-loss), per row."""
    if not problem.z_loss:
        return loss
    return loss + problem.z_loss * torch.logsumexp(logits, dim=-1).square()


def reference(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    """The oracle: builds the dense smoothed target and applies the definition literally."""
    logits = _capped_logits(problem)
    log_probs = F.log_softmax(logits, dim=-1)
    if problem.soft:
        plain = problem.target.to(problem.compute_dtype)
    else:
        plain = F.one_hot(problem.target, problem.num_classes).to(problem.compute_dtype)
    if problem.eps_rows is not None:
        # Per-element rates: onehot + eps_i (b1 + (alpha1 - 1) onehot), the unit-rate affine map.
        alpha1, offset1 = problem.coefficients()
        rates = problem.eps_rows[:, None]
        smoothed = plain + rates * (offset1 + (alpha1 - 1.0) * plain)
    else:
        smoothed = smooth_labels(
            plain,
            problem.num_classes,
            problem.eps,
            style=problem.style,
            prior=problem.prior,
            exclude_classes=problem.exclude,
        )
    loss = _dense_cross_entropy(log_probs, smoothed, problem.weight, problem.kl)
    nll = _dense_cross_entropy(log_probs, plain, problem.weight, False) if need_nll else None
    return _add_z_loss(loss, logits, problem), nll


def closed_form(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    r"""Hard labels without the dense target.

    With smoothed target alpha*onehot(y) + b (see :func:`smoothing_coefficients`):
    ``CE = alpha w_y nll_y + sum_c w_c b_c (-log p_c)`` and
    ``KL = CE + sum_c w_c xlogy(b_c) + w_y [xlogy(alpha + b_y) - xlogy(b_y)]``.
    Probability targets are dense already and take the reference route.
    """
    if problem.soft:
        return reference(problem, need_nll)
    logits = _capped_logits(problem)
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(1, problem.target.unsqueeze(1)).squeeze(1)
    weight = problem.weight
    if weight is not None:
        nll = _scale(weight[problem.target], nll)
    if problem.eps == 0:
        return _add_z_loss(nll, logits, problem), nll
    alpha, offset = problem.coefficients()
    rates = problem.eps_rows
    if rates is not None:
        # Per-element rates scale the unit-rate coefficients: alpha_i = 1 - eps_i (1 - alpha1),
        # b_i = eps_i b1 (see CrossEntropyProblem).
        alpha = 1.0 - rates * (1.0 - alpha)
        loss = _scale_rows(alpha, nll)
    else:
        loss = _scale(alpha, nll)
    smoothing = offset if weight is None else offset * weight
    if isinstance(smoothing, Tensor):
        # logp = -inf on a class of zero target mass must add 0, not 0 * -inf = nan.
        # (Always while tracing: the test would be a host sync.)
        if problem.traced or bool((smoothing == 0).any()):
            log_probs = torch.where(smoothing == 0, 0.0, log_probs)
        term = -(log_probs @ smoothing)
    else:
        term = -smoothing * log_probs.sum(-1)
    loss = loss + (term if rates is None else _scale_rows(rates, term))
    if problem.kl and rates is not None:
        dtype, device = problem.compute_dtype, log_probs.device
        off = rates[:, None] * torch.as_tensor(offset, dtype=dtype, device=device)
        off = off.expand(-1, problem.num_classes)
        entropy = torch.xlogy(off, off)
        off_y = off.gather(1, problem.target.unsqueeze(1)).squeeze(1)
        on_y = alpha + off_y
        on_minus_off = torch.xlogy(on_y, on_y) - torch.xlogy(off_y, off_y)
        if weight is not None:
            entropy = entropy * weight
            on_minus_off = on_minus_off * weight[problem.target]
        loss = loss + entropy.sum(-1) + on_minus_off
    elif problem.kl:
        dtype, device = problem.compute_dtype, log_probs.device
        off = torch.as_tensor(offset, dtype=dtype, device=device).expand(problem.num_classes)
        off_entropy = torch.xlogy(off, off)
        on_minus_off = torch.xlogy(alpha + off, alpha + off) - off_entropy
        if weight is not None:
            off_entropy = off_entropy * weight
            on_minus_off = on_minus_off * weight
        loss = loss + off_entropy.sum() + on_minus_off[problem.target]
    return _add_z_loss(loss, logits, problem), nll
