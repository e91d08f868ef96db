"""cross_entropy: parity with PyTorch, the conventions in the wild, numerics and errors."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls

# Random probability targets have mass on every class, so smoothing them warns
# (DoubleSmoothingWarning); the tests of that warning below set their own filters.
pytestmark = pytest.mark.filterwarnings("ignore::labelsmooth.DoubleSmoothingWarning")

IMPLS = ["auto", "torch", "reference"]

# (input shape, index-target shape): unbatched, (N, C), (N, C, d) and (N, C, d1, d2).
SHAPES = [((5,), ()), ((6, 5), (6,)), ((3, 5, 4), (3, 4)), ((2, 4, 3, 2), (2, 3, 2))]


def _index_target(shape, num_classes, ignore_index, generator):
    target = torch.randint(0, num_classes, shape, generator=generator)
    if ignore_index is not None and target.numel() > 1:
        mask = torch.rand(shape, generator=generator) < 0.3
        mask.view(-1)[0] = True  # at least one ignored element
        mask.view(-1)[-1] = False  # and at least one that is not
        target = target.masked_fill(mask, ignore_index)
    return target


def _loss_and_grad(fn, logits, target, reduction, upstream):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, target)
    (loss * upstream if reduction == "none" else loss).sum().backward()
    return loss.detach(), x.grad


# --------------------------------------------------------------------------------------------
# style="uniform" equals F.cross_entropy(label_smoothing=eps), loss and gradient
# --------------------------------------------------------------------------------------------

PARITY_GRID = list(
    itertools.product(
        SHAPES,
        [False, True],  # class weights
        [None, -100, 1],  # ignore_index: unused, -100 present, a valid class (fairseq's pad)
        ["none", "mean", "sum"],
        [0.0, 0.1, 0.35, 1.0],
        IMPLS,
    )
)
# An unbatched ignored target is the all-ignored case, tested on its own below.
PARITY_GRID = [case for case in PARITY_GRID if case[0][1] != () or case[2] is None]


@pytest.mark.parametrize(
    ("shapes", "weighted", "ignore_index", "reduction", "eps", "impl"), PARITY_GRID
)
def test_uniform_equals_pytorch_label_smoothing_index_targets(
    shapes, weighted, ignore_index, reduction, eps, impl
):
    input_shape, target_shape = shapes
    generator = torch.Generator().manual_seed(hash((input_shape, weighted, ignore_index)) % 2**31)
    num_classes = input_shape[0] if len(input_shape) == 1 else input_shape[1]
    logits = torch.randn(input_shape, generator=generator, dtype=torch.float64) * 3
    target = _index_target(target_shape, num_classes, ignore_index, generator)
    weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) + 0.2
    weight = weight if weighted else None
    upstream = torch.randn(target_shape, generator=generator, dtype=torch.float64)
    index = -100 if ignore_index is None else ignore_index

    def ours(x, t):
        return ls.cross_entropy(
            x, t, eps, weight=weight, ignore_index=index, reduction=reduction, impl=impl
        )

    def native(x, t):
        return F.cross_entropy(
            x, t, weight=weight, ignore_index=index, reduction=reduction, label_smoothing=eps
        )

    loss, grad = _loss_and_grad(ours, logits, target, reduction, upstream)
    expected_loss, expected_grad = _loss_and_grad(native, logits, target, reduction, upstream)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("shapes", "weighted", "reduction", "eps", "impl"),
    list(itertools.product(SHAPES, [False, True], ["none", "mean", "sum"], [0.0, 0.2, 1.0], IMPLS)),
)
def test_uniform_equals_pytorch_label_smoothing_probability_targets(
    shapes, weighted, reduction, eps, impl
):
    input_shape, target_shape = shapes
    generator = torch.Generator().manual_seed(7)
    class_dim = 0 if len(input_shape) == 1 else 1
    num_classes = input_shape[class_dim]
    logits = torch.randn(input_shape, generator=generator, dtype=torch.float64)
    target = torch.randn(input_shape, generator=generator, dtype=torch.float64).softmax(class_dim)
    weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) if weighted else None
    upstream = torch.randn(target_shape, generator=generator, dtype=torch.float64)

    def ours(x, t):
        return ls.cross_entropy(x, t, eps, weight=weight, reduction=reduction, impl=impl)

    def native(x, t):
        return F.cross_entropy(x, t, weight=weight, reduction=reduction, label_smoothing=eps)

    loss, grad = _loss_and_grad(ours, logits, target, reduction, upstream)
    expected_loss, expected_grad = _loss_and_grad(native, logits, target, reduction, upstream)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("weighted", [False, True])
def test_all_ignored_mean_is_zero_with_zero_gradient(impl, weighted):
    logits = torch.randn(4, 6, requires_grad=True)
    target = torch.full((4,), -100)
    weight = torch.rand(6) if weighted else None
    loss, nll = ls.cross_entropy(logits, target, 0.1, weight=weight, impl=impl, return_nll=True)
    assert loss.item() == 0.0 and nll.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # PyTorch returns nan here: the one documented difference.
    assert torch.isnan(F.cross_entropy(logits, target, label_smoothing=0.1))


def test_empty_batch():
    logits = torch.randn(0, 5, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long)
    assert ls.cross_entropy(logits, target).item() == 0.0
    assert ls.cross_entropy(logits, target, reduction="sum").item() == 0.0
    assert ls.cross_entropy(logits, target, reduction="none").shape == (0,)


# --------------------------------------------------------------------------------------------
# The closed form equals the dense reference on every option, including the ones PyTorch lacks
# --------------------------------------------------------------------------------------------

OPTION_GRID = list(
    itertools.product(
        ["uniform", "others", "prior"],
        [False, True],  # weights
        [False, True],  # kl
        ["none", "mean", "sum"],
        [0.0, 0.1, 0.5, -0.2],
    )
)
# kl=True rejects negative eps (see test_argument_errors).
OPTION_GRID = [case for case in OPTION_GRID if not (case[2] and case[4] < 0)]


@pytest.mark.parametrize(("style", "weighted", "kl", "reduction", "eps"), OPTION_GRID)
def test_closed_form_equals_reference(style, weighted, kl, reduction, eps):
    generator = torch.Generator().manual_seed(3)
    num_classes = 7
    logits = torch.randn(3, num_classes, 5, generator=generator, dtype=torch.float64) * 2
    target = _index_target((3, 5), num_classes, -100, generator)
    prior = None
    if style == "prior":
        prior = torch.rand(num_classes, generator=generator, dtype=torch.float64)
        prior = prior / prior.sum()
        style = "uniform"
    weight = torch.rand(num_classes, generator=generator, dtype=torch.float64) if weighted else None
    upstream = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    results = {}
    for impl in IMPLS:

        def fn(x, t, impl=impl):
            return ls.cross_entropy(
                x,
                t,
                eps,
                style=style,
                prior=prior,
                weight=weight,
                reduction=reduction,
                kl=kl,
                impl=impl,
                return_nll=True,
            )

        x = logits.clone().requires_grad_(True)
        loss, nll = fn(x, target)
        total = (loss * upstream).sum() if reduction == "none" else loss
        (total + 0.5 * (nll * upstream if reduction == "none" else nll).sum()).backward()
        results[impl] = (loss.detach(), nll.detach(), x.grad)
    for impl in ("auto", "torch"):
        for got, expected in zip(results[impl], results["reference"], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# The forms people copy from toolkits and blog posts, typed out independently
# --------------------------------------------------------------------------------------------


def test_worked_examples_of_the_others_style():
    six = ls.smooth_labels(torch.tensor([2]), 6, 0.1, style="others")
    torch.testing.assert_close(six, torch.tensor([[0.02, 0.02, 0.9, 0.02, 0.02, 0.02]]))
    three = ls.smooth_labels(torch.tensor([0]), 3, 0.1, style="others")
    torch.testing.assert_close(three, torch.tensor([[0.9, 0.05, 0.05]]))
    one_hot = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(
        ls.smooth_labels(one_hot, eps=0.1, style="others"),
        torch.tensor([0.02, 0.02, 0.9, 0.02, 0.02, 0.02]),
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_fastai_timm_composite(impl):
    """timm.loss.LabelSmoothingCrossEntropy / fastai LabelSmoothingCrossEntropy."""
    logits, target = torch.randn(16, 10, dtype=torch.float64), torch.randint(0, 10, (16,))
    eps = 0.1
    log_probs = logits.log_softmax(-1)
    nll = -log_probs.gather(-1, target[:, None]).squeeze(1)
    smooth = -log_probs.mean(dim=-1)  # eps/K * sum(-log p)
    expected = ((1 - eps) * nll + eps * smooth).mean()
    torch.testing.assert_close(ls.cross_entropy(logits, target, eps, impl=impl), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_nmt_kldiv_criterion(impl):
    """KLDivLoss(reduction='sum') against a target of 1-eps and eps/(K-1) (NMT toolkits)."""
    num_classes, eps = 9, 0.1
    logits, target = torch.randn(12, num_classes, dtype=torch.float64), torch.randint(0, 9, (12,))
    true_dist = torch.full((12, num_classes), eps / (num_classes - 1), dtype=torch.float64)
    true_dist.scatter_(1, target[:, None], 1 - eps)
    x = logits.clone().requires_grad_(True)
    expected = torch.nn.KLDivLoss(reduction="sum")(x.log_softmax(-1), true_dist)
    expected.backward()
    y = logits.clone().requires_grad_(True)
    ours = ls.cross_entropy(y, target, eps, style="others", kl=True, reduction="sum", impl=impl)
    ours.backward()
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(y.grad, x.grad)


def _fairseq_label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index):
    """fairseq/criterions/label_smoothed_cross_entropy.py, typed out (reduce=True)."""
    target = target.unsqueeze(-1)
    nll_loss = -lprobs.gather(dim=-1, index=target)
    smooth_loss = -lprobs.sum(dim=-1, keepdim=True)
    pad_mask = target.eq(ignore_index)
    nll_loss = nll_loss.masked_fill(pad_mask, 0.0)
    smooth_loss = smooth_loss.masked_fill(pad_mask, 0.0)
    nll_loss, smooth_loss = nll_loss.sum(), smooth_loss.sum()
    eps_i = epsilon / (lprobs.size(-1) - 1)
    loss = (1.0 - epsilon - eps_i) * nll_loss + eps_i * smooth_loss
    return loss, nll_loss


@pytest.mark.parametrize("impl", IMPLS)
def test_fairseq_label_smoothed_nll_loss_with_padding(impl):
    pad, vocab = 1, 11  # fairseq's padding index is a real class of the vocabulary
    lprobs_source = torch.randn(5, 7, vocab, dtype=torch.float64)  # (batch, time, vocab)
    target = torch.randint(2, vocab, (5, 7))
    target[:, -2:] = pad
    lprobs = lprobs_source.log_softmax(-1)
    expected_loss, expected_nll = _fairseq_label_smoothed_nll_loss(
        lprobs.view(-1, vocab), target.view(-1), 0.1, pad
    )
    # fairseq hands over log-probabilities; log_softmax of log-probabilities is the identity.
    loss, nll = ls.cross_entropy(
        lprobs.view(-1, vocab),
        target.view(-1),
        0.1,
        style="others",
        ignore_index=pad,
        reduction="sum",
        return_nll=True,
        impl=impl,
    )
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(nll, expected_nll)
    # Same numbers with the (N, C, T) layout of class dimension 1.
    loss_nct = ls.cross_entropy(
        lprobs.transpose(1, 2), target, 0.1, style="others", ignore_index=pad, reduction="sum"
    )
    torch.testing.assert_close(loss_nct, expected_loss)


@pytest.mark.parametrize("impl", IMPLS)
def test_huggingface_label_smoother(impl):
    """transformers.trainer_pt_utils.LabelSmoother, typed out (labels -100 are padding)."""
    epsilon, ignore_index = 0.1, -100
    logits = torch.randn(3, 6, 13, dtype=torch.float64)
    labels = torch.randint(0, 13, (3, 6))
    labels[0, :3] = ignore_index
    log_probs = -F.log_softmax(logits, dim=-1)
    lab = labels.unsqueeze(-1)
    padding_mask = lab.eq(ignore_index)
    lab = torch.clamp(lab, min=0)
    nll_loss = log_probs.gather(dim=-1, index=lab).masked_fill(padding_mask, 0.0)
    smoothed_loss = log_probs.sum(dim=-1, keepdim=True).masked_fill(padding_mask, 0.0)
    active = padding_mask.numel() - padding_mask.long().sum()
    expected = (1 - epsilon) * nll_loss.sum() / active + epsilon * smoothed_loss.sum() / (
        active * log_probs.shape[-1]
    )
    ours = ls.cross_entropy(logits.flatten(0, 1), labels.flatten(), epsilon, impl=impl)
    torch.testing.assert_close(ours, expected)


def test_binary_smoothers_from_the_wild():
    logits = torch.randn(8, 3, dtype=torch.float64)
    target = torch.randint(0, 2, (8, 3)).double()
    a = 0.1
    # t*(1-2a)+a with BCE (style="others")
    expected = F.binary_cross_entropy_with_logits(logits, target * (1 - 2 * a) + a)
    torch.testing.assert_close(
        ls.binary_cross_entropy_with_logits(logits, target, a, style="others"), expected
    )
    # Keras BinaryCrossentropy(label_smoothing=a): t*(1-a)+a/2 (style="uniform")
    expected = F.binary_cross_entropy_with_logits(logits, target * (1 - a) + a / 2)
    torch.testing.assert_close(ls.binary_cross_entropy_with_logits(logits, target, a), expected)


def test_keras_categorical_crossentropy_label_smoothing():
    """Keras: y_true * (1 - a) + a / K, then categorical cross-entropy, mean over the batch."""
    logits = torch.randn(10, 4, dtype=torch.float64)
    y_true = F.one_hot(torch.randint(0, 4, (10,)), 4).double()
    a = 0.2
    smoothed = y_true * (1 - a) + a / 4
    expected = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(ls.cross_entropy(logits, y_true, a), expected)
    torch.testing.assert_close(ls.cross_entropy(logits, y_true.argmax(-1), a), expected)


def test_others_style_formula_typed_out():
    logits = torch.randn(6, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (6,))
    weight = torch.rand(5, dtype=torch.float64)
    eps, k = 0.3, 5
    log_probs = logits.log_softmax(-1)
    rows = []
    for i in range(6):
        y = int(target[i])
        others = sum(weight[c] * -log_probs[i, c] for c in range(k) if c != y)
        rows.append((1 - eps) * weight[y] * -log_probs[i, y] + eps / (k - 1) * others)
    expected = torch.stack(rows)
    ours = ls.cross_entropy(logits, target, eps, style="others", weight=weight, reduction="none")
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, eps, style="others", weight=weight),
        expected.sum() / weight[target].sum(),
    )


def test_prior_formula_typed_out():
    logits = torch.randn(6, 4, dtype=torch.float64)
    target = torch.randint(0, 4, (6,))
    prior = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    eps = 0.2
    log_probs = logits.log_softmax(-1)
    expected = (1 - eps) * -log_probs.gather(1, target[:, None]).squeeze(1) - eps * (
        log_probs * prior
    ).sum(-1)
    ours = ls.cross_entropy(logits, target, eps, prior=prior, reduction="none")
    torch.testing.assert_close(ours, expected)
    # The uniform prior is the uniform style.
    torch.testing.assert_close(
        ls.cross_entropy(logits, target, eps, prior=torch.full((4,), 0.25, dtype=torch.float64)),
        ls.cross_entropy(logits, target, eps),
    )


def test_others_soft_target_formula():
    logits = torch.randn(5, 4, dtype=torch.float64)
    soft = torch.randn(5, 4, dtype=torch.float64).softmax(-1)
    eps = 0.3
    smoothed = (1 - eps) * soft + eps * (1 - soft) / 3
    expected = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(ls.cross_entropy(logits, soft, eps, style="others"), expected)


# --------------------------------------------------------------------------------------------
# kl=True and return_nll=True
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("impl", IMPLS)
def test_kl_is_cross_entropy_minus_target_entropy(style, impl):
    logits = torch.randn(8, 6, dtype=torch.float64)
    target = torch.randint(0, 6, (8,))
    smoothed = ls.smooth_labels(target, 6, 0.2, style=style, dtype=torch.float64)
    entropy = -(smoothed * smoothed.log()).sum(-1)
    ce = ls.cross_entropy(logits, target, 0.2, style=style, reduction="none", impl=impl)
    kl = ls.cross_entropy(logits, target, 0.2, style=style, reduction="none", kl=True, impl=impl)
    torch.testing.assert_close(kl, ce - entropy)
    at_optimum = ls.cross_entropy(
        smoothed.log(), target, 0.2, style=style, reduction="none", kl=True, impl=impl
    )
    torch.testing.assert_close(at_optimum, torch.zeros(8, dtype=torch.float64))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_return_nll_is_the_unsmoothed_loss(impl, reduction):
    logits = torch.randn(4, 5, 3, dtype=torch.float64)
    target = _index_target((4, 3), 5, -100, torch.Generator().manual_seed(1))
    weight = torch.rand(5, dtype=torch.float64)
    loss, nll = ls.cross_entropy(
        logits, target, 0.1, weight=weight, reduction=reduction, return_nll=True, impl=impl
    )
    torch.testing.assert_close(
        nll, F.cross_entropy(logits, target, weight=weight, reduction=reduction)
    )
    torch.testing.assert_close(
        loss, ls.cross_entropy(logits, target, 0.1, weight=weight, reduction=reduction)
    )


# --------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision_accumulates_in_float32(dtype, impl):
    logits = (torch.randn(64, 300) * 4).to(dtype)
    target = torch.randint(0, 300, (64,))
    expected = ls.cross_entropy(logits.float(), target, 0.1, impl="reference")
    loss = ls.cross_entropy(logits, target, 0.1, impl=impl)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    per_element = ls.cross_entropy(logits, target, 0.1, reduction="none", impl=impl)
    assert per_element.dtype == dtype
    x = logits.clone().requires_grad_(True)
    ls.cross_entropy(x, target, 0.1, impl=impl).backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("impl", IMPLS)
def test_large_logits_give_no_nan(dtype, style, impl):
    logits = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, 1e4, 1e4]], dtype=dtype)
    target = torch.tensor([1, 2])
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, 0.1, style=style, impl=impl, kl=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad.float()).all()
    # Exact value: the smoothing term is linear in the logits, so it is large but finite.
    expected = ls.cross_entropy(logits.double(), target, 0.1, style=style, kl=True)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("impl", IMPLS)
def test_minus_inf_logit_gives_inf_loss_and_finite_gradient(style, impl):
    logits = torch.tensor([[0.5, -math.inf, 1.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([2])
    x = logits.clone().requires_grad_(True)
    loss = ls.cross_entropy(x, target, 0.1, style=style, impl=impl)
    assert loss.item() == math.inf
    loss.backward()
    assert torch.isfinite(x.grad).all()
    expected_target = ls.smooth_labels(target, 4, 0.1, style=style, dtype=torch.float64)
    torch.testing.assert_close(x.grad, logits.softmax(-1) - expected_target)
    # Without smoothing the class gets no mass and the loss is finite, as in PyTorch.
    plain = ls.cross_entropy(logits, target, 0.0, impl=impl)
    torch.testing.assert_close(plain, F.cross_entropy(logits, target))


@pytest.mark.parametrize("impl", IMPLS)
def test_minus_inf_logit_on_a_zero_mass_class_is_finite(impl):
    logits = torch.tensor([[0.5, -math.inf, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    prior = torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=torch.float64)
    loss = ls.cross_entropy(logits, torch.tensor([2]), 0.1, prior=prior, impl=impl)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    loss = ls.cross_entropy(logits.detach(), torch.tensor([2]), 0.1, weight=weight, impl=impl)
    assert math.isfinite(loss.item())


def test_negative_eps_is_generalised_label_smoothing():
    logits = torch.randn(5, 4, dtype=torch.float64)
    target = torch.randint(0, 4, (5,))
    smoothed = ls.smooth_labels(target, 4, -0.3, dtype=torch.float64)
    assert (smoothed.gather(1, target[:, None]) > 1).all() and (smoothed < 0).any()
    expected = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
    for impl in IMPLS:
        torch.testing.assert_close(ls.cross_entropy(logits, target, -0.3, impl=impl), expected)


# --------------------------------------------------------------------------------------------
# Errors: named argument, value and allowed range, raised before any work
# --------------------------------------------------------------------------------------------

LOGITS = torch.randn(4, 5)
TARGET = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"eps": 1.5}, ValueError, r"eps must be <= 1 for style='uniform'.*got eps=1.5"),
        ({"eps": 0.9, "style": "others"}, ValueError, r"eps must be <= 0.8 .*others.*eps=0.9"),
        ({"eps": float("nan")}, ValueError, r"eps must be finite"),
        ({"eps": "0.1"}, TypeError, r"eps must be a real number"),
        ({"eps": -0.1, "kl": True}, ValueError, r"eps must be >= 0 with kl=True"),
        ({"style": "fairseq"}, ValueError, r"style must be one of 'uniform', 'others'"),
        ({"reduction": "avg"}, ValueError, r"reduction must be one of .*got reduction='avg'"),
        ({"impl": "triton9"}, ValueError, r"impl must be one of 'auto', .*got impl='triton9'"),
        ({"weight": torch.ones(4)}, ValueError, r"weight must have shape \(5,\).*\(4,\)"),
        (
            {"weight": torch.ones(5, dtype=torch.bool)},
            TypeError,
            r"weight must be a real \(float or integer\) tensor, got dtype=torch.bool",
        ),
        ({"prior": [0.5, 0.5, 0, 0, 0], "style": "others"}, ValueError, r"needs style='unif"),
        ({"prior": [0.5, 0.6, 0, 0, 0]}, ValueError, r"prior must sum to 1.*1.1"),
        ({"prior": [1.5, -0.5, 0, 0, 0]}, ValueError, r"prior must be finite and >= 0"),
        ({"prior": [0.5, 0.5]}, ValueError, r"prior must have shape \(5,\)"),
        ({"ignore_index": 1.0}, TypeError, r"ignore_index must be an int"),
        ({"kl": 1}, TypeError, r"kl must be a bool"),
    ],
)
def test_argument_errors(kwargs, error, pattern):
    kwargs = dict(kwargs)
    eps = kwargs.pop("eps", 0.1)
    with pytest.raises(error, match=pattern):
        ls.cross_entropy(LOGITS, TARGET, eps, **kwargs)


@pytest.mark.parametrize(
    ("logits", "target", "error", "pattern"),
    [
        (torch.ones(4, 5, dtype=torch.long), TARGET, TypeError, r"input must be a floating"),
        (LOGITS, TARGET.float(), TypeError, r"target must hold integer class indices"),
        (LOGITS, torch.ones(4, 5, dtype=torch.long), TypeError, r"must be floating point"),
        (LOGITS, torch.tensor([0, 1, 2]), ValueError, r"target must have shape \(4,\)"),
        (LOGITS, torch.tensor([0, 1, 5, 2]), ValueError, r"class index 5.*\[0, 4\]"),
        (LOGITS, torch.tensor([0, -1, 2, 2]), ValueError, r"class index -1.*ignore_index=-100"),
        (LOGITS, TARGET.bool(), TypeError, r"integer class indices, got dtype=torch.bool"),
        (torch.tensor(1.0), torch.tensor(0), ValueError, r"class dimension"),
        (LOGITS.tolist(), TARGET, TypeError, r"input must be a torch.Tensor"),
    ],
)
def test_input_errors(logits, target, error, pattern):
    with pytest.raises(error, match=pattern):
        ls.cross_entropy(logits, target)


def test_probability_targets_reject_a_nonnegative_ignore_index():
    with pytest.raises(ValueError, match=r"ignore_index is not supported.*got ignore_index=0"):
        ls.cross_entropy(LOGITS, LOGITS.softmax(1), ignore_index=0)


def test_validate_false_skips_the_index_check():
    # With validate=False an out-of-range index is the caller's responsibility (gather raises).
    with pytest.raises((IndexError, RuntimeError)):
        ls.cross_entropy(LOGITS, torch.tensor([0, 1, 9, 2]), validate=False)
    torch.testing.assert_close(
        ls.cross_entropy(LOGITS, TARGET, validate=False), ls.cross_entropy(LOGITS, TARGET)
    )


def test_eps_bounds_are_inclusive():
    for k in (2, 3, 7):
        ls.cross_entropy(
            torch.randn(3, k), torch.zeros(3, dtype=torch.long), (k - 1) / k, style="others"
        )
    ls.cross_entropy(LOGITS, TARGET, 1.0)
    ls.cross_entropy(LOGITS, TARGET, torch.tensor(0.1))  # a 0-dim tensor is a number


def test_single_class_others_needs_zero_eps():
    with pytest.raises(ValueError, match=r"needs num_classes >= 2"):
        ls.cross_entropy(torch.randn(3, 1), torch.zeros(3, dtype=torch.long), -0.1, style="others")
    loss = ls.cross_entropy(
        torch.randn(3, 1), torch.zeros(3, dtype=torch.long), 0.0, style="others"
    )
    assert loss.item() == 0.0


# --- Probability targets smoothed twice (timm's Mixup with label_smoothing) -------------------


def _timm_mixup_target(eps, num_classes=10, n=8):
    """timm's mixup_target: lam * smoothed_onehot(a) + (1 - lam) * smoothed_onehot(b)."""
    a = torch.randint(0, num_classes, (n,))
    b = a.flip(0)
    lam = 0.7
    return lam * ls.smooth_labels(a, num_classes, eps) + (1 - lam) * ls.smooth_labels(
        b, num_classes, eps
    )


def test_smoothed_probability_targets_warn_once_at_the_call_site():
    logits, target = torch.randn(8, 10), _timm_mixup_target(0.1)
    with pytest.warns(ls.DoubleSmoothingWarning, match=r"smoothed already.*eps=0\.1") as record:
        ls.cross_entropy(logits, target, 0.1)
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller, not into the library
    assert issubclass(ls.DoubleSmoothingWarning, UserWarning)


@pytest.mark.parametrize(
    "case", ["one-hot", "mixup-unsmoothed", "eps=0", "validate=False", "filtered"]
)
def test_double_smoothing_warning_is_not_raised(case):
    logits = torch.randn(8, 10)
    index = torch.randint(0, 10, (8,))
    target, kwargs = _timm_mixup_target(0.1), {}
    if case == "one-hot":
        target = F.one_hot(index, 10).float()
    elif case == "mixup-unsmoothed":
        target = _timm_mixup_target(0.0)
    elif case == "eps=0":
        target, kwargs = _timm_mixup_target(0.1), {"eps": 0.0}
    elif case == "validate=False":
        kwargs = {"validate": False}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if case == "filtered":
            warnings.filterwarnings("ignore", category=ls.DoubleSmoothingWarning)
        ls.cross_entropy(logits, target, **{"eps": 0.1, **kwargs})


def test_double_smoothing_check_is_skipped_while_tracing():
    logits, target = torch.randn(8, 10), _timm_mixup_target(0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.func.grad(ls.cross_entropy)(logits, target, 0.1)


def test_timm_binary_cross_entropy_row():
    """timm's BinaryCrossEntropy(smoothing=s) on class indices, typed out: off = s / C and
    on = 1 - s + s / C, then BCE with logits, mean over elements."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=generator)
    smoothing, classes = 0.1, x.shape[-1]
    off, on = smoothing / classes, 1.0 - smoothing + smoothing / classes
    timm_target = torch.full((6, classes), off, dtype=torch.float64).scatter_(1, y[:, None], on)
    expected = F.binary_cross_entropy_with_logits(x, timm_target)
    ours = F.binary_cross_entropy_with_logits(
        x, ls.smooth_labels(y, classes, smoothing, dtype=torch.float64)
    )
    assert torch.allclose(ours, expected, rtol=0, atol=1e-12)
