"""The ``labelsmooth`` command.

``labelsmooth demo`` trains a small classifier on scikit-learn's bundled digits with and
without label smoothing and prints test accuracy, NLL and mean confidence per eps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import torch

from . import _checks
from .functional import cross_entropy


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


def _float_list(text: str) -> list[float]:
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,0.1, got {text!r}"
        ) from err
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,1,2, got {text!r}"
        ) from err
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


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
    for eps in args.eps:
        accuracy, nll, confidence = [], [], []
        for seed in args.seeds:
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
        print(
            f"{eps:>6g}  {_mean_sd(accuracy):>17}  {_mean_sd(nll):>17}  {_mean_sd(confidence):>17}"
        )
    print(
        f"({len(args.eps) * len(args.seeds)} runs in {time.perf_counter() - start:.1f} s; "
        f"mean ± sd over seeds)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="labelsmooth",
        description="Label smoothing for PyTorch: losses, diagnostics and studies.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
