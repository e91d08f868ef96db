"""Paired comparisons over seeds, and the words the report may use for them.

Every comparison in the study is *paired by seed*: the arm's run and the baseline's run of the
same seed share the initialisation, the batch order, the validation split and the noisy labels,
so their difference removes most of the seed-to-seed variation. The interval is Student's t
over the per-seed differences:

.. math::

    \\bar d \\pm t_{0.975,\\,n-1}\\, s_d / \\sqrt{n}

A comparison is *significant* when that 95% interval excludes 0. Only significant comparisons
get words such as "better", "worse", "raised" or "lowered"; every other comparison reads
"made no detectable difference in <metric> (95% CI [a, b])" — see :func:`describe`.

Example:
    >>> c = paired_comparison([0.20, 0.22, 0.21], [0.30, 0.31, 0.33])
    >>> round(c.mean_delta, 3), c.significant
    (-0.103, True)
    >>> describe(c, "NLL", higher_is_better=False)
    'lowered NLL by 0.103 (95% CI [-0.141, -0.065])'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as _scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Comparison:
    """An arm against its baseline, paired over ``n_seeds`` seeds (arm minus baseline)."""

    arm_mean: float
    baseline_mean: float
    mean_delta: float
    ci_low: float
    ci_high: float
    n_seeds: int

    @property
    def significant(self) -> bool:
        """The 95% interval excludes 0 (never with fewer than 2 seeds)."""
        if self.n_seeds < 2 or math.isnan(self.ci_low) or math.isnan(self.ci_high):
            return False
        return self.ci_low > 0 or self.ci_high < 0

    def improves(self, higher_is_better: bool) -> bool:
        """Significant, in the direction that is better for the metric."""
        return self.significant and (self.mean_delta > 0) == higher_is_better

    def worsens(self, higher_is_better: bool) -> bool:
        return self.significant and (self.mean_delta > 0) != higher_is_better

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["significant"] = self.significant
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()
        }


def t_quantile(n_seeds: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t quantile for ``n_seeds`` paired differences (df = n - 1)."""
    if n_seeds < 2:
        return math.nan
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2, n_seeds - 1))


def paired_comparison(arm: Sequence[float], baseline: Sequence[float]) -> Comparison:
    """Mean of ``arm[i] - baseline[i]`` with its 95% t-interval over the pairs.

    ``arm`` and ``baseline`` are aligned by seed. Pairs where either value is missing (None or
    nan: a diverged run) are dropped, so ``n_seeds`` counts the complete pairs. With fewer than
    two pairs the interval is nan and the comparison is never significant.
    """
    if len(arm) != len(baseline):
        raise ValueError(
            f"arm and baseline must be aligned by seed, got {len(arm)} and {len(baseline)} values"
        )
    pairs = [
        (float(a), float(b))
        for a, b in zip(arm, baseline, strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    n = len(pairs)
    if n == 0:
        return Comparison(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
    deltas = [a - b for a, b in pairs]
    mean_delta = math.fsum(deltas) / n
    arm_mean = math.fsum(a for a, _ in pairs) / n
    baseline_mean = math.fsum(b for _, b in pairs) / n
    if n < 2:
        return Comparison(arm_mean, baseline_mean, mean_delta, math.nan, math.nan, n)
    variance = math.fsum((d - mean_delta) ** 2 for d in deltas) / (n - 1)
    half_width = t_quantile(n) * math.sqrt(variance / n)
    return Comparison(
        arm_mean, baseline_mean, mean_delta, mean_delta - half_width, mean_delta + half_width, n
    )


def format_number(value: float, digits: int, *, sign: bool = False) -> str:
    """``value`` to ``digits`` decimals; "0" when it rounds to zero (never "-0.000")."""
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return "0" if float(text) == 0 else text


def _end(value: float, digits: int) -> str:
    """An interval end or a significant size: never printed as 0 unless it is 0 (below a
    millionth it falls back to scientific notation)."""
    text = format_number(value, digits)
    if text == "0" and abs(value) > 1e-300:
        return f"{value:.1e}"
    return text


def _digits_for(comparison: Comparison, digits: int) -> int:
    """``digits``, or more when the interval would otherwise print as [0, 0]: a difference
    smaller than the printed precision still shows its sign and size."""
    ends = [abs(v) for v in (comparison.ci_low, comparison.ci_high) if math.isfinite(v)]
    ends = [v for v in ends if v > 1e-12]
    while ends and digits < 6 and min(ends) < 0.5 * 10 ** (-digits):
        digits += 1
    return digits


def format_interval(comparison: Comparison, digits: int = 3) -> str:
    """``95% CI [a, b]`` (or ``no interval with 1 seed``)."""
    if math.isnan(comparison.ci_low):
        return f"no interval with {comparison.n_seeds} seed{'s' * (comparison.n_seeds != 1)}"
    digits = _digits_for(comparison, digits)
    low, high = _end(comparison.ci_low, digits), _end(comparison.ci_high, digits)
    return f"95% CI [{low}, {high}]"


def format_delta(comparison: Comparison, digits: int = 3) -> str:
    """``+0.012 [0.004, 0.020]``: the mean difference and its interval, for table cells."""
    if math.isnan(comparison.mean_delta):
        return "–"
    digits = _digits_for(comparison, digits)
    delta = format_number(comparison.mean_delta, digits, sign=True)
    if math.isnan(comparison.ci_low):
        return delta
    low, high = _end(comparison.ci_low, digits), _end(comparison.ci_high, digits)
    return f"{delta} [{low}, {high}]"


def describe(
    comparison: Comparison, metric: str, *, higher_is_better: bool, digits: int = 3
) -> str:
    """Words for a comparison, chosen by its interval alone.

    A verb phrase, so that it reads after any subject ("temperature scaling ..."):
    significant: ``"raised accuracy by 0.012 (95% CI [...])"`` or ``"lowered NLL by ..."``;
    otherwise ``"made no detectable difference in NLL (95% CI [a, b])"``, or ``"made no
    difference in NLL (identical in every seed)"`` when every paired difference is 0. The
    direction word
    is neutral ("raised"/"lowered"); :func:`judge` says whether that is better or worse.
    """
    interval = format_interval(comparison, digits)
    if comparison.n_seeds >= 2 and comparison.ci_low == 0 == comparison.ci_high:
        return f"made no difference in {metric} (identical in every seed)"
    if not comparison.significant:
        return f"made no detectable difference in {metric} ({interval})"
    verb = "raised" if comparison.mean_delta > 0 else "lowered"
    size = _end(abs(comparison.mean_delta), _digits_for(comparison, digits))
    return f"{verb} {metric} by {size} ({interval})"


def judge(comparison: Comparison, *, higher_is_better: bool) -> str:
    """``"better"``, ``"worse"`` or ``"no detectable difference"`` — from the interval only."""
    if comparison.improves(higher_is_better):
        return "better"
    if comparison.worsens(higher_is_better):
        return "worse"
    return "no detectable difference"


__all__ = [
    "CONFIDENCE",
    "Comparison",
    "describe",
    "format_delta",
    "format_interval",
    "format_number",
    "judge",
    "paired_comparison",
    "t_quantile",
]
