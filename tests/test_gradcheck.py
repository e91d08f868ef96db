"""torch.autograd.gradcheck (and gradgradcheck) in float64 for every loss path."""

import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import labelsmooth as ls

CASES = list(
    itertools.product(
        ["torch", "reference"],
        ["uniform", "others", "prior"],
        [False, True],  # weights
        [False, True],  # kl
        ["none", "mean", "sum"],
    )
)


@pytest.mark.parametrize(("impl", "style", "weighted", "kl", "reduction"), CASES)
def test_gradcheck_index_targets(impl, style, weighted, kl, reduction):
    generator = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 5, 2, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 5, (3, 2), generator=generator)
    target[0, 0] = -100
    prior = None
    if style == "prior":
        prior, style = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2], dtype=torch.float64), "uniform"
    weight = torch.rand(5, generator=generator, dtype=torch.float64) if weighted else None

    def fn(x):
        return ls.cross_entropy(
            x,
            target,
            0.15,
            style=style,
            prior=prior,
            weight=weight,
            kl=kl,
            reduction=reduction,
            impl=impl,
            return_nll=True,
        )

    assert gradcheck(fn, (logits,))
    assert gradgradcheck(fn, (logits,))


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("style", ["uniform", "others"])
def test_gradcheck_probability_targets(impl, style):
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.rand(4, 3, generator=generator, dtype=torch.float64).softmax(-1)

    def fn(x):
        return ls.cross_entropy(x, target, 0.3, style=style, impl=impl, kl=True)

    assert gradcheck(fn, (logits,))


@pytest.mark.parametrize("style", ["uniform", "others"])
def test_gradcheck_binary(style):
    logits = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    target = torch.rand(4, 3, dtype=torch.float64)
    pos_weight = torch.rand(3, dtype=torch.float64) + 0.5
    assert gradcheck(
        lambda x: ls.binary_cross_entropy_with_logits(
            x, target, 0.1, style=style, pos_weight=pos_weight
        ),
        (logits,),
    )


@pytest.mark.parametrize("impl", ["auto", "chunked", "reference"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("rows", [None, 2])  # one chunk, or chunks of 2 rows (of 5)
def test_gradcheck_linear_cross_entropy(impl, reduction, rows):
    # nondet_tol=0: gradcheck runs each backward twice and needs bit-identical results (the
    # audit found "backward not reentrant" here). The Triton path's gradcheck runs in the
    # interpreter subprocess of tests/test_linear.py.
    from labelsmooth.kernels.linear import chunking

    generator = torch.Generator().manual_seed(17)
    hidden = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 5, -100, 2, 2])

    def fn(h, w, b):
        with chunking(rows=rows):
            return ls.linear_cross_entropy(
                h, w, target, 0.15, bias=b, reduction=reduction, return_nll=True, impl=impl,
                z_loss=0.01,
            )  # fmt: skip

    assert gradcheck(fn, (hidden, weight, bias), nondet_tol=0)
    if impl == "reference":
        assert gradgradcheck(fn, (hidden, weight, bias))
