"""The examples in the docstrings are executed, so the documentation cannot drift."""

import doctest
import importlib

import pytest

MODULES = [
    "labelsmooth",
    "labelsmooth.targets",
    "labelsmooth.functional",
    "labelsmooth.nn",
    "labelsmooth.metrics",
    "labelsmooth.analysis",
    "labelsmooth.distributed",
    "labelsmooth.kernels.linear",
    "labelsmooth.schedules",
    "labelsmooth.variants.confidence_penalty",
    "labelsmooth.variants.focal",
    "labelsmooth.variants.label_relaxation",
    "labelsmooth.variants.margin_label_smoothing",
    "labelsmooth.variants.maxsup",
    "labelsmooth.variants.online_label_smoothing",
    "labelsmooth.variants.spatial_label_smoothing",
    "labelsmooth.variants.teacher_free_kd",
    "labelsmooth.study.stats",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
