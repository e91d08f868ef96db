"""labelsmooth.schedules: eps as a function of the step, applied to a module like an LR
scheduler applies a learning rate."""

import math
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import labelsmooth as ls
from labelsmooth.schedules import EpsScheduler, constant, cosine, linear, piecewise

rates = st.floats(-1.0, 1.0, allow_nan=False)


@given(rates, rates, st.integers(1, 1000), st.integers(0, 3000))
def test_linear_and_cosine_start_end_hold_and_stay_between(start, end, steps, step):
    for schedule in (linear(start, end, steps), cosine(start, end, steps)):
        assert schedule(0) == pytest.approx(start, abs=1e-12)
        assert schedule(steps) == pytest.approx(end, abs=1e-12)
        assert schedule(steps + step) == schedule(steps)  # holds its final value
        low, high = min(start, end), max(start, end)
        assert low - 1e-12 <= schedule(step) <= high + 1e-12


def test_values_by_hand():
    assert [linear(0.0, 0.1, 4)(s) for s in range(5)] == pytest.approx([0, 0.025, 0.05, 0.075, 0.1])
    halfway = 0.2 + (0.0 - 0.2) * 0.5  # cos(pi / 2) = 0
    assert cosine(0.2, 0.0, 10)(5) == pytest.approx(halfway)
    assert cosine(0.2, 0.0, 10)(2) == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.2)))
    steps = piecewise([0.1, 0.05, 0.0], boundaries=[3, 5])
    assert [steps(s) for s in range(7)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.0, 0.0]
    assert constant(0.3)(10**9) == 0.3


def test_schedules_pickle_compare_and_print():
    for schedule in (constant(0.1), linear(0.1, 0, 5), cosine(0.1, 0, 5), piecewise([1, 0], [2])):
        assert pickle.loads(pickle.dumps(schedule)) == schedule
        assert type(schedule).__name__ in repr(schedule)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: linear(0.1, 0.0, 0), ValueError, r"steps must be >= 1, got steps=0"),
        (lambda: cosine(0.1, 0.0, 2.5), TypeError, r"steps must be an int, got steps=2.5"),
        (lambda: linear(float("nan"), 0.0, 3), ValueError, r"start must be finite"),
        (lambda: constant("0.1"), TypeError, r"eps must be a real number"),
        (lambda: piecewise([0.1], [3]), ValueError, r"one entry more than boundaries"),
        (lambda: piecewise([0.1, 0, 0], [3, 3]), ValueError, r"strictly increasing"),
        (lambda: piecewise([0.1, 0], [0]), ValueError, r"positive"),
        (lambda: piecewise(0.1, [3]), TypeError, r"values must be a sequence"),
        (lambda: linear(0.1, 0.0, 3)(-1), ValueError, r"step must be >= 0, got step=-1"),
    ],
)
def test_errors_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_scheduler_drives_the_module_and_the_loss_follows():
    criterion = ls.nn.LabelSmoothingCrossEntropy(style="others")
    scheduler = EpsScheduler(criterion, linear(0.3, 0.0, steps=3))
    logits, target = (
        torch.randn(8, 5, generator=torch.Generator().manual_seed(0)),
        torch.arange(8) % 5,
    )
    seen = []
    for _ in range(5):
        seen.append(criterion.eps)
        expected = ls.cross_entropy(logits, target, criterion.eps, style="others")
        torch.testing.assert_close(criterion(logits, target), expected)
        scheduler.step()
    assert seen == pytest.approx([0.3, 0.2, 0.1, 0.0, 0.0])
    assert "eps=0.0" in repr(scheduler)


def test_scheduler_resumes_from_its_state_and_accepts_any_callable():
    schedule = cosine(0.2, 0.0, steps=10)
    first = ls.nn.LabelSmoothingCrossEntropy()
    scheduler = EpsScheduler(first, schedule)
    for _ in range(4):
        scheduler.step()
    state = scheduler.state_dict()
    assert state == {"last_step": 4}
    second = ls.nn.LabelSmoothingCrossEntropy()
    resumed = EpsScheduler(second, schedule)
    resumed.load_state_dict(state)
    assert second.eps == first.eps == schedule(4)
    custom = EpsScheduler(ls.nn.LabelSmoothingBCEWithLogits(), lambda step: 0.1 / (1 + step))
    custom.step()
    assert custom.criterion.eps == pytest.approx(0.05)


def test_scheduler_refuses_bad_criterion_schedule_and_values():
    with pytest.raises(TypeError, match="criterion must have an eps attribute"):
        EpsScheduler(torch.nn.CrossEntropyLoss(), constant(0.1))
    with pytest.raises(TypeError, match="schedule must be callable"):
        EpsScheduler(ls.nn.LabelSmoothingCrossEntropy(), 0.1)
    with pytest.raises(ValueError, match=r"schedule\(0\) returned nan"):
        EpsScheduler(ls.nn.LabelSmoothingCrossEntropy(), lambda step: float("nan"))
    scheduler = EpsScheduler(ls.nn.LabelSmoothingCrossEntropy(), constant(0.1))
    with pytest.raises(ValueError, match="last_step must be >= 0"):
        scheduler.load_state_dict({"last_step": -1})
    with pytest.raises(ValueError, match="last_step must be >= -1"):
        EpsScheduler(ls.nn.LabelSmoothingCrossEntropy(), constant(0.1), last_step=-2)


def test_no_triton_kernel_takes_the_rate_as_a_compile_time_constant():
    # Liger-Kernel, TransformerEngine and fla declare eps a `tl.constexpr`, so every new value of
    # a schedule compiles the kernel again. Ours take it (and the coefficients derived from it)
    # as runtime arguments: the only constexprs are block sizes, flags and precision choices.
    pytest.importorskip("triton")
    from labelsmooth.kernels import linear_triton, triton_ce

    kernels = [triton_ce._ce_rows_kernel, *linear_triton._kernels()]
    allowed_prefixes = ("BLOCK", "HAS_", "NEED_", "BETA_IS_", "ACC", "PRECISION", "UPCAST")
    for kernel in kernels:
        constexprs = [p.name for p in kernel.params if p.is_constexpr]
        assert constexprs, kernel
        assert all(name.startswith(allowed_prefixes) for name in constexprs), constexprs
        # The smoothing reaches the kernels as runtime data: per-row coefficients (pointers)
        # or plain scalars, never a specialised constant.
        runtime = [p.name for p in kernel.params if not p.is_constexpr]
        assert any(name.endswith(("_ptr", "PTR")) or name.isupper() for name in runtime)


@pytest.mark.parametrize("state", [None, [3], 3])
def test_load_state_dict_of_a_non_mapping_raises(state):
    scheduler = EpsScheduler(ls.nn.LabelSmoothingCrossEntropy(), constant(0.1))
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        scheduler.load_state_dict(state)


def test_a_schedule_value_that_requires_grad_raises():
    learnt = torch.tensor(0.1, requires_grad=True)
    with pytest.raises(TypeError, match=r"schedule\(0\) returned .*requires grad"):
        EpsScheduler(ls.nn.LabelSmoothingCrossEntropy(), lambda step: learnt)
