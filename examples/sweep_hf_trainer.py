"""The study's eps sweep on a Hugging Face ``Trainer``: `Sweep` around ``trainer.train()``.

    pip install "labelsmooth[study,hf]"
    python examples/sweep_hf_trainer.py
    python examples/sweep_hf_trainer.py --eps 0,0.1,0.2 --seeds 0-9 --epochs 20 --out hf-study

The training function is what a ``transformers`` user already writes: a model,
``TrainingArguments(seed=seed, eval_strategy="epoch", ...)`` and a ``Trainer`` -- here with
``compute_loss_func=labelsmooth.integrations.hf.loss(eps, style=style)``, which trains with
label-smoothed cross-entropy. A ``TrainerCallback`` hands each epoch's validation and test
logits to the sweep's ``report`` in ``on_evaluate`` and stops training when ``report`` says so
(``control.should_training_stop``). The test examples go to ``trainer.predict`` without their
labels: nothing in the Trainer can choose with them.

The task needs no download and no tokenizer: synthetic "documents" of 24 token ids from a
vocabulary of 32 words, four classes each with four keywords of its own, the label the class
whose keywords occur most often -- with 10% of the labels replaced at random, so that even a
perfect model should not be certain. A tiny randomly initialised BERT (2 layers, hidden size
32) classifies them. Everything random in a run follows the seed: the initialisation
(``torch.manual_seed``), the batch order and dropout (``TrainingArguments(seed=seed)``) and
the stratified validation split (``Split.split_validation``); the data set itself is fixed.

Time with the defaults (3 eps x 3 seeds = 9 models, at most 12 epochs, patience 4), measured on
a 2-core VM on 2026-12-03: about 75 s with ``--workers 1`` and 50 s with ``--workers 2``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

import labelsmooth.integrations.hf as lshf
from labelsmooth.study import EpochReport, Outputs, Sweep
from labelsmooth.study.config import ConfigError
from labelsmooth.study.data import Split

VALIDATION_FRACTION = 0.2
CLASSES, KEYWORDS, FILLERS, LENGTH = 4, 4, 16, 24  # token 0 is [CLS]
LABEL_NOISE = 0.1


def synthetic_text(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` sequences of [CLS] + LENGTH tokens and their labels.

    Each class has KEYWORDS words of its own; half the words of a sequence are fillers, the
    others are keywords drawn from a random mixture of the classes. The label is the class
    whose keywords occur most often (ties broken at random), then replaced by a random class
    for LABEL_NOISE of the examples: even a perfect model should not be certain.
    """
    rng = np.random.default_rng(seed)
    mixture = rng.dirichlet(np.ones(CLASSES), size=count)
    topic = np.stack([rng.choice(CLASSES, LENGTH, p=p) for p in mixture])
    keyword = 1 + topic * KEYWORDS + rng.integers(0, KEYWORDS, (count, LENGTH))
    filler = 1 + CLASSES * KEYWORDS + rng.integers(0, FILLERS, (count, LENGTH))
    is_filler = rng.random((count, LENGTH)) < 0.5
    words = np.where(is_filler, filler, keyword)
    counts = np.stack([((topic == c) & ~is_filler).sum(1) for c in range(CLASSES)], axis=1)
    labels = (counts + rng.random((count, CLASSES))).argmax(1)  # ties broken at random
    noisy = rng.random(count) < LABEL_NOISE
    labels[noisy] = rng.integers(0, CLASSES, int(noisy.sum()))
    ids = np.concatenate([np.zeros((count, 1), dtype=np.int64), words], axis=1)
    return torch.from_numpy(ids), torch.from_numpy(labels)


def task(train_size: int = 2000, test_size: int = 1000) -> Split:
    """The fixed data set (the same for every run): a :class:`Split` of token ids."""
    x_train, y_train = synthetic_text(train_size, seed=0)
    x_test, y_test = synthetic_text(test_size, seed=1)
    return Split("keyword counts", x_train, y_train, x_test, y_test, num_classes=CLASSES)


def rows(ids: torch.Tensor, labels: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
    """A list of examples the Trainer's default collator batches; no labels for the test set."""
    out = []
    for i, row in enumerate(ids):
        example = {"input_ids": row, "attention_mask": torch.ones_like(row)}
        if labels is not None:
            example["labels"] = labels[i]
        out.append(example)
    return out


def tiny_bert(num_classes: int, seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=1 + CLASSES * KEYWORDS + FILLERS,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH + 1,
        type_vocab_size=1,
        num_labels=num_classes,
    )
    return BertForSequenceClassification(config)


class ReportEachEpoch(TrainerCallback):
    """Gives the sweep each epoch's validation logits (from the Trainer's own evaluation, via
    ``compute_metrics``) and test logits (``trainer.predict``), and stops when told to."""

    def __init__(self, report: EpochReport, test: list[dict[str, torch.Tensor]]) -> None:
        self.report = report
        self.test = test
        self.trainer: Trainer | None = None
        self.val: tuple[np.ndarray, np.ndarray] | None = None
        self.last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def compute_metrics(self, prediction: EvalPrediction) -> dict[str, float]:
        self.val = (np.asarray(prediction.predictions), np.asarray(prediction.label_ids))
        return lshf.compute_metrics(prediction)  # in trainer.state.log_history

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any
    ) -> None:
        assert self.trainer is not None and self.val is not None
        val_logits, val_labels = self.val
        test_logits = self.trainer.predict(self.test).predictions
        self.last = (val_logits, val_labels, test_logits)
        if self.report(round(state.epoch or 0), val_logits, val_labels, test_logits):
            control.should_training_stop = True


@dataclass(frozen=True)
class HFTraining:
    """``train(eps, style, seed, report) -> Outputs`` for :class:`Sweep` (picklable, so
    ``--workers`` can run it in other processes)."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    max_train: int | None = None

    def __call__(self, eps: float, style: str, seed: int, report: EpochReport) -> Outputs:
        hf_logging.set_verbosity_error()
        split = task()
        if self.max_train is not None:
            split = split.subset_train(self.max_train, seed=0)
        train, x_val, y_val = split.split_validation(VALIDATION_FRACTION, seed)
        callback = ReportEachEpoch(report, rows(split.x_test))
        with tempfile.TemporaryDirectory() as output_dir:
            args = TrainingArguments(
                output_dir=output_dir,
                seed=seed,
                num_train_epochs=self.epochs,
                per_device_train_batch_size=self.batch_size,
                per_device_eval_batch_size=256,
                learning_rate=self.lr,
                warmup_steps=0.1,
                eval_strategy="epoch",
                save_strategy="no",
                logging_strategy="no",
                report_to=[],
                use_cpu=True,
                disable_tqdm=True,
            )
            trainer = Trainer(
                model=tiny_bert(split.num_classes, seed),
                args=args,
                train_dataset=rows(train.x_train, train.y_train),
                eval_dataset=rows(x_val, y_val),
                compute_loss_func=lshf.loss(eps, style=style),
                compute_metrics=callback.compute_metrics,
                callbacks=[callback],
            )
            trainer.remove_callback(PrinterCallback)  # the sweep shows its own progress
            callback.trainer = trainer
            trainer.train()
        # The sweep measures the best reported epoch; it needs the test labels from here.
        assert callback.last is not None, "the Trainer did not evaluate"
        return Outputs(*callback.last, split.y_test)


def numbers(text: str, kind: type) -> list:
    """``"0,0.05,0.1"`` or, for integers, ``"0-4"``."""
    if kind is int and "-" in text and "," not in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [kind(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", default="0,0.05,0.1", help="smoothing rates (default %(default)s)")
    parser.add_argument(
        "--styles", default="uniform", help="uniform, others or both: uniform,others"
    )
    parser.add_argument("--seeds", default="0-2", help="e.g. 0-4 or 0,1,2 (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=12, help="at most (default %(default)s)")
    parser.add_argument("--patience", type=int, default=4, help="0: never stop early")
    parser.add_argument("--max-train", type=int, help="subsample the training set (stratified)")
    parser.add_argument("--workers", type=int, default=1, help="processes; 0: one per core")
    parser.add_argument("--out", default="hf-study", help="the study folder")
    args = parser.parse_args(argv)
    train = HFTraining(epochs=args.epochs, max_train=args.max_train)
    # The sweep fingerprints the code; the version adds the loop's settings, so --out refuses
    # a folder written with other ones instead of mixing them.
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    sweep = Sweep(
        train,
        eps=numbers(args.eps, float),
        styles=args.styles.split(","),
        seeds=numbers(args.seeds, int),
        patience=args.patience or None,
        name="synthetic keyword counts, tiny BERT (transformers.Trainer)",
        description=(
            f"a randomly initialised BERT (2 layers, hidden size 32, 2 heads) trained by "
            f"transformers.Trainer with labelsmooth.integrations.hf.loss, AdamW (lr {train.lr:g}, "
            f"batch {train.batch_size}), at most {args.epochs} epochs, a "
            f"{VALIDATION_FRACTION:.0%} validation split per seed"
        ),
        class_names=[f"topic {c}" for c in range(CLASSES)],
        version=f"{code} {train}",
        workers=args.workers,
    )
    try:
        summary = sweep.run(args.out)
    except ConfigError as err:  # e.g. --out holds a sweep with other settings
        sys.exit(f"error: {err}")
    print(summary["verdict_table"])
    print(summary["recommendation"])
    print(f"report: {summary['report']}")


if __name__ == "__main__":
    main()
