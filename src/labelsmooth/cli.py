"""The ``labelsmooth`` command.

* ``labelsmooth study``: the main job — trains real models with and without smoothing and
  writes the evidence (results.jsonl, summary.csv, figures, report.html).
* ``labelsmooth report DIR``: re-renders the report from saved results.
* ``labelsmooth diagnose FILE``: diagnoses a trained model from its saved logits and labels
  (calibration, temperature, logit gap and the eps it implies, a loss check).
* ``labelsmooth demo``: a short taste on the bundled digits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch

from . import _checks
from .functional import cross_entropy


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


def _parse_list(text: str, kind: type, what: str, example: str) -> list:
    """A comma-separated list of ``kind`` values for argparse, with a one-line error."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated {what}s such as {example}, got {text!r}"
        ) from err
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one {what}, got {text!r}")
    return values


def _float_list(text: str) -> list[float]:
    return _parse_list(text, float, "number", "0,0.1")


def _int_list(text: str) -> list[int]:
    return _parse_list(text, int, "integer", "0,1,2")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _byte_size(text: str) -> int:
    from .study.data import parse_size

    try:
        return parse_size(text, "--max-data-bytes")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _os_error(err: OSError) -> str:
    """An OSError in one line: the file and the reason, no traceback."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"


def _mean_sd(values: Sequence[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {sd:.4f}"


def run_demo(args: argparse.Namespace) -> int:
    from .study.data import load_digits
    from .study.models import MLP
    from .study.train import TrainConfig, predict_logits, train_classifier

    for eps in args.eps:
        try:
            _checks.check_eps(eps, 10, args.style)
        except ValueError as err:
            raise UsageError(f"--eps: {err}") from err
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    data = load_digits(seed=0)
    print(
        f"digits: {len(data.x_train)} train / {len(data.x_test)} test images, "
        f"{data.num_classes} classes; MLP width {args.width}, {args.epochs} epochs, "
        f"style={args.style!r}, seeds {args.seeds}"
    )
    header = f"{'eps':>6}  {'accuracy':>17}  {'NLL':>17}  {'mean confidence':>17}"
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    from .study.runner import Progress

    progress = Progress(len(args.eps) * len(args.seeds), 0, quiet=False)
    for eps in args.eps:
        accuracy, nll, confidence = [], [], []
        for seed in args.seeds:
            progress.show(f"eps={eps:g} seed={seed}")
            progress.advance()
            torch.manual_seed(seed)
            model = MLP(data.num_features, data.num_classes, width=args.width)

            def loss_fn(logits, target, eps=eps):
                return cross_entropy(logits, target, eps, style=args.style)

            config = TrainConfig(epochs=args.epochs, seed=seed)
            train_classifier(model, loss_fn, data.x_train, data.y_train, config)
            logits = predict_logits(model, data.x_test)
            probs = logits.softmax(-1)
            accuracy.append((logits.argmax(-1) == data.y_test).float().mean().item())
            nll.append(cross_entropy(logits, data.y_test, 0.0).item())
            confidence.append(probs.max(-1).values.mean().item())
        progress.clear()
        print(
            f"{eps:>6g}  {_mean_sd(accuracy):>17}  {_mean_sd(nll):>17}  {_mean_sd(confidence):>17}"
        )
    print(
        f"({len(args.eps) * len(args.seeds)} runs in {time.perf_counter() - start:.1f} s; "
        f"mean ± sd over seeds)"
    )
    return 0


def _study_overrides(args: argparse.Namespace) -> dict:
    from .study.config import ConfigError, load_toml

    overrides: dict = {}
    if args.config:
        overrides.update(load_toml(args.config))
        args.config_keys = set(overrides)
    for name in _STUDY_FLAGS:
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if "dataset" in overrides and not isinstance(overrides["dataset"], str):
        raise ConfigError(f"dataset must be a string, got {overrides['dataset']!r}")
    return overrides


def run_study_command(args: argparse.Namespace) -> int:
    from .study.config import ConfigError, make_config
    from .study.data import DatasetError
    from .study.main import run_study
    from .study.parallel import shutdown
    from .study.runner import OutputError

    out = Path(args.out or (DEFAULT_OUT_QUICK if args.quick else DEFAULT_OUT))
    try:
        try:
            config = make_config(_study_overrides(args), quick=args.quick)
        except ConfigError as err:
            # a value the config file set (not a flag): name the file
            name = str(err).split(" ", 1)[0].rstrip(":")
            if name in getattr(args, "config_keys", ()) and getattr(args, name, None) is None:
                raise ConfigError(f"--config: {args.config}: {err}") from err
            raise
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out: {out} exists and is not a directory")
        start = time.perf_counter()
        summary = run_study(
            config, out, quiet=args.quiet, profile="quick" if args.quick else "full"
        )
    except OutputError as err:
        kept = out / "results.jsonl"
        raise UsageError(
            f"--out {out}: {err}; the runs finished before are kept in {kept}: free space or "
            "make the folder writable, then run the same command again to resume"
        ) from err
    except (ConfigError, DatasetError) as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(_os_error(err)) from err
    except KeyboardInterrupt:
        print(
            "\nlabelsmooth study: interrupted; finished runs are saved in results.jsonl of "
            "the output folder — run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    finally:
        shutdown()
    if summary["rank"] != 0:
        return 0  # rank 0 of a data-parallel study reports for everyone
    resumed = summary["total_runs"] - summary["computed"]
    print(
        f"\n{summary['dataset']}: {summary['total_runs']} runs ({summary['computed']} trained now, "
        f"{resumed} resumed from {out / 'results.jsonl'}) in {time.perf_counter() - start:.0f} s"
    )
    if summary["world_size"] > 1:
        print(f"data-parallel over {summary['world_size']} processes; rank 0 wrote the results")
    _print_verdict(summary)
    print(
        f"\nreport: {summary['report']}\nfindings: {summary['findings']}\n"
        f"summary: {summary['summary']}"
    )
    return 0


def _print_verdict(summary: dict) -> None:
    runs = summary.get("runs", {})
    if runs and not summary.get("complete", True):
        print(f"partial: {runs['finished']} of {runs['planned']} runs finished")
    if runs.get("diverged"):
        print(f"{runs['diverged']} runs diverged (counted in the report, left out of the means)")
    if summary.get("verdict_table"):
        print("\nverdict (mean; paired difference to the baseline [95% CI]):")
        print(summary["verdict_table"])
    if summary.get("recommendation"):
        print(f"\nrecommendation: {summary['recommendation']}")


def run_report_command(args: argparse.Namespace) -> int:
    from .study.report import render_report

    try:
        summary = render_report(args.directory)
    except ValueError as err:  # ConfigError, StudyFileError, OutputError, DatasetError
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(str(err) if not err.filename else _os_error(err)) from err
    _print_verdict(summary)
    print(f"\nreport: {summary['report']}\nfindings: {summary['findings']}")
    return 0


_DIAGNOSE_ARGUMENTS = ("eps", "style", "n_bootstrap", "seed")


def run_diagnose_command(args: argparse.Namespace) -> int:
    from .diagnosis import diagnose, load_outputs

    try:
        outputs = load_outputs(args.file)
    except ValueError as err:
        raise UsageError(str(err)) from err
    except OSError as err:
        raise UsageError(_os_error(err)) from err
    if args.loss is not None:
        outputs["loss"] = args.loss
    try:
        result = diagnose(
            **outputs,
            task=args.task,
            eps=args.eps,
            style=args.style,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
        )
    except (ValueError, TypeError) as err:
        name = str(err).split(" ", 1)[0]
        if name in _DIAGNOSE_ARGUMENTS or (name == "loss" and args.loss is not None):
            raise UsageError(f"--{name.replace('_', '-')}: {err}") from err
        raise UsageError(f"{args.file}: {err}") from err
    paths = None
    if args.out:
        try:
            paths = result.save(args.out)
        except ValueError as err:
            raise UsageError(f"--out: {err}") from err
        except OSError as err:
            raise UsageError(f"--out {args.out}: {_os_error(err)}") from err
    if args.json:
        print(result.to_json(), end="")
        return 0
    print(result.summary())
    if paths:
        print(f"\nwrote {paths[0]} and {paths[1]}")
    else:
        print("\n(pass --out DIR to write diagnosis.json and diagnosis.html)")
    return 0


def _add_diagnose_parser(commands: argparse._SubParsersAction) -> None:
    from .diagnosis import CSV_LAYOUT, DEFAULT_N_BOOTSTRAP, TASKS

    diagnose = commands.add_parser(
        "diagnose",
        help="diagnose a trained model from its logits: calibration, temperature, the eps its "
        "logit gaps imply, a loss check",
        description="Reads a model's logits and labels from FILE and reports accuracy, NLL, "
        "Brier, ECE, AURC (with bootstrap intervals), the fitted temperature and the metrics "
        "after it, the median logit gap and the eps it implies under each smoothing "
        "convention, and a verdict in plain words. FILE: .npz (np.savez; arrays logits, "
        "labels; optional val_logits/val_labels to fit the temperature on, "
        "train_logits/train_labels, loss; never unpickled), .pt/.pth (a dict of tensors with "
        f"the same keys, read with torch.load(weights_only=True)), or .csv ({CSV_LAYOUT}).",
    )
    diagnose.add_argument("file", metavar="FILE", help="the .npz, .pt or .csv file")
    diagnose.add_argument("--task", choices=TASKS, default="multiclass", help="default: multiclass")
    diagnose.add_argument("--eps", type=float, help="the smoothing rate the model was trained with")
    diagnose.add_argument(
        "--style",
        choices=_checks.STYLES,
        help="the convention of --eps (default: compare with both)",
    )
    diagnose.add_argument(
        "--loss",
        type=float,
        help="the mean loss your training code computes, evaluated on these logits and labels, "
        "to check against the reference implementation (overrides the file's loss)",
    )
    diagnose.add_argument(
        "--out", metavar="DIR", help="write DIR/diagnosis.json and DIR/diagnosis.html"
    )
    diagnose.add_argument(
        "--json", action="store_true", help="print the JSON instead of the summary"
    )
    diagnose.add_argument(
        "--n-bootstrap",
        dest="n_bootstrap",
        type=int,
        default=DEFAULT_N_BOOTSTRAP,
        help=f"bootstrap resamples of the intervals, 0 for none (default: {DEFAULT_N_BOOTSTRAP})",
    )
    diagnose.add_argument("--seed", type=int, default=0, help="of the bootstrap (default: 0)")
    diagnose.set_defaults(handler=run_diagnose_command)


_STUDY_FLAGS = (
    "dataset",
    "experiments",
    "eps",
    "styles",
    "seeds",
    "epochs",
    "width",
    "noise_rates",
    "noise_eps",
    "temperatures",
    "device",
    "threads",
    "workers",
    "backend",
    "select",
    "label_column",
    "max_train",
    "max_data_bytes",
    "max_classes",
    "text",
)

DEFAULT_OUT = "labelsmooth-study"
DEFAULT_OUT_QUICK = "labelsmooth-study-quick"

CSV_FORMAT = (
    "CSV files: one example per row, a header row naming the columns, numeric feature "
    "columns, and a label column named label, target, y or class (or chosen with "
    "--label-column NAME|INDEX). Labels may be numbers or strings; they are mapped to "
    "0..K-1 in sorted order and the report shows the mapping."
)


def _str_list(text: str) -> list[str]:
    values = [item.strip() for item in text.split(",") if item.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return values


def _add_study_parser(commands: argparse._SubParsersAction) -> None:
    from .study.config import EXPERIMENTS, QUICK, SELECT_RULES, StudyConfig
    from .study.data import DATASETS

    defaults = StudyConfig()

    def show(values: object) -> str:
        if isinstance(values, tuple):
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
        return str(values)

    study = commands.add_parser(
        "study",
        help="train models with and without smoothing and write a report (the main job)",
        description="Trains real models with and without label smoothing and writes "
        "study.json, results.jsonl, findings.json, summary.csv, figures/*.png and report.html "
        "(opening with the verdict) to --out. Every choice is made on validation data and "
        "every comparison is paired by seed with a 95% interval. Re-running the same command "
        "resumes: finished runs are skipped. Settings come from the defaults, then --quick, "
        "then --config, then the flags.",
    )
    study.add_argument(
        "--dataset",
        help=f"one of {', '.join(DATASETS)} (default: {defaults.dataset}). {CSV_FORMAT}",
    )
    study.add_argument(
        "--label-column",
        dest="label_column",
        help="csv data sets: the label column's name or 0-based index (default: the column "
        "named label, target, y or class)",
    )
    study.add_argument(
        "--config",
        help="TOML file with any of the settings below "
        "(keys as the flags, with _ or -, optionally under [study])",
    )
    study.add_argument(
        "--experiments",
        type=_str_list,
        help=f"comma-separated subset of {','.join(EXPERIMENTS)} "
        f"(default: {show(defaults.experiments)})",
    )
    study.add_argument(
        "--eps", type=_float_list, help=f"eps values of the sweep (default: {show(defaults.eps)})"
    )
    study.add_argument(
        "--styles", type=_str_list, help=f"smoothing styles (default: {show(defaults.styles)})"
    )
    study.add_argument(
        "--seeds",
        type=_int_list,
        help=f"seeds; every comparison is paired by seed, so at least 2 (default: "
        f"{show(defaults.seeds)}; --quick: {show(QUICK['seeds'])}, with wide intervals)",
    )
    study.add_argument(
        "--select",
        choices=SELECT_RULES,
        help="the checkpoint kept from each run: best validation accuracy (ties: lower NLL), "
        f"lowest validation NLL, or the final epoch (default: {defaults.select})",
    )
    study.add_argument(
        "--max-train",
        dest="max_train",
        type=int,
        help="use at most this many training examples, stratified (default: all; the study "
        "warns before training when a data set would take far longer than the profile)",
    )
    study.add_argument(
        "--max-data-bytes",
        dest="max_data_bytes",
        type=_byte_size,
        help="refuse a data file whose values would take more memory than this, counted as "
        "float64, e.g. 4G (default: $LABELSMOOTH_MAX_DATA_BYTES or 2G); checked before "
        "anything is decompressed",
    )
    study.add_argument(
        "--max-classes",
        dest="max_classes",
        type=_positive_int,
        help="refuse a data set with more classes than this (default: "
        "$LABELSMOOTH_MAX_CLASSES or 1000)",
    )
    study.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"training epochs (default: {defaults.epochs}; --quick: {QUICK['epochs']})",
    )
    study.add_argument(
        "--width", type=_positive_int, help=f"hidden width of the MLP (default: {defaults.width})"
    )
    study.add_argument(
        "--noise-rates",
        dest="noise_rates",
        type=_float_list,
        help=f"label-noise rates (default: {show(defaults.noise_rates)})",
    )
    study.add_argument(
        "--noise-eps",
        dest="noise_eps",
        type=_float_list,
        help=f"eps values of the noise study (default: {show(defaults.noise_eps)})",
    )
    study.add_argument(
        "--temperatures",
        type=_float_list,
        help=f"distillation temperatures (default: {show(defaults.temperatures)})",
    )
    study.add_argument(
        "--text",
        help="the sequence experiment's corpus: a UTF-8 text file, one document per paragraph "
        "(blocks separated by a blank line) (default: the Python documentation in "
        "pydoc_data.topics)",
    )
    study.add_argument("--device", help=f"torch device (default: {defaults.device})")
    study.add_argument(
        "--threads",
        type=int,
        help=f"torch threads per process, 0 for torch's default (default: {defaults.threads}: "
        "the networks are small, and one thread stays fast on a shared machine)",
    )
    study.add_argument(
        "--workers",
        type=int,
        help="parallel worker processes, each with --threads torch threads (default: one per "
        "CPU core)",
    )
    study.add_argument(
        "--backend",
        choices=("local", "ray"),
        help="where the workers run: local processes, or Ray actors on the cluster `ray.init` "
        'connects to (a local one if none; pip install "labelsmooth[ray]") (default: local)',
    )
    study.add_argument(
        "--out",
        help=f"output folder; it holds one configuration: the same command resumes, a "
        f"different one is refused (default: {DEFAULT_OUT}; --quick: {DEFAULT_OUT_QUICK})",
    )
    study.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['epochs']} epochs and {len(QUICK['seeds'])} seeds instead of "
        f"{defaults.epochs} and {len(defaults.seeds)}, into its own default folder",
    )
    study.add_argument("--quiet", action="store_true", help="no progress bar")
    study.set_defaults(handler=run_study_command)

    report = commands.add_parser(
        "report",
        help="re-render the report from a study's saved results",
        description="Re-renders findings.json, summary.csv, figures and report.html from DIR.",
    )
    report.add_argument("directory", help="the study's --out directory")
    report.set_defaults(handler=run_report_command)


BENCHMARKS = {
    "cross-entropy": "bench_cross_entropy.py",
    "linear": "bench_linear_cross_entropy.py",
}


def run_bench_command(args: argparse.Namespace) -> int:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / BENCHMARKS[args.which]
    if not script.exists():
        raise UsageError(
            f"{script} not found: the benchmarks live in the source tree; run from a clone "
            "installed with `make install` or `pip install -e .`"
        )
    return subprocess.call([sys.executable, str(script), *args.options], cwd=root)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``labelsmooth study: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _OneLineParser(
        prog="labelsmooth",
        description="Label smoothing for PyTorch: losses, diagnostics and studies.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"labelsmooth {__version__} (torch {torch.__version__})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    _add_study_parser(commands)
    _add_diagnose_parser(commands)
    bench = commands.add_parser(
        "bench",
        help="benchmark the fused losses against PyTorch (time, memory, accuracy)",
        description="Runs benchmarks/bench_cross_entropy.py (or, with 'linear', "
        "bench_linear_cross_entropy.py) from the source tree: a table of implementation x "
        "shape x dtype with the median forward+backward time, the ratio to native PyTorch "
        "measured in the same run, peak memory (a fresh process per measurement) and the "
        "difference to the reference. Options after the name go to the script, e.g. "
        "`labelsmooth bench cross-entropy --quick`.",
    )
    bench.add_argument("which", choices=sorted(BENCHMARKS), nargs="?", default="cross-entropy")
    bench.add_argument("options", nargs=argparse.REMAINDER, help="options for the script")
    bench.set_defaults(handler=run_bench_command)
    demo = commands.add_parser(
        "demo",
        help="train a classifier on the bundled digits with and without smoothing",
        description="Trains an MLP on scikit-learn's bundled digits for each eps and seed and "
        "prints test accuracy, NLL and mean confidence (mean ± sd over seeds).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--eps", type=_float_list, default=[0.0, 0.1], help="comma-separated smoothing rates"
    )
    demo.add_argument(
        "--style", choices=_checks.STYLES, default="uniform", help="smoothing convention"
    )
    demo.add_argument("--seeds", type=_int_list, default=[0, 1, 2], help="comma-separated seeds")
    demo.add_argument("--epochs", type=_positive_int, default=60, help="training epochs")
    demo.add_argument("--width", type=_positive_int, default=128, help="hidden layer width")
    demo.set_defaults(handler=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a bare `labelsmooth` shows what it can do
        parser.print_help()
        return 0
    try:
        return args.handler(args)
    except UsageError as err:
        print(f"labelsmooth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labelsmooth: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
