"""binary_cross_entropy_with_logits and its module."""

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls


@pytest.mark.parametrize("style", ["uniform", "others"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_equals_pytorch_on_smoothed_targets(style, reduction, weighted):
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 2, (6, 4)).double()
    weight = torch.rand(4, dtype=torch.float64) if weighted else None
    pos_weight = torch.rand(4, dtype=torch.float64) + 0.5 if weighted else None
    ours = ls.binary_cross_entropy_with_logits(
        logits, target, 0.1, style=style, weight=weight, pos_weight=pos_weight, reduction=reduction
    )
    smoothed = ls.smooth_binary(target, 0.1, style=style)
    expected = F.binary_cross_entropy_with_logits(
        logits, smoothed, weight=weight, pos_weight=pos_weight, reduction=reduction
    )
    torch.testing.assert_close(ours, expected)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), logits)
    torch.testing.assert_close(grad, expected_grad)


def test_optimum_of_others_is_at_eps():
    """Outputs pile up at eps and 1-eps: the minimiser of the smoothed BCE."""
    logits = torch.zeros(2, requires_grad=True)
    target = torch.tensor([0.0, 1.0])
    optimiser = torch.optim.LBFGS([logits], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = ls.binary_cross_entropy_with_logits(logits, target, 0.1, style="others")
        loss.backward()
        return loss

    optimiser.step(closure)
    torch.testing.assert_close(
        logits.sigmoid().detach(), torch.tensor([0.1, 0.9]), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    logits = torch.randn(32, 5).to(dtype)
    target = torch.randint(0, 2, (32, 5))
    loss = ls.binary_cross_entropy_with_logits(logits, target, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(
        loss, ls.binary_cross_entropy_with_logits(logits.float(), target, 0.1)
    )
    assert ls.binary_cross_entropy_with_logits(logits, target, reduction="none").dtype == dtype
    big = torch.tensor([1e4, -1e4]).to(dtype)
    assert torch.isfinite(ls.binary_cross_entropy_with_logits(big, torch.tensor([0.0, 1.0])))


def test_errors():
    with pytest.raises(ValueError, match=r"target must have the shape of input \(3,\)"):
        ls.binary_cross_entropy_with_logits(torch.zeros(3), torch.zeros(4))
    with pytest.raises(TypeError, match="input must be a floating"):
        ls.binary_cross_entropy_with_logits(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 1\]"):
        ls.binary_cross_entropy_with_logits(torch.zeros(2), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        ls.binary_cross_entropy_with_logits(torch.zeros(2), torch.zeros(2), reduction="avg")
    with pytest.raises(TypeError, match="pos_weight must be a torch.Tensor"):
        ls.binary_cross_entropy_with_logits(torch.zeros(2), torch.zeros(2), pos_weight=[1.0])


def test_module():
    criterion = ls.nn.LabelSmoothingBCEWithLogits(
        0.1, style="others", pos_weight=torch.tensor([2.0, 1.0])
    )
    assert "pos_weight=<shape (2,)>" in repr(criterion)
    logits, target = torch.randn(3, 2), torch.randint(0, 2, (3, 2)).float()
    torch.testing.assert_close(
        criterion(logits, target),
        ls.binary_cross_entropy_with_logits(
            logits, target, 0.1, style="others", pos_weight=torch.tensor([2.0, 1.0])
        ),
    )
    assert "pos_weight" in criterion.state_dict()
    with pytest.raises(ValueError, match="eps must be <= 0.5"):
        ls.nn.LabelSmoothingBCEWithLogits(0.7, style="others")
