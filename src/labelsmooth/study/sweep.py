"""The study's protocol on the user's own model and training loop.

::

    from labelsmooth.study import Outputs, Sweep

    def train(eps, style, seed, report):   # the user's own model and loop
        ...                                # report(epoch, val_logits, val_labels, test_logits)
        return Outputs(val_logits, val_labels, test_logits, test_labels)

    Sweep(train, eps=[0, 0.05, 0.1], seeds=range(5)).run("my-study")

Every (eps, style, seed) is one run of the CLI study's ``sweep`` experiment, executed and
measured by the same code (:func:`labelsmooth.study.outputs.run_trial`), stored in the same
crash-safe folder (``study.json`` with a fingerprint, ``results.jsonl`` replaced atomically
after every run, a lock against a second process), and reported by the same analysis:
validation-only choices, paired Student-t intervals over seeds, ``findings.json`` and
``report.html`` with the verdict first.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import pickle
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TextIO

from .. import _checks
from .config import ConfigError
from .experiments import Plan, Run, RunContext
from .outputs import Arrays, Metrics, Pruner, TrainFunction, run_trial
from .report import render_report
from .runner import (
    BACKENDS,
    ResultStore,
    StudyFileError,
    StudyFolder,
    atomic_write_json,
    default_workers,
    execute_plan,
    read_study_json,
)
from .train import SELECT_RULES


@dataclass(frozen=True)
class SweepConfig:
    """The settings of a :class:`Sweep` that can change a number (fingerprinted), and how it
    runs (``threads``, ``workers``, ``backend``: not fingerprinted)."""

    eps: tuple[float, ...]
    styles: tuple[str, ...]
    seeds: tuple[int, ...]
    select: str
    n_bins: int
    patience: int | None
    train_function: str
    code: str
    threads: int = 1
    workers: int = 1
    backend: str = "local"

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def numeric_settings(self) -> dict[str, Any]:
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in self.as_dict().items()
            if name not in ("threads", "workers", "backend")
        }

    def fingerprint(self, data_fingerprint: str = "") -> str:
        payload = {"settings": self.numeric_settings(), "data": data_fingerprint}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class _HashWriter:
    """A file-like sink that hashes what is written (pickling large state costs no memory)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


def _state(train: Any) -> Any:
    """What a training function computes with besides its code: a function's closure cells
    and defaults, a bound method's object, a ``functools.partial``'s function and arguments, a
    callable object's fields."""
    if isinstance(train, functools.partial):
        return (_state(train.func), train.args, train.keywords)
    if inspect.ismethod(train):
        return (train.__self__, _state(train.__func__))
    if inspect.isfunction(train):
        cells = tuple(cell.cell_contents for cell in train.__closure__ or ())
        return (cells, train.__defaults__, train.__kwdefaults__)
    return train


def _state_digest(train: Any) -> str | None:
    """A hash of :func:`_state` (pickled, streamed through SHA-256), or None when it does not
    pickle (an open file, a lambda inside the closure, ...)."""
    writer = _HashWriter()
    try:
        pickle.Pickler(writer, protocol=4).dump(_state(train))
    except Exception:  # any pickling failure means: cannot fingerprint
        return None
    return writer.digest.hexdigest()[:16]


def _source_of(train: Any) -> Any:
    while isinstance(train, functools.partial):
        train = train.func
    if inspect.ismethod(train):
        train = train.__func__
    return train if inspect.isroutine(train) else type(train)


def _code_fingerprint(train: TrainFunction, version: str | None) -> tuple[str, str]:
    """(the training function's name, what identifies its code and state).

    The code: ``version`` when given, else a hash of the function's (or the callable's class's)
    source. The state, always: a hash of what the function closes over, its defaults, a
    partial's arguments, a callable object's fields (:func:`_state`), so that the same code
    with other data or settings is another sweep. Where the state cannot be pickled and no
    ``version`` is given, a warning asks for one.
    """
    target = _source_of(train)
    module = getattr(target, "__module__", None) or type(train).__module__
    name = getattr(target, "__qualname__", None) or type(train).__qualname__
    qualified = f"{module}.{name}"
    if version is not None:
        code = f"version:{version}"
    else:
        try:
            source = inspect.getsource(target)
        except (OSError, TypeError):
            code = "name-only"
        else:
            code = "source:" + hashlib.sha256(source.encode()).hexdigest()[:16]
    state = _state_digest(train)
    if state is None and version is None:
        warnings.warn(
            f"Sweep cannot fingerprint what {qualified} closes over (it does not pickle), so "
            "a rerun into the same folder with other data or settings would reuse the old "
            "results; pass version='...' naming the data and settings",
            stacklevel=3,
        )
    return qualified, f"{code};state:{state or 'unknown'}"


def _float_tuple(name: str, values: Iterable[Any]) -> tuple[float, ...]:
    try:
        items = list(values)
    except TypeError as err:
        raise ConfigError(f"{name} must be a list of numbers, got {values!r}") from err
    result = []
    for value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a list of numbers, got {value!r} in it")
        result.append(float(value))
    if not result:
        raise ConfigError(f"{name} must not be empty")
    if len(set(result)) != len(result):
        raise ConfigError(f"{name} must not repeat a value, got {items}")
    return tuple(result)


def _int_tuple(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    try:
        items = list(values)
    except TypeError as err:
        raise ConfigError(f"{name} must be a list of integers, got {values!r}") from err
    if not items or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ConfigError(f"{name} must be a non-empty list of integers, got {items!r}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{name} must not repeat a value, got {items}")
    return tuple(items)


class Sweep:
    """Runs the study's eps sweep on a user's own training function.

    Args:
        train: ``train(eps, style, seed, report) -> Outputs``: trains one model with
            ``labelsmooth.cross_entropy(..., eps, style=style)`` (or any loss the user wants
            compared at those settings), seeded by ``seed``, and returns
            :class:`~labelsmooth.study.Outputs` (validation and test logits with their labels).
            It may call ``report(epoch, val_logits, val_labels, test_logits)`` after each
            epoch: the sweep then keeps the best validation epoch by ``select`` itself, and
            ``report`` returns True when the loop should stop (``patience``, ``pruner``).
        eps: the smoothing rates; 0 (the baseline) is added when absent.
        styles: the conventions of each eps > 0 (``"uniform"``, ``"others"``).
        seeds: one model per (eps, style, seed); comparisons are paired by seed, so the
            function must use the seed for everything random (initialisation, batch order,
            validation split).
        select: the kept epoch of reported runs: ``"accuracy"`` (ties: lower NLL),
            ``"nll"`` or ``"final"``.
        n_bins: ECE bins.
        patience: stop a reported run after this many epochs without a better validation
            epoch (None: never).
        pruner: ``pruner(epoch, val_accuracy, val_nll) -> bool``; True stops the run (e.g. an
            Optuna trial's ``report`` + ``should_prune``). The run keeps its best epoch so far.
        name: the data set or task, for the report (e.g. ``"CIFAR-10, ResNet-18"``).
        description: one line on the model and training, for the report's methods.
        class_names: the classes' names, for the report.
        version: identifies the training code; a folder holds one version. Default: a hash of
            ``train``'s source, so editing the function refuses the old folder (use a new
            one, or pass ``version=`` to keep it). What ``train`` computes with besides its
            code is fingerprinted too, version or not: its closure and defaults, a
            ``functools.partial``'s arguments, a callable object's fields (pickled and
            hashed). Module globals are not: name the data and settings they hold in
            ``version``.
        workers: parallel processes (``backend="local"``, needs a picklable ``train``: a
            function defined at module level) or Ray actors (``backend="ray"``); 0: one per
            CPU core. Default 1: in this process.
        threads: torch threads per worker (0: torch's default).
        backend: ``"local"`` or ``"ray"`` (runs on the cluster ``ray.init`` connected to, a
            local one if none; ``pip install "labelsmooth[ray]"``).

    ``run(out)`` is resumable: finished runs in ``out`` are kept, only missing ones run.

    Example (see ``examples/sweep_convnet.py`` for a complete one):

        >>> sweep = Sweep(lambda eps, style, seed, report: None, eps=[0, 0.1], seeds=[0, 1])
        >>> [run.label for run in sweep.runs()][:2]
        ['sweep [main] style=none eps=0.0 seed=0', 'sweep [main] style=none eps=0.0 seed=1']
    """

    def __init__(
        self,
        train: TrainFunction,
        *,
        eps: Iterable[float] = (0.0, 0.05, 0.1),
        styles: Iterable[str] = ("uniform",),
        seeds: Iterable[int] = range(5),
        select: str = "accuracy",
        n_bins: int = 15,
        patience: int | None = None,
        pruner: Pruner | None = None,
        name: str = "user model",
        description: str | None = None,
        class_names: Iterable[str] | None = None,
        version: str | None = None,
        workers: int = 1,
        threads: int = 1,
        backend: str = "local",
    ) -> None:
        if not callable(train):
            raise TypeError(f"train must be callable, got {type(train).__name__}")
        rates = _float_tuple("eps", eps)
        if 0.0 not in rates:
            rates = (0.0, *rates)
        for rate in rates:
            if not 0.0 <= rate < 1.0:
                raise ConfigError(f"eps must be in [0, 1), got {rate:g}")
        style_list = tuple(styles) if not isinstance(styles, str) else (styles,)
        if not style_list:
            raise ConfigError("styles must not be empty")
        for style in style_list:
            _checks.check_style(style)
        if len(set(style_list)) != len(style_list):
            raise ConfigError(f"styles must not repeat a value, got {list(style_list)}")
        seed_list = _int_tuple("seeds", seeds)
        if select not in SELECT_RULES:
            raise ConfigError(f"select must be one of {', '.join(SELECT_RULES)}, got {select!r}")
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ConfigError(f"n_bins must be a positive integer, got {n_bins!r}")
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ConfigError(f"patience must be a positive integer or None, got {patience!r}")
        if pruner is not None and not callable(pruner):
            raise TypeError(f"pruner must be callable or None, got {type(pruner).__name__}")
        for label, value in (("workers", workers), ("threads", threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{label} must be an integer >= 0, got {value!r}")
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"name must be a non-empty string, got {name!r}")
        qualified, code = _code_fingerprint(train, version)
        self.train = train
        self.pruner = pruner
        self.name = name
        self.description = description or f"the training function {qualified}"
        self.class_names = [str(c) for c in class_names] if class_names is not None else []
        self.config = SweepConfig(
            eps=rates,
            styles=style_list,
            seeds=seed_list,
            select=select,
            n_bins=n_bins,
            patience=patience,
            train_function=qualified,
            code=code,
            threads=threads,
            workers=workers or default_workers(),
            backend=backend,
        )

    def combos(self) -> list[tuple[float, str]]:
        """(eps, style) of every arm; the baseline (eps 0) first."""
        config = self.config
        return [(0.0, "uniform")] + [
            (eps, style) for eps in config.eps if eps != 0 for style in config.styles
        ]

    def runs(self) -> list[Run]:
        """The runs of the sweep, with the keys of the CLI study's ``sweep`` experiment."""
        config = self.config
        result = []
        for eps, style in self.combos():
            shown = style if eps != 0 else "none"
            for seed in config.seeds:
                result.append(
                    Run(
                        key=f"sweep|main|{shown}|{eps:g}|{seed}",
                        experiment="sweep",
                        setting="main",
                        params={"style": shown, "eps": eps},
                        seed=seed,
                        execute=self._execute(eps, style, seed, keep=seed == config.seeds[0]),
                    )
                )
        return result

    def _execute(self, eps: float, style: str, seed: int, keep: bool) -> Any:
        def execute(_: RunContext) -> tuple[Metrics, Arrays | None]:
            return run_trial(
                self.train,
                eps,
                style,
                seed,
                select=self.config.select,
                n_bins=self.config.n_bins,
                keep_arrays=keep,
                patience=self.config.patience,
                pruner=self.pruner,
            )

        return execute

    def _check_picklable(self) -> None:
        try:
            pickle.dumps(self)
        except Exception as err:
            raise ConfigError(
                f"workers={self.config.workers} runs train in other processes, so it must "
                f"pickle (a function defined at module level, not a lambda or a closure): "
                f"{type(err).__name__}: {err}; use workers=1 or backend='ray'"
            ) from err

    def run(
        self, out: str | Path, *, quiet: bool = False, stream: TextIO | None = None
    ) -> dict[str, Any]:
        """Runs what ``out`` does not hold yet, then writes ``findings.json``, ``summary.csv``,
        ``figures/`` and ``report.html`` there. Returns the report's summary (paths, the
        verdict as text, the recommendation, the run counts).

        Raises :class:`~labelsmooth.study.config.ConfigError` when ``out`` holds another sweep
        (other settings or another version of the code) or is in use by another process.
        """
        stream = stream if stream is not None else sys.stderr
        runs = self.runs()
        config = self.config
        workers = config.workers
        if config.backend == "local" and workers > 1:
            self._check_picklable()
        info = {
            "dataset": self.name,
            "class_names": self.class_names,
            "multilabel": False,
            "planned_runs": len(runs),
            "notes": [],
            "settings": {"main": {"description": self.name}},
            "model_description": self.description,
            "profile": "sweep",
        }
        plan = Plan(runs=runs)
        folder = StudyFolder(out, config, "", info, argument="the folder")  # type: ignore[arg-type]
        with folder:
            store = ResultStore(out)
            execute_plan(
                plan.runs,
                store,
                config,
                fingerprint=folder.fingerprint,
                quiet=quiet,
                stream=stream,
                workers=workers,
                planner=self.runs,
                backend=config.backend,
            )
            self._record_sizes(Path(out), store, runs)
            return render_report(out)

    def _record_sizes(self, out: Path, store: ResultStore, runs: list[Run]) -> None:
        """Writes the sizes and the number of classes, known once a run has finished, into
        ``study.json`` for the report (its fingerprint is unchanged)."""
        study = read_study_json(out)
        if study.get("n_test"):
            return
        for run in runs:
            if store.status(run.key) != "ok" or run.seed != self.config.seeds[0]:
                continue
            try:
                arrays = store.load_arrays(run.key)
            except StudyFileError:  # sizes are optional; the report then shows "?"
                continue
            logits = arrays["logits"]
            study.update(
                {
                    "n_test": int(logits.shape[0]),
                    "n_val": int(arrays["n_val"]),
                    "num_classes": int(logits.shape[1]),
                }
            )
            sizes = {name: study[name] for name in ("n_test", "n_val", "num_classes")}
            study["settings"]["main"].update(sizes)
            atomic_write_json(out / "study.json", study)
            return
