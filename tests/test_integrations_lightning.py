"""labelsmooth.integrations.lightning: the logged values equal labelsmooth.metrics directly."""

import doctest

import pytest

lightning = pytest.importorskip("lightning")

import torch  # noqa: E402
from lightning.pytorch import LightningModule, Trainer  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import labelsmooth as ls  # noqa: E402
import labelsmooth.integrations.lightning as lsl  # noqa: E402

C, T = 4, 6


class Classifier(LightningModule):
    """A linear model; validation_step returns a dict or a tuple."""

    def __init__(self, as_tuple=False):
        super().__init__()
        self.linear = torch.nn.Linear(8, C)
        self.as_tuple = as_tuple

    def forward(self, x):
        return self.linear(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y, ignore_index=-100)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        return (logits, y) if self.as_tuple else {"logits": logits, "labels": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


class Sequence(Classifier):
    """(B, T, 8) inputs, (B, T, C) logits, (B, T) labels padded with -100."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten())


def _data(seed, sequence=False):
    generator = torch.Generator().manual_seed(seed)
    shape = (48, T) if sequence else (96,)
    x = torch.randn(*shape, 8, generator=generator)
    y = (x[..., :C].argmax(-1) + (torch.rand(shape, generator=generator) < 0.3)) % C
    if sequence:  # ragged lengths: the tail of each row is padding
        lengths = torch.randint(1, T + 1, (shape[0],), generator=generator)
        y[torch.arange(T) >= lengths[:, None]] = -100
    return x, y


def _fit(model, callback, tmp_path, sequence=False, logger=None):
    torch.manual_seed(0)
    train, val = _data(0, sequence), _data(1, sequence)
    trainer = Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=CSVLogger(tmp_path) if logger is None else logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(*train), batch_size=16),
        DataLoader(TensorDataset(*val), batch_size=10),  # a short last batch
    )
    return trainer, val


def _direct(model, val, ignore_index=-100):
    """The metrics of the final model on the whole validation set, all rows at once."""
    model.eval()
    with torch.no_grad():
        logits = model(val[0])
    logits, labels = logits.reshape(-1, C), val[1].reshape(-1)
    probs = torch.softmax(logits.double(), dim=1)
    kw = {"ignore_index": ignore_index}
    m = ls.metrics
    return {
        "val/ece": m.expected_calibration_error(probs, labels, 15, **kw),
        "val/ece_quantile": m.expected_calibration_error(probs, labels, 15, "quantile", **kw),
        "val/nll": m.negative_log_likelihood(probs, labels, **kw),
        "val/brier": m.brier_score(probs, labels, **kw),
        "val/aurc": m.aurc(probs, labels, **kw),
    }


def _assert_logged(trainer, callback, expected):
    assert set(callback.last_metrics) == set(expected)
    for name, value in expected.items():
        assert callback.last_metrics[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
        logged = trainer.callback_metrics[name].item()  # a float32 tensor
        assert logged == pytest.approx(value, rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("as_tuple", [False, True])
def test_logged_metrics_equal_the_functions_on_the_validation_set(tmp_path, as_tuple):
    callback = lsl.CalibrationCallback()
    model = Classifier(as_tuple=as_tuple)
    trainer, val = _fit(model, callback, tmp_path)
    expected = _direct(model, val)
    assert expected["val/ece"] > 0
    _assert_logged(trainer, callback, expected)
    assert callback.last_figure is None  # CSVLogger has no add_figure: skipped silently


def test_ignore_index_padding_of_sequence_outputs_is_dropped(tmp_path):
    callback = lsl.CalibrationCallback(ignore_index=-100)
    model = Sequence()
    trainer, val = _fit(model, callback, tmp_path, sequence=True)
    assert (val[1] == -100).any()
    expected = _direct(model, val)
    _assert_logged(trainer, callback, expected)
    # the padding matters: keeping it as a class would fail, treating it as a label differs
    labels = val[1].clamp(min=0)
    with torch.no_grad():
        logits = model(val[0]).reshape(-1, C)
    unpadded = ls.metrics.negative_log_likelihood(logits.softmax(1).double(), labels.flatten())
    assert unpadded != pytest.approx(expected["val/nll"])


class _FigureLogger(Logger):
    """A logger whose experiment has add_figure, as TensorBoard's."""

    def __init__(self):
        super().__init__()
        self.figures = []
        logger = self

        class Experiment:
            def add_figure(self, tag, figure, global_step=None, close=True):
                logger.figures.append((tag, figure, global_step))

        self._experiment = Experiment()

    @property
    def experiment(self):
        return self._experiment

    @property
    def name(self):
        return "figures"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        pass


def test_reliability_diagram_goes_to_a_logger_with_add_figure(tmp_path):
    pytest.importorskip("matplotlib")
    logger = _FigureLogger()
    callback = lsl.CalibrationCallback(n_bins=10, log_prefix="calib/", max_diagram_rows=50)
    trainer, _ = _fit(Classifier(), callback, tmp_path, logger=logger)
    assert [tag for tag, _, _ in logger.figures] == ["calib/reliability"] * 2  # one per epoch
    assert logger.figures[-1][1] is callback.last_figure
    assert logger.figures[-1][2] == trainer.global_step
    assert callback.last_figure.axes[0].get_xlabel() == "confidence"
    assert set(callback.last_metrics) == {
        f"calib/{n}" for n in ("ece", "ece_quantile", "nll", "brier", "aurc")
    }
    assert callback._buffer is None  # reset after the epoch


def test_no_diagram_when_disabled(tmp_path):
    logger = _FigureLogger()
    callback = lsl.CalibrationCallback(reliability_diagram=False)
    _fit(Classifier(), callback, tmp_path, logger=logger)
    assert logger.figures == [] and callback.last_figure is None


def test_bad_validation_outputs_are_explained():
    callback = lsl.CalibrationCallback(outputs_key="scores")
    with pytest.raises(KeyError, match="scores"):
        callback.update({"logits": torch.zeros(2, 3), "labels": torch.zeros(2).long()})
    with pytest.raises(TypeError, match="validation_step"):
        callback.update(None)
    with pytest.raises(TypeError, match="log_prefix"):
        lsl.CalibrationCallback(log_prefix=None)


def test_is_a_lightning_callback_and_docstring_example_runs():
    assert isinstance(lsl.CalibrationCallback(), lightning.pytorch.Callback)
    result = doctest.testmod(lsl, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
