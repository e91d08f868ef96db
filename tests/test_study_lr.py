"""The lr x eps experiment (labelsmooth.study.exp_lr): validation-only choices, pairing against
eps 0 at the same learning rate, heatmaps, and its runs."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
from scipy import stats as scipy_stats

from labelsmooth.study import exp_lr
from labelsmooth.study.config import StudyConfig
from labelsmooth.study.experiments import Plan
from labelsmooth.study.findings import Findings, group_results

SEEDS = (0, 1, 2, 3, 4)
LRS = (1e-3, 1e-2)
EPS = (0.0, 0.1, 0.2)
# validation NLL of each (lr, eps): eps 0 lowest at 1e-3, eps 0.1 lowest at 1e-2
VAL = {
    (1e-3, 0.0): 0.30,
    (1e-3, 0.1): 0.32,
    (1e-3, 0.2): 0.35,
    (1e-2, 0.0): 0.40,
    (1e-2, 0.1): 0.31,
    (1e-2, 0.2): 0.33,
}
# each learning rate's own level and per-seed noise (shared by every eps of that lr and seed),
# so pairing across learning rates would not cancel it
LEVEL = {1e-3: 0.90, 1e-2: 0.80}
NOISE = {1e-3: (0.00, 0.03, -0.02, 0.05, -0.04), 1e-2: (0.04, -0.05, 0.01, -0.03, 0.02)}
DELTA = {0.0: 0.0, 0.1: 0.01, 0.2: -0.02}


def record(setting, lr, eps, seed, metrics, status="ok"):
    return {
        "key": f"lr|{setting}|{lr:g}|{eps:g}|{seed}",
        "status": status,
        "experiment": "lr",
        "setting": setting,
        "params": {"lr": lr, "eps": eps},
        "seed": seed,
        "metrics": metrics,
    }


def records(setting="main", test_shift=None):
    """Test metric m of (lr, eps, seed): LEVEL + NOISE + DELTA[eps] + 0.001 * seed (eps > 0)."""
    out = []
    for lr in LRS:
        for eps in EPS:
            for seed in SEEDS:
                value = LEVEL[lr] + NOISE[lr][seed] + DELTA[eps] + (0.001 * seed if eps else 0)
                metrics = {m: value for m in exp_lr.COMPARED}
                metrics["best_epoch"] = 10.0
                metrics["val_nll"] = VAL[(lr, eps)] + 0.001 * seed
                # after TS: eps 0.2 lowest at 1e-3, eps 0 lowest at 1e-2
                metrics["val_nll_ts"] = VAL[(lr, eps)] - (eps if lr == 1e-3 else -eps)
                if test_shift is not None:
                    for m in exp_lr.COMPARED:
                        metrics[m] += test_shift(lr, eps)
                out.append(record(setting, lr, eps, seed, metrics))
    return out


def analysed(recs):
    findings = Findings(seeds=list(SEEDS))
    groups = group_results(recs)
    exp_lr.analyse(findings, groups)
    return findings


def test_best_eps_per_lr_is_chosen_on_validation_only():
    findings = analysed(records())
    main = findings.experiments["lr"]["main"]
    best = {k: v["best_eps"] for k, v in main["best_eps_per_lr"].items()}
    assert best == {"0.001": 0.0, "0.01": 0.1}
    after_ts = {k: v["best_eps_after_ts"] for k, v in main["best_eps_per_lr"].items()}
    assert after_ts == {"0.001": 0.2, "0.01": 0.0}
    text = " ".join(findings.sections["lr"]["main"]["sentences"])
    assert "after temperature scaling was (validation margins paired by seed; against eps 0" in text
    # after TS at 1e-3: 0.30 / 0.22 / 0.15 for eps 0 / 0.1 / 0.2: eps 0.2 by 0.07 over eps 0.1
    assert (
        "0.2 at 0.001 (its validation NLL after TS minus the runner-up's (eps 0.1): -0.0700" in text
    )
    assert "minus eps 0's: -0.1500" in text and "which lowered NLL by 0.018" in text
    assert "0 at 0.01 (its validation NLL after TS minus the runner-up's (eps 0.1)" in text
    assert all(v["selected_on"] == "validation" for v in main["best_eps_per_lr"].values())
    assert main["choice_metric"] == "val_nll"
    # overall: lr 1e-3 eps 0 (val 0.30) beats lr 1e-2 eps 0.1 (0.31): no smoothing
    assert main["overall"] == pytest.approx(
        {"lr": 1e-3, "eps": 0.0, "val_nll": 0.302, "selected_on": "validation"}
    )
    assert main["best_lr_without_smoothing"]["lr"] == 1e-3

    # Test metrics that favour every other arm by a lot leave every choice unchanged.
    def shift(lr, eps):
        return -1.0 if (lr, eps) in ((1e-3, 0.0), (1e-2, 0.1)) else 5.0

    shifted = analysed(records(test_shift=shift)).experiments["lr"]["main"]
    for name in ("best_eps_per_lr", "overall", "best_lr_without_smoothing"):
        assert shifted[name] == main[name]


def test_overall_choice_is_compared_with_the_best_plain_lr():
    recs = records()
    for r in recs:  # make (1e-2, 0.1) the overall validation choice
        if r["params"] == {"lr": 1e-2, "eps": 0.1}:
            r["metrics"]["val_nll"] -= 0.05
    findings = analysed(recs)
    main = findings.experiments["lr"]["main"]
    assert (main["overall"]["lr"], main["overall"]["eps"]) == (1e-2, 0.1)
    overall = [c for c in findings.comparisons if c["arm"].startswith("chosen over the grid")]
    assert {c["metric"] for c in overall} == {"accuracy", "nll", "ts_nll", "ece"}
    assert all(c["baseline"] == "chosen without smoothing (lr=0.001 eps=0)" for c in overall)
    # against the lr-1e-3 baseline: 0.80 - 0.90 + 0.01 + mean(0.001 * seed) + noise difference
    noise = statistics.fmean(NOISE[1e-2]) - statistics.fmean(NOISE[1e-3])
    expected = 0.80 - 0.90 + 0.01 + 0.002 + noise
    assert overall[0]["mean_delta"] == pytest.approx(expected)
    assert all(c["chosen_on_validation"] for c in overall)
    sentences = " ".join(findings.sections["lr"]["main"]["sentences"])
    assert "lr=0.01 eps=0.1" in sentences


def test_each_eps_is_paired_with_eps_0_at_the_same_lr():
    findings = analysed(records())
    grid = findings.sections["lr"]["main"]["grid"]
    assert len(grid) == len(LRS) * 2 * len(exp_lr.COMPARED)
    # differences 0.01 + 0.001 * seed: the per-seed noise of the lr cancels only when paired
    # with the same lr's baseline (hand-computed Student-t interval, df = 4)
    diffs = [0.01 + 0.001 * s for s in SEEDS]
    half = scipy_stats.t.ppf(0.975, 4) * statistics.stdev(diffs) / math.sqrt(5)
    for lr in LRS:
        c = grid[("accuracy", lr, 0.1)]
        assert c.mean_delta == pytest.approx(0.012)
        assert (c.ci_low, c.ci_high) == pytest.approx((0.012 - half, 0.012 + half))
        assert c.significant
    rows = [c for c in findings.comparisons if c["arm"] == "lr=0.01 eps=0.2"]
    assert rows and all(c["baseline"] == "lr=0.01 eps=0" for c in rows)
    assert all(c["selected_on"] == "validation" for c in findings.comparisons)
    sentences = findings.sections["lr"]["main"]["sentences"]
    text = " ".join(sentences)
    assert "better" not in text and "worse" not in text
    assert "changed with the learning rate (0 at 0.001, 0.1 at 0.01)" in text
    assert "28 intervals (2 learning rates x 2 eps x 7 metrics)" in text
    assert "about one would exclude 0 by chance" in text


def test_diverged_runs_are_counted():
    recs = records()
    broken = copy.deepcopy(recs[-1])
    recs = [r for r in recs if r["key"] != broken["key"]]
    broken.update(status="diverged", metrics=None)
    recs.append(broken)
    findings = analysed(recs)
    main = findings.experiments["lr"]["main"]
    assert main["diverged_runs"] == 1
    assert main["best_eps_per_lr"]["0.01"]["diverged"] == {"0.2": 1}
    assert "1 runs diverged" in " ".join(findings.sections["lr"]["main"]["sentences"])
    row = next(r for r in findings.sections["lr"]["main"]["rows"] if r.label == "lr=0.01 eps=0.2")
    assert "1 of 5 seeds diverged" in row.note


def test_section_draws_heatmaps_with_marks():
    pytest.importorskip("matplotlib")
    findings = analysed(records() + records("overconfident"))
    saved = {}

    def save(name, figure, caption):
        saved[name] = figure
        return {"name": name, "caption": caption, "data": ""}

    study = {"settings": {"main": {"description": "d", "n_train": 1}}, "config": {"width": 8}}
    sections = exp_lr.section(findings, lambda key: {}, save, study)
    assert [s.key for s in sections] == ["lr-main", "lr-overconfident"]
    assert set(saved) == {"lr_heatmap_main", "lr_heatmap_overconfident"}
    figure = saved["lr_heatmap_main"]
    panels = [ax for ax in figure.axes if ax.get_title().startswith("Δ")]
    assert len(panels) == len(exp_lr.HEATMAPS)
    texts = [t.get_text() for t in panels[0].texts]  # accuracy: +0.012* and -0.018*
    assert texts == ["+0.012*", "-0.018*", "+0.012*", "-0.018*"]
    assert "n_train 1" in sections[0].intro


def test_plan_grid_and_params():
    config = StudyConfig(
        dataset="synthetic",
        seeds=(0, 1),
        lr_grid=(1e-3, 1e-2),
        lr_eps=(0.1,),
        epochs=1,
        overconfident_epochs=1,
    )
    from labelsmooth.study.data import synthetic

    plan = Plan(runs=[])
    exp_lr.build(synthetic(num_samples=300, seed=0), config, plan)
    keys = [r.key for r in plan.runs]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2 * 2  # settings x lr x eps (0 added) x seeds
    assert {(r.params["lr"], r.params["eps"]) for r in plan.runs} == {
        (1e-3, 0.0),
        (1e-3, 0.1),
        (1e-2, 0.0),
        (1e-2, 0.1),
    }
    metrics, arrays = plan.runs[-1].execute(None)
    assert arrays is None
    assert {"final_accuracy", "final_nll", "final_ece", "ts_nll", "val_nll"} <= set(metrics)


def test_effect_change_between_lowest_and_highest_lr():
    recs = records()
    for r in recs:  # eps 0.2 at lr 1e-2: accuracy effect moved by 0.03 + 0.002 * seed
        if r["params"] == {"lr": 1e-2, "eps": 0.2}:
            r["metrics"]["accuracy"] += 0.03 + 0.002 * r["seed"]
    findings = analysed(recs)
    change = findings.experiments["lr"]["main"]["effect_change_lowest_to_highest_lr"]
    assert change["0.1 accuracy"]["mean_delta"] == pytest.approx(0.0, abs=1e-12)
    assert not change["0.1 accuracy"]["significant"]
    assert change["0.2 accuracy"]["mean_delta"] == pytest.approx(0.034)
    assert change["0.2 accuracy"]["significant"]
    assert change["0.2 ts_nll"]["mean_delta"] == pytest.approx(0.0, abs=1e-12)
    text = " ".join(findings.sections["lr"]["main"]["sentences"])
    assert "eps 0.2, accuracy: changed detectably (+0.034" in text
    assert "eps 0.1, accuracy: did not change detectably" in text


def test_a_baseline_still_improving_at_the_end_is_named():
    recs = records()
    for r in recs:
        r["metrics"]["epochs"] = 60.0
        if r["params"] == {"lr": 1e-3, "eps": 0.0}:
            r["metrics"]["best_epoch"] = 57.0 + r["seed"] % 2  # mean 57.4 >= 54
    text = " ".join(analysed(recs).sections["lr"]["main"]["sentences"])
    assert "last tenth of training at learning rate 0.001 (mean kept epoch 57.4 of 60)" in text
    assert "0.01 (mean kept epoch" not in text
    assert "last tenth" not in " ".join(analysed(records()).sections["lr"]["main"]["sentences"])


def test_choice_change_within_seed_noise_is_not_called_a_change():
    recs = records()
    # eps 0.1 at lr 1e-2 lower than eps 0 on average but not on every seed: interval spans 0
    jitter = (0.10, -0.15, 0.10, -0.14, 0.08)  # mean -0.002
    for r in recs:
        if r["params"] == {"lr": 1e-2, "eps": 0.1}:
            r["metrics"]["val_nll"] = 0.40 - 0.001 + jitter[r["seed"]] + 0.001 * r["seed"]
        if r["params"] == {"lr": 1e-2, "eps": 0.2}:
            r["metrics"]["val_nll"] = 0.45 + 0.001 * r["seed"]
    findings = analysed(recs)
    main = findings.experiments["lr"]["main"]
    assert main["best_eps_per_lr"]["0.01"]["best_eps"] == 0.1  # still the validation choice
    margin = main["best_eps_per_lr"]["0.01"]["val_nll_margin_against_eps0"]
    assert margin["ci_low"] < 0 < margin["ci_high"] and not margin["significant"]
    assert main["choice_changed_detectably"] is False
    text = " ".join(findings.sections["lr"]["main"]["sentences"])
    assert "changed with the learning rate" not in text
    assert "differs between learning rates (0 at 0.001, 0.1 at 0.01), but by a margin" in text
    assert "-0.0030" in text and "lower on 2 of 5 seeds" in text
    # the chosen-on metric (test NLL) and ECE are reported for the choice
    assert "(NLL is the metric the choice used, there on validation), it" in text
    assert "ECE (equal-width)" in text
    # a clear margin at both learning rates is called a change
    clear = analysed(records()).experiments["lr"]["main"]
    assert clear["choice_changed_detectably"] is True


def test_late_epochs_does_not_claim_later_epochs_scored_higher():
    recs = records()
    for r in recs:
        r["metrics"]["epochs"] = 20.0
        if r["params"] == {"lr": 1e-3, "eps": 0.0}:
            r["metrics"]["best_epoch"] = 19.0
    text = " ".join(analysed(recs).sections["lr"]["main"]["sentences"])
    assert "it may still have been improving" in text
    assert "still improving on validation when training stopped" not in text


def test_runs_shared_with_the_sweep_are_named_and_counted_once():
    findings = analysed(records())
    config = {"experiments": ["sweep", "lr"], "lr": 1e-3, "eps": [0.0, 0.1], "styles": ["uniform"]}
    assert exp_lr.shared_with_sweep(config, LRS, [0.1, 0.2]) == (1e-3, [0.1])
    assert exp_lr.shared_with_sweep({**config, "lr": 3e-3}, LRS, [0.1, 0.2]) is None
    assert exp_lr.shared_with_sweep({**config, "experiments": ["lr"]}, LRS, [0.1]) is None
    assert exp_lr.shared_with_sweep({**config, "styles": ["others"]}, LRS, [0.1]) == (1e-3, [])
    sections = exp_lr.section(
        findings, lambda key: {}, lambda name, figure, caption: {}, {"config": config}
    )
    main = sections[0]
    text = " ".join(main.sentences)
    # 28 intervals; the 7 of eps 0.1 at lr 1e-3 are on sweep runs; 21 left, all significant
    assert "7 of this section's 28 intervals compare runs that are both in the sweep" in text
    assert "21 intervals are on runs the sweep does not have" in text and "; 21 do." in text
    notes = {r.label: r.note for r in main.tables[0].rows}
    assert notes["lr=0.001 eps=0"].endswith("same runs as the sweep's eps 0")
    assert notes["lr=0.001 eps=0.1"].endswith("same runs as the sweep's eps 0.1 uniform")
    assert "sweep" not in notes["lr=0.001 eps=0.2"] + notes["lr=0.01 eps=0"]
    # the analysis' own rows are not modified
    assert all("sweep" not in r.note for r in findings.sections["lr"]["main"]["rows"])


def test_every_choice_carries_its_margin_over_the_runner_up():
    findings = analysed(records())
    main = findings.experiments["lr"]["main"]["best_eps_per_lr"]
    text = " ".join(findings.sections["lr"]["main"]["sentences"])
    # plain rule at 1e-3: eps 0 (0.30) over eps 0.1 (0.32): -0.02 on every seed
    runner = main["0.001"]["val_nll_margin_against_runner_up"]
    assert runner["runner_up_eps"] == 0.1 and runner["mean_delta"] == pytest.approx(-0.02)
    assert runner["significant"] and not runner["tied"]
    assert (
        "At learning rate 0.001 the lowest validation NLL was eps 0 (no smoothing); paired by "
        "seed, its validation NLL minus the runner-up's (eps 0.1): -0.0200" in text
    )
    # plain rule at 1e-2: eps 0.1 (0.31) over eps 0.2 (0.33), besides its margin over eps 0
    assert main["0.01"]["val_nll_margin_against_runner_up"]["runner_up_eps"] == 0.2
    assert "paired by seed: -0.0900" in text and "minus the runner-up's (eps 0.2): -0.0200" in text
    # after TS at 1e-2 (0.40, 0.41, 0.53): eps 0 over eps 0.1
    after = main["0.01"]["val_nll_ts_margin_against_runner_up"]
    assert after["runner_up_eps"] == 0.1 and after["mean_delta"] == pytest.approx(-0.01)
    # an exact tie in the mean is said, and goes to the eps closest to 0
    recs = records()
    for r in recs:
        if r["params"] == {"lr": 1e-2, "eps": 0.2}:
            r["metrics"]["val_nll"] = VAL[(1e-2, 0.1)] + 0.001 * r["seed"]
    tied = analysed(recs)
    entry = tied.experiments["lr"]["main"]["best_eps_per_lr"]["0.01"]
    assert entry["best_eps"] == 0.1 and entry["val_nll_margin_against_runner_up"]["tied"]
    assert (
        "an exact tie in the mean, which goes to the eps closest to 0, so eps 0.2 is as much"
        in (" ".join(tied.sections["lr"]["main"]["sentences"]))
    )


def test_choice_change_lists_each_margin_once():
    from labelsmooth.study.findings import Group

    def group(lr, eps, values):
        metrics = {s: {"val_nll": v} for s, v in zip(SEEDS, values, strict=True)}
        return Group("lr", "main", {"lr": lr, "eps": eps}, metrics)

    low, high = [0.30, 0.31, 0.29, 0.30, 0.32], [0.35, 0.33, 0.36, 0.34, 0.35]
    runs = [
        group(1e-3, 0.0, low),
        group(1e-3, 0.1, high),
        group(3e-3, 0.0, high),
        group(3e-3, 0.1, low),
        group(1e-2, 0.0, low),
        group(1e-2, 0.1, high),
    ]
    # choices 0, 0.1, 0: the middle learning rate is compared with both neighbours' choice
    picked = [(1e-3, runs[0]), (3e-3, runs[3]), (1e-2, runs[4])]
    text, changed = exp_lr._choice_change(runs, picked, SEEDS)
    assert changed is True
    assert text.count("at 0.003, eps 0.1 minus eps 0:") == 1
    assert text.count("at 0.001, eps 0 minus eps 0.1:") == 1
    assert text.count("at 0.01, eps 0 minus eps 0.1:") == 1


def test_intro_says_when_the_baseline_was_not_detectably_over_confident():
    def with_confidence(gap_by_lr):
        recs = records("overconfident")
        for r in recs:
            m = r["metrics"]
            m["confidence"] = m["accuracy"] + gap_by_lr[r["params"]["lr"]][r["seed"]]
        return analysed(recs)

    study = {"settings": {}, "config": {}}
    # eps 0 at 1e-3: gap mean +0.02, spread over 0: not detectable; at 1e-2: +0.05 on every seed
    noisy = (0.06, -0.03, 0.05, -0.02, 0.04)
    clear = (0.05, 0.051, 0.049, 0.05, 0.05)
    findings = with_confidence({1e-3: noisy, 1e-2: noisy})
    intro = exp_lr.section(findings, lambda key: {}, lambda *a: {}, study)[0].intro
    assert "at 0.001 neither detectably over- nor under-confident (+0.020" in intro
    assert "at no learning rate here was it detectably so" in intro
    gap = findings.experiments["lr"]["overconfident"]["best_eps_per_lr"]["0.001"]
    assert gap["baseline_confidence_minus_accuracy"]["mean_delta"] == pytest.approx(0.02)
    findings = with_confidence({1e-3: noisy, 1e-2: clear})
    intro = exp_lr.section(findings, lambda key: {}, lambda *a: {}, study)[0].intro
    assert "at 0.01 over-confident (+0.050" in intro and "detectably so only at 0.01." in intro
    assert "at no learning rate" not in intro
