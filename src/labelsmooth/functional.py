r"""Label-smoothed losses with the argument names and conventions of ``torch.nn.functional``.

Swapping ``F.cross_entropy(x, y, label_smoothing=0.1)`` for ``ls.cross_entropy(x, y, 0.1)`` is a
one-word change and gives the same loss and gradient (see :func:`cross_entropy`).

Every loss checks its arguments through :mod:`labelsmooth._checks` before any work, and
accumulates in float32 whatever the input dtype (float64 stays float64).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _checks, kernels
from ._composite import closed_form as _closed_form
from ._composite import reference as _reference
from ._problem import CrossEntropyProblem, Implementation
from ._problem import prepare as _prepare
from .kernels.linear import linear_cross_entropy

__all__ = [
    "IMPLS",
    "DoubleSmoothingWarning",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]


# Registry behind `impl=`: the dense oracle, the closed form and the fused kernels
# (labelsmooth.kernels: "chunked" eager torch, "compiled" C++ for CPU, "triton" for CUDA).
IMPLS: dict[str, Implementation] = {
    "reference": _reference,
    "torch": _closed_form,
    "chunked": kernels.chunked,
    "compiled": kernels.compiled,
    "triton": kernels.triton,
}


class DoubleSmoothingWarning(UserWarning):
    """:func:`cross_entropy` was given probability targets that look smoothed already.

    Emitted when ``eps != 0`` and every entry of the target is > 0 (as after timm's ``Mixup``
    or ``CutMix`` with ``label_smoothing``): the targets are then smoothed a second time.
    Pass ``eps=0`` if the targets carry the smoothing already; silence it with
    ``warnings.filterwarnings("ignore", category=labelsmooth.DoubleSmoothingWarning)``. The
    test costs one host sync per call; ``validate=False`` skips it, and it is skipped under
    ``torch.compile`` and ``torch.func`` transforms.
    """


def _kernel_pays_off(numel: int, num_classes: int, class_last: bool, dtype: torch.dtype) -> bool:
    """Whether a fused kernel beats ``F.cross_entropy`` on a problem of this size (see
    :func:`auto_impl` for the measurements behind the rule); float64 never takes one."""
    if not class_last or dtype == torch.float64:
        return False
    if numel >= kernels.AUTO_MIN_ELEMENTS and num_classes >= kernels.AUTO_MIN_CLASSES:
        return True
    return (
        dtype in (torch.bfloat16, torch.float16)
        and numel >= kernels.AUTO_MIN_ELEMENTS_HALF
        and num_classes >= kernels.AUTO_MIN_CLASSES_HALF
    )


def auto_impl(problem: CrossEntropyProblem) -> str:
    """The name ``impl="auto"`` picks for a checked problem (see :func:`cross_entropy`).

    Before a problem is even built, ``"auto"`` hands the common case (class indices,
    ``style="uniform"``, no prior, no ``kl``/``z_loss``/``softcap``/``inplace``, eps in [0, 1],
    class weights positive and finite or absent) to PyTorch's own ``F.cross_entropy`` (see
    :func:`_native_cross_entropy`), unless :func:`_kernel_pays_off`; this function decides
    for everything else, and :func:`auto_choice` reports either decision.

    The rule comes from measurements on a 2-core x86 VM (AVX-512, torch 2.13; forward +
    backward, CPU time of one thread, interleaved medians:
    ``python benchmarks/bench_small_shapes.py --crossover --clock cpu``, the full table in
    ``benchmarks/results/cpu_small.md``). Time of ``"compiled"`` over that of
    ``F.cross_entropy``, float32, class dimension last, by the number of logits N*K:

    =======  =====  =====  =====  =====
    K        2^17   2^18   2^19   2^20
    =======  =====  =====  =====  =====
    2        2.17   2.31   2.06   2.24
    8        0.81   0.75   0.68   0.65
    16       2.39   2.20   1.91   1.05
    32       2.30   1.70   1.57   0.40
    100      2.25   2.04   1.59   1.19
    256      1.76   1.33   1.04   0.58
    1000     1.60   1.19   0.89   0.69
    8000     1.63   1.20   0.91   0.53
    =======  =====  =====  =====  =====

    bfloat16 against the float32-upcast native path that ``"auto"`` runs otherwise (float32
    accumulation): 1.02-1.16 at 2^18 and 0.67-0.87 at 2^19 for K >= 256; from 2^20 logits
    that path's float32 copy no longer fits the cache, and the kernel wins from K = 32 on too
    (K = 32: 0.66, 0.59 at 2^20, 2^21; K = 100: 1.14, 0.55; K = 16: 1.6, 1.4, where the
    float32 path is 4-9x faster than PyTorch's own bf16 one). So the kernel is used from
    ``kernels.AUTO_MIN_ELEMENTS`` = 2^19 logits with at least ``kernels.AUTO_MIN_CLASSES`` =
    256 classes (bf16/fp16 also from ``AUTO_MIN_ELEMENTS_HALF`` = 2^20 logits with at least
    ``AUTO_MIN_CLASSES_HALF`` = 32 classes), and only when the class dimension is last: an
    (N, C, d1, ..., dk) input would first be copied to rows, and with its few classes the
    kernel is then 3.2-5.5x slower than ``F.cross_entropy`` on the input as it is
    ((8 or 64, 21, 16, 16), (8, 19, 64, 64), (4, 150, 32, 32)). Left out on purpose: K = 8
    (the kernel is 1.2-1.5x faster because PyTorch's ``log_softmax`` does not vectorise rows
    shorter than a register on this CPU; another vector width moves that), and K < 256 at
    2^20 float32 logits and beyond, where the measurements scatter (0.4-1.2). Float64 and
    probability targets never take a kernel; CUDA follows the same rule with ``"chunked"``
    (not yet measured on a GPU).
    """
    logits = problem.logits
    if problem.traced:
        # torch.compile / torch.func: the closed form is plain torch and traces (no graph
        # break, vmap and grad rules for every op); the kernels' autograd functions do not.
        return "torch"
    if problem.soft:
        return "torch"
    if not _kernel_pays_off(logits.numel(), problem.num_classes, problem.class_last, logits.dtype):
        return "torch"
    # The Triton kernel passes its tests under TRITON_INTERPRET=1 but has not yet been compiled
    # and measured on a GPU, so "auto" uses the chunked kernel on CUDA; impl="triton" opts in.
    if logits.device.type == "cpu" and kernels.compiled_available():
        return "compiled"
    return "chunked"


# The native path: the dtypes it takes and the dtype it computes in (float32 accumulation).
_NATIVE_COMPUTE_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}
_NATIVE_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
_REDUCTIONS = ("none", "mean", "sum")
_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}  # torch.nn._reduction.get_enum
_INF = float("inf")


def _native_applies(
    input: object,
    target: object,
    eps: object,
    style: object,
    prior: object,
    weight: object,
    ignore_index: object,
    reduction: object,
    kl: object,
    return_nll: object,
    z_loss: object,
    softcap: object,
    inplace: object,
    validate: object,
    exclude_classes: object = None,
    weight_mode: object = "pytorch",
) -> bool:
    """Whether ``impl="auto"`` hands this call to :func:`_native_cross_entropy`: the common
    case, decided from Python values and tensor metadata only (no tensor is read).

    Everything else, including every call whose arguments are wrong, takes the general path
    (:func:`labelsmooth._problem.prepare`), which checks them and raises the contract's errors.
    """
    if not (isinstance(input, Tensor) and isinstance(target, Tensor)):
        return False
    if input.dtype not in _NATIVE_COMPUTE_DTYPE or target.dtype not in _NATIVE_INDEX_DTYPES:
        return False
    if target.device != input.device:
        return False  # the general path names the argument
    ndim = input.dim()
    if ndim == 0 or target.dim() != ndim - 1:
        return False
    shape = input.shape
    if ndim > 1 and (target.shape[0] != shape[0] or target.shape[1:] != shape[2:]):
        return False
    if not (
        type(style) is str
        and style == "uniform"
        and prior is None
        and exclude_classes is None
        and type(weight_mode) is str
        and (weight_mode == "pytorch" or (weight_mode == "sample" and weight is None))
        and kl is False
        and (return_nll is False or return_nll is True)
        and (validate is True or validate is False)
        and inplace is False
        and softcap is None
        and type(z_loss) in (float, int)
        and z_loss == 0
        and type(eps) in (float, int)
        and 0 <= eps <= 1  # F.cross_entropy's label_smoothing range (and not NaN)
        and type(ignore_index) is int
        and type(reduction) is str
        and reduction in _REDUCTIONS
    ):
        return False
    num_classes = shape[1] if ndim > 1 else shape[0]
    if num_classes == 0:
        return False
    if weight is not None and not (
        isinstance(weight, Tensor)
        and weight.is_floating_point()
        and weight.shape == (num_classes,)
        and weight.device == input.device
    ):
        return False
    class_last = ndim <= 2 or math.prod(shape[2:]) == 1
    return not _kernel_pays_off(
        input.numel(), num_classes, class_last, input.dtype
    ) or _checks.tracing(input, target, weight)


def _positive_finite(weight: Tensor, dtype: torch.dtype) -> bool:
    """Every class weight is a normal positive finite number in ``dtype`` (one host read)."""
    low, high = torch.aminmax(_as_dtype(weight, dtype).detach())
    return float(low) >= torch.finfo(dtype).tiny and float(high) < _INF


def _native_cross_entropy(
    input: Tensor,
    target: Tensor,
    eps: float,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    return_nll: bool,
    validate: bool,
) -> Tensor | tuple[Tensor, Tensor] | None:
    """``impl="auto"`` in the common case (:func:`_native_applies`): PyTorch's own kernels.

    Style ``"uniform"`` without prior *is* ``F.cross_entropy(..., label_smoothing=eps)`` (the
    contract, and the parity grid of the tests), so that is what runs, on the caller's layout
    (an (N, C, d1, ..., dk) input is not moved). The contract's differences are kept:

    * float32 accumulation: bf16/fp16 logits are upcast to float32 (``"none"`` is cast back);
    * ``"mean"`` is native ``"sum"`` divided by the denominator clamped away from 0, so that an
      all-ignored batch gives 0 with a zero gradient (the sum and its gradient are 0 there),
      not nan; no value is read on the host for that;
    * class weights: the call returns ``None`` (general path) unless every weight is positive
      and finite (one host read, as the general path's finiteness check): then the denominator
      is 0 only for an all-ignored batch, no zero weight meets a ``-inf`` logit (0 * inf), and
      an error names the weight as the general path's check does;
    * class indices: on CPU ``F.cross_entropy`` checks them itself, and only when it raises is
      :func:`labelsmooth._checks.check_class_indices` run, to raise our ``ValueError`` (so the
      check is free when the indices are right); elsewhere (CUDA asserts on the device) it runs
      first, unless ``validate=False`` or while tracing;
    * ``return_nll``: one ``log_softmax`` for both (the formula of ``F.cross_entropy``).

    Returns ``None`` when the call must take the general path after all.
    """
    dtype = _NATIVE_COMPUTE_DTYPE[input.dtype]
    class_dim = 1 if input.dim() > 1 else 0
    num_classes = input.shape[class_dim]
    if weight is not None:
        if _checks.tracing(input, target, weight):
            return None  # the weight's values cannot be read: the closed form handles them
        weight = _as_dtype(weight, dtype)
        if not _positive_finite(weight, dtype):
            return None  # zero, negative, subnormal or non-finite weights: the general path
    on_cpu = input.device.type == "cpu"
    if validate and not on_cpu and not _checks.tracing(input, target, weight):
        _checks.check_class_indices(target, num_classes, ignore_index)
    x = input if input.dtype == dtype else input.to(dtype)
    y = target if target.dtype == torch.int64 else target.long()
    summed = "none" if reduction == "none" else "sum"
    if (
        reduction == "mean"
        and on_cpu
        and weight is None
        and not return_nll
        and not _checks.tracing(input, target)
    ):
        # On the CPU a value can be read for free (no device to wait for): take PyTorch's own
        # "mean", and the sum / count path below only when that is nan (an all-ignored batch,
        # or nan logits, which give nan there too). Saves four small ops and a backward.
        try:
            loss = F.cross_entropy(x, y, ignore_index=ignore_index, label_smoothing=eps)
        except (IndexError, RuntimeError):
            loss = None  # the path below raises our error
        if loss is not None and not math.isnan(loss.item()):
            return loss
    try:
        if return_nll:
            log_probs = F.log_softmax(x, class_dim)
            nll = F.nll_loss(log_probs, y, weight, ignore_index=ignore_index, reduction=summed)
            loss = nll
            if eps != 0:
                if weight is not None:
                    weight_view = weight.reshape((num_classes,) + (1,) * (x.dim() - class_dim - 1))
                    log_probs = log_probs * weight_view
                smooth = log_probs.sum(class_dim).masked_fill(y == ignore_index, 0.0)
                if summed == "sum":
                    smooth = smooth.sum()
                loss = (1.0 - eps) * nll - (eps / num_classes) * smooth
        else:
            loss = F.cross_entropy(
                x, y, weight, ignore_index=ignore_index, reduction=summed, label_smoothing=eps
            )
            nll = None
    except (IndexError, RuntimeError):
        if validate and on_cpu and not _checks.tracing(input, target, weight):
            # Most likely an index out of range: our message, naming it.
            try:
                _checks.check_class_indices(target, num_classes, ignore_index)
            except ValueError as ours:
                raise ours from None
        raise
    if reduction == "none":
        if input.dtype != dtype:
            loss = loss.to(input.dtype)
            nll = None if nll is None else nll.to(input.dtype)
    elif reduction == "mean":
        valid = y != ignore_index
        if weight is None:
            denominator = valid.sum().clamp_min(1)
        else:
            picked = weight[torch.where(valid, y, 0)]
            denominator = torch.where(valid, picked, 0.0).sum().clamp_min(torch.finfo(dtype).tiny)
        loss = loss / denominator
        nll = None if nll is None else nll / denominator
    if nll is None:
        return loss
    return loss, nll


def auto_choice(input: Tensor, target: Tensor, eps: float = 0.1, **kwargs: object) -> str:
    """What ``cross_entropy(input, target, eps, **kwargs)`` with ``impl="auto"`` runs:
    ``"native"`` (``F.cross_entropy`` itself, see :func:`auto_impl`) or an ``impl`` name.

    For benchmarks and tests; the arguments are checked as by :func:`cross_entropy`.
    """
    arguments = {
        "style": "uniform",
        "prior": None,
        "weight": None,
        "ignore_index": -100,
        "reduction": "mean",
        "kl": False,
        "return_nll": False,
        "z_loss": 0.0,
        "softcap": None,
        "inplace": False,
        "validate": True,
        "exclude_classes": None,
        "weight_mode": "pytorch",
    }
    unknown = set(kwargs) - set(arguments)
    if unknown:
        raise TypeError(f"auto_choice got unexpected keyword arguments {sorted(unknown)}")
    arguments.update(kwargs)
    a = arguments
    if _native_applies(
        input,
        target,
        eps,
        a["style"],
        a["prior"],
        a["weight"],
        a["ignore_index"],
        a["reduction"],
        a["kl"],
        a["return_nll"],
        a["z_loss"],
        a["softcap"],
        a["inplace"],
        a["validate"],
        a["exclude_classes"],
        a["weight_mode"],
    ):
        weight = a["weight"]
        if weight is None or _positive_finite(weight, _NATIVE_COMPUTE_DTYPE[input.dtype]):
            return "native"
    problem = _prepare(
        input,
        target,
        eps,
        a["style"],  # type: ignore[arg-type]
        a["prior"],  # type: ignore[arg-type]
        a["weight"],  # type: ignore[arg-type]
        a["ignore_index"],  # type: ignore[arg-type]
        a["reduction"],  # type: ignore[arg-type]
        a["kl"],  # type: ignore[arg-type]
        a["validate"],  # type: ignore[arg-type]
        z_loss=a["z_loss"],  # type: ignore[arg-type]
        softcap=a["softcap"],  # type: ignore[arg-type]
        inplace=a["inplace"],  # type: ignore[arg-type]
        exclude_classes=a["exclude_classes"],  # type: ignore[arg-type]
        weight_mode=a["weight_mode"],  # type: ignore[arg-type]
    )
    return auto_impl(problem)


def _auto(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    return IMPLS[auto_impl(problem)](problem, need_nll)


def _resolve_impl(impl: object) -> Implementation:
    names = ("auto", *IMPLS)
    _checks.check_choice("impl", impl, names)
    if impl == "auto":
        return _auto
    return IMPLS[impl]  # type: ignore[index]


def _warn_if_smoothed_twice(problem: CrossEntropyProblem) -> None:
    """Warns (:class:`DoubleSmoothingWarning`) when probability targets already have mass on
    every class and are smoothed again (one host sync; callers skip it while tracing)."""
    target = problem.target
    if target.numel() == 0:
        return
    smallest = float(target.detach().min())
    if smallest > 0:
        rate = "the per-element eps" if problem.eps_rows is not None else f"eps={problem.eps:g}"
        warnings.warn(
            f"cross_entropy: every entry of the probability target is > 0 (smallest "
            f"{smallest:.4g}), so it looks smoothed already (e.g. by Mixup/CutMix with "
            f"label_smoothing), and {rate} smooths it again. Pass eps=0 to use the "
            f"targets as they are, or silence this with warnings.filterwarnings('ignore', "
            f"category=labelsmooth.DoubleSmoothingWarning).",
            DoubleSmoothingWarning,
            stacklevel=3,
        )


def _reduce(values: Tensor, problem: CrossEntropyProblem, input_dtype: torch.dtype) -> Tensor:
    """Applies the reduction; rows of ignored targets count as 0 and are not averaged.
    ``weight_mode="sample"``: each row times its ``row_weight`` w[y] first."""
    if problem.row_weight is not None:
        # 0 * inf := 0: a zero-weight element contributes nothing, as with weight_mode="pytorch".
        values = torch.where(problem.row_weight == 0, 0.0, values * problem.row_weight)
    if problem.valid is not None:
        values = torch.where(problem.valid, values, 0.0)
    if problem.reduction == "none":
        return values.reshape(problem.out_shape).to(input_dtype)
    total = values.sum()
    if problem.reduction == "sum":
        return total
    if problem.soft:
        # PyTorch's rule for probability targets: divide by the number of elements.
        count = values.numel()
        return total / count if count else total * 0.0
    denominator = kernels.fused.mean_denominator(problem)
    # An all-ignored batch gives 0 with a zero gradient rather than PyTorch's 0/0 = nan.
    empty = denominator == 0
    return torch.where(empty, 0.0, total / torch.where(empty, 1.0, denominator))


_HALVES: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def _half(dtype: torch.dtype, device: torch.device) -> Tensor:
    """A 0-dim tensor 0.5 (cached per dtype and device: making one costs a microsecond or two)."""
    half = _HALVES.get((dtype, device))
    if half is None:
        with torch.inference_mode(False):  # a normal tensor even if first made in inference mode
            half = _HALVES[(dtype, device)] = torch.full((), 0.5, dtype=dtype, device=device)
    return half


def _as_dtype(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    eps: float | Tensor = 0.1,
    *,
    style: str = "uniform",
    prior: Tensor | Sequence[float] | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    kl: bool = False,
    return_nll: bool = False,
    impl: str = "auto",
    z_loss: float = 0.0,
    softcap: float | None = None,
    inplace: bool = False,
    validate: bool = True,
    exclude_classes: Sequence[int] | Tensor | None = None,
    weight_mode: str = "pytorch",
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Label-smoothed cross-entropy between logits and class indices or class probabilities.

    Per element, with :math:`p = \mathrm{softmax}(x)`, true class y, class weights w (all 1
    without ``weight``) and K classes:

    * ``style="uniform"``: :math:`(1-\epsilon) w_y (-\log p_y) + \frac{\epsilon}{K}
      \sum_c w_c (-\log p_c)` — exactly ``F.cross_entropy(..., label_smoothing=eps)``;
    * ``style="others"``: :math:`(1-\epsilon) w_y (-\log p_y) + \frac{\epsilon}{K-1}
      \sum_{c \ne y} w_c (-\log p_c)` — fairseq's ``label_smoothed_nll_loss``;
    * ``prior`` (uniform only) replaces :math:`\epsilon/K` by :math:`\epsilon\,\pi_c`.
    * ``exclude_classes`` (e.g. a padding token, as OpenNMT-py and the Annotated Transformer
      do) gives the listed classes no smoothing mass; the K' = K - len(exclude_classes) kept
      classes share it: ``"uniform"`` :math:`\epsilon/K'` on each kept class (so
      :math:`1-\epsilon+\epsilon/K'` on a kept label, :math:`1-\epsilon` on an excluded
      one); ``"others"`` :math:`1-\epsilon` on y and :math:`\epsilon/(K'-1)` on each kept
      class other than y, eps <= (K'-1)/K'. With ``"others"`` a non-ignored label that is
      itself excluded is a ``ValueError`` (``validate=True``; unchecked, its row gets the
      affine target :math:`\alpha\,\mathrm{onehot}(y) + b` of
      :func:`labelsmooth.smoothing_coefficients`, :math:`1-\epsilon K'/(K'-1)` on y). With
      ``prior``, the prior is restricted to the kept classes and renormalised
      (:math:`\epsilon\,\pi_c / \sum_{kept}\pi`; it must have mass on them). With
      ``style="others"``, ``ignore_index`` = the padding index and ``kl=True`` this is
      OpenNMT-py's ``LabelSmoothingLoss`` (KL divergence, ``"sum"``) and the Annotated
      Transformer's ``LabelSmoothing`` criterion.
    * ``weight_mode="sample"`` weights each element as a whole by its label's weight,
      :math:`w_y \sum_c \tilde t_c (-\log p_c)` with the smoothed target unchanged (and
      ``kl``/``z_loss`` terms inside the weighted element loss), where the default
      ``"pytorch"`` weights every term by its own class (the formulas above, PyTorch's
      rule). ``"mean"`` divides by :math:`\sum w_y` over non-ignored elements in both modes;
      without ``weight`` both are the unweighted loss. ``"sample"`` needs class-index targets
      when ``weight`` is given.

    That is :math:`\sum_c w_c \tilde t_c (-\log p_c)` with the smoothed target
    :math:`\tilde t` of :func:`labelsmooth.smooth_labels`; for hard labels it is computed in
    closed form, without building the dense target. Probability targets (same shape as
    ``input``, e.g. mixup) are smoothed the same way. Probability targets that already have
    mass on every class (as timm's ``Mixup`` with ``label_smoothing`` makes them) would be
    smoothed twice: with ``eps != 0`` that gives a :class:`DoubleSmoothingWarning` (a
    ``UserWarning``; filter it by its category to silence it; pass ``eps=0`` to use such
    targets as they are).

    Reductions follow PyTorch: ``"mean"`` divides by :math:`\sum w_y` over non-ignored
    elements (by the number of elements for probability targets); ``"sum"``; ``"none"``
    returns one value per element (0 where the target is ``ignore_index``). One deliberate
    difference: a ``"mean"`` whose denominator is 0 (every target ignored) returns 0 with a
    zero gradient, where PyTorch returns nan.

    Negative ``eps`` is generalised label smoothing (Wei et al. 2022): the loss is then
    unbounded below and a minimum need not exist; it is not allowed with ``kl=True``.

    LLM extras: ``softcap=s`` replaces the logits by :math:`s \tanh(x / s)` before everything
    else (Gemma 2; ``nll`` is then that of the capped logits too); ``z_loss=λ`` adds
    :math:`\lambda\,(\log \sum_c e^{x_c})^2` to the loss of every non-ignored element
    (PaLM), unweighted by ``weight`` and not part of ``nll``; it is reduced with the loss,
    so ``"mean"`` divides it by the same denominator (:math:`\sum w_y`, the element count
    without weights).

    Implementations (``impl``), all equal up to float rounding (each is tested against
    ``"reference"``):

    * ``"reference"``: the dense smoothed target and the definition, through autograd.
    * ``"torch"``: the closed form (one ``log_softmax``, no dense target), through autograd;
      supports double backward.
    * ``"chunked"``: the fused kernel in eager torch on any device: forward computes the loss
      *and* the gradient, a chunk of rows at a time, and keeps only the gradient (M, K) in the
      logits' dtype; backward scales it by the incoming gradient in place. First-order only.
      A bf16/fp16 gradient is rounded once for the incoming gradient ``loss.backward()``
      gives a ``"mean"``/``"sum"`` loss (or a power-of-two multiple of it), and twice
      otherwise (up to about 1 ulp; see :mod:`labelsmooth.kernels.fused`).
    * ``"compiled"``: the same fused kernel as a C++ library (built with the system compiler
      at first use, cached on disk), CPU only; probability targets take ``"chunked"``.
    * ``"triton"``: the same fused kernel in Triton, CUDA only (or ``TRITON_INTERPRET=1``),
      for float32/bfloat16/float16; probability targets and float64 take ``"chunked"``.
    * ``"auto"``: a fused kernel only where it was measured to beat PyTorch (see
      :func:`labelsmooth.functional.auto_impl`): float32/bf16/fp16 logits whose class
      dimension is last, with at least ``labelsmooth.kernels.AUTO_MIN_CLASSES`` classes and
      ``labelsmooth.kernels.AUTO_MIN_ELEMENTS`` logits (bf16/fp16: also from
      ``AUTO_MIN_CLASSES_HALF`` and ``AUTO_MIN_ELEMENTS_HALF``), not while tracing — ``"compiled"``
      on CPU when the C++ kernel builds, else ``"chunked"`` (CUDA included: the Triton kernel
      is tested under the interpreter but not yet measured on a GPU, so it is opt-in with
      ``impl="triton"``). Otherwise, in the common case (class indices, ``"uniform"``
      without ``prior``, ``kl``, ``z_loss``, ``softcap`` or ``inplace``, 0 <= eps <= 1,
      class weights absent or all positive and finite) PyTorch's own
      ``F.cross_entropy(..., label_smoothing=eps)``, which this loss equals, on the input's
      own layout (no copy of an (N, C, d1, ..., dk) input), with bf16/fp16 logits upcast to
      float32 and ``"mean"`` taken as a sum over the denominator so that an all-ignored batch
      still gives 0; and ``"torch"`` for everything else.

    Tracing: ``torch.compile(cross_entropy, fullgraph=True)``, ``torch.func.grad``,
    ``vmap``, ``jacrev`` and the like work with the default arguments. While traced, no
    tensor value reaches the host: ``impl="auto"`` takes ``F.cross_entropy`` in the common
    case and ``"torch"`` otherwise (the fused kernels are not traceable; do not name them
    explicitly there), and the checks that would read values
    are skipped — class indices in range (as with ``validate=False``), ``weight`` finite,
    ``prior`` finite, >= 0 and summing to 1, and the :class:`DoubleSmoothingWarning`. Types,
    shapes, ``eps`` and the other Python arguments are checked as always; check the values
    eagerly (or in the data pipeline) if they may be wrong.

    ``inplace=True`` allows the fused kernels to write the gradient into the logits' own
    memory (as Liger-Kernel does), so that no (M, K) buffer is allocated at all. The values of
    ``input`` are then destroyed and must not be used again; autograd's version counter of
    ``input`` is bumped, so a graph that saved ``input`` for something else raises instead of
    returning a wrong gradient. It takes effect only where the logits require a gradient, the
    class dimension is last and contiguous and the implementation is a fused one; it is
    ignored otherwise. With ``return_nll=True`` and ``inplace=True`` only ``loss`` may be
    backpropagated (use ``nll.detach()``). On a leaf tensor (e.g. logits made with
    ``requires_grad=True`` in a benchmark) its ``.grad`` then aliases its own data: never use
    ``inplace=True`` on a tensor an optimizer updates.

    Args:
        input: logits of shape (C,), (N, C) or (N, C, d1, ..., dk); any floating dtype.
        target: class indices of shape (), (N) or (N, d1, ..., dk) (integer), or class
            probabilities with the shape of ``input`` (floating).
        eps: smoothing rate. ``uniform``: eps <= 1; ``others``: eps <= (K-1)/K. Or a
            floating tensor of per-element rates with the target's batch shape ((), (N) or
            (N, d1, ..., dk)): element i is smoothed with its own eps_i (the same ranges, each
            rate checked on the host unless traced). Every ``impl`` computes per-element
            rates itself: the fused kernels (``"chunked"``, ``"compiled"``, ``"triton"``) read
            them as per-row runtime data (a tensor / pointer argument, so new rates never
            recompile a kernel), ``"torch"`` scales its closed form per row and
            ``"reference"`` builds the dense target. The loss is differentiable with respect
            to the rates under every ``impl``: the fused kernels differentiate only with
            respect to the logits, so a rate tensor that requires a gradient (under grad
            mode) sends the call to the closed form (``"torch"``) through autograd, as a
            class weight or prior that requires a gradient does. A 0-dim or 1-element
            tensor is one rate for every element: read as a number, or, when it requires a
            gradient (under grad mode) or is traced (``torch.compile``, ``torch.func``),
            expanded to the batch shape, so that it keeps its gradient and is runtime data.
        style: ``"uniform"`` (eps/K on every class) or ``"others"`` (eps/(K-1) on the others).
        prior: length-K distribution for ``"uniform"`` smoothing towards a class prior.
        weight: length-K class weights, as in ``F.cross_entropy``.
        ignore_index: target value whose elements contribute nothing (index targets only; it
            may be a valid class, as fairseq's padding index is).
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        kl: return :math:`\sum_c w_c \tilde t_c (\log \tilde t_c - \log p_c)`, the KL
            divergence to the smoothed target (NMT toolkits' ``KLDivLoss`` criterion): zero
            at the optimum, same gradient.
        return_nll: also return the unsmoothed loss (``eps=0``, same weights and reduction),
            computed in the same pass, e.g. for perplexity.
        impl: ``"auto"`` (the fastest correct path for the device and size, see above),
            ``"torch"``, ``"reference"``, ``"chunked"``, ``"compiled"`` or ``"triton"``.
        z_loss: coefficient λ >= 0 of the z-loss; 0 switches it off.
        softcap: ``None`` or s > 0, the soft-cap of the logits.
        inplace: allow the fused kernels to overwrite ``input`` with the gradient.
        exclude_classes: class indices (a sequence of ints or a 1-D integer tensor, read on
            the host) that receive no smoothing mass; unique, in [0, C), not all of them.
        weight_mode: ``"pytorch"`` (default: the smoothing term weighted per class) or
            ``"sample"`` (the element's whole loss times ``weight[y]``).
        validate: check that class indices are in range (one host sync; on CPU in the
            common case of ``"auto"`` it costs nothing, since ``F.cross_entropy`` checks them
            anyway and ours runs only to name a bad index when it raised), and for probability
            targets whether they look smoothed already (:class:`DoubleSmoothingWarning`, one
            host sync). Turn off for speed once the data pipeline is trusted; skipped anyway
            while tracing (see above). Unchecked, an index outside [0, C) other than
            ``ignore_index`` (a negative one included) is never taken for a class nor for an
            ignored element: on CPU the call raises (``ValueError`` from ``"compiled"``,
            ``IndexError``/``RuntimeError`` from the torch paths); on CUDA it fails as
            PyTorch does (a device-side assert) and ``"triton"`` returns nan for it.

    Returns:
        The loss (float32 scalar for ``"mean"``/``"sum"``, float64 for float64 input; for
        ``"none"`` a tensor of the target's batch shape in the input's dtype), or
        ``(loss, nll)`` with ``return_nll=True``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> target = torch.tensor([0, 1])
        >>> cross_entropy(logits, target, eps=0.1)
        tensor(0.5047)
        >>> F.cross_entropy(logits, target, label_smoothing=0.1)
        tensor(0.5047)
        >>> cross_entropy(logits, target, eps=0.1, style="others")
        tensor(0.5589)
        >>> cross_entropy(logits, target, eps=0.1, style="others", exclude_classes=[2])
        tensor(0.5214)
        >>> cross_entropy(logits, target, eps=torch.tensor([0.0, 0.2]), reduction="none")
        tensor([0.2413, 0.6848])
        >>> w = torch.tensor([1.0, 2.0, 1.0])
        >>> cross_entropy(logits, target, eps=0.1, weight=w, weight_mode="sample")
        tensor(0.5425)
    """
    if impl == "auto" and _native_applies(
        input,
        target,
        eps,
        style,
        prior,
        weight,
        ignore_index,
        reduction,
        kl,
        return_nll,
        z_loss,
        softcap,
        inplace,
        validate,
        exclude_classes,
        weight_mode,
    ):
        native = _native_cross_entropy(
            input,
            target,
            float(eps),
            weight,
            ignore_index,
            reduction,
            return_nll,
            validate,
        )
        if native is not None:
            return native
    problem = _prepare(
        input,
        target,
        eps,
        style,
        prior,
        weight,
        ignore_index,
        reduction,
        kl,
        validate,
        z_loss=z_loss,
        softcap=softcap,
        inplace=inplace,
        exclude_classes=exclude_classes,
        weight_mode=weight_mode,
    )
    return_nll = _checks.check_flag("return_nll", return_nll)
    implementation = _resolve_impl(impl)
    if problem.soft and problem.eps != 0 and validate and not problem.traced:
        _warn_if_smoothed_twice(problem)
    loss, nll = implementation(problem, return_nll)
    reduced = _reduce(loss, problem, input.dtype)
    if not return_nll:
        return reduced
    assert nll is not None
    return reduced, _reduce(nll, problem, input.dtype)


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    eps: float = 0.1,
    *,
    style: str = "uniform",
    weight: Tensor | None = None,
    pos_weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Binary / multi-label cross-entropy on logits with smoothed targets.

    The targets ``t`` in [0, 1] are smoothed by :func:`labelsmooth.smooth_binary` —
    ``"uniform"``: :math:`t(1-\epsilon) + \epsilon/2` (Keras); ``"others"``:
    :math:`t(1-2\epsilon) + \epsilon` (1 -> 1-eps, 0 -> eps) — and the loss is then exactly
    ``F.binary_cross_entropy_with_logits(input, smoothed, weight, pos_weight=pos_weight,
    reduction=reduction)``, computed in float32 (float64 stays float64).

    ``torch.compile(..., fullgraph=True)``, ``torch.func.grad`` and ``vmap`` work: while traced
    (see :func:`cross_entropy`) the check that the targets lie in [0, 1] is skipped, since it
    would read their values on the host; shapes, types and ``eps`` are still checked.

    Args:
        input: logits of any shape.
        target: same shape as ``input``; floating in [0, 1], or integer/bool 0/1 labels.
        eps: ``uniform``: eps <= 1; ``others``: eps <= 0.5. Negative eps sharpens the targets
            beyond {0, 1} (generalised label smoothing); the loss is then unbounded below.
        style: ``"uniform"`` or ``"others"``.
        weight: rescaling weight broadcastable to ``input``, as in PyTorch.
        pos_weight: weight of positive examples, broadcastable along the last dimension.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.

    Example:
        >>> logits = torch.tensor([3.0, -2.0])
        >>> binary_cross_entropy_with_logits(logits, torch.tensor([1.0, 0.0]), 0.1)
        tensor(0.2128)
    """
    if not (isinstance(input, Tensor) and input.is_floating_point()):
        _checks.check_logits(input)  # raises, naming the argument
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if reduction not in _REDUCTIONS:
        _checks.check_reduction(reduction)  # raises, naming the argument
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the shape of input {tuple(input.shape)}, "
            f"got shape {tuple(target.shape)}"
        )
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    # smooth_binary's checks (style, eps, target in [0, 1]) and its formula, without its
    # conversions when nothing needs converting: on small inputs every microsecond shows.
    if not (
        type(eps) is float
        and (
            (style == "uniform" and 0.0 <= eps <= 1.0) or (style == "others" and 0.0 <= eps <= 0.5)
        )
    ):
        style = _checks.check_style(style)
        eps = _checks.check_eps(eps, 2, style, binary=True)
    traced = _checks.tracing(input, target)
    source = target
    if target.dtype == torch.bool:
        target = target.to(dtype)  # 0/1 by type: nothing to check
    else:
        if not target.is_floating_point():
            if target.is_complex():
                raise TypeError(f"target must be real, got dtype={target.dtype}")
            target = target.to(dtype)  # 0/1 labels as integers
        if not traced:
            _checks.check_unit_interval("target", target, traced=False)
        if target.dtype != dtype:
            target = target.to(dtype)
    if weight is not None or pos_weight is not None:
        for name, value in (("weight", weight), ("pos_weight", pos_weight)):
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"{name} must be a torch.Tensor or None, got {type(value).__name__}"
                )
            if not value.is_floating_point():
                raise TypeError(f"{name} must be floating point, got dtype={value.dtype}")
            _checks.check_broadcastable(name, value, input.shape)
    if eps != 0:
        # smooth_binary's t (1 - eps) + eps / 2 ("uniform") and t (1 - 2 eps) + eps ("others")
        # are t + w (1/2 - t) with w = eps or 2 eps: one lerp instead of two scalar ops.
        half = target.new_full((), 0.5) if traced else _half(dtype, target.device)
        rate = eps if style == "uniform" else 2.0 * eps
        if target is source or traced:
            target = torch.lerp(target, half, rate)
        else:  # our own converted copy (bool, integer or bf16/fp16 targets): smooth it in place
            target = target.lerp_(half, rate)
    # F.binary_cross_entropy_with_logits without its Python wrapper (whose checks are done
    # above): the op it calls, with the reduction as its enum.
    loss = torch.binary_cross_entropy_with_logits(
        _as_dtype(input, dtype),
        target,
        None if weight is None else _as_dtype(weight, dtype),
        None if pos_weight is None else _as_dtype(pos_weight, dtype),
        _REDUCTION_ENUM[reduction],
    )
    return loss.to(input.dtype) if reduction == "none" and input.dtype != dtype else loss
