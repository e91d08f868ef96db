"""Noisy labels: what to do about them (``noise``), and negative label smoothing (``nls``).

``noise``
    Symmetric noise (a flipped label becomes any *other* class, uniformly) or pair-flip noise
    (class k becomes (k + 1) mod K) at each rate corrupts the training **and** the validation
    labels; the test labels stay clean. Setting = the noise kind (``clean`` for rate 0). Arms
    per (kind, rate): ``ce`` (eps 0; its record holds the early-stopped model and the final
    epoch's ``final_*`` metrics), ``ls`` at each positive eps (uniform style), ``others`` with
    eps = the noise rate (style ``others``: the true label keeps 1 - rate, the others share
    rate, the posterior of symmetric noise) and ``forward``: forward loss correction with the
    known transition matrix (Patrini et al. 2017, :func:`forward_corrected_cross_entropy`).
    ``others`` and ``forward`` use the true noise model (an oracle a practitioner lacks): they
    are reported as such and never the validation choice (:func:`choose_arm`).

``nls``
    Generalised (negative) label smoothing as Wei et al. (2022) train it: a CE warm-up kept at
    its best (noisy) validation epoch, then fine-tuning from that checkpoint at each eps < 0
    with a small learning rate (``nls_lr``, ``nls_epochs``), kept at the best (noisy) validation
    epoch, beside a control fine-tune with eps = 0 under the identical schedule. The warm-up is a
    run of its own whose arrays carry the checkpoint; the fine-tunes depend on it.

Every choice (the kept epoch, the temperature, the arm, the eps) is made on the noisy validation
labels; the clean test labels are only measured. Every comparison is paired by seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..functional import cross_entropy
from .config import StudyConfig
from .data import Split
from .experiments import (
    Plan,
    Run,
    RunContext,
    SeedData,
    measure_classifier,
    seed_data,
    split_sizes,
    symmetric_noise,
)
from .findings import Findings, Group, Row, _words, chance_count, choose, select
from .models import MLP
from .outputs import Arrays, Metrics
from .sections import LoadArrays, SaveFigure, Section, Table
from .stats import Comparison
from .train import (
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    predict_logits,
    train_classifier,
)

NOISE_ARMS = ("ce", "ls", "others", "forward")
NLS_ARMS = ("warmup", "finetune")
PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("noise", "*"): {"rate": (), "arm": NOISE_ARMS, "eps": ()},
    ("nls", "*"): {"rate": (), "arm": NLS_ARMS, "eps": ()},
}
# The metrics every arm is compared on (test, clean labels); ts_nll: after temperature scaling
NOISE_METRICS = ("accuracy", "nll", "ts_nll")
NLS_METRICS = ("accuracy", "nll", "ts_nll", "logit_norm")
EXTRA_LABELS = {
    "ts_nll": ("NLL after TS", 3),
    "val_accuracy": ("validation accuracy (labels noisy as in training)", 3),
    "best_epoch": ("kept epoch", 1),
    "final_accuracy": ("accuracy", 3),
    "final_nll": ("NLL", 3),
    "max_abs_logit": ("max |logit| (kept)", 1),
    "final_max_abs_logit": ("max |logit| (final epoch)", 1),
    "final_logit_norm": ("mean logit norm (final epoch)", 2),
    "start_logit_norm": ("mean logit norm of the warm-up", 2),
}
KIND_WORDS = {
    "clean": "clean labels (rate 0)",
    "symmetric": "symmetric noise",
    "pairflip": "pair-flip noise",
}
# seeds of the noise draws: training labels 1000 + seed, validation labels 2000 + seed
TRAIN_NOISE_SEED, VAL_NOISE_SEED = 1000, 2000


# ----------------------------------------------------------------------------------------------
# Noise models and forward correction
# ----------------------------------------------------------------------------------------------


def pairflip_noise(labels: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """Each label k becomes (k + 1) mod K with probability ``rate``."""
    generator = torch.Generator().manual_seed(seed)
    flip = torch.rand(labels.shape, generator=generator) < rate
    return torch.where(flip, (labels + 1) % num_classes, labels)


def corrupt(kind: str, labels: Tensor, rate: float, num_classes: int, seed: int) -> Tensor:
    """``labels`` under noise of ``kind`` (symmetric, pairflip) at ``rate``; rate 0: a copy."""
    if rate == 0:
        return labels.clone()
    if kind == "symmetric":
        return symmetric_noise(labels, rate, num_classes, seed)
    if kind == "pairflip":
        return pairflip_noise(labels, rate, num_classes, seed)
    raise ValueError(f"unknown noise kind {kind!r}; choose symmetric or pairflip")


def rate_limit(kind: str, num_classes: int) -> float:
    """The rate from which a wrong label is at least as likely as the true one."""
    return 0.5 if kind == "pairflip" else (num_classes - 1) / num_classes


def transition_matrix(kind: str, rate: float, num_classes: int) -> Tensor:
    """T[i, j] = P(noisy label j | clean label i), float64, for noise of ``kind`` at ``rate``.

    Example:
        >>> transition_matrix("pairflip", 0.2, 3)
        tensor([[0.8000, 0.2000, 0.0000],
                [0.0000, 0.8000, 0.2000],
                [0.2000, 0.0000, 0.8000]], dtype=torch.float64)
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    eye = torch.eye(num_classes, dtype=torch.float64)
    if kind == "symmetric":
        off = torch.full_like(eye, rate / (num_classes - 1))
        return torch.where(eye.bool(), 1 - rate, off)
    if kind == "pairflip":
        return (1 - rate) * eye + rate * torch.roll(eye, shifts=1, dims=1)
    raise ValueError(f"unknown noise kind {kind!r}; choose symmetric or pairflip")


def forward_corrected_cross_entropy(logits: Tensor, target: Tensor, transition: Tensor) -> Tensor:
    """Forward loss correction (Patrini et al. 2017): the mean of -log (softmax(z) T)[y].

    ``softmax(logits)`` models the clean label; ``transition[i, j]`` = P(noisy j | clean i);
    ``target`` holds the noisy class indices. Computed in log space (a log-sum-exp over the
    clean class), so zeros in ``transition`` are exact. At T = I it is plain cross-entropy.
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {tuple(logits.shape)}")
    k = logits.shape[-1]
    if tuple(transition.shape) != (k, k):
        raise ValueError(f"transition must be ({k}, {k}), got {tuple(transition.shape)}")
    if bool((transition < 0).any()) or not torch.allclose(
        transition.sum(-1).double(), torch.ones(k, dtype=torch.float64), atol=1e-6
    ):
        raise ValueError("transition must be non-negative with rows summing to 1")
    log_probs = torch.log_softmax(logits, dim=-1)
    log_t = torch.log(transition.to(device=logits.device, dtype=log_probs.dtype))
    log_noisy = torch.logsumexp(log_probs.unsqueeze(-1) + log_t, dim=-2)  # (N, K): log p(noisy j)
    return -log_noisy.gather(-1, target.long().unsqueeze(-1)).squeeze(-1).mean()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _noisy(
    data: Split, config: StudyConfig, kind: str, rate: float, seed: int
) -> tuple[SeedData, Tensor, Tensor]:
    """One seed's split with noisy training and validation labels (the test stays clean)."""
    part = seed_data(data, config, seed)
    k = data.num_classes
    y_train = corrupt(kind, part.train.y_train, rate, k, TRAIN_NOISE_SEED + seed)
    y_val = corrupt(kind, part.y_val, rate, k, VAL_NOISE_SEED + seed)
    return part, y_train, y_val


def _norms(logits: Tensor) -> tuple[float, float]:
    """(mean L2 norm of the logit vectors, max |logit|)."""
    logits = logits.double()
    return float(logits.norm(dim=-1).mean()), float(logits.abs().max())


def _finite_logits(model: torch.nn.Module, x: Tensor, device: str) -> Tensor:
    logits = predict_logits(model, x.to(device)).cpu()
    if not bool(torch.isfinite(logits).all()):
        raise TrainingDivergedError("non-finite test logits")
    return logits


def train_mlp(
    part: SeedData,
    config: StudyConfig,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    seed: int,
    y_train: Tensor,
    y_val: Tensor,
    *,
    epochs: int,
    lr: float,
    state: dict[str, Tensor] | None = None,
) -> tuple[TrainResult, list[float]]:
    """Trains the study's MLP (from ``state`` when given) on the noisy labels, keeping the best
    epoch on the noisy validation labels (``config.select``): (result, validation mean logit
    norm after each epoch). Built as :func:`~labelsmooth.study.experiments._fit` builds it, so a
    CE warm-up is the noise experiment's ``ce`` run of the same seed."""
    device = torch.device(config.device)
    torch.manual_seed(seed)
    split = part.train
    model = MLP(split.num_features, split.num_classes, width=config.width, depth=config.depth)
    model = model.to(device)
    if state is not None:
        model.load_state_dict(state)
    x_val = part.x_val.to(device)
    norms: list[float] = []

    def track(epoch: int) -> None:
        norms.append(_norms(predict_logits(model, x_val).cpu())[0])

    result = train_classifier(
        model,
        loss_fn,
        split.x_train.to(device),
        y_train.to(device),
        TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=lr, seed=seed),
        validation=(x_val, y_val.to(device)),
        select=config.select,
        on_epoch_end=track,
    )
    return result, norms


def _measure(
    result: TrainResult,
    part: SeedData,
    config: StudyConfig,
    y_val: Tensor,
    *,
    eps: float | None = None,
    style: str = "uniform",
) -> Metrics:
    """measure_classifier's metrics plus the logit norms of the kept and the final model."""
    metrics, test_logits, _ = measure_classifier(
        result, part, config, y_val=y_val, eps=eps, style=style
    )
    metrics["logit_norm"], metrics["max_abs_logit"] = _norms(test_logits)
    final = test_logits
    if result.best_epoch != result.epochs:
        final = _finite_logits(result.final_model(), part.x_test, config.device)
    metrics["final_logit_norm"], metrics["final_max_abs_logit"] = _norms(final)
    return metrics


def _arm_loss(
    arm: str, eps: float, kind: str, rate: float, num_classes: int
) -> tuple[Callable[[Tensor, Tensor], Tensor], float | None, str]:
    """(loss, eps for the metrics, style) of a noise arm."""
    if arm == "forward":
        transition = transition_matrix(kind, rate, num_classes).float()
        return (lambda z, y: forward_corrected_cross_entropy(z, y, transition)), None, "uniform"
    style = "others" if arm == "others" else "uniform"
    return (lambda z, y: cross_entropy(z, y, eps, style=style)), eps, style


def _cells(
    data: Split, config: StudyConfig, rates: Sequence[float], plan: Plan, experiment: str
) -> list[tuple[str, str, float]]:
    """(setting, noise kind, rate) of every cell: ``clean`` once for rate 0, then each kind at
    each possible rate; impossible rates get a plan note."""
    cells: list[tuple[str, str, float]] = []
    if any(rate == 0 for rate in rates):
        cells.append(("clean", "symmetric", 0.0))
    k = data.num_classes
    for kind in config.noise_kinds:
        limit = rate_limit(kind, k)
        skipped = [rate for rate in rates if rate >= limit]
        if skipped:
            why = (
                "the wrong label k+1 would be at least as likely as the true one"
                if kind == "pairflip"
                else f"with {k} classes a wrong label would be at least as likely as the true one"
            )
            plan.notes.append(
                f"{experiment}: {KIND_WORDS[kind]} at rate "
                f"{', '.join(f'{r:g}' for r in skipped)} skipped ({why}; rates must be below "
                f"{limit:.3g})."
            )
        cells += [(kind, kind, rate) for rate in rates if 0 < rate < limit]
    return cells


def _describe_setting(
    plan: Plan, experiment: str, setting: str, data: Split, config: StudyConfig
) -> None:
    plan.settings.setdefault(
        f"{experiment}:{setting}",
        {
            "description": f"{data.name}, {KIND_WORDS[setting]} on training and validation "
            "labels, clean test labels",
            "num_classes": data.num_classes,
            **split_sizes(data, config),
        },
    )


def build_noise(data: Split, config: StudyConfig, plan: Plan) -> None:
    """Every (kind, rate, arm, seed) of the noise experiment."""
    k = data.num_classes
    for setting, kind, rate in _cells(data, config, config.noise_rates, plan, "noise"):
        _describe_setting(plan, "noise", setting, data, config)
        arms: list[tuple[str, float]] = [("ce", 0.0)]
        arms += [("ls", eps) for eps in config.noise_eps]
        if rate > 0:
            if rate <= (k - 1) / k:
                arms.append(("others", rate))
            arms.append(("forward", 0.0))
        for arm, eps in arms:
            for seed in config.seeds:

                def execute(
                    _: RunContext,
                    kind: str = kind,
                    rate: float = rate,
                    arm: str = arm,
                    eps: float = eps,
                    seed: int = seed,
                ) -> tuple[Metrics, Arrays | None]:
                    part, y_train, y_val = _noisy(data, config, kind, rate, seed)
                    loss_fn, metric_eps, style = _arm_loss(arm, eps, kind, rate, k)
                    result, _ = train_mlp(
                        part, config, loss_fn, seed, y_train, y_val,
                        epochs=config.epochs, lr=config.lr,
                    )  # fmt: skip
                    metrics = _measure(result, part, config, y_val, eps=metric_eps, style=style)
                    metrics["flipped"] = float((y_train != part.train.y_train).double().mean())
                    metrics["val_flipped"] = float((y_val != part.y_val).double().mean())
                    return metrics, None

                plan.runs.append(
                    Run(
                        key=f"noise|{setting}|{rate:g}|{arm}|{eps:g}|{seed}",
                        experiment="noise",
                        setting=setting,
                        params={"rate": rate, "arm": arm, "eps": eps},
                        seed=seed,
                        execute=execute,
                        cost=len(data.x_train) * config.epochs,
                    )
                )


def _state_arrays(model: torch.nn.Module) -> Arrays:
    return {f"state.{name}": t.detach().cpu().numpy() for name, t in model.state_dict().items()}


def _state_from(arrays: Any) -> dict[str, Tensor]:
    return {
        name.removeprefix("state."): torch.from_numpy(np.array(arrays[name]))
        for name in list(arrays.keys())
        if name.startswith("state.")
    }


def warmup_key(setting: str, rate: float, seed: int) -> str:
    return f"nls|{setting}|{rate:g}|warmup|0|{seed}"


def build_nls(data: Split, config: StudyConfig, plan: Plan) -> None:
    """Per (kind, rate) and seed: a CE warm-up, then a fine-tune at eps = 0 and at each
    ``nls_eps`` from its checkpoint."""
    first = config.seeds[0]
    for setting, kind, rate in _cells(data, config, config.nls_noise_rates, plan, "nls"):
        _describe_setting(plan, "nls", setting, data, config)
        for seed in config.seeds:

            def warmup(
                _: RunContext, kind: str = kind, rate: float = rate, seed: int = seed
            ) -> tuple[Metrics, Arrays | None]:
                part, y_train, y_val = _noisy(data, config, kind, rate, seed)
                result, norms = train_mlp(
                    part, config, lambda z, y: cross_entropy(z, y, 0.0), seed, y_train, y_val,
                    epochs=config.epochs, lr=config.lr,
                )  # fmt: skip
                metrics = _measure(result, part, config, y_val)
                metrics["flipped"] = float((y_train != part.train.y_train).double().mean())
                arrays = _state_arrays(result.model)
                if seed == first:
                    arrays["val_logit_norm"] = np.array(norms)
                    arrays["val_accuracy"] = np.array([h["accuracy"] for h in result.history])
                return metrics, arrays

            key = warmup_key(setting, rate, seed)
            plan.runs.append(
                Run(
                    key=key,
                    experiment="nls",
                    setting=setting,
                    params={"rate": rate, "arm": "warmup", "eps": 0.0},
                    seed=seed,
                    execute=warmup,
                    cost=len(data.x_train) * config.epochs,
                )
            )
            for eps in (0.0, *config.nls_eps):

                def finetune(
                    context: RunContext,
                    kind: str = kind,
                    rate: float = rate,
                    seed: int = seed,
                    eps: float = eps,
                    key: str = key,
                ) -> tuple[Metrics, Arrays | None]:
                    part, y_train, y_val = _noisy(data, config, kind, rate, seed)
                    state = _state_from(context.load_arrays(key))
                    start = MLP(
                        part.train.num_features,
                        part.train.num_classes,
                        width=config.width,
                        depth=config.depth,
                    ).to(config.device)
                    start.load_state_dict(state)
                    start_val = _norms(predict_logits(start, part.x_val.to(config.device)))[0]
                    start_test = _norms(_finite_logits(start, part.x_test, config.device))[0]
                    result, norms = train_mlp(
                        part, config, lambda z, y: cross_entropy(z, y, eps), seed, y_train,
                        y_val, epochs=config.nls_epochs, lr=config.nls_lr, state=state,
                    )  # fmt: skip
                    metrics = _measure(result, part, config, y_val, eps=eps)
                    metrics["start_logit_norm"] = start_test
                    metrics["logit_norm_change"] = metrics["logit_norm"] - start_test
                    arrays = None
                    if seed == first:
                        arrays = {
                            "val_logit_norm": np.array([start_val, *norms]),
                            "val_accuracy": np.array([h["accuracy"] for h in result.history]),
                        }
                    return metrics, arrays

                plan.runs.append(
                    Run(
                        key=f"nls|{setting}|{rate:g}|finetune|{eps:g}|{seed}",
                        experiment="nls",
                        setting=setting,
                        params={"rate": rate, "arm": "finetune", "eps": eps},
                        seed=seed,
                        execute=finetune,
                        depends_on=(key,),
                        cost=len(data.x_train) * config.nls_epochs,
                    )
                )


build = build_noise


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------


def noise_label(params: dict[str, Any], setting: str = "symmetric") -> str:
    """An arm's label; in pair-flip cells the 'others' arm knows the rate but not the noise
    model ('others' is the posterior of symmetric noise)."""
    arm, eps = params.get("arm"), params.get("eps", 0.0)
    if arm == "ce":
        return "ce (eps=0)"
    if arm == "ls":
        return f"LS eps={eps:g} (uniform)"
    if arm == "others" and setting == "pairflip":
        return (
            f"LS eps={eps:g} (others; known rate, mismatched noise model: eps = the known "
            "pair-flip rate, but 'others' is the posterior of symmetric noise)"
        )
    if arm == "others":
        return f"LS eps={eps:g} (others; oracle noise model: eps = the known noise rate)"
    if arm == "forward":
        return "forward correction (oracle noise model: known T)"
    return str(arm)


def _arm_label(group: Group) -> str:
    return noise_label(group.params, group.setting)


def nls_label(params: dict[str, Any]) -> str:
    if params.get("arm") == "warmup":
        return "CE warm-up (early-stopped)"
    eps = params.get("eps", 0.0)
    return "fine-tune eps=0 (control)" if eps == 0 else f"NLS fine-tune eps={eps:g}"


def _diverged(group: Group) -> str:
    total = group.n_seeds + len(group.diverged)
    return f"{len(group.diverged)} of {total} seeds diverged" if group.diverged else ""


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _cell_keys(groups: Sequence[Group]) -> list[tuple[str, float]]:
    order = {"clean": 0, "symmetric": 1, "pairflip": 2}
    keys = {(g.setting, float(g.params["rate"])) for g in groups}
    return sorted(keys, key=lambda key: (order.get(key[0], 9), key[0], key[1]))


def _val(rate: float) -> str:
    return "validation labels" if rate == 0 else "noisy validation labels"


def _where(setting: str, rate: float) -> str:
    return KIND_WORDS["clean"] if setting == "clean" else f"{KIND_WORDS[setting]} at rate {rate:g}"


def _divergence_sentence(where: str, groups: Sequence[Group], label: Callable) -> str:
    parts = [f"{label(g.params)}: {_diverged(g)}" for g in groups if g.diverged]
    if not parts:
        return f"{where}: no run diverged."
    return (
        f"{where}: diverged runs (non-finite loss or outputs; left out of every mean and "
        f"interval) — {'; '.join(parts)}."
    )


def _analyse_nls(findings: Findings, groups: Sequence[Group]) -> None:
    runs = select(groups, "nls")
    if not runs:
        return
    cells: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for setting, rate in _cell_keys(runs):
        here = [g for g in runs if g.setting == setting and float(g.params["rate"]) == rate]
        warm = next((g for g in here if g.params["arm"] == "warmup"), None)
        tunes = sorted(
            (g for g in here if g.params["arm"] == "finetune"),
            key=lambda g: -float(g.params["eps"]),
        )
        control = next((g for g in tunes if g.params["eps"] == 0), None)
        negatives = [g for g in tunes if g.params["eps"] < 0]
        if warm is None:
            continue
        where = _where(setting, rate)
        name = f"{setting}, rate {rate:g}"

        def compare(
            arm: Group, base: Group, metric: str, chosen: bool = False, name: str = name
        ) -> Comparison:
            return findings.compare(
                "nls", name, arm, base, metric, arm_label=nls_label(arm.params),
                baseline_label=nls_label(base.params), chosen=chosen,
            )  # fmt: skip

        before = len(findings.comparisons)
        vs_warm = {id(g): {m: compare(g, warm, m) for m in NLS_METRICS} for g in tunes}
        vs_control = (
            {id(g): {m: compare(g, control, m) for m in NLS_METRICS} for g in negatives}
            if control is not None
            else {}
        )
        # Wei et al. train the fine-tune for a fixed schedule: its last epoch, against the
        # control's last epoch, beside the kept (best validation) epochs
        for g in negatives if control is not None else []:
            for m in ("accuracy", "nll"):
                vs_control[id(g)][f"final_{m}"] = findings.compare(
                    "nls", name, g, control, m, arm_metric=f"final_{m}",
                    baseline_metric=f"final_{m}",
                    arm_label=f"{nls_label(g.params)} (last fine-tune epoch)",
                    baseline_label=f"{nls_label(control.params)} (last fine-tune epoch)",
                )  # fmt: skip
        chosen = choose_eps(negatives)
        chosen_vs = (
            {m: compare(chosen, control, m, chosen=True) for m in NLS_METRICS}
            if chosen is not None and control is not None
            else None
        )
        # negative eps whose kept models coincide with a smaller |eps|'s (every kept-model
        # metric equal to 1e-9 relative on every seed) are one piece of evidence: their
        # kept-model intervals are counted once (their last-epoch intervals still count).
        # Same kept epoch and accuracies but a different NLL: near-identical, each counted.
        same: list[tuple[Group, Group]] = []
        near: list[tuple[Group, Group]] = []
        for index, g in enumerate(negatives):
            twin = next((h for h in negatives[:index] if coincide(g, h, findings.seeds)), None)
            if twin is not None:
                same.append((g, twin))
                continue
            close = next(
                (h for h in negatives[:index] if near_identical(g, h, findings.seeds)), None
            )
            if close is not None:
                near.append((g, close))
        # the validation choice repeats its own arm's intervals: counted once
        repeated = list(chosen_vs.values()) if chosen_vs is not None else []
        for g, _ in same:
            repeated += list(vs_warm[id(g)].values())
            repeated += [vs_control.get(id(g), {}).get(m) for m in NLS_METRICS]
        repeated = [c for c in repeated if c is not None]
        intervals = len(findings.comparisons) - before - len(repeated)
        significant = sum(1 for c in findings.comparisons[before:] if c["significant"]) - sum(
            1 for c in repeated if c.significant
        )
        facts = None if chosen is None else choice_facts(chosen, negatives)
        # the same models elsewhere: noise's ce (same kind, rate, seed) and, on clean labels,
        # the sweep's eps = 0 baseline; said only when every seed's results agree
        twins = [
            "the noise experiment's ce runs" if g.experiment == "noise"
            else f"the sweep's eps = 0 baseline ({g.setting})"
            for g in groups
            if (
                (g.experiment == "noise" and g.setting == setting and g.params.get("arm") == "ce"
                 and float(g.params.get("rate", -1)) == rate)
                or (setting == "clean" and g.experiment == "sweep"
                    and float(g.params.get("eps", -1)) == 0)
            )
            and coincide(warm, g, findings.seeds)
        ]  # fmt: skip

        values = ("accuracy", "nll", "ts_nll", "logit_norm", "max_abs_logit", "final_accuracy",
                  "final_max_abs_logit", "val_accuracy", "best_epoch")  # fmt: skip
        rows_control = [
            Row(nls_label(g.params), {m: g.mean(m) for m in values},
                vs_control.get(id(g), dict.fromkeys(NLS_METRICS)), _diverged(g))
            for g in tunes
        ]  # fmt: skip
        rows_warm = [
            Row(nls_label(warm.params), {m: warm.mean(m) for m in values},
                dict.fromkeys(NLS_METRICS), _diverged(warm)),
            *(
                Row(nls_label(g.params), {m: g.mean(m) for m in values}, vs_warm[id(g)],
                    _diverged(g))
                for g in tunes
            ),
        ]  # fmt: skip

        sentences = [_divergence_sentence(where, [warm, *tunes], nls_label)]
        if control is not None:
            c = vs_warm[id(control)]
            sentences.append(
                f"{where}: the eps=0 fine-tune (the control: same schedule, no smoothing), "
                f"against the warm-up it starts from, {_words(c['accuracy'], 'accuracy')}, "
                f"{_words(c['nll'], 'nll')} and {_words(c['logit_norm'], 'logit_norm')}."
            )
        for g in negatives:
            parts = []
            if id(g) in vs_control:
                c = vs_control[id(g)]
                parts.append(
                    f"against the eps=0 fine-tune it {_words(c['accuracy'], 'accuracy')}, "
                    f"{_words(c['nll'], 'nll')}, after temperature scaling "
                    f"{_words(c['ts_nll'], 'ts_nll')}, and {_words(c['logit_norm'], 'logit_norm')}"
                    f"; at the last fine-tune epoch (against the control's last epoch) it "
                    f"{_words(c['final_accuracy'], 'accuracy')} and "
                    f"{_words(c['final_nll'], 'nll')}"
                )
            w = vs_warm[id(g)]
            parts.append(
                f"against the warm-up it {_words(w['accuracy'], 'accuracy')} and "
                f"{_words(w['logit_norm'], 'logit_norm')}"
            )
            sentences.append(
                f"{where}, {nls_label(g.params)}: " + "; ".join(parts) + f" (max |logit| on "
                f"test: {g.mean('max_abs_logit'):.3g} kept, {g.mean('final_max_abs_logit'):.3g} "
                f"at the last fine-tune epoch, {warm.mean('max_abs_logit'):.3g} for the warm-up; "
                "means over seeds)."
            )
        if same:
            sentences.append(
                f"{where}: "
                + "; ".join(
                    f"{nls_label(g.params)} gave the same kept models as {nls_label(t.params)}"
                    for g, t in same
                )
                + " (same kept fine-tune epoch, and the same validation and test accuracy, "
                "test NLL, NLL after temperature scaling and logit norms to 1e-9 relative, on "
                "every seed): one piece of evidence, so their intervals against the warm-up "
                "and the control are counted once."
            )
        if near:
            sentences.append(
                f"{where}: "
                + "; ".join(
                    f"{nls_label(g.params)} kept the same fine-tune epoch as "
                    f"{nls_label(t.params)} with identical validation and test accuracy on "
                    f"every seed, but test NLL up to {_max_gap(g, t, 'nll', findings.seeds):.2g}"
                    " apart on a seed"
                    for g, t in near
                )
                + ": near-identical, not the same models, so each one's intervals are counted."
            )
        if chosen is not None and facts is not None:
            text = (
                f"{where}: validation accuracy on the {_val(rate)} chose "
                f"eps={chosen.params['eps']:g} among the negative eps "
                f"({chosen.mean('val_accuracy'):.4f})"
            )
            if facts["tied"]:
                text += (
                    "; tied exactly with "
                    + ", ".join(f"eps={g.params['eps']:g}" for g in facts["tied"])
                    + ", settled by the tie rule (the eps closest to 0)"
                )
            elif facts["runner"] is not None and not math.isnan(facts["margin"]):
                text += (
                    f"; margin over eps={facts['runner'].params['eps']:g}: "
                    f"{facts['margin']:.4f} in mean validation accuracy"
                )
            if control is not None:
                c_val = control.mean("val_accuracy")
                if _tie_key(control) > _tie_key(chosen):
                    text += (
                        f"; the eps=0 control had the higher mean validation accuracy "
                        f"({c_val:.4f}), so on validation no negative eps was preferred to "
                        "eps = 0"
                    )
                elif _tie_key(control) == _tie_key(chosen):
                    text += "; the eps=0 control had the same mean validation accuracy"
            if chosen_vs is not None:
                text += (
                    f"; against the eps=0 fine-tune it {_words(chosen_vs['accuracy'], 'accuracy')}"
                    f", {_words(chosen_vs['nll'], 'nll')} and after temperature scaling "
                    f"{_words(chosen_vs['ts_nll'], 'ts_nll')}"
                )
            sentences.append(text + ".")
        kept = [e for g in tunes for e in g.values("best_epoch", findings.seeds) if e is not None]
        first_kept = sum(1 for e in kept if e <= 1)
        if tunes:
            sentences.append(
                f"{where}: kept fine-tune epoch (mean over seeds): "
                + ", ".join(f"{nls_label(g.params)} {g.mean('best_epoch'):.1f}" for g in tunes)
                + f"; {first_kept} of {len(kept)} fine-tuned models kept the first fine-tune "
                "epoch."
            )
        if twins:
            sentences.append(
                f"{where}: the CE warm-ups are the same models as {' and '.join(twins)} (same "
                "seeds, identical per-seed test accuracy, NLL, validation accuracy and kept "
                "epoch); the warm-up's own metrics are not new evidence."
            )
        sentences.append(
            f"{where}: {intervals} distinct intervals here, {significant} excluding 0; "
            f"{chance_count(intervals)} would exclude 0 by chance alone if nothing differed."
        )
        cells.append(
            {
                "setting": setting,
                "rate": rate,
                "where": where,
                "warmup": warm,
                "control": control,
                "tunes": tunes,
                "chosen": chosen,
                "chosen_vs": chosen_vs,
                "facts": facts,
                "negatives": negatives,
                "twins": twins,
                "first_kept": first_kept,
                "tuned_models": len(kept),
                "vs_control": vs_control,
                "vs_warm": vs_warm,
                "rows_control": rows_control,
                "rows_warm": rows_warm,
                "sentences": sentences,
                "intervals": intervals,
                "significant": significant,
            }
        )
        summary.append(
            {
                "setting": setting,
                "rate": rate,
                "chosen_eps": None if chosen is None else chosen.params["eps"],
                "chosen_tied_with": []
                if facts is None
                else [g.params["eps"] for g in facts["tied"]],
                "control_val_accuracy_higher": None
                if chosen is None or control is None
                else _tie_key(control) > _tie_key(chosen),
                "coinciding_eps": [[g.params["eps"], twin.params["eps"]] for g, twin in same],
                "near_identical_eps": [[g.params["eps"], t.params["eps"]] for g, t in near],
                "warmup_same_models_as": twins,
                "chosen_on": f"val_accuracy ({_val(rate)})",
                "selected_on": "validation",
                "chosen_vs_control": None
                if chosen_vs is None
                else {m: c.as_dict() for m, c in chosen_vs.items()},
                "diverged": {nls_label(g.params): len(g.diverged) for g in [warm, *tunes]},
                "logit_norm": {
                    nls_label(g.params): _finite_or_none(g.mean("logit_norm"))
                    for g in [warm, *tunes]
                },
                "intervals": intervals,
                "significant": significant,
            }
        )
    findings.sections["nls"] = {"cells": cells}
    findings.experiments["nls"] = {"cells": summary, "selected_on": "validation"}


def _tie_key(group: Group, metric: str = "val_accuracy") -> float:
    """The mean as :func:`~labelsmooth.study.findings.choose` compares it (12 decimals)."""
    return round(group.mean(metric), 12)


def choice_facts(chosen: Group, pool: Sequence[Group]) -> dict[str, Any]:
    """What decided a validation choice among ``pool`` on mean validation accuracy: the groups
    tied exactly with ``chosen`` (settled by the tie rule), the next group below it and the
    margin (chosen's mean minus the next one's; nan when every group tied)."""
    tied = [g for g in pool if g is not chosen and _tie_key(g) == _tie_key(chosen)]
    rest = [
        g for g in pool
        if g is not chosen and all(g is not t for t in tied)
        and not math.isnan(g.mean("val_accuracy"))
    ]  # fmt: skip
    runner = max(rest, key=lambda g: g.mean("val_accuracy"), default=None)
    margin = (
        math.nan if runner is None else chosen.mean("val_accuracy") - runner.mean("val_accuracy")
    )
    return {"tied": tied, "runner": runner, "margin": margin, "n_seeds": chosen.n_seeds}


def _margin_words(margin: float, n_seeds: int, n_val: Any) -> str:
    """A margin in mean validation accuracy, also as a count of validation labels over all
    seeds when n_val is known (margin x n_val x seeds)."""
    text = f"{margin:.4f} in mean validation accuracy"
    if isinstance(n_val, int) and n_val > 0 and n_seeds > 0:
        labels = margin * n_val * n_seeds
        text += f" ({labels:.0f} of {n_val * n_seeds} validation labels over {n_seeds} seeds)"
    return text


# the kept model's metrics two arms must share, seed by seed, to be the same models; the
# first four are required, the rest compared wherever both groups recorded them
KEPT_METRICS = ("best_epoch", "accuracy", "val_accuracy", "nll", "ts_nll", "logit_norm",
                "max_abs_logit")  # fmt: skip
REQUIRED_KEPT = KEPT_METRICS[:4]


def _same(x: float | None, y: float | None, rtol: float) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return abs(x - y) <= rtol * max(abs(x), abs(y), 1e-300)


def coincide(
    a: Group, b: Group, seeds: Sequence[int], rtol: float = 1e-9,
    metrics: Sequence[str] = KEPT_METRICS,
) -> bool:  # fmt: skip
    """True when the kept models of ``a`` and ``b`` give the same results on every seed: the
    same seeds finished and every metric of ``metrics`` (kept epoch, validation and test
    accuracy, test NLL, NLL after TS, logit norms; an optional one only where both recorded
    it) equal within ``rtol`` (relative). Such arms are one piece of evidence, not two."""
    if sorted(a.metrics) != sorted(b.metrics) or not a.metrics:
        return False
    for metric in metrics:
        xs, ys = a.values(metric, seeds), b.values(metric, seeds)
        missing = all(x is None for x in xs) or all(y is None for y in ys)
        if missing and metric not in REQUIRED_KEPT:
            continue
        if not all(_same(x, y, rtol) for x, y in zip(xs, ys, strict=True)):
            return False
    return True


def near_identical(a: Group, b: Group, seeds: Sequence[int]) -> bool:
    """Same kept epoch and identical validation and test accuracy on every seed, but not
    :func:`coincide` (the NLL or the logits differ): different models, each counted."""
    return coincide(a, b, seeds, rtol=1e-12, metrics=REQUIRED_KEPT[:3]) and not coincide(
        a, b, seeds
    )


def _max_gap(a: Group, b: Group, metric: str, seeds: Sequence[int]) -> float:
    return max(
        (abs(x - y) for x, y in zip(a.values(metric, seeds), b.values(metric, seeds),
                                    strict=True)
         if x is not None and y is not None),
        default=0.0,
    )  # fmt: skip


def choose_eps(negatives: Sequence[Group]) -> Group | None:
    """The negative eps with the highest mean validation accuracy (noisy labels); ties go to the
    eps closest to 0. Seeds that diverged count against a group (complete groups first)."""
    return choose(negatives, "val_accuracy", higher=True, prefer=lambda g: abs(g.params["eps"]))


# arms that use the true noise model (rate or transition matrix): not available to a
# practitioner, so reported as oracles and never the validation choice
ORACLE_ARMS = ("others", "forward")


def is_oracle(group: Group) -> bool:
    return group.params.get("arm") in ORACLE_ARMS


def choose_arm(arms: Sequence[Group]) -> Group | None:
    """Among the arms a practitioner can run (ce and uniform LS; the oracle arms, which use the
    true noise rate or transition matrix, are left out), the one with the highest mean
    validation accuracy (noisy labels). Exact ties (12 decimals) go to ce, then to the smallest
    eps; the tie is reported beside the choice (:func:`choice_facts`)."""
    return choose(
        [g for g in arms if not is_oracle(g)],
        "val_accuracy",
        higher=True,
        prefer=lambda g: -1.0 if g.params["arm"] == "ce" else float(g.params["eps"]),
    )


def _choice_sentence(choice: dict[str, Any], n_val: Any) -> str:
    """The noise experiment's validation choice: the arm, any exact tie and how it was settled,
    and the margin over the next arm (also in validation labels when n_val is known)."""
    chosen, facts = choice["chosen"], choice["facts"]
    text = (
        f"{choice['where']}: among the arms a practitioner can run (ce and uniform LS; the "
        "oracle arms are left out), mean validation accuracy on the "
        f"{_val(choice['rate'])} was highest for {noise_label(chosen.params, chosen.setting)} "
        f"({chosen.mean('val_accuracy'):.4f})"
    )
    if facts["tied"]:
        text += (
            "; tied exactly with "
            + ", ".join(noise_label(g.params, g.setting) for g in facts["tied"])
            + ", settled by the tie rule (ce first, then the smallest eps), so the validation "
            "labels did not separate these arms"
        )
    runner = facts["runner"]
    if runner is not None and not math.isnan(facts["margin"]):
        text += (
            f"; margin over the next arm ({noise_label(runner.params, runner.setting)}): "
            f"{_margin_words(facts['margin'], facts['n_seeds'], n_val)}"
        )
    if chosen.params["arm"] == "ce":
        text += "; so the choice is ce itself"
    return text + choice["after"] + "."


def _nls_row_sentence(where: str, cell: dict[str, Any]) -> str:
    """The nls experiment's validation choice as the noise section shows it: how it was made
    (an exact tie, the control's higher validation accuracy), the kept models against the
    control, and every negative eps at the last fine-tune epoch against the control's."""
    chosen, control, facts = cell["chosen"], cell["control"], cell.get("facts") or {}
    chosen_vs = cell["chosen_vs"]
    text = (
        f"{where}: the NLS fine-tune chosen on validation in the nls experiment "
        f"(eps={chosen.params['eps']:g}, after a CE warm-up; mean validation accuracy "
        f"{chosen.mean('val_accuracy'):.4f}"
    )
    if facts.get("tied"):
        text += (
            ", tied exactly with "
            + ", ".join(f"eps={g.params['eps']:g}" for g in facts["tied"])
            + ", settled by the tie rule (the eps closest to 0)"
        )
    if control is not None:
        if _tie_key(control) > _tie_key(chosen):
            text += (
                f"; the eps=0 control had the higher mean validation accuracy, "
                f"{control.mean('val_accuracy'):.4f}, so on validation no negative eps was "
                "preferred to eps = 0"
            )
        elif _tie_key(control) == _tie_key(chosen):
            text += "; the eps=0 control had the same mean validation accuracy"
    text += (
        "), kept models against the eps=0 fine-tune from the same warm-up (same extra "
        f"epochs): {_words(chosen_vs['accuracy'], 'accuracy')}, "
        f"{_words(chosen_vs['nll'], 'nll')} and after temperature scaling "
        f"{_words(chosen_vs['ts_nll'], 'ts_nll')}"
    )
    finals = [
        (g, cell["vs_control"][id(g)]["final_nll"])
        for g in cell.get("negatives", [])
        if "final_nll" in cell["vs_control"].get(id(g), {})
    ]
    if finals:
        lowered = sum(1 for _, c in finals if c.improves(False))
        raised = sum(1 for _, c in finals if c.worsens(False))
        text += (
            f"; at the last fine-tune epoch (a fixed schedule), against the control's last "
            f"epoch, {lowered} of the {len(finals)} negative eps lowered NLL detectably and "
            f"{raised} raised it ("
            + "; ".join(f"eps={g.params['eps']:g} {_words(c, 'nll')}" for g, c in finals)
            + ")"
        )
    return text + " (intervals of the nls experiment, counted there)."


def _analyse_noise(findings: Findings, groups: Sequence[Group]) -> None:
    runs = select(groups, "noise")
    if not runs:
        return
    nls_cells = {
        (c["setting"], c["rate"]): c for c in findings.sections.get("nls", {}).get("cells", [])
    }
    cells: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for setting, rate in _cell_keys(runs):
        here = [g for g in runs if g.setting == setting and float(g.params["rate"]) == rate]
        ce = next((g for g in here if g.params["arm"] == "ce"), None)
        if ce is None:
            continue
        arms = [g for g in here if g is not ce]
        where = _where(setting, rate)
        name = f"{setting}, rate {rate:g}"
        before = len(findings.comparisons)

        def compare(
            arm: Group, base: Group, metric: str, name: str = name, **kwargs: Any
        ) -> Comparison:
            kwargs.setdefault("arm_label", noise_label(arm.params, arm.setting))
            kwargs.setdefault("baseline_label", "ce (eps=0), early-stopped")
            return findings.compare("noise", name, arm, base, metric, **kwargs)

        vs_ce = {id(g): {m: compare(g, ce, m) for m in NOISE_METRICS} for g in arms}
        stopping = {
            m: compare(
                ce, ce, m, baseline_metric=f"final_{m}", arm_label="ce (eps=0), early-stopped",
                baseline_label="ce (eps=0), final epoch",
            )
            for m in ("accuracy", "nll")
        }  # fmt: skip
        # temperature scaling fitted on the (noisy) validation labels, applied to ce: its
        # clean-test NLL with against without it (the reference of every "after temperature
        # scaling" comparison below is ce with it)
        ce_ts = compare(
            ce, ce, "nll", arm_metric="ts_nll",
            arm_label="ce (eps=0), early-stopped, after temperature scaling",
            baseline_label="ce (eps=0), early-stopped, without temperature scaling",
        )  # fmt: skip
        # the means beside every "after temperature scaling" phrase wherever TS left ce's
        # mean clean-test NLL above its NLL without TS (detectably or not: the words say which)
        ts_raised = ce.mean("ts_nll") > ce.mean("nll")

        def ts_words(
            g: Group, c: Comparison | None, ce: Group = ce, raised: bool = ts_raised
        ) -> str:
            """'after temperature scaling ...' against ce with TS; where TS raised ce's NLL,
            the arm's, ce's with and ce's without TS NLL beside it."""
            text = f"after temperature scaling {_words(c, 'ts_nll')}"
            if raised:
                text += (
                    f" (means: {g.mean('ts_nll'):.3f} against ce's {ce.mean('ts_nll'):.3f} "
                    f"with temperature scaling; ce without it: {ce.mean('nll'):.3f})"
                )
            return text

        smoothing = [g for g in arms if g.params["arm"] in ("ls", "others")]
        final = {
            id(g): {
                m: compare(
                    g, ce, m, arm_metric=f"final_{m}", baseline_metric=f"final_{m}",
                    arm_label=noise_label(g.params, g.setting) + ", final epoch",
                    baseline_label="ce (eps=0), final epoch",
                )
                for m in ("accuracy", "nll")
            }
            for g in smoothing
        }  # fmt: skip
        practical = [ce, *(g for g in arms if not is_oracle(g))]
        oracles = [g for g in arms if is_oracle(g)]
        chosen = choose_arm([ce, *arms])
        facts = None if chosen is None else choice_facts(chosen, practical)
        chosen_vs = None
        if chosen is not None and chosen is not ce:
            chosen_vs = {
                m: compare(chosen, ce, m, chosen=True,
                           arm_label=f"chosen on validation: {_arm_label(chosen)}")
                for m in NOISE_METRICS
            }  # fmt: skip
        # the nls experiment's chosen eps, against its eps=0 fine-tune (the control: same
        # warm-up, same extra epochs); those intervals are the nls experiment's, not repeated
        nls_cell = nls_cells.get((setting, rate))
        nls_group = None if nls_cell is None else nls_cell["chosen"]
        nls_control = None if nls_cell is None else nls_cell["control"]
        nls_vs = None if nls_cell is None else nls_cell["chosen_vs"]
        # the validation choice repeats its own arm's intervals: counted once
        repeated = list(chosen_vs.values()) if chosen_vs is not None else []
        intervals = len(findings.comparisons) - before - len(repeated)
        significant = sum(1 for c in findings.comparisons[before:] if c["significant"]) - sum(
            1 for c in repeated if c.significant
        )

        values = ("accuracy", "nll", "ts_nll", "val_accuracy", "best_epoch")
        prefix = f"rate {rate:g}: "
        rows = [Row(prefix + "ce (eps=0), early-stopped", {m: ce.mean(m) for m in values},
                    dict.fromkeys(NOISE_METRICS), _diverged(ce))]  # fmt: skip
        if chosen is ce:
            rows[0].note = "; ".join(x for x in (_diverged(ce), "chosen on validation") if x)
        for g in arms:
            note = "; ".join(
                x
                for x in (
                    _diverged(g),
                    "chosen on validation" if g is chosen else "",
                    "oracle: uses the true noise model, not a validation choice"
                    if is_oracle(g)
                    else "",
                )
                if x
            )
            rows.append(Row(prefix + _arm_label(g), {m: g.mean(m) for m in values},
                            vs_ce[id(g)], note))  # fmt: skip
        if nls_group is not None and nls_vs is not None and nls_control is not None:
            for g, comparisons, what in (
                (nls_control, dict.fromkeys(NOISE_METRICS), "the nls control"),
                (nls_group, nls_vs, "eps chosen on validation; Δ against the eps=0 fine-tune"),
            ):
                kept = g.mean("best_epoch")
                rows.append(
                    Row(prefix + nls_label(g.params) + " (nls experiment)",
                        {**{m: g.mean(m) for m in values}, "best_epoch": math.nan}, comparisons,
                        "; ".join(x for x in (
                            _diverged(g), f"{what}, not ce; after a CE warm-up, kept at "
                            f"fine-tune epoch {kept:.1f} (mean; not comparable with the kept "
                            "epochs above)") if x))
                )  # fmt: skip
        final_values = ("final_accuracy", "final_nll")
        final_rows = [
            Row(prefix + "ce (eps=0), final epoch",
                {m: ce.mean(m) for m in final_values}, dict.fromkeys(final_values), ""),
            Row(prefix + "ce (eps=0), early-stopped",
                {"final_accuracy": ce.mean("accuracy"), "final_nll": ce.mean("nll")},
                {f"final_{m}": c for m, c in stopping.items()}, "the kept epoch, not the final"),
            *(
                Row(prefix + noise_label(g.params, g.setting) + ", final epoch",
                    {m: g.mean(m) for m in final_values},
                    {f"final_{m}": c for m, c in final[id(g)].items()}, _diverged(g))
                for g in smoothing
            ),
        ]  # fmt: skip

        sentences = [
            _divergence_sentence(where, [ce, *arms], partial(noise_label, setting=setting))
        ]
        sentences.append(
            f"{where}: early stopping on the {_val(rate)}, against the final epoch "
            f"of ce, {_words(stopping['accuracy'], 'accuracy')} and "
            f"{_words(stopping['nll'], 'nll')} (mean kept epoch {ce.mean('best_epoch'):.1f})."
        )
        ts_text = (
            f"{where}: temperature scaling fitted on the {_val(rate)}, applied to ce "
            f"early-stopped, {_words(ce_ts, 'nll')} on the clean test labels (mean NLL "
            f"{ce.mean('nll'):.3f} without it, {ce.mean('ts_nll'):.3f} with it)"
        )
        if ts_raised:
            ts_text += (
                "; every 'after temperature scaling' comparison below is against ce with "
                "temperature scaling, whose mean NLL is above ce's without it, so each arm's "
                "mean NLL after temperature scaling is given beside ce's with and without it"
            )
        sentences.append(ts_text + ".")
        for lead, members in (
            (f"{where}, against ce early-stopped: ", [g for g in arms if not is_oracle(g)]),
            (
                f"{where}, with oracle knowledge of the noise (the true noise rate or "
                "transition matrix, which a practitioner does not have: what knowing it would "
                "give, not a validation choice), against ce early-stopped: ",
                oracles,
            ),
        ):
            if members:
                sentences.append(
                    lead
                    + "; ".join(
                        f"{noise_label(g.params, g.setting)} "
                        f"{_words(vs_ce[id(g)]['accuracy'], 'accuracy')}, "
                        f"{_words(vs_ce[id(g)]['nll'], 'nll')} and "
                        f"{ts_words(g, vs_ce[id(g)]['ts_nll'])}"
                        for g in members
                    )
                    + "."
                )
        if smoothing:
            sentences.append(
                f"{where}, everything at the final epoch (no early stopping, as in Lukasik et "
                f"al. 2020), against ce at its final epoch: "
                + "; ".join(
                    f"{_arm_label(g)} {_words(final[id(g)]['accuracy'], 'accuracy')} "
                    f"and {_words(final[id(g)]['nll'], 'nll')}"
                    for g in smoothing
                )
                + "."
            )
        choice_at = None
        if chosen is not None and facts is not None:
            choice_at = len(sentences)
            after = ""
            if chosen is not ce and chosen_vs is not None:
                after = (
                    f"; against ce early-stopped it {_words(chosen_vs['accuracy'], 'accuracy')}"
                    f", {_words(chosen_vs['nll'], 'nll')} and "
                    f"{ts_words(chosen, chosen_vs['ts_nll'])}"
                )
            choice = {"where": where, "rate": rate, "chosen": chosen, "facts": facts,
                      "after": after}  # fmt: skip
            sentences.append(_choice_sentence(choice, None))
        if nls_cell is not None and nls_group is not None and nls_vs is not None:
            sentences.append(_nls_row_sentence(where, nls_cell))
        sentences.append(
            f"{where}: {intervals} distinct intervals here, {significant} excluding 0; "
            f"{chance_count(intervals)} would exclude 0 by chance alone if nothing differed."
        )
        plot = [
            (
                "LS eps = noise rate (others)"
                if g.params["arm"] == "others"
                else noise_label(g.params, g.setting),
                vs_ce[id(g)]["accuracy"],
                1.0,
            )
            for g in arms
        ]
        plot.insert(0, ("ce, final epoch", stopping["accuracy"], -1.0))
        cells.append(
            {
                "setting": setting,
                "rate": rate,
                "where": where,
                "rows": rows,
                "final_rows": final_rows,
                "sentences": sentences,
                "plot": plot,
                "stopping": stopping["accuracy"],
                "chosen_label": None
                if chosen is None
                else noise_label(chosen.params, chosen.setting),
                "chosen_tied": []
                if facts is None
                else [noise_label(g.params, g.setting) for g in facts["tied"]],
                "choice_at": choice_at,
                "choice": None if choice_at is None else choice,
                "intervals": intervals,
                "significant": significant,
            }
        )
        summary.append(
            {
                "setting": setting,
                "rate": rate,
                "chosen": None
                if chosen is None
                else {
                    "arm": chosen.params["arm"],
                    "eps": chosen.params["eps"],
                    "label": noise_label(chosen.params, chosen.setting),
                    "chosen_on": f"val_accuracy ({_val(rate)})",
                    "selected_on": "validation",
                },
                "chosen_vs_ce": None
                if chosen_vs is None
                else {m: c.as_dict() for m, c in chosen_vs.items()},
                "early_stopping_vs_final": {m: c.as_dict() for m, c in stopping.items()},
                "ce_ts_nll_vs_nll": ce_ts.as_dict(),
                "tied_with": []
                if facts is None
                else [noise_label(g.params, g.setting) for g in facts["tied"]],
                "tie_rule": "ce first, then the smallest eps",
                "margin_val_accuracy": None if facts is None else _finite_or_none(facts["margin"]),
                "oracle_arms": [noise_label(g.params, g.setting) for g in oracles],
                "oracle_note": "oracle arms use the true noise rate or transition matrix; "
                "reported against ce, never chosen",
                "nls_chosen_eps": None if nls_group is None else nls_group.params["eps"],
                "nls_chosen_vs_control": None
                if nls_vs is None
                else {m: c.as_dict() for m, c in nls_vs.items() if m in NOISE_METRICS},
                "diverged": {
                    noise_label(g.params, g.setting): len(g.diverged) for g in [ce, *arms]
                },
                "intervals": intervals,
                "significant": significant,
            }
        )
    findings.sections["noise"] = {"cells": cells}
    findings.experiments["noise"] = {"cells": summary, "selected_on": "validation"}


def analyse(findings: Findings, groups: Sequence[Group]) -> None:
    """The nls experiment first (the noise section shows its validation-chosen eps)."""
    _analyse_nls(findings, groups)
    _analyse_noise(findings, groups)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _protocol(study: dict[str, Any]) -> dict[str, Any]:
    config = study.get("config") or {}
    defaults = StudyConfig()

    def get(name: str) -> Any:
        return config.get(name, getattr(defaults, name))

    return {
        name: get(name)
        for name in (
            "lr", "epochs", "batch_size", "width", "depth", "seeds", "select",
            "validation_fraction", "noise_eps", "nls_eps", "nls_lr", "nls_epochs",
        )
    }  # fmt: skip


def _sizes(study: dict[str, Any]) -> str:
    return (
        f"{study.get('dataset', 'the data set')}: n_train {study.get('n_train', '?')}, "
        f"n_val {study.get('n_val', '?')}, n_test {study.get('n_test', '?')} (clean test labels)"
    )


def _select_words(rule: str) -> str:
    return {
        "accuracy": "the epoch with the best accuracy on the noisy validation labels (ties: "
        "lower NLL)",
        "nll": "the epoch with the lowest NLL on the noisy validation labels",
        "final": "the final epoch (select = final: no early stopping)",
    }.get(rule, rule)


def _errorbar_panel(ax: Any, cells: list[dict[str, Any]], title: str) -> None:
    labels: list[str] = []
    for cell in cells:
        for label, _, _ in cell["plot"]:
            if label not in labels:
                labels.append(label)
    width = 0.8 / max(len(labels), 1)
    rates = [cell["rate"] for cell in cells]
    for index, label in enumerate(labels):
        xs, ys, low, high = [], [], [], []
        for position, cell in enumerate(cells):
            for name, comparison, sign in cell["plot"]:
                if name != label or math.isnan(comparison.mean_delta):
                    continue
                delta = sign * comparison.mean_delta
                ends = sorted((sign * comparison.ci_low, sign * comparison.ci_high))
                xs.append(position - 0.4 + width * (index + 0.5))
                ys.append(delta)
                low.append(delta - ends[0] if not math.isnan(ends[0]) else 0.0)
                high.append(ends[1] - delta if not math.isnan(ends[1]) else 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, label=label)
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_xticks(range(len(rates)))
    ax.set_xticklabels([f"{rate:g}" for rate in rates])
    ax.set_xlabel("noise rate")
    ax.set_ylabel("test accuracy − ce early-stopped")
    ax.set_title(title)


def _labels(setting: str) -> dict[str, tuple[str, int]]:
    """Column labels: the validation labels are noisy except in the clean setting."""
    words = (
        "validation accuracy (clean labels)"
        if setting == "clean"
        else ("validation accuracy (labels noisy as in training)")
    )
    return {**EXTRA_LABELS, "val_accuracy": (words, 3),
            "best_epoch": ("kept epoch (of training from scratch)", 1)}  # fmt: skip


def _noise_section(findings: Findings, save_figure: SaveFigure, study: dict[str, Any]) -> Section:
    cells = findings.sections["noise"]["cells"]
    p = _protocol(study)
    intervals = sum(c["intervals"] for c in cells)
    significant = sum(c["significant"] for c in cells)
    intro = (
        f"What to do with noisy labels. {_sizes(study)}. Noise corrupts the training and the "
        "validation labels of each seed (drawn with seeds 1000 + seed and 2000 + seed); the "
        "test labels stay clean. Symmetric noise: a flipped label becomes any other class, "
        "uniformly; pair-flip noise: class k becomes (k + 1) mod K (rates of 0.5 and above "
        "are skipped). Model: the study's MLP "
        f"(width {p['width']}, depth {p['depth']}), Adam at lr {p['lr']:g}, batch "
        f"{p['batch_size']}, {p['epochs']} epochs, seeds {list(p['seeds'])}; the kept model is "
        f"{_select_words(p['select'])}, and every record also holds the final epoch. Arms per "
        "(kind, rate): ce (eps = 0); label smoothing (uniform) at eps "
        f"{', '.join(f'{e:g}' for e in p['noise_eps'])}; style 'others' with eps = the noise "
        "rate (the true label keeps 1 − rate, the others share rate: the posterior of "
        "symmetric noise, not of pair-flip noise); forward loss correction with the known "
        "transition matrix T (Patrini et al. 2017: loss = −log (softmax(z) T)[noisy y]; the "
        "softmax models the clean label). The 'others' arm (eps = the true rate) and the forward "
        "arm (the true T) use oracle knowledge of the noise, which a practitioner does not "
        "have: they are reported as what that knowledge would give (in pair-flip cells the "
        "'others' arm knows the rate but has a mismatched noise model, and is labelled so), "
        "and never the validation choice. Temperature scaling is fitted on the noisy "
        "validation NLL (the only labels a practitioner has); for the forward arm, whose "
        "softmax models the clean label, that fit targets the noisy labels, so its NLL after "
        "temperature scaling is not a fair use of the correction. Comparisons, paired by seed: "
        "every arm against ce early-stopped on clean-test accuracy, NLL and NLL after "
        "temperature scaling (against ce after temperature scaling); ce after temperature "
        "scaling against ce without it (clean-test NLL); ce early-stopped against ce's final "
        "epoch (the memorisation effect); every smoothing arm at its final epoch against ce "
        "at its final epoch (the setting of Lukasik et al. 2020); and the arm chosen on mean "
        "validation accuracy (noisy labels) among ce and uniform LS against ce early-stopped; "
        "exact ties (12 decimals) go to ce, then to the smallest eps, and are reported with "
        "the margin over the next arm. Where the nls experiment ran at the same kind and rate, its "
        "validation-chosen negative-eps fine-tune and its eps = 0 control fine-tune are two "
        "more rows, the first compared with the control (same warm-up, same extra epochs; the "
        "warm-up is trained as ce is here), not with ce; those intervals are counted in the "
        "nls section. "
        f"In all, {intervals} distinct intervals, {significant} excluding 0; "
        f"{chance_count(intervals)} would exclude 0 by chance alone if nothing differed."
    )
    raised = sum(1 for c in cells if c["stopping"].improves(True))
    lowered = sum(1 for c in cells if c["stopping"].worsens(True))
    overview = [
        "Overview: early stopping on the validation labels (noisy as the training labels), "
        f"against ce's final epoch, raised clean-test accuracy detectably in {raised} and "
        f"lowered it detectably in {lowered} of {len(cells)} (kind, rate) cells. Validation "
        "accuracy (validation labels noisy as the training labels, clean in the clean cell) "
        "chose: "
        + "; ".join(
            f"{c['where']}: {c['chosen_label']}"
            + (f" (tied with {', '.join(c['chosen_tied'])})" if c.get("chosen_tied") else "")
            for c in cells
            if c["chosen_label"]
        )
        + "; oracle arms left out of the choice."
    ]
    n_val = study.get("n_val")
    lines: list[str] = []
    for cell in cells:
        mine = list(cell["sentences"])
        if cell.get("choice_at") is not None and cell.get("choice") is not None:
            mine[cell["choice_at"]] = _choice_sentence(cell["choice"], n_val)
        lines += mine
    sentences = overview + lines
    tables: list[Table] = []
    settings = list(dict.fromkeys(cell["setting"] for cell in cells))
    for setting in settings:
        mine = [cell for cell in cells if cell["setting"] == setting]
        tables.append(
            Table(
                f"{KIND_WORDS[setting].capitalize()}: clean-test metrics (Δ against ce "
                "early-stopped, same rate)",
                "arm",
                ["accuracy", "nll", "ts_nll", "val_accuracy", "best_epoch"],
                [row for cell in mine for row in cell["rows"]],
                _labels(setting),
            )
        )
        tables.append(
            Table(
                f"{KIND_WORDS[setting].capitalize()}: at the final epoch (Δ against ce at its "
                "final epoch, same rate)",
                "arm",
                ["final_accuracy", "final_nll"],
                [row for cell in mine for row in cell["final_rows"]],
                EXTRA_LABELS,
            )
        )
    figures = []
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.2 * len(settings), 4.2), layout="constrained")
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    for ax, setting in zip(axes, settings, strict=True):
        _errorbar_panel(ax, [c for c in cells if c["setting"] == setting], KIND_WORDS[setting])
    axes[-1].legend(fontsize=7, loc="best")
    figures.append(
        save_figure(
            "noise_accuracy",
            figure,
            "Clean-test accuracy of each arm minus ce early-stopped (same seed), mean over "
            "seeds with its 95% interval (Student t), per noise rate; 'ce, final epoch' is ce's "
            "final epoch minus its early-stopped epoch.",
        )
    )
    return Section("noise", "Noisy labels: what to do", intro, sentences, tables, figures)


def _nls_lr_words(lr: float) -> str:
    """Where the fine-tuning rate came from, from the configuration (not asserted)."""
    default = StudyConfig().nls_lr
    calibrated = (
        f"the default, {default:g} with Adam, was set on clean digits so that eps = −2 neither "
        "diverges nor leaves the logits unchanged, and was not re-tuned for other data or noise"
    )
    if lr == default:
        return calibrated
    return f"it is not the default: {calibrated}"


def _kept_words(cells: Sequence[dict[str, Any]]) -> str:
    """The observed kept fine-tune epochs, counted over every fine-tuned model."""
    first = sum(c.get("first_kept", 0) for c in cells)
    total = sum(c.get("tuned_models", 0) for c in cells)
    if not total:
        return ""
    return (
        f"Of the {total} fine-tuned models (arm x seed x cell), {first} kept the first "
        "fine-tune epoch (per-arm means in the sentences below)."
    )


def _twin_words(cells: Sequence[dict[str, Any]]) -> str:
    """Which other experiments' runs the warm-ups repeat (checked on every seed's results)."""
    parts = [f"{c['where']}: {' and '.join(c['twins'])}" for c in cells if c.get("twins")]
    if not parts:
        return ""
    return (
        "The CE warm-ups are the same models as runs of other experiments (identical per-seed "
        f"results) — {'; '.join(parts)}; they are not separate evidence, and the fine-tunes' "
        "intervals are counted here only (the noise section shows the chosen NLS eps against "
        "its control without counting it again). "
    )


def _nls_section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section:
    cells = findings.sections["nls"]["cells"]
    p = _protocol(study)
    intervals = sum(c["intervals"] for c in cells)
    significant = sum(c["significant"] for c in cells)
    intro = (
        "Negative label smoothing (generalised label smoothing, eps < 0) as Wei et al. (2022) "
        f"train it. {_sizes(study)}; noise as in the noise experiment (training and "
        "validation labels). Per seed, a CE warm-up (eps = 0, Adam at lr "
        f"{p['lr']:g}, {p['epochs']} epochs) kept at {_select_words(p['select'])}; then, from "
        f"that checkpoint, a fine-tune of {p['nls_epochs']} epochs with a fresh Adam at lr "
        f"{p['nls_lr']:g} and eps in {', '.join(f'{e:g}' for e in p['nls_eps'])}, kept at the "
        "best fine-tune epoch by the same rule, and a control fine-tune at eps = 0 under the "
        "identical schedule (so the comparison isolates the sign of eps from the extra epochs). "
        "Negative eps puts negative weight on the wrong classes, so the loss is unbounded below "
        "and trained from scratch the logits grow without limit; a small fine-tuning rate is "
        f"meant to keep the growth bounded. This study used nls_lr {p['nls_lr']:g}; "
        f"{_nls_lr_words(p['nls_lr'])}; Wei et al.'s code used 1e-6 with SGD after training at "
        f"0.1. {_kept_words(cells)} Each eps is also compared at the last fine-tune epoch, as "
        "a fixed schedule would keep it. "
        f"{_twin_words(cells)}"
        "Comparisons, paired by seed, on "
        "clean-test accuracy, NLL, NLL after temperature scaling (fitted on the noisy "
        "validation labels) and the mean L2 norm of the test logits: each eps against the eps = "
        "0 fine-tune, and each fine-tune against the warm-up; the eps chosen on mean validation "
        "accuracy (noisy labels; exact ties to the eps closest to 0, reported as ties) against "
        "the eps = 0 fine-tune, with a note wherever the control had the higher validation "
        "accuracy. Negative eps whose kept models give the same per-seed results (same kept "
        "epoch; validation and test accuracy, test NLL, NLL after temperature scaling and "
        "logit norms equal to 1e-9 relative) are flagged and their kept-model intervals "
        "counted once; those with the same kept epoch and accuracies but a different NLL are "
        "called near-identical and counted each. "
        "Diverged runs (non-finite loss or outputs) are counted per arm and left out of the "
        f"means. In all, {intervals} distinct intervals, {significant} excluding 0; "
        f"{chance_count(intervals)} would exclude 0 by chance alone if nothing differed."
    )
    sentences = [line for cell in cells for line in cell["sentences"]]
    columns = ["accuracy", "nll", "ts_nll", "logit_norm", "max_abs_logit", "final_accuracy",
               "final_max_abs_logit", "val_accuracy", "best_epoch"]  # fmt: skip
    tables: list[Table] = []
    for cell in cells:
        labels = {
            **_labels(cell["setting"]),
            "final_accuracy": ("accuracy (last fine-tune epoch)", 3),
            "best_epoch": ("kept epoch (warm-up: of training; fine-tunes: of the fine-tune)", 1),
        }
        tables.append(
            Table(f"{cell['where']}: Δ against the eps=0 fine-tune", "model", columns,
                  cell["rows_control"], labels)
        )  # fmt: skip
        tables.append(
            Table(f"{cell['where']}: Δ against the CE warm-up", "model", columns,
                  cell["rows_warm"], labels)
        )  # fmt: skip
    from matplotlib.figure import Figure

    figures = []
    figure = Figure(figsize=(4.6 * len(cells), 3.8), layout="constrained")
    axes = figure.subplots(1, len(cells), squeeze=False)[0]
    drawn = False
    for ax, cell in zip(axes, cells, strict=True):
        for group in cell["tunes"]:
            key = group.first_key()
            if key is None or min(group.keys) != min(findings.seeds):
                continue
            try:
                arrays = load_arrays(key)
                trajectory = np.asarray(arrays["val_logit_norm"], dtype=float)
            except Exception:  # a missing figure input leaves the panel empty
                continue
            ax.plot(range(len(trajectory)), trajectory, marker=".", label=nls_label(group.params))
            drawn = True
        ax.set_xlabel("fine-tune epoch (0 = warm-up checkpoint)")
        ax.set_ylabel("mean logit norm (validation)")
        low, high = ax.get_ylim()
        if low > 0 and high / low > 20:
            ax.set_yscale("log")
        ax.set_title(cell["where"], fontsize=9)
    axes[-1].legend(fontsize=7)
    if drawn:
        figures.append(
            save_figure(
                "nls_logit_norm",
                figure,
                f"Mean L2 norm of the validation logits during each fine-tune (seed "
                f"{min(findings.seeds)}), starting from the CE warm-up's kept checkpoint.",
            )
        )
    figure = Figure(figsize=(4.6 * len(cells), 3.8), layout="constrained")
    axes = figure.subplots(1, len(cells), squeeze=False)[0]
    for ax, cell in zip(axes, cells, strict=True):
        negatives = [g for g in cell["tunes"] if g.params["eps"] < 0]
        for offset, (label, table) in enumerate(
            (("against the eps=0 fine-tune", cell["vs_control"]),
             ("against the warm-up", cell["vs_warm"]))
        ):  # fmt: skip
            xs, ys, low, high = [], [], [], []
            for position, group in enumerate(negatives):
                comparison = table.get(id(group), {}).get("accuracy")
                if comparison is None or math.isnan(comparison.mean_delta):
                    continue
                xs.append(position - 0.1 + 0.2 * offset)
                ys.append(comparison.mean_delta)
                low.append(0.0 if math.isnan(comparison.ci_low) else ys[-1] - comparison.ci_low)
                high.append(0.0 if math.isnan(comparison.ci_high) else comparison.ci_high - ys[-1])
            if xs:
                ax.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, label=label)
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_xticks(range(len(negatives)))
        ax.set_xticklabels([f"{g.params['eps']:g}" for g in negatives])
        ax.set_xlabel("eps")
        ax.set_ylabel("Δ clean-test accuracy")
        ax.set_title(cell["where"], fontsize=9)
    axes[-1].legend(fontsize=7)
    figures.append(
        save_figure(
            "nls_accuracy",
            figure,
            "Clean-test accuracy of each negative-eps fine-tune minus the eps=0 fine-tune and "
            "minus the CE warm-up (same seed): mean over seeds with its 95% interval.",
        )
    )
    return Section(
        "nls", "Negative label smoothing (fine-tuned after a CE warm-up)", intro, sentences,
        tables, figures,
    )  # fmt: skip


def section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section | list[Section] | None:
    """The noise section, then the nls section (each only when its experiment ran)."""
    out: list[Section] = []
    if findings.sections.get("noise", {}).get("cells"):
        out.append(_noise_section(findings, save_figure, study))
    if findings.sections.get("nls", {}).get("cells"):
        out.append(_nls_section(findings, load_arrays, save_figure, study))
    return out or None
