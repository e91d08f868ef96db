"""(being written)"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import StudyConfig
from .data import Split
from .experiments import Plan
from .findings import Findings, Group
from .sections import LoadArrays, SaveFigure, Section

PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}


def build(data: Split, config: StudyConfig, plan: Plan) -> None:
    return None


def analyse(findings: Findings, groups: Sequence[Group]) -> None:
    return None


def section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section | list[Section] | None:
    return None
