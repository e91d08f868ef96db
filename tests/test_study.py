"""`labelsmooth study` end to end on a tiny profile: outputs, resume, determinism, errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from labelsmooth.cli import main
from labelsmooth.study import experiments
from labelsmooth.study.config import make_config
from labelsmooth.study.main import run_study

TINY = {
    "epochs": 1,
    "width": 8,
    "eps": [0.0, 0.1],
    "styles": ["uniform", "others"],
    "seeds": [0, 1, 2],
    "noise_rates": [0.0, 0.4],
    "noise_eps": [-0.2, 0.0, 0.2],
    "temperatures": [2.0],
    "multilabel_eps": [0.0, 0.1],
    "overconfident_train_size": 60,
    "overconfident_epochs": 2,
    "max_train": 300,
    "student_width": 4,
}


def _toml(path, values):
    lines = ["[study]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    summary = run_study(make_config(TINY), out, quiet=True)
    return out, summary


def test_outputs(tiny_study):
    out, summary = tiny_study
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == summary["runs"] == summary["computed"]
    assert {r["experiment"] for r in records} == {"sweep", "noise", "distillation", "multilabel"}
    first = records[0]
    assert set(first) >= {"key", "config", "seed", "metrics", "seconds", "versions"}
    assert first["versions"]["torch"]
    sweep = [r for r in records if r["experiment"] == "sweep"]
    assert {
        "accuracy",
        "nll",
        "ece",
        "ece_quantile",
        "brier",
        "aurc",
        "confidence",
        "logit_gap",
        "ts_ece",
        "temperature",
    } <= set(sweep[0]["metrics"])
    summary_csv = (out / "summary.csv").read_text().splitlines()
    assert summary_csv[0].startswith("experiment,setting") and len(summary_csv) > 10
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {
        "reliability_main.png",
        "reliability_overconfident.png",
        "confidence_main.png",
        "logit_gap_uniform_main.png",
        "penultimate_main.png",
        "noise.png",
        "distillation.png",
        "multilabel.png",
    } <= figures
    page = (out / "report.html").read_text()
    assert page.count("<img") == len(figures)
    assert page.count('src="data:image/png;base64,') == len(figures)  # self-contained
    for section in ("eps sweep", "Noisy labels", "Distillation", "multi-label"):
        assert section in page
    assert "best eps" in page and "ECE from" in page  # findings written from numbers
    assert "baseline + temperature scaling" in summary["main_table"]


def test_resume_skips_finished_runs_and_redoes_missing_ones(tiny_study, tmp_path):
    out, summary = tiny_study
    again = run_study(make_config(TINY), out, quiet=True)
    assert again["computed"] == 0 and again["runs"] == summary["runs"]
    # A second directory with one run removed recomputes exactly that run.
    copy = tmp_path / "copy"
    copy.mkdir()
    lines = (out / "results.jsonl").read_text().splitlines()
    (copy / "results.jsonl").write_text("\n".join(lines[1:]) + "\n")
    (copy / "arrays").symlink_to(out / "arrays")
    assert run_study(make_config(TINY), copy, quiet=True)["computed"] == 1


def test_deterministic_under_a_seed(tiny_study, tmp_path):
    out, _ = tiny_study
    config = make_config({**TINY, "experiments": ["sweep"], "eps": [0.0], "seeds": [0]})
    run_study(config, tmp_path, quiet=True)
    mine = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    reference = next(
        json.loads(line)
        for line in (out / "results.jsonl").read_text().splitlines()
        if json.loads(line)["key"] == mine["key"]
    )
    assert mine["metrics"] == reference["metrics"]


def test_interrupt_keeps_finished_runs(tmp_path, monkeypatch):
    config = make_config(
        {**TINY, "experiments": ["noise"], "noise_rates": [0.0], "noise_eps": [0.0, 0.2]}
    )
    real = experiments.timed
    calls = {"count": 0}

    def interrupted(run, context):
        calls["count"] += 1
        if calls["count"] == 4:
            raise KeyboardInterrupt
        return real(run, context)

    monkeypatch.setattr("labelsmooth.study.runner.timed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, tmp_path, quiet=True)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["metrics"] for line in lines)
    assert not list(tmp_path.glob(".results.jsonl.*"))  # no temporary file left behind
    monkeypatch.setattr("labelsmooth.study.runner.timed", real)
    assert run_study(config, tmp_path, quiet=True)["computed"] == 3


def test_cli_runs_with_a_config_file_and_re_renders(tmp_path, capsys):
    config = _toml(tmp_path / "tiny.toml", {**TINY, "experiments": ["sweep"], "seeds": [0, 1, 2]})
    out = tmp_path / "out"
    assert main(["study", "--config", str(config), "--out", str(out), "--eps", "0,0.2"]) == 0
    printed = capsys.readouterr()
    assert "eps=0.2 (uniform)" in printed.out and "report:" in printed.out
    assert "/18 |" in printed.err  # progress bar: runs done / total (2 settings x 3 x 3)
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").exists()
    assert (
        main(["study", "--config", str(config), "--out", str(out), "--eps", "0,0.2", "--quiet"])
        == 0
    )
    assert "0 trained now" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["--dataset", "mnist:/does/not/exist"], "is not a directory"),
        (["--eps", "0,1.5"], "eps must be <= 1"),
        (["--eps", "0,0.95", "--styles", "others"], "eps must be <= 0.9"),
        (["--styles", "fairseq"], "styles: unknown 'fairseq'"),
        (["--experiments", "sweep,magic"], "experiments: unknown 'magic'"),
        (["--seeds", "1,1,2"], "seeds must be distinct"),
        (["--noise-rates", "0,1.2"], "noise_rates: 1.2 is outside"),
        (["--device", "tpu"], "device must be cpu"),
        (["--threads", "-1"], "threads must be >= 0"),
    ],
)
def test_cli_errors_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "o"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_cli_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = [")
    assert main(["study", "--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    unknown = _toml(tmp_path / "unknown.toml", {"epoch": 3})
    assert main(["study", "--config", str(unknown)]) == 2
    assert "unknown setting 'epoch'" in capsys.readouterr().err
    truncated = tmp_path / "mnist"
    truncated.mkdir()
    (truncated / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    (truncated / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    assert main(["study", "--dataset", f"mnist:{truncated}", "--out", str(tmp_path / "o")]) == 2
    assert "truncated" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(tiny_study, tmp_path):
    """Every figure of report.html loads in a real browser (skipped where Chromium is absent;
    .ci/run installs it, so CI runs it)."""
    import importlib.util
    import os
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.py"
    spec = importlib.util.spec_from_file_location("screenshot_report", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if module.find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium (see .ci/run)")
        pytest.skip("chromium is not installed")
    out, _ = tiny_study
    shot = tmp_path / "shot.png"
    images, broken = module.check_report(out / "report.html", shot)
    assert images == len(list((out / "figures").glob("*.png"))) and broken == 0
    assert shot.stat().st_size > 10_000
