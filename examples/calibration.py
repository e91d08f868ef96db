"""Calibration before and after temperature scaling, with and without label smoothing.

    python examples/calibration.py

Trains a small MLP on a synthetic 5-class problem whose classes overlap (so a perfect model
is still unsure), once with plain cross-entropy (eps = 0) and once with label smoothing
(eps = 0.1). For each model: the test ECE, NLL and mean confidence of the raw softmax, then
the temperature T fitted on a held-out validation split (``labelsmooth.metrics.
fit_temperature``) and the same numbers for ``softmax(logits / T)``. Needs only torch.
"""

from __future__ import annotations

import torch
from torch import nn

import labelsmooth as ls
from labelsmooth import metrics


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Five Gaussian classes in 20 dimensions whose means are close enough to overlap."""
    means = torch.randn(5, 20, generator=torch.Generator().manual_seed(0)) * 0.6
    labels = torch.randint(0, 5, (n,), generator=generator)
    return means[labels] + torch.randn(n, 20, generator=generator), labels


def train(eps: float, x: torch.Tensor, y: torch.Tensor, epochs: int = 150) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 5)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(100):
            optimizer.zero_grad()
            ls.cross_entropy(model(x[batch]), y[batch], eps).backward()
            optimizer.step()
    return model.eval()


def report(name: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
    probs = torch.softmax(logits, dim=1)
    print(
        f"  {name:<22} ECE {metrics.expected_calibration_error(probs, labels):.4f}   "
        f"NLL {metrics.negative_log_likelihood(probs, labels):.4f}   "
        f"confidence {probs.max(1).values.mean():.3f}"
    )


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(1)
    x_train, y_train = make_data(1000, generator)
    x_val, y_val = make_data(1000, generator)
    x_test, y_test = make_data(4000, generator)
    for eps in (0.0, 0.1):
        model = train(eps, x_train, y_train)
        with torch.no_grad():
            val_logits, test_logits = model(x_val), model(x_test)
        accuracy = (test_logits.argmax(1) == y_test).float().mean()
        temperature = metrics.fit_temperature(val_logits, y_val)
        print(f"eps = {eps:g}: test accuracy {accuracy:.4f}, fitted T = {temperature:.3f}")
        report("before scaling", test_logits, y_test)
        report(f"after scaling (T={temperature:.2f})", test_logits / temperature, y_test)


if __name__ == "__main__":
    main()
