r"""Label smoothing for Hugging Face ``transformers.Trainer``.

Three helpers, usable with any ``transformers`` version whose ``Trainer`` takes
``compute_loss_func`` (4.46 and later; tested with 5.x):

* :func:`loss` -- ``Trainer(..., compute_loss_func=loss(0.1))``: the label-smoothed loss of the
  model's logits, with the causal shift, ``ignore_index`` and ``num_items_in_batch``.
* :func:`causal_lm_loss_without_logits` and :class:`LinearHeadTrainer` -- the same loss for a
  causal LM computed by :func:`labelsmooth.linear_cross_entropy` from the last hidden state and
  the ``lm_head`` weight, never holding the (tokens, vocabulary) logits.
* :func:`compute_metrics` -- ``Trainer(..., compute_metrics=...)``: accuracy, NLL and ECE of the
  evaluation predictions, padding and causal shift handled.

**Relation to ``TrainingArguments(label_smoothing_factor=eps)``.** The Trainer's own
``LabelSmoother`` computes, per non-ignored token, ``(1-eps)*(-log p_y) + (eps/V)*sum_c
(-log p_c)`` -- the ``"uniform"`` style -- shifts the labels for models of the causal-LM auto
class, and divides the sum over tokens by ``num_items_in_batch`` when the Trainer passes it (the
number of non-ignored, shifted labels in the whole accumulated batch), else by the number of
non-ignored tokens of the micro-batch. ``loss(eps)`` (``style="uniform"``, no ``z_loss`` or
``softcap``) computes the same number with the same normalisation, so training with
``compute_loss_func=loss(eps)`` equals training with ``label_smoothing_factor=eps`` (tested to
float32 rounding on logged losses and final weights, with and without gradient accumulation).

Which count the Trainer passes is its business, and both paths use it as given. For a model whose
``loss_type`` maps to ``ForCausalLMLoss`` (``LlamaForCausalLM`` and the other ``*ForCausalLM``
classes) ``transformers`` 5.x counts the shifted labels, ``labels[..., 1:] != -100``, so the loss is
the mean over the predicted tokens. ``GPT2LMHeadModel`` has no ``loss_type`` (its class name does
not end in ``ForCausalLM``), so the Trainer (5.24) counts the unshifted labels, one more per row
whose first label is not ignored: the loss of both paths is then the token sum divided by that
larger count (about (T-1)/T of the mean), still the same for every accumulation setting.
What ``loss`` adds: ``style="others"`` (fairseq's convention), ``z_loss``, ``softcap``, any
``ignore_index``, the fused kernels (``impl``), and the linear head without logits.

Only ``torch`` is needed to import this module; :class:`LinearHeadTrainer` imports
``transformers`` when first accessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import metrics as _metrics
from ..functional import cross_entropy, linear_cross_entropy

__all__ = [
    "LinearHeadTrainer",  # noqa: F822 (built on first access by __getattr__: imports transformers)
    "causal_lm_loss_without_logits",
    "compute_metrics",
    "is_causal_output",
    "loss",
]


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _logits_of(outputs: Any) -> Tensor:
    """The logits of a model output: ``outputs["logits"]`` or ``outputs[0]`` (HF's rule)."""
    if isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(
                f"outputs: expected a mapping with a 'logits' entry, got keys {list(outputs)}"
            )
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    raise TypeError(
        "outputs: expected a model output with 'logits', a tuple whose first element is the "
        f"logits, or a tensor; got {type(outputs).__name__}"
    )


def is_causal_output(outputs: Any) -> bool | None:
    """Whether a model output comes from a causal LM, by its type; ``None`` if it cannot tell.

    ``True`` for ``transformers`` outputs whose class name contains ``"CausalLMOutput"``
    (``CausalLMOutputWithPast``, ``CausalLMOutputWithCrossAttentions``,
    ``MoeCausalLMOutputWithPast``, ``LlavaCausalLMOutputWithPast``, ...), the outputs of the
    models that HF's own ``LabelSmoother`` shifts. ``False`` for any other ``ModelOutput``
    (``Seq2SeqLMOutput``, ``TokenClassifierOutput``, ``MaskedLMOutput``,
    ``SequenceClassifierOutput``, ...). ``None`` for plain tensors, tuples and dicts.
    """
    for cls in type(outputs).__mro__:
        if cls.__name__ == "ModelOutput":
            return "CausalLMOutput" in type(outputs).__name__
    return None


def _shifted_labels(labels: Tensor, ignore_index: int) -> Tensor:
    """``labels[..., 1:]`` padded at the end with ``ignore_index``: position t predicts t+1.

    Same shape as ``labels``, so the logits are used whole, without a shifted copy (the trick
    of HF's ``ForCausalLMLoss``); the last position of each row is ignored.
    """
    return F.pad(labels[..., 1:], (0, 1), value=ignore_index)


def _normalise(total: Tensor, num_items_in_batch: Any, labels: Tensor, ignore_index: int) -> Tensor:
    """Divides a summed loss by ``num_items_in_batch``, or by the micro-batch's active tokens."""
    if num_items_in_batch is None:
        count = labels.ne(ignore_index).sum()
        # An all-padding micro-batch gives 0 (its sum is 0), not nan.
        return total / count.clamp(min=1).to(total.dtype)
    if isinstance(num_items_in_batch, Tensor):
        return total / num_items_in_batch.to(device=total.device, dtype=total.dtype)
    return total / float(num_items_in_batch)


# --------------------------------------------------------------------------------------------
# Loss from the logits
# --------------------------------------------------------------------------------------------


def loss(
    eps: float = 0.1,
    *,
    style: str = "uniform",
    causal: bool | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str = "auto",
) -> Callable[..., Tensor]:
    r"""A ``compute_loss_func`` for ``transformers.Trainer``: label-smoothed cross-entropy.

    ``Trainer(model, args, compute_loss_func=ls.integrations.hf.loss(0.1), ...)``. The Trainer
    calls ``fn(outputs, labels, num_items_in_batch=n)``; ``fn`` takes the logits
    (``outputs.logits``, or ``outputs[0]``), class dimension last, and returns

    .. math:: \frac{1}{n} \sum_{i:\,y_i \ne \text{ignore}} \ell_\epsilon(z_i, y_i)

    with :math:`\ell_\epsilon` the per-token loss of :func:`labelsmooth.cross_entropy`
    (``style``, ``z_loss``, ``softcap``), and :math:`n` = ``num_items_in_batch`` when given --
    the Trainer counts the non-ignored (shifted, for causal LMs) labels of the whole accumulated
    batch, so a step with gradient accumulation equals the same step without it -- else the
    number of non-ignored labels of this call (a plain mean; 0 for an all-padding batch).

    Causal shift: position t is scored against ``labels[..., t+1]`` (HF's ``ForCausalLMLoss``
    and ``LabelSmoother(shift_labels=True)``; the last position is dropped). Whether to shift:

    * ``causal=True`` / ``causal=False``: as said;
    * ``causal=None`` (default): shift when the outputs are a ``transformers``
      ``*CausalLMOutput*`` (see :func:`is_causal_output`), not for any other ``ModelOutput``
      (sequence/token classification, masked LM, encoder-decoder, whose labels are already
      aligned); 2-D logits (sequence classification) are never shifted; for 3-D or larger
      logits in a plain tensor, tuple or dict it raises ``ValueError``: pass ``causal``.

    With ``style="uniform"`` and no ``z_loss``/``softcap`` this is the loss of
    ``TrainingArguments(label_smoothing_factor=eps)`` (HF's ``LabelSmoother``), same
    normalisation included.

    Args:
        eps: smoothing rate (see :func:`labelsmooth.cross_entropy` for the valid range).
        style: ``"uniform"`` (HF, PyTorch) or ``"others"`` (fairseq, Megatron).
        causal: shift the labels by one (see above).
        ignore_index: label value that contributes nothing (HF's padding label is -100).
        z_loss: coefficient of :math:`\mathrm{lse}^2` per token (PaLM uses 1e-4).
        softcap: ``s * tanh(z / s)`` on the logits before the softmax; only for models that do
            not already cap their logits (Gemma 2 caps them itself when
            ``config.final_logit_softcapping`` is set).
        impl: the kernel of :func:`labelsmooth.cross_entropy`.

    Returns:
        ``fn(outputs, labels, num_items_in_batch=None) -> Tensor``, a float32 scalar.

    Example:
        >>> import torch
        >>> fn = loss(0.1, causal=True)
        >>> logits, labels = torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
        >>> value = fn({"logits": logits}, labels)
        >>> ref = torch.nn.functional.cross_entropy(
        ...     logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), label_smoothing=0.1)
        >>> torch.allclose(value, ref)
        True
    """
    if causal is not None and not isinstance(causal, bool):
        raise TypeError(f"causal: expected True, False or None, got {causal!r}")
    options = dict(
        style=style, ignore_index=ignore_index, z_loss=z_loss, softcap=softcap, impl=impl
    )
    # Fail on bad options now, not at the first training step (the kernel is checked at the
    # first call, on the logits' device; the eps range again against the real vocabulary).
    cross_entropy(
        torch.zeros(1, 1024),
        torch.zeros(1, dtype=torch.long),
        eps,
        **{**options, "impl": "reference"},
    )

    def compute_loss_func(outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        if labels is None:
            raise ValueError(
                "labels: the Trainer passed None; the inputs need a 'labels' entry "
                "(e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False))"
            )
        logits = _logits_of(outputs)
        shift = causal
        if shift is None:
            if logits.dim() <= 2:
                shift = False
            else:
                shift = is_causal_output(outputs)
                if shift is None:
                    raise ValueError(
                        f"causal: cannot tell from a {type(outputs).__name__} with logits of shape "
                        f"{tuple(logits.shape)} whether the labels must be shifted; pass "
                        "causal=True (causal LM) or causal=False (labels aligned with the logits)"
                    )
        target = _shifted_labels(labels, ignore_index) if shift else labels
        if target.shape != logits.shape[:-1]:
            raise ValueError(
                f"labels: expected shape {tuple(logits.shape[:-1])} (the logits' shape without "
                f"the class dimension), got {tuple(labels.shape)}"
            )
        total = cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            target.reshape(-1),
            eps,
            reduction="sum",
            **options,
        )
        return _normalise(total, num_items_in_batch, target, ignore_index)

    compute_loss_func.__doc__ = f"labelsmooth loss(eps={eps!r}, style={style!r}, causal={causal!r})"
    return compute_loss_func


# --------------------------------------------------------------------------------------------
# Linear head without logits
# --------------------------------------------------------------------------------------------

_UNSUPPORTED_SCALES = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def _head_of(model: torch.nn.Module) -> tuple[torch.nn.Module, Tensor, Tensor | None, float | None]:
    """(body, head weight, head bias, softcap) of a causal LM; raises if it is not plain."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        head = getattr(model, "lm_head", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"model: expected a causal LM whose output embedding (lm_head) is an nn.Linear, "
            f"got {type(head).__name__} on {type(model).__name__}"
        )
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        for name in ("model", "transformer"):
            body = getattr(model, name, None)
            if isinstance(body, torch.nn.Module):
                break
        else:
            raise ValueError(
                f"model: cannot find the body of {type(model).__name__} "
                "(expected base_model, .model or .transformer)"
            )
    config = getattr(model, "config", None)
    for attr in _UNSUPPORTED_SCALES:
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ValueError(
                f"model: config.{attr}={value!r} rescales the logits, which the linear path "
                "does not reproduce; use loss() on the logits instead"
            )
    return body, head.weight, head.bias, getattr(config, "final_logit_softcapping", None)


def causal_lm_loss_without_logits(
    model: torch.nn.Module,
    inputs: Mapping[str, Any],
    eps: float = 0.1,
    *,
    num_items_in_batch: Any = None,
    style: str = "uniform",
    ignore_index: int = -100,
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str = "auto",
    return_hidden: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""The causal-LM loss of :func:`loss` (``causal=True``) without the logits.

    Runs the model's body (``model.base_model``: ``model.transformer`` for GPT-2,
    ``model.model`` for Llama, Mistral, Qwen, ...) on ``inputs`` without ``labels``, and applies
    :func:`labelsmooth.linear_cross_entropy` to its last hidden state, the ``lm_head`` weight
    (and bias, if any) and the shifted labels: the same loss and gradients as
    ``loss(eps, causal=True)(model(**inputs), inputs["labels"], num_items_in_batch)``, while the
    (batch * seq, vocabulary) logits are never held (tied embeddings, as GPT-2's, are fine: the
    gradient reaches the shared weight through both uses).

    A model whose config sets ``final_logit_softcapping`` (Gemma 2) gets that cap, as its own
    forward applies it; ``softcap`` may then be left ``None`` (passing a different value raises
    ``ValueError``). Models that rescale their logits (``config.logit_scale``,
    ``logits_scaling``) are refused with ``ValueError``: use :func:`loss` for them.

    Args:
        model: a ``*ForCausalLM`` model (or any module with ``base_model``/``model``/
            ``transformer`` returning ``last_hidden_state`` and an ``nn.Linear`` ``lm_head``).
        inputs: the batch, with ``labels`` (B, T) and the body's inputs (``input_ids``,
            ``attention_mask``, ...).
        eps, style, ignore_index, z_loss, impl: as :func:`loss`.
        num_items_in_batch: divide the summed loss by this (the Trainer's count); ``None``:
            mean over the non-ignored shifted labels.
        softcap: see above.
        return_hidden: also return the last hidden state (B, T, H).

    Returns:
        The loss, a float32 scalar, or ``(loss, hidden)``.
    """
    body, weight, bias, model_cap = _head_of(model)
    if model_cap is not None:
        if softcap is not None and float(softcap) != float(model_cap):
            raise ValueError(
                f"softcap: the model caps its logits at {model_cap!r} "
                f"(config.final_logit_softcapping); got softcap={softcap!r}"
            )
        softcap = model_cap
    if "labels" not in inputs or inputs["labels"] is None:
        raise ValueError("inputs: expected a 'labels' entry (B, T)")
    labels = inputs["labels"]
    body_inputs = {
        k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch", "shift_labels")
    }
    outputs = body(**body_inputs)
    hidden = outputs.last_hidden_state if hasattr(outputs, "last_hidden_state") else outputs[0]
    target = _shifted_labels(labels, ignore_index)
    if target.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {tuple(hidden.shape[:-1])}, got {tuple(labels.shape)}"
        )
    total = linear_cross_entropy(
        hidden,
        weight,
        target,
        eps,
        bias=bias,
        style=style,
        ignore_index=ignore_index,
        reduction="sum",
        impl=impl,
        z_loss=z_loss,
        softcap=softcap,
    )
    value = _normalise(total, num_items_in_batch, target, ignore_index)
    return (value, hidden) if return_hidden else value


def _make_linear_head_trainer() -> type:
    from transformers import Trainer
    from transformers.modeling_outputs import CausalLMOutput

    class LinearHeadTrainer(Trainer):
        r"""``transformers.Trainer`` that trains a causal LM with the linear-head loss.

        ``LinearHeadTrainer(model, args, ..., eps=0.1, style="uniform", ignore_index=-100,
        z_loss=0.0, softcap=None, impl="auto")``: every other argument is the Trainer's.
        ``compute_loss`` uses :func:`causal_lm_loss_without_logits`, so training never holds
        the logits; the loss and gradients are those of
        ``Trainer(compute_loss_func=loss(eps, causal=True))`` (and of
        ``label_smoothing_factor=eps`` for ``style="uniform"``). ``num_items_in_batch`` is
        used as the Trainer passes it (it counts the shifted labels for causal LMs, whose
        forward takes ``**kwargs``), so gradient accumulation is exact. In evaluation the
        logits are computed from the hidden state (for ``compute_metrics``) unless the
        Trainer asks for the loss only (``prediction_loss_only``).
        """

        def __init__(
            self,
            *args: Any,
            eps: float = 0.1,
            style: str = "uniform",
            ignore_index: int = -100,
            z_loss: float = 0.0,
            softcap: float | None = None,
            impl: str = "auto",
            **kwargs: Any,
        ) -> None:
            if kwargs.get("compute_loss_func") is not None:
                raise ValueError(
                    "compute_loss_func: LinearHeadTrainer computes its own loss; drop it"
                )
            super().__init__(*args, **kwargs)
            # Fail on bad options now, not at the first step.
            loss(eps, style=style, ignore_index=ignore_index, z_loss=z_loss, impl="reference")
            self.ls_options = dict(
                eps=eps,
                style=style,
                ignore_index=ignore_index,
                z_loss=z_loss,
                softcap=softcap,
                impl=impl,
            )
            self._ls_loss_only = False

        def prediction_step(
            self,
            model: torch.nn.Module,
            inputs: dict[str, Any],
            prediction_loss_only: bool,
            ignore_keys: list[str] | None = None,
        ) -> Any:
            self._ls_loss_only = prediction_loss_only
            try:
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
            finally:
                self._ls_loss_only = False

        def compute_loss(
            self,
            model: torch.nn.Module,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if "labels" not in inputs:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            unwrapped = self.accelerator.unwrap_model(model)
            value, hidden = causal_lm_loss_without_logits(
                unwrapped,
                inputs,
                num_items_in_batch=num_items_in_batch,
                return_hidden=True,
                **self.ls_options,
            )
            # As Trainer.compute_loss: a loss normalised by the global token count is multiplied
            # back by the number of processes, since DDP averages the gradients.
            if (
                getattr(self.args, "average_tokens_across_devices", False)
                and self.model_accepts_loss_kwargs
                and num_items_in_batch is not None
            ):
                tp = self.get_tp_size() if hasattr(self, "get_tp_size") else 1
                value = value * (self.accelerator.num_processes // tp)
            if not return_outputs:
                return value
            logits = None
            if not self._ls_loss_only:
                with torch.no_grad():
                    _, weight, bias, cap = _head_of(unwrapped)
                    logits = F.linear(hidden, weight, bias)
                    cap = cap if cap is not None else self.ls_options["softcap"]
                    if cap is not None:
                        logits = cap * torch.tanh(logits / cap)
            return value, CausalLMOutput(loss=value, logits=logits)

    LinearHeadTrainer.__module__ = __name__
    LinearHeadTrainer.__qualname__ = "LinearHeadTrainer"
    return LinearHeadTrainer


_LAZY: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "LinearHeadTrainer":
        if name not in _LAZY:
            _LAZY[name] = _make_linear_head_trainer()
        return _LAZY[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def compute_metrics(
    eval_pred: Any,
    *,
    causal: bool | None = None,
    ignore_index: int = -100,
    n_bins: int = 15,
) -> dict[str, float]:
    r"""Calibration metrics of a ``Trainer`` evaluation: ``{"accuracy", "nll", "ece", "count"}``.

    ``Trainer(..., compute_metrics=ls.integrations.hf.compute_metrics)`` for classification;
    ``functools.partial(compute_metrics, causal=True)`` for a causal LM (token level). Takes an
    ``EvalPrediction`` (or a ``(predictions, label_ids)`` pair) whose predictions are the logits
    (class dimension last; a tuple's first element), drops the positions whose label is
    ``ignore_index`` -- HF's padding, also what the Trainer fills in when it concatenates
    batches of different lengths -- after the causal shift (position t scored against label
    t+1), and returns, over the remaining N positions, the top-1 ``accuracy``, the mean
    ``nll`` (:func:`labelsmooth.metrics.negative_log_likelihood`), the ``ece`` with ``n_bins``
    equal-width bins (:func:`labelsmooth.metrics.expected_calibration_error`), all computed in
    float64, and ``count`` = N. With N = 0 the three metrics are nan.

    ``causal``: 2-D logits are never shifted; for 3-D or larger logits it must be given
    (``True``: causal LM; ``False``: token classification, labels aligned), else ``ValueError``:
    an ``EvalPrediction`` does not say which model produced it.

    Memory: the logits of the whole evaluation set are kept by the Trainer; for a large
    vocabulary pass ``preprocess_logits_for_metrics`` to keep fewer, or evaluate on fewer tokens.
    """
    if isinstance(eval_pred, (tuple, list)):
        predictions, labels = eval_pred[0], eval_pred[1]
    else:
        predictions, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    if isinstance(labels, (tuple, list)):
        labels = labels[0]
    logits = torch.as_tensor(np.asarray(predictions), dtype=torch.float64)
    target = torch.as_tensor(np.asarray(labels))
    if target.is_floating_point():
        raise TypeError(f"label_ids: expected integer class indices, got dtype {target.dtype}")
    target = target.long()
    if logits.dim() > 2:
        if causal is None:
            raise ValueError(
                f"causal: predictions of shape {tuple(logits.shape)}; pass causal=True (causal LM, "
                "labels shifted by one) or causal=False (labels aligned), e.g. "
                "functools.partial(compute_metrics, causal=True)"
            )
        if causal:
            target = _shifted_labels(target, ignore_index)
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"label_ids: expected shape {tuple(logits.shape[:-1])} (the predictions' shape "
            f"without the class dimension), got {tuple(labels.shape)}"
        )
    keep = target.ne(ignore_index)
    logits, target = logits[keep], target[keep]
    count = int(target.numel())
    if count == 0:
        nan = float("nan")
        return {"accuracy": nan, "nll": nan, "ece": nan, "count": 0}
    probs = torch.softmax(logits, dim=-1)
    accuracy = float(logits.argmax(dim=-1).eq(target).double().mean())
    return {
        "accuracy": accuracy,
        "nll": _metrics.negative_log_likelihood(probs, target),
        "ece": _metrics.expected_calibration_error(probs, target, n_bins=n_bins),
        "count": count,
    }
