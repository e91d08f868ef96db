"""The command line: the demo on the bundled digits and its error paths."""

import pytest

from labelsmooth.cli import main

pytest.importorskip("sklearn")


def test_demo_runs_and_prints_the_table(capsys):
    assert main(["demo", "--eps", "0,0.2", "--seeds", "0", "--epochs", "3", "--width", "16"]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "mean confidence" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("0 ", "0.2 "))]
    assert [row[0] for row in rows] == ["0", "0.2"]
    accuracy = float(rows[0][1])
    assert 0.3 < accuracy <= 1.0  # a trained model, far above chance (0.1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--eps", "1.5"], "eps must be <= 1"),
        (["demo", "--eps", "0.95", "--style", "others"], "eps must be <= 0.9"),
        (["demo", "--eps", "a,b"], "expected comma-separated numbers"),
        (["demo", "--epochs", "0"], "expected a positive integer"),
        (["demo", "--style", "fairseq"], "invalid choice"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_errors_exit_2_with_one_line(argv, message, capsys):
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bench_command_finds_the_benchmark_scripts(capfd):
    assert main(["bench", "cross-entropy", "--help"]) == 0
    assert "forward + backward" in capfd.readouterr().out
    assert main(["bench", "linear", "--help"]) == 0
    assert "linear-head" in capfd.readouterr().out


@pytest.mark.slow
def test_bench_quick_runs(capfd):
    assert main(["bench", "cross-entropy", "--quick"]) == 0
    assert "native" in capfd.readouterr().out
