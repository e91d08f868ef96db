"""smooth_labels / smooth_binary / smoothing_coefficients."""

import pytest
import torch

import labelsmooth as ls


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, -0.2])
def test_hard_labels_are_distributions(style, eps):
    target = torch.randint(0, 6, (3, 4))
    smoothed = ls.smooth_labels(target, 6, eps, style=style)
    assert smoothed.shape == (3, 4, 6)
    torch.testing.assert_close(smoothed.sum(-1), torch.ones(3, 4))
    on = 1 - eps + eps / 6 if style == "uniform" else 1 - eps
    off = eps / 6 if style == "uniform" else eps / 5
    torch.testing.assert_close(
        smoothed.gather(-1, target[..., None]).squeeze(-1), torch.full((3, 4), on)
    )
    mask = torch.nn.functional.one_hot(target, 6).bool()
    torch.testing.assert_close(smoothed[~mask], torch.full_like(smoothed[~mask], off))


@pytest.mark.parametrize("style", ["uniform", "others"])
def test_soft_targets_match_the_formulas(style):
    soft = torch.rand(5, 4).softmax(-1)
    eps = 0.3
    expected = (1 - eps) * soft + (eps / 4 if style == "uniform" else eps * (1 - soft) / 3)
    torch.testing.assert_close(ls.smooth_labels(soft, eps=eps, style=style), expected)


def test_hard_and_soft_paths_agree():
    target = torch.tensor([0, 3, 1])
    for style in ("uniform", "others"):
        hard = ls.smooth_labels(target, 4, 0.2, style=style)
        soft = ls.smooth_labels(torch.nn.functional.one_hot(target, 4).float(), 4, 0.2, style=style)
        torch.testing.assert_close(hard, soft)


def test_prior():
    prior = torch.tensor([0.7, 0.2, 0.1])
    smoothed = ls.smooth_labels(torch.tensor([1]), 3, 0.1, prior=prior)
    torch.testing.assert_close(smoothed, torch.tensor([[0.07, 0.92, 0.01]]))
    with pytest.raises(ValueError, match="style='uniform'"):
        ls.smooth_labels(torch.tensor([1]), 3, 0.1, prior=prior, style="others")


def test_num_classes_inferred_and_dtype():
    smoothed = ls.smooth_labels(torch.tensor([0, 2]), eps=0.0, dtype=torch.float64)
    assert smoothed.shape == (2, 3) and smoothed.dtype == torch.float64
    assert ls.smooth_labels(torch.tensor(1), 3).shape == (3,)  # a 0-dim index
    assert ls.smooth_labels(torch.rand(2, 3).half().softmax(-1)).dtype == torch.float16


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda: ls.smooth_labels(torch.tensor([3]), 3), ValueError, r"class index 3.*\[0, 2\]"),
        (lambda: ls.smooth_labels(torch.tensor([-1]), 3), ValueError, r"class index -1"),
        (lambda: ls.smooth_labels(torch.tensor([1]), 3, 1.2), ValueError, r"eps must be <= 1"),
        (
            lambda: ls.smooth_labels(torch.tensor([1]), 3, 0.7, style="others"),
            ValueError,
            r"eps must be <= 0.666667",
        ),
        (lambda: ls.smooth_labels(torch.rand(2, 3), 4), ValueError, r"num_classes must equal"),
        (lambda: ls.smooth_labels(torch.tensor([True])), TypeError, r"dtype=torch.bool"),
        (lambda: ls.smooth_labels([1, 2], 3), TypeError, r"target must be a torch.Tensor"),
        (lambda: ls.smooth_labels(torch.tensor([1]), 3, style="x"), ValueError, r"style must be"),
        (lambda: ls.smooth_labels(torch.zeros(0, dtype=torch.long)), ValueError, r"num_classes"),
        (lambda: ls.smooth_labels(torch.tensor([1]), 0), ValueError, r"num_classes must be >= 1"),
        (
            lambda: ls.smooth_binary(torch.tensor([1.5])),
            ValueError,
            r"target must lie in \[0, 1\], got a value of 1.5",
        ),
        (lambda: ls.smooth_binary(torch.tensor([float("nan")])), ValueError, r"\[0, 1\]"),
        (
            lambda: ls.smooth_binary(torch.tensor([1.0]), 0.6, style="others"),
            ValueError,
            r"eps must be <= 0.5 for style='others' with binary targets, got eps=0.6",
        ),
    ],
)
def test_errors(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_smooth_binary_styles_and_integer_targets():
    labels = torch.tensor([[0, 1], [1, 0]])
    torch.testing.assert_close(
        ls.smooth_binary(labels, 0.2), torch.tensor([[0.1, 0.9], [0.9, 0.1]])
    )
    torch.testing.assert_close(
        ls.smooth_binary(labels.bool(), 0.2, style="others"), torch.tensor([[0.2, 0.8], [0.8, 0.2]])
    )
    soft = torch.tensor([0.25, 0.5])
    torch.testing.assert_close(ls.smooth_binary(soft, 0.2), soft * 0.8 + 0.1)
    torch.testing.assert_close(ls.smooth_binary(soft, 0.2, style="others"), soft * 0.6 + 0.2)
    # The binary rules are the multi-class rules with K = 2.
    two = ls.smooth_labels(torch.tensor([1]), 2, 0.2, style="others")
    torch.testing.assert_close(two[0, 1], ls.smooth_binary(torch.tensor(1.0), 0.2, style="others"))
