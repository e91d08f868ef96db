"""The study under torchrun: two gloo processes, data-parallel, rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

CONFIG = """[study]
epochs = 4
width = 16
eps = [0.0, 0.1]
styles = ["uniform"]
seeds = [0, 1, 2]
experiments = ["sweep", "distillation"]
temperatures = [2.0]
overconfident_train_size = 60
overconfident_epochs = 2
max_train = 300
student_width = 4
overconfident_data = "subset"
"""


def _records(directory):
    """The runs in key order (worker processes finish them in any order)."""
    lines = (directory / "results.jsonl").read_text().splitlines()
    return sorted((json.loads(line) for line in lines), key=lambda record: record["key"])


def test_two_process_torchrun_matches_a_single_process(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    study = ["-m", "labelsmooth.cli", "study", "--config", str(config), "--quiet"]
    result = subprocess.run(
        [sys.executable, *study, "--out", str(single)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *study,
            "--out",
            str(parallel),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data-parallel over 2 processes" in result.stdout
    assert result.stdout.count("report:") == 1  # only rank 0 reports
    one, two = _records(single), _records(parallel)
    assert [r["key"] for r in one] == [r["key"] for r in two]
    assert sorted(p.name for p in (single / "figures").iterdir()) == sorted(
        p.name for p in (parallel / "figures").iterdir()
    )
    assert (parallel / "report.html").exists() and (parallel / "summary.csv").exists()
    for a, b in zip(one, two, strict=True):
        assert set(a) == set(b) and set(a["metrics"]) == set(b["metrics"])
        for name, value in a["metrics"].items():
            # the same computation up to the order of float additions across ranks (trained far
            # enough for the fitted temperature to be well determined)
            assert b["metrics"][name] == pytest.approx(value, rel=1e-3, abs=1e-3), (
                a["key"],
                name,
                value,
                b["metrics"][name],
            )
