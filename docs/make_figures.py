"""Regenerates the figures in docs/ from real models (about 10 s on a laptop CPU).

    .venv/bin/python docs/make_figures.py

docs/reliability_diagram.png: a two-hidden-layer MLP trained on scikit-learn's bundled
handwritten digits (1797 8x8 images, nothing is downloaded) with plain cross-entropy
(eps = 0) and with label smoothing (eps = 0.1, ``labelsmooth.cross_entropy``), same seed and
schedule; top row: reliability diagrams on the held-out test images, bottom row: the
distribution of the top-label confidence. Needs the ``study`` extra (matplotlib,
scikit-learn).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import labelsmooth as ls
from labelsmooth import metrics, plots

HERE = Path(__file__).resolve().parent


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """70/30 stratified split of the digits, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x / 16.0, y, test_size=0.3, stratify=y, random_state=seed
    )
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def train(
    eps: float, x: torch.Tensor, y: torch.Tensor, *, seed: int = 0, epochs: int = 60
) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            ls.cross_entropy(model(x[batch]), y[batch], eps).backward()
            optimizer.step()
    return model.eval()


def reliability_figure(out: Path, epsilons: tuple[float, ...] = (0.0, 0.1)) -> None:
    x_train, y_train, x_test, y_test = digits()
    figure = Figure(figsize=(4.2 * len(epsilons), 8.0), layout="constrained")
    axes = figure.subplots(2, len(epsilons), squeeze=False)
    for column, eps in enumerate(epsilons):
        model = train(eps, x_train, y_train)
        with torch.no_grad():
            probs = torch.softmax(model(x_test).double(), dim=1)
        ece = metrics.expected_calibration_error(probs, y_test)
        accuracy = float((probs.argmax(1) == y_test).double().mean())
        print(
            f"eps={eps:g}: accuracy {accuracy:.4f}, ECE {ece:.4f}, "
            f"NLL {metrics.negative_log_likelihood(probs, y_test):.4f}, "
            f"mean confidence {float(probs.max(1).values.mean()):.4f}"
        )
        plots.reliability_diagram(probs, y_test, ax=axes[0, column], title=f"eps = {eps:g}")
        plots.confidence_histogram(
            probs, y_test, ax=axes[1, column], bins=20, title=f"eps = {eps:g}: output distribution"
        )
    figure.suptitle(f"MLP on scikit-learn digits, {len(x_test)} test images (15 equal-width bins)")
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "reliability_diagram.png")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    np.set_printoptions(precision=4)
    reliability_figure(args.out)


if __name__ == "__main__":
    main()
