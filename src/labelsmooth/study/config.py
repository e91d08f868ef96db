"""Study configuration: defaults, the ``--quick`` profile, TOML files and their checks."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .. import _checks
from ..metrics import MAX_BINS
from .train import SELECT_RULES

EXPERIMENTS = (
    "sweep",
    "noise",
    "nls",
    "distillation",
    "lr",
    "multilabel",
    "sequence",
    "variants",
)
NOISE_KINDS = ("symmetric", "pairflip")


class ConfigError(ValueError):
    """A bad study setting: reported in one line, exit status 2."""


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study run depends on. Field names are the TOML keys and the CLI flags."""

    dataset: str = "digits"
    experiments: tuple[str, ...] = EXPERIMENTS
    eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    styles: tuple[str, ...] = ("uniform", "others")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 60
    width: int = 128
    depth: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    validation_fraction: float = 0.15
    # the checkpoint kept from each run: the best validation epoch by accuracy (ties: lower
    # NLL) or by NLL, or the final epoch
    select: str = "accuracy"
    # csv data sets: the label column's name or 0-based index ("" = a column named label,
    # target, y or class)
    label_column: str = ""
    n_bins: int = 15
    # second sweep setting, where the baseline is over-confident: "synthetic" (the generated
    # task with overlapping classes), "subset" (overconfident_train_size examples of the data
    # set, trained overconfident_epochs), or "auto" (synthetic for the built-in data sets,
    # subset for user files)
    overconfident_data: str = "auto"
    overconfident_train_size: int = 300
    overconfident_epochs: int = 200
    # label noise: the rates and kinds (symmetric: any other class; pairflip: class k -> k+1)
    noise_rates: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    # positive eps arms of the noise experiment (negative eps: nls_eps, fine-tuned)
    noise_eps: tuple[float, ...] = (0.1, 0.2, 0.4)
    # generalised (negative) label smoothing as Wei et al. (2022) train it: a CE warm-up kept at
    # its best validation epoch, then nls_epochs of fine-tuning at nls_lr with each eps
    nls_eps: tuple[float, ...] = (-0.2, -0.5, -1.0, -2.0)
    nls_noise_rates: tuple[float, ...] = (0.0, 0.4, 0.6)
    # lr x epochs ~ 1e-3 (quick: 1e-4 x 10): on clean digits eps=-2 then moves the logit norm
    # by ~1.6x over the fine-tune and stays within ~2 points of ce's accuracy, even at its end
    nls_lr: float = 3e-5
    nls_epochs: int = 30
    # distillation: teachers on part of the training split, students on the held-out rest
    teacher_eps: float = 0.1
    temperatures: tuple[float, ...] = (1.0, 2.0, 4.0)
    student_width: int = 32
    transfer_fraction: float = 0.5
    # Mueller et al. (2019) section 4: std of the Gaussian input noise, and draws per example
    mi_noise_std: float = 0.5
    mi_draws: int = 64
    # learning rate x eps grid
    lr_grid: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    lr_eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    # multi-label: eps of the binary smoothing arms, crossed with these learning rates
    multilabel_eps: tuple[float, ...] = (0.0, 0.05, 0.1)
    multilabel_lrs: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    # token-level experiment: a small Transformer language model on `text` ("" = the Python
    # documentation in pydoc_data.topics)
    text: str = ""
    sequence_eps: tuple[float, ...] = (0.0, 0.1)
    sequence_vocab: int = 4000
    sequence_length: int = 64
    sequence_width: int = 64
    sequence_layers: int = 2
    sequence_epochs: int = 4
    sequence_max_tokens: int = 0  # 0: every token of the text
    # Adam's lr and the pieces per batch of the language model (not lr / batch_size: the MLP's
    # 64 examples per batch give a Transformer too few steps on a small text). 3e-3 had the
    # lowest validation token NLL of {1e-3, 3e-3, 1e-2} at eps 0 on the built-in text (seeds 0
    # and 1, 4 epochs: 4.12, 4.02, 4.22); the test set played no part in the choice.
    sequence_lr: float = 3e-3
    sequence_batch_size: int = 16
    projection_classes: tuple[int, int, int] = (0, 1, 2)
    max_train: int = 0  # 0: use every training example
    device: str = "cpu"
    # torch threads per process. The study's networks are small: one thread is as fast as two
    # on an idle 2-core machine (70 s against 66 s for --quick) and stays fast when the machine
    # is shared (two studies at once: 72 s each with one thread, over 10 minutes with two).
    # 0: torch's default.
    threads: int = 1
    # parallel worker processes (each with `threads` torch threads); 0: one per CPU core
    workers: int = 0
    # where the workers run: "local" processes or "ray" actors (the `ray` extra)
    backend: str = "local"
    # caps on untrusted data files (see labelsmooth.study.data.Limits): bytes of values counted
    # as float64, and classes; 0: the environment variable LABELSMOOTH_MAX_DATA_BYTES /
    # LABELSMOOTH_MAX_CLASSES, else 2 GiB / 1000
    max_data_bytes: int = 0
    max_classes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def numeric_settings(self) -> dict[str, Any]:
        """Every setting that can change a number (not threads or workers), JSON-ready."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in self.as_dict().items()
            if name not in RUNTIME_SETTINGS
        }

    def fingerprint(self, data_fingerprint: str = "") -> str:
        """A hash of :meth:`numeric_settings` and the data set's contents: a study folder holds
        exactly one fingerprint."""
        payload = {"settings": self.numeric_settings(), "data": data_fingerprint}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Settings that change how fast a study runs, or whether a data set is accepted, but never a
# number it reports.
RUNTIME_SETTINGS = ("threads", "workers", "backend", "max_data_bytes", "max_classes")

QUICK = {
    "epochs": 20,
    "overconfident_epochs": 60,
    "overconfident_train_size": 300,
    "seeds": (0, 1, 2),
    "noise_rates": (0.4,),
    "noise_eps": (0.1, 0.4),
    "nls_eps": (-0.5, -2.0),
    "nls_noise_rates": (0.0, 0.4),
    "nls_epochs": 10,
    "nls_lr": 1e-4,
    "temperatures": (1.0, 4.0),
    "lr_grid": (1e-3, 1e-2),
    "lr_eps": (0.0, 0.1),
    "multilabel_eps": (0.0, 0.1),
    "multilabel_lrs": (1e-3, 1e-2),
    "sequence_max_tokens": 20000,
}

_TUPLE_TYPES = {
    "experiments": str,
    "eps": float,
    "styles": str,
    "seeds": int,
    "noise_rates": float,
    "noise_kinds": str,
    "noise_eps": float,
    "nls_eps": float,
    "nls_noise_rates": float,
    "temperatures": float,
    "lr_grid": float,
    "lr_eps": float,
    "multilabel_eps": float,
    "multilabel_lrs": float,
    "sequence_eps": float,
    "projection_classes": int,
}


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _item(name: str, kind: type, value: Any) -> Any:
    """``value`` as ``kind``: an int must be an integer (not a bool, not 2.5 or "2"); a float
    may be an int; a string must be a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        ok = False
    elif kind is float:
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{name} must be {_KIND_NAMES[kind]}, got {_show(value)}")
    return value


def _coerce(name: str, value: Any) -> Any:
    default = {f.name: f.default for f in fields(StudyConfig)}[name]
    if name in _TUPLE_TYPES:
        kind = _TUPLE_TYPES[name]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if not value:
            raise ConfigError(f"{name} must be a non-empty list, got {_show(value)}")
        try:
            return tuple(_item(name, kind, item) for item in value)
        except ConfigError as err:
            raise ConfigError(
                f"{name} must be a list of {kind.__name__}s, got {_show(value)}"
            ) from err
    if name == "label_column" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if name == "max_data_bytes" and isinstance(value, str):
        from .data import parse_size

        try:
            return parse_size(value, name)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    return _item(name, type(default), value)


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError as err:
        raise ConfigError(f"--config: {path} does not exist") from err
    except OSError as err:
        raise ConfigError(f"--config: cannot read {path} ({err.strerror or err})") from err
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not a TOML error
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"--config: {path} is not UTF-8 text (byte {err.start}: {err.reason}); TOML files "
            "are UTF-8"
        ) from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config: {path} is not valid TOML ({err})") from err
    table = data.get("study", data)
    if not isinstance(table, dict):
        raise ConfigError(
            f"--config: {path}: study must be a table ([study] with settings under it), "
            f"got {_show(table)}"
        )
    values = {key.replace("-", "_"): value for key, value in table.items()}
    try:
        _check_names(values)
        for name, value in values.items():
            _coerce(name, value)
    except ConfigError as err:
        raise ConfigError(f"--config: {path}: {err}") from err
    return values


def _check_names(overrides: dict[str, Any]) -> None:
    known = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
        )


def make_config(overrides: dict[str, Any], *, quick: bool = False) -> StudyConfig:
    """Defaults, then the quick profile, then ``overrides`` (config file, then flags)."""
    _check_names(overrides)
    values: dict[str, Any] = dict(QUICK) if quick else {}
    for name, value in overrides.items():
        if value is not None:
            values[name] = _coerce(name, value)
    config = dataclasses.replace(StudyConfig(), **values)
    check_config(config)
    return config


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value}")


def check_config(config: StudyConfig, num_classes: int | None = None) -> None:
    """Checks every setting; with ``num_classes`` also the eps ranges that depend on K."""
    for name in config.experiments:
        if name not in EXPERIMENTS:
            raise ConfigError(
                f"experiments: unknown {name!r}; choose from {', '.join(EXPERIMENTS)}"
            )
    for style in config.styles:
        if style not in _checks.STYLES:
            raise ConfigError(f"styles: unknown {style!r}; choose from uniform, others")
    for name in (
        "epochs",
        "width",
        "depth",
        "batch_size",
        "n_bins",
        "student_width",
        "overconfident_train_size",
        "overconfident_epochs",
        "nls_epochs",
        "mi_draws",
        "sequence_vocab",
        "sequence_length",
        "sequence_width",
        "sequence_layers",
        "sequence_epochs",
        "sequence_batch_size",
    ):
        _check_positive(name, getattr(config, name))
    for name in ("lr", "nls_lr", "mi_noise_std", "sequence_lr"):
        _check_positive(name, getattr(config, name))
        if not math.isfinite(getattr(config, name)):
            raise ConfigError(f"{name} must be finite, got {getattr(config, name)}")
    for name in ("lr_grid", "multilabel_lrs"):
        for value in getattr(config, name):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name}: {value} must be > 0 and finite")
    for kind in config.noise_kinds:
        if kind not in NOISE_KINDS:
            raise ConfigError(
                f"noise_kinds: unknown {kind!r}; choose from {', '.join(NOISE_KINDS)}"
            )
    for eps in config.noise_eps:
        if not 0 < eps < 1:
            raise ConfigError(
                f"noise_eps: {eps} must be in (0, 1) (negative eps is fine-tuned: nls_eps)"
            )
    for eps in config.nls_eps:
        if not (eps < 0 and math.isfinite(eps)):
            raise ConfigError(f"nls_eps: {eps} must be negative (and finite)")
    for rate in config.nls_noise_rates:
        if not 0 <= rate < 1:
            raise ConfigError(f"nls_noise_rates: {rate} is outside [0, 1)")
    if not 0 < config.transfer_fraction < 1:
        raise ConfigError(f"transfer_fraction must be in (0, 1), got {config.transfer_fraction}")
    if config.sequence_max_tokens < 0:
        raise ConfigError(
            f"sequence_max_tokens must be >= 0 (0: every token), got {config.sequence_max_tokens}"
        )
    if config.sequence_vocab < 16:
        raise ConfigError(f"sequence_vocab must be >= 16, got {config.sequence_vocab}")
    if config.overconfident_data not in ("auto", "synthetic", "subset"):
        raise ConfigError(
            f"overconfident_data must be auto, synthetic or subset, "
            f"got {config.overconfident_data!r}"
        )
    if config.threads < 0:
        raise ConfigError(f"threads must be >= 0 (0: torch's default), got {config.threads}")
    if config.max_train < 0:
        raise ConfigError(f"max_train must be >= 0, got {config.max_train}")
    if not 0 < config.validation_fraction < 0.5:
        raise ConfigError(
            f"validation_fraction must be in (0, 0.5), got {config.validation_fraction}"
        )
    if config.backend not in ("local", "ray"):
        raise ConfigError(f"backend must be local or ray, got {config.backend!r}")
    if config.select not in SELECT_RULES:
        raise ConfigError(f"select must be one of {', '.join(SELECT_RULES)}, got {config.select!r}")
    if config.workers < 0:
        raise ConfigError(f"workers must be >= 0 (0: one per CPU core), got {config.workers}")
    if config.max_data_bytes < 0:
        raise ConfigError(
            f"max_data_bytes must be >= 0 (0: the default), got {config.max_data_bytes}"
        )
    if config.max_classes < 0 or config.max_classes == 1:
        raise ConfigError(f"max_classes must be >= 2 (0: the default), got {config.max_classes}")
    if config.n_bins > MAX_BINS:
        raise ConfigError(f"n_bins must be <= {MAX_BINS}, got {config.n_bins}")
    if len(config.seeds) < 2:
        raise ConfigError(
            f"seeds: at least 2 are needed for a paired interval (5 recommended), "
            f"got {list(config.seeds)}"
        )
    if len(set(config.seeds)) != len(config.seeds):
        raise ConfigError(f"seeds must be distinct, got {list(config.seeds)}")
    for rate in config.noise_rates:
        if not 0 <= rate < 1:
            raise ConfigError(f"noise_rates: {rate} is outside [0, 1)")
    for temperature in config.temperatures:
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ConfigError(f"temperatures: {temperature} must be > 0")
    if len(config.projection_classes) != 3 or len(set(config.projection_classes)) != 3:
        raise ConfigError(
            f"projection_classes must be three distinct classes, got {config.projection_classes}"
        )
    k = num_classes if num_classes is not None else None
    checks: list[tuple[str, float, str, dict[str, Any]]] = [
        *(("eps", eps, style, {}) for eps in config.eps for style in config.styles),
        *(("noise_eps", eps, "uniform", {}) for eps in config.noise_eps),
        *(("lr_eps", eps, "uniform", {}) for eps in config.lr_eps),
        ("teacher_eps", config.teacher_eps, "uniform", {"kl": True}),
        *(
            ("multilabel_eps", eps, style, {"binary": True})
            for eps in config.multilabel_eps
            for style in config.styles
        ),
    ]
    for name, eps, style, options in checks:
        try:
            _checks.check_eps(eps, 2 if options.get("binary") else k, style, **options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: {err}") from err
    for eps in config.sequence_eps:  # K is the corpus's vocabulary, checked when it is built
        if not (0 <= eps < 1):
            raise ConfigError(
                f"sequence_eps: {eps} is outside [0, 1); the sequence experiment compares eps >= 0 "
                "with eps 0"
            )
    if not config.device.startswith(("cpu", "cuda", "mps")):
        raise ConfigError(f"device must be cpu, cuda[:N] or mps, got {config.device!r}")


def default_config_dict() -> dict[str, Any]:
    return {f.name: f.default for f in fields(StudyConfig)}


__all__ = [
    "EXPERIMENTS",
    "NOISE_KINDS",
    "QUICK",
    "RUNTIME_SETTINGS",
    "SELECT_RULES",
    "ConfigError",
    "StudyConfig",
    "check_config",
    "default_config_dict",
    "load_toml",
    "make_config",
]
