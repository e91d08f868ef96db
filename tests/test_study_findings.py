"""The study's evidence rules over whole result sets (labelsmooth.study.findings).

Built on synthetic ``results.jsonl`` records: choices are made on validation metrics only,
comparisons are paired by seed, the words follow the intervals and the recommendation follows
the significant comparisons.

The synthetic metrics are ``base + 0.01 * seed + shift + noise``: the seed term is shared by
every arm of a seed (pairing removes it), and the noise is a zero-sum pattern over the five
seeds, rotated per arm and metric, so an arm without a shift differs from its baseline by
exactly 0 on average (never significant) and a shift well above the noise is significant.
"""

from __future__ import annotations

import copy
import math
import random
import re
import statistics
import warnings

import pytest
from scipy import stats as scipy_stats

from labelsmooth.study.findings import (
    METRICS,
    arm_label,
    count_runs,
    group_results,
    higher_is_better,
)
from labelsmooth.study.registry import analyse

SEEDS = (0, 1, 2, 3, 4)
PATTERN = (1.0, -1.0, 0.5, -0.5, 0.0)  # sums to 0 over the five seeds
CLASSIFIER = (
    "accuracy",
    "nll",
    "brier",
    "ece",
    "ece_quantile",
    "aurc",
    "excess_aurc",
    "confidence",
    "logit_gap",
)
MULTILABEL = (
    "macro_auroc",
    "label_ece",
    "nll",
    "accuracy",
    "mean_prob_positive",
    "mean_prob_negative",
    "val_accuracy",
    "val_nll",
)
BASE = {
    "accuracy": 0.80,
    "nll": 0.60,
    "brier": 0.30,
    "ece": 0.05,
    "ece_quantile": 0.06,
    "aurc": 0.08,
    "excess_aurc": 0.03,
    "confidence": 0.85,
    "logit_gap": 4.0,
    "theoretical_gap": 3.0,
    "val_accuracy": 0.80,
    "val_nll": 0.60,
    "val_nll_ts": 0.60,
    "mutual_information": 1.0,
    "flipped": 0.0,
    "macro_auroc": 0.90,
    "label_ece": 0.04,
    "mean_prob_positive": 0.70,
    "mean_prob_negative": 0.20,
}
EXACT = {"temperature": 1.0, "temperature_applied": 1.0, "temperature_ok": 1.0, "best_epoch": 10.0}
COMPARISON_KEYS = {
    "experiment",
    "setting",
    "arm",
    "baseline",
    "metric",
    "higher_is_better",
    "arm_mean",
    "baseline_mean",
    "mean_delta",
    "ci_low",
    "ci_high",
    "n_seeds",
    "significant",
    "selected_on",
}
RECOMMENDATION_KEYS = {"smooth", "eps", "style", "temperature_scaling", "text", "selected_on"}


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def classifier_names(*extra: str) -> tuple[str, ...]:
    """The metric names of measure_classifier (sweep, noise, distillation runs)."""
    return (
        *CLASSIFIER,
        *(f"ts_{m}" for m in CLASSIFIER),
        "final_accuracy",
        "final_nll",
        "final_ece",
        "val_accuracy",
        "val_nll",
        "val_nll_ts",
        *extra,
    )


def measured(names, index, seed, shifts, scale):
    out = {}
    for offset, name in enumerate(names):
        base = BASE[name.removeprefix("ts_").removeprefix("final_")]
        noise = scale * PATTERN[(seed + index + offset) % len(PATTERN)]
        out[name] = base + 0.01 * seed + shifts.get(name, 0.0) + noise
    out.update({k: shifts.get(k, v) for k, v in EXACT.items() if k not in MULTILABEL})
    return out


def record(experiment, setting, params, seed, metrics, status="ok"):
    key = "|".join([experiment, setting, *map(str, params.values()), str(seed)])
    return {
        "key": key,
        "status": status,
        "experiment": experiment,
        "setting": setting,
        "params": dict(params),
        "seed": seed,
        "metrics": metrics,
    }


def sweep(arms, *, setting="main", scale=0.002, seeds=SEEDS):
    """``arms``: [((eps, style), shifts)], the baseline (eps 0) first."""
    records = []
    for index, ((eps, style), shifts) in enumerate(arms):
        names = classifier_names("theoretical_gap") if eps else classifier_names()
        params = {"style": style if eps else "none", "eps": eps}
        for seed in seeds:
            metrics = measured(names, index, seed, shifts, scale)
            records.append(record("sweep", setting, params, seed, metrics))
    return records


BASELINE = ((0.0, "uniform"), {})

# Main sweep: validation NLL chooses eps 0.05 uniform; validation NLL after TS chooses eps 0.1
# uniform; the test NLL (the oracle) prefers eps 0.1 others. Every arm + TS is clearly better
# than the baseline + TS on test NLL, so a smoothing recommendation survives any reshuffle of
# the arms' test metrics.
MAIN_ARMS = [
    BASELINE,
    ((0.05, "uniform"), {"val_nll": -0.04, "val_nll_ts": -0.01, "nll": -0.01, "ts_nll": -0.03}),
    ((0.1, "uniform"), {"val_nll": -0.01, "val_nll_ts": -0.04, "nll": 0.0, "ts_nll": -0.05}),
    ((0.1, "others"), {"val_nll": -0.02, "val_nll_ts": -0.02, "nll": -0.06, "ts_nll": -0.06}),
    ((0.2, "uniform"), {"val_nll": 0.01, "val_nll_ts": -0.03, "nll": 0.02, "ts_nll": -0.04}),
]
OVERCONFIDENT_ARMS = [
    BASELINE,
    ((0.1, "uniform"), {"val_nll": -0.02, "val_nll_ts": -0.01, "accuracy": -0.03, "ece": 0.02}),
    ((0.2, "uniform"), {"val_nll": -0.01, "val_nll_ts": -0.02, "accuracy": 0.03, "brier": -0.02}),
]
# The penultimate geometry of the main sweep: eps 0.1 uniform has clearly tighter clusters in the
# template plane, no detectable change in the full space.
GEOMETRY = {
    0.0: {"spread_ratio_plane": 0.30, "spread_ratio_full": 0.50},
    0.05: {"spread_ratio_plane": 0.30, "spread_ratio_full": 0.50},
    0.1: {"spread_ratio_plane": 0.20, "spread_ratio_full": 0.50},
    0.2: {"spread_ratio_plane": 0.21, "spread_ratio_full": 0.51},
}


def full_study():
    return [
        *sweep(MAIN_ARMS),
        *sweep(OVERCONFIDENT_ARMS, setting="overconfident"),
    ]


def params_of(group):
    return None if group is None else (group.params.get("eps"), group.params.get("style"))


def choices(findings):
    """Every choice the analysis made, in comparable form."""
    return {
        "best": params_of(findings.sections["sweep:main"]["best"]),
        "best_ts": params_of(findings.sections["sweep:main"]["best_ts"]),
        "overconfident best": params_of(findings.sections["sweep:overconfident"]["best"]),
        "overconfident best_ts": params_of(findings.sections["sweep:overconfident"]["best_ts"]),
    }


EXPECTED_CHOICES = {
    "best": (0.05, "uniform"),
    "best_ts": (0.1, "uniform"),
    "overconfident best": (0.1, "uniform"),
    "overconfident best_ts": (0.2, "uniform"),
}


def is_test_metric(name):
    return not name.startswith("val_")


def replace_test_metrics(records, new_metrics):
    """A copy of ``records`` where ``new_metrics(record)`` gives every test metric anew."""
    out = copy.deepcopy(records)
    for rec in out:
        if rec["metrics"] is not None:
            rec["metrics"].update(new_metrics(rec))
    return out


def randomised_test_metrics(records, seed):
    rng = random.Random(seed)
    return replace_test_metrics(
        records, lambda rec: {k: rng.uniform(-1, 2) for k in rec["metrics"] if is_test_metric(k)}
    )


def reversed_test_metrics(records):
    """Within each pool of non-baseline arms that a choice is made from, per seed, the arm
    that was best on test NLL gets the test metrics of the worst, and so on."""

    def pool(rec):
        params = rec["params"]
        if rec["experiment"] == "noise":
            return params["noise"]
        if rec["experiment"] == "distillation":
            return (rec["setting"], params["teacher_eps"])
        return rec["setting"]

    def is_baseline(rec):
        return rec["params"].get("eps") == 0 or rec["params"].get("teacher_eps") == "labels"

    out = copy.deepcopy(records)
    pools = {}
    for rec in out:
        if not is_baseline(rec):
            pools.setdefault((rec["experiment"], pool(rec), rec["seed"]), []).append(rec)
    for members in pools.values():
        members.sort(key=lambda rec: rec["metrics"]["nll"])
        tests = [{k: v for k, v in r["metrics"].items() if is_test_metric(k)} for r in members]
        for rec, test in zip(members, reversed(tests), strict=True):
            rec["metrics"].update(test)
    return out


def shift_metric(records, metric, amount, **match):
    out = copy.deepcopy(records)
    for rec in out:
        if all(rec.get(k, rec["params"].get(k)) == v for k, v in match.items()):
            rec["metrics"][metric] += amount
    return out


def scipy_interval(arm, baseline):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ci = scipy_stats.ttest_rel(arm, baseline).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def per_seed(records, metric, **match):
    chosen = [
        r for r in records if all(r.get(k, r["params"].get(k)) == v for k, v in match.items())
    ]
    return [r["metrics"][metric] for r in sorted(chosen, key=lambda r: r["seed"])]


# ----------------------------------------------------------------------------------------------
# The wording rule, read back from the sentences
# ----------------------------------------------------------------------------------------------

LABELS = "|".join(re.escape(label) for label, _, _ in sorted(METRICS.values(), reverse=True))
NUMBER = r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?"
SIGNIFICANT = re.compile(
    rf"\b(?P<verb>raised|lowered) (?P<metric>{LABELS}) by (?P<size>{NUMBER}) "
    rf"\(95% CI \[(?P<low>{NUMBER}), (?P<high>{NUMBER})\]\)"
)
NOT_SIGNIFICANT = re.compile(
    rf"made no detectable difference in (?P<metric>{LABELS}) "
    rf"\(95% CI \[(?P<low>{NUMBER}), (?P<high>{NUMBER})\]\)"
)
GAP = re.compile(
    rf"The baseline was (?P<state>over-confident|under-confident|neither detectably "
    rf"over- nor under-confident): .*\(confidence minus accuracy [-+]?{NUMBER}, "
    rf"95% CI \[(?P<low>{NUMBER}), (?P<high>{NUMBER})\]\)"
)
# the recommendation's two phrases without an interval, checked against the comparison itself
NEGATIVE_ZERO = re.compile(r"-0(?:\.0*)?(?![\d.])")
BARE_LOWERED = "(it lowered the baseline's NLL)"
BARE_NO_DIFFERENCE = re.compile(r"temperature scaling made no detectable difference(?: to NLL)?\.")


def all_sentences(findings):
    sentences = []
    for name, section in findings.sections.items():
        if name != "groups":
            sentences.extend(section["sentences"])
    return [*sentences, findings.recommendation["text"]]


def check_wording(text):
    """Every direction word sits on an interval that excludes 0 in that direction, every "no
    detectable difference" on one that contains 0, and "better"/"worse" never appear."""
    significant = list(SIGNIFICANT.finditer(text))
    for match in significant:
        low, high = float(match["low"]), float(match["high"])
        if match["verb"] == "raised":
            assert 0 < low <= float(match["size"]) <= high, text
        else:
            assert low <= -float(match["size"]) <= high < 0, text
    not_significant = list(NOT_SIGNIFICANT.finditer(text))
    for match in not_significant:
        assert float(match["low"]) <= 0 <= float(match["high"]), text
    bare_lowered = text.count(BARE_LOWERED)
    assert len(re.findall(r"\b(raised|lowered)\b", text)) == len(significant) + bare_lowered, text
    bare = len(BARE_NO_DIFFERENCE.findall(text))
    assert text.count("made no detectable difference") == len(not_significant) + bare, text
    assert not re.search(r"\b(better|worse)\b", text, re.IGNORECASE), text
    assert not NEGATIVE_ZERO.search(text), text
    gap = GAP.search(text)
    if text.startswith("The baseline was"):
        assert gap, text
        low, high = float(gap["low"]), float(gap["high"])
        expected = (
            "over-confident"
            if low > 0
            else "under-confident"
            if high < 0
            else "neither detectably over- nor under-confident"
        )
        assert gap["state"] == expected, text
    return len(significant), len(not_significant)


def check_recommendation(findings):
    rec = findings.recommendation
    assert set(rec) == RECOMMENDATION_KEYS
    assert rec["selected_on"] == "validation"
    check_wording(rec["text"])
    ts_nll = findings.sections["sweep:main"]["verdict"][1].comparisons["nll"]
    if BARE_LOWERED in rec["text"]:
        assert ts_nll.significant and ts_nll.mean_delta < 0
    if BARE_NO_DIFFERENCE.search(rec["text"]):
        assert not ts_nll.significant, (rec["text"], ts_nll)
    if rec["text"].startswith("No detectable effect"):
        assert not re.search(r"\b(raised|lowered)\b", rec["text"]), rec["text"]
    if rec["smooth"]:
        chosen = {params_of(findings.sections["sweep:main"][k]) for k in ("best", "best_ts")}
        assert (rec["eps"], rec["style"]) in chosen
    else:
        assert (rec["eps"], rec["style"]) == (0.0, None)


@pytest.fixture(scope="module")
def study():
    records = full_study()
    return records, analyse(records, SEEDS)


# ----------------------------------------------------------------------------------------------
# Choices are made on validation metrics only
# ----------------------------------------------------------------------------------------------


def test_choices_follow_validation_metrics(study):
    _, findings = study
    assert choices(findings) == EXPECTED_CHOICES
    assert params_of(findings.sections["sweep:main"]["oracle"]) == (0.1, "others")


@pytest.mark.parametrize("perturb", ["reversed", "random-1", "random-2"])
def test_choices_never_read_test_metrics(study, perturb):
    records, findings = study
    if perturb == "reversed":
        changed = reversed_test_metrics(records)
    else:
        changed = randomised_test_metrics(records, seed=int(perturb[-1]))
    assert changed != records
    for old, new in zip(records, changed, strict=True):
        if old["metrics"] is not None:
            assert {k: v for k, v in old["metrics"].items() if not is_test_metric(k)} == {
                k: v for k, v in new["metrics"].items() if not is_test_metric(k)
            }
    after = analyse(changed, SEEDS)
    assert choices(after) == choices(findings) == EXPECTED_CHOICES
    check_recommendation(after)
    if perturb == "reversed":
        # the test ranking really changed (so did the oracle), the recommendation did not
        assert params_of(after.sections["sweep:main"]["oracle"]) != (0.1, "others")
        for key in ("smooth", "eps", "style", "temperature_scaling"):
            assert after.recommendation[key] == findings.recommendation[key]
        assert (after.recommendation["eps"], after.recommendation["style"]) == (0.1, "uniform")


def test_changing_validation_metrics_changes_the_choices(study):
    records, findings = study
    changed = shift_metric(records, "val_nll", -0.5, experiment="sweep", setting="main", eps=0.2)
    changed = shift_metric(
        changed, "val_nll_ts", -0.5, experiment="sweep", setting="main", eps=0.05
    )
    after = analyse(changed, SEEDS)
    assert choices(after) == {
        **EXPECTED_CHOICES,
        "best": (0.2, "uniform"),
        "best_ts": (0.05, "uniform"),
    }
    # the recommendation follows the new validation choice (still significant on test)
    assert findings.recommendation["eps"] == 0.1
    assert (after.recommendation["eps"], after.recommendation["style"]) == (0.05, "uniform")
    assert after.recommendation["text"].startswith("Smooth with eps 0.05 (uniform)")


def test_oracle_is_named_as_oracle_only(study):
    _, findings = study
    section = findings.sections["sweep:main"]
    assert section["oracle"] is not section["best"]
    oracle_lines = [s for s in section["sentences"] if "oracle" in s]
    assert len(oracle_lines) == 1
    assert arm_label(section["oracle"].params) == "eps=0.1 (others)"
    assert "would have picked eps=0.1 (others)" in oracle_lines[0]
    assert "test NLL" in oracle_lines[0]
    # the oracle's arm appears in no other sentence, nor in the recommendation
    others = [s for s in section["sentences"] if s not in oracle_lines]
    assert not any("eps=0.1 (others)" in s for s in others)
    assert "0.1 (others)" not in findings.recommendation["text"]


def test_no_oracle_sentence_when_test_and_validation_agree():
    arms = [BASELINE, *MAIN_ARMS[1:]]
    arms[1] = ((0.05, "uniform"), {**arms[1][1], "nll": -0.1})  # also best on test
    findings = analyse(sweep(arms), SEEDS)
    section = findings.sections["sweep:main"]
    assert section["oracle"] is section["best"]
    assert not any("oracle" in s for s in section["sentences"])


# ----------------------------------------------------------------------------------------------
# The recommendation
# ----------------------------------------------------------------------------------------------

TS_HELPS = {"ts_nll": -0.1, "val_nll_ts": -0.1}


def recommendation_for(arms, *, scale=0.002):
    findings = analyse(sweep(arms, scale=scale), SEEDS)
    check_recommendation(findings)
    return findings, findings.recommendation


def test_recommend_smoothing_with_temperature_scaling():
    findings, rec = recommendation_for(MAIN_ARMS)
    assert rec["smooth"] is True and rec["temperature_scaling"] is True
    # the arm chosen on validation NLL after TS; not the plain choice (0.05) nor the oracle
    assert (rec["eps"], rec["style"]) == (0.1, "uniform")
    assert rec["text"].startswith("Smooth with eps 0.1 (uniform) and temperature-scale")
    key = findings.sections["sweep:main"]["key"]["ls_ts_vs_ts_nll"]
    assert key.significant and key.mean_delta < 0
    assert re.search(r"it lowered NLL by 0\.050 \(95% CI \[-0\.0\d\d, -0\.0\d\d\]\)", rec["text"])


def test_recommend_temperature_scaling_alone_when_smoothing_adds_nothing():
    arms = [
        (BASELINE[0], TS_HELPS),
        ((0.05, "uniform"), {**TS_HELPS, "val_nll": -0.01}),
        ((0.1, "uniform"), {**TS_HELPS, "val_nll_ts": -0.11}),
    ]
    findings, rec = recommendation_for(arms)
    key = findings.sections["sweep:main"]["key"]["ls_ts_vs_ts_nll"]
    assert not key.significant and key.mean_delta == pytest.approx(0, abs=1e-12)
    assert rec["smooth"] is False and rec["temperature_scaling"] is True
    assert rec["text"].startswith("Don't smooth; temperature-scale")
    assert "lowered NLL by 0.100" in rec["text"]
    assert (
        "(eps 0.1 (uniform), the validation choice) made no detectable difference" in (rec["text"])
    )


def test_no_detectable_effect_when_everything_is_noise():
    arms = [BASELINE, ((0.05, "uniform"), {}), ((0.1, "uniform"), {})]
    findings, rec = recommendation_for(arms)
    assert rec["text"].startswith("No detectable effect at this data size (5 seeds)")
    assert rec["smooth"] is False and rec["temperature_scaling"] is False
    assert not any(c["significant"] for c in findings.comparisons)


def test_numerical_gains_without_significance_recommend_nothing():
    # every arm is better on average on NLL, TS-NLL and accuracy, and TS helps on average,
    # but the noise is too large for any interval to exclude 0
    gain = {"nll": -0.01, "ts_nll": -0.02, "accuracy": 0.01, "val_nll": -0.01}
    arms = [
        (BASELINE[0], {"ts_nll": -0.01}),
        ((0.05, "uniform"), gain),
        ((0.1, "uniform"), {**gain, "val_nll_ts": -0.01}),
    ]
    findings, rec = recommendation_for(arms, scale=0.1)
    key = findings.sections["sweep:main"]["key"]["ls_ts_vs_ts_nll"]
    assert key.mean_delta == pytest.approx(-0.01) and not key.significant
    verdict = findings.sections["sweep:main"]["verdict"]
    assert verdict[1].comparisons["nll"].mean_delta == pytest.approx(-0.01)
    assert verdict[2].comparisons["accuracy"].mean_delta == pytest.approx(0.01)
    assert rec["text"].startswith("No detectable effect")
    assert rec["smooth"] is False and rec["temperature_scaling"] is False


def test_dont_smooth_when_smoothing_is_significantly_worse():
    worse = {"nll": 0.05, "accuracy": -0.05}
    arms = [BASELINE, ((0.05, "uniform"), worse), ((0.1, "uniform"), {**worse, "val_nll": -0.01})]
    findings, rec = recommendation_for(arms)
    assert params_of(findings.sections["sweep:main"]["best"]) == (0.1, "uniform")
    assert rec["text"].startswith("Don't smooth: the validation-chosen eps 0.1 (uniform)")
    assert "raised NLL by 0.050" in rec["text"] and "lowered accuracy by 0.050" in rec["text"]
    assert rec["smooth"] is False and rec["temperature_scaling"] is False


def test_recommend_smoothing_for_accuracy():
    more = {"accuracy": 0.05}
    arms = [BASELINE, ((0.1, "uniform"), more), ((0.2, "uniform"), {**more, "val_nll": -0.01})]
    _, rec = recommendation_for(arms)
    assert rec["text"].startswith("Smooth with eps 0.2 (uniform) for accuracy: it raised accuracy")
    assert (rec["smooth"], rec["eps"], rec["style"]) == (True, 0.2, "uniform")
    assert rec["temperature_scaling"] is False
    arms = [(BASELINE[0], TS_HELPS), ((0.1, "uniform"), {**more, **TS_HELPS})]
    _, rec = recommendation_for(arms)
    assert rec["text"].startswith("Smooth with eps 0.1 (uniform) for accuracy")
    assert "temperature-scale as well: on the baseline it lowered NLL by" in rec["text"]
    assert rec["temperature_scaling"] is True


def test_recommend_smoothing_for_nll_without_temperature_scaling():
    arms = [BASELINE, ((0.1, "others"), {"nll": -0.05})]
    _, rec = recommendation_for(arms)
    assert rec["text"].startswith("Smooth with eps 0.1 (others): it lowered NLL by 0.050")
    assert (rec["smooth"], rec["eps"], rec["style"], rec["temperature_scaling"]) == (
        True,
        0.1,
        "others",
        False,
    )


TS_HURTS = {"ts_nll": 0.05}


@pytest.mark.parametrize(
    "smoothing", [{"nll": -0.05}, {"accuracy": 0.05}, {}], ids=["nll", "accuracy", "none"]
)
def test_recommendation_never_calls_a_significant_comparison_undetectable(smoothing):
    arms = [(BASELINE[0], TS_HURTS), ((0.1, "uniform"), {**TS_HURTS, **smoothing})]
    findings = analyse(sweep(arms), SEEDS)
    ts_nll = findings.sections["sweep:main"]["verdict"][1].comparisons["nll"]
    assert ts_nll.significant and ts_nll.mean_delta > 0  # the premise holds
    check_recommendation(findings)


def test_recommendation_without_a_sweep_has_the_same_keys():
    findings = analyse([], SEEDS)
    assert findings.recommendation["text"] == "No sweep was run, so there is no recommendation."
    assert set(findings.recommendation) == RECOMMENDATION_KEYS


# ----------------------------------------------------------------------------------------------
# Comparisons and words
# ----------------------------------------------------------------------------------------------


def test_every_comparison_has_the_documented_fields(study):
    _, findings = study
    assert len(findings.comparisons) > 100
    experiments = {c["experiment"] for c in findings.comparisons}
    assert experiments == {"sweep"}
    for c in findings.comparisons:
        assert set(c) >= COMPARISON_KEYS, c
        assert c["selected_on"] == "validation"
        assert c["higher_is_better"] == higher_is_better(c["metric"])
        assert c["n_seeds"] == len(SEEDS)
        low, high = c["ci_low"], c["ci_high"]
        assert c["significant"] == (low > 0 or high < 0), c
        assert low <= c["mean_delta"] <= high
        assert c["mean_delta"] == pytest.approx(c["arm_mean"] - c["baseline_mean"], abs=1e-12)
    assert any(c["significant"] for c in findings.comparisons)
    assert not all(c["significant"] for c in findings.comparisons)


def test_comparisons_are_paired_t_intervals_over_the_records(study):
    records, findings = study
    (key,) = [
        c
        for c in findings.comparisons
        if c["experiment"] == "sweep"
        and c["setting"] == "main"
        and c["arm"] == "chosen smoothing + TS (eps=0.1 uniform + TS)"
        and c["baseline"] == "eps=0 + TS"
        and c["metric"] == "nll"
    ]
    arm = per_seed(records, "ts_nll", experiment="sweep", setting="main", eps=0.1, style="uniform")
    base = per_seed(records, "ts_nll", experiment="sweep", setting="main", eps=0.0)
    assert (key["ci_low"], key["ci_high"]) == pytest.approx(scipy_interval(arm, base), abs=1e-12)
    assert key["arm_mean"] == pytest.approx(statistics.fmean(arm))
    # the baseline's own temperature scaling: ts_nll against nll of the same runs
    (ts,) = [
        c
        for c in findings.comparisons
        if c["setting"] == "main" and c["arm"] == "eps=0 + TS" and c["baseline"] == "eps=0"
        if c["metric"] == "nll"
    ]
    plain = per_seed(records, "nll", experiment="sweep", setting="main", eps=0.0)
    assert (ts["ci_low"], ts["ci_high"]) == pytest.approx(scipy_interval(base, plain), abs=1e-12)


def test_wording_rule_over_every_sentence(study):
    _, findings = study
    sentences = all_sentences(findings)
    sections = [k for k in findings.sections if k != "groups"]
    assert sections == ["sweep:main", "sweep:overconfident"]
    assert all(findings.sections[k]["sentences"] for k in sections)
    counts = [check_wording(s) for s in sentences]
    assert sum(n for n, _ in counts) >= 5  # both kinds of phrases really occur
    assert sum(n for _, n in counts) >= 5
    check_recommendation(findings)


@pytest.mark.parametrize(
    "arms, scale",
    [
        ([(BASELINE[0], TS_HELPS), ((0.1, "uniform"), TS_HELPS)], 0.002),
        ([BASELINE, ((0.05, "uniform"), {}), ((0.1, "uniform"), {})], 0.002),
        ([BASELINE, ((0.1, "uniform"), {"nll": 0.05, "accuracy": -0.05})], 0.002),
        ([BASELINE, ((0.1, "uniform"), {"nll": -0.01, "ts_nll": -0.02})], 0.1),
        ([(BASELINE[0], {"confidence": -0.1}), ((0.1, "uniform"), {})], 0.002),
        ([(BASELINE[0], {"confidence": -0.04}), ((0.1, "uniform"), {})], 0.1),
    ],
    ids=["ts-helps", "noise", "worse", "wide", "under-confident", "neither"],
)
def test_wording_rule_in_other_situations(arms, scale):
    findings = analyse(sweep(arms, scale=scale), SEEDS)
    for sentence in all_sentences(findings):
        check_wording(sentence)
    check_recommendation(findings)


def test_confidence_gap_never_prints_negative_zero():
    # confidence 0.80 against accuracy 0.80 on average: the gap is 0 up to rounding
    arms = [(BASELINE[0], {"confidence": -0.05}), ((0.1, "uniform"), {})]
    findings = analyse(sweep(arms, scale=0.1), SEEDS)
    sentence = findings.sections["sweep:main"]["sentences"][0]
    assert sentence.startswith("The baseline was neither detectably")
    assert not NEGATIVE_ZERO.search(sentence), sentence


# ----------------------------------------------------------------------------------------------
# Diverged runs, counting and grouping
# ----------------------------------------------------------------------------------------------


def diverge(records, seed, **match):
    out = copy.deepcopy(records)
    hits = 0
    for rec in out:
        if rec["seed"] == seed and all(
            rec.get(k, rec["params"].get(k)) == v for k, v in match.items()
        ):
            rec["status"], rec["metrics"] = "diverged", None
            hits += 1
    assert hits == 1
    return out


def test_diverged_runs_are_left_out_of_means_and_pairs():
    records = sweep(MAIN_ARMS)
    broken = diverge(records, 3, eps=0.05, style="uniform")
    assert count_runs(broken) == {"finished": len(records), "diverged": 1}
    assert count_runs(records) == {"finished": len(records), "diverged": 0}
    findings = analyse(broken, SEEDS)
    (group,) = [g for g in findings.sections["groups"]["groups"] if g.params["eps"] == 0.05]
    assert group.diverged == [3]
    assert group.n_seeds == 4 and 3 not in group.metrics and 3 not in group.keys
    kept = [r["metrics"]["nll"] for r in records if r["params"]["eps"] == 0.05 and r["seed"] != 3]
    assert group.mean("nll") == pytest.approx(statistics.fmean(kept))
    assert group.mean("nll") != pytest.approx(
        statistics.fmean(per_seed(records, "nll", eps=0.05)), abs=1e-6
    )
    assert group.values("nll", SEEDS)[3] is None
    touched = [c for c in findings.comparisons if "eps=0.05 uniform" in c["arm"]]
    assert touched
    assert all(c["n_seeds"] == 4 for c in touched)
    assert all(c["n_seeds"] == 5 for c in findings.comparisons if c not in touched)
    # the paired interval over the four complete pairs
    (c,) = [t for t in touched if t["arm"] == "eps=0.05 uniform" and t["metric"] == "nll"]
    arm = [r["metrics"]["nll"] for r in records if r["params"]["eps"] == 0.05 and r["seed"] != 3]
    base = [r["metrics"]["nll"] for r in records if r["params"]["eps"] == 0 and r["seed"] != 3]
    assert (c["ci_low"], c["ci_high"]) == pytest.approx(scipy_interval(arm, base), abs=1e-12)


def test_a_diverged_baseline_seed_drops_that_pair_everywhere():
    broken = diverge(sweep(MAIN_ARMS), 0, eps=0.0)
    findings = analyse(broken, SEEDS)
    assert {c["n_seeds"] for c in findings.comparisons} == {4}


def test_an_arm_with_a_diverged_seed_is_not_chosen_while_a_complete_one_exists():
    # documented in choose(): groups whose every seed finished are preferred
    broken = diverge(sweep(MAIN_ARMS), 2, eps=0.1, style="uniform")
    findings = analyse(broken, SEEDS)
    assert params_of(findings.sections["sweep:main"]["best_ts"]) == (0.2, "uniform")
    assert params_of(findings.sections["sweep:main"]["best"]) == (0.05, "uniform")


def test_group_results_groups_by_experiment_setting_and_params():
    metrics = {"nll": 0.5, "accuracy": None}
    records = [
        record("sweep", "main", {"style": "uniform", "eps": 0.1}, 1, metrics),
        record("sweep", "main", {"eps": 0.0, "style": "none"}, 0, metrics),
        record("sweep", "main", {"eps": 0.1, "style": "uniform"}, 0, metrics),  # key order
        record("sweep", "overconfident", {"style": "uniform", "eps": 0.1}, 0, metrics),
        record("sweep", "main", {"style": "others", "eps": 0.1}, 0, metrics),
        record("multilabel", "main", {"style": "uniform", "eps": 0.1}, 0, metrics),
        record("sweep", "main", {"style": "uniform", "eps": 0.1}, 2, None, status="diverged"),
    ]
    groups = group_results(records)
    assert [(g.experiment, g.setting, g.params) for g in groups] == [
        ("sweep", "main", {"style": "uniform", "eps": 0.1}),
        ("sweep", "main", {"eps": 0.0, "style": "none"}),
        ("sweep", "overconfident", {"style": "uniform", "eps": 0.1}),
        ("sweep", "main", {"style": "others", "eps": 0.1}),
        ("multilabel", "main", {"style": "uniform", "eps": 0.1}),
    ]
    first = groups[0]
    assert sorted(first.metrics) == [0, 1] and first.diverged == [2]
    assert first.keys == {1: records[0]["key"], 0: records[2]["key"]}
    assert first.first_key() == records[2]["key"]  # the lowest seed's run
    assert math.isnan(first.metrics[0]["accuracy"])  # None becomes nan
    assert math.isnan(first.mean("accuracy")) and first.mean("nll") == 0.5
    assert [g.n_seeds for g in groups] == [2, 1, 1, 1, 1]


# ----------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------


VARIANT_NAMES = ("baseline", "label_smoothing", "helps", "hurts_after_ts", "same")
PLAIN = "label smoothing, eps=0.1 (uniform)"


def variants(shifts_by_name, *, setting="main", scale=0.002):
    """Records of the variants experiment; "same" copies plain smoothing's metrics exactly."""
    records = []
    plain = {}
    for index, name in enumerate(VARIANT_NAMES):
        params = {"variant": name}
        for seed in SEEDS:
            if name == "same":
                metrics = dict(plain[seed])
            else:
                metrics = measured(
                    classifier_names(), index, seed, shifts_by_name.get(name, {}), scale
                )
            if name == "label_smoothing":
                plain[seed] = metrics
            records.append(record("variants", setting, params, seed, metrics))
    return records


def test_variants_are_compared_with_the_baseline_and_plain_smoothing_in_honest_words():
    records = sweep([((0.0, "uniform"), {}), ((0.1, "uniform"), {})]) + variants(
        {"helps": {"nll": -0.2}, "hurts_after_ts": {"ts_nll": 0.3}}
    )
    findings = analyse(records, SEEDS)
    section = findings.sections["variants:main"]
    labels = ["baseline (eps=0)", PLAIN, "helps", "hurts_after_ts", "same"]  # unknown: its name
    assert [row.label for row in section["rows"]] == labels
    assert section["rows"][0].comparisons["nll"] is None  # the baseline's own row
    assert section["count"] == 3  # the variants proper, not the two references
    # Against plain smoothing: NLL, NLL after temperature scaling, accuracy, per variant.
    against_plain = [
        c for c in findings.comparisons
        if c["experiment"] == "variants" and c["baseline"] == PLAIN
    ]  # fmt: skip
    assert {c["metric"] for c in against_plain} == {"nll", "ts_nll", "accuracy"}
    assert len(against_plain) == 3 * 3
    same = [c for c in against_plain if c["arm"] == "same"]
    assert all(c["mean_delta"] == 0 and not c["significant"] for c in same)
    helps = next(c for c in against_plain if c["arm"] == "helps" and c["metric"] == "nll")
    assert helps["significant"] and helps["mean_delta"] < 0
    for sentence in section["sentences"]:
        check_wording(sentence)
    # The verdict names exactly the variants that differ detectably, and how many were looked at.
    text = findings.recommendation["variants"]
    assert findings.recommendation["text"].endswith(text)
    check_wording(text)
    assert "helps lowered NLL" in text
    assert "hurts_after_ts after temperature scaling raised NLL" in text
    assert "same" not in text.replace("the same seeds", "")
    assert "3 arms x 3 metrics = 9 intervals, so about one would exclude 0 by chance" in text
    assert section["intervals"] == 4 * 5 + 3 * 3  # the table's four arms, the sentences' three


def test_no_variant_difference_is_said_as_such():
    records = sweep([((0.0, "uniform"), {}), ((0.1, "uniform"), {})])
    records += [
        r for r in variants({}) if r["params"]["variant"] in ("baseline", "label_smoothing", "same")
    ]
    findings = analyse(records, SEEDS)
    assert findings.recommendation["variants"] == (
        "Variants (main setting; each at its paper's or its authors' code's default strength "
        "where one exists, not tuned here): no arm differed detectably from label smoothing, "
        "eps=0.1 (uniform) in NLL (before or after temperature scaling) or accuracy "
        "(1 arms x 3 metrics)."
    )


# ----------------------------------------------------------------------------------------------
# Penultimate geometry
# ----------------------------------------------------------------------------------------------


def with_geometry(records):
    out = copy.deepcopy(records)
    for rec in out:
        if rec["experiment"] == "sweep" and rec["setting"] == "main":
            for offset, (name, value) in enumerate(GEOMETRY[rec["params"]["eps"]].items()):
                arm = int(100 * rec["params"]["eps"]) + len(rec["params"]["style"])
                jitter = 0.002 * PATTERN[(rec["seed"] + offset + arm) % len(PATTERN)]
                rec["metrics"][name] = value + 0.01 * rec["seed"] + jitter
    return out


def test_geometry_rows_pair_every_arm_against_eps_0():
    findings = analyse(with_geometry(full_study()), SEEDS)
    section = findings.sections["sweep:main"]
    rows = {row.label: row for row in section["geometry_rows"]}
    assert len(rows) == len(MAIN_ARMS)
    tight = rows["eps=0.1 (uniform)"].comparisons
    assert tight["spread_ratio_plane"].significant
    assert tight["spread_ratio_plane"].mean_delta == pytest.approx(-0.10)
    assert not tight["spread_ratio_full"].significant
    assert rows["eps=0.05 (uniform)"].note == "the smoothing arm chosen on validation NLL"
    geometry = [c for c in findings.comparisons if c["metric"].startswith("spread_ratio")]
    assert len(geometry) == 2 * (len(MAIN_ARMS) - 1)
    assert all(c["setting"] == "main" for c in geometry)
    sentences = section["geometry_sentences"]
    assert "eps=0.05 (uniform) (the smoothing arm with the lowest validation NLL" in sentences[1]
    assert not rows["eps=0.05 (uniform)"].comparisons["spread_ratio_plane"].significant
    plane = [c for c in geometry if c["metric"] == "spread_ratio_plane" and c["significant"]]
    full = [c for c in geometry if c["metric"] == "spread_ratio_full" and c["significant"]]
    assert len(plane) >= 3 and all(c["mean_delta"] < 0 for c in plane)  # eps 0.1 (x2), 0.2
    raised_full = sum(c["mean_delta"] > 0 for c in full)
    assert sentences[2] == (
        "Across all 4 smoothing arms (8 intervals, of which about one would exclude 0 by chance "
        f"alone): in the template plane, {len(plane)} lie wholly below 0 (a smaller ratio than at "
        f"eps=0) and 0 wholly above; in the full space, {len(full) - raised_full} lie wholly "
        f"below 0 (a smaller ratio than at eps=0) and {raised_full} wholly above."
    )
    for sentence in sentences:
        check_wording(sentence)
    # the over-confident setting's runs have no geometry metrics: no rows, no sentences
    assert findings.sections["sweep:overconfident"]["geometry_rows"] == []
