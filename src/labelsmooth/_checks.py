"""Argument checks shared by every public function: the one source of truth for what is allowed.

Each check raises before any work is done, with a message that names the argument, the value
that was given and what is allowed: ``ValueError`` for values, ``TypeError`` for dtypes and
types. Targets (``targets.py``), losses (``functional.py``) and modules (``nn.py``) all call
these functions rather than testing arguments themselves.

Checks of *values* held in tensors (class indices in range, binary targets in [0, 1], finite
weights, a prior that sums to 1) need a host sync, which a tracer cannot do: under
``torch.compile`` it is a graph break (an error with ``fullgraph=True``) and under a
``torch.func`` transform (``grad``, ``vmap``, ...) an error. They are skipped while
:func:`tracing`; checks of types, shapes and Python numbers always run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence, Set
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


_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)


def _functorch_active() -> bool:
    if _TRANSFORMS_ACTIVE is None:  # pragma: no cover - older torch
        return False
    return bool(_TRANSFORMS_ACTIVE())


_IS_WRAPPED = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def _functorch_wrapped(tensor: object) -> bool:
    if _IS_WRAPPED is None:  # pragma: no cover - older torch
        return False
    return isinstance(tensor, Tensor) and bool(_IS_WRAPPED(tensor))


def tracing(*tensors: object) -> bool:
    """Whether this call is being traced, so that no value of a tensor may reach the host.

    True inside ``torch.compile`` (``torch.compiler.is_compiling()``), while a ``torch.func``
    transform (``grad``, ``vmap``, ``jacrev``, ...) is active, or when one of ``tensors`` is
    wrapped by one. Value checks that need a host sync are skipped then, and
    ``impl="auto"`` takes pure torch (``F.cross_entropy`` or the closed form), no kernel.
    """
    if torch.compiler.is_compiling() or _functorch_active():
        return True
    if _IS_WRAPPED is None:  # pragma: no cover - older torch
        return False
    for tensor in tensors:  # noqa: SIM110 - a plain loop: this runs on every call of every loss
        if isinstance(tensor, Tensor) and _IS_WRAPPED(tensor):
            return True
    return False


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
    eps = check_real("eps", eps)
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


def check_z_loss(z_loss: object) -> float:
    """The z-loss coefficient (PaLM): a finite real number >= 0, returned as a Python float."""
    if isinstance(z_loss, Tensor) and z_loss.numel() == 1:
        z_loss = z_loss.item()
    if isinstance(z_loss, bool) or not isinstance(z_loss, Real):
        raise TypeError(f"z_loss must be a real number, got z_loss={z_loss!r}")
    value = float(z_loss)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"z_loss must be finite and >= 0 (0 switches it off), got z_loss={value}")
    return value


def check_softcap(softcap: object) -> float | None:
    """The logit soft-cap (Gemma 2): ``None`` (off) or a finite real number > 0."""
    if softcap is None:
        return None
    if isinstance(softcap, Tensor) and softcap.numel() == 1:
        softcap = softcap.item()
    if isinstance(softcap, bool) or not isinstance(softcap, Real):
        raise TypeError(f"softcap must be None or a real number, got softcap={softcap!r}")
    value = float(softcap)
    if not math.isfinite(value) or value <= 0 or value > _FLOAT32_MAX:
        raise ValueError(
            f"softcap must be None (off) or a number in (0, {_FLOAT32_MAX:.4g}] (the float32 "
            f"range the loss is computed in), got softcap={value}"
        )
    return value


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_logits(input: object, name: str = "input") -> Tensor:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor of logits, got dtype={input.dtype}"
        )
    return input


def check_movable(name: str, tensor: Tensor, device: torch.device, ref: str = "input") -> None:
    """``tensor`` can be copied to ``device`` (that of ``ref``): a "meta" tensor has no values
    to copy anywhere else; other devices are moved silently."""
    if tensor.device.type == "meta" and torch.device(device).type != "meta":
        raise ValueError(
            f"{name} must be on the device of {ref} ({device}) or on one its values can be "
            f"copied from, got device={tensor.device}"
        )


def check_same_device(name: str, tensor: Tensor, device: torch.device, ref: str = "input") -> None:
    """``tensor`` is on ``device`` (that of ``ref``), as PyTorch's ops need."""
    if tensor.device != device:
        raise ValueError(
            f"{name} must be on the device of {ref} ({device}), got device={tensor.device}"
        )


def as_real_tensor(name: str, value: object, *, default_dtype: bool = False) -> Tensor:
    """A real (float or integer) tensor from a tensor, numpy array or sequence of numbers;
    strings, objects, bool and complex values are a TypeError naming ``name``. A sequence of
    floats becomes float64 (numpy's rule), or the default dtype with ``default_dtype``
    (``torch.as_tensor``'s rule, for a module's buffer)."""
    if isinstance(value, Tensor):
        tensor = value
    else:
        if isinstance(value, (str, bytes, Mapping, Set)):  # no order, or not numbers
            raise TypeError(f"{name} must be a 1-D tensor of floats, got {value!r}")
        try:
            if default_dtype and not isinstance(value, np.ndarray):
                tensor = torch.as_tensor(list(value))  # type: ignore[call-overload]
            else:
                tensor = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a 1-D tensor of floats, got {value!r}") from err
    if not (tensor.is_floating_point() or tensor.dtype in _INTEGER_DTYPES):
        raise TypeError(
            f"{name} must be a real (float or integer) tensor, got dtype={tensor.dtype}"
        )
    return tensor


def as_class_vector(name: str, value: object, *, finite: bool = True) -> Tensor:
    """A 1-D floating tensor of per-class values (class weights, a prior) given to a module
    before the number of classes is known: real, 1-D and (``finite``, a host sync) finite;
    integers become the default float dtype."""
    tensor = as_real_tensor(name, value, default_dtype=True)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    if tensor.dim() != 1:
        raise ValueError(
            f"{name} must be a 1-D tensor (one entry per class), got shape {tuple(tensor.shape)}"
        )
    if finite and tensor.device.type != "meta":
        check_finite_vector(name, tensor)
    return tensor


def as_float_vector(
    name: str,
    value: object,
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """A length-``num_classes`` floating vector (tensor, numpy array or sequence)."""
    tensor = as_real_tensor(name, value)
    if tensor.shape != (num_classes,):
        raise ValueError(
            f"{name} must have shape ({num_classes},) (one entry per class), "
            f"got shape {tuple(tensor.shape)}"
        )
    check_movable(name, tensor, device)
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
    if tracing(tensor):  # finite, >= 0 and sum 1 are values: not checked while tracing
        return tensor.to(dtype)
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(f"prior must be finite and >= 0, got prior={_short(tensor)}")
    total = float(tensor.sum())
    if abs(total - 1.0) > _PRIOR_SUM_TOL:
        raise ValueError(f"prior must sum to 1 (a distribution over classes), got sum={total:.6g}")
    return tensor.to(dtype)


def check_broadcastable(name: str, value: Tensor, shape: torch.Size) -> None:
    """``value`` broadcasts to ``shape`` without changing it (PyTorch's rule for the weights of
    the binary loss), else a ValueError naming both shapes."""
    try:
        result = torch.broadcast_shapes(value.shape, shape)
    except RuntimeError:
        result = None
    if result != shape:
        raise ValueError(
            f"{name} must be broadcastable to the input's shape {tuple(shape)}, "
            f"got shape {tuple(value.shape)}"
        )


def check_float_dtype(name: str, dtype: object) -> torch.dtype:
    """``dtype`` (default: ``torch.get_default_dtype()``) must be a floating torch dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype, got {name}={dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(
            f"{name} must be a floating dtype (smoothed targets are fractions), got {name}={dtype}"
        )
    return dtype


def check_weight(
    weight: object,
    num_classes: int,
    device: torch.device,
    dtype: torch.dtype,
    name: str = "weight",
) -> Tensor | None:
    if weight is None:
        return None
    tensor = as_float_vector(name, weight, num_classes, device, dtype)
    check_finite_vector(name, tensor)
    return tensor


def check_finite_vector(name: str, tensor: Tensor) -> None:
    """Every entry finite (host sync; skipped while :func:`tracing`)."""
    if tensor.numel() == 0 or tracing(tensor):
        return
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        raise ValueError(f"{name} must be finite, got {float(tensor[index])} at class {index}")


def check_class_indices(target: Tensor, num_classes: int, ignore_index: int | None) -> None:
    """Every entry of ``target`` is a class index in [0, K) or ``ignore_index`` (host sync).

    Callers skip it while :func:`tracing` (it would fail there) and must then keep an
    unchecked index from being taken for a class, as with ``validate=False``.
    """
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


def check_unit_interval(name: str, tensor: Tensor, *, traced: bool | None = None) -> None:
    """Binary targets must lie in [0, 1] (host sync; skipped while :func:`tracing`; a caller
    that knows already passes ``traced``)."""
    if tensor.numel() == 0 or (tracing(tensor) if traced is None else traced):
        return
    # One pass (aminmax) and two reads; NaN fails both tests. Detached only where it needs to
    # be (reading a tensor that requires grad warns): every step costs on small inputs.
    low, high = torch.aminmax(tensor.detach() if tensor.requires_grad else tensor)
    if low.item() >= 0 and high.item() <= 1:
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


# --- Vocab-parallel (sharded) arguments: used by labelsmooth.distributed -------------------------


def check_index_target(target: object, batch_shape: Sequence[int], logits_name: str) -> Tensor:
    """Integer class indices whose shape is the logits' shape without the last (class) dim."""
    check_index_dtype(target)
    assert isinstance(target, Tensor)
    if tuple(target.shape) != tuple(batch_shape):
        raise ValueError(
            f"target must have shape {tuple(batch_shape)} ({logits_name} without its last, class "
            f"dimension), got shape {tuple(target.shape)}"
        )
    return target


def check_index_dtype(target: object) -> Tensor:
    """``target`` is a tensor of integer class indices (no probabilities, no bools)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype not in _INTEGER_DTYPES:
        raise TypeError(
            f"target must hold integer class indices (probability targets are not supported "
            f"here), got dtype={target.dtype}"
        )
    return target


def check_shard_vector(
    name: str,
    value: object,
    shard_size: int,
    rank: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:
    """This rank's shard of a length-V class vector (``weight``, ``prior``), or ``None``.

    The shard covers the same classes as the rank's logits, so its length is ``shard_size``.
    """
    if value is None:
        return None
    try:
        return as_float_vector(name, value, shard_size, device, dtype)
    except ValueError as err:
        shape = tuple(value.shape) if isinstance(value, Tensor) else np.shape(value)
        raise ValueError(
            f"{name} must be this rank's shard of shape ({shard_size},) (the classes of its "
            f"local logits, rank {rank}), got shape {tuple(shape)}"
        ) from err


def check_prior_shard(
    prior: object,
    shard_size: int,
    rank: int,
    style: str,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor | None:
    """A shard of a class prior: ``style="uniform"`` only, finite and >= 0.

    That the shards together sum to 1 is checked by :func:`check_prior_total` once their sums
    have been gathered.
    """
    if prior is None:
        return None
    if style != "uniform":
        raise ValueError(
            f"prior= replaces the uniform eps/K and needs style='uniform', got style={style!r}"
        )
    tensor = check_shard_vector("prior", prior, shard_size, rank, device, torch.float64)
    assert tensor is not None
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise ValueError(
            f"prior must be finite and >= 0, got prior={_short(tensor)} on rank {rank}"
        )
    return tensor.to(dtype)


def check_prior_total(total: float) -> None:
    """The prior shards of all ranks together must sum to 1."""
    if abs(total - 1.0) > _PRIOR_SUM_TOL:
        raise ValueError(
            f"prior must sum to 1 over the whole vocabulary (all shards together), "
            f"got sum={total:.6g}"
        )


def check_same_across_ranks(name: str, values: Sequence[object], meaning: str) -> None:
    """Every rank of the group must have passed the same ``name`` (``values`` is per rank)."""
    if any(v != values[0] for v in values):
        listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise ValueError(f"{name} must be the same on every rank ({meaning}), got {listed}")


# --- Linear-head loss arguments: used by labelsmooth.kernels.linear ------------------------------


def check_real(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    strict: bool = False,
    allow_grad: bool = False,
) -> float:
    """A finite real number (a 1-element tensor is accepted), ``>= minimum`` (``>`` if strict).

    A tensor that requires grad (under grad mode) is a TypeError, since reading it as a number
    would silently lose its gradient, unless ``allow_grad`` (a value only reported, such as a
    loss handed to a diagnostic)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
        if value.requires_grad and torch.is_grad_enabled() and not allow_grad:
            raise TypeError(
                f"{name} must be a number, got a tensor that requires grad (its gradient would "
                f"be lost: pass {name}.item(), or detach it)"
            )
        if value.device.type == "meta":
            raise ValueError(f"{name} must be a number, got a tensor on the meta device")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {name}={number}")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {name}={number}")
    return number


def check_linear_head(
    hidden: object,
    weight: object,
    bias: object,
    target: object,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Checks a linear head ``hidden @ weight.T + bias`` against integer class indices.

    ``hidden`` is (..., H) floating (e.g. (N, H) or (B, T, H)), ``weight`` is (V, H) and
    ``bias`` is (V,) or ``None``, all of one dtype and device (as ``F.linear`` needs);
    ``target`` holds integer class indices of shape ``hidden.shape[:-1]``.
    """
    hidden = check_logits(hidden, "hidden")
    weight = check_logits(weight, "weight")
    if hidden.dim() < 1:
        raise ValueError("hidden must have a last (feature) dimension, got a 0-dim tensor")
    if weight.dim() != 2:
        raise ValueError(
            f"weight must be the (V, H) projection matrix, got shape {tuple(weight.shape)}"
        )
    num_classes, features = weight.shape
    if num_classes < 1:
        raise ValueError(
            f"weight must have at least one class (row), got shape {tuple(weight.shape)}"
        )
    if hidden.shape[-1] != features:
        raise ValueError(
            f"hidden must have last dimension H={features} (weight has shape "
            f"{tuple(weight.shape)}), got shape {tuple(hidden.shape)}"
        )
    tensors = [("weight", weight)]
    if bias is not None:
        bias = check_logits(bias, "bias")
        if bias.shape != (num_classes,):
            raise ValueError(
                f"bias must have shape ({num_classes},) (one entry per row of weight), "
                f"got shape {tuple(bias.shape)}"
            )
        tensors.append(("bias", bias))
    for name, tensor in tensors:
        if tensor.dtype != hidden.dtype:
            raise TypeError(
                f"{name} must have the dtype of hidden ({hidden.dtype}), got dtype={tensor.dtype}"
            )
        if tensor.device != hidden.device:
            raise ValueError(
                f"{name} must be on the device of hidden ({hidden.device}), "
                f"got device={tensor.device}"
            )
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype not in _INTEGER_DTYPES:
        raise TypeError(
            f"target must hold integer class indices (probability targets are not supported by "
            f"the linear-head loss), got dtype={target.dtype}"
        )
    if target.shape != hidden.shape[:-1]:
        raise ValueError(
            f"target must have shape {tuple(hidden.shape[:-1])} (hidden without its last, "
            f"feature dimension), got shape {tuple(target.shape)}"
        )
    if target.device != hidden.device:
        raise ValueError(
            f"target must be on the device of hidden ({hidden.device}), got device={target.device}"
        )
    return hidden, weight, bias, target


# --- exclude_classes and weight_mode: used by targets, functional, kernels.linear and nn ------

WEIGHT_MODES = ("pytorch", "sample")


def check_weight_mode(weight_mode: object) -> str:
    """``"pytorch"`` (class weights on every term, as PyTorch) or ``"sample"`` (w[y] per
    element)."""
    return check_choice("weight_mode", weight_mode, WEIGHT_MODES)


def check_exclude_classes(
    value: object,
    num_classes: int | None,
    style: str,
    eps: float | None,
    name: str = "exclude_classes",
) -> tuple[int, ...] | None:
    """Class indices that receive no smoothing mass, returned sorted as a tuple of ints
    (``None`` for ``None`` or an empty sequence).

    A sequence of ints or a 1-D integer tensor (read on the host: it is a setting, like
    ``ignore_index``); every index in [0, K), none twice, and not all classes: ``"uniform"``
    keeps at least one class to spread eps over, ``"others"`` (with eps != 0) at least two
    (the label and one other). With ``"others"`` eps is bounded by (K'-1)/K', K' the number of
    kept classes, as it is by (K-1)/K without exclusion (the label keeps the most mass).
    """
    if value is None:
        return None
    if isinstance(value, Tensor):
        if value.dtype not in _INTEGER_DTYPES:
            raise TypeError(
                f"{name} must hold integer class indices, got a tensor of dtype={value.dtype}"
            )
        if value.dim() != 1:
            raise ValueError(
                f"{name} must be a 1-D tensor (or a sequence) of class indices, "
                f"got shape {tuple(value.shape)}"
            )
        if tracing(value) or value.device.type == "meta":
            raise ValueError(
                f"{name} must be readable on the host (a sequence of ints or an eager tensor), "
                f"got a tensor traced by torch.compile or a torch.func transform, or on the "
                f"meta device"
            )
        items: list[object] = list(value.tolist())
    elif isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray, range)):
        raise TypeError(
            f"{name} must be None, a sequence of ints or a 1-D integer tensor, got {value!r}"
        )
    else:
        if isinstance(value, np.ndarray) and value.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D array (or a sequence) of class indices, "
                f"got shape {value.shape}"
            )
        items = list(value)
    indices: list[int] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise TypeError(f"{name} must hold ints (class indices), got {item!r} in {name}")
        index = int(item)
        if num_classes is None:
            if index < 0:
                raise ValueError(f"{name} must hold class indices >= 0, got {index}")
        elif not 0 <= index < num_classes:
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes - 1}] "
                f"(num_classes={num_classes}), got {index}"
            )
        if index in indices:
            raise ValueError(f"{name} must not repeat a class, got {index} twice")
        indices.append(index)
    if not indices:
        return None
    if num_classes is None:
        return tuple(sorted(indices))
    kept = num_classes - len(indices)
    if kept < 1:
        raise ValueError(
            f"{name} must leave at least one class to receive the smoothing mass, got all "
            f"{num_classes} classes"
        )
    if style == "others" and eps is not None and eps != 0:
        if kept < 2:
            raise ValueError(
                f"style='others' spreads eps over the other classes that are not excluded and "
                f"needs at least two classes left by {name}, got {kept} of "
                f"num_classes={num_classes} (eps={eps})"
            )
        bound = (kept - 1) / kept
        if eps > bound * (1 + _BOUND_SLACK) + _BOUND_SLACK:
            raise ValueError(
                f"eps must be <= {bound:.6g} for style='others' with {kept} classes left by "
                f"{name} (num_classes={num_classes}), got eps={eps}"
            )
    return tuple(sorted(indices))


def check_excluded_labels(
    target: Tensor, valid: Tensor | None, exclude: tuple[int, ...], name: str = "exclude_classes"
) -> None:
    """With ``style="others"`` no non-ignored label may be an excluded class (host sync):
    the row's target would not be 1 - eps on its label and eps/(K'-1) elsewhere."""
    if target.numel() == 0:
        return
    excluded = torch.tensor(exclude, dtype=torch.int64, device=target.device)
    hit = torch.isin(target, excluded)
    if valid is not None:
        hit &= valid
    if bool(hit.any()):
        bad = int(target[hit].flatten()[0])
        raise ValueError(
            f"target contains class {bad}, which is in {name}={list(exclude)}: with "
            f"style='others' a label must be a class that is smoothed (ignore those elements "
            f"with ignore_index={bad}, or use style='uniform', where this is defined)"
        )


def check_prior_on_kept(prior: Tensor | None, exclude: tuple[int, ...] | None) -> None:
    """With ``exclude_classes`` a prior is renormalised over the kept classes, so it must put
    some mass on them (host sync; skipped while :func:`tracing`)."""
    if prior is None or not exclude or tracing(prior):
        return
    keep = torch.ones(prior.shape[0], dtype=torch.bool, device=prior.device)
    keep[list(exclude)] = False
    if not float(prior[keep].sum()) > 0:
        raise ValueError(
            f"prior must put some mass on the classes not in exclude_classes={list(exclude)} "
            f"(it is renormalised over them), got prior={_short(prior)}"
        )


def is_eps_rows(eps: object) -> bool:
    """Whether ``eps`` is a tensor of per-element rates: more than one element, or one element
    that requires grad under grad mode (a learnt rate shared by every element, whose gradient
    :func:`check_real` would lose) or that is traced (``torch.compile``, ``torch.func``: its
    value cannot be read). Any other 0-dim or 1-element tensor is a number."""
    if not isinstance(eps, Tensor):
        return False
    return eps.numel() != 1 or (eps.requires_grad and torch.is_grad_enabled()) or tracing(eps)


def check_eps_rows(
    eps: Tensor,
    batch_shape: Sequence[int],
    num_classes: int,
    style: str,
    *,
    kl: bool,
    exclude: tuple[int, ...] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Per-element smoothing rates: a floating tensor of the batch shape, returned flat
    (M,) in ``dtype``. Every rate must satisfy the range :func:`check_eps` gives a number
    (``"others"`` with K' kept classes: <= (K'-1)/K'; >= 0 with ``kl``), values checked on
    the host except while :func:`tracing`.
    """
    if not eps.is_floating_point():
        raise TypeError(
            f"eps must be a number or a floating tensor of rates, got dtype={eps.dtype}"
        )
    if eps.numel() == 1 and tuple(eps.shape) != tuple(batch_shape):
        eps = eps.reshape(()).expand(tuple(batch_shape))  # one learnt rate for every element
    if tuple(eps.shape) != tuple(batch_shape):
        raise ValueError(
            f"eps must be a number or a tensor of per-element rates of the batch shape "
            f"{tuple(batch_shape)} (the target's shape), got shape {tuple(eps.shape)}"
        )
    check_movable("eps", eps, device)
    rows = eps.reshape(-1).to(device=device, dtype=dtype)
    kept = num_classes - (len(exclude) if exclude else 0)
    if style == "others" and kept < 2:
        raise ValueError(
            f"style='others' spreads eps over the other classes and needs at least two (not "
            f"excluded) classes for per-element rates, got {kept}"
        )
    if rows.numel() == 0 or tracing(eps):
        return rows
    values = rows.detach()
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"eps must be finite, got a rate of {float(values[~torch.isfinite(values)][0])}"
        )
    bound = eps_upper_bound(kept, style)
    high = float(values.max())
    if high > bound * (1 + _BOUND_SLACK) + _BOUND_SLACK:
        what = f"num_classes={num_classes}" + (f" ({kept} not excluded)" if exclude else "")
        raise ValueError(
            f"eps must be <= {bound:.6g} for style={style!r} with {what}, got a rate of {high}"
        )
    if kl and float(values.min()) < 0:
        raise ValueError(
            f"eps must be >= 0 with kl=True (the smoothed target must be a distribution), "
            f"got a rate of {float(values.min())}"
        )
    return rows
