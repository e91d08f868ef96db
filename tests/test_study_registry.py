"""The registry: every experiment the configuration accepts has a planner, an analysis, a report
section and the params its records hold."""

from __future__ import annotations

import inspect

import pytest

from labelsmooth.study import registry
from labelsmooth.study.config import EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_has_a_builder(name):
    build = registry.builder(name)
    assert list(inspect.signature(build).parameters) == ["data", "config", "plan"]


@pytest.mark.parametrize("module", list(dict.fromkeys(registry.MODULES.values())), ids=str)
def test_every_module_has_the_four_parts(module):
    assert list(inspect.signature(module.analyse).parameters) == ["findings", "groups"]
    assert list(inspect.signature(module.section).parameters) == [
        "findings",
        "load_arrays",
        "save_figure",
        "study",
    ]
    assert module.PARAMS, f"{module.__name__} declares no record params"
    for (experiment, _setting), params in module.PARAMS.items():
        assert experiment in EXPERIMENTS
        assert all(isinstance(allowed, tuple) for allowed in params.values())


def test_params_for_known_and_unknown_pairs():
    assert registry.params_for("sweep", "main") == {
        "eps": (),
        "style": ("none", "uniform", "others"),
    }
    assert registry.params_for("sweep", "a user's setting") == registry.params_for("sweep", "main")
    assert registry.params_for("no such experiment", "main") is None
    assert registry.params_for("variants", "elsewhere") is None
    for experiment, setting in registry.PARAMS:
        assert registry.params_for(experiment, setting) is not None
