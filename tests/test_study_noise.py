"""The noise and nls experiments (labelsmooth.study.exp_noise): noise models, forward
correction, the NLS fine-tune's stability on clean digits, the plan, and the analysis on
synthetic records (choices on validation only, paired comparisons written, divergence counted).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from labelsmooth.study import exp_noise
from labelsmooth.study.config import StudyConfig
from labelsmooth.study.data import load_digits
from labelsmooth.study.experiments import Plan, RunContext, symmetric_noise
from labelsmooth.study.findings import analyse_core
from labelsmooth.study.registry import params_for
from labelsmooth.study.sections import Section

SEEDS = (0, 1, 2, 3, 4)
PATTERN = (1.0, -1.0, 0.5, -0.5, 0.0)  # sums to 0 over the five seeds


# ----------------------------------------------------------------------------------------------
# Forward correction and transition matrices
# ----------------------------------------------------------------------------------------------


def test_forward_correction_matches_the_formula_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], dtype=torch.float64)
    target = torch.tensor([2, 0])
    transition = exp_noise.transition_matrix("symmetric", 0.3, 3)
    expected = []
    for row, y in zip(logits.tolist(), target.tolist(), strict=True):
        exps = [math.exp(v) for v in row]
        p = [e / sum(exps) for e in exps]
        # T: 0.7 on the diagonal, 0.15 elsewhere
        noisy = sum(p[i] * (0.7 if i == y else 0.15) for i in range(3))
        expected.append(-math.log(noisy))
    loss = exp_noise.forward_corrected_cross_entropy(logits, target, transition)
    assert float(loss) == pytest.approx(sum(expected) / 2, rel=1e-12)


def test_forward_correction_is_cross_entropy_at_identity_and_has_finite_gradients():
    generator = torch.Generator().manual_seed(0)
    logits = (5 * torch.randn(16, 10, generator=generator, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, 10, (16,), generator=generator)
    identity = torch.eye(10, dtype=torch.float64)
    plain = torch.nn.functional.cross_entropy(logits, target)
    corrected = exp_noise.forward_corrected_cross_entropy(logits, target, identity)
    assert float(corrected.detach()) == pytest.approx(float(plain.detach()), rel=1e-12)
    # pair-flip T has zeros: the log-space sum must give finite gradients equal to the naive ones
    transition = exp_noise.transition_matrix("pairflip", 0.3, 10)
    loss = exp_noise.forward_corrected_cross_entropy(logits, target, transition)
    (grad,) = torch.autograd.grad(loss, logits)
    assert bool(torch.isfinite(grad).all())
    naive = -torch.log((logits.softmax(-1) @ transition)[torch.arange(16), target]).mean()
    (naive_grad,) = torch.autograd.grad(naive, logits)
    assert float(loss.detach()) == pytest.approx(float(naive.detach()), rel=1e-10)
    assert torch.allclose(grad, naive_grad, atol=1e-12)


def test_transition_matrices():
    symmetric = exp_noise.transition_matrix("symmetric", 0.4, 5)
    assert torch.allclose(symmetric.sum(-1), torch.ones(5, dtype=torch.float64))
    assert float(symmetric[2, 2]) == pytest.approx(0.6)
    assert float(symmetric[2, 4]) == pytest.approx(0.1)
    pair = exp_noise.transition_matrix("pairflip", 0.2, 4)
    for i in range(4):
        assert float(pair[i, i]) == pytest.approx(0.8)
        assert float(pair[i, (i + 1) % 4]) == pytest.approx(0.2)
    assert int((pair > 0).sum()) == 8
    with pytest.raises(ValueError):
        exp_noise.transition_matrix("other", 0.2, 4)
    with pytest.raises(ValueError):
        exp_noise.forward_corrected_cross_entropy(
            torch.zeros(2, 3), torch.tensor([0, 1]), torch.ones(3, 3)
        )


# ----------------------------------------------------------------------------------------------
# Noise models
# ----------------------------------------------------------------------------------------------


def test_pairflip_flips_the_right_fraction_to_the_next_class():
    labels = torch.randint(0, 10, (40000,), generator=torch.Generator().manual_seed(1))
    noisy = exp_noise.pairflip_noise(labels, 0.3, 10, seed=5)
    changed = noisy != labels
    assert float(changed.double().mean()) == pytest.approx(0.3, abs=0.01)
    assert bool((noisy[changed] == (labels[changed] + 1) % 10).all())
    assert torch.equal(exp_noise.corrupt("pairflip", labels, 0.0, 10, 5), labels)


def test_symmetric_never_keeps_a_flipped_label():
    labels = torch.randint(0, 10, (40000,), generator=torch.Generator().manual_seed(2))
    noisy = exp_noise.corrupt("symmetric", labels, 0.4, 10, seed=7)
    assert torch.equal(noisy, symmetric_noise(labels, 0.4, 10, seed=7))
    changed = noisy != labels
    # every flip lands on another class, so the changed fraction is the rate itself
    assert float(changed.double().mean()) == pytest.approx(0.4, abs=0.01)
    shifts = ((noisy[changed] - labels[changed]) % 10).bincount(minlength=10)
    assert int(shifts[0]) == 0
    assert float(shifts[1:].min()) > 0.8 * float(shifts[1:].max())  # uniform over the others


# ----------------------------------------------------------------------------------------------
# The plans
# ----------------------------------------------------------------------------------------------


def test_noise_plan_cells_arms_and_notes():
    data = load_digits()
    config = StudyConfig(
        seeds=(0, 1), noise_rates=(0.0, 0.2, 0.6), noise_eps=(0.1,), experiments=("noise",)
    )
    plan = Plan(runs=[])
    exp_noise.build_noise(data, config, plan)
    keys = [run.key for run in plan.runs]
    assert len(keys) == len(set(keys))
    cells = {(r.setting, r.params["rate"]) for r in plan.runs}
    assert cells == {
        ("clean", 0.0),
        ("symmetric", 0.2),
        ("symmetric", 0.6),
        ("pairflip", 0.2),
    }
    assert any("pair-flip" in note and "0.6" in note for note in plan.notes)
    arms = {(r.params["arm"], r.params["eps"]) for r in plan.runs if r.setting == "pairflip"}
    assert arms == {("ce", 0.0), ("ls", 0.1), ("others", 0.2), ("forward", 0.0)}
    clean = {r.params["arm"] for r in plan.runs if r.setting == "clean"}
    assert clean == {"ce", "ls"}
    for run in plan.runs:
        required = params_for(run.experiment, run.setting)
        assert required is not None and set(required) == set(run.params)
        assert run.params["arm"] in required["arm"]


@pytest.fixture
def one_thread():
    """One torch thread: a busy 2-core machine otherwise spends the time spinning."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nls_fine_tune_at_eps_minus_two_is_stable_on_clean_digits(one_thread):
    """The calibration of nls_lr (default) over nls_epochs (default): eps=-2 does not diverge,
    its accuracy stays within a few points of the CE warm-up (kept and last epoch), and the
    fine-tune moves the logit norm. Runs the plan's own warm-up and fine-tune functions."""
    data = load_digits()
    config = StudyConfig(
        seeds=(0, 1), epochs=20, nls_eps=(-2.0,), nls_noise_rates=(0.0,), experiments=("nls",)
    )
    plan = Plan(runs=[])
    exp_noise.build_nls(data, config, plan)
    assert [r.params["arm"] for r in plan.runs] == ["warmup", "finetune", "finetune"] * 2
    store: dict[str, dict] = {}
    metrics: dict[str, dict[str, float]] = {}
    for run in plan.runs:
        assert set(run.depends_on) <= set(store)
        result, arrays = run.execute(RunContext(store.__getitem__))
        metrics[run.key] = result
        if arrays is not None:
            store[run.key] = arrays
    for seed in (0, 1):
        warm = metrics[exp_noise.warmup_key("clean", 0.0, seed)]
        tune = metrics[f"nls|clean|0|finetune|-2|{seed}"]
        control = metrics[f"nls|clean|0|finetune|0|{seed}"]
        # the fine-tune starts from the warm-up's kept checkpoint
        assert tune["start_logit_norm"] == pytest.approx(warm["logit_norm"], rel=1e-5)
        assert tune["accuracy"] >= warm["accuracy"] - 0.03
        assert tune["final_accuracy"] >= warm["accuracy"] - 0.04
        assert math.isfinite(tune["nll"]) and tune["nll"] < 2 * warm["nll"] + 0.05
        # bounded, but moved: the last epoch's logits grew, by less than 3x
        assert tune["final_logit_norm"] > 1.1 * warm["logit_norm"]
        assert tune["final_max_abs_logit"] < 3 * warm["max_abs_logit"]
        assert tune["final_logit_norm"] > control["final_logit_norm"]
    first = store[f"nls|clean|0|finetune|-2|{config.seeds[0]}"]
    assert len(first["val_logit_norm"]) == config.nls_epochs + 1


# ----------------------------------------------------------------------------------------------
# Analysis on synthetic records
# ----------------------------------------------------------------------------------------------

BASE = {
    "accuracy": 0.80,
    "nll": 0.60,
    "ts_nll": 0.55,
    "final_accuracy": 0.70,
    "final_nll": 0.90,
    "val_accuracy": 0.60,
    "val_nll": 1.2,
    "best_epoch": 8.0,
    "logit_norm": 5.0,
    "max_abs_logit": 6.0,
    "final_max_abs_logit": 9.0,
}


def _metrics(index, seed, shifts, scale=0.002):
    out = {}
    for offset, name in enumerate(BASE):
        noise = scale * PATTERN[(seed + index + offset) % len(PATTERN)]
        out[name] = BASE[name] + 0.01 * seed + shifts.get(name, 0.0) + noise
    return out


def _record(experiment, setting, params, seed, metrics, status="ok"):
    key = "|".join([experiment, setting, *map(str, params.values()), str(seed)])
    return {
        "key": key,
        "status": status,
        "experiment": experiment,
        "setting": setting,
        "params": dict(params),
        "seed": seed,
        "metrics": None if status != "ok" else metrics,
    }


NOISE_ARMS = [
    (("ce", 0.0), {}),
    (("ls", 0.1), {"val_accuracy": 0.01}),
    (("ls", 0.4), {"val_accuracy": 0.05, "accuracy": 0.02, "nll": 0.3}),
    (("others", 0.4), {"val_accuracy": 0.02, "final_accuracy": 0.05}),
    (("forward", 0.0), {"val_accuracy": 0.04, "accuracy": 0.06}),
]
NLS_ARMS = [
    (("warmup", 0.0), {}),
    (("finetune", 0.0), {"logit_norm": 0.2}),
    (("finetune", -0.5), {"val_accuracy": 0.01, "logit_norm": 0.5}),
    (("finetune", -2.0), {"val_accuracy": 0.03, "logit_norm": 2.0, "nll": 0.05}),
]


def _records(noise_arms=NOISE_ARMS, nls_arms=NLS_ARMS, diverged=()):
    records = []
    for experiment, arms in (("noise", noise_arms), ("nls", nls_arms)):
        for index, ((arm, eps), shifts) in enumerate(arms):
            params = {"rate": 0.4, "arm": arm, "eps": eps}
            for seed in SEEDS:
                status = "diverged" if (experiment, arm, eps, seed) in diverged else "ok"
                metrics = _metrics(index, seed, shifts)
                records.append(_record(experiment, "symmetric", params, seed, metrics, status))
    return records


def _analyse(records):
    findings = analyse_core(records, SEEDS)
    exp_noise.analyse(findings, findings.sections["groups"]["groups"])
    return findings


def test_analysis_chooses_on_validation_and_writes_comparisons():
    findings = _analyse(_records())
    noise = findings.experiments["noise"]["cells"][0]
    assert noise["chosen"]["arm"] == "ls" and noise["chosen"]["eps"] == 0.4
    assert noise["chosen"]["selected_on"] == "validation"
    nls = findings.experiments["nls"]["cells"][0]
    assert nls["chosen_eps"] == -2.0 and nls["selected_on"] == "validation"
    assert noise["nls_chosen_eps"] == -2.0
    # early stopping against the final epoch: accuracy 0.80 - 0.70 in every seed
    stopping = noise["early_stopping_vs_final"]["accuracy"]
    assert stopping["mean_delta"] == pytest.approx(0.10, abs=0.005)
    assert stopping["significant"]
    rows = [c for c in findings.comparisons if c["experiment"] in ("noise", "nls")]
    assert all(c["selected_on"] == "validation" for c in rows)
    chosen = [c for c in rows if c["experiment"] == "noise" and c["chosen_on_validation"]]
    assert {c["metric"] for c in chosen} == {"accuracy", "nll", "ts_nll"}
    # the NLS row of the noise section is the nls experiment's chosen eps against its eps=0
    # control (same warm-up, same extra epochs), not a new comparison against ce
    assert not any(c["arm"].startswith("NLS") for c in rows if c["experiment"] == "noise")
    assert noise["nls_chosen_vs_control"]["accuracy"] == nls["chosen_vs_control"]["accuracy"]
    # the counted intervals are the ones written, the validation choice's repeats once
    repeats = [c for c in rows if c["arm"].startswith("chosen on validation:")]
    assert len(repeats) == 3
    assert noise["intervals"] == sum(1 for c in rows if c["experiment"] == "noise") - 3
    assert nls["intervals"] == sum(1 for c in rows if c["experiment"] == "nls") - 4
    # every fine-tune vs warm-up, NLS vs control, NLS vs control at the last fine-tune epoch
    assert nls["intervals"] == 3 * 4 + 2 * 4 + 2 * 2
    forward = next(
        c for c in rows
        if c["arm"] == "forward correction (oracle noise model: known T)"
        and c["metric"] == "accuracy"
    )  # fmt: skip
    assert forward["mean_delta"] == pytest.approx(0.06, abs=0.005) and forward["significant"]


def test_choice_ignores_test_metrics():
    shifted = [
        ((arm, eps), {**shifts, "accuracy": 0.5 if arm == "ce" else -0.3, "nll": -0.4})
        for (arm, eps), shifts in NOISE_ARMS
    ]
    shifted_nls = [
        ((arm, eps), {**shifts, "accuracy": 0.4 if eps == -0.5 else 0.0})
        for (arm, eps), shifts in NLS_ARMS
    ]
    before = _analyse(_records())
    after = _analyse(_records(shifted, shifted_nls))
    for name in ("noise", "nls"):
        a = before.experiments[name]["cells"][0]
        b = after.experiments[name]["cells"][0]
        assert a.get("chosen") == b.get("chosen") and a.get("chosen_eps") == b.get("chosen_eps")


def test_divergence_is_counted_and_said():
    diverged = {("nls", "finetune", -2.0, 4), ("noise", "forward", 0.0, 1)}
    findings = _analyse(_records(diverged=diverged))
    nls = findings.experiments["nls"]["cells"][0]
    assert nls["diverged"]["NLS fine-tune eps=-2"] == 1
    # complete groups first: eps -2 lost a seed, so validation picks -0.5
    assert nls["chosen_eps"] == -0.5
    noise = findings.experiments["noise"]["cells"][0]
    assert noise["diverged"]["forward correction (oracle noise model: known T)"] == 1
    sentences = findings.sections["nls"]["cells"][0]["sentences"]
    assert any("NLS fine-tune eps=-2: 1 of 5 seeds diverged" in s for s in sentences)
    noise_sentences = findings.sections["noise"]["cells"][0]["sentences"]
    assert any(
        "forward correction (oracle noise model: known T): 1 of 5 seeds diverged" in s
        for s in noise_sentences
    )
    forward = next(
        c for c in findings.comparisons
        if c["arm"] == "forward correction (oracle noise model: known T)"
        and c["metric"] == "accuracy"
    )  # fmt: skip
    assert forward["n_seeds"] == 4


def test_sections_render_with_neutral_words():
    findings = _analyse(_records())
    saved = []

    def save_figure(name, figure, caption):
        assert figure.__class__.__name__ == "Figure"
        saved.append(name)
        return {"name": name, "caption": caption, "data": ""}

    def load_arrays(key):
        return {"val_logit_norm": [5.0, 5.5, 6.0]}

    study = {"dataset": "digits", "n_train": 100, "n_val": 20, "n_test": 50, "config": {}}
    sections = exp_noise.section(findings, load_arrays, save_figure, study)
    assert [s.key for s in sections] == ["noise", "nls"]
    assert all(isinstance(s, Section) for s in sections)
    assert len(saved) == len(set(saved)) == 3
    assert all(name.startswith(("noise_", "nls_")) for name in saved)
    for s in sections:
        text = " ".join([s.intro, *s.sentences])
        assert not re.search(r"\b(better|worse|beats|wins|helps|hurts)\b", text)
        for table in s.tables:
            for metric in table.metrics:
                assert metric in table.labels or metric in ("accuracy", "nll", "logit_norm")
    assert exp_noise.section(analyse_core([], SEEDS), load_arrays, save_figure, study) is None


def _text(findings, name):
    return " ".join(findings.sections[name]["cells"][0]["sentences"])


def test_oracle_arms_are_never_the_validation_choice():
    """'others' (eps = the true rate) and forward (the true T) use the noise model: with the
    highest validation accuracy they are still reported as oracles, not chosen."""
    arms = [
        (("ce", 0.0), {}),
        (("ls", 0.1), {"val_accuracy": 0.01}),
        (("others", 0.4), {"val_accuracy": 0.08}),
        (("forward", 0.0), {"val_accuracy": 0.09}),
    ]
    findings = _analyse(_records(noise_arms=arms))
    noise = findings.experiments["noise"]["cells"][0]
    assert noise["chosen"]["arm"] == "ls" and noise["chosen"]["eps"] == 0.1
    assert len(noise["oracle_arms"]) == 2
    assert all("oracle noise model" in label for label in noise["oracle_arms"])
    rows = findings.sections["noise"]["cells"][0]["rows"]
    for row in rows:
        if "oracle" in row.label:
            assert "chosen on validation" not in row.note and "oracle" in row.note
    assert "with oracle knowledge of the noise" in _text(findings, "noise")


def test_others_arm_in_pairflip_cells_is_labelled_a_mismatched_noise_model():
    """'others' is the posterior of symmetric noise: in a pair-flip cell it knows the rate but
    not the noise model, and its label says so (in the symmetric cell it stays the oracle)."""
    records = _records()
    for r in records:
        r["setting"] = "pairflip"
    findings = _analyse(records)
    labels = [c["arm"] for c in findings.comparisons if c["experiment"] == "noise"]
    mismatched = "LS eps=0.4 (others; known rate, mismatched noise model"
    assert any(label.startswith(mismatched) for label in labels)
    assert not any("oracle noise model: eps = the known noise rate" in x for x in labels)
    assert mismatched in _text(findings, "noise")
    symmetric = _analyse(_records())
    assert not any(
        "mismatched" in c["arm"] for c in symmetric.comparisons if c["experiment"] == "noise"
    )


def test_an_exact_tie_is_reported_as_a_tie_with_its_margin():
    """Two LS arms with identical validation accuracy on every seed: the tie rule (ce first,
    then the smallest eps) settles it, and the sentence says it was a tie and gives the margin
    over the next arm, in validation labels when n_val is known."""
    tie = {"val_accuracy": 0.02}
    arms = [
        (("ce", 0.0), {}),
        (("ls", 0.4), tie),
        (("ls", 0.1), tie),
        (("forward", 0.0), tie),
    ]
    records = _records(noise_arms=arms)
    for r in records:  # same validation accuracy seed by seed for the tied arms
        if r["experiment"] == "noise" and r["params"]["arm"] != "ce":
            r["metrics"]["val_accuracy"] = 0.62 + 0.01 * r["seed"]
        elif r["experiment"] == "noise":
            r["metrics"]["val_accuracy"] = 0.615 + 0.01 * r["seed"]
    findings = _analyse(records)
    noise = findings.experiments["noise"]["cells"][0]
    assert noise["chosen"]["eps"] == 0.1 and noise["chosen"]["arm"] == "ls"
    assert noise["tied_with"] == ["LS eps=0.4 (uniform)"]  # forward is no candidate
    assert noise["margin_val_accuracy"] == pytest.approx(0.005)
    text = _text(findings, "noise")
    assert "tied exactly with LS eps=0.4 (uniform), settled by the tie rule" in text
    study = {"dataset": "digits", "n_train": 100, "n_val": 200, "n_test": 50, "config": {}}
    sections = exp_noise.section(findings, _arrays, _save, study)
    words = " ".join(sections[0].sentences)
    # 0.005 x 200 labels x 5 seeds = 5 labels
    assert (
        "margin over the next arm (ce (eps=0)): 0.0050 in mean validation accuracy (5 of "
        "1000 validation labels over 5 seeds)" in words
    )


def _arrays(key):
    return {"val_logit_norm": [5.0, 5.5, 6.0]}


def _save(name, figure, caption):
    return {"name": name, "caption": caption, "data": ""}


def test_nls_says_when_the_control_had_the_higher_validation_accuracy_and_the_tie():
    arms = [
        (("warmup", 0.0), {}),
        (("finetune", 0.0), {"val_accuracy": 0.05}),
        (("finetune", -0.5), {"val_accuracy": 0.02, "nll": 0.01}),
        (("finetune", -2.0), {"val_accuracy": 0.02, "nll": 0.2}),
    ]
    records = _records(nls_arms=arms)
    for r in records:  # -0.5 and -2 tie exactly, seed by seed
        if r["experiment"] == "nls" and r["params"]["eps"] in (-0.5, -2.0):
            r["metrics"]["val_accuracy"] = 0.6 + 0.01 * r["seed"]
    findings = _analyse(records)
    nls = findings.experiments["nls"]["cells"][0]
    assert nls["chosen_eps"] == -0.5 and nls["chosen_tied_with"] == [-2.0]
    assert nls["control_val_accuracy_higher"] is True
    text = _text(findings, "nls")
    assert "tied exactly with eps=-2, settled by the tie rule" in text
    assert "the eps=0 control had the higher mean validation accuracy" in text
    # not the same models (NLL differs by 0.19): nothing flagged as coinciding
    assert nls["coinciding_eps"] == []


def _copy_nls_arm(nll_shift):
    """eps -2 given eps -0.5's per-seed metrics (its NLL shifted by ``nll_shift``) and a
    different last fine-tune epoch."""
    arms = [
        (("warmup", 0.0), {}),
        (("finetune", 0.0), {"logit_norm": 0.2}),
        (("finetune", -0.5), {"logit_norm": 0.5}),
        (("finetune", -2.0), {"logit_norm": 0.5}),
    ]
    records = _records(nls_arms=arms)
    by_seed = {r["seed"]: r["metrics"] for r in records if r["params"].get("eps") == -0.5
               and r["experiment"] == "nls"}  # fmt: skip
    for r in records:
        if r["experiment"] == "nls" and r["params"]["eps"] == -2.0:
            r["metrics"] = {**by_seed[r["seed"]], "nll": by_seed[r["seed"]]["nll"] + nll_shift,
                            "final_accuracy": 0.5}  # fmt: skip
    return records


def test_nls_arms_with_the_same_kept_models_are_counted_once():
    """eps -0.5 and -2 with identical per-seed kept-model metrics: flagged, and their
    kept-model intervals (4 against the warm-up, 4 against the control) counted once."""
    findings = _analyse(_copy_nls_arm(0.0))
    nls = findings.experiments["nls"]["cells"][0]
    assert nls["coinciding_eps"] == [[-2.0, -0.5]] and nls["near_identical_eps"] == []
    written = sum(1 for c in findings.comparisons if c["experiment"] == "nls")
    assert nls["intervals"] == written - 4 - 8
    text = _text(findings, "nls")
    assert "NLS fine-tune eps=-2 gave the same kept models as NLS fine-tune eps=-0.5" in text
    assert "confident model" not in text


def test_nls_arms_with_a_different_nll_are_near_identical_and_counted_each():
    """Same kept epoch and accuracies but test NLL 1e-4 apart: not the same models (the
    review's case: NLL intervals that differ), so nothing is dropped as a repeat."""
    findings = _analyse(_copy_nls_arm(1e-4))
    nls = findings.experiments["nls"]["cells"][0]
    assert nls["coinciding_eps"] == [] and nls["near_identical_eps"] == [[-2.0, -0.5]]
    written = sum(1 for c in findings.comparisons if c["experiment"] == "nls")
    assert nls["intervals"] == written - 4  # only the validation choice's repeats
    text = _text(findings, "nls")
    assert "near-identical, not the same models, so each one's intervals are counted" in text
    assert "test NLL up to 0.0001 apart on a seed" in text
    assert "coincide" not in text and "confident model" not in text
    a = next(g for g in findings.sections["nls"]["cells"][0]["tunes"] if g.params["eps"] == -2)
    b = next(g for g in findings.sections["nls"]["cells"][0]["tunes"] if g.params["eps"] == -0.5)
    assert not exp_noise.coincide(a, b, SEEDS) and exp_noise.near_identical(a, b, SEEDS)
    assert exp_noise.coincide(b, b, SEEDS)


def test_noise_says_when_temperature_scaling_raised_ce_nll():
    """TS fitted on the noisy validation labels raises ce's clean-test NLL by 0.15 (0.55 + 0.2
    - 0.6) on every seed: the cell says so from the paired comparison, and every 'after
    temperature scaling' phrase carries ce's NLL with and without TS."""
    arms = [((arm, eps), {**shifts, "ts_nll": 0.2}) if arm == "ce" else ((arm, eps), shifts)
            for (arm, eps), shifts in NOISE_ARMS]  # fmt: skip
    findings = _analyse(_records(noise_arms=arms))
    noise = findings.experiments["noise"]["cells"][0]
    ce_ts = noise["ce_ts_nll_vs_nll"]
    assert ce_ts["mean_delta"] == pytest.approx(0.15, abs=1e-9) and ce_ts["significant"]
    text = _text(findings, "noise")
    assert (
        "temperature scaling fitted on the noisy validation labels, applied to ce early-stopped, "
        "raised NLL by 0.150" in text
    )
    assert "mean NLL 0.620 without it, 0.770 with it" in text  # 0.60 + 0.01 x mean seed 2
    phrases = text.count("after temperature scaling ")
    # all against ce: not the cell's own sentence, nor the NLS row (against its control)
    assert text.count("; ce without it: 0.620)") == phrases - 2
    # where TS lowered ce's NLL (the default records), nothing is added
    plain = _text(_analyse(_records()), "noise")
    assert "ce without it:" not in plain and "lowered NLL by 0.050" in plain


def test_noise_row_of_nls_carries_the_tie_the_control_and_the_last_epoch():
    arms = [
        (("warmup", 0.0), {}),
        (("finetune", 0.0), {"val_accuracy": 0.05}),
        (("finetune", -0.5), {"val_accuracy": 0.02, "nll": 0.01, "final_nll": -0.2}),
        (("finetune", -2.0), {"val_accuracy": 0.02, "nll": 0.2, "final_nll": -0.3}),
    ]
    records = _records(nls_arms=arms)
    for r in records:  # -0.5 and -2 tie exactly, seed by seed
        if r["experiment"] == "nls" and r["params"]["eps"] in (-0.5, -2.0):
            r["metrics"]["val_accuracy"] = 0.6 + 0.01 * r["seed"]
    text = _text(_analyse(records), "noise")
    row = next(s for s in text.split(". symmetric") if "the NLS fine-tune chosen" in s)
    assert "eps=-0.5" in row and "tied exactly with eps=-2, settled by the tie rule" in row
    assert "the eps=0 control had the higher mean validation accuracy, 0.6700" in row
    assert "2 of the 2 negative eps lowered NLL detectably and 0 raised it" in row
    assert "eps=-2 lowered NLL by 0.300" in row


def test_warmups_repeating_noise_ce_runs_are_said_and_nls_intro_follows_the_config():
    records = _records()
    ce = {r["seed"]: r["metrics"] for r in records if r["experiment"] == "noise"
          and r["params"]["arm"] == "ce"}  # fmt: skip
    for r in records:
        if r["experiment"] == "nls" and r["params"]["arm"] == "warmup":
            r["metrics"] = dict(ce[r["seed"]])
    findings = _analyse(records)
    assert findings.experiments["nls"]["cells"][0]["warmup_same_models_as"] == [
        "the noise experiment's ce runs"
    ]
    default = StudyConfig().nls_lr
    for lr, says_default in ((default, True), (default * 10, False)):
        study = {"dataset": "digits", "n_train": 100, "n_val": 20, "n_test": 50,
                 "config": {"nls_lr": lr}}  # fmt: skip
        sections = exp_noise.section(findings, _arrays, _save, study)
        intro = sections[1].intro
        assert f"This study used nls_lr {lr:g}; " in intro
        assert ("it is not the default" in intro) is not says_default
        assert "same models as runs of other experiments" in intro
        # the kept epochs are counted, not asserted: all synthetic fine-tunes kept epoch 8
        assert "0 kept the first fine-tune epoch" in intro
    # without the repeat (one seed's warm-up differs), nothing is said
    records = _records()
    for r in records:
        if r["experiment"] == "nls" and r["params"]["arm"] == "warmup" and r["seed"] == 2:
            r["metrics"]["accuracy"] += 0.01
    plain = _analyse(records)
    assert plain.experiments["nls"]["cells"][0]["warmup_same_models_as"] == []
