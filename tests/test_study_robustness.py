"""Every failure of `labelsmooth study` / `labelsmooth report` is one line, exit 2: bad data files,
bad config values, an unwritable or full --out, corrupt results; no finished run is lost; and
nothing the report prints from the results files can inject markup."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import struct
import types

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from labelsmooth.cli import main
from labelsmooth.study import runner
from labelsmooth.study.config import ConfigError, load_toml, make_config

TINY = {
    "experiments": ["sweep"],
    "eps": [0.0, 0.1],
    "styles": ["uniform"],
    "seeds": [0, 1],
    "epochs": 2,
    "width": 8,
    "max_train": 200,
    "overconfident_train_size": 60,
    "overconfident_epochs": 2,
    "workers": 1,
}
RUNS = 8  # 2 settings x 2 arms x 2 seeds


def _toml(path, values, table="[study]"):
    lines = [table] + [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _fails(argv, capsys, *fragments):
    """`labelsmooth ARGV` exits 2 with exactly one line on stderr holding every fragment."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _study(config, out):
    return ["study", "--config", str(config), "--out", str(out), "--quiet"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny study: (its folder, its config file)."""
    root = tmp_path_factory.mktemp("robust")
    config = _toml(root / "tiny.toml", TINY)
    assert main(_study(config, root / "out")) == 0
    return root / "out", config


@pytest.fixture
def study_copy(finished, tmp_path):
    out, config = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy, config


# ----------------------------------------------------------------------------------------------
# Corrupt results.jsonl / study.json / arrays
# ----------------------------------------------------------------------------------------------


def _record(**changes):
    record = {
        "key": "sweep|main|none|0|0",
        "experiment": "sweep",
        "setting": "main",
        "status": "ok",
        "params": {"style": "none", "eps": 0.0},
        "seed": 0,
        "metrics": {"nll": 0.5},
        "seconds": 1.0,
    }
    record.update(changes)
    return json.dumps(record)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not JSON"),
        ("[1, 2, 3]", "it holds [1, 2, 3], not an object"),
        ('"text"', "not an object"),
        ('{"key": "x"}', "experiment must be a string"),
        (_record(seed="0"), 'seed must be an integer, got "0"'),
        (_record(seed=True), "seed must be an integer, got true"),
        (_record(params={"style": "none"}), "params.eps must be a number, got null"),
        (_record(params={"style": "<b>", "eps": 0.1}), 'params.style must be a number, got "<b>"'),
        (_record(metrics={"nll": "low"}), "metrics must be an object of numbers"),
        (_record(metrics=None), "a finished run (status ok) needs metrics"),
        (_record(status="weird"), 'status must be ok or diverged, got "weird"'),
        (_record(experiment="magic"), "unknown experiment 'magic'"),
        (_record(config={"seeds": 5}), "config.seeds must be a list of integers, got 5"),
        (_record(config={"select": "best"}), "config.select must be accuracy, nll or final"),
    ],
)
@pytest.mark.parametrize("command", ["study", "report"])
def test_corrupt_results_line_is_one_line_naming_the_file_and_line(
    study_copy, capsys, line, problem, command
):
    out, config = study_copy
    path = out / "results.jsonl"
    lines = path.read_text().splitlines()
    lines.insert(2, line)
    path.write_text("\n".join(lines) + "\n")
    argv = _study(config, out) if command == "study" else ["report", str(out)]
    message = _fails(argv, capsys, f"{path}: line 3 is not a labelsmooth result", problem)
    assert "delete that line to recompute the run" in message


@pytest.mark.parametrize("command", ["study", "report"])
def test_results_that_are_not_utf8(study_copy, capsys, command):
    out, config = study_copy
    path = out / "results.jsonl"
    path.write_bytes(path.read_bytes() + b"\xff\xfe\n")
    argv = _study(config, out) if command == "study" else ["report", str(out)]
    _fails(argv, capsys, f"{path} is not a labelsmooth file (not UTF-8 text")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{oops", "not JSON"),
        ("[]", "it holds [], not an object"),
        ('{"config": {}}', "it has no fingerprint"),
        ('{"fingerprint": 7}', "fingerprint must be a string, got 7"),
        ('{"fingerprint": "f", "config": []}', "config must be an object, got []"),
        ('{"fingerprint": "f", "class_names": [1, 2]}', "class_names must be strings"),
        ('{"fingerprint": "f", "num_classes": "ten"}', 'num_classes must be an integer, got "ten"'),
        ('{"fingerprint": "f", "config": {"projection_classes": [0]}}', "projection_classes"),
    ],
)
@pytest.mark.parametrize("command", ["study", "report"])
def test_corrupt_study_json_is_one_line(study_copy, capsys, text, problem, command):
    out, config = study_copy
    (out / "study.json").write_text(text)
    argv = _study(config, out) if command == "study" else ["report", str(out)]
    _fails(argv, capsys, f"{out / 'study.json'} is not a labelsmooth study.json", problem)


def test_corrupt_or_incomplete_arrays_are_one_line(study_copy, capsys):
    out, _ = study_copy
    arrays = sorted((out / "arrays").glob("*.npz"))
    arrays[0].write_bytes(b"garbage")
    message = _fails(["report", str(out)], capsys, str(arrays[0]), "cannot be read")
    assert "delete the run from results.jsonl" in message
    for path in arrays:
        np.savez(path, unrelated=np.zeros(2))
    _fails(["report", str(out)], capsys, "lack '")


# ----------------------------------------------------------------------------------------------
# An unwritable or full --out: one line, and the runs finished before are kept
# ----------------------------------------------------------------------------------------------


def _failing_fsync(monkeypatch, allowed, code):
    """os.fsync (called once per atomic write of the study folder) fails with ``code`` after
    ``allowed`` successful calls."""
    real = os.fsync
    calls = {"count": 0}

    def fsync(fd):
        calls["count"] += 1
        if calls["count"] > allowed:
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(runner.os, "fsync", fsync)


def _valid_records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_full_disk_during_a_study_is_one_line_and_keeps_the_finished_runs(
    tmp_path, capsys, monkeypatch
):
    config = _toml(tmp_path / "tiny.toml", TINY)
    out = tmp_path / "out"
    # study.json, then each run's arrays (first seed) and results.jsonl: 6 writes = 3 runs
    _failing_fsync(monkeypatch, 6, errno.ENOSPC)
    message = _fails(_study(config, out), capsys, f"--out {out}", "No space left on device")
    assert f"the runs finished before are kept in {out / 'results.jsonl'}" in message
    kept = _valid_records(out)
    assert len(kept) == 3 and all(r["metrics"] for r in kept)
    assert not list(out.rglob("*.tmp"))  # no temporary file left behind
    monkeypatch.undo()
    assert main(_study(config, out)) == 0  # resumes: only the missing runs are trained
    assert "5 trained now, 3 resumed" in capsys.readouterr().out
    assert len(_valid_records(out)) == RUNS


def test_full_disk_while_writing_the_report_is_one_line(study_copy, capsys, monkeypatch):
    out, config = study_copy
    before = (out / "results.jsonl").read_bytes()
    _failing_fsync(monkeypatch, 0, errno.ENOSPC)
    _fails(["report", str(out)], capsys, "cannot write", str(out), "No space left on device")
    _fails(_study(config, out), capsys, f"--out {out}", "No space left on device")
    assert (out / "results.jsonl").read_bytes() == before


def test_read_only_out_is_one_line(tmp_path, capsys, monkeypatch):
    """A folder that refuses new files (simulated: the tests may run as root, who may write
    anywhere), from the start and after the first runs."""
    config = _toml(tmp_path / "tiny.toml", TINY)
    real = runner.tempfile.mkstemp
    allowed = {"count": 0}

    def mkstemp(*args, **kwargs):
        if allowed["count"] <= 0:
            raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))
        allowed["count"] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
    out = tmp_path / "out"
    _fails(_study(config, out), capsys, f"cannot write {out / 'study.json'} (Permission denied)")
    allowed["count"] = 3  # study.json, then the first run's arrays and its results line
    _fails(_study(config, tmp_path / "later"), capsys, "Permission denied")
    assert len(_valid_records(tmp_path / "later")) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to a read-only folder")
def test_really_read_only_out(tmp_path, capsys):  # pragma: no cover - CI runs as a user
    config = _toml(tmp_path / "tiny.toml", TINY)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        _fails(_study(config, out), capsys, str(out), "Permission denied")
    finally:
        out.chmod(0o755)


def test_out_in_a_missing_unwritable_place(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = _toml(tmp_path / "tiny.toml", TINY)
    _fails(_study(config, blocker / "out"), capsys, str(blocker / "out"))


# ----------------------------------------------------------------------------------------------
# Malformed TOML values
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("study = 5\n", ["study must be a table", "got 5"]),
        ('study = "digits"\n', ["study must be a table"]),
        ("[study]\nepochs = [3]\n", ["epochs must be an integer, got [3]"]),
        ("[study]\nepochs = true\n", ["epochs must be an integer, got True"]),
        ("[study]\nepochs = 2.5\n", ["epochs must be an integer, got 2.5"]),
        ('[study]\nwidth = "64"\n', ["width must be an integer, got '64'"]),
        ("[study]\nlr = false\n", ["lr must be a number, got False"]),
        ("[study]\nseeds = [1.5, 2]\n", ["seeds must be a list of ints, got [1.5, 2]"]),
        ("[study]\neps = [true, 0.1]\n", ["eps must be a list of floats"]),
        ('[study]\neps = ["0.1"]\n', ["eps must be a list of floats"]),
        ("[study]\nseeds = []\n", ["seeds must be a non-empty list"]),
        ("[study]\nstyles = [{a = 1}]\n", ["styles must be a list of strs"]),
        ("[study]\ndataset = 5\n", ["dataset must be a string, got 5"]),
        ("[study]\nepochs = 1979-05-27\n", ["epochs must be an integer"]),
        ("[study]\nn_bins = 1000000000\n", ["n_bins must be <= 100000"]),
        ('[study]\nmax_data_bytes = "lots"\n', ["max_data_bytes must be a number of bytes"]),
        ("[study]\nmax_classes = 1\n", ["max_classes must be >= 2"]),
        ("[study]\nepochs = [\n", ["not valid TOML"]),
    ],
)
def test_malformed_toml_values_are_one_line(tmp_path, capsys, text, fragments):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    argv = ["study", "--config", str(path), "--out", str(tmp_path / "o")]
    _fails(argv, capsys, f"--config: {path}", *fragments)
    assert not (tmp_path / "o").exists()


def test_toml_that_is_not_utf8_or_not_a_file(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    path.write_bytes("[study]\ndataset = 'caf\xe9'\n".encode("latin-1"))
    _fails(["study", "--config", str(path)], capsys, str(path), "is not UTF-8 text")
    _fails(["study", "--config", str(tmp_path)], capsys, f"cannot read {tmp_path}")


def test_toml_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[study]\nepochs = 3\n")
    assert load_toml(path) == {"epochs": 3}
    with pytest.raises(ConfigError, match="epochs must be an integer, got True"):
        make_config({"epochs": True})


def test_limits_are_settings_and_flags_that_do_not_change_the_fingerprint():
    plain = make_config({})
    capped = make_config({"max_data_bytes": "4G", "max_classes": 50})
    assert capped.max_data_bytes == 4 * 1024**3 and capped.max_classes == 50
    assert plain.fingerprint("data") == capped.fingerprint("data")


# ----------------------------------------------------------------------------------------------
# Bad data files through the command line
# ----------------------------------------------------------------------------------------------


def _idx_gz(path, shape, payload_bytes):
    with gzip.open(path, "wb") as stream:
        stream.write(bytes([0, 0, 8, len(shape)]) + b"".join(struct.pack(">I", n) for n in shape))
        for _ in range(payload_bytes // 2**22):
            stream.write(bytes(2**22))


def test_bad_data_files_are_one_line(tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--quiet"]
    np.savez_compressed(
        tmp_path / "bomb.npz", x=np.zeros((4096, 4096), np.uint8), y=np.zeros(4096, np.int64)
    )
    _fails(
        ["study", "--dataset", f"npz:{tmp_path / 'bomb.npz'}", "--max-data-bytes", "64M", *out],
        capsys,
        "array 'x' of shape (4096, 4096) would take 128.0 MiB",
        "over the limit of 64.0 MiB",
    )
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    _idx_gz(mnist / "train-images-idx3-ubyte.gz", (600000, 64, 64), 2**24)
    _fails(
        ["study", "--dataset", f"mnist:{mnist}", *out],
        capsys,
        "shape (600000, 64, 64)",
        "over the limit of 2.0 GiB",
    )
    np.savez(tmp_path / "text.npz", x=np.zeros((6, 2)), y=np.array(list("ababab")))
    _fails(["study", "--dataset", f"npz:{tmp_path / 'text.npz'}", *out], capsys, "dtype <U1")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    _fails(
        ["study", "--dataset", f"npz:{tmp_path / 'plain.npy'}", *out],
        capsys,
        "not a readable .npz file",
    )
    lines = ["label,a,b"] + [f"{i % 40},{i},{i * 2}" for i in range(120)]
    (tmp_path / "many.csv").write_text("\n".join(lines) + "\n")
    _fails(
        ["study", "--dataset", f"csv:{tmp_path / 'many.csv'}", "--max-classes", "30", *out],
        capsys,
        "40 distinct labels (classes), more than the limit of 30",
    )
    (tmp_path / "bin.csv").write_bytes(b"label,a\n\xff\xfe,1\n")
    _fails(["study", "--dataset", f"csv:{tmp_path / 'bin.csv'}", *out], capsys, "not a UTF-8")
    with pytest.raises(SystemExit) as exit_:  # argparse: its usage, then one error line
        main(["study", "--max-data-bytes", "lots", *out])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--max-data-bytes must be a number of bytes" in err
    assert not (tmp_path / "o" / "results.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# Nothing from the results files reaches the report unescaped
# ----------------------------------------------------------------------------------------------

ATTACK = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def _assert_escaped(page):
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert" in page


def test_tampered_study_json_cannot_inject_markup(study_copy, capsys):
    out, _ = study_copy
    study = json.loads((out / "study.json").read_text())
    study["dataset"] = ATTACK
    study["config"]["dataset"] = ATTACK
    study["notes"] = [ATTACK]
    # "$\\oops{$" would make matplotlib's mathtext fail on the penultimate figure's legend
    study["class_names"] = [f"<i>${i}\\oops{{$" for i in range(study["num_classes"])]
    study["settings"]["main"]["description"] = ATTACK
    (out / "study.json").write_text(json.dumps(study))
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    _assert_escaped(page)
    assert page.count("&lt;script&gt;alert") >= 4  # title, heading, methods, notes
    assert "0 → &lt;i&gt;$0\\oops{$" in page and "<i>$0" not in page
    assert (out / "figures" / "penultimate_main.png").exists()


def test_tampered_results_cannot_inject_markup(study_copy, capsys):
    out, _ = study_copy
    (out / "study.json").unlink()  # the report then takes the settings from the results
    records = _valid_records(out)
    for record in records:
        record["config"]["dataset"] = ATTACK
        record["versions"] = {"labelsmooth": ATTACK}
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(out)]) == 0
    _assert_escaped((out / "report.html").read_text())


def test_the_template_never_switches_escaping_off():
    from pathlib import Path

    import labelsmooth.study.report as report

    template = Path(report.__file__).parent / "templates" / "report.html.j2"
    text = template.read_text()
    assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text
    source = Path(report.__file__).read_text()
    assert source.count("Markup(") == 1 and 'Markup("<br>")' in source  # a constant only
