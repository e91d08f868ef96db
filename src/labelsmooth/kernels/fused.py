r"""Fused label-smoothed cross-entropy: the loss and its gradient in one forward pass.

The math (one row; the same for every backend — chunked torch, compiled C++, Triton)
------------------------------------------------------------------------------------

Logits :math:`x` (K classes) are optionally soft-capped, :math:`z = s \tanh(x / s)` (Gemma 2),
then :math:`\mathrm{lse} = \log \sum_c e^{z_c}` and :math:`p = \mathrm{softmax}(z)`. The
smoothed target is :math:`\tilde t = \alpha\,\mathrm{onehot}(y) + b` with
``(alpha, b) = smoothing_coefficients(eps, K, style, prior)`` (``b`` a number or, with
``prior``, a vector), and :math:`w` are the class weights (all 1 without ``weight``). Then

.. math::

    \mathrm{CE} &= \sum_c w_c \tilde t_c (\mathrm{lse} - z_c)
                 = \alpha w_y (\mathrm{lse} - z_y) + B\,\mathrm{lse} - \sum_c w_c b_c z_c,
                 \qquad B = \sum_c w_c b_c, \\
    \mathrm{KL} &= \mathrm{CE} + \sum_c w_c\,\mathrm{xlogy}(b_c, b_c)
                 + w_y [\mathrm{xlogy}(\alpha + b_y, \alpha + b_y) - \mathrm{xlogy}(b_y, b_y)], \\
    \mathrm{loss} &= \mathrm{CE\ or\ KL} + \lambda_z\,\mathrm{lse}^2 \quad\text{(z-loss, PaLM)},
    \qquad \mathrm{nll} = w_y (\mathrm{lse} - z_y).

For ``style="uniform"`` without weights ``b = eps/K`` and ``B = eps``, so the smoothing term is
:math:`\epsilon(\mathrm{lse} - \bar z)` with :math:`\bar z` the mean logit; ``"others"`` has
``b = eps/(K-1)``, ``alpha = 1 - eps K/(K-1)``; ``prior`` has ``b = eps * prior``. The gradient
with respect to the logits, computed in the same pass, is

.. math::

    \frac{\partial\,\mathrm{loss}}{\partial z_c} = (S + 2 \lambda_z \mathrm{lse})\, p_c
        - w_c b_c - \alpha w_y [c = y], \qquad S = \alpha w_y + B,

times :math:`\partial z_c / \partial x_c = 1 - (z_c / s)^2` with a soft-cap. A class of zero
target mass whose logit is :math:`-\infty` contributes 0 (never ``0 * inf``); one with mass
makes the loss :math:`+\infty` while the gradient stays finite (``p_c = 0``).

Per-element rates (``eps`` a tensor, :math:`\epsilon_i` per row): both styles are linear in
eps, so with the unit-rate coefficients ``(alpha1, b1) = smoothing_coefficients(1, ...)`` row
i has :math:`\alpha_i = 1 - \epsilon_i (1 - \alpha_1)` and :math:`b_i = \epsilon_i b_1`. The
per-row vectors :math:`\alpha_i w_y` and :math:`S_i` carry the first; the smoothing term of
the loss, :math:`\epsilon_i (B_1 \mathrm{lse} - \sum_c w_c b_{1,c} z_c)`, and the ``W``
coefficient of the gradient (:func:`grad_rows`) are scaled by :math:`\epsilon_i`, read per row
from ``RowPlan.rates`` (a pointer / tensor argument of every backend, so new rates never
recompile anything). With a scalar eps ``rates`` is ``None`` and nothing per row is added.

Memory contract
---------------

Forward allocates the gradient buffer (M, K) in the logits' dtype and per-row vectors of
length M; nothing else of size (M, K) is kept for backward (the chunked backend holds at most
one chunk of temporaries at a time). Backward multiplies the buffer, row by row, by the
per-row ``grad_output`` **in place** and returns it (the buffer is consumed; when autograd is
asked to keep the graph, ``retain_graph=True``, it multiplies a copy instead, so that a second
backward is still right). For ``reduction="mean"`` forward already writes the gradient times
the ``grad_output`` that ``loss.backward()`` delivers (1 / denominator), and for ``"sum"`` that
is 1; on CPU backward checks (one comparison of M numbers) and skips the pass over the buffer
when the incoming gradient is that one, which also rounds a bf16/fp16 gradient only once.

Any other incoming gradient (``reduction="none"``, ``loss * 0.3``, a loss that is one term of
a sum with other weights) multiplies the stored gradient, so a bf16/fp16 gradient is rounded
twice: the error is then up to about 1 ulp instead of 0.5 (measured on the C++ kernel: 0.54
ulp for the anticipated gradient, 1.0 ulp times 0.3). A power-of-two factor (``loss / 4`` for
gradient accumulation) is exact: the second rounding changes nothing. Rounding once under any
factor would need either a float32 copy of the gradient (twice its memory for bf16) or the
logits kept alive until backward, which is what this design avoids; float32 and float64
gradients are unaffected (the product is rounded once, in their own precision). The
recomputation for ``nll`` below does round once.

``nll`` (``return_nll=True``) is differentiable: when its gradient is not ``None`` backward
recomputes the combined gradient from the logits, which are therefore saved (a reference,
no copy) when ``return_nll=True``.

``inplace=True`` (the Liger-Kernel contract): the gradient buffer *is* the logits' storage,
so no (M, K) memory is allocated at all. After the call the logits hold the gradient (not yet
scaled by the incoming gradient), and the caller must not read them again. Their autograd
version counter is bumped, so if anything else saved them for its own backward (e.g. a
``tanh`` the caller applied before), autograd raises instead of computing a wrong gradient.
It only saves memory when the (M, K) row view of the input is contiguous (class dimension
last); otherwise the kernel works on a contiguous copy and the input is left alone. With
``inplace=True`` the gradient of ``nll`` cannot be recomputed (the logits are gone): backward
raises if one arrives — use ``nll.detach()`` for logging.

The fused paths are first-order only: backward with ``create_graph=True`` raises; use
``impl="torch"`` for double backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from .._composite import closed_form

if TYPE_CHECKING:
    from .._problem import CrossEntropyProblem

__all__ = [
    "CHUNK_ELEMENTS",
    "Backend",
    "RowPlan",
    "chunked",
    "fused_rows",
    "make_plan",
    "mean_denominator",
]

# The chunked backend processes ceil(CHUNK_ELEMENTS / K) rows at a time (at least one), so its
# temporaries are a few times CHUNK_ELEMENTS values whatever the batch size.
CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class RowPlan:
    """Everything a backend needs besides the logits, precomputed once per call.

    Per-row vectors have length M and are in ``dtype`` (the compute dtype); per-class vectors
    have length K. Hard targets fill ``target`` (ignored rows are -1), ``coef`` (alpha w_y),
    ``wy`` (w_y, the weight of nll), ``total`` (S = alpha w_y + B) and ``klc`` (the constant
    target entropy term of KL, or None). The smoothing mass per class is ``wb`` (w_c b_c) or,
    when it is the same for every class, the number ``b``; ``mass`` is the 0-dim tensor B.
    Probability targets fill ``soft`` (M, K) instead; ``alpha``, ``offset`` and ``weight``
    describe the smoothing.

    ``rates`` (M,) holds per-element eps (``eps`` a tensor) or is None. With rates, ``alpha``,
    ``offset``, ``b``, ``wb`` and ``mass`` are the unit-rate (eps = 1) values, the smoothing
    term of row i is scaled by ``rates[i]``, and ``coef``, ``total`` and ``klc`` already hold
    row i's own alpha_i w_y, S_i and KL constant (see the module docstring).
    """

    dtype: torch.dtype
    target: Tensor | None
    soft: Tensor | None
    coef: Tensor | None
    wy: Tensor | None
    total: Tensor | None
    klc: Tensor | None
    wb: Tensor | None
    b: float
    mass: Tensor
    alpha: float
    offset: float | Tensor
    weight: Tensor | None
    kl: bool
    z_loss: float
    softcap: float | None
    rates: Tensor | None = None


def mean_denominator(problem: CrossEntropyProblem) -> Tensor:
    """PyTorch's ``"mean"`` denominator for index targets: sum of w_y over non-ignored rows
    (``weight_mode="sample"``: of ``row_weight``)."""
    assert problem.valid is not None
    if problem.row_weight is not None:
        return torch.where(problem.valid, problem.row_weight, 0.0).sum()
    if problem.weight is not None:
        return torch.where(problem.valid, problem.weight[problem.target], 0.0).sum()
    return problem.valid.sum().to(problem.compute_dtype)


def _anticipated_scale(problem: CrossEntropyProblem) -> Tensor | None:
    """The per-row grad_output of ``loss.backward()`` on the reduced loss (None: 1).

    ``"mean"``: 1 / denominator (1 when the denominator is 0, all rows ignored), computed
    exactly as autograd computes it through ``_reduce``; ``"sum"`` and ``"none"``: 1.
    ``weight_mode="sample"`` (``row_weight``): ``"mean"`` and ``"sum"`` times w[y] per row, a
    zero w[y] taken as 1 (the row's gradient is 0 anyway: backward then rescales).
    """
    if problem.row_weight is not None and problem.reduction != "none":
        rows = torch.where(problem.row_weight == 0, 1.0, problem.row_weight)
        if problem.reduction == "sum":
            return rows.contiguous()
        one = torch.ones((), dtype=problem.compute_dtype, device=problem.logits.device)
        denominator = mean_denominator(problem)
        return (rows * (one / torch.where(denominator == 0, 1.0, denominator))).contiguous()
    if problem.reduction != "mean":
        return None
    one = torch.ones((), dtype=problem.compute_dtype, device=problem.logits.device)
    if problem.soft:
        count = problem.target.shape[0]
        return one / count if count else None
    denominator = mean_denominator(problem)
    return one / torch.where(denominator == 0, 1.0, denominator)


def make_plan(problem: CrossEntropyProblem) -> RowPlan:
    """Derives the per-row and per-class coefficients from :func:`smoothing_coefficients`."""
    dtype, device = problem.compute_dtype, problem.logits.device
    k = problem.num_classes
    alpha, offset = problem.coefficients()  # unit-rate (eps = 1) with per-element rates
    rates = problem.eps_rows
    if rates is not None:
        rates = rates.detach().contiguous()
    weight = problem.weight
    if isinstance(offset, Tensor) or weight is not None:
        wb = torch.as_tensor(offset, dtype=dtype, device=device).expand(k)
        wb = (wb * weight if weight is not None else wb).contiguous()
        b = 0.0
        mass = wb.sum()
    else:
        wb, b = None, float(offset)
        mass = torch.tensor(b * k, dtype=dtype, device=device)
    common = {
        "dtype": dtype,
        "wb": wb,
        "b": b,
        "mass": mass,
        "alpha": float(alpha),
        "offset": offset,
        "weight": weight,
        "kl": problem.kl,
        "z_loss": problem.z_loss,
        "softcap": problem.softcap,
        "rates": rates,
    }
    if problem.soft:
        return RowPlan(
            target=None, soft=problem.target, coef=None, wy=None, total=None, klc=None, **common
        )
    assert problem.valid is not None
    y = problem.target
    if weight is not None:
        wy = weight[y].contiguous()
    else:
        wy = torch.ones(y.shape, dtype=dtype, device=device)
    if rates is not None:
        return _rate_plan(problem, y, wy, rates, float(alpha), offset, mass, common)
    coef = alpha * wy
    klc = None
    if problem.kl:
        off = torch.as_tensor(offset, dtype=dtype, device=device).expand(k)
        off_entropy = torch.xlogy(off, off)
        on_minus_off = torch.xlogy(alpha + off, alpha + off) - off_entropy
        if weight is not None:
            off_entropy = off_entropy * weight
            on_minus_off = on_minus_off * weight
        klc = (off_entropy.sum() + on_minus_off[y]).contiguous()
    return RowPlan(
        target=torch.where(problem.valid, y, -1).contiguous(),
        soft=None,
        coef=coef,
        wy=wy,
        total=coef + mass,
        klc=klc,
        **common,
    )


def _rate_plan(
    problem: CrossEntropyProblem,
    y: Tensor,
    wy: Tensor,
    rates: Tensor,
    alpha: float,
    offset: float | Tensor,
    mass: Tensor,
    common: dict,
) -> RowPlan:
    """Index targets with per-element rates r: row i's alpha_i = 1 - r_i (1 - alpha1), mass
    B_i = r_i B1 and (KL) target entropy, all O(M); ``alpha``, ``offset`` and ``mass`` are the
    unit-rate values."""
    assert problem.valid is not None
    dtype, device, weight = problem.compute_dtype, problem.logits.device, problem.weight
    alpha_rows = 1.0 - rates * (1.0 - alpha)
    coef = (alpha_rows * wy).contiguous()
    klc = None
    if problem.kl:  # rates >= 0 with kl (checked)
        # sum_c w_c xlogy(r b1_c, r b1_c) = xlogy(r, r) B1 + r sum_c w_c xlogy(b1_c, b1_c)
        off = torch.as_tensor(offset, dtype=dtype, device=device).expand(problem.num_classes)
        unit_entropy = torch.xlogy(off, off)
        if weight is not None:
            unit_entropy = unit_entropy * weight
        entropy = torch.xlogy(rates, rates) * mass + rates * unit_entropy.sum()
        off_y = rates * off[y]
        on_y = alpha_rows + off_y
        on_minus_off = torch.xlogy(on_y, on_y) - torch.xlogy(off_y, off_y)
        klc = (entropy + wy * on_minus_off).contiguous()
    return RowPlan(
        target=torch.where(problem.valid, y, -1).contiguous(),
        soft=None,
        coef=coef,
        wy=wy,
        total=(coef + rates * mass).contiguous(),
        klc=klc,
        **common,
    )


def grad_rows(
    plan: RowPlan, g: Tensor | None, h: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    r"""Per-row coefficients ``(P, Y, W, Z)`` of the gradient a backend writes (hard targets).

    ``grad_c = d_c [(P + Z lse) p_c - W w_c b_c - Y [c = y]]`` with ``d_c`` the soft-cap
    derivative. Forward (``g = h = None``) writes the unscaled loss gradient: ``P = S``,
    ``Y = alpha w_y``, ``W = 1`` and ``Z = 2 z_loss`` (``None`` stands for these constants).
    The recomputation of backward writes ``g * dloss + h * dnll`` in one pass:
    ``P = g S + h w_y``, ``Y = g alpha w_y + h w_y``, ``W = g``, ``Z = 2 z_loss g``.
    With per-element rates r (``plan.rates``; ``wb``/``b`` are then the unit-rate mass)
    ``W`` is multiplied by the rate: ``W = r`` in forward (``Z`` stays ``None``), ``g r`` in
    backward.
    """
    assert plan.total is not None and plan.coef is not None and plan.wy is not None
    if g is None and h is None:
        return plan.total, plan.coef, plan.rates, None
    zeros = torch.zeros_like(plan.total)
    g = zeros if g is None else g.to(plan.dtype)
    h = zeros if h is None else h.to(plan.dtype)
    p = (g * plan.total + h * plan.wy).contiguous()
    y = (g * plan.coef + h * plan.wy).contiguous()
    w = g if plan.rates is None else g * plan.rates
    return p, y, w.contiguous(), (2.0 * plan.z_loss * g).contiguous()


class Backend(Protocol):
    """A way to run the fused rows: the chunked torch code, the compiled C++ or Triton."""

    name: str

    def run(
        self, x: Tensor, plan: RowPlan, grad: Tensor | None, g: Tensor | None, h: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Per-row (loss, nll) of contiguous logits ``x`` (M, K); fills ``grad`` when given.

        ``g = h = None``: ``grad`` receives the unscaled gradient of the per-row loss.
        Otherwise ``grad`` receives ``g * dloss + h * dnll`` (per row). ``grad`` may be ``x``
        itself (``inplace=True``): every row is read before it is written.
        """
        ...

    def scale_(self, grad: Tensor, factor: Tensor) -> None:
        """``grad[r, :] *= factor[r]`` in place, the product taken in ``factor.dtype``."""
        ...


def _scale_rows_torch(grad: Tensor, factor: Tensor) -> None:
    if grad.dtype == factor.dtype:
        grad.mul_(factor[:, None])
        return
    rows = max(1, CHUNK_ELEMENTS // max(grad.shape[1], 1))
    for start in range(0, grad.shape[0], rows):
        block = grad[start : start + rows]
        block.copy_(block.to(factor.dtype).mul_(factor[start : start + rows, None]))


class ChunkedBackend:
    """Eager torch, ``ceil(CHUNK_ELEMENTS / K)`` rows at a time; any device, any dtype."""

    name = "chunked"

    def run(
        self, x: Tensor, plan: RowPlan, grad: Tensor | None, g: Tensor | None, h: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        m, k = x.shape
        loss = torch.empty(m, dtype=plan.dtype, device=x.device)
        nll = torch.empty_like(loss)
        rows = max(1, CHUNK_ELEMENTS // max(k, 1))
        coefficients = None if plan.soft is not None else grad_rows(plan, g, h)
        wb_has_zero = plan.wb is not None and bool((plan.wb == 0).any())
        for start in range(0, m, rows):
            stop = min(m, start + rows)
            out = None if grad is None else grad[start:stop]
            if coefficients is None:
                self._soft_chunk(x, plan, start, stop, loss, nll, out, g, h)
            else:
                self._hard_chunk(x, plan, start, stop, loss, nll, out, coefficients, wb_has_zero)
        return loss, nll

    @staticmethod
    def _logits(x: Tensor, plan: RowPlan) -> tuple[Tensor, Tensor | None]:
        z = x.to(plan.dtype, copy=True)
        if plan.softcap is None:
            return z, None
        tanh = torch.tanh(z.div_(plan.softcap))
        return tanh * plan.softcap, tanh

    @staticmethod
    def _softmax_parts(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(exp(z - shift), sum of it, lse) with shift the row max (0 for an all -inf row)."""
        shift = z.amax(dim=1, keepdim=True)
        shift = shift.masked_fill(shift == float("-inf"), 0.0)
        e = (z - shift).exp_()
        total = e.sum(dim=1)
        return e, total, shift.squeeze(1) + total.log()

    def _hard_chunk(
        self,
        x: Tensor,
        plan: RowPlan,
        start: int,
        stop: int,
        loss: Tensor,
        nll: Tensor,
        out: Tensor | None,
        coefficients: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
        wb_has_zero: bool,
    ) -> None:
        """Index targets. Every read of the logits happens before ``out`` (maybe the logits,
        with ``inplace=True``) is written; ignored rows get zero coefficients, hence zeros."""
        assert plan.target is not None and plan.coef is not None and plan.wy is not None
        dtype = plan.dtype
        tanh = None
        owned = True  # z is a temporary of ours (not the logits themselves)
        if plan.softcap is not None:
            z, tanh = self._logits(x[start:stop], plan)
        elif x.dtype != dtype:
            z = x[start:stop].to(dtype)  # one conversion, then everything in `dtype`
        else:
            z, owned = x[start:stop], False  # read only
        target = plan.target[start:stop]
        keep = target >= 0
        index = target.clamp(min=0)[:, None]
        shift = z.amax(dim=1, keepdim=True).to(dtype)
        shift = shift.masked_fill(shift == float("-inf"), 0.0)
        z_y = z.gather(1, index).squeeze(1).to(dtype)
        if plan.wb is not None:
            rows = z if z.dtype == dtype else z.to(dtype)
            if wb_has_zero:  # a zero-mass class adds 0 even where its logit is -inf
                rows = torch.where(plan.wb == 0, 0.0, rows)
            smooth = rows @ plan.wb
        elif plan.b != 0:
            smooth = plan.b * z.sum(dim=1, dtype=dtype)
        else:
            smooth = None
        if owned:
            e = z.sub_(shift)  # read for the last time: reuse it
        elif out is not None and out.dtype == dtype:
            e = torch.sub(z, shift, out=out)  # the gradient rows double as scratch
        else:
            e = z - shift
        e.exp_()
        total = e.sum(dim=1)
        lse = shift.squeeze(1) + total.log()
        gap = lse - z_y
        coef = plan.coef[start:stop]
        value = torch.where(coef == 0, 0.0, coef * gap)
        if smooth is not None and plan.rates is not None:
            rate = plan.rates[start:stop]
            value = value + torch.where(rate == 0, 0.0, rate * (plan.mass * lse - smooth))
        elif smooth is not None:
            value = value + plan.mass * lse - smooth
        if plan.klc is not None:
            value = value + plan.klc[start:stop]
        if plan.z_loss:
            value = value + plan.z_loss * lse.square()
        wy = plan.wy[start:stop]
        loss[start:stop] = torch.where(keep, value, 0.0)
        nll[start:stop] = torch.where(keep & (wy != 0), wy * gap, 0.0)
        if out is None:
            return
        p_coef, y_coef, w_coef, z_coef = (
            None if c is None else c[start:stop] for c in coefficients
        )
        assert p_coef is not None and y_coef is not None
        if z_coef is not None:
            p_coef = p_coef + z_coef * lse
        elif plan.z_loss:
            p_coef = p_coef + (2.0 * plan.z_loss) * lse
        scale = torch.where(keep, p_coef / total, 0.0)
        w_rows = keep.to(dtype) if w_coef is None else torch.where(keep, w_coef, 0.0)
        grad = e.mul_(scale[:, None])
        if plan.wb is not None:
            grad.addcmul_(w_rows[:, None], plan.wb[None, :], value=-1.0)
        elif plan.b != 0:
            grad.sub_((plan.b * w_rows)[:, None])
        grad.scatter_add_(1, index, -torch.where(keep, y_coef, 0.0)[:, None])
        if tanh is not None:
            grad.mul_(tanh.square_().neg_().add_(1.0))
        if grad is not out:
            out.copy_(grad)

    def _soft_chunk(
        self,
        x: Tensor,
        plan: RowPlan,
        start: int,
        stop: int,
        loss: Tensor,
        nll: Tensor,
        out: Tensor | None,
        g: Tensor | None,
        h: Tensor | None,
    ) -> None:
        r"""Probability targets: mass m = w (alpha t + b) per class, dense in the chunk.

        ``loss = -sum_c m_c log p_c`` (+ KL entropy, + z-loss), ``nll`` the same with
        ``w t``; gradient ``(sum(m) + 2 z_loss lse) p - m``.
        """
        assert plan.soft is not None
        z, tanh = self._logits(x[start:stop], plan)
        e, total, lse = self._softmax_parts(z)
        log_probs = z.sub_(lse[:, None])
        plain = plan.soft[start:stop].to(plan.dtype)
        if plan.rates is None:
            smoothed = plan.alpha * plain + plan.offset
        else:  # row i: alpha_i t + r_i b1 with alpha_i = 1 - r_i (1 - alpha1)
            rate = plan.rates[start:stop, None]
            smoothed = (1.0 - rate * (1.0 - plan.alpha)) * plain + rate * plan.offset
        mass = smoothed if plan.weight is None else smoothed * plan.weight
        plain_mass = plain if plan.weight is None else plain * plan.weight
        value = -torch.where(mass == 0, 0.0, mass * log_probs).sum(dim=1)
        if plan.kl:
            entropy = torch.xlogy(smoothed, smoothed)
            if plan.weight is not None:
                entropy = entropy * plan.weight
            value = value + entropy.sum(dim=1)
        if plan.z_loss:
            value = value + plan.z_loss * lse.square()
        loss[start:stop] = value
        nll[start:stop] = -torch.where(plain_mass == 0, 0.0, plain_mass * log_probs).sum(dim=1)
        if out is None:
            return
        p_coef = mass.sum(dim=1)
        if plan.z_loss:
            p_coef = p_coef + (2.0 * plan.z_loss) * lse
        if g is None and h is None:
            grad = e.mul_((p_coef / total)[:, None]).sub_(mass)
        else:
            zeros = torch.zeros(stop - start, dtype=plan.dtype, device=x.device)
            g_rows = zeros if g is None else g[start:stop].to(plan.dtype)
            h_rows = zeros if h is None else h[start:stop].to(plan.dtype)
            p_coef = g_rows * p_coef + h_rows * plain_mass.sum(dim=1)
            grad = e.mul_((p_coef / total)[:, None])
            grad.addcmul_(g_rows[:, None], mass, value=-1.0)
            grad.addcmul_(h_rows[:, None], plain_mass, value=-1.0)
        if tanh is not None:
            grad.mul_(tanh.square_().neg_().add_(1.0))
        out.copy_(grad)

    def scale_(self, grad: Tensor, factor: Tensor) -> None:
        _scale_rows_torch(grad, factor)


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``); True if unknown."""
    getter = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if getter is None else bool(getter())


class _FusedCrossEntropy(torch.autograd.Function):
    """Per-row (loss, nll) of (M, K) logits; keeps the gradient instead of the activations."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: Tensor,
        backend: Backend,
        plan: RowPlan,
        need_nll: bool,
        inplace: bool,
        want_grad: bool,
        prescale: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        x = logits if logits.is_contiguous() else logits.contiguous()
        grad = None
        if want_grad:
            grad = x.detach() if inplace else torch.empty_like(x)
        if grad is not None and prescale is not None:
            rows = prescale.expand(x.shape[0])
            loss, nll = backend.run(x, plan, grad, rows, None)
        else:
            loss, nll = backend.run(x, plan, grad, None, None)
            prescale = None
        overwritten = grad is not None and inplace and x.data_ptr() == logits.data_ptr()
        if overwritten and x.numel():
            # Anything else that saved these logits must now fail loudly, not silently.
            torch.autograd.graph.increment_version(logits)
        keep_logits = need_nll and grad is not None and not (inplace and x is logits)
        ctx.save_for_backward(grad, logits if keep_logits else None)
        ctx.backend, ctx.plan, ctx.need_nll = backend, plan, need_nll  # type: ignore[attr-defined]
        ctx.prescale = prescale  # type: ignore[attr-defined]
        if not need_nll:
            ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_loss: Tensor | None,
        grad_nll: Tensor | None,
    ) -> tuple[Tensor | None, None, None, None, None, None, None]:
        if torch.is_grad_enabled():
            # create_graph=True: refuse loudly rather than return a gradient whose own
            # gradient would silently be missing.
            raise RuntimeError(
                "the fused cross-entropy kernels are first-order only (create_graph=True is "
                "not supported); use impl='torch' for higher-order gradients"
            )
        grad, logits = ctx.saved_tensors  # type: ignore[attr-defined]
        backend: Backend = ctx.backend  # type: ignore[attr-defined]
        plan: RowPlan = ctx.plan  # type: ignore[attr-defined]
        if grad is None or (grad_loss is None and grad_nll is None):
            return None, None, None, None, None, None, None
        keep = _keep_graph()
        if grad_nll is not None and ctx.need_nll:  # type: ignore[attr-defined]
            if logits is None:
                raise RuntimeError(
                    "cross_entropy(..., inplace=True, return_nll=True): the gradient of nll "
                    "cannot be computed because the logits were overwritten by the gradient "
                    "of the loss; use nll.detach() (e.g. for perplexity) or inplace=False"
                )
            out = torch.empty_like(grad) if keep else grad
            x = logits if logits.is_contiguous() else logits.contiguous()
            backend.run(x, plan, out, grad_loss, grad_nll)
            return out, None, None, None, None, None, None
        assert grad_loss is not None
        grad_loss = grad_loss.to(plan.dtype)
        prescale: Tensor | None = ctx.prescale  # type: ignore[attr-defined]
        factor: Tensor | None = grad_loss if prescale is None else grad_loss / prescale
        if grad_loss.device.type == "cpu":  # a host check is free here; skip a pass if we can
            expected = prescale if prescale is not None else torch.ones_like(grad_loss[:1])
            observed = grad_loss
            if plan.target is not None:  # ignored rows are zero whatever their grad_output
                observed = torch.where(plan.target >= 0, grad_loss, expected)
            if bool((observed == expected).all()):
                factor = None
        out = grad.clone() if keep else grad
        if factor is not None:
            backend.scale_(out, factor.contiguous())
        return out, None, None, None, None, None, None


def fused_rows(
    problem: CrossEntropyProblem, need_nll: bool, backend: Backend
) -> tuple[Tensor, Tensor | None]:
    """Runs ``backend`` through the fused autograd function: the `Implementation` signature.

    The kernels differentiate with respect to the logits only. When a class weight, a prior,
    per-element rates of eps or probability targets require a gradient too (rare: learned
    weights or rates, targets from a network being trained), the call takes the closed form
    through autograd (``impl="torch"``), so that no gradient is silently dropped. Rates that
    need no gradient are computed by the kernels themselves (``RowPlan.rates``).
    """
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad
        for t in (
            problem.weight,
            problem.prior,
            problem.eps_rows,
            problem.target if problem.soft else None,
        )
    ):
        return closed_form(problem, need_nll)
    plan = make_plan(problem)
    # Under no_grad (evaluation) no gradient buffer is allocated and nothing is written.
    want_grad = torch.is_grad_enabled() and problem.logits.requires_grad
    loss, nll = _FusedCrossEntropy.apply(
        problem.logits,
        backend,
        plan,
        need_nll,
        problem.inplace,
        want_grad,
        _anticipated_scale(problem) if want_grad else None,
    )
    return loss, (nll if need_nll else None)


CHUNKED = ChunkedBackend()


def chunked(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    """``impl="chunked"``: the fused loss in eager torch, one chunk of rows at a time.

    Works on every device and dtype, for index and probability targets. Temporaries are a few
    chunks of ``CHUNK_ELEMENTS`` values; the only (M, K) tensor is the gradient buffer (none
    at all with ``inplace=True``).
    """
    return fused_rows(problem, need_nll, CHUNKED)
