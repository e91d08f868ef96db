"""The `Sweep` examples run from a fresh clone and write a complete study folder.

Each example runs as a user runs it (a subprocess, tiny settings): the ConvNet on the bundled
digits and on a small MNIST written here in IDX format, and the Hugging Face Trainer one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from test_study_data import _idx

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--epochs", "2", "--seeds", "0,1", "--eps", "0,0.1"]


def _run_example(name: str, out: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--out", str(out), *TINY, *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "report.html").is_file()
    findings = json.loads((out / "findings.json").read_text())
    assert findings["comparisons"], "findings.json has no comparisons"
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 4 and {r["status"] for r in results} == {"ok"}
    assert f"report: {out / 'report.html'}" in result.stdout
    return result.stdout


def test_convnet_on_the_bundled_digits(tmp_path):
    stdout = _run_example("sweep_convnet.py", tmp_path / "study", "--max-train", "400")
    assert "baseline (eps=0)" in stdout  # the verdict table


def _write_mnist(directory: Path, n_train: int = 120, n_test: int = 40) -> None:
    """MNIST's four IDX files with 28x28 images: a blob whose position is the label."""
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 8 + 2 * label, 10:18] = 255
        (directory / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(images))
        (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))


def test_convnet_on_mnist_idx_files(tmp_path):
    _write_mnist(tmp_path)
    _run_example("sweep_convnet.py", tmp_path / "study", "--mnist", str(tmp_path))
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    assert study["n_test"] == 40 and study["num_classes"] == 10


def test_hf_trainer_sweep(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    _run_example("sweep_hf_trainer.py", tmp_path / "study", "--max-train", "400")
