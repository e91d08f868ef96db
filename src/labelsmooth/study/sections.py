"""What an experiment hands the report: a titled section of sentences, tables and figures.

The experiments added after the first five (noise, nls, distillation, lr, multilabel, sequence)
each lay out their own section with these plain containers; ``report.html.j2`` renders every
:class:`Section` the same way, so a new experiment needs no template of its own. The numbers in
a table are :class:`~labelsmooth.study.findings.Row` objects, the same as the sweep's tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .findings import Row

# save_figure(name, matplotlib Figure, caption) -> the figure's entry for the template
SaveFigure = Callable[[str, Any, str], dict[str, str]]
# load_arrays(run key) -> the arrays that run saved
LoadArrays = Callable[[str], dict[str, Any]]


@dataclass
class Table:
    """Rows of means with paired comparisons; ``metrics`` are the columns.

    ``labels`` gives (column label, decimals) for a column that is not in
    :data:`~labelsmooth.study.findings.METRICS`."""

    title: str
    first: str
    metrics: list[str]
    rows: list[Row]
    labels: dict[str, tuple[str, int]] = field(default_factory=dict)


@dataclass
class Section:
    """One experiment's part of the report, in the order the template shows it: the title, a
    paragraph of what was done (``intro``), the findings in words, the tables, the figures."""

    key: str
    title: str
    intro: str
    sentences: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)


__all__ = ["LoadArrays", "SaveFigure", "Section", "Table"]
