"""`labelsmooth study` end to end on a tiny profile: outputs, the verdict, findings.json,
validation-only selection, one configuration per folder, the lock, divergence, resume, K = 2."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from labelsmooth.cli import main
from labelsmooth.study import data as data_module
from labelsmooth.study import experiments
from labelsmooth.study.config import EXPERIMENTS, ConfigError, make_config
from labelsmooth.study.main import _warn_if_long, run_study
from labelsmooth.study.report import render_report
from labelsmooth.study.runner import FolderInUseError, StudyFolder, atomic_write_bytes

TINY = {
    "epochs": 4,
    "width": 16,
    "eps": [0.0, 0.1],
    "styles": ["uniform", "others"],
    "seeds": [0, 1, 2],
    "noise_rates": [0.0, 0.4],
    "noise_eps": [0.2],
    "nls_eps": [-1.0],
    "nls_noise_rates": [0.4],
    "nls_epochs": 2,
    "temperatures": [1.0, 2.0],
    "lr_grid": [1e-3, 1e-2],
    "lr_eps": [0.0, 0.1],
    "multilabel_eps": [0.0, 0.1],
    "multilabel_lrs": [1e-3],
    "sequence_max_tokens": 3000,
    "sequence_width": 16,
    "sequence_layers": 1,
    "sequence_epochs": 1,
    "sequence_length": 16,
    "overconfident_train_size": 60,
    "overconfident_epochs": 3,
    "max_train": 300,
    "student_width": 4,
    "workers": 1,
}

FINDINGS_KEYS = {
    "fingerprint",
    "dataset",
    "n_train",
    "n_val",
    "n_test",
    "seeds",
    "selected_on",
    "complete",
    "runs",
    "comparisons",
    "recommendation",
}
COMPARISON_KEYS = {
    "experiment",
    "setting",
    "arm",
    "baseline",
    "metric",
    "higher_is_better",
    "arm_mean",
    "baseline_mean",
    "mean_delta",
    "ci_low",
    "ci_high",
    "n_seeds",
    "significant",
    "selected_on",
}


def _toml(path, values):
    lines = ["[study]"]
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _records(directory):
    return [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    summary = run_study(make_config(TINY), out, quiet=True)
    return out, summary


def test_outputs(tiny_study):
    out, summary = tiny_study
    records = _records(out)
    assert len(records) == summary["total_runs"] == summary["computed"]
    assert {r["experiment"] for r in records} == set(EXPERIMENTS)
    first = records[0]
    assert set(first) >= {"key", "fingerprint", "status", "config", "seed", "metrics", "seconds"}
    assert first["versions"]["torch"] and first["status"] == "ok"
    study = json.loads((out / "study.json").read_text())
    assert study["fingerprint"] == first["fingerprint"] and study["planned_runs"] == len(records)
    sweep = [r for r in records if r["experiment"] == "sweep"]
    assert {
        "accuracy",
        "nll",
        "ece",
        "ece_quantile",
        "brier",
        "aurc",
        "excess_aurc",
        "val_accuracy",
        "val_nll",
        "ts_nll",
        "temperature",
        "temperature_ok",
        "best_epoch",
        "final_accuracy",
    } <= set(sweep[0]["metrics"])
    summary_csv = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    assert {row["n_seeds"] for row in summary_csv} == {"3"}
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {
        "verdict.png",
        "reliability_main.png",
        "reliability_overconfident.png",
        "confidence_main.png",
        "logit_gap_uniform_main.png",
        "penultimate_main.png",
        "noise_accuracy.png",
        "nls_logit_norm.png",
        "distillation_students.png",
        "lr_heatmap_main.png",
        "multilabel_outputs_lr0.001.png",
        "sequence_reliability_gap.png",
    } <= figures
    page = (out / "report.html").read_text()
    assert page.count("<img") == len(figures)
    assert page.count('src="data:image/png;base64,') == len(figures)  # self-contained
    # The report opens with the verdict: its heading comes before every other section.
    headings = re.findall(r"<h2[^>]*>(.*?)</h2>", page)
    assert headings[0] == "Verdict" and headings[1] == "Methods"
    for section in (
        "eps sweep",
        "Noisy labels",
        "Negative label smoothing",
        "Distillation",
        "Learning rate x eps",
        "multi-label",
        "Token-level smoothing",
        "Variants",
    ):
        assert any(section in h for h in headings)
    n = json.loads((out / "findings.json").read_text())
    assert f"n_train {n['n_train']}, n_val {n['n_val']}, n_test {n['n_test']}" in page
    assert "With 3 seeds the intervals are wide" in page
    assert summary["recommendation"] and summary["recommendation"] in page.replace("&#39;", "'")


def test_findings_json_schema(tiny_study):
    out, _ = tiny_study
    findings = json.loads((out / "findings.json").read_text())
    assert set(findings) >= FINDINGS_KEYS
    assert findings["selected_on"] == "validation" and findings["complete"] is True
    # per seed: sweep 3 x 2 settings, noise 10 (clean: 3 arms; symmetric and pair-flip at 0.4:
    # ce, ls 0.2, others 0.4, forward), nls 6 (2 kinds: warm-up, eps 0 and -1 fine-tunes),
    # distillation 8 (2 teachers, hard and smoothed students, 2 teachers x 2 T), lr 8 (2 lr x
    # 2 eps x 2 settings), multilabel 4, sequence 4, variants 10 x 2 settings: 66 x 3 seeds
    assert findings["runs"] == {"finished": 198, "diverged": 0, "planned": 198}
    assert findings["n_train"] + findings["n_val"] == 300 and findings["n_test"] > 0
    assert findings["seeds"] == [0, 1, 2]
    experiments_seen = {c["experiment"] for c in findings["comparisons"]}
    assert experiments_seen == set(EXPERIMENTS)
    assert set(findings["experiments"]) == set(EXPERIMENTS) - {"sweep", "variants"}
    for comparison in findings["comparisons"]:
        assert set(comparison) >= COMPARISON_KEYS
        low, high = comparison["ci_low"], comparison["ci_high"]
        assert comparison["significant"] == (low is not None and (low > 0 or high < 0))
        assert comparison["n_seeds"] == 3
    recommendation = findings["recommendation"]
    assert {"smooth", "eps", "style", "temperature_scaling", "text"} <= set(recommendation)
    assert recommendation["selected_on"] == "validation"


def test_selection_never_reads_test_labels(tiny_study, tmp_path, monkeypatch):
    """Poison the test split (labels shuffled, features scrambled): every choice the study makes
    (the kept epoch, the temperature, the smoothing arm, T, eps under noise) stays the same."""
    out, _ = tiny_study
    real = data_module.load_dataset

    def poisoned(spec, seed=0, **kwargs):
        split = real(spec, seed, **kwargs)
        generator = torch.Generator().manual_seed(99)
        order = torch.randperm(len(split.y_test), generator=generator)
        return data_module.replace(
            split, y_test=split.y_test[order], x_test=split.x_test.flip(0) * 3.0
        )

    monkeypatch.setattr("labelsmooth.study.prepare.load_dataset", poisoned)
    poisoned_out = tmp_path / "poisoned"
    run_study(make_config(TINY), poisoned_out, quiet=True)
    clean, dirty = _records(out), _records(poisoned_out)
    assert [r["key"] for r in clean] == [r["key"] for r in dirty]
    changed_test_metric = False
    for a, b in zip(clean, dirty, strict=True):
        for name in ("best_epoch", "temperature", "val_nll", "val_accuracy", "val_nll_ts"):
            if name in a["metrics"]:
                assert a["metrics"][name] == b["metrics"][name], (a["key"], name)
        for name in ("val_token_nll", "val_token_nll_ts"):  # the sequence experiment's
            if name in a["metrics"]:
                assert a["metrics"][name] == b["metrics"][name], (a["key"], name)
        if "accuracy" in a["metrics"]:
            changed_test_metric |= a["metrics"]["accuracy"] != b["metrics"]["accuracy"]
    assert changed_test_metric  # the poison reached the test metrics
    chosen = {}
    for directory in (out, poisoned_out):
        findings = json.loads((directory / "findings.json").read_text())
        picks = sorted(
            (c["experiment"], c["setting"], c["arm"])
            for c in findings["comparisons"]
            if c["chosen_on_validation"]
        )
        recommendation = findings["recommendation"]
        chosen[directory] = (picks, recommendation["eps"], recommendation["style"])
    assert chosen[out] == chosen[poisoned_out]


def test_resume_skips_finished_runs_and_redoes_missing_ones(tiny_study, tmp_path):
    out, summary = tiny_study
    again = run_study(make_config(TINY), out, quiet=True)
    assert again["computed"] == 0 and again["total_runs"] == summary["total_runs"]
    # A copy of the folder with one run removed recomputes exactly that run.
    copy = tmp_path / "copy"
    copy.mkdir()
    lines = (out / "results.jsonl").read_text().splitlines()
    (copy / "results.jsonl").write_text("\n".join(lines[1:]) + "\n")
    (copy / "study.json").write_text((out / "study.json").read_text())
    (copy / "arrays").symlink_to(out / "arrays")
    assert run_study(make_config(TINY), copy, quiet=True)["computed"] == 1


def test_deterministic_under_a_seed_and_across_workers(tiny_study, tmp_path):
    out, _ = tiny_study
    config = make_config(
        {**TINY, "experiments": ["sweep", "distillation"], "workers": 2, "seeds": [0, 1]}
    )
    run_study(config, tmp_path, quiet=True)
    reference = {r["key"]: r for r in _records(out)}
    mine = _records(tmp_path)
    # sweep 3 arms x 2 settings; distillation 2 teachers, 2 label students, 2 teachers x 2 T
    assert len(mine) == 2 * (3 * 2 + 2 + 2 + 2 * 2)
    for record in mine:
        assert record["metrics"] == reference[record["key"]]["metrics"], record["key"]


def test_a_different_configuration_is_refused(tiny_study, tmp_path, capsys):
    out, _ = tiny_study
    with pytest.raises(ConfigError, match=r"epochs 4 -> 5.*--out NEW"):
        run_study(make_config({**TINY, "epochs": 5}), out, quiet=True)
    # threads and workers change no number: the same folder resumes.
    assert run_study(make_config({**TINY, "threads": 2}), out, quiet=True)["computed"] == 0
    config = _toml(tmp_path / "tiny.toml", TINY)
    status = main(
        ["study", "--config", str(config), "--out", str(out), "--quiet", "--seeds", "0,1"]
    )
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "another configuration" in err
    assert "(seeds 0,1,2 -> 0,1); use --out NEW" in err
    assert main(["study", "--config", str(config), "--out", str(out), "--quiet"]) == 0


def test_quick_has_its_own_default_folder(monkeypatch, tmp_path):
    from labelsmooth import cli

    seen = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "labelsmooth.study.main.run_study",
        lambda config, out, **kwargs: seen.append((config.epochs, str(out))) or {"rank": 1},
    )
    assert cli.main(["study", "--quick", "--quiet"]) == 0
    assert cli.main(["study", "--quiet"]) == 0
    assert seen == [(20, "labelsmooth-study-quick"), (60, "labelsmooth-study")]


def test_a_folder_in_use_is_refused(tiny_study, tmp_path):
    """A second study on a folder that a running study holds exits 2 naming the pid."""
    out, _ = tiny_study
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import fcntl, sys, time
                handle = open({str(out / ".lock")!r}, "a+")
                fcntl.flock(handle, fcntl.LOCK_EX)
                handle.seek(0); handle.truncate(); handle.write("4242"); handle.flush()
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUseError, match=r"in use by another study \(pid 4242\)"):
            run_study(make_config(TINY), out, quiet=True)
        assert (
            main(
                [
                    "study",
                    "--config",
                    str(_toml(tmp_path / "t.toml", TINY)),
                    "--out",
                    str(out),
                    "--quiet",
                ]
            )
            == 2
        )
    finally:
        holder.kill()
        holder.wait()
    assert run_study(make_config(TINY), out, quiet=True)["computed"] == 0  # free again


def test_lock_is_released_after_an_error(tmp_path):
    config = make_config(TINY)
    with StudyFolder(tmp_path, config, "data", {}):
        pass
    with (
        pytest.raises(ConfigError),
        StudyFolder(tmp_path, make_config({**TINY, "lr": 0.1}), "data", {}),
    ):
        pass
    with StudyFolder(tmp_path, config, "data", {}):  # neither left the lock behind
        pass


def test_diverged_runs_are_recorded_counted_and_not_retried(tmp_path, monkeypatch):
    real = experiments.cross_entropy

    def exploding(logits, target, eps=0.1, **kwargs):
        loss = real(logits, target, eps, **kwargs)
        return loss * float("nan") if eps == 0.2 else loss

    monkeypatch.setattr(experiments, "cross_entropy", exploding)
    config = make_config(
        {**TINY, "experiments": ["sweep"], "eps": [0.0, 0.2], "styles": ["uniform"]}
    )
    summary = run_study(config, tmp_path, quiet=True)
    records = _records(tmp_path)
    diverged = [r for r in records if r["status"] == "diverged"]
    assert len(diverged) == 6 and all(r["metrics"] is None for r in diverged)
    assert all("non-finite" in r["error"] for r in diverged)
    assert summary["runs"] == {"finished": 12, "diverged": 6, "planned": 12}
    page = (tmp_path / "report.html").read_text()
    assert "6 of 12 runs diverged" in page
    findings = json.loads((tmp_path / "findings.json").read_text())
    assert findings["runs"]["diverged"] == 6
    assert all(c["n_seeds"] == 0 for c in findings["comparisons"] if "0.2" in c["arm"])
    assert run_study(config, tmp_path, quiet=True)["computed"] == 0  # resume does not retry


def test_interrupt_keeps_finished_runs_and_a_partial_report_says_so(tmp_path, monkeypatch):
    config = make_config(
        {**TINY, "experiments": ["sweep"], "eps": [0.0, 0.2], "styles": ["uniform"]}
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
    render_report(tmp_path)
    assert "Partial report: 3 of 12 runs finished" in (tmp_path / "report.html").read_text()
    monkeypatch.setattr("labelsmooth.study.runner.timed", real)
    assert run_study(config, tmp_path, quiet=True)["computed"] == 9


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.txt", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.txt", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600


def test_time_estimate_warns_with_a_max_train_suggestion(tmp_path):
    import io

    data = data_module.load_digits()
    stream = io.StringIO()
    _warn_if_long(30 * 60, data, make_config({}), "full", 260, 2, stream)
    text = stream.getvalue()
    assert "260 runs to train on 2 workers, estimated 30:00" in text
    assert "far longer than the ~5 min of the full profile" in text
    assert re.search(r"--max-train \d+ would take about 5:00", text)
    stream = io.StringIO()
    _warn_if_long(60, data, make_config({}), "quick", 10, 1, stream)
    assert "warning" not in stream.getvalue()


def _breast_cancer_csv(path, label_first=False):
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    names = ["M" if t == 0 else "B" for t in bunch.target]  # scikit-learn: 0 = malignant
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        header = [f"f{i}" for i in range(bunch.data.shape[1])]
        writer.writerow(["diagnosis", *header] if label_first else [*header, "diagnosis"])
        for row, label in zip(bunch.data, names, strict=True):
            cells = [f"{v:.6g}" for v in row]
            writer.writerow([label, *cells] if label_first else [*cells, label])
    return path


def test_binary_csv_end_to_end(tmp_path, capsys):
    """K = 2 from a CSV whose label is the first column, named by --label-column."""
    path = _breast_cancer_csv(tmp_path / "breast_cancer.csv", label_first=True)
    config = _toml(tmp_path / "tiny.toml", {**TINY, "max_train": 0})
    out = tmp_path / "out"
    assert main(["study", "--dataset", f"csv:{path}", "--out", str(out), "--quiet"]) == 2
    assert "no column named label, target, y or class" in capsys.readouterr().err
    argv = [
        "study",
        "--config",
        str(config),
        "--dataset",
        f"csv:{path}",
        "--label-column",
        "diagnosis",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "recommendation:" in printed and "verdict" in printed
    findings = json.loads((out / "findings.json").read_text())
    assert findings["num_classes"] == 2 and findings["class_names"] == ["B", "M"]
    assert findings["n_train"] + findings["n_val"] + findings["n_test"] == 569
    notes = " ".join(findings["notes"])
    assert "penultimate-layer projection needs three classes" in notes
    assert "Noise rate" not in notes  # 0 and 0.4 are below 1/2
    assert "binary / multi-label experiment is skipped" in notes
    page = (out / "report.html").read_text()
    assert "0 → B, 1 → M" in page and "Verdict" in page
    assert not (out / "figures" / "penultimate_main.png").exists()


def test_noise_rates_a_binary_task_cannot_support_are_skipped(tmp_path):
    path = _breast_cancer_csv(tmp_path / "bc.csv")
    config = make_config(
        {
            **TINY,
            "dataset": f"csv:{path}",
            "label_column": "diagnosis",
            "experiments": ["noise"],
            "noise_rates": [0.0, 0.6],
            "noise_eps": [0.1],
            "seeds": [0, 1],
            "max_train": 200,
        }
    )
    run_study(config, tmp_path / "out", quiet=True)
    findings = json.loads((tmp_path / "out" / "findings.json").read_text())
    notes = " ".join(findings["notes"])
    assert "noise: symmetric noise at rate 0.6 skipped" in notes
    assert "noise: pair-flip noise at rate 0.6 skipped" in notes
    # only the clean cell is left: rate 0 for both kinds of noise
    assert {c["setting"] for c in findings["comparisons"]} == {"clean, rate 0"}


def test_cli_runs_with_a_config_file_and_re_renders(tmp_path, capsys):
    config = _toml(tmp_path / "tiny.toml", {**TINY, "experiments": ["sweep"]})
    out = tmp_path / "out"
    assert main(["study", "--config", str(config), "--out", str(out), "--eps", "0,0.2"]) == 0
    printed = capsys.readouterr()
    assert "chosen smoothing: eps=0.2" in printed.out and "report:" in printed.out
    assert "recommendation:" in printed.out and "findings:" in printed.out
    assert "/18 |" in printed.err  # progress bar: runs done / total (2 settings x 3 x 3)
    assert "18 runs to train on 1 worker, estimated" in printed.err
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
        (["--seeds", "3"], "seeds: at least 2 are needed"),
        (["--noise-rates", "0,1.2"], "noise_rates: 1.2 is outside"),
        (["--device", "tpu"], "device must be cpu"),
        (["--threads", "-1"], "threads must be >= 0"),
        (["--workers", "-1"], "workers must be >= 0"),
        (["--max-train", "-5"], "max_train must be >= 0"),
        (["--label-column", "x"], "--label-column applies to csv: data sets only"),
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
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "results.jsonl").write_text("")
    assert main(["study", "--out", str(legacy), "--quiet"]) == 2
    assert "without a study.json" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(tiny_study, tmp_path):
    """Every figure of report.html loads in a real browser (skipped where Chromium is absent;
    .ci/run installs it, so CI runs it)."""
    import importlib.util
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


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("noise_kinds", ["gaussian"], "noise_kinds: unknown 'gaussian'"),
        ("noise_eps", [-0.1], "noise_eps: -0.1 must be in (0, 1)"),
        ("nls_eps", [0.2], "nls_eps: 0.2 must be negative"),
        ("nls_noise_rates", [1.0], "nls_noise_rates: 1.0 is outside [0, 1)"),
        ("nls_lr", 0, "nls_lr must be > 0"),
        ("transfer_fraction", 1.0, "transfer_fraction must be in (0, 1)"),
        ("mi_noise_std", -1, "mi_noise_std must be > 0"),
        ("lr_grid", [0], "lr_grid: 0.0 must be > 0"),
        ("lr_eps", [1.5], "lr_eps: eps must be <= 1"),
        ("teacher_eps", -0.1, "teacher_eps: eps must be >= 0 with kl=True"),
        ("multilabel_lrs", [1e-3, -1], "multilabel_lrs: -1.0 must be > 0"),
        ("sequence_eps", [-0.1], "sequence_eps: -0.1 is outside [0, 1)"),
        ("sequence_vocab", 5, "sequence_vocab must be >= 16"),
        ("sequence_max_tokens", -1, "sequence_max_tokens must be >= 0"),
        ("text", 3, "text must be a string"),
    ],
)
def test_new_settings_are_checked_with_their_names(setting, value, message, tmp_path, capsys):
    config = _toml(tmp_path / "bad.toml", {setting: value})
    assert main(["study", "--config", str(config), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
