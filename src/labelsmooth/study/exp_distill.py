"""The ``distillation`` experiment: does a teacher trained with label smoothing make a worse
teacher (Müller, Kornblith & Hinton 2019, Sec. 4)?

Per seed, the seed's training part is split (stratified, deterministic per seed) into a
**teacher set** and a held-out **transfer set** (``transfer_fraction`` of it). Two teachers
(the study's MLP at ``width``/``depth``, early-stopped on validation) are trained on the
teacher set, with eps = 0 and with ``teacher_eps``. Students are a smaller network (depth 1,
``student_width``) trained on the transfer set only, so that the teachers' targets come from
examples they never saw and are not saturated:

* on the hard labels (the reference);
* on the hard labels smoothed with eps = ``teacher_eps`` (Müller's control);
* on each teacher's outputs at each temperature T of ``temperatures``, with the loss
  ``T**2 * CE(student / T, softmax(teacher / T))`` (:func:`student_loss`).

Every student is early-stopped on the validation split's labels; the temperature is chosen per
teacher on the students' validation accuracy (ties: lower validation NLL, then lower T). Test
data are only measured. The two teachers count as matched on accuracy only when the paired 95%
interval of their test-accuracy difference lies inside +-:data:`ACCURACY_MARGIN` (an
equivalence margin); an interval that merely includes 0 is "not shown". The analysis also
counts the runs whose kept model is their last epoch's (they may still have been improving).
Each teacher also records how saturated its targets are on the transfer set and Müller et
al.'s mutual information between the training example and the logit difference of classes 0
and 1 under Gaussian input noise (:func:`labelsmooth.analysis.mutual_information_under_noise`),
on teacher-set examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..analysis import mutual_information_under_noise
from ..functional import cross_entropy
from ..targets import smooth_labels
from .config import StudyConfig
from .data import Split, stratified_split
from .experiments import (
    Plan,
    Run,
    RunContext,
    SeedData,
    _fit,
    _logits,
    measure_classifier,
    seed_data,
    split_sizes,
)
from .findings import Findings, Group, Row, _words, chance_count, choose, select, validation_margin
from .outputs import Arrays, Metrics
from .sections import LoadArrays, SaveFigure, Section, Table
from .stats import Comparison, format_delta, format_interval

EXPERIMENT = "distillation"
TEACHER, STUDENT = "teacher", "student"
# A teacher's target on a transfer example counts as saturated above this max probability.
SATURATION = 0.99
# The mutual information uses at most this many teacher-set examples of each of classes 0, 1.
MI_EXAMPLES_PER_CLASS = 50
MI_CLASSES = (0, 1)
# Offset of the transfer split's seed from the study seed (the validation split uses the seed).
TRANSFER_SEED_OFFSET = 7919
# The teachers count as matched on accuracy when the paired 95% interval of their test-accuracy
# difference lies inside +-ACCURACY_MARGIN (an equivalence margin, in accuracy units).
ACCURACY_MARGIN = 0.01
# A mean kept epoch at or after this share of the epochs trained is "in the last tenth".
LATE_SHARE = 0.9

PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    (EXPERIMENT, TEACHER): {"teacher_eps": ()},
    (EXPERIMENT, STUDENT): {"targets": ("labels", "teacher"), "eps": (), "temperature": ()},
}

TEACHER_METRICS = ("accuracy", "nll", "ece", "mutual_information")
STUDENT_METRICS = ("accuracy", "nll", "ece")


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


def transfer_split(part: SeedData, fraction: float, seed: int) -> tuple[SeedData, SeedData]:
    """(teacher part, transfer part) of a seed's training part: a stratified split with
    ``fraction`` of it in the transfer part, deterministic under ``seed``. Both keep the seed's
    validation and test data."""
    labels = part.train.y_train.numpy()
    teacher, transfer = stratified_split(labels, fraction, seed + TRANSFER_SEED_OFFSET)

    def take(index: np.ndarray) -> SeedData:
        rows = torch.from_numpy(index)
        split = replace(
            part.train, x_train=part.train.x_train[rows], y_train=part.train.y_train[rows]
        )
        return SeedData(split, part.x_val, part.y_val)

    return take(teacher), take(transfer)


def student_loss(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al.'s distillation loss: ``T**2 * CE(logits / T, softmax(teacher / T))``
    (the T**2 keeps the gradient's scale comparable across temperatures)."""
    soft = (teacher_logits / temperature).softmax(-1)
    return temperature**2 * cross_entropy(logits / temperature, soft, 0.0)


def _parts(data: Split, config: StudyConfig, seed: int) -> tuple[SeedData, SeedData]:
    return transfer_split(seed_data(data, config, seed), config.transfer_fraction, seed)


def _mi_inputs(part: SeedData) -> tuple[Tensor, Tensor]:
    """Teacher-set examples of classes 0 and 1 (at most MI_EXAMPLES_PER_CLASS each, in index
    order): (inputs, labels)."""
    labels = part.train.y_train
    index = torch.cat(
        [torch.nonzero(labels == c).flatten()[:MI_EXAMPLES_PER_CLASS] for c in MI_CLASSES]
    )
    return part.train.x_train[index], labels[index]


def _teacher(
    data: Split, config: StudyConfig, eps: float, seed: int, keep_figure_arrays: bool
) -> Any:
    def execute(_: RunContext) -> tuple[Metrics, Arrays]:
        teacher_part, transfer_part = _parts(data, config, seed)

        def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
            return cross_entropy(logits, target, eps)

        trained = _fit(teacher_part, config, loss_fn, seed)
        result, _, _ = measure_classifier(trained, teacher_part, config, eps=eps)
        transfer_logits = _logits(trained.model, transfer_part.train.x_train, config.device)
        probs = transfer_logits.double().softmax(-1)
        top = probs.max(-1).values
        result["saturated_fraction"] = float((top > SATURATION).double().mean())
        result["mean_max_prob"] = float(top.mean())
        result["transfer_accuracy"] = float(
            (probs.argmax(-1) == transfer_part.train.y_train).double().mean()
        )
        inputs, labels = _mi_inputs(teacher_part)
        estimate = mutual_information_under_noise(
            trained.model,
            inputs.to(config.device),
            MI_CLASSES,
            noise_std=config.mi_noise_std,
            num_draws=config.mi_draws,
            generator=seed,
        )
        result["mutual_information"] = estimate.mutual_information
        result["mi_examples"] = float(len(inputs))
        arrays: Arrays = {"transfer_logits": transfer_logits.numpy()}
        if keep_figure_arrays:
            arrays["mi_means"] = estimate.means
            arrays["mi_labels"] = labels.numpy()
        return result, arrays

    return execute


def _student(
    data: Split,
    config: StudyConfig,
    seed: int,
    *,
    label_eps: float = 0.0,
    teacher_key: str | None = None,
    temperature: float = 0.0,
) -> Any:
    def execute(context: RunContext) -> tuple[Metrics, None]:
        _, transfer_part = _parts(data, config, seed)
        if teacher_key is None:

            def loss_fn(logits: Tensor, target: Tensor) -> Tensor:
                return cross_entropy(logits, target, label_eps)

            y_train = None
        else:
            teacher_logits = torch.from_numpy(context.load_arrays(teacher_key)["transfer_logits"])
            teacher_logits = teacher_logits.to(config.device)

            # the training "labels" are row indices into the teacher's transfer logits
            def loss_fn(logits: Tensor, rows: Tensor) -> Tensor:
                return student_loss(logits, teacher_logits[rows], temperature)

            y_train = torch.arange(len(teacher_logits))
        trained = _fit(
            transfer_part,
            config,
            loss_fn,
            seed,
            width=config.student_width,
            depth=1,
            y_train=y_train,
        )
        eps = label_eps if teacher_key is None else None
        return measure_classifier(trained, transfer_part, config, eps=eps)[0], None

    return execute


def teacher_key(eps: float, seed: int) -> str:
    return f"{EXPERIMENT}|{TEACHER}|{eps:g}|{seed}"


def build(data: Split, config: StudyConfig, plan: Plan) -> None:
    """Two teachers per seed, then their students (see the module's docstring)."""
    sizes = split_sizes(data, config)
    teacher_part, transfer_part = _parts(data, config, config.seeds[0])
    n_teacher, n_transfer = len(teacher_part.train.x_train), len(transfer_part.train.x_train)
    plan.settings[EXPERIMENT] = {
        "description": (
            f"{data.name}: each seed's training part split into a teacher set and a transfer set"
        ),
        **sizes,
        "n_teacher": n_teacher,
        "n_transfer": n_transfer,
        "num_classes": data.num_classes,
    }
    eps_values = [0.0, config.teacher_eps]
    teacher_cost = n_teacher * config.epochs
    student_cost = n_transfer * config.epochs / 4
    for seed in config.seeds:
        first = seed == config.seeds[0]
        for eps in eps_values:
            plan.runs.append(
                Run(
                    key=teacher_key(eps, seed),
                    experiment=EXPERIMENT,
                    setting=TEACHER,
                    params={"teacher_eps": eps},
                    seed=seed,
                    execute=_teacher(data, config, eps, seed, first),
                    cost=teacher_cost,
                )
            )
        for eps in eps_values:
            plan.runs.append(
                Run(
                    key=f"{EXPERIMENT}|{STUDENT}|labels|{eps:g}|0|{seed}",
                    experiment=EXPERIMENT,
                    setting=STUDENT,
                    params={"targets": "labels", "eps": eps, "temperature": 0.0},
                    seed=seed,
                    execute=_student(data, config, seed, label_eps=eps),
                    cost=student_cost,
                )
            )
        for eps in eps_values:
            for temperature in config.temperatures:
                key = teacher_key(eps, seed)
                plan.runs.append(
                    Run(
                        key=f"{EXPERIMENT}|{STUDENT}|teacher|{eps:g}|{temperature:g}|{seed}",
                        experiment=EXPERIMENT,
                        setting=STUDENT,
                        params={"targets": "teacher", "eps": eps, "temperature": temperature},
                        seed=seed,
                        execute=_student(
                            data, config, seed, teacher_key=key, temperature=temperature
                        ),
                        depends_on=(key,),
                        cost=student_cost,
                    )
                )


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def _teacher_label(eps: float) -> str:
    return "teacher without smoothing (eps=0)" if eps == 0 else f"teacher with eps={eps:g}"


def _student_label(group: Group) -> str:
    params = group.params
    if params.get("targets") == "labels":
        if params["eps"] == 0:
            return "student on hard labels (reference)"
        return f"student on labels smoothed with eps={params['eps']:g}"
    return f"student of the eps={params['eps']:g} teacher at T={params['temperature']:g}"


def _percent(fraction: float) -> str:
    """A share as a percentage; never "0.0%" for a share that is not 0."""
    if 0 < fraction < 0.0005:
        return "under 0.05%"
    return f"{100 * fraction:.1f}%"


def _diverged_note(group: Group) -> str:
    if not group.diverged:
        return ""
    seeds = ", ".join(str(s) for s in sorted(group.diverged))
    return f"{len(group.diverged)} seed(s) diverged ({seeds}), left out"


def _kept_last(metrics: dict[str, float]) -> bool:
    """Whether a run's kept model is its last epoch's: the run then records the kept model's
    own test metrics as its ``final_*`` ones (an earlier kept epoch records the last epoch's)."""
    return all(
        metrics.get(f"final_{name}") is not None
        and metrics.get(f"final_{name}") == metrics.get(name)
        for name in ("accuracy", "nll", "ece")
    )


def kept_last_seeds(group: Group) -> list[int]:
    """The seeds of ``group`` whose kept model is the last epoch's."""
    return sorted(seed for seed, m in group.metrics.items() if _kept_last(m))


def epochs_trained(groups: Sequence[Group]) -> float | None:
    """The number of epochs every run of the experiment trained (teachers and students use the
    same budget and never stop early): the kept epoch of a run that kept its last epoch. None
    when no run kept its last epoch (the records do not hold the budget otherwise)."""
    found = [
        g.metrics[seed].get("best_epoch", math.nan) for g in groups for seed in kept_last_seeds(g)
    ]
    found = [v for v in found if v is not None and math.isfinite(v)]
    return max(found) if found else None


def kept_epoch_sentence(
    what: str, groups: Sequence[Group], budget: float | None, label: Any
) -> tuple[str, dict[str, Any]]:
    """A sentence on the kept epochs of ``groups`` (the teachers or the students), and its
    summary: how many runs kept their last epoch, and which arms' mean kept epoch lies in the
    last tenth of the ``budget`` of epochs (when it is known)."""
    runs = sum(g.n_seeds for g in groups)
    last = sum(len(kept_last_seeds(g)) for g in groups)
    means = {label(g): g.mean("best_epoch") for g in groups}
    known = [v for v in means.values() if math.isfinite(v)]
    late = []
    if budget is not None:
        late = [name for name, v in means.items() if math.isfinite(v) and v >= LATE_SHARE * budget]
    summary = {
        "runs": runs,
        "kept_last_epoch": last,
        "epochs_trained": budget,
        "mean_kept_epoch": means,
        "late_arms": late,
    }
    if not runs or not known:
        return "", summary
    span = (
        f"{min(known):.1f}"
        if min(known) == max(known)
        else f"from {min(known):.1f} to {max(known):.1f}"
    )
    head = f"Kept epochs ({what}): the mean kept epoch per arm was {span}"
    if budget is not None:
        head += f" of {budget:g} epochs trained"
    if not last and not late:
        return f"{head}; no run kept its last epoch.", summary
    parts = [f"{last} of {runs} runs kept the model of their last epoch"]
    if late:
        parts.append(
            f"{len(late)} of {len(groups)} arms have a mean kept epoch in the last tenth of "
            "training"
        )
    if last < runs and len(late) < len(groups):
        return (
            f"{head}; {' and '.join(parts)}: those may still have been improving when "
            "training stopped.",
            summary,
        )
    budget_words = f"{budget:g} epochs" if budget is not None else "epochs"
    return (
        f"{head}; {' and '.join(parts)}. These models may still have been improving when "
        f"training stopped, so the comparisons among the {what} describe this budget of "
        f"{budget_words}, not converged models.",
        summary,
    )


def teacher_match(comparison: Comparison | None) -> tuple[bool | None, str]:
    """(matched, state) of the teachers' paired test-accuracy interval against the equivalence
    margin: (True, "within margin") when it lies inside +-ACCURACY_MARGIN; (False, "differ")
    when it excludes 0 and leaves the margin; (None, "not shown") when it includes 0 but
    reaches beyond the margin; (None, "untested") without an interval."""
    if comparison is None or math.isnan(comparison.ci_low) or math.isnan(comparison.ci_high):
        return None, "untested"
    if comparison.ci_low >= -ACCURACY_MARGIN and comparison.ci_high <= ACCURACY_MARGIN:
        return True, "within margin"
    if comparison.significant:
        return False, "differ"
    return None, "not shown"


def choose_temperature(students: Sequence[Group]) -> Group | None:
    """The teacher's student with the highest mean validation accuracy; ties to the lower
    validation NLL, then the lower temperature. Validation metrics only."""
    order = sorted(students, key=lambda g: (g.mean("val_nll"), float(g.params["temperature"])))
    ranks = {id(g): float(rank) for rank, g in enumerate(order)}
    return choose(students, "val_accuracy", higher=True, prefer=lambda g: ranks[id(g)])


def _claim(comparison: Comparison | None, teacher: Comparison | None = None) -> tuple[str, str]:
    """(key, sentence) for Müller et al.'s claim that the smoothed teacher's student has lower
    accuracy than the plain teacher's, from the interval alone. When the teachers' own test
    accuracies differ detectably (``teacher``, smoothed minus plain, excludes 0) in the same
    direction as the students', the comparison is confounded: "not_reproduced_confounded" (the
    students' difference is positive) or "reproduced_confounded" (negative), never
    "contradicted" or "reproduced"."""
    if comparison is None or comparison.n_seeds < 2 or math.isnan(comparison.ci_low):
        return "untested", (
            "Müller et al.'s claim (a lower accuracy for the student of the smoothed teacher) "
            "could not be tested: fewer than two seeds have both students."
        )
    words = _words(comparison, "accuracy")
    confounded = (
        comparison.significant
        and teacher is not None
        and teacher.significant
        and (teacher.mean_delta > 0) == (comparison.mean_delta > 0)
    )
    if confounded:
        assert teacher is not None
        size = abs(teacher.mean_delta) - abs(comparison.mean_delta)
        relation = "larger than" if size > 0 else ("smaller than" if size < 0 else "equal to")
        because = (
            f"but the smoothed teacher's own test accuracy differed from the plain teacher's by "
            f"{format_delta(teacher, 3)} (mean, 95% CI), a mean difference {relation} the "
            "students', so the students' difference may come from the accuracy of the "
            "teachers rather than from smoothing as such."
        )
        if comparison.mean_delta > 0:
            return "not_reproduced_confounded", (
                "Müller et al.'s observation (a lower accuracy for the student of the smoothed "
                "teacher) is not reproduced here, and this comparison is confounded: the "
                "student of the smoothed teacher, against the student of the plain teacher, "
                f"{words}, {because}"
            )
        return "reproduced_confounded", (
            "The direction Müller et al. reported (a lower accuracy for the student of the "
            "smoothed teacher) is seen here, but this comparison is confounded: the student of "
            f"the smoothed teacher, against the student of the plain teacher, {words}, {because}"
        )
    if comparison.significant and comparison.mean_delta < 0:
        return "reproduced", (
            "These data reproduce Müller et al.'s observation: the student of the smoothed "
            f"teacher, against the student of the plain teacher, {words}."
        )
    if comparison.significant:
        return "contradicted", (
            "These data contradict Müller et al.'s observation: the student of the smoothed "
            f"teacher, against the student of the plain teacher, {words}."
        )
    return "not detected", (
        "These data do not detect the effect Müller et al. reported (a lower accuracy for the "
        f"student of the smoothed teacher): it {words}, with {comparison.n_seeds} seeds, so "
        "any difference within that interval, in either direction, remains compatible with "
        "the data."
    )


def target_ceiling(eps: float, num_classes: int | None) -> float | None:
    """The largest entry of a teacher's training target (the library's uniform smoothing at
    ``eps`` over ``num_classes`` classes): the max probability at which its loss is lowest.
    None when the number of classes is unknown."""
    if not num_classes:
        return None
    target = smooth_labels(torch.tensor([0]), int(num_classes), eps, dtype=torch.float64)
    return float(target.max())


def saturation_sentence(eps: float, values: dict[str, float], info: dict[str, Any]) -> str:
    """The share of transfer examples above SATURATION for the teacher with ``eps``, beside
    the ceiling its loss sets on its max probability (from ``info["num_classes"]``)."""
    share = values["saturated_fraction"]
    mean_max = values["mean_max_prob"]
    text = (
        f"On the transfer set (examples it never saw), the {_teacher_label(eps)} gave a "
        f"max probability above {SATURATION:g} on {_percent(share)} of the examples (mean max "
        f"probability {mean_max:.3f}, at T=1), and agreed with the label on "
        f"{100 * values['transfer_accuracy']:.1f}% (mean over seeds)."
    )
    if eps == 0:
        return text + (
            " Its training target is one-hot, so its loss is lowest at a max probability of 1; "
            f"its mean max probability is {100 * mean_max:.1f}% of that ceiling."
        )
    ceiling = target_ceiling(eps, info.get("num_classes"))
    if ceiling is None:
        return text + (
            f" Its training target puts 1 - eps + eps/K on the label, at most "
            f"{1 - eps / 2:g} for any K >= 2, and its loss is lowest at a max probability "
            "equal to that largest entry; where that is below the threshold, a share near 0 "
            "above it is expected from the loss alone and is no evidence about saturation."
        )
    head = (
        f" Its training target (uniform smoothing, eps={eps:g}, K={int(info['num_classes'])}) "
        f"puts {ceiling:.3f} on the label, and its loss is lowest at a max probability of "
        f"{ceiling:.3f}"
    )
    if ceiling <= SATURATION:
        return text + (
            f"{head}, below the threshold {SATURATION:g}: a share near 0 above the threshold "
            "is expected from the loss alone and is no evidence that its targets are less "
            f"saturated than the plain teacher's; its mean max probability is "
            f"{100 * mean_max / ceiling:.1f}% of that ceiling."
        )
    return text + (
        f"{head}, above the threshold {SATURATION:g}; its mean max probability is "
        f"{100 * mean_max / ceiling:.1f}% of that ceiling."
    )


def temperature_margin_sentence(
    eps: float, chosen: Group, others: Sequence[Group], seeds: Sequence[int], info: dict[str, Any]
) -> str:
    """The validation-accuracy margins of the chosen temperature over the other temperatures
    of the same teacher (paired by seed), in accuracy and, with ``info["n_val"]``, in labels."""
    n_val = info.get("n_val")
    parts = []
    for other in sorted(others, key=lambda g: float(g.params["temperature"])):
        c, _ = validation_margin(chosen, other, seeds, "val_accuracy")
        if math.isnan(c.mean_delta):
            continue
        tied = round(chosen.mean("val_accuracy") - other.mean("val_accuracy"), 12) == 0
        labels = ""
        if isinstance(n_val, (int, float)) and n_val > 0:
            total = int(n_val) * c.n_seeds
            labels = (
                f"; about {round(abs(c.mean_delta) * total):g} of {total} validation labels "
                f"({int(n_val)} per seed, {c.n_seeds} seeds)"
            )
        if tied:
            rule = (
                "the lower validation NLL"
                if round(chosen.mean("val_nll") - other.mean("val_nll"), 12) != 0
                else "the lower T"
            )
            parts.append(
                f"tied with T={other.params['temperature']:g} on validation accuracy "
                f"({other.mean('val_accuracy'):.4f}); the tie went to {rule}"
            )
        else:
            parts.append(
                f"T={other.params['temperature']:g} had {other.mean('val_accuracy'):.4f}, a "
                f"margin of {format_number_signed(c.mean_delta)} ({format_interval(c, 4)}, "
                f"paired by seed{labels})"
            )
    if not parts:
        return ""
    return (
        f"Temperature choice for the eps={eps:g} teacher's student: "
        f"T={chosen.params['temperature']:g} had the highest mean validation accuracy, "
        f"{chosen.mean('val_accuracy'):.4f}; " + "; ".join(parts) + "."
    )


def format_number_signed(value: float) -> str:
    return f"{value:+.4f}"


def analyse(findings: Findings, groups: Sequence[Group]) -> None:
    teachers = {g.params["teacher_eps"]: g for g in select(groups, EXPERIMENT, TEACHER)}
    students = select(groups, EXPERIMENT, STUDENT)
    if not teachers and not students:
        return
    plain = teachers.get(0.0)
    smoothed_eps = sorted(e for e in teachers if e != 0)
    budget = epochs_trained([*teachers.values(), *students])
    looked = 0
    excluding = 0
    sentences: list[str] = []
    # sentence index -> a function of the study's facts (num_classes, n_val) that rewrites it
    refine: dict[int, Any] = {}

    def compare(
        arm: Group,
        baseline: Group,
        metric: str,
        arm_label: str,
        base_label: str,
        chosen: bool = False,
    ) -> Comparison:
        nonlocal looked, excluding
        setting = (
            arm.setting
            if arm.setting == baseline.setting
            else f"{arm.setting} vs {baseline.setting}"
        )
        comparison = findings.compare(
            EXPERIMENT,
            setting,
            arm,
            baseline,
            metric,
            arm_label=arm_label,
            baseline_label=base_label,
            chosen=chosen,
        )
        if not math.isnan(comparison.ci_low):
            looked += 1
            excluding += bool(comparison.significant)
        return comparison

    # --- teachers
    teacher_rows: list[Row] = []
    teacher_comparisons: dict[float, dict[str, Comparison]] = {}
    for eps in sorted(teachers):
        group = teachers[eps]
        comparisons: dict[str, Comparison | None] = dict.fromkeys(TEACHER_METRICS)
        if plain is not None and group is not plain:
            comparisons = {
                m: compare(group, plain, m, _teacher_label(eps), _teacher_label(0.0))
                for m in TEACHER_METRICS
            }
            teacher_comparisons[eps] = comparisons  # type: ignore[assignment]
        teacher_rows.append(
            Row(
                _teacher_label(eps),
                {
                    m: group.mean(m)
                    for m in (
                        *TEACHER_METRICS,
                        "saturated_fraction",
                        "mean_max_prob",
                        "transfer_accuracy",
                        "val_accuracy",
                        "best_epoch",
                    )
                },
                comparisons,
                note=_diverged_note(group),
            )
        )
    margin_points = f"±{100 * ACCURACY_MARGIN:g} percentage points"
    match_states: dict[float, tuple[bool | None, str]] = {}
    for eps, comparisons in teacher_comparisons.items():
        accuracy = comparisons["accuracy"]
        match_states[eps] = teacher_match(accuracy)
        state = match_states[eps][1]
        if state == "untested":
            matched_words = "whether the teachers' accuracies match cannot be said"
        else:
            span = (
                f"the interval runs from {100 * accuracy.ci_low:+.1f} to "
                f"{100 * accuracy.ci_high:+.1f} percentage points"
            )
            if state == "within margin":
                matched_words = (
                    f"{span}, inside the equivalence margin of {margin_points}, so "
                    "the teachers are matched on accuracy to within that margin"
                )
            elif state == "differ":
                matched_words = (
                    f"{span}, so the teachers' accuracies differ, and a difference between "
                    "their students may come from the accuracy of the targets rather than "
                    "from smoothing as such"
                )
            else:
                matched_words = (
                    f"{span}, beyond the equivalence margin of {margin_points}, so "
                    "a match of the teachers' accuracies is not shown (not detecting a "
                    "difference does not show its absence)"
                )
        sentences.append(
            f"Teacher accuracy: against the teacher without smoothing, the teacher with "
            f"eps={eps:g} {_words(accuracy, 'accuracy')}; {matched_words}."
        )
        sentences.append(
            "Müller et al.'s mutual information (how much the logit difference of classes 0 "
            "and 1 says about which training example was seen, under input noise): against "
            f"the teacher without smoothing, the teacher with eps={eps:g} "
            f"{_words(comparisons['mutual_information'], 'mutual_information')}."
        )
    saturation: dict[str, Any] = {}
    for eps in sorted(teachers):
        group = teachers[eps]
        saturation[f"{eps:g}"] = {
            "saturated_fraction": group.mean("saturated_fraction"),
            "mean_max_prob": group.mean("mean_max_prob"),
            "transfer_accuracy": group.mean("transfer_accuracy"),
        }
        values = saturation[f"{eps:g}"]
        refine[len(sentences)] = lambda info, eps=eps, values=values: saturation_sentence(
            eps, values, info
        )
        sentences.append(saturation_sentence(eps, values, {}))

    # --- students
    hard = next(
        (g for g in students if g.params.get("targets") == "labels" and g.params["eps"] == 0), None
    )
    label_smoothed = [
        g for g in students if g.params.get("targets") == "labels" and g.params["eps"] != 0
    ]
    distilled: dict[float, list[Group]] = {}
    for g in students:
        if g.params.get("targets") == "teacher":
            distilled.setdefault(g.params["eps"], []).append(g)
    chosen: dict[float, Group | None] = {
        eps: choose_temperature(own) for eps, own in sorted(distilled.items())
    }
    student_rows: list[Row] = []
    ordered = (
        ([hard] if hard is not None else [])
        + label_smoothed
        + [
            g
            for eps in sorted(distilled)
            for g in sorted(distilled[eps], key=lambda g: g.params["temperature"])
        ]
    )
    for group in ordered:
        is_chosen = any(group is c for c in chosen.values())
        comparisons = dict.fromkeys(STUDENT_METRICS)
        if hard is not None and group is not hard:
            comparisons = {
                m: compare(
                    group, hard, m, _student_label(group), _student_label(hard), chosen=is_chosen
                )
                for m in STUDENT_METRICS
            }
        notes = ["chosen on validation accuracy"] if is_chosen else []
        if group.diverged:
            notes.append(_diverged_note(group))
        student_rows.append(
            Row(
                _student_label(group),
                {
                    m: group.mean(m)
                    for m in (*STUDENT_METRICS, "val_accuracy", "val_nll", "best_epoch")
                },
                comparisons,
                note="; ".join(notes),
            )
        )
    if hard is not None:
        for group in label_smoothed:
            row = next(r for r in student_rows if r.label == _student_label(group))
            c = row.comparisons["accuracy"]
            sentences.append(
                f"Müller's control: against the student on hard labels, the student trained on "
                f"labels smoothed with eps={group.params['eps']:g} {_words(c, 'accuracy')}."
            )
        for eps, group in chosen.items():
            if group is None:
                continue
            row = next(r for r in student_rows if r.label == _student_label(group))
            sentences.append(
                f"Against the student on hard labels, the student of the eps={eps:g} teacher "
                f"(T={group.params['temperature']:g}, chosen on validation accuracy) "
                f"{_words(row.comparisons['accuracy'], 'accuracy')}."
            )
    for eps, group in chosen.items():
        if group is None:
            continue
        others = [g for g in distilled[eps] if g is not group]
        margin = temperature_margin_sentence(eps, group, others, findings.seeds, {})
        if margin:
            refine[len(sentences)] = lambda info, eps=eps, group=group, others=others: (
                temperature_margin_sentence(eps, group, others, findings.seeds, info)
            )
            sentences.append(margin)

    # --- the question: the smoothed teacher's student against the plain teacher's
    claim_key, claim_sentence = "untested", ""
    matched: bool | None = None
    head_to_head: list[Row] = []
    plain_student = chosen.get(0.0)
    for eps in smoothed_eps:
        smooth_student = chosen.get(eps)
        if smooth_student is None or plain_student is None:
            continue
        arm_label = (
            f"student of the eps={eps:g} teacher (T={smooth_student.params['temperature']:g})"
        )
        base_label = f"student of the eps=0 teacher (T={plain_student.params['temperature']:g})"
        comparisons = {
            m: compare(smooth_student, plain_student, m, arm_label, base_label, True)
            for m in STUDENT_METRICS
        }
        head_to_head.append(
            Row(
                arm_label,
                {m: smooth_student.mean(m) for m in STUDENT_METRICS},
                comparisons,
                note=f"against the {base_label}",
            )
        )
        claim_key, claim_sentence = _claim(
            comparisons["accuracy"], teacher_comparisons.get(eps, {}).get("accuracy")
        )
        matched, match_state = match_states.get(eps, (None, "untested"))
        if claim_key.endswith("_confounded"):
            pass
        elif match_state == "differ":
            claim_sentence += (
                " The two teachers' test accuracies differ, though (their interval excludes 0), "
                "so this comparison mixes smoothing with the accuracy of the teacher; their "
                "agreement with the transfer labels is in the saturation sentences above."
            )
        elif match_state in ("not shown", "untested") and claim_key in (
            "reproduced",
            "contradicted",
        ):
            claim_sentence += (
                " The teachers are not shown to be matched on accuracy (their interval is not "
                f"inside {margin_points}), so part of this difference may come from "
                "the accuracy of the teacher rather than from smoothing as such."
            )
        sentences.append(
            f"At their validation-chosen temperatures, the student of the eps={eps:g} teacher, "
            f"against the student of the plain teacher, "
            f"{_words(comparisons['accuracy'], 'accuracy')} "
            f"and {_words(comparisons['nll'], 'nll')}."
        )
        pair = (smooth_student, plain_student)
        last = sum(len(kept_last_seeds(g)) for g in pair)
        if last and claim_key != "untested":
            budget_words = f" (epoch {budget:g})" if budget is not None else ""
            claim_sentence += (
                f" {last} of {sum(g.n_seeds for g in pair)} runs of these two students kept "
                f"the model of their last epoch{budget_words}, so they may still have been "
                "improving when training stopped."
            )
        sentences.append(claim_sentence)

    # --- the students' gap to their teachers
    gap: dict[str, Any] = {}
    for eps, group in chosen.items():
        teacher = teachers.get(eps)
        if group is None or teacher is None:
            continue
        c = compare(
            group,
            teacher,
            "accuracy",
            f"{_student_label(group)} (chosen)",
            _teacher_label(eps),
        )
        gap[f"{eps:g}"] = c.as_dict()
        last = kept_last_seeds(group)
        if last:
            budget_words = f" of {budget:g}" if budget is not None else ""
            caveat = (
                f"; it kept its last epoch{budget_words} on {len(last)} of {group.n_seeds} "
                "seeds, so it may still have been improving, and this is the gap at this "
                "budget of epochs"
            )
        else:
            caveat = f"; its mean kept epoch was {group.mean('best_epoch'):.1f}"
        sentences.append(
            f"Against its teacher, the student of the eps={eps:g} teacher "
            f"{_words(c, 'accuracy')}. The student is the smaller network, trained on the "
            f"transfer set only{caveat}."
        )

    # --- kept epochs: runs that kept their last epoch may still have been improving
    kept_summary: dict[str, Any] = {}
    for what, own, label in (
        (
            "teachers",
            [teachers[e] for e in sorted(teachers)],
            lambda g: _teacher_label(g.params["teacher_eps"]),
        ),
        ("students", ordered, _student_label),
    ):
        kept_sentence, kept_summary[what] = kept_epoch_sentence(what, own, budget, label)
        if kept_sentence:
            sentences.append(kept_sentence)
    all_runs = sum(v["runs"] for v in kept_summary.values())
    if all_runs and sum(v["kept_last_epoch"] for v in kept_summary.values()) == all_runs:
        sentences.append(
            "Every run of this experiment kept its last epoch; under the 'final' checkpoint "
            "rule (see the methods) that holds by construction and says nothing about "
            "convergence."
        )

    diverged = {
        (
            f"{g.setting}: {_teacher_label(g.params['teacher_eps'])}"
            if g.setting == TEACHER
            else f"{g.setting}: {_student_label(g)}"
        ): len(g.diverged)
        for g in [*teachers.values(), *students]
    }
    total_diverged = sum(diverged.values())
    if total_diverged:
        listed = "; ".join(f"{k}: {v}" for k, v in diverged.items() if v)
        sentences.append(
            f"{total_diverged} run(s) diverged and are left out of their comparisons ({listed})."
        )
    else:
        sentences.append("No run of this experiment diverged.")
    if looked:
        sentences.append(
            f"This experiment looked at {looked} paired intervals, of which {excluding} "
            f"exclude 0; {chance_count(looked)} would exclude 0 by chance alone even if "
            "nothing differed."
        )

    findings.sections[EXPERIMENT] = {
        "teacher_rows": teacher_rows,
        "student_rows": student_rows,
        "head_to_head": head_to_head,
        "sentences": sentences,
        "refine": refine,
        "chosen": chosen,
        "teachers": teachers,
    }
    findings.experiments[EXPERIMENT] = {
        "teachers": {
            f"{eps:g}": {
                **{m: teachers[eps].mean(m) for m in (*TEACHER_METRICS, "val_accuracy")},
                "n_seeds": teachers[eps].n_seeds,
                "diverged": len(teachers[eps].diverged),
            }
            for eps in sorted(teachers)
        },
        "saturation": {
            "threshold": SATURATION,
            "temperature": 1.0,
            # a smoothed teacher's loss is lowest at max probability 1 - eps + eps/K (uniform
            # smoothing), below the threshold for eps >= 2 (1 - SATURATION)
            "target_ceiling": "1 - eps + eps/K (uniform smoothing; 1 for eps=0)",
            **saturation,
        },
        "mutual_information": {
            f"{eps:g}": teachers[eps].mean("mutual_information") for eps in sorted(teachers)
        },
        "chosen_temperatures": {
            f"{eps:g}": {
                "temperature": group.params["temperature"],
                "val_accuracy": group.mean("val_accuracy"),
                "selected_on": "validation",
                # chosen minus each other temperature, paired by seed (validation accuracy)
                "margins": {
                    f"{other.params['temperature']:g}": validation_margin(
                        group, other, findings.seeds, "val_accuracy"
                    )[0].as_dict()
                    for other in distilled[eps]
                    if other is not group
                },
            }
            for eps, group in chosen.items()
            if group is not None
        },
        # "reproduced", "contradicted", "not detected", "untested", or, when the teachers'
        # accuracies differ in the direction of the students' difference,
        # "reproduced_confounded" / "not_reproduced_confounded"
        "muller_claim": claim_key,
        # True only when the teachers' accuracy interval lies inside +-accuracy_margin;
        # None ("not shown") when it includes 0 but reaches beyond the margin
        "teachers_matched_on_accuracy": matched,
        "teacher_accuracy_match": {
            f"{eps:g}": state for eps, (_, state) in sorted(match_states.items())
        },
        "accuracy_margin": ACCURACY_MARGIN,
        "kept_epochs": kept_summary,
        "student_teacher_gap": gap,
        "diverged": diverged,
        "intervals": looked,
        "intervals_excluding_0": excluding,
    }


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _intro(study: dict[str, Any]) -> str:
    info = study.get("settings", {}).get(EXPERIMENT, {})
    config = study.get("config", {})
    temperatures = ", ".join(f"{t:g}" for t in config.get("temperatures", ()))
    teacher_eps = config.get("teacher_eps", "?")
    return (
        f"Data: {info.get('description', '?')}. Per seed, the training part "
        f"(n_train {info.get('n_train', '?')}) is split, stratified, into a teacher set "
        f"(n {info.get('n_teacher', '?')}) and a transfer set (n {info.get('n_transfer', '?')}, "
        f"transfer_fraction {config.get('transfer_fraction', '?')}); n_val "
        f"{info.get('n_val', '?')}, n_test {info.get('n_test', '?')}. Two teachers, the "
        f"study's MLP (width {config.get('width', '?')}, depth {config.get('depth', '?')}, "
        f"Adam lr {config.get('lr', '?')}, batch {config.get('batch_size', '?')}, "
        f"{config.get('epochs', '?')} epochs, the epoch kept chosen on validation by the "
        f"'{config.get('select', 'accuracy')}' rule), are trained on the teacher set with eps=0 "
        "and with "
        f"eps={teacher_eps}. Students, a smaller MLP (depth 1, width "
        f"{config.get('student_width', '?')}, same optimiser, epochs and checkpoint rule), are "
        "trained on the transfer set only: on the hard labels (the reference), on labels "
        f"smoothed with eps={teacher_eps} (Müller et al.'s control), and on each teacher's "
        f"outputs on the transfer set at T = {temperatures} with the loss T² · CE(student/T, "
        "softmax(teacher/T)). Per teacher, the temperature is chosen on the students' mean "
        "validation accuracy (ties: lower validation NLL, then lower T); test data are only "
        "measured. The teachers count as matched on accuracy only when the paired 95% interval "
        f"of their test-accuracy difference lies inside ±{100 * ACCURACY_MARGIN:g} percentage "
        "points (an equivalence margin); otherwise a match is 'not shown'. A run whose kept "
        "model is its last epoch's may still have been improving; the tables give each arm's "
        "mean kept epoch. Note that the hard-label students see the transfer set's true labels, "
        "while the distilled students see only the teacher's outputs on examples the teacher "
        "never saw. Every comparison is paired by seed (same split, initialisation and batch "
        "order) with a Student-t 95% interval. Saturation: the share of transfer examples "
        f"whose teacher max probability exceeds {SATURATION:g} at T=1, said beside each "
        "teacher's target ceiling (the largest entry of its training target, 1 - eps + eps/K "
        "for uniform smoothing, 1 for eps=0: the max probability at which its loss is "
        "lowest). Mutual information "
        "(Müller et al. 2019, Sec. 4, their sample-based estimate): between the index of a "
        f"teacher-set example of classes 0 and 1 (up to {MI_EXAMPLES_PER_CLASS} of each) and "
        "the teacher's logit difference z_0 - z_1 under Gaussian input noise of std "
        f"{config.get('mi_noise_std', '?')} on the standardised features, "
        f"{config.get('mi_draws', '?')} draws per example (the paper used data augmentation); "
        "at most log N nats."
    )


def _forest(found: dict[str, Any]) -> Any:
    from matplotlib.figure import Figure

    from .. import plots

    rows = []
    for row in [*found["student_rows"], *found["head_to_head"]]:
        c = row.comparisons.get("accuracy")
        if c is None or math.isnan(c.mean_delta):
            continue
        label = row.label
        if any(row is r for r in found["head_to_head"]):
            label = f"{row.label}, against the eps=0 teacher's student"
        rows.append((label, 100 * c.mean_delta, 100 * c.ci_low, 100 * c.ci_high))
    if not rows:
        return None
    figure = Figure(figsize=(8.5, 1.6 + 0.4 * len(rows)), layout="constrained")
    ax = figure.subplots()
    plots.paired_difference_plot(
        rows,
        xlabel="Δ test accuracy (percentage points)",
        ax=ax,
        title="Students: paired accuracy differences",
    )
    return figure


def _facts(study: dict[str, Any]) -> dict[str, Any]:
    """The study's facts the sentences need: the number of classes and n_val per seed."""
    info = study.get("settings", {}).get(EXPERIMENT, {})
    return {
        "num_classes": info.get("num_classes", study.get("num_classes")),
        "n_val": info.get("n_val", study.get("n_val")),
    }


def _histogram(found: dict[str, Any], load_arrays: LoadArrays, num_classes: Any = None) -> Any:
    from matplotlib.figure import Figure

    values = {}
    for eps, group in sorted(found["teachers"].items()):
        key = group.first_key()
        if key is None:
            continue
        logits = np.asarray(load_arrays(key)["transfer_logits"], dtype=np.float64)
        logits = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        values[eps] = probs.max(axis=1)
    if not values:
        return None
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    bins = np.linspace(min(v.min() for v in values.values()), 1.0, 31)
    for eps, top in values.items():
        ax.hist(top, bins=bins, alpha=0.55, label=_teacher_label(eps))
    ax.axvline(SATURATION, color="0.3", linestyle="--", linewidth=1)
    for index, eps in enumerate(values):
        ceiling = target_ceiling(eps, num_classes)
        if ceiling is not None and eps != 0:
            ax.axvline(ceiling, color=f"C{index}", linestyle=":", linewidth=1.2)
    ax.set_xlabel("teacher max probability on a transfer example (T=1)")
    ax.set_ylabel("examples")
    ax.legend(loc="upper left")
    return figure


def _logit_differences(found: dict[str, Any], load_arrays: LoadArrays) -> Any:
    from matplotlib.figure import Figure

    panels = []
    for eps, group in sorted(found["teachers"].items()):
        key = group.first_key()
        if key is None:
            continue
        arrays = load_arrays(key)
        if "mi_means" not in arrays:
            continue
        panels.append((eps, np.asarray(arrays["mi_means"]), np.asarray(arrays["mi_labels"])))
    if not panels:
        return None
    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    ax = figure.subplots()
    rng = np.random.default_rng(0)
    for position, (_, means, labels) in enumerate(panels):
        for c, color in zip(MI_CLASSES, ("tab:blue", "tab:orange"), strict=True):
            values = means[labels == c]
            jitter = position + 0.25 * (c - 0.5) + rng.uniform(-0.08, 0.08, len(values))
            ax.scatter(
                jitter,
                values,
                s=9,
                alpha=0.6,
                color=color,
                label=f"class {c}" if position == 0 else None,
            )
    ax.set_xticks(range(len(panels)), [_teacher_label(eps) for eps, _, _ in panels])
    ax.set_ylabel("mean logit difference z_0 - z_1 under input noise")
    ax.legend(loc="best")
    return figure


def section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section | list[Section] | None:
    found = findings.sections.get(EXPERIMENT)
    if found is None:
        return None
    figures = []
    forest = _forest(found)
    if forest is not None:
        figures.append(
            save_figure(
                "distillation_students",
                forest,
                "Students' test accuracy against the student on hard labels, and the smoothed "
                "teacher's student against the plain teacher's (mean paired difference over "
                "seeds, 95% interval; intervals that exclude 0 in colour).",
            )
        )
    facts = _facts(study)
    histogram = _histogram(found, load_arrays, facts["num_classes"])
    if histogram is not None:
        figures.append(
            save_figure(
                "distillation_saturation",
                histogram,
                f"The teachers' max probability on the transfer set at T=1 (first seed); the "
                f"dashed line is the saturation threshold {SATURATION:g}, a dotted line the "
                "smoothed teacher's target ceiling (the largest entry of its training target, "
                "where its loss is lowest).",
            )
        )
    differences = _logit_differences(found, load_arrays)
    if differences is not None:
        figures.append(
            save_figure(
                "distillation_logit_differences",
                differences,
                "Each teacher-set example of classes 0 and 1 (first seed): the teacher's logit "
                "difference z_0 - z_1 averaged over the noise draws of the mutual-information "
                "estimate. The estimate is higher when these means are spread out relative to "
                "the spread each example has under noise.",
            )
        )
    labels = {
        "saturated_fraction": (f"share with max prob > {SATURATION:g}", 3),
        "mean_max_prob": ("mean max prob (transfer)", 3),
        "transfer_accuracy": ("accuracy on transfer set", 3),
        "val_accuracy": ("validation accuracy", 3),
        "val_nll": ("validation NLL", 3),
        "best_epoch": ("kept epoch (mean)", 1),
    }
    tables = [
        Table(
            "Teachers (the eps>0 teacher against the eps=0 teacher)",
            "teacher",
            [
                *TEACHER_METRICS,
                "saturated_fraction",
                "mean_max_prob",
                "transfer_accuracy",
                "best_epoch",
            ],
            found["teacher_rows"],
            labels,
        ),
        Table(
            "Students (against the student on hard labels)",
            "student",
            [*STUDENT_METRICS, "val_accuracy", "val_nll", "best_epoch"],
            found["student_rows"],
            labels,
        ),
    ]
    if found["head_to_head"]:
        tables.append(
            Table(
                "The smoothed teacher's student against the plain teacher's (each at its "
                "validation-chosen temperature)",
                "student",
                list(STUDENT_METRICS),
                found["head_to_head"],
                labels,
            )
        )
    return Section(
        key=EXPERIMENT,
        title="Distillation from a smoothed teacher",
        intro=_intro(study),
        sentences=[
            found["refine"][index](facts) if index in found.get("refine", {}) else text
            for index, text in enumerate(found["sentences"])
        ],
        tables=tables,
        figures=figures,
    )
