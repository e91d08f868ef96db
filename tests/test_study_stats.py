"""The study's evidence rules for one comparison (labelsmooth.study.stats).

Paired by seed, a Student-t interval over the per-seed differences (df = n - 1) that must agree
with scipy, significance iff the interval excludes 0, and words that follow the interval.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from labelsmooth.study.stats import (
    Comparison,
    describe,
    format_delta,
    format_interval,
    judge,
    paired_comparison,
    t_quantile,
)

NAN = float("nan")
DIRECTION_WORDS = re.compile(r"\b(better|worse|raised|lowered)\b")
NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?"
INTERVAL = re.compile(rf"95% CI \[(?P<low>{NUMBER}), (?P<high>{NUMBER})\]")
NEGATIVE_ZERO = re.compile(r"-0(?:\.0*)?(?![\d.])")
CAP = 5e-7  # half a unit of the 6th decimal, the most format_interval prints

values = st.floats(
    min_value=-10, max_value=10, allow_nan=False, allow_infinity=False, allow_subnormal=False
)


@st.composite
def paired_samples(draw):
    """Independent arms, or an arm = baseline + effect + small noise (often significant)."""
    n = draw(st.integers(min_value=2, max_value=10))
    baseline = draw(st.lists(values, min_size=n, max_size=n))
    if draw(st.booleans()):
        arm = draw(st.lists(values, min_size=n, max_size=n))
    else:
        effect = draw(values)
        noise = st.floats(min_value=-0.1, max_value=0.1, allow_subnormal=False)
        arm = [b + effect + draw(noise) for b in baseline]
    return arm, baseline


def scipy_paired(arm, baseline):
    """(p-value, low, high) of scipy's paired t-test; its precision warnings are irrelevant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = scipy_stats.ttest_rel(arm, baseline)
        interval = result.confidence_interval(0.95)
    return float(result.pvalue), float(interval.low), float(interval.high)


def printed_interval(text):
    match = INTERVAL.search(text)
    assert match, text
    return float(match["low"]), float(match["high"])


def comparison(mean, low, high, n=5):
    return Comparison(0.0, 0.0, mean, low, high, n)


# ----------------------------------------------------------------------------------------------
# paired_comparison against scipy
# ----------------------------------------------------------------------------------------------


@given(paired_samples())
def test_paired_comparison_matches_scipy_ttest_rel(sample):
    arm, baseline = sample
    deltas = [a - b for a, b in zip(arm, baseline, strict=True)]
    assume(len(set(deltas)) > 1)  # zero variance: see test_identical_differences_*
    pvalue, low, high = scipy_paired(arm, baseline)
    assume(math.isfinite(pvalue) and abs(pvalue - 0.05) > 1e-9)

    c = paired_comparison(arm, baseline)
    tol = 1e-9 * (1 + max(abs(d) for d in deltas))
    assert c.n_seeds == len(arm)
    assert c.mean_delta == pytest.approx(math.fsum(deltas) / len(deltas), abs=tol)
    assert c.arm_mean == pytest.approx(math.fsum(arm) / len(arm), abs=tol)
    assert c.baseline_mean == pytest.approx(math.fsum(baseline) / len(baseline), abs=tol)
    assert c.ci_low == pytest.approx(low, abs=tol)
    assert c.ci_high == pytest.approx(high, abs=tol)
    assert c.ci_low <= c.mean_delta <= c.ci_high
    assert c.significant == (pvalue < 0.05)
    assert c.significant == (c.ci_low > 0 or c.ci_high < 0)
    event("significant" if c.significant else "not significant")


def test_docstring_example_numbers():
    c = paired_comparison([0.20, 0.22, 0.21], [0.30, 0.31, 0.33])
    _, low, high = scipy_paired([0.20, 0.22, 0.21], [0.30, 0.31, 0.33])
    assert (c.ci_low, c.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert (round(c.ci_low, 3), round(c.ci_high, 3)) == (-0.141, -0.065)
    assert c.significant


@pytest.mark.parametrize("n, expected", [(2, 12.7062), (3, 4.3027), (5, 2.7764), (10, 2.2622)])
def test_t_quantile_uses_n_minus_one_degrees_of_freedom(n, expected):
    # textbook two-sided 95% Student-t critical values for df = 1, 2, 4, 9
    assert t_quantile(n) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("n", [0, 1])
def test_t_quantile_needs_two_pairs(n):
    assert math.isnan(t_quantile(n))


def test_pairing_is_by_seed_not_by_pooled_samples():
    # the seed effect (0, 1, 2, ...) dwarfs the arm effect; pairing removes it
    baseline = [float(s) for s in range(5)]
    arm = [s + 0.01 + 0.001 * (-1) ** s for s in baseline]
    c = paired_comparison(arm, baseline)
    assert c.significant and c.mean_delta > 0
    unpaired = scipy_stats.ttest_ind(arm, baseline)
    assert unpaired.pvalue > 0.5  # an unpaired test would see nothing


# ----------------------------------------------------------------------------------------------
# Missing values, too few pairs, bad input, zero variance
# ----------------------------------------------------------------------------------------------


def test_missing_values_drop_the_whole_pair():
    arm = [1.0, None, 3.0, NAN, 5.0, 2.0]
    baseline = [0.0, 1.0, NAN, 2.0, 4.5, 1.75]
    c = paired_comparison(arm, baseline)
    kept_arm, kept_baseline = [1.0, 5.0, 2.0], [0.0, 4.5, 1.75]
    assert c.n_seeds == 3
    assert c.arm_mean == pytest.approx(8.0 / 3)
    assert c.baseline_mean == pytest.approx(6.25 / 3)
    assert c.mean_delta == pytest.approx((1.0 + 0.5 + 0.25) / 3)
    _, low, high = scipy_paired(kept_arm, kept_baseline)
    assert (c.ci_low, c.ci_high) == pytest.approx((low, high))


def test_infinite_values_are_dropped_like_nan():
    c = paired_comparison([1.0, float("inf"), 2.0, 3.5], [0.0, 0.0, float("-inf"), 3.0])
    assert c.n_seeds == 2
    assert c.mean_delta == pytest.approx(0.75)


@pytest.mark.parametrize(
    "arm, baseline, n",
    [([5.0], [1.0], 1), ([5.0, None, 4.0], [1.0, 2.0, None], 1), ([None], [1.0], 0), ([], [], 0)],
)
def test_fewer_than_two_pairs_has_no_interval_and_is_never_significant(arm, baseline, n):
    c = paired_comparison(arm, baseline)
    assert c.n_seeds == n
    assert math.isnan(c.ci_low) and math.isnan(c.ci_high)
    assert not c.significant
    assert not c.improves(True) and not c.worsens(True)
    assert judge(c, higher_is_better=True) == "no detectable difference"
    if n == 1:
        assert c.mean_delta == pytest.approx(4.0)
        assert describe(c, "NLL", higher_is_better=False) == (
            "made no detectable difference in NLL (no interval with 1 seed)"
        )
        assert format_delta(c) == "+4.000"
    else:
        assert math.isnan(c.mean_delta)
        assert format_interval(c) == "no interval with 0 seeds"
        assert format_delta(c) == "–"
    record = c.as_dict()
    assert record["ci_low"] is None and record["ci_high"] is None
    assert record["significant"] is False and record["n_seeds"] == n


@pytest.mark.parametrize(
    "arm, baseline", [([1.0, 2.0], [1.0]), ([1.0], [1.0, 2.0]), ([1.0, None], [1.0])]
)
def test_mismatched_lengths_raise(arm, baseline):
    with pytest.raises(ValueError, match="aligned by seed"):
        paired_comparison(arm, baseline)


def test_identical_nonzero_differences_give_a_zero_width_significant_interval():
    # Documented behaviour: a difference that is exactly the same on every seed has zero
    # variance; the interval collapses to [d, d] and excludes 0, as scipy's does (p = 0).
    arm, baseline = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    c = paired_comparison(arm, baseline)
    pvalue, low, high = scipy_paired(arm, baseline)
    assert (c.ci_low, c.mean_delta, c.ci_high) == (0.25, 0.25, 0.25)
    assert (low, high) == (0.25, 0.25) and pvalue == 0.0
    assert c.significant
    assert (
        describe(c, "NLL", higher_is_better=False) == "raised NLL by 0.250 (95% CI [0.250, 0.250])"
    )


def test_identical_zero_differences_are_not_significant():
    # all differences 0: interval [0, 0], not significant (scipy's p-value is nan here)
    c = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    pvalue, low, high = scipy_paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (c.ci_low, c.mean_delta, c.ci_high) == (0.0, 0.0, 0.0)
    assert math.isnan(pvalue) and (low, high) == (0.0, 0.0)
    assert not c.significant
    assert describe(c, "NLL", higher_is_better=False) == (
        "made no difference in NLL (identical in every seed)"
    )


# ----------------------------------------------------------------------------------------------
# describe: words follow the interval
# ----------------------------------------------------------------------------------------------


def test_describe_examples():
    c = paired_comparison([0.20, 0.22, 0.21], [0.30, 0.31, 0.33])
    assert describe(c, "NLL", higher_is_better=False) == (
        "lowered NLL by 0.103 (95% CI [-0.141, -0.065])"
    )
    # the direction word does not depend on which direction is better
    assert describe(c, "accuracy", higher_is_better=True).startswith("lowered accuracy by 0.103")
    up = paired_comparison([0.30, 0.31, 0.33], [0.20, 0.22, 0.21])
    assert describe(up, "ECE", higher_is_better=False, digits=2) == (
        "raised ECE by 0.10 (95% CI [0.07, 0.14])"
    )
    flat = paired_comparison([0.30, 0.20, 0.25], [0.20, 0.30, 0.25])
    assert describe(flat, "NLL", higher_is_better=False) == (
        "made no detectable difference in NLL (95% CI [-0.248, 0.248])"
    )


@given(paired_samples(), st.booleans(), st.integers(min_value=1, max_value=4))
def test_describe_words_follow_the_interval(sample, higher, digits):
    c = paired_comparison(*sample)
    assume(not math.isnan(c.ci_low))
    # below the 6-digit cap of format_interval an end prints in scientific notation
    assume(all(abs(v) >= CAP for v in (c.ci_low, c.ci_high) if v != 0))
    text = describe(c, "NLL", higher_is_better=higher, digits=digits)
    event("significant" if c.significant else "not significant")
    if c.ci_low == 0 == c.ci_high:  # every paired difference is 0
        assert text == "made no difference in NLL (identical in every seed)"
        return
    low, high = printed_interval(text)
    assert low <= high
    if c.significant:
        verb = "raised" if c.mean_delta > 0 else "lowered"
        assert text.startswith(f"{verb} NLL by ")
        assert "95% CI [" in text
        assert not re.search(r"\b(better|worse)\b", text)
    else:
        assert text.startswith("made no detectable difference in NLL (95% CI [")
        assert not DIRECTION_WORDS.search(text)
    # the words' rule, read back from the printed numbers alone
    same_sign = (low > 0 and high > 0) or (low < 0 and high < 0)
    assert bool(re.match(r"(raised|lowered) ", text)) == same_sign, text
    if same_sign:
        assert text.startswith("raised" if low > 0 else "lowered")


def check_printed_ends(mean, low, high):
    c = comparison(mean, low, high)
    assert c.significant
    text = describe(c, "NLL", higher_is_better=False)
    printed_low, printed_high = printed_interval(text)
    assert printed_low != 0 and printed_high != 0, text
    assert (printed_low > 0) == (low > 0) and (printed_high > 0) == (high > 0), text
    size = float(re.match(rf"(raised|lowered) NLL by ({NUMBER}) ", text)[2])
    assert size > 0, text


@pytest.mark.parametrize(
    "mean, low, high",
    [(0.005, 0.0001, 0.01), (5e-4, 4e-4, 6e-4), (-0.02, -0.04, -2e-4), (2e-6, 1e-6, 3e-6)],
)
def test_significant_interval_never_prints_an_end_as_zero(mean, low, high):
    check_printed_ends(mean, low, high)


@pytest.mark.parametrize("mean, low, high", [(2e-9, 1e-9, 3e-9), (-3e-7, -4e-7, -2e-7)])
def test_significant_interval_below_a_millionth_prints_its_ends(mean, low, high):
    check_printed_ends(mean, low, high)


# ----------------------------------------------------------------------------------------------
# format_delta / format_interval
# ----------------------------------------------------------------------------------------------


def test_format_examples():
    c = comparison(0.012, 0.004, 0.020)
    assert format_delta(c) == "+0.012 [0.004, 0.020]"
    assert format_interval(c) == "95% CI [0.004, 0.020]"
    assert format_delta(comparison(-0.25, -0.5, -0.125), digits=2) == "-0.25 [-0.50, -0.12]"


def decimals(text):
    return len(text.partition(".")[2])


@pytest.mark.parametrize(
    "mean, low, high",
    [
        (2e-5, 1e-5, 3e-5),
        (-2e-4, -3e-4, -1e-4),
        (1e-5, -2e-5, 4e-5),
        (0.005, 0.0001, 0.01),
        (-1e-6, -3e-6, 2e-6),
    ],
)
def test_tiny_differences_get_extra_digits(mean, low, high):
    c = comparison(mean, low, high)
    interval = format_interval(c)
    assert "[0, 0]" not in interval and "[0," not in interval and ", 0]" not in interval
    match = INTERVAL.search(interval)
    places = max(decimals(match["low"]), decimals(match["high"]))
    assert places > 3  # more than the default precision
    for printed, true in ((match["low"], low), (match["high"], high)):
        assert float(printed) == pytest.approx(true, abs=0.5 * 10**-places + 1e-15)
        assert (float(printed) > 0) == (true > 0)
    delta = format_delta(c)
    assert "[0, 0]" not in delta
    assert delta.startswith("+" if mean > 0 else "-")


def test_non_zero_interval_below_a_millionth_does_not_print_as_zero():
    c = comparison(1e-8, -1e-8, 3e-8)
    assert "[0, 0]" not in format_interval(c)


def test_exact_zeros_print_as_zero():
    c = comparison(0.0, 0.0, 0.0)
    assert format_interval(c) == "95% CI [0, 0]"
    assert format_delta(c) == "0 [0, 0]"
    assert format_delta(comparison(-0.0, -0.0, 0.0)) == "0 [0, 0]"


@pytest.mark.parametrize(
    "mean, low, high",
    [(-0.0001, -0.004, 0.0003), (-1e-9, -0.5, 0.4), (-1e-13, -1e-13, 0.2), (-0.0, -0.0, 0.0)],
)
def test_no_negative_zero(mean, low, high):
    c = comparison(mean, low, high)
    for text in (format_interval(c), format_delta(c), describe(c, "NLL", higher_is_better=True)):
        assert not NEGATIVE_ZERO.search(text), text


@given(values, values, values, st.integers(min_value=1, max_value=4))
@example(0.0001, 0.01, 0.005, 3)
@example(-0.04, -0.0002, -0.02, 3)
@example(-0.0004, 0.0003, -0.0001, 3)
def test_formatting_never_prints_negative_zero_nor_hides_a_nonzero_interval(a, b, m, digits):
    low, high = sorted((a, b))
    c = comparison(min(max(m, low), high), low, high)
    texts = [
        format_interval(c, digits),
        format_delta(c, digits),
        describe(c, "NLL", higher_is_better=False, digits=digits),
    ]
    for text in texts:
        assert not NEGATIVE_ZERO.search(text), text
        assert "+0 " not in text and not text.startswith("+0 ")
    printed_low, printed_high = printed_interval(texts[0])
    for printed, true in ((printed_low, low), (printed_high, high)):
        if abs(true) >= CAP:  # above the 6-digit cap a non-zero end never prints as 0
            assert printed != 0 and (printed > 0) == (true > 0), texts[0]
        elif true == 0:
            assert printed == 0


# ----------------------------------------------------------------------------------------------
# judge
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean, low, high, higher, expected",
    [
        (0.1, 0.05, 0.15, True, "better"),
        (0.1, 0.05, 0.15, False, "worse"),
        (-0.1, -0.15, -0.05, True, "worse"),
        (-0.1, -0.15, -0.05, False, "better"),
        (0.1, -0.05, 0.25, True, "no detectable difference"),
        (-0.1, -0.25, 0.05, False, "no detectable difference"),
        (0.1, 0.0, 0.2, True, "no detectable difference"),  # an end at 0 does not exclude it
    ],
)
def test_judge(mean, low, high, higher, expected):
    c = comparison(mean, low, high)
    assert judge(c, higher_is_better=higher) == expected
    assert c.improves(higher) == (expected == "better")
    assert c.worsens(higher) == (expected == "worse")


def test_judge_needs_two_seeds():
    assert judge(comparison(0.1, 0.05, 0.15, n=1), higher_is_better=True) == (
        "no detectable difference"
    )
