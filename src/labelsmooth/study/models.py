"""Small models for the study: an MLP whose last layer is the classifier."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``in -> [Linear -> ReLU] * depth -> Linear(num_classes)``.

    ``features(x)`` returns the penultimate-layer activations and ``classifier`` is the last
    layer, as the penultimate-layer projection of Mueller et al. (2019) needs.
    """

    def __init__(self, num_features: int, num_classes: int, width: int = 128, depth: int = 2):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        layers: list[nn.Module] = []
        size = num_features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(size, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))
