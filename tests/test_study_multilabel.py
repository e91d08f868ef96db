"""The multi-label experiment (labelsmooth.study.exp_multilabel): a task built from each
image's own pixels (not its class), attribute noise in training and validation only, one-sided
targets, validation-only choices paired at the same learning rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labelsmooth import binary_cross_entropy_with_logits, smooth_binary
from labelsmooth.study import exp_multilabel as ml
from labelsmooth.study.config import StudyConfig
from labelsmooth.study.data import Split, from_arrays, load_digits, synthetic
from labelsmooth.study.experiments import Plan
from labelsmooth.study.findings import Findings, group_results

SEEDS = (0, 1, 2, 3, 4)


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digits()


def test_attributes_come_from_the_image_not_the_class(digits):
    task, description = ml.attribute_task(digits)
    assert task.multilabel and task.num_classes == 6
    assert "not a function of the class" in description.lower()
    # clean test attributes: two test images of one digit with different attributes
    labels, classes = task.y_test, digits.y_test
    differing = 0
    for k in range(10):
        rows = {tuple(r) for r in labels[classes == k].int().tolist()}
        differing += len(rows) > 1
    assert differing == 10
    # the attribute is the region's mean standardised pixel above the pool's median
    masks = ml._digit_regions()
    top = torch.from_numpy(np.flatnonzero(masks["top half"]))
    pool = digits.subset_train(ml.TRAIN_POOL, seed=0).x_train
    threshold = pool[:, top].double().mean(1).median()
    expected = (digits.x_test[:, top].double().mean(1) > threshold).float()
    assert torch.equal(task.y_test[:, 0], expected)
    # about half of the pool is positive for every attribute (median threshold)
    clean, _ = ml.feature_attributes(pool, digits.x_test, masks)
    assert torch.all((clean.mean(0) - 0.5).abs() < 0.01)


def test_noise_flips_exactly_the_requested_fraction_and_test_stays_clean(digits):
    task, _ = ml.attribute_task(digits, pool=400, noise=0.2)
    pool = digits.subset_train(400, seed=0)
    masks = ml._digit_regions()
    clean_pool, clean_test = ml.feature_attributes(pool.x_train, digits.x_test, masks)
    flipped = (task.y_train != clean_pool).sum().item()
    assert flipped == round(0.2 * clean_pool.numel())
    assert torch.equal(task.y_test, clean_test)
    assert torch.equal(task.x_test, digits.x_test)
    assert len(task.x_train) == len(pool.x_train)
    # flip_attributes on its own: exact count, deterministic, only 0 <-> 1
    labels = torch.zeros(50, 4)
    once = ml.flip_attributes(labels, 0.25, seed=3)
    assert once.sum().item() == 50
    assert torch.equal(once, ml.flip_attributes(labels, 0.25, seed=3))
    assert not torch.equal(once, ml.flip_attributes(labels, 0.25, seed=4))
    assert ml.flip_attributes(labels, 0.0, seed=3).sum().item() == 0


def test_synthetic_user_and_class_data():
    task, description = ml.attribute_task(synthetic(num_samples=400, seed=0))
    assert task is not None and task.num_classes == 5 and "four features" in description
    x = np.random.default_rng(0).normal(size=(60, 3))
    own = from_arrays("mine", x, (x[:, :2] > 0).astype(np.float32), seed=0)
    same, description = ml.attribute_task(own)
    assert same is own and "used as they are" in description
    plain = from_arrays("iris-like", x, np.arange(60) % 3, seed=0)
    assert isinstance(plain, Split) and not plain.multilabel
    skipped, why = ml.attribute_task(plain)
    assert skipped is None and "skipped" in why
    plan = Plan(runs=[])
    ml.build(plain, StudyConfig(), plan)
    assert plan.runs == [] and plan.notes == [why]


def test_one_sided_targets_and_the_loss_of_each_arm():
    labels = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.equal(
        ml.one_sided_targets(labels, 0.1), torch.tensor([[0.1, 1.0, 1.0], [1.0, 0.1, 0.1]])
    )
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.5, 0.0, -0.7]])
    soft, eps, style = ml.targets_of(labels, 0.1, ml.ONE_SIDED)
    assert eps == 0.0
    by_hand = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor([[0.1, 1.0, 1.0], [1.0, 0.1, 0.1]])
    )
    assert torch.allclose(binary_cross_entropy_with_logits(logits, soft, eps, style=style), by_hand)
    # the markers of the histograms are the library's own targets
    for style in ("uniform", "others"):
        low, high = ml.smoothed_levels(0.1, style)
        smoothed = smooth_binary(torch.tensor([0.0, 1.0]), 0.1, style=style)
        assert smoothed.tolist() == pytest.approx([low, high])
    assert ml.smoothed_levels(0.1, ml.ONE_SIDED) == (0.1, 1.0)


def record(lr, eps, style, seed, metrics):
    return {
        "key": f"multilabel|lr={lr:g}|{style}|{eps:g}|{seed}",
        "status": "ok",
        "experiment": "multilabel",
        "setting": f"lr={lr:g}",
        "params": {"lr": lr, "eps": eps, "style": style},
        "seed": seed,
        "metrics": metrics,
    }


def synthetic_records(val_shift=None, test_shift=0.0):
    """AUROC of (lr, arm, seed): lr level + per-seed noise of that lr + the arm's effect
    (+0.01 at lr 1e-4, -0.02 at lr 1e-2 for the uniform arm: a sign flip)."""
    effect = {(1e-4, "uniform"): 0.01, (1e-2, "uniform"): -0.02}
    noise = {1e-4: (0.0, 0.02, -0.01, 0.03, -0.02), 1e-2: (0.03, -0.04, 0.0, 0.01, -0.02)}
    val = {(1e-4, "none"): 0.5, (1e-4, "uniform"): 0.6, (1e-2, "none"): 0.6}
    val[(1e-2, "uniform")] = 0.5
    out = []
    for lr in (1e-4, 1e-2):
        for eps, style in ((0.0, "none"), (0.1, "uniform")):
            for seed in SEEDS:
                value = 0.9 + noise[lr][seed] + effect.get((lr, style), 0.0) + 0.001 * seed * eps
                metrics = {m: value for m in ml.COMPARED}
                metrics.update(
                    val_nll=val[(lr, style)] + (val_shift(lr, style) if val_shift else 0.0),
                    best_epoch=5.0,
                    mean_prob_positive=0.7,
                    auroc_0=value,
                    label_ece_0=0.1,
                )
                if test_shift and style == "none":
                    for m in ml.COMPARED:
                        metrics[m] += test_shift
                out.append(record(lr, eps, style, seed, metrics))
    return out


def test_analysis_pairs_at_the_same_lr_and_chooses_on_validation():
    findings = Findings(seeds=list(SEEDS))
    ml.analyse(findings, group_results(synthetic_records()))
    summary = findings.experiments["multilabel"]
    chosen = {lr: v["chosen"]["style"] for lr, v in summary["per_lr"].items()}
    assert chosen == {"0.0001": "none", "0.01": "uniform"}
    assert all(v["chosen"]["selected_on"] == "validation" for v in summary["per_lr"].values())
    auroc = {
        c["setting"]: c for c in findings.comparisons if c["metric"] == "macro_auroc"
    }  # one arm per lr
    assert auroc["lr=0.0001"]["mean_delta"] == pytest.approx(0.01 + 0.0002)
    assert auroc["lr=0.01"]["mean_delta"] == pytest.approx(-0.02 + 0.0002)
    assert auroc["lr=0.01"]["baseline"] == "a=0 at lr=0.01"
    assert (
        auroc["lr=0.01"]["chosen_on_validation"] and not auroc["lr=0.0001"]["chosen_on_validation"]
    )
    text = " ".join(findings.sections["multilabel"]["sentences"])
    assert "raised macro AUROC at learning rate 0.0001 and lowered it at 0.01" in text
    assert "8 intervals" in text and "better" not in text and "worse" not in text
    change = summary["auroc_effect_change_lowest_to_highest_lr"]["a=0.1 uniform"]
    assert change["mean_delta"] == pytest.approx(-0.03) and change["significant"]
    assert "from learning rate 0.0001 to 0.01: a=0.1 uniform: -0.0300" in text
    assert summary["significant"] == 8  # the table's intervals only
    # moving every baseline's test metrics leaves the choices unchanged
    moved = Findings(seeds=list(SEEDS))
    ml.analyse(moved, group_results(synthetic_records(test_shift=0.05)))
    again = {
        lr: v["chosen"]["style"] for lr, v in moved.experiments["multilabel"]["per_lr"].items()
    }
    assert again == chosen


def test_a_run_measures_every_metric(digits):
    config = StudyConfig(
        seeds=(0,), epochs=2, multilabel_lrs=(1e-3,), multilabel_eps=(0.1,), styles=("others",)
    )
    plan = Plan(runs=[])
    ml.build(digits, config, plan)
    assert [(r.params["style"], r.params["eps"]) for r in plan.runs] == [
        ("none", 0.0),
        ("others", 0.1),
        (ml.ONE_SIDED, 0.1),
    ]
    assert plan.settings["multilabel"]["n_train"] + plan.settings["multilabel"]["n_val"] == len(
        digits.subset_train(ml.TRAIN_POOL, seed=0).x_train
    )
    metrics, arrays = plan.runs[-1].execute(None)
    assert metrics["epochs"] == 2.0
    for name in ("macro_auroc", "label_ece", "nll", "accuracy", "val_nll", "auroc_5"):
        assert np.isfinite(metrics[name])
    assert 0.5 < metrics["macro_auroc"] < 1.0
    assert arrays["probs"].shape == arrays["labels"].shape == (len(digits.x_test), 6)


def test_section_tables_and_histograms():
    pytest.importorskip("matplotlib")
    findings = Findings(seeds=list(SEEDS))
    recs = synthetic_records()
    ml.analyse(findings, group_results(recs))
    saved = {}

    def save(name, figure, caption):
        saved[name] = figure
        return {"name": name, "caption": caption, "data": ""}

    probs = np.linspace(0.01, 0.99, 20, dtype=np.float32).reshape(10, 2)
    study = {"settings": {"multilabel": {"labels": ["top half", "left half"], "n_train": 7}}}
    section = ml.section(findings, lambda key: {"probs": probs, "labels": probs > 0.5}, save, study)
    assert [t.metrics[:1] for t in section.tables] == [
        ["macro_auroc"],
        ["macro_auroc"],
        ["auroc_0"],
        ["label_ece_0"],
    ]
    per_label = section.tables[2]
    assert per_label.labels["auroc_0"][0] == "AUROC top half"
    assert [r.note for r in per_label.rows] == [
        "baseline",
        "baseline",
        "chosen on validation BCE",
    ]  # at lr 1e-4 the baseline is the choice: shown once
    assert set(saved) == {"multilabel_outputs_lr0.0001", "multilabel_outputs_lr0.01"}
    panels = saved["multilabel_outputs_lr0.01"].axes
    assert [ax.get_title() for ax in panels] == ["baseline (a=0)", "a=0.1 uniform"]
    assert [line.get_xdata()[0] for line in panels[1].lines] == pytest.approx([0.05, 0.95])
    assert "n_train 7" in section.intro


def test_intro_rule_comes_from_config_and_noisy_validation_is_explained():
    findings = Findings(seeds=list(SEEDS))
    ml.analyse(findings, group_results(synthetic_records()))
    old = (
        "digits: six attributes. The training pool is 400 examples (a random subset, seed 0), "
        "and 20% of its attribute entries are flipped (training and validation labels are "
        "noisy); the test labels are clean. The clean attributes are a function of the input, "
        "so a perfect model would reach AUROC 1; the small, noisy training set is what keeps "
        "the baseline below it"
    )
    study = {"settings": {"multilabel": {"description": old}}, "config": {"select": "nll"}}
    section = ml.section(findings, lambda key: {}, lambda *a: {}, study)
    # the checkpoint rule is the study's select, not a hard-coded one
    assert "select=nll: the lowest BCE" in section.intro
    assert "per-label accuracy at 0.5, ties" not in section.intro
    accuracy = ml.section(
        findings, lambda key: {}, lambda *a: {}, {**study, "config": {"select": "accuracy"}}
    )
    assert "select=accuracy: per-label accuracy at 0.5, ties by lower BCE" in accuracy.intro
    # the untested causal clause of older study.json descriptions is left out
    assert "what keeps" not in section.intro and "reach AUROC 1." in section.intro
    _, description = ml.attribute_task(synthetic(num_samples=400, seed=0))
    assert "what keeps" not in description
    # noise 20% -> the levels 0.2 / 0.8, and each lr's chosen arm's clean-test ECE
    assert ml.noise_rate(old) == pytest.approx(0.2)
    assert ml.noise_rate("own data: the data set's own labels, used as they are") is None
    text = " ".join(section.sentences)
    assert "predicting 0.2 and 0.8 rather than 0 and 1" in text
    assert "at 0.0001 the baseline was chosen" in text
    assert "at 0.01 the chosen a=0.1 uniform" in text and "per-label ECE" in text
    assert "better" not in text and "worse" not in text
    # without noise (a user's own labels) there is no such sentence
    own = {"settings": {"multilabel": {"description": "own: used as they are"}}, "config": {}}
    plain = ml.section(findings, lambda key: {}, lambda *a: {}, own)
    assert "rather than 0 and 1" not in " ".join(plain.sentences)


def twin_records():
    """Arms a=0 (baseline), a=0.05 others, a=0.1 uniform (the same targets, identical results)
    and a=0.05 negatives at two learning rates; validation BCE 0.50 / 0.45 / 0.45 / 0.47 + a
    per-seed term for the one-sided arm."""
    val = {"none": 0.50, "others": 0.45, "uniform": 0.45, ml.ONE_SIDED: 0.47}
    out = []
    for lr in (1e-3, 1e-2):
        for eps, style in ((0.0, "none"), (0.05, "others"), (0.1, "uniform"), (0.05, ml.ONE_SIDED)):
            for seed in SEEDS:
                shift = {"none": 0.0, ml.ONE_SIDED: -0.01}.get(style, 0.02)  # twins equal
                value = 0.9 + shift + 0.003 * seed * (style != "none")
                metrics = {m: value for m in ml.COMPARED}
                metrics.update(
                    val_nll=val[style] + (0.002 * seed if style == ml.ONE_SIDED else 0.0),
                    best_epoch=5.0,
                    mean_prob_positive=0.7,
                )
                out.append(record(lr, eps, style, seed, metrics))
    return out


def test_equivalent_arms_are_counted_once_and_choices_carry_margins():
    findings = Findings(seeds=list(SEEDS))
    ml.analyse(findings, group_results(twin_records()))
    summary = findings.experiments["multilabel"]
    # 'uniform' at 0.1 repeats 'others' at 0.05 (0 -> 0.05, 1 -> 0.95) at each learning rate
    assert [(e["lr"], e["arm"], e["same_as"]) for e in summary["equivalent_arms"]] == [
        (1e-3, "a=0.1 uniform", "a=0.05 others"),
        (1e-2, "a=0.1 uniform", "a=0.05 others"),
    ]
    assert all(e["largest_difference"] == 0 for e in summary["equivalent_arms"])
    # 2 lrs x 3 arms x 4 metrics = 24 intervals, 8 of them the twin's: 16 distinct; the
    # 'others' arm (+0.02 + 0.003 * seed) excludes 0 on all 8, the one-sided arm (-0.01 +
    # 0.003 * seed, mean -0.004) on none; the twin's 8 significant ones are not counted again
    assert summary["intervals"] == 24 and summary["distinct_intervals"] == 16
    assert summary["significant"] == 16 and summary["distinct_significant"] == 8
    text = " ".join(findings.sections["multilabel"]["sentences"])
    assert "8 of them are those of an arm that repeats an equivalent arm" in text
    assert "Counting those once, 16 distinct intervals" in text and "; 8 do." in text
    assert "a=0.05 others and a=0.1 uniform at learning rate 0.001, 0.01 (their recorded " in text
    # the effect-change list holds the twin pair once, named as both
    change = summary["auroc_effect_change_lowest_to_highest_lr"]
    assert set(change) == {"a=0.05 others", "a=0.05 negatives"}
    assert "a=0.05 others (= a=0.1 uniform, the same targets)" in text and "(2 intervals;" in text
    # the tie of the twins goes to the smaller a; the runner-up is the next distinct arm, with
    # the paired validation margin (0.45 - 0.47 - 0.002 * seed: mean -0.024, every seed lower)
    per_lr = summary["per_lr"]["0.001"]
    assert (per_lr["chosen"]["eps"], per_lr["chosen"]["style"]) == (0.05, "others")
    assert per_lr["runner_up"]["label"].startswith("a=0.05 one-sided")
    margin = per_lr["runner_up"]["val_nll_margin"]
    assert margin["mean_delta"] == pytest.approx(-0.024) and margin["significant"]
    assert "minus the runner-up's (a=0.05 negatives), paired by seed: -0.0240" in text
    assert "lower on 5 of 5 seeds" in text
    assert "minus the baseline's: -0.0500" in text
    rows = findings.sections["multilabel"]["tables"][0].rows
    note = next(r.note for r in rows if r.label.startswith("a=0.1 uniform"))
    assert "same targets as a=0.05 others" in note
