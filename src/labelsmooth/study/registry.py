"""Which experiments the study has, and where each one's parts live.

The first experiments (``sweep``, ``variants``) are planned in
:mod:`~labelsmooth.study.experiments` and analysed in :mod:`~labelsmooth.study.findings`.
Each later one is a module of its own (``exp_*.py``) with four parts:

* ``build(data, config, plan)``: appends its runs to the
  :class:`~labelsmooth.study.experiments.Plan`;
* ``analyse(findings, groups)``: its paired comparisons (into ``findings.comparisons``), its
  validation choices and sentences (into ``findings.sections[name]``) and a JSON summary
  (``findings.experiments[name]``);
* ``section(findings, load_arrays, save_figure, study)``: its part of the report, a
  :class:`~labelsmooth.study.sections.Section` (or None);
* ``PARAMS``: the params each of its records holds, keyed by (experiment, setting), for the
  checks of ``results.jsonl`` (a setting of ``"*"`` matches every setting).

This module sits above all of them: nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from . import exp_distill, exp_lr, exp_multilabel, exp_noise, exp_sequence
from .config import StudyConfig
from .data import Split
from .experiments import BUILDERS, VARIANT_ARMS, Plan
from .findings import Findings, analyse_core
from .sections import LoadArrays, SaveFigure, Section

# name -> module, in the order the report shows their sections
MODULES: dict[str, ModuleType] = {
    "noise": exp_noise,
    "nls": exp_noise,
    "distillation": exp_distill,
    "lr": exp_lr,
    "multilabel": exp_multilabel,
    "sequence": exp_sequence,
}

# The params each kind of run has; a string value is allowed only where listed.
PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("sweep", "main"): {"eps": (), "style": ("none", "uniform", "others")},
    ("variants", "main"): {"variant": tuple(VARIANT_ARMS)},
    ("variants", "overconfident"): {"variant": tuple(VARIANT_ARMS)},
}
for _module in dict.fromkeys(MODULES.values()):
    PARAMS.update(_module.PARAMS)


def params_for(experiment: str, setting: str) -> dict[str, tuple[str, ...]] | None:
    """The params a record of (experiment, setting) must hold, or None for an unknown pair."""
    found = PARAMS.get((experiment, setting)) or PARAMS.get((experiment, "*"))
    if found is None and experiment == "sweep":
        found = PARAMS[("sweep", "main")]
    return found


def builder(name: str) -> Callable[[Split, StudyConfig, Plan], None]:
    if name in BUILDERS:
        return BUILDERS[name]
    module = MODULES[name]
    return getattr(module, f"build_{name}", None) or module.build


def plan(data: Split, config: StudyConfig) -> Plan:
    """Every run of the study, in the order they execute (teachers before their students)."""
    result = Plan(runs=[])
    for name in config.experiments:
        if data.multilabel and name not in ("multilabel", "sequence"):
            result.notes.append(f"The {name} experiment needs class labels; skipped.")
            continue
        builder(name)(data, config, result)
    return result


def analyse(records: Sequence[dict[str, Any]], seeds: Sequence[int]) -> Findings:
    """Every comparison, choice and sentence of a study's finished runs."""
    findings = analyse_core(records, seeds)
    groups = findings.sections["groups"]["groups"]
    for module in dict.fromkeys(MODULES.values()):
        module.analyse(findings, groups)
    return findings


def sections(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> list[Section]:
    """The later experiments' report sections, in :data:`MODULES` order."""
    out: list[Section] = []
    for module in dict.fromkeys(MODULES.values()):
        made = module.section(findings, load_arrays, save_figure, study)
        if made is None:
            continue
        out.extend(made if isinstance(made, list) else [made])
    return out


__all__ = ["MODULES", "PARAMS", "analyse", "builder", "params_for", "plan", "sections"]
