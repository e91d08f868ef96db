"""The distillation experiment (labelsmooth.study.exp_distill): the transfer split, the
student's loss, the plan's records, the validation-only temperature choice and the words."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest
import torch

from labelsmooth.study import exp_distill
from labelsmooth.study.config import StudyConfig
from labelsmooth.study.data import synthetic
from labelsmooth.study.experiments import Plan, RunContext, seed_data
from labelsmooth.study.findings import Findings, group_results
from labelsmooth.study.registry import params_for

SEEDS = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def data():
    return synthetic(num_samples=600, num_classes=4, num_features=8, seed=0)


def small_config(**changes):
    values = {
        "dataset": "synthetic",
        "experiments": ("distillation",),
        "seeds": (0, 1),
        "epochs": 2,
        "width": 16,
        "student_width": 8,
        "temperatures": (1.0, 3.0),
        "mi_draws": 4,
    }
    values.update(changes)
    return StudyConfig(**values)


# ----------------------------------------------------------------------------------------------
# The transfer split and the loss
# ----------------------------------------------------------------------------------------------


def test_transfer_split_is_disjoint_stratified_and_deterministic(data):
    config = small_config()
    part = seed_data(data, config, 3)
    teacher, transfer = exp_distill.transfer_split(part, 0.5, 3)
    x, y = part.train.x_train, part.train.y_train
    # rows of the training part: every row is in exactly one of the two sets
    rows = {tuple(r.tolist()) for r in x}
    teacher_rows = {tuple(r.tolist()) for r in teacher.train.x_train}
    transfer_rows = {tuple(r.tolist()) for r in transfer.train.x_train}
    assert len(rows) == len(x)  # distinct rows, so the sets identify examples
    assert teacher_rows.isdisjoint(transfer_rows)
    assert teacher_rows | transfer_rows == rows
    assert len(teacher.train.x_train) + len(transfer.train.x_train) == len(x)
    # stratified: every class is split half and half (within one example)
    for c in range(data.num_classes):
        total = int((y == c).sum())
        moved = int((transfer.train.y_train == c).sum())
        assert abs(moved - total / 2) <= 1
    # validation and test are the seed's own, untouched
    assert torch.equal(teacher.x_val, part.x_val) and torch.equal(transfer.x_val, part.x_val)
    assert torch.equal(transfer.x_test, part.x_test)
    # deterministic per seed, different across seeds
    again_teacher, again_transfer = exp_distill.transfer_split(part, 0.5, 3)
    assert torch.equal(again_transfer.train.x_train, transfer.train.x_train)
    assert torch.equal(again_teacher.train.y_train, teacher.train.y_train)
    _, other = exp_distill.transfer_split(part, 0.5, 4)
    assert not torch.equal(other.train.x_train, transfer.train.x_train)
    # the fraction is honoured
    _, quarter = exp_distill.transfer_split(part, 0.25, 3)
    assert abs(len(quarter.train.x_train) - 0.25 * len(x)) <= data.num_classes


def test_student_loss_is_the_hand_formula():
    # student logits (1, 0), teacher logits (0, log 3), T = 2:
    # targets softmax(0, log(3)/2) = (1, sqrt 3) / (1 + sqrt 3);
    # log softmax of (1/2, 0) = (1/2 - L, -L) with L = log(1 + e^(1/2)); loss = T^2 * CE.
    logits = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[0.0, math.log(3)]], dtype=torch.float64)
    root = math.sqrt(3)
    p0, p1 = 1 / (1 + root), root / (1 + root)
    big_l = math.log(1 + math.exp(0.5))
    expected = 4 * -(p0 * (0.5 - big_l) + p1 * (-big_l))
    assert float(exp_distill.student_loss(logits, teacher, 2.0)) == pytest.approx(expected)
    # at T = 1 it is the cross-entropy against the teacher's probabilities
    at_one = float(exp_distill.student_loss(logits, teacher, 1.0))
    q = [0.25, 0.75]
    log_p = torch.log_softmax(logits, -1)[0].tolist()
    assert at_one == pytest.approx(-(q[0] * log_p[0] + q[1] * log_p[1]))
    # the gradient flows to the student only
    student = logits.clone().requires_grad_(True)
    exp_distill.student_loss(student, teacher, 2.0).backward()
    assert student.grad is not None and torch.isfinite(student.grad).all()


# ----------------------------------------------------------------------------------------------
# The plan and its runs
# ----------------------------------------------------------------------------------------------


def test_plan_records_and_one_teacher_and_student_execute(data):
    config = small_config()
    plan = Plan(runs=[])
    exp_distill.build(data, config, plan)
    keys = [run.key for run in plan.runs]
    assert len(keys) == len(set(keys))
    # per seed: 2 teachers, 2 label students, 2 teachers x 2 temperatures
    assert len(plan.runs) == len(config.seeds) * (2 + 2 + 4)
    info = plan.settings["distillation"]
    assert info["n_teacher"] + info["n_transfer"] == info["n_train"]
    position = {key: index for index, key in enumerate(keys)}
    for run in plan.runs:
        allowed = params_for(run.experiment, run.setting)
        assert allowed is not None
        assert set(run.params) == set(allowed)
        for name, value in run.params.items():
            assert isinstance(value, float) or value in allowed[name]
        for key in run.depends_on:
            assert position[key] < position[run.key]  # teachers first
            assert key.startswith("distillation|teacher|")
    teacher = next(r for r in plan.runs if r.key == "distillation|teacher|0.1|0")
    metrics, arrays = teacher.execute(RunContext(lambda key: {}))
    assert 0.0 <= metrics["saturated_fraction"] <= 1.0
    assert 0.0 < metrics["mean_max_prob"] <= 1.0
    assert metrics["mutual_information"] <= math.log(metrics["mi_examples"]) + 1e-9
    assert arrays["transfer_logits"].shape == (info["n_transfer"], data.num_classes)
    assert arrays["mi_means"].shape == (metrics["mi_examples"],)
    # the records tell a kept last epoch by final_* == the kept model's metrics
    assert exp_distill._kept_last(metrics) == (metrics["best_epoch"] == config.epochs)
    student = next(r for r in plan.runs if r.key == "distillation|student|teacher|0.1|3|0")
    loaded = []

    def load(key):
        loaded.append(key)
        return arrays

    student_metrics, _ = student.execute(RunContext(load))
    assert loaded == ["distillation|teacher|0.1|0"]
    assert math.isfinite(student_metrics["accuracy"])
    assert math.isfinite(student_metrics["val_accuracy"])
    assert exp_distill._kept_last(student_metrics) == (
        student_metrics["best_epoch"] == config.epochs
    )


# ----------------------------------------------------------------------------------------------
# The analysis, on synthetic records
# ----------------------------------------------------------------------------------------------

PATTERN = [0.3, -0.1, 0.2, -0.4, 0.0]


def record(setting, params, seed, metrics, status="ok"):
    key = "|".join(["distillation", setting, *map(str, params.values()), str(seed)])
    return {
        "key": key,
        "status": status,
        "experiment": "distillation",
        "setting": setting,
        "params": dict(params),
        "seed": seed,
        "metrics": None if status != "ok" else metrics,
    }


def metrics_for(index, seed, accuracy, val_accuracy, **extra):
    wobble = 0.002 * PATTERN[(seed + index) % len(PATTERN)]
    out = {
        "accuracy": accuracy + wobble,
        "nll": 0.4 - accuracy / 4 + wobble,
        "ece": 0.05 + wobble,
        "val_accuracy": val_accuracy + wobble / 10,
        "val_nll": 0.4 - val_accuracy / 4,
    }
    out.update(extra)
    return out


def synthetic_records(smoothed_student_shift=-0.03, diverged=()):
    """Teachers of matched accuracy; validation prefers T=4 for the plain teacher and T=1 for
    the smoothed one, while test accuracy prefers the opposite."""
    records = []
    for seed in SEEDS:
        for index, eps in enumerate((0.0, 0.1)):
            records.append(
                record(
                    "teacher",
                    {"teacher_eps": eps},
                    seed,
                    metrics_for(
                        index,
                        seed,
                        0.95,
                        0.95,
                        mutual_information=1.0 - 3 * eps + 0.01 * PATTERN[seed],
                        saturated_fraction=0.4 - 3 * eps,
                        mean_max_prob=0.9 - eps,
                        transfer_accuracy=0.93,
                    ),
                )
            )
        arms = [
            ({"targets": "labels", "eps": 0.0, "temperature": 0.0}, 0.90, 0.90),
            ({"targets": "labels", "eps": 0.1, "temperature": 0.0}, 0.905, 0.90),
            ({"targets": "teacher", "eps": 0.0, "temperature": 1.0}, 0.95, 0.91),
            ({"targets": "teacher", "eps": 0.0, "temperature": 4.0}, 0.92, 0.93),
            (
                {"targets": "teacher", "eps": 0.1, "temperature": 1.0},
                0.92 + smoothed_student_shift,
                0.93,
            ),
            ({"targets": "teacher", "eps": 0.1, "temperature": 4.0}, 0.96, 0.91),
        ]
        for index, (params, accuracy, val_accuracy) in enumerate(arms):
            status = (
                "diverged" if (params["eps"], params["temperature"], seed) in diverged else "ok"
            )
            records.append(
                record(
                    "student",
                    params,
                    seed,
                    metrics_for(index + 2, seed, accuracy, val_accuracy),
                    status,
                )
            )
    return records


def analysed(records):
    findings = Findings(seeds=SEEDS)
    exp_distill.analyse(findings, group_results(records))
    return findings


def chosen_temperatures(findings):
    return {
        eps: value["temperature"]
        for eps, value in findings.experiments["distillation"]["chosen_temperatures"].items()
    }


def test_temperature_is_chosen_on_validation_only():
    records = synthetic_records()
    findings = analysed(records)
    assert chosen_temperatures(findings) == {"0": 4.0, "0.1": 1.0}
    summary = findings.experiments["distillation"]["chosen_temperatures"]
    assert all(v["selected_on"] == "validation" for v in summary.values())
    # test metrics shifted so that the other temperature is far ahead on test: no change
    shifted = copy.deepcopy(records)
    for rec in shifted:
        if rec["setting"] == "student" and rec["params"]["targets"] == "teacher":
            swap = rec["params"]["temperature"] == (1.0 if rec["params"]["eps"] == 0 else 4.0)
            for name in ("accuracy", "nll", "ece"):
                rec["metrics"][name] += 0.5 if swap else -0.5
    assert chosen_temperatures(analysed(shifted)) == {"0": 4.0, "0.1": 1.0}
    # validation metrics do move it
    moved = copy.deepcopy(records)
    for rec in moved:
        if rec["params"].get("temperature") == 1.0 and rec["params"]["eps"] == 0:
            rec["metrics"]["val_accuracy"] += 0.1
    assert chosen_temperatures(analysed(moved))["0"] == 1.0


def test_ties_on_validation_accuracy_go_to_the_lower_validation_nll():
    records = synthetic_records()
    for rec in records:
        params = rec["params"]
        if rec["setting"] == "student" and params["targets"] == "teacher" and params["eps"] == 0:
            rec["metrics"]["val_accuracy"] = 0.92
            rec["metrics"]["val_nll"] = 0.1 if params["temperature"] == 1.0 else 0.2
    assert chosen_temperatures(analysed(records))["0"] == 1.0


def all_text(findings):
    return " ".join(findings.sections["distillation"]["sentences"])


def check_words(text):
    assert not re.search(r"\b(better|worse|beats?|wins?|helps?|hurts?)\b", text, re.I), text


@pytest.mark.parametrize(
    ("shift", "claim", "phrase"),
    [
        (-0.03, "reproduced", "These data reproduce Müller et al.'s observation"),
        (0.03, "contradicted", "These data contradict Müller et al.'s observation"),
        (0.0, "not detected", "These data do not detect the effect Müller et al. reported"),
    ],
)
def test_the_claim_follows_the_interval(shift, claim, phrase):
    # The chosen students: the plain teacher's at T=4 (test accuracy 0.92) and the smoothed
    # teacher's at T=1 (0.92 + shift); the per-seed wobble differences sum to 0 over seeds.
    findings = analysed(synthetic_records(smoothed_student_shift=shift))
    head = next(
        c
        for c in findings.comparisons
        if c["metric"] == "accuracy" and c["baseline"] == "student of the eps=0 teacher (T=4)"
    )
    assert head["arm"] == "student of the eps=0.1 teacher (T=1)"
    assert head["mean_delta"] == pytest.approx(shift, abs=1e-12)
    assert head["chosen_on_validation"]
    assert findings.experiments["distillation"]["muller_claim"] == claim
    assert phrase in all_text(findings)
    check_words(all_text(findings))


def test_claim_sentence_for_each_kind_of_interval():
    from labelsmooth.study.stats import Comparison

    lower = Comparison(0.9, 0.92, -0.02, -0.03, -0.01, 5)
    higher = Comparison(0.94, 0.92, 0.02, 0.01, 0.03, 5)
    unclear = Comparison(0.92, 0.92, 0.0, -0.01, 0.01, 5)
    assert exp_distill._claim(lower)[0] == "reproduced"
    assert exp_distill._claim(higher)[0] == "contradicted"
    assert exp_distill._claim(unclear)[0] == "not detected"
    assert exp_distill._claim(None)[0] == "untested"
    for comparison in (lower, higher, unclear):
        check_words(exp_distill._claim(comparison)[1])
    assert "made no detectable difference" in exp_distill._claim(unclear)[1]


def test_summary_holds_saturation_information_and_comparisons():
    findings = analysed(synthetic_records())
    summary = findings.experiments["distillation"]
    assert summary["saturation"]["0"]["saturated_fraction"] == pytest.approx(0.4)
    assert summary["saturation"]["0.1"]["saturated_fraction"] == pytest.approx(0.1)
    assert summary["mutual_information"]["0.1"] == pytest.approx(0.7, abs=0.01)
    teacher_mi = next(
        c
        for c in findings.comparisons
        if c["setting"] == "teacher" and c["metric"] == "mutual_information"
    )
    assert teacher_mi["mean_delta"] == pytest.approx(-0.3, abs=1e-9)
    assert teacher_mi["significant"]
    text = all_text(findings)
    assert "Matched accuracy" not in text
    assert "Teacher accuracy: against the teacher without smoothing" in text
    # the teachers' interval lies inside +-1 point: matched within the stated margin
    assert summary["teachers_matched_on_accuracy"] is True
    assert summary["teacher_accuracy_match"] == {"0.1": "within margin"}
    assert summary["accuracy_margin"] == exp_distill.ACCURACY_MARGIN == 0.01
    assert "inside the equivalence margin of ±1 percentage points" in text
    assert "lowered mutual information (nats) by 0.300" in text
    significant = sum(c["significant"] for c in findings.comparisons)
    assert summary["intervals"] == len(findings.comparisons)
    assert summary["intervals_excluding_0"] == significant
    assert (
        f"{summary['intervals']} paired intervals, of which {significant} exclude 0; "
        f"{exp_distill.chance_count(summary['intervals'])} would exclude 0 by chance"
    ) in text
    assert "No run of this experiment diverged." in text
    assert all(c["selected_on"] == "validation" for c in findings.comparisons)
    check_words(text)


def test_diverged_seeds_are_counted_and_said():
    findings = analysed(synthetic_records(diverged={(0.1, 1.0, 2), (0.0, 0.0, 4)}))
    summary = findings.experiments["distillation"]
    assert summary["diverged"]["student: student of the eps=0.1 teacher at T=1"] == 1
    assert summary["diverged"]["student: student on hard labels (reference)"] == 1
    assert "2 run(s) diverged" in all_text(findings)
    rows = findings.sections["distillation"]["student_rows"]
    hard = next(r for r in rows if r.label.startswith("student on hard labels"))
    assert "1 seed(s) diverged (4)" in hard.note
    # the paired comparisons drop the diverged seeds
    against_hard = [
        c
        for c in findings.comparisons
        if c["baseline"] == "student on hard labels (reference)" and c["metric"] == "accuracy"
    ]
    assert all(c["n_seeds"] <= 4 for c in against_hard)


def test_no_records_no_section():
    findings = Findings(seeds=SEEDS)
    exp_distill.analyse(findings, [])
    assert "distillation" not in findings.sections
    assert exp_distill.section(findings, lambda key: {}, lambda *a: {}, {}) is None


def test_section_renders_tables_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    records = synthetic_records()
    findings = analysed(records)
    saved = {}

    def save_figure(name, figure, caption):
        saved[name] = caption
        return {"name": name, "caption": caption}

    rng = np.random.default_rng(0)

    def load_arrays(key):
        assert key.startswith("distillation|teacher|")
        return {
            "transfer_logits": rng.normal(size=(30, 4)) * 4,
            "mi_means": rng.normal(size=10),
            "mi_labels": np.array([0, 1] * 5),
        }

    made = exp_distill.section(findings, load_arrays, save_figure, {"config": {}})
    assert made.key == "distillation"
    assert set(saved) == {
        "distillation_students",
        "distillation_saturation",
        "distillation_logit_differences",
    }
    assert len(made.tables) == 3
    assert made.sentences == findings.sections["distillation"]["sentences"]


def test_unmatched_teachers_are_said_next_to_the_claim():
    records = synthetic_records(smoothed_student_shift=0.03)
    assert analysed(records).experiments["distillation"]["teachers_matched_on_accuracy"]
    for rec in records:
        if rec["setting"] == "teacher" and rec["params"]["teacher_eps"] == 0.1:
            rec["metrics"]["accuracy"] += 0.02
    findings = analysed(records)
    summary = findings.experiments["distillation"]
    assert summary["teachers_matched_on_accuracy"] is False
    # the smoothed teacher is itself more accurate (+0.02), in the direction of its student's
    # +0.03: "not reproduced, confounded", never "contradict"
    assert summary["muller_claim"] == "not_reproduced_confounded"
    text = all_text(findings)
    assert "the teachers' accuracies differ" in text
    assert "is not reproduced here, and this comparison is confounded" in text
    assert "differed from the plain teacher's by +0.020" in text
    assert "a mean difference smaller than the students'" in text
    assert "contradict" not in text
    check_words(text)


def test_claim_is_confounded_only_when_the_teachers_differ_in_the_same_direction():
    from labelsmooth.study.stats import Comparison

    higher = Comparison(0.94, 0.92, 0.011, 0.001, 0.021, 5)
    lower = Comparison(0.90, 0.92, -0.02, -0.03, -0.01, 5)
    unclear = Comparison(0.92, 0.92, 0.0, -0.01, 0.01, 5)
    teacher_up = Comparison(0.965, 0.952, 0.013, 0.006, 0.020, 5)
    teacher_down = Comparison(0.94, 0.952, -0.013, -0.020, -0.006, 5)
    teacher_unclear = Comparison(0.95, 0.95, 0.0, -0.005, 0.005, 5)
    key, text = exp_distill._claim(higher, teacher_up)
    assert key == "not_reproduced_confounded"
    assert "a mean difference larger than the students'" in text
    assert "+0.013 [0.006, 0.020]" in text
    assert exp_distill._claim(lower, teacher_down)[0] == "reproduced_confounded"
    # a teacher difference against the students' direction does not explain it
    assert exp_distill._claim(higher, teacher_down)[0] == "contradicted"
    assert exp_distill._claim(lower, teacher_up)[0] == "reproduced"
    assert exp_distill._claim(higher, teacher_unclear)[0] == "contradicted"
    assert exp_distill._claim(unclear, teacher_up)[0] == "not detected"
    for students in (higher, lower):
        for teacher in (teacher_up, teacher_down):
            check_words(exp_distill._claim(students, teacher)[1])


def test_saturation_is_said_beside_each_teachers_target_ceiling():
    assert exp_distill.target_ceiling(0.1, 10) == pytest.approx(0.91, abs=1e-12)
    assert exp_distill.target_ceiling(0.2, 4) == pytest.approx(0.85, abs=1e-12)
    assert exp_distill.target_ceiling(0.0, 4) == pytest.approx(1.0)
    assert exp_distill.target_ceiling(0.1, None) is None
    values = {"saturated_fraction": 0.0004, "mean_max_prob": 0.8285, "transfer_accuracy": 0.97}
    text = exp_distill.saturation_sentence(0.1, values, {"num_classes": 10})
    assert "under 0.05% of the examples" in text
    assert "puts 0.910 on the label" in text
    assert "below the threshold 0.99" in text
    assert "no evidence that its targets are less saturated" in text
    assert f"{100 * 0.8285 / 0.91:.1f}% of that ceiling" in text
    # without the number of classes, the bound over every K is said instead
    assert "at most 0.95 for any K >= 2" in exp_distill.saturation_sentence(0.1, values, {})
    plain = exp_distill.saturation_sentence(0.0, values, {"num_classes": 10})
    assert "lowest at a max probability of 1" in plain
    check_words(text + plain)


def test_temperature_margins_are_said_in_accuracy_and_labels():
    findings = analysed(synthetic_records())
    text = all_text(findings)
    # the plain teacher's student: T=4 (validation 0.93) over T=1 (0.91) on every seed
    assert "Temperature choice for the eps=0 teacher's student: T=4 had the highest mean" in text
    assert "T=1 had 0.9100, a margin of +0.0200" in text
    margins = findings.experiments["distillation"]["chosen_temperatures"]["0"]["margins"]
    assert margins["1"]["mean_delta"] == pytest.approx(0.02, abs=1e-12)
    made = exp_distill.section(
        findings,
        lambda key: {"transfer_logits": np.zeros((3, 4))},
        lambda name, figure, caption: {"name": name},
        {"config": {}, "num_classes": 4, "settings": {"distillation": {"n_val": 100}}},
    )
    rendered = " ".join(made.sentences)
    assert "about 10 of 500 validation labels (100 per seed, 5 seeds)" in rendered
    assert "puts 0.925 on the label" in rendered  # eps=0.1 over K=4: 1 - 0.1 + 0.025
    # a validation tie is said with the rule that broke it
    tied = copy.deepcopy(synthetic_records())
    for rec in tied:
        params = rec["params"]
        if rec["setting"] == "student" and params["targets"] == "teacher" and params["eps"] == 0:
            rec["metrics"]["val_accuracy"] = 0.92
            rec["metrics"]["val_nll"] = 0.1 if params["temperature"] == 1.0 else 0.2
    text = all_text(analysed(tied))
    assert (
        "tied with T=4 on validation accuracy (0.9200); the tie went to the lower validation"
        in (text)
    )
    check_words(rendered + text)


def test_teacher_match_needs_the_interval_inside_the_margin():
    from labelsmooth.study.stats import Comparison

    inside = Comparison(0.95, 0.95, 0.001, -0.004, 0.006, 5)
    small_but_detected = Comparison(0.955, 0.95, 0.005, 0.002, 0.008, 5)
    wide = Comparison(0.97, 0.95, 0.02, -0.062, 0.109, 3)
    apart = Comparison(0.99, 0.95, 0.04, 0.02, 0.06, 5)
    edge = Comparison(0.95, 0.95, 0.0, -0.0101, 0.005, 5)
    assert exp_distill.teacher_match(inside) == (True, "within margin")
    assert exp_distill.teacher_match(small_but_detected) == (True, "within margin")
    assert exp_distill.teacher_match(wide) == (None, "not shown")
    assert exp_distill.teacher_match(edge) == (None, "not shown")
    assert exp_distill.teacher_match(apart) == (False, "differ")
    assert exp_distill.teacher_match(None) == (None, "untested")
    nan = Comparison(0.95, 0.95, 0.0, math.nan, math.nan, 1)
    assert exp_distill.teacher_match(nan) == (None, "untested")


def test_a_wide_teacher_interval_is_not_called_a_match():
    # teacher accuracies that differ by +-0.04 from seed to seed around a zero mean: the
    # interval includes 0 but reaches far beyond +-1 point
    records = synthetic_records(smoothed_student_shift=0.03)
    swing = [0.04, -0.04, 0.04, -0.04, 0.0]
    for rec in records:
        if rec["setting"] == "teacher" and rec["params"]["teacher_eps"] == 0.1:
            rec["metrics"]["accuracy"] += swing[rec["seed"]]
    findings = analysed(records)
    summary = findings.experiments["distillation"]
    teacher = next(
        c for c in findings.comparisons if c["setting"] == "teacher" and c["metric"] == "accuracy"
    )
    assert not teacher["significant"]
    assert teacher["ci_low"] < -0.01 and teacher["ci_high"] > 0.01
    assert summary["teachers_matched_on_accuracy"] is None
    assert summary["teacher_accuracy_match"] == {"0.1": "not shown"}
    text = all_text(findings)
    assert "a match of the teachers' accuracies is not shown" in text
    assert "beyond the equivalence margin of ±1 percentage points" in text
    assert "matched on accuracy to within" not in text
    # next to a claim that the interval decides, the unshown match is said
    assert summary["muller_claim"] == "contradicted"
    assert "The teachers are not shown to be matched on accuracy" in text
    check_words(text)


def with_epochs(records, teacher_kept, student_kept, epochs=20):
    """Sets each run's kept epoch; a run kept at ``epochs`` records its kept model's metrics as
    its final_* ones, an earlier one records different final_* metrics."""
    out = copy.deepcopy(records)
    for rec in out:
        if rec["metrics"] is None:
            continue
        kept = (teacher_kept if rec["setting"] == "teacher" else student_kept)(rec)
        rec["metrics"]["best_epoch"] = float(kept)
        for name in ("accuracy", "nll", "ece"):
            shift = 0.0 if kept == epochs else 0.01
            rec["metrics"][f"final_{name}"] = rec["metrics"][name] - shift
    return out


def test_students_that_kept_their_last_epoch_are_said_with_the_budget():
    records = with_epochs(synthetic_records(), lambda rec: 12 + rec["seed"], lambda rec: 20)
    findings = analysed(records)
    summary = findings.experiments["distillation"]["kept_epochs"]
    assert summary["students"]["runs"] == 30
    assert summary["students"]["kept_last_epoch"] == 30
    assert summary["students"]["epochs_trained"] == 20
    assert len(summary["students"]["late_arms"]) == 6
    assert summary["teachers"]["kept_last_epoch"] == 0
    assert summary["teachers"]["late_arms"] == []
    assert summary["teachers"]["mean_kept_epoch"]["teacher with eps=0.1"] == pytest.approx(14)
    text = all_text(findings)
    assert (
        "Kept epochs (teachers): the mean kept epoch per arm was 14.0 of 20 epochs trained; "
        "no run kept its last epoch."
    ) in text
    assert (
        "Kept epochs (students): the mean kept epoch per arm was 20.0 of 20 epochs trained; "
        "30 of 30 runs kept the model of their last epoch and 6 of 6 arms have a mean kept "
        "epoch in the last tenth of training. These models may still have been improving"
    ) in text
    assert "describe this budget of 20 epochs, not converged models" in text
    # the student-teacher gap is qualified by the student's own kept epochs
    assert (
        "The student is the smaller network, trained on the transfer set only; it kept its "
        "last epoch of 20 on 5 of 5 seeds, so it may still have been improving"
    ) in text
    assert "Every run of this experiment kept its last epoch" not in text
    # the kept epoch is a column of the rows
    rows = findings.sections["distillation"]["student_rows"]
    assert all(row.values["best_epoch"] == 20 for row in rows)
    teacher_rows = findings.sections["distillation"]["teacher_rows"]
    assert [row.values["best_epoch"] for row in teacher_rows] == [14, 14]
    check_words(text)


def test_a_few_runs_at_their_last_epoch_are_counted_not_generalised():
    # one student arm (the hard-label reference) keeps epoch 20 on seeds 0 and 1 only
    def student_kept(rec):
        hard = rec["params"]["targets"] == "labels" and rec["params"]["eps"] == 0
        return 20 if hard and rec["seed"] < 2 else 10

    findings = analysed(with_epochs(synthetic_records(), lambda rec: 15, student_kept))
    summary = findings.experiments["distillation"]["kept_epochs"]["students"]
    assert summary["kept_last_epoch"] == 2
    assert summary["late_arms"] == []
    text = all_text(findings)
    assert "2 of 30 runs kept the model of their last epoch: those may still have been" in text
    assert "comparisons among the students describe" not in text
    # the chosen students kept epoch 10: their gap sentence gives the mean kept epoch
    assert "trained on the transfer set only; its mean kept epoch was 10.0." in text


def test_without_final_metrics_no_budget_is_invented():
    findings = analysed(synthetic_records())  # no best_epoch, no final_* metrics
    summary = findings.experiments["distillation"]["kept_epochs"]
    assert summary["students"]["kept_last_epoch"] == 0
    assert summary["students"]["epochs_trained"] is None
    assert "Kept epochs" not in all_text(findings)


def test_every_run_at_its_last_epoch_mentions_the_final_rule():
    findings = analysed(with_epochs(synthetic_records(), lambda rec: 20, lambda rec: 20))
    assert "Every run of this experiment kept its last epoch" in all_text(findings)
