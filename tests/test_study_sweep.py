"""`labelsmooth.study.Sweep`: the study's protocol on a user's own training function.

The same numbers as the CLI study for the same model, resumable after a kill, parallel
(processes and Ray) equal to serial, the per-epoch report (best epoch, patience, pruning), and
clear errors for what a user can get wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

import labelsmooth as ls
from labelsmooth.study import EpochReport, Outputs, Sweep
from labelsmooth.study.config import ConfigError, make_config
from labelsmooth.study.experiments import seed_data
from labelsmooth.study.main import run_study
from labelsmooth.study.models import MLP
from labelsmooth.study.prepare import prepare_data
from labelsmooth.study.runner import FolderInUseError, StudyFolder
from labelsmooth.study.train import TrainingDivergedError

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# A small user task: softmax regression on three overlapping Gaussian classes
# ----------------------------------------------------------------------------------------------


def _blobs(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    centres = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    return centres[labels] + torch.randn(count, 2, generator=generator), labels


def blob_train(eps: float, style: str, seed: int, report: EpochReport) -> Outputs:
    """A user's loop: full-batch gradient descent, reporting every epoch."""
    x_train, y_train = _blobs(1000 + seed, 240)
    x_val, y_val = _blobs(2000 + seed, 90)
    x_test, y_test = _blobs(7, 150)  # the fixed test set
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 3)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(1, 16):
        optimiser.zero_grad()
        ls.cross_entropy(model(x_train), y_train, eps, style=style).backward()
        optimiser.step()
        with torch.no_grad():
            if report(epoch, model(x_val), y_val, model(x_test)):
                break
    with torch.no_grad():
        return Outputs(model(x_val), y_val, model(x_test), y_test)


def returning_train(eps: float, style: str, seed: int, report: EpochReport) -> Outputs:
    """A user's loop that does not report: the sweep measures what it returns."""
    x_train, y_train = _blobs(1000 + seed, 240)
    x_val, y_val = _blobs(2000 + seed, 90)
    x_test, y_test = _blobs(7, 150)
    torch.manual_seed(seed)
    model = torch.nn.Linear(2, 3)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(10):
        optimiser.zero_grad()
        ls.cross_entropy(model(x_train), y_train, eps, style=style).backward()
        optimiser.step()
    with torch.no_grad():
        return Outputs(model(x_val), y_val, model(x_test), y_test, epochs=10)


def _metrics(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {r["key"]: r["metrics"] for r in map(json.loads, lines)}


# ----------------------------------------------------------------------------------------------
# Equal to the CLI study
# ----------------------------------------------------------------------------------------------

CLI_SETTINGS = {
    "experiments": ["sweep"],
    "eps": [0.0, 0.1],
    "styles": ["uniform"],
    "seeds": [0, 1],
    "epochs": 6,
    "width": 16,
    "max_train": 300,
    "overconfident_data": "subset",
    "overconfident_train_size": 60,
    "overconfident_epochs": 2,
    "workers": 1,
}


def test_sweep_equals_the_cli_study_for_the_same_model(tmp_path):
    """A user loop written from scratch (the study's MLP, Adam, batch order, best validation
    epoch through ``report``) gives the CLI study's numbers exactly."""
    config = make_config(CLI_SETTINGS)
    cli = run_study(config, tmp_path / "cli", quiet=True)
    assert cli["runs"]["finished"] > 0
    data, _ = prepare_data(config)

    def train(eps, style, seed, report):
        part = seed_data(data, config, seed)
        torch.manual_seed(seed)
        model = MLP(data.num_features, data.num_classes, config.width, config.depth)
        optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
        generator = torch.Generator().manual_seed(seed)
        x, y = part.train.x_train, part.train.y_train
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), config.batch_size):
                batch = order[start : start + config.batch_size]
                optimiser.zero_grad(set_to_none=True)
                ls.cross_entropy(model(x[batch]), y[batch], eps, style=style).backward()
                optimiser.step()
            model.eval()
            with torch.no_grad():
                report(epoch, model(part.x_val), part.y_val, model(part.x_test))
        with torch.no_grad():
            return Outputs(model(part.x_val), part.y_val, model(part.x_test), part.y_test)

    sweep = Sweep(train, eps=config.eps, styles=config.styles, seeds=config.seeds)
    summary = sweep.run(tmp_path / "sweep", quiet=True)
    ours, theirs = _metrics(tmp_path / "sweep"), _metrics(tmp_path / "cli")
    assert set(ours) == {k for k in theirs if k.startswith("sweep|main|")}
    # the CLI's own MLP also measures its penultimate geometry; a user's model is opaque
    geometry = {"spread_ratio_plane", "spread_ratio_full"}
    for key, values in ours.items():
        assert geometry <= set(theirs[key]) and set(values) == set(theirs[key]) - geometry, key
        for name, value in values.items():
            assert value == pytest.approx(theirs[key][name], rel=1e-9, abs=1e-12), (key, name)
    # the same analysis: the verdict and the recommendation
    assert summary["verdict_table"] and summary["recommendation"]
    assert "Baseline" in summary["verdict_table"] or "baseline" in summary["verdict_table"]
    findings = json.loads((tmp_path / "sweep" / "findings.json").read_text())
    assert findings["selected_on"] == "validation"
    assert findings["n_test"] == len(seed_data(data, config, 0).x_test)
    assert any(c["experiment"] == "sweep" for c in findings["comparisons"])
    page = (tmp_path / "sweep" / "report.html").read_text()
    assert "Verdict" in page and "the training function" in page
    assert "MLP, width" not in page  # the user's model is not described as the study's MLP


# ----------------------------------------------------------------------------------------------
# Resume, folders, parallel backends
# ----------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import torch
    import labelsmooth as ls
    from labelsmooth.study import Outputs, Sweep

    def train(eps, style, seed, report):
        with open(os.environ["CALLS"], "a") as calls:
            calls.write(f"{eps} {seed}\\n")
        time.sleep(float(os.environ.get("DELAY", "0")))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(200, 4, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for epoch in range(1, 6):
            opt.zero_grad()
            ls.cross_entropy(model(x[:120]), y[:120], eps, style=style).backward()
            opt.step()
            with torch.no_grad():
                report(epoch, model(x[120:160]), y[120:160], model(x[160:]))
        with torch.no_grad():
            return Outputs(model(x[120:160]), y[120:160], model(x[160:]), y[160:])

    if __name__ == "__main__":
        Sweep(train, eps=[0, 0.1, 0.2], seeds=[0, 1, 2], version="v1").run(sys.argv[1], quiet=True)
    """
)


def _run_script(script: Path, out: Path, calls: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "CALLS": str(calls), "DELAY": str(delay)}
    return subprocess.Popen([sys.executable, str(script), str(out)], env=env)


def test_sweep_resumes_after_a_kill(tmp_path):
    script = tmp_path / "user_sweep.py"
    script.write_text(SCRIPT)
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    process = _run_script(script, out, calls, delay=0.3)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 2:
            break
        assert process.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(results.read_text().splitlines())
    assert 2 <= finished < 9
    calls.unlink()
    again = _run_script(script, out, calls, delay=0.0)
    assert again.wait(timeout=300) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(lines) == 9 and len({line["key"] for line in lines}) == 9
    assert len(calls.read_text().splitlines()) == 9 - finished  # only the missing runs
    assert (out / "report.html").exists() and (out / "findings.json").exists()


def test_a_second_run_computes_nothing_and_another_sweep_is_refused(tmp_path):
    Sweep(blob_train, eps=[0.1], seeds=[0, 1]).run(tmp_path, quiet=True)
    again = Sweep(blob_train, eps=[0.1], seeds=[0, 1]).run(tmp_path, quiet=True)
    assert again["runs"]["finished"] == 4
    with pytest.raises(ConfigError, match="another configuration"):
        Sweep(blob_train, eps=[0.2], seeds=[0, 1]).run(tmp_path, quiet=True)
    with pytest.raises(ConfigError, match="another configuration"):  # other code
        Sweep(returning_train, eps=[0.1], seeds=[0, 1]).run(tmp_path, quiet=True)


def test_a_folder_in_use_is_refused(tmp_path):
    sweep = Sweep(blob_train, eps=[0.1], seeds=[0, 1])
    with StudyFolder(tmp_path, sweep.config, "", {}), pytest.raises(FolderInUseError):
        sweep.run(tmp_path, quiet=True)


def test_processes_equal_serial(tmp_path):
    serial = Sweep(blob_train, eps=[0.1], styles=["uniform", "others"], seeds=[0, 1])
    serial.run(tmp_path / "serial", quiet=True)
    parallel = Sweep(blob_train, eps=[0.1], styles=["uniform", "others"], seeds=[0, 1], workers=2)
    parallel.run(tmp_path / "parallel", quiet=True)
    assert _metrics(tmp_path / "parallel") == _metrics(tmp_path / "serial")


def test_ray_backend_equals_serial(tmp_path):
    ray = pytest.importorskip("ray")
    Sweep(blob_train, eps=[0.1], seeds=[0, 1]).run(tmp_path / "serial", quiet=True)

    def closure(eps, style, seed, report):  # Ray pickles closures too
        return blob_train(eps, style, seed, report)

    # the user's cluster: its workers import this test module (a user ships their code with
    # runtime_env the same way); the sweep runs on the cluster it finds connected
    tests = str(Path(__file__).resolve().parent)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests}},
    )
    try:
        Sweep(closure, eps=[0.1], seeds=[0, 1], workers=2, backend="ray").run(
            tmp_path / "ray", quiet=True
        )
        assert ray.is_initialized()  # a cluster the sweep did not start stays up
    finally:
        ray.shutdown()
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "serial")


def test_a_returned_model_is_measured_as_returned(tmp_path):
    Sweep(returning_train, eps=[0.1], seeds=[0, 1]).run(tmp_path, quiet=True)
    for values in _metrics(tmp_path).values():
        assert values["best_epoch"] == 10
        assert values["final_accuracy"] == values["accuracy"]


def test_a_diverged_run_is_recorded_not_fatal(tmp_path):
    def train(eps, style, seed, report):
        _, y_val = _blobs(1, 20)
        logits = torch.full((20, 3), float("nan")) if eps > 0 else torch.zeros(20, 3)
        return Outputs(logits, y_val, torch.zeros(10, 3), y_val[:10])

    summary = Sweep(train, eps=[0.1], seeds=[0, 1]).run(tmp_path, quiet=True)
    assert summary["runs"]["diverged"] == 2 and summary["runs"]["finished"] == 4


# ----------------------------------------------------------------------------------------------
# The per-epoch report
# ----------------------------------------------------------------------------------------------


def _epoch(accuracy_right: int, count: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(count, dtype=torch.long)
    logits = torch.zeros(count, 2)
    logits[:accuracy_right, 0] = 1.0
    logits[accuracy_right:, 1] = 1.0
    return logits, labels


def test_report_keeps_the_best_validation_epoch_and_records_the_final_one():
    report = EpochReport("accuracy")
    for epoch, right in enumerate([5, 8, 6], start=1):
        val, labels = _epoch(right)
        report(epoch, val, labels, torch.full((4, 2), float(epoch)))
    outputs = report.resolve(Outputs(*_epoch(6), torch.zeros(4, 2), torch.zeros(4).long()))
    assert outputs.best_epoch == 2 and outputs.epochs == 3
    assert float(outputs.test_logits[0, 0]) == 2.0
    assert float(outputs.final_test_logits[0, 0]) == 3.0


def test_report_final_rule_keeps_the_last_epoch():
    report = EpochReport("final")
    for epoch, right in enumerate([9, 5], start=1):
        report(epoch, *_epoch(right), torch.full((4, 2), float(epoch)))
    outputs = report.resolve(Outputs(*_epoch(5), torch.zeros(4, 2), torch.zeros(4).long()))
    assert outputs.best_epoch == 2 and outputs.final_test_logits is None


def test_patience_stops_the_loop():
    report = EpochReport("accuracy", patience=2)
    stops = [report(e, *_epoch(r)) for e, r in enumerate([7, 6, 6, 9], start=1)]
    assert stops == [False, False, True, False]


def test_pruner_stops_the_loop(tmp_path):
    seen = []

    def pruner(epoch, accuracy, nll):
        seen.append(epoch)
        return epoch >= 3

    Sweep(blob_train, eps=[0.1], seeds=[0], pruner=pruner).run(tmp_path, quiet=True)
    assert seen == [1, 2, 3] * 2  # two runs, each stopped at epoch 3
    assert all(v["best_epoch"] <= 3 for v in _metrics(tmp_path).values())


def test_report_rejects_decreasing_epochs_and_bad_values():
    report = EpochReport()
    report(1, *_epoch(5))
    with pytest.raises(ValueError, match="epochs must increase"):
        report(1, *_epoch(5))
    with pytest.raises(ValueError, match="epoch must be a positive integer"):
        report(0, *_epoch(5))
    with pytest.raises(ValueError, match="val_labels must be class indices in"):
        report(2, torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(TrainingDivergedError):
        report(3, torch.full((3, 2), float("inf")), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="select must be one of"):
        EpochReport("loss")
    with pytest.raises(ValueError, match="patience"):
        EpochReport(patience=0)


# ----------------------------------------------------------------------------------------------
# What a user can get wrong
# ----------------------------------------------------------------------------------------------


def test_outputs_validate_their_arrays():
    val = torch.zeros(4, 3)
    labels = torch.tensor([0, 1, 2, 0])
    assert Outputs(val.numpy(), labels.numpy(), val, labels).num_classes == 3
    with pytest.raises(TypeError, match="val_logits must be floating point"):
        Outputs(labels, labels, val, labels)
    with pytest.raises(TypeError, match="test_labels must hold integer class indices"):
        Outputs(val, labels, val, labels.float())
    with pytest.raises(ValueError, match=r"test_logits must have the 3 classes"):
        Outputs(val, labels, torch.zeros(4, 2), labels)
    with pytest.raises(ValueError, match=r"val_labels must have shape \(4,\)"):
        Outputs(val, labels[:3], val, labels)
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\], got 3"):
        Outputs(val, torch.tensor([0, 1, 3, 0]), val, labels)
    with pytest.raises(ValueError, match="must be \\(N, K\\) logits"):
        Outputs(torch.zeros(4), labels, val, labels)
    with pytest.raises(ValueError, match="best_epoch must be a positive integer"):
        Outputs(val, labels, val, labels, best_epoch=0)
    with pytest.raises(TypeError, match="val_logits must be a tensor or a NumPy array"):
        Outputs([[0.0, 1.0]], [0], val, labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": [0.1, 0.1]}, "eps must not repeat"),
        ({"eps": [1.2]}, r"eps must be in \[0, 1\)"),
        ({"eps": ["0.1"]}, "eps must be a list of numbers"),
        ({"styles": ["uniformm"]}, "style"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [0, 0]}, "seeds must not repeat"),
        ({"select": "loss"}, "select must be one of"),
        ({"n_bins": 0}, "n_bins must be a positive integer"),
        ({"patience": -1}, "patience must be a positive integer"),
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"backend": "dask"}, "backend must be one of local, ray"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sweep(blob_train, **kwargs)


def test_train_must_be_callable_and_return_outputs(tmp_path):
    with pytest.raises(TypeError, match="train must be callable"):
        Sweep("train")  # type: ignore[arg-type]

    def wrong(eps, style, seed, report):
        return {"logits": np.zeros((3, 2))}

    with pytest.raises(TypeError, match="must return labelsmooth.study.Outputs or None, got dict"):
        Sweep(wrong, eps=[0.1], seeds=[0]).run(tmp_path / "a", quiet=True)

    def silent(eps, style, seed, report):
        return None

    with pytest.raises(TypeError, match="did not report test logits"):
        Sweep(silent, eps=[0.1], seeds=[0]).run(tmp_path / "b", quiet=True)


def test_parallel_processes_need_a_picklable_function(tmp_path):
    sweep = Sweep(lambda eps, style, seed, report: None, eps=[0.1], seeds=[0], workers=2)
    with pytest.raises(ConfigError, match="must pickle"):
        sweep.run(tmp_path, quiet=True)
    assert not (tmp_path / "results.jsonl").exists()


def test_cli_study_accepts_the_ray_backend_flag_and_checks_it():
    with pytest.raises(ConfigError, match="backend must be local or ray"):
        from labelsmooth.study.config import check_config

        check_config(make_config({"backend": "dask"}))
    assert make_config({"backend": "ray"}).backend == "ray"
    # not a numeric setting: a folder resumes under either backend
    assert make_config({"backend": "ray"}).fingerprint() == make_config({}).fingerprint()


def test_cli_study_on_ray_equals_local_including_dependent_runs(tmp_path):
    """The distillation students need their teachers' arrays: they travel with the call."""
    pytest.importorskip("ray")
    settings = {
        "experiments": ["distillation"],
        "seeds": [0, 1],
        "epochs": 3,
        "width": 8,
        "student_width": 4,
        "temperatures": [1.0, 2.0],
        "max_train": 200,
        "workers": 2,
    }
    run_study(make_config(settings), tmp_path / "local", quiet=True)
    summary = run_study(make_config({**settings, "backend": "ray"}), tmp_path / "ray", quiet=True)
    assert summary["computed"] == summary["total_runs"] > 0
    assert _metrics(tmp_path / "ray") == _metrics(tmp_path / "local")


class ScaledTrain:
    """A callable object: its fields are settings the fingerprint must see."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, eps, style, seed, report):
        _, labels = _blobs(seed, 30)
        logits = self.scale * torch.nn.functional.one_hot(labels, 3).double()
        return Outputs(logits, labels, logits[:10], labels[:10])


def test_the_same_code_with_other_state_is_another_sweep(tmp_path):
    """Closure values, a partial's arguments and an object's fields are fingerprinted: a rerun
    with other data or settings is refused, not answered with the old results."""
    import functools

    Sweep(ScaledTrain(1.0), eps=[0.1], seeds=[0]).run(tmp_path / "object", quiet=True)
    with pytest.raises(ConfigError, match="another configuration"):
        Sweep(ScaledTrain(5.0), eps=[0.1], seeds=[0]).run(tmp_path / "object", quiet=True)
    assert Sweep(ScaledTrain(1.0), eps=[0.1], seeds=[0]).run(tmp_path / "object", quiet=True)

    def make(scale):
        def train(eps, style, seed, report):
            return ScaledTrain(scale)(eps, style, seed, report)

        return train

    Sweep(make(1.0), eps=[0.1], seeds=[0]).run(tmp_path / "closure", quiet=True)
    with pytest.raises(ConfigError, match="another configuration"):
        Sweep(make(2.0), eps=[0.1], seeds=[0]).run(tmp_path / "closure", quiet=True)

    def scaled(eps, style, seed, report, scale=1.0):
        return ScaledTrain(scale)(eps, style, seed, report)

    Sweep(functools.partial(scaled, scale=1.0), eps=[0.1], seeds=[0]).run(
        tmp_path / "partial", quiet=True
    )
    with pytest.raises(ConfigError, match="another configuration"):
        Sweep(functools.partial(scaled, scale=3.0), eps=[0.1], seeds=[0]).run(
            tmp_path / "partial", quiet=True
        )
    # version= names the code, not the state: other state is still another sweep
    Sweep(ScaledTrain(1.0), eps=[0.1], seeds=[0], version="v1").run(tmp_path / "v", quiet=True)
    with pytest.raises(ConfigError, match="another configuration"):
        Sweep(ScaledTrain(2.0), eps=[0.1], seeds=[0], version="v1").run(tmp_path / "v", quiet=True)


def test_state_that_cannot_be_fingerprinted_asks_for_a_version(tmp_path):
    handle = open(tmp_path / "data.txt", "w")  # noqa: SIM115 - an unpicklable closure value

    def train(eps, style, seed, report):
        assert not handle.closed
        return ScaledTrain(1.0)(eps, style, seed, report)

    try:
        with pytest.warns(UserWarning, match="pass version="):
            Sweep(train, eps=[0.1], seeds=[0])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            Sweep(train, eps=[0.1], seeds=[0], version="data v2")
    finally:
        handle.close()
