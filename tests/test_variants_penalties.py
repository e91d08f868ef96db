"""Confidence penalty, margin-based label smoothing, label relaxation and MaxSup.

Each loss is compared, loss and gradient, with its authors' reference code, typed out below as
a test-local function (the repository and file it restates are named in its comment).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.autograd import gradcheck
from torch.testing import assert_close

from labelsmooth.variants.confidence_penalty import ConfidencePenaltyLoss, confidence_penalty
from labelsmooth.variants.label_relaxation import LabelRelaxationLoss, label_relaxation
from labelsmooth.variants.margin_label_smoothing import (
    MarginLabelSmoothingLoss,
    margin_label_smoothing,
)
from labelsmooth.variants.maxsup import MaxSupLoss, maxsup

# --- The authors' reference code, typed out (for (N, C) logits and class indices) ---------------


def ref_keras_confidence_penalty(logits, target, beta):
    # github.com/julilien/LabelRelaxation, legacy/lr/losses/conf_penalty_loss.py (Keras), the
    # baseline of the label-relaxation paper. K.epsilon() = 1e-7; Keras averages over the
    # batch. NB: it returns -(sum y log p - beta H) = CE + beta H, the opposite sign of the paper.
    eps = 1e-7
    y_pred = logits.softmax(-1).clamp(eps, 1.0 - eps)
    y_true = F.one_hot(target, logits.shape[-1]).to(logits.dtype)
    entropy = -(y_pred * y_pred.log()).sum(-1)
    loss = (y_true * y_pred.log()).sum(-1) - beta * entropy
    return (-loss).mean()


def ref_netcal_confidence_penalty(probs, weight, threshold):
    # github.com/EFS-OpenSource/calibration-framework, netcal/regularization/
    # ConfidencePenalty.py, function confidence_penalty (numpy there, torch here): the
    # thresholded penalty term alone, with the sign as printed in the paper.
    eps = torch.finfo(torch.float32).eps
    confidence = probs.clamp(eps, 1.0 - eps)
    sample_entropy = -(confidence * confidence.log()).sum(-1)
    sample_entropy = (threshold - sample_entropy).clamp_min(0.0)
    return weight * -sample_entropy.mean()


def ref_mbls_penalty_entropy(inputs, targets, alpha):
    # github.com/by-liu/MbLS, calibrate/losses/penalty_entropy.py, PenaltyEntropy.forward
    # (EPS = 1e-10 in calibrate/utils/constants.py): the entropy is *averaged* over classes.
    loss_ce = F.cross_entropy(inputs, targets)
    prob = F.log_softmax(inputs, dim=1).exp()
    prob = torch.clamp(prob, 1e-10, 1.0 - 1e-10)
    ent = -prob * torch.log(prob)
    return loss_ce - alpha * ent.mean()


def ref_logit_margin_l1(inputs, targets, margin=10.0, alpha=0.1, ignore_index=-100):
    # github.com/by-liu/MbLS, calibrate/losses/logit_margin_l1.py, LogitMarginL1.forward
    # (without the alpha schedule, which is off by default).
    if inputs.dim() > 2:
        inputs = inputs.view(inputs.size(0), inputs.size(1), -1)
        inputs = inputs.transpose(1, 2)
        inputs = inputs.contiguous().view(-1, inputs.size(2))
        targets = targets.view(-1)
    if ignore_index >= 0:
        index = torch.nonzero(targets != ignore_index).squeeze()
        inputs = inputs[index, :]
        targets = targets[index]
    loss_ce = F.cross_entropy(inputs, targets)
    max_values = inputs.max(dim=1).values.unsqueeze(dim=1).repeat(1, inputs.shape[1])
    diff = max_values - inputs
    loss_margin = F.relu(diff - margin).mean()
    return loss_ce + alpha * loss_margin


def ref_label_relaxation(pred, target, alpha=0.1, detach=True):
    # github.com/julilien/LabelRelaxation, lr_torch/lr_torch.py, LabelRelaxationLoss.forward
    # (logits_provided=True, one_hot_encode_trgts=True). detach=False drops its
    # torch.no_grad(), as the authors' Keras version lr/losses/lr_loss.py does (no
    # stop_gradient there).
    pred = pred.softmax(dim=-1)
    target = F.one_hot(target, num_classes=pred.shape[-1])
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
        sum_y_hat_prime = torch.sum((torch.ones_like(target) - target) * pred, dim=-1)
        pred_hat = alpha * pred / torch.unsqueeze(sum_y_hat_prime, dim=-1)
        target_credal = torch.where(target > 0.1, torch.ones_like(target) - alpha, pred_hat)
    divergence = torch.sum(
        F.kl_div(pred.log(), target_credal, log_target=False, reduction="none"), dim=-1
    )
    pred = torch.sum(pred * target, dim=-1)
    result = torch.where(torch.gt(pred, 1.0 - alpha), torch.zeros_like(divergence), divergence)
    return torch.mean(result)


def ref_maxsup(logits, labels, smoothing=0.1):
    # github.com/ZhouYuxuanYX/Maximum-Suppression-Regularization, Conv/ffcv/losses.py,
    # MaxSuppression.forward at a fixed lambda (the schedule runs 0.1 -> 0.2 over training).
    ce_loss = F.cross_entropy(logits, labels, reduction="mean")
    z_max = torch.max(logits, dim=1, keepdim=True)[0]
    z_mean = torch.mean(logits, dim=1, keepdim=True)
    aux_loss = smoothing * (z_max - z_mean)
    return ce_loss + aux_loss.mean()


def ref_maxsup_topk(x, target, lam=0.1):
    # same repository, LT/loss/MAXsupLoss.py, MaxSupLoss.forward (topk(1) for the maximum).
    loss_ce = F.cross_entropy(x, target)
    z_top1 = x.topk(1, dim=-1)[0]
    reg = z_top1 - x.mean(dim=-1, keepdim=True)
    return loss_ce + lam * reg.mean()


# --- One entry per loss: ours (functional, module) and its reference ----------------------------

VARIANTS = {
    "confidence_penalty": (
        lambda x, y, **kw: confidence_penalty(x, y, 0.3, **kw),
        lambda **kw: ConfidencePenaltyLoss(0.3, **kw),
        lambda x, y: ref_mbls_penalty_entropy(x, y, 0.3 * x.shape[-1]),
    ),
    "margin_label_smoothing": (
        lambda x, y, **kw: margin_label_smoothing(x, y, 1.5, 0.2, **kw),
        lambda **kw: MarginLabelSmoothingLoss(1.5, 0.2, **kw),
        lambda x, y: ref_logit_margin_l1(x, y, margin=1.5, alpha=0.2),
    ),
    "label_relaxation": (
        lambda x, y, **kw: label_relaxation(x, y, 0.25, **kw),
        lambda **kw: LabelRelaxationLoss(0.25, **kw),
        lambda x, y: ref_label_relaxation(x, y, 0.25),
    ),
    "maxsup": (
        lambda x, y, **kw: maxsup(x, y, 0.15, **kw),
        lambda **kw: MaxSupLoss(0.15, **kw),
        lambda x, y: ref_maxsup(x, y, 0.15),
    ),
}
NAMES = list(VARIANTS)
FUNCTIONS = {
    "confidence_penalty": confidence_penalty,
    "margin_label_smoothing": margin_label_smoothing,
    "label_relaxation": label_relaxation,
    "maxsup": maxsup,
}
SHAPES = [(8, 5), (3, 7, 4), (2, 4, 3, 2), (6, 2)]


def _inputs(shape, dtype, scale=2.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    if len(shape) == 1:  # a single element: (C,) logits, a 0-dim target
        target = torch.randint(0, shape[0], (), generator=generator)
    else:
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    return logits.requires_grad_(), target


def _as_rows(logits, target):
    """(N, C, d1, ...) -> (N * d1 * ..., C) rows and their targets (what the references take)."""
    return logits.movedim(1, -1).reshape(-1, logits.shape[1]), target.reshape(-1)


def _loss_and_grad(fn, logits, target):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x, target)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# --- Parity with the reference code ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_code(name, shape, dtype):
    functional, module, reference = VARIANTS[name]
    logits, target = _inputs(shape, dtype)
    expected, expected_grad = _loss_and_grad(
        lambda x, y: reference(*_as_rows(x, y)), logits, target
    )
    for ours in (functional, module()):
        loss, grad = _loss_and_grad(ours, logits, target)
        assert loss.dtype == dtype
        assert_close(loss, expected)
        assert_close(grad, expected_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_maxsup_matches_topk_reference(dtype):
    logits, target = _inputs((16, 9), dtype, seed=3)
    expected = _loss_and_grad(lambda x, y: ref_maxsup_topk(x, y, 0.2), logits, target)
    assert_close(_loss_and_grad(lambda x, y: maxsup(x, y, 0.2), logits, target), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_label_relaxation_gradient_with_and_without_detached_credal_target(dtype):
    # The PyTorch reference detaches p_r, the Keras one does not: the gradients agree, since
    # p_r minimises the divergence over the credal set. Ours is the closed form of both.
    logits, target = _inputs((32, 6), dtype, scale=1.5, seed=4)
    ours = _loss_and_grad(lambda x, y: label_relaxation(x, y, 0.2), logits, target)
    for detach in (True, False):
        ref = _loss_and_grad(
            lambda x, y, detach=detach: ref_label_relaxation(x, y, 0.2, detach), logits, target
        )
        assert_close(ours, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_margin_label_smoothing_matches_reference_with_nonnegative_ignore_index(dtype):
    # The reference drops ignored rows only for ignore_index >= 0 (e.g. 255 in segmentation).
    logits, target = _inputs((3, 6, 5, 4), dtype, scale=3.0, seed=5)
    target[0, :2] = 255
    target[2, 4] = 255
    expected = _loss_and_grad(
        lambda x, y: ref_logit_margin_l1(x, y, 2.0, 0.3, ignore_index=255), logits, target
    )
    ours = _loss_and_grad(
        lambda x, y: margin_label_smoothing(x, y, 2.0, 0.3, ignore_index=255), logits, target
    )
    assert_close(ours, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_confidence_penalty_against_the_keras_baseline_of_label_relaxation(dtype):
    # That code sums the entropy over classes, as the paper does, but adds it (CE + beta H):
    # with its sign flipped it is ours.
    logits, target = _inputs((10, 8), dtype, seed=6)
    expected = _loss_and_grad(lambda x, y: ref_keras_confidence_penalty(x, y, -0.4), logits, target)
    ours = _loss_and_grad(lambda x, y: confidence_penalty(x, y, 0.4), logits, target)
    assert_close(ours, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_confidence_penalty_threshold_is_the_hinge_with_the_penalising_sign(dtype):
    # netcal's thresholded term (the paper's printed formula, -beta * max(0, Γ - H)) *rewards*
    # low entropy; ours adds +beta * max(0, Γ - H): the same magnitude, the opposite sign.
    logits, target = _inputs((12, 5), dtype, scale=3.0, seed=7)
    beta, threshold = 0.7, 0.8
    loss = confidence_penalty(logits, target, beta, threshold=threshold)
    netcal = ref_netcal_confidence_penalty(logits.softmax(-1), beta, threshold)
    assert netcal < 0  # some rows are below the threshold, or the test would prove nothing
    assert_close(loss - F.cross_entropy(logits, target), -netcal)

    def paper(x, y):  # the paper's Section 3.1 hinge, sign as its text says (penalise H < Γ)
        p = x.softmax(-1)
        entropy = -(p * p.log()).sum(-1)
        return (F.cross_entropy(x, y, reduction="none") + beta * F.relu(threshold - entropy)).mean()

    expected = _loss_and_grad(paper, logits, target)
    ours = _loss_and_grad(
        lambda x, y: confidence_penalty(x, y, beta, threshold=threshold), logits, target
    )
    assert_close(ours, expected)
    # Below the threshold the gradient is that of the plain penalty; above it, of CE.
    plain = _loss_and_grad(lambda x, y: confidence_penalty(x, y, beta), logits, target)[1]
    ce = _loss_and_grad(F.cross_entropy, logits, target)[1]
    p = logits.detach().softmax(-1)
    below = (-(p * p.log()).sum(-1)) < threshold
    assert below.any() and (~below).any()
    assert_close(ours[1][below], plain[below])
    assert_close(ours[1][~below], ce[~below])


# --- Reductions, ignore_index, layouts, dtypes ----------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 4), (4,)])
def test_reductions_and_ignore_index(name, shape):
    functional, module, _ = VARIANTS[name]
    logits, target = _inputs(shape, torch.float64, seed=8)
    if target.dim():
        target.view(-1)[::3] = -1
        valid = target != -1
    else:
        valid = torch.tensor(True)
    none = functional(logits, target, ignore_index=-1, reduction="none")
    assert none.shape == target.shape and none.dtype == torch.float64
    assert (none[~valid] == 0).all()
    total = functional(logits, target, ignore_index=-1, reduction="sum")
    mean = functional(logits, target, ignore_index=-1, reduction="mean")
    assert_close(total, none.sum())
    assert_close(mean, none.sum() / valid.sum())
    for reduction, expected in (("none", none), ("sum", total), ("mean", mean)):
        assert_close(module(ignore_index=-1, reduction=reduction)(logits, target), expected)
    if logits.dim() > 1:  # ignored elements get no gradient
        (grad,) = torch.autograd.grad(total, logits)
        assert (grad.movedim(1, -1)[~valid] == 0).all()
        assert (grad.movedim(1, -1)[valid] != 0).any()


@pytest.mark.parametrize("name", NAMES)
def test_class_dim_one_layout_equals_rows(name):
    functional, _, _ = VARIANTS[name]
    logits, target = _inputs((2, 5, 3, 4), torch.float64, seed=9)
    rows, row_target = _as_rows(logits, target)
    assert_close(
        functional(logits, target, reduction="none"),
        functional(rows, row_target, reduction="none").reshape(2, 3, 4),
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_gives_zero_and_zero_gradient(name, reduction):
    functional, _, _ = VARIANTS[name]
    logits, _ = _inputs((4, 6), torch.float32, seed=10)
    target = torch.full((4,), -100)
    loss = functional(logits, target, reduction=reduction)
    assert loss.item() == 0.0 and loss.dtype == torch.float32
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad == 0).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(name, dtype):
    functional, _, _ = VARIANTS[name]
    logits, target = _inputs((6, 5, 3), dtype, seed=11)
    upcast = logits.detach().float()
    none = functional(logits, target, reduction="none")
    assert none.dtype == dtype
    assert_close(none, functional(upcast, target, reduction="none").to(dtype))
    for reduction in ("mean", "sum"):
        loss = functional(logits, target, reduction=reduction)
        assert loss.dtype == torch.float32
        assert_close(loss, functional(upcast, target, reduction=reduction))
    (grad,) = torch.autograd.grad(functional(logits, target), logits)
    assert grad.dtype == dtype


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_extreme_logits_stay_finite(name, dtype):
    functional, _, _ = VARIANTS[name]
    logits = torch.tensor(
        [[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, 1e4], [1e4, 1e4, 1e4, 1e4], [0.0, 0.0, 1e4, 0]],
        dtype=dtype,
        requires_grad=True,
    )
    target = torch.tensor([0, 1, 2, 2])
    for reduction in ("none", "mean", "sum"):
        loss = functional(logits, target, reduction=reduction)
        assert torch.isfinite(loss).all()
        (grad,) = torch.autograd.grad(loss.sum(), logits)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck(name, reduction):
    functional, _, _ = VARIANTS[name]
    logits, target = _inputs((3, 4, 2), torch.float64, scale=1.5, seed=12)
    target[0, 0] = -100
    assert gradcheck(lambda x: functional(x, target, reduction=reduction), (logits,))


def test_gradcheck_confidence_penalty_threshold():
    logits, target = _inputs((5, 4), torch.float64, seed=13)
    log_p = logits.detach().log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    threshold = float(entropy.median()) + 1e-3  # rows on both sides, none on the kink
    assert gradcheck(lambda x: confidence_penalty(x, target, 0.5, threshold=threshold), (logits,))


# --- Properties -----------------------------------------------------------------------------------


@st.composite
def problems(draw, min_classes=2):
    num_classes = draw(st.integers(min_classes, 8))
    rows = draw(st.integers(1, 6))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = scale * torch.randn(rows, num_classes, generator=generator, dtype=torch.float64)
    target = torch.randint(0, num_classes, (rows,), generator=generator)
    return logits, target


@given(problems(min_classes=1))
def test_zero_weight_is_cross_entropy(problem):
    logits, target = problem
    expected = F.cross_entropy(logits, target, reduction="none")
    assert_close(confidence_penalty(logits, target, 0.0, reduction="none"), expected)
    assert_close(maxsup(logits, target, 0.0, reduction="none"), expected)
    assert_close(margin_label_smoothing(logits, target, alpha=0.0, reduction="none"), expected)


@given(problems(), st.floats(0.0, 1.0))
def test_maxsup_is_cross_entropy_plus_a_nonnegative_term(problem, eps):
    logits, target = problem
    ce = F.cross_entropy(logits, target, reduction="none")
    loss = maxsup(logits, target, eps, reduction="none")
    assert (loss - ce >= -1e-12).all()
    # and it is label smoothing wherever the prediction is right
    right = logits.argmax(-1)
    smoothed = F.cross_entropy(logits, right, label_smoothing=eps, reduction="none")
    assert_close(maxsup(logits, right, eps, reduction="none"), smoothed)


@given(problems(), st.floats(0.0, 1.0, exclude_max=True))
def test_label_relaxation_is_zero_inside_the_credal_set(problem, alpha):
    logits, target = problem
    loss = label_relaxation(logits, target, alpha, reduction="none")
    p_y = logits.softmax(-1).gather(-1, target[:, None]).squeeze(-1)
    assert (loss[p_y >= 1 - alpha] == 0).all()
    assert (loss >= -1e-12).all()
    assert (loss[p_y < 1 - alpha - 1e-9] > 0).all() if alpha > 0 else True
    # alpha = 0: the credal set is the one-hot target, and the loss cross-entropy
    assert_close(
        label_relaxation(logits, target, 0.0, reduction="none")[p_y < 1],
        F.cross_entropy(logits, target, reduction="none")[p_y < 1],
    )
    assert (label_relaxation(logits, target, 1.0, reduction="none") == 0).all()


@given(problems(), st.floats(0.0, 50.0), st.floats(0.0, 2.0))
def test_margin_label_smoothing_is_cross_entropy_within_the_margin(problem, margin, alpha):
    logits, target = problem
    ce = F.cross_entropy(logits, target, reduction="none")
    loss = margin_label_smoothing(logits, target, margin, alpha, reduction="none")
    assert (loss - ce >= -1e-12).all()
    distances = logits.max(-1, keepdim=True).values - logits
    within = (distances <= margin).all(-1)
    assert_close(loss[within], ce[within])


@given(problems(), st.floats(0.0, 2.0))
def test_confidence_penalty_is_cross_entropy_minus_entropy(problem, beta):
    logits, target = problem
    log_p = logits.log_softmax(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    expected = F.cross_entropy(logits, target, reduction="none") - beta * entropy
    assert_close(confidence_penalty(logits, target, beta, reduction="none"), expected)


# --- Argument checks ------------------------------------------------------------------------------

BAD_HYPERPARAMETERS = [
    (confidence_penalty, {"beta": -0.1}, ValueError, r"beta must be >= 0, got beta=-0\.1"),
    (confidence_penalty, {"beta": math.nan}, ValueError, r"beta must be finite, got beta=nan"),
    (
        confidence_penalty,
        {"beta": "0.1"},
        TypeError,
        r"beta must be a real number, got beta='0\.1'",
    ),
    (confidence_penalty, {"threshold": -1.0}, ValueError, r"threshold must be >= 0"),
    (confidence_penalty, {"threshold": True}, TypeError, r"threshold must be a real number"),
    (margin_label_smoothing, {"margin": -2.0}, ValueError, r"margin must be >= 0, got margin=-2"),
    (margin_label_smoothing, {"alpha": math.inf}, ValueError, r"alpha must be finite"),
    (margin_label_smoothing, {"alpha": None}, TypeError, r"alpha must be a real number"),
    (label_relaxation, {"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\].*alpha=1\.5"),
    (label_relaxation, {"alpha": -0.1}, ValueError, r"alpha must be in \[0, 1\].*alpha=-0\.1"),
    (maxsup, {"eps": -0.1}, ValueError, r"eps must be >= 0, got eps=-0\.1"),
    (maxsup, {"eps": torch.ones(2)}, ValueError, r"eps must be a number, got a tensor"),
]


@pytest.mark.parametrize(("fn", "kwargs", "error", "match"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise(fn, kwargs, error, match):
    logits, target = _inputs((3, 4), torch.float32)
    with pytest.raises(error, match=match):
        fn(logits, target, **kwargs)


MODULES = {
    confidence_penalty: ConfidencePenaltyLoss,
    margin_label_smoothing: MarginLabelSmoothingLoss,
    label_relaxation: LabelRelaxationLoss,
    maxsup: MaxSupLoss,
}


@pytest.mark.parametrize(("fn", "kwargs", "error", "match"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise_at_construction(fn, kwargs, error, match):
    with pytest.raises(error, match=match):
        MODULES[fn](**kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_bad_call_arguments_raise(name):
    fn = FUNCTIONS[name]
    logits, target = _inputs((3, 4), torch.float32)
    cases = [
        ({"reduction": "avg"}, ValueError, r"reduction must be one of 'none', 'mean', 'sum', got"),
        ({"ignore_index": 1.5}, TypeError, r"ignore_index must be an int, got ignore_index=1\.5"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            fn(logits, target, **kwargs)
    with pytest.raises(TypeError, match=r"input must be a torch\.Tensor, got list"):
        fn([[0.0, 1.0]], target)
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor.*int64"):
        fn(torch.zeros(3, 4, dtype=torch.long), target)
    with pytest.raises(TypeError, match=r"target must hold integer class indices.*float32"):
        fn(logits, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"target must have shape \(3,\).*got shape \(4,\)"):
        fn(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target contains class index 4.*\[0, 3\]"):
        fn(logits, torch.tensor([0, 4, 1]))
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        MODULES[fn](reduction="mean ")
    with pytest.raises(TypeError, match=r"ignore_index must be an int, got ignore_index=None"):
        MODULES[fn](ignore_index=None)


def test_label_relaxation_needs_two_classes():
    with pytest.raises(ValueError, match=r"at least 2 classes, got input of shape \(3, 1\)"):
        label_relaxation(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


# --- Modules and documentation --------------------------------------------------------------------


def test_module_reprs():
    assert repr(ConfidencePenaltyLoss()) == (
        "ConfidencePenaltyLoss(beta=0.1, ignore_index=-100, reduction='mean')"
    )
    assert repr(ConfidencePenaltyLoss(0.5, threshold=1, reduction="sum")) == (
        "ConfidencePenaltyLoss(beta=0.5, threshold=1.0, ignore_index=-100, reduction='sum')"
    )
    assert repr(MarginLabelSmoothingLoss()) == (
        "MarginLabelSmoothingLoss(margin=10.0, alpha=0.1, ignore_index=-100, reduction='mean')"
    )
    assert repr(LabelRelaxationLoss(ignore_index=0)) == (
        "LabelRelaxationLoss(alpha=0.1, ignore_index=0, reduction='mean')"
    )
    assert repr(MaxSupLoss(reduction="none")) == (
        "MaxSupLoss(eps=0.1, ignore_index=-100, reduction='none')"
    )
    assert list(MaxSupLoss().state_dict()) == []


# --- Regressions from the adversarial review ------------------------------------------------


def test_confidence_penalty_masked_logit_is_finite_with_finite_gradient():
    # A -inf (masked) logit has p = 0 and adds 0 log 0 = 0 to the entropy: it used to give
    # 0 * -inf = nan in the loss and the gradient.
    masked = torch.tensor([[0.0, -math.inf, 1.0]], requires_grad=True)
    loss = confidence_penalty(masked, torch.tensor([0]), beta=0.1)
    loss.backward()
    kept = torch.tensor([[0.0, 1.0]], requires_grad=True)
    expected = confidence_penalty(kept, torch.tensor([0]), beta=0.1)
    expected.backward()
    assert_close(loss, expected)
    assert_close(masked.grad, torch.tensor([[kept.grad[0, 0], 0.0, kept.grad[0, 1]]]))
    with_threshold = confidence_penalty(masked.detach(), torch.tensor([0]), threshold=2.0)
    assert torch.isfinite(with_threshold)


def test_label_relaxation_row_with_only_masked_others_has_zero_gradient():
    # p_y = 1 exactly (every other logit -inf): inside the credal set, loss 0; the gradient
    # used to be nan (the log-sum-exp over -inf only was still differentiated).
    logits = torch.tensor([[0.0, -math.inf, -math.inf], [0.0, 1.0, 2.0]], requires_grad=True)
    loss = label_relaxation(logits, torch.tensor([0, 0]), alpha=0.1, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(logits.grad[0], torch.zeros(3))
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_target_on_another_device_raises(name):
    logits = torch.randn(3, 4)
    target = torch.tensor([0, 1, 2], device="meta")
    with pytest.raises(ValueError, match="target must be on the device of input"):
        FUNCTIONS[name](logits, target)
    with pytest.raises(ValueError, match="target must be on the device of input"):
        FUNCTIONS[name](logits.to("meta"), torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    ("fn", "name"),
    [(maxsup, "eps"), (confidence_penalty, "beta"), (margin_label_smoothing, "alpha")],
)
def test_hyperparameter_tensor_that_requires_grad_raises(fn, name):
    # .item() would silently drop its gradient.
    value = torch.tensor(0.1, requires_grad=True)
    with pytest.raises(TypeError, match=f"{name} must be a number, got a tensor that requires"):
        fn(torch.randn(2, 3), torch.tensor([0, 1]), **{name: value})
    with torch.no_grad():
        fn(torch.randn(2, 3), torch.tensor([0, 1]), **{name: value})
