"""The study's training loop and per-model measurements: the checkpoint rule, divergence, and
temperature scaling that is flagged rather than trusted at a bound."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labelsmooth.study.outputs import temperature_scaling
from labelsmooth.study.train import (
    TrainConfig,
    TrainingDivergedError,
    _better,
    train_classifier,
)


def _data(seed=0, n=120):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=generator)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=generator) > 0).long()
    return x, y


def _ce(logits, target):
    return nn.functional.cross_entropy(logits, target)


@pytest.mark.parametrize("select", ["accuracy", "nll", "final"])
def test_the_kept_epoch_follows_the_rule(select):
    x, y = _data()
    x_val, y_val = _data(seed=1, n=60)
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    result = train_classifier(
        model, _ce, x, y, TrainConfig(epochs=12, lr=0.05), validation=(x_val, y_val), select=select
    )
    history = result.history
    assert [h["epoch"] for h in history] == list(range(1, 13))
    if select == "final":
        expected = 12
    elif select == "nll":
        expected = min(history, key=lambda h: (h["nll"], h["epoch"]))["epoch"]
    else:
        expected = min(history, key=lambda h: (-h["accuracy"], h["nll"], h["epoch"]))["epoch"]
    assert result.best_epoch == expected
    # The model holds the kept epoch's weights: its validation NLL is that epoch's.
    with torch.no_grad():
        nll = float(nn.functional.cross_entropy(model(x_val).double(), y_val))
    assert nll == pytest.approx(history[expected - 1]["nll"], rel=1e-6)
    final = result.final_model()
    with torch.no_grad():
        final_nll = float(nn.functional.cross_entropy(final(x_val).double(), y_val))
    assert final_nll == pytest.approx(history[-1]["nll"], rel=1e-6)


def test_ties_in_accuracy_go_to_the_lower_nll_then_the_earlier_epoch():
    assert _better((0.9, 0.30), (0.9, 0.31), "accuracy")
    assert not _better((0.9, 0.31), (0.9, 0.31), "accuracy")  # equal: keep the earlier epoch
    assert _better((0.91, 0.50), (0.90, 0.10), "accuracy")
    assert _better((0.5, 0.10), (0.9, 0.11), "nll")


def test_without_validation_the_final_epoch_is_kept():
    x, y = _data()
    result = train_classifier(nn.Linear(5, 2), _ce, x, y, TrainConfig(epochs=3))
    assert result.best_epoch == 3 and result.history == []


def test_a_non_finite_loss_raises_diverged():
    x, y = _data()

    def exploding(logits, target):
        return _ce(logits, target) * float("inf")

    with pytest.raises(TrainingDivergedError, match="non-finite"):
        train_classifier(nn.Linear(5, 2), exploding, x, y, TrainConfig(epochs=2))


def test_select_is_checked():
    x, y = _data()
    with pytest.raises(ValueError, match="select must be one of accuracy, nll, final"):
        train_classifier(nn.Linear(5, 2), _ce, x, y, TrainConfig(epochs=1), select="best")


def test_temperature_at_a_bound_is_flagged_and_not_applied():
    # Separable validation data: the NLL keeps falling as T -> 0, so the fit stops at 0.01.
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 4.0]])
    labels = torch.tensor([0, 1, 0, 1])
    temperature, usable, before, after = temperature_scaling(logits, labels)
    assert temperature == pytest.approx(0.01) and usable is False
    assert after <= before


def test_a_useful_temperature_is_accepted():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (400,), generator=generator)
    # Over-confident logits: right 70% of the time but with a large margin.
    right = torch.rand(400, generator=generator) < 0.7
    predicted = torch.where(right, labels, (labels + 1) % 3)
    logits = 8.0 * nn.functional.one_hot(predicted, 3).float()
    temperature, usable, before, after = temperature_scaling(logits, labels)
    assert usable and temperature > 1 and after < before


def test_on_epoch_end_runs_after_each_epochs_updates_and_drives_online_label_smoothing():
    from labelsmooth.variants import OnlineLabelSmoothing

    x, y = _data()
    criterion = OnlineLabelSmoothing(2, alpha=0.5)
    seen = []

    def hook(epoch):
        seen.append((epoch, int(criterion.epoch_count.sum())))  # correct predictions counted
        criterion.epoch_end()

    torch.manual_seed(0)
    train_classifier(nn.Linear(5, 2), criterion, x, y, TrainConfig(epochs=3, lr=0.05),
                     on_epoch_end=hook)  # fmt: skip
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert all(count > 0 for _, count in seen)  # called after the epoch's updates
    # After the first epoch the soft targets come from its correct predictions: no longer the
    # uniform 1/K rows of the start.
    assert not torch.allclose(criterion.soft_targets, torch.full((2, 2), 0.5))


def test_the_variants_experiment_plans_every_arm_paired_by_seed_in_both_settings():
    from labelsmooth.study import experiments, registry
    from labelsmooth.study.config import make_config
    from labelsmooth.study.data import synthetic

    config = make_config({"seeds": [0, 1], "experiments": ["variants"]})
    plan = registry.plan(synthetic(seed=0), config)
    keys = [run.key for run in plan.runs]
    arms = list(experiments.VARIANT_ARMS)
    assert arms[:2] == ["baseline", "label_smoothing"]
    assert keys == [
        f"variants|{setting}|{arm}|{seed}"
        for setting in ("main", "overconfident")
        for arm in arms
        for seed in (0, 1)
    ]
    assert any("SVLS" in note for note in plan.notes)
