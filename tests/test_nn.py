"""The nn.Module wrappers: thin, checked at construction, buffers move with the module."""

import pytest
import torch
import torch.nn.functional as F

import labelsmooth as ls


def test_drop_in_for_cross_entropy_loss():
    criterion = ls.nn.LabelSmoothingCrossEntropy(0.1, weight=torch.rand(5), ignore_index=2)
    native = torch.nn.CrossEntropyLoss(weight=criterion.weight, ignore_index=2, label_smoothing=0.1)
    logits, target = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(criterion(logits, target), native(logits, target))


def test_module_forwards_every_option():
    prior = torch.tensor([0.1, 0.2, 0.3, 0.4])
    criterion = ls.nn.LabelSmoothingCrossEntropy(
        0.2, prior=prior, reduction="sum", kl=True, return_nll=True, impl="reference"
    )
    logits, target = torch.randn(6, 4), torch.randint(0, 4, (6,))
    loss, nll = criterion(logits, target)
    expected = ls.cross_entropy(
        logits, target, 0.2, prior=prior, reduction="sum", kl=True, return_nll=True
    )
    torch.testing.assert_close(loss, expected[0])
    torch.testing.assert_close(nll, expected[1])


def test_repr_and_state_dict():
    criterion = ls.nn.LabelSmoothingCrossEntropy(
        0.05, style="others", weight=[1.0, 2.0, 3.0], kl=True, validate=False
    )
    assert repr(criterion) == (
        "LabelSmoothingCrossEntropy(eps=0.05, style='others', weight=<3 classes>, "
        "ignore_index=-100, reduction='mean', kl=True, validate=False)"
    )
    assert set(criterion.state_dict()) == {"weight"}
    assert criterion.weight.dtype == torch.get_default_dtype()


def test_buffers_follow_the_module_dtype():
    criterion = ls.nn.LabelSmoothingCrossEntropy(0.1, weight=torch.rand(3)).double()
    assert criterion.weight.dtype == torch.float64
    logits = torch.randn(4, 3, dtype=torch.float64)
    target = torch.randint(0, 3, (4,))
    torch.testing.assert_close(
        criterion(logits, target),
        F.cross_entropy(logits, target, weight=criterion.weight, label_smoothing=0.1),
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"eps": 2.0}, ValueError, r"eps must be <= 1"),
        ({"eps": 0.6, "style": "others", "weight": [1.0, 1.0]}, ValueError, r"eps must be <= 0.5"),
        ({"style": "x"}, ValueError, r"style must be one of"),
        ({"reduction": "x"}, ValueError, r"reduction must be one of"),
        ({"impl": "x"}, ValueError, r"impl must be one of"),
        ({"prior": [0.2, 0.2]}, ValueError, r"prior must sum to 1"),
        ({"prior": [0.5, 0.5], "weight": [1.0, 1.0, 1.0]}, ValueError, r"one entry per class"),
        ({"eps": -0.1, "kl": True}, ValueError, r"eps must be >= 0 with kl=True"),
        ({"weight": [[1.0]]}, ValueError, r"weight must be a 1-D tensor"),
    ],
)
def test_constructor_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ls.nn.LabelSmoothingCrossEntropy(**kwargs)


def test_others_range_checked_at_call_when_k_unknown():
    criterion = ls.nn.LabelSmoothingCrossEntropy(0.6, style="others")
    criterion(torch.randn(2, 3), torch.tensor([0, 1]))  # 0.6 <= 2/3
    with pytest.raises(ValueError, match=r"eps must be <= 0.5 .*num_classes=2"):
        criterion(torch.randn(2, 2), torch.tensor([0, 1]))


def test_training_step_reduces_the_loss():
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 4)
    criterion = ls.nn.LabelSmoothingCrossEntropy(0.1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    inputs, target = torch.randn(64, 10), torch.randint(0, 4, (64,))
    first = criterion(model(inputs), target).item()
    for _ in range(50):
        optimiser.zero_grad()
        criterion(model(inputs), target).backward()
        optimiser.step()
    assert criterion(model(inputs), target).item() < first - 0.1


def test_linear_module_refuses_create_graph_unless_reference():
    # The module's default (chunked) path has a hand-written, first-order backward: a gradient
    # penalty through it must raise instead of silently dropping the penalty's gradient.
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.tensor([1, 2, 3, -100, 5, 9])

    def penalised(criterion):
        weight = torch.randn(10, 4, generator=torch.Generator().manual_seed(3))
        weight = weight.double().requires_grad_()
        loss = criterion(hidden, weight, target)
        (grad,) = torch.autograd.grad(loss, weight, create_graph=True)
        (loss + grad.square().sum()).backward()
        return weight.grad

    with pytest.raises(RuntimeError, match="first-order only.*impl='reference'"):
        penalised(ls.nn.LinearLabelSmoothingCrossEntropy(0.1))
    got = penalised(ls.nn.LinearLabelSmoothingCrossEntropy(0.1, impl="reference"))
    expected = penalised(lambda h, w, t: ls.cross_entropy(F.linear(h, w), t, 0.1, impl="torch"))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"weight": "abc"}, TypeError, "weight must be a 1-D tensor of floats"),
        ({"prior": "abc"}, TypeError, "prior must be a 1-D tensor of floats"),
        ({"weight": torch.ones(3, dtype=torch.complex64)}, TypeError, "weight must be a real"),
        ({"weight": torch.tensor([True, False])}, TypeError, "weight must be a real"),
        ({"weight": {0: 1.0}}, TypeError, "weight must be a 1-D tensor of floats"),
    ],
)
def test_module_class_vectors_of_the_wrong_type_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        ls.nn.LabelSmoothingCrossEntropy(**kwargs)
