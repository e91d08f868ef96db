"""The sequence experiment: its loss, padding, corpus, split, --text and fingerprint."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from labelsmooth import metrics
from labelsmooth.cli import main
from labelsmooth.study import exp_sequence as seq
from labelsmooth.study import text as tx
from labelsmooth.study.config import ConfigError, make_config

STYLES = [("none", 0.0), ("uniform", 0.1), ("others", 0.1), ("nmt", 0.1), ("nmt", 0.3)]


def _paragraph(i: int) -> str:
    words = ["the", "model", "reads", "a", "word", "and", "the", "next", "one", f"w{i % 7}"]
    return " ".join(words[(i + j) % len(words)] for j in range(6 + i % 5)) + "."


def _write_text(path, paragraphs: int = 30, offset: int = 0) -> str:
    path.write_text("\n\n".join(_paragraph(i + offset) for i in range(paragraphs)) + "\n")
    return str(path)


def _hidden_weight_target(k: int = 9, h: int = 5):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, h, generator=generator, dtype=torch.float64)
    weight = torch.randn(k, h, generator=generator, dtype=torch.float64)
    target = torch.randint(1, k, (3, 6), generator=generator)  # <pad> (0) is never a target
    target[0, 4:] = tx.IGNORE_INDEX
    target[2, 1:] = tx.IGNORE_INDEX
    return hidden.requires_grad_(), weight.requires_grad_(), target


# ----------------------------------------------------------------------------------------------
# The training loss
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style,eps", STYLES)
def test_loss_equals_cross_entropy_on_materialised_logits(style, eps):
    hidden, weight, target = _hidden_weight_target()
    loss = seq.sequence_loss(hidden, weight, target, eps, style)
    grads = torch.autograd.grad(loss, (hidden, weight))
    reference = seq.reference_loss(hidden @ weight.T, target, eps, style)
    expected = torch.autograd.grad(reference, (hidden, weight))
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    # the padded positions get no gradient
    assert float(grads[0][target == tx.IGNORE_INDEX].abs().max()) == 0.0


def test_nmt_loss_is_the_kl_to_a_target_built_by_hand():
    hidden, weight, target = _hidden_weight_target()
    eps, k = 0.2, weight.shape[0]
    log_p = torch.log_softmax(hidden @ weight.T, -1).detach()
    total, count = 0.0, 0
    for b in range(target.shape[0]):
        for t in range(target.shape[1]):
            y = int(target[b, t])
            if y == tx.IGNORE_INDEX:
                continue
            # 1 - eps on the label, eps / (K - 2) on each class that is neither it nor <pad>
            tgt = [0.0 if c == tx.PAD else (1 - eps if c == y else eps / (k - 2)) for c in range(k)]
            total += sum(p * (math.log(p) - float(log_p[b, t, c])) for c, p in enumerate(tgt) if p)
            count += 1
    loss = seq.sequence_loss(hidden, weight, target, eps, "nmt").detach()
    assert float(loss) == pytest.approx(total / count, rel=1e-10)
    # the same gradient as plain "others" with <pad> excluded: the KL only drops a constant
    assert float(loss) > 0


def test_padding_columns_change_neither_loss_nor_gradient():
    hidden, weight, target = _hidden_weight_target()
    extra = torch.randn(3, 4, hidden.shape[-1], dtype=torch.float64)
    longer = torch.cat([hidden, extra], 1)
    padded = torch.cat([target, torch.full((3, 4), tx.IGNORE_INDEX)], 1)
    for style, eps in STYLES:
        a = seq.sequence_loss(hidden, weight, target, eps, style)
        b = seq.sequence_loss(longer, weight, padded, eps, style)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Padding never reaches a metric
# ----------------------------------------------------------------------------------------------


def test_padding_changes_no_hidden_state_and_no_metric():
    torch.manual_seed(0)
    model = seq.TinyLM(20, 16, 1, 20).eval()
    pieces = [[2, 5, 6, 7, 2], [2, 9, 2], [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 2]]
    together = seq.token_states(model, pieces, "cpu")  # padded to the longest piece
    alone = [seq.token_states(model, [p], "cpu") for p in pieces]  # no padding at all
    torch.testing.assert_close(together[0], torch.cat([h for h, _ in alone]), rtol=0, atol=1e-5)
    assert together[1].tolist() == [t for p in pieces for t in p[1:]]
    assert len(together[1]) == sum(len(p) - 1 for p in pieces)
    weight = model.head_weight.detach()
    a, _ = seq.measure_tokens(*together[:1], weight, together[1], n_bins=5)
    b, _ = seq.measure_tokens(torch.cat([h for h, _ in alone]), weight, together[1], n_bins=5)
    for name in a:
        assert a[name] == pytest.approx(b[name], rel=1e-5, abs=1e-6)
    # appending pad tokens to the inputs leaves every earlier position as it was
    inputs, _ = tx.batch(pieces)
    wider = torch.cat([inputs, torch.full((3, 5), tx.PAD)], 1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(wider)[:, : inputs.shape[1]], model(inputs), atol=1e-5, rtol=0
        )


def test_measure_tokens_against_the_library_on_materialised_logits():
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 4, generator=generator)
    weight = torch.randn(7, 4, generator=generator)
    target = torch.randint(1, 7, (50,), generator=generator)
    result, per_token = seq.measure_tokens(hidden, weight, target, n_bins=4, temperature=2.0)
    logits = (hidden @ weight.T).double() / 2.0
    probs = logits.softmax(-1)
    nll = float(torch.nn.functional.cross_entropy(logits, target))
    assert result["token_nll"] == pytest.approx(nll, rel=1e-9)
    assert result["perplexity"] == pytest.approx(math.exp(nll), rel=1e-9)
    accuracy = float((logits.argmax(-1) == target).double().mean())
    assert result["token_accuracy"] == pytest.approx(accuracy)
    assert result["token_ece"] == pytest.approx(
        metrics.expected_calibration_error(probs, target, 4), rel=1e-9
    )
    gap = metrics.logit_gap(logits[:, 1:]).mean()  # <pad> (class 0) left out
    assert result["logit_gap"] == pytest.approx(float(gap), rel=1e-6)
    assert per_token["confidence"].shape == (50,)


@pytest.mark.parametrize("scale", [0.01, 0.3, 3.0, 30.0, 300.0])
def test_temperature_fit_equals_the_library(scale):
    generator = torch.Generator().manual_seed(2)
    logits = scale * torch.randn(300, 11, generator=generator)
    target = torch.randint(0, 11, (300,), generator=generator)
    target[:200] = logits[:200].argmax(1)  # partly right: an optimum inside the bounds or not
    assert seq.fit_token_temperature(logits, target) == pytest.approx(
        metrics.fit_temperature(logits, target), rel=1e-5
    )


def test_theoretical_gap_per_style():
    k = 100
    assert seq.theoretical_gap(0.1, "uniform", k) == pytest.approx(math.log(1 + k * 0.9 / 0.1))
    assert seq.theoretical_gap(0.1, "others", k) == pytest.approx(math.log((k - 1) * 0.9 / 0.1))
    # <pad> has no mass: K - 1 classes, one of them the label
    assert seq.theoretical_gap(0.1, "nmt", k) == pytest.approx(math.log((k - 2) * 0.9 / 0.1))


# ----------------------------------------------------------------------------------------------
# Corpus, vocabulary, split
# ----------------------------------------------------------------------------------------------


def test_tokens_vocabulary_and_pieces_by_hand():
    assert tx.tokenize("The cat's 2 hats!") == ["the", "cat's", "2", "hats", "!"]
    vocab = tx.build_vocabulary([("b", "a", "a"), ("c", "b", "a", "d")], 5)
    # a (3) and b (2) are seen twice or more; c and d once: <unk>
    assert vocab.words == ("<pad>", "<unk>", "<s>", "a", "b")
    assert tx.build_vocabulary([("b", "a", "a"), ("c", "b", "a", "d")], 4).words[3:] == ("a",)
    pieces = tx.segments([("a", "b", "c")], vocab, 2)
    assert pieces == [[2, 3, 4], [4, 1, 2]]  # <s> a b c <s>, cut at 2 targets, overlap 1
    inputs, targets = tx.batch([*pieces, [2, 3]])
    assert inputs.tolist() == [[2, 3], [4, 1], [2, 0]]
    assert targets.tolist() == [[3, 4], [1, 2], [3, -100]]


def test_split_by_document_is_deterministic_and_disjoint(tmp_path):
    path = _write_text(tmp_path / "t.txt", 40)
    corpus = tx.load_corpus(path)
    assert corpus == tx.load_corpus(path)
    train, val, test = tx.split_documents(corpus, 0.15)
    assert (train, val, test) == tx.split_documents(corpus, 0.15)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(train + val + test) == list(range(len(corpus.documents)))
    sizes = [sum(len(p) for i in part for p in corpus.documents[i]) for part in (val, test)]
    assert all(size >= 0.15 * corpus.num_tokens for size in sizes)
    a = tx.prepare_splits(corpus, 50, 8, 0, 0.15)
    b = tx.prepare_splits(corpus, 50, 8, 0, 0.15)
    assert a == b
    # every target token appears once: a paragraph of n tokens gives n + 1 targets
    assert sum(a.sizes().values()) == corpus.num_tokens + sum(len(d) for d in corpus.documents)
    # the vocabulary comes from the training documents only
    seen = {w for i in train for p in corpus.documents[i] for w in p}
    assert set(a.vocab.words[3:]) <= seen
    capped = tx.prepare_splits(corpus, 50, 8, 100, 0.15)
    assert sum(capped.sizes().values()) <= 110


def test_builtin_corpus_split_keeps_topics_apart():
    corpus = tx.load_corpus("")
    if corpus is None:
        pytest.skip("this Python has no pydoc_data")
    train, val, test = tx.split_documents(corpus, 0.15)
    assert len(set(train) | set(val) | set(test)) == len(train) + len(val) + len(test)
    assert len(train) + len(val) + len(test) == len(corpus.documents)


# ----------------------------------------------------------------------------------------------
# --text end to end, bad files, the fingerprint
# ----------------------------------------------------------------------------------------------

TINY = """
[study]
experiments = ["sequence"]
seeds = [0, 1]
sequence_eps = [0.0, 0.2]
sequence_width = 8
sequence_layers = 1
sequence_length = 12
sequence_epochs = 2
sequence_batch_size = 8
workers = 1
"""


def test_text_file_end_to_end_and_fingerprint(tmp_path, capsys):
    text = _write_text(tmp_path / "corpus.txt", 30)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out = tmp_path / "out"
    args = ["study", "--config", str(config), "--text", text, "--out", str(out), "--quiet"]
    assert main(args) == 0
    findings = json.loads((out / "findings.json").read_text())
    summary = findings["experiments"]["sequence"]
    splits = seq.token_splits(make_config({"text": text, "sequence_length": 12}))
    assert summary["num_classes"] == splits.num_classes
    assert summary["n_test_tokens"] == splits.sizes()["n_test"]
    assert summary["chosen"]["selected_on"] == "validation"
    assert [a["arm"] for a in summary["arms"]] == [
        "eps=0",
        "eps=0.2 uniform",
        "eps=0.2 others",
        "eps=0.2 nmt",
    ]
    compared = [c for c in findings["comparisons"] if c["experiment"] == "sequence"]
    assert compared and all(c["n_seeds"] == 2 for c in compared)
    report = (out / "report.html").read_text()
    assert "Token-level smoothing" in report and "corpus.txt" in report
    # the same command resumes; another text in the same folder is refused (exit 2)
    assert main(args) == 0
    _write_text(tmp_path / "corpus.txt", 30, offset=1)
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "the sequence experiment's text" in error and "data set's contents" not in error


def test_fingerprint_follows_the_file_contents(tmp_path):
    path = tmp_path / "a.txt"
    config = make_config({"text": _write_text(path, 30), "experiments": ["sequence"]})
    first = seq.corpus_fingerprint(config)
    assert seq.corpus_fingerprint(config) == first
    _write_text(path, 30, offset=3)
    assert seq.corpus_fingerprint(config) != first
    builtin = dataclasses.replace(config, text="")
    assert seq.corpus_fingerprint(builtin) not in (first, "")


@pytest.mark.parametrize("problem", ["missing", "binary", "small", "directory"])
def test_bad_text_file_is_a_clear_error(tmp_path, capsys, problem):
    path = tmp_path / "bad.txt"
    if problem == "binary":
        path.write_bytes(b"hello \xff\xfe world\n\n" * 200)
    elif problem == "small":
        path.write_text("one paragraph\n\nand another\n")
    elif problem == "directory":
        path.mkdir()
    config = make_config({"text": str(path), "experiments": ["sequence"]})
    with pytest.raises(ConfigError) as caught:
        seq.corpus_fingerprint(config)
    message = str(caught.value)
    assert str(path) in message
    expected = {
        "missing": "does not exist",
        "binary": "not UTF-8",
        "small": "too small",
        "directory": "directory",
    }[problem]
    assert expected in message
    out = tmp_path / "out"
    args = ["study", "--experiments", "sequence", "--text", str(path), "--out", str(out)]
    assert main([*args, "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()  # refused before any training


def test_plan_has_every_arm_and_refuses_negative_eps(tmp_path):
    from labelsmooth.study.experiments import Plan

    text = _write_text(tmp_path / "t.txt", 30)
    config = make_config({"text": text, "experiments": ["sequence"], "seeds": [3, 4]})
    plan = Plan(runs=[])
    seq.build(None, config, plan)
    keys = [run.key for run in plan.runs]
    assert len(keys) == len(set(keys)) == 2 * 4  # eps 0, and eps 0.1 in three styles
    assert {(r.params["eps"], r.params["style"]) for r in plan.runs} == {
        (0.0, "none"),
        (0.1, "uniform"),
        (0.1, "others"),
        (0.1, "nmt"),
    }
    assert plan.settings["sequence"]["n_test"] > 0
    bad = dataclasses.replace(config, sequence_eps=(0.0, -0.1))
    with pytest.raises(ConfigError, match="negative"):
        seq.build(None, bad, Plan(runs=[]))


# ----------------------------------------------------------------------------------------------
# The analysis on synthetic records: the choice's margins, the TS ECE interval, the figure bins
# ----------------------------------------------------------------------------------------------

ARMS = [(0.0, "none"), (0.1, "uniform"), (0.1, "others"), (0.1, "nmt")]
SEEDS = [0, 1, 2, 3, 4]
WOBBLE = [0.003, -0.001, 0.002, -0.004, 0.0]


def sequence_records(val_ts):
    """One record per (arm, seed); ``val_ts`` maps a style to its mean validation token NLL
    after TS (the per-seed wobble is shared by every arm, so paired differences are exact)."""
    records = []
    for eps, style in ARMS:
        for seed in SEEDS:
            w = WOBBLE[seed]
            metrics_ = {
                "token_nll": 3.7 + eps / 2 + w,
                "ts_token_nll": 3.69 + eps / 3 + w,
                "perplexity": 40.0 + 10 * eps + w,
                "token_accuracy": 0.32 + w,
                "token_ece": 0.02 + eps / 10 + w,
                "ts_token_ece": 0.015 + (0.01 if eps else 0.0) + w * (1 + seed) / 3,
                "logit_gap": 9.7 - 17 * eps + w,
                "temperature": 1.0,
                "val_token_nll": val_ts[style] + 0.01,
                "val_token_nll_ts": val_ts[style] + w,
                "best_epoch": 4.0,
                "epochs": 4.0,
            }
            if eps:
                metrics_["theoretical_gap"] = 9.79
            records.append(
                {
                    "key": f"sequence|main|{eps:g}|{style}|{seed}",
                    "status": "ok",
                    "experiment": "sequence",
                    "setting": "main",
                    "params": {"eps": eps, "style": style},
                    "seed": seed,
                    "metrics": metrics_,
                }
            )
    return records


def analysed_sequence(val_ts):
    from labelsmooth.study.findings import Findings, group_results

    findings = Findings(seeds=SEEDS)
    seq.analyse(findings, group_results(sequence_records(val_ts)))
    return findings


def test_choice_says_when_validation_preferred_no_smoothing_and_its_margins():
    findings = analysed_sequence(
        {"none": 4.0443, "uniform": 4.0646, "others": 4.0576, "nmt": 4.0595}
    )
    text = " ".join(findings.sections["sequence"]["sentences"])
    chosen = findings.experiments["sequence"]["chosen"]
    assert chosen["arm"] == "eps=0.1 others" and chosen["selected_on"] == "validation"
    assert chosen["baseline_lowest_on_validation"] is True
    assert chosen["runner_up"] == "eps=0.1 nmt"
    assert chosen["val_minus_runner_up"]["mean_delta"] == pytest.approx(-0.0019, abs=1e-9)
    assert chosen["val_minus_baseline"]["mean_delta"] == pytest.approx(0.0133, abs=1e-9)
    assert "Validation preferred no smoothing: the baseline's 4.0443 is below every" in text
    assert "the chosen arm's minus the baseline's is +0.0133" in text
    assert "The runner-up, eps=0.1 (NMT criterion" in text
    assert "the chosen arm's minus the runner-up's is -0.0019" in text
    assert "lower on 5 of 5 seeds" in text
    assert not re.search(r"\b(better|worse|beats?|wins?|helps?|hurts?)\b", text, re.I)
    # when an arm is below the baseline on validation, no preference for "no smoothing" is said
    other = analysed_sequence({"none": 4.06, "uniform": 4.07, "others": 4.05, "nmt": 4.0595})
    other_text = " ".join(other.sections["sequence"]["sentences"])
    assert "Validation preferred no smoothing" not in other_text
    assert other.experiments["sequence"]["chosen"]["baseline_lowest_on_validation"] is False
    assert "the chosen arm's minus the baseline's is -0.0100" in other_text


def test_token_ece_after_ts_has_an_interval_and_is_counted():
    findings = analysed_sequence({"none": 4.04, "uniform": 4.06, "others": 4.05, "nmt": 4.055})
    compared = [c for c in findings.comparisons if c["metric"] == "ts_token_ece"]
    assert len(compared) == 3
    assert all(c["mean_delta"] == pytest.approx(0.01, abs=1e-12) for c in compared)
    rows = findings.sections["sequence"]["rows"]
    assert all(row.comparisons.get("ts_token_ece") is not None for row in rows[1:])
    text = " ".join(findings.sections["sequence"]["sentences"])
    assert "after temperature scaling of both it raised token NLL" in text
    assert "and raised token ECE by 0.010" in text
    assert findings.experiments["sequence"]["intervals"] == 3 * len(seq.COMPARED) == 21
    assert "These are 21 intervals (3 arms x 7 metrics)" in text


@pytest.mark.parametrize("n_bins", [4, 15])
def test_reliability_figure_uses_the_configured_bins(n_bins):
    pytest.importorskip("matplotlib")
    import numpy as np

    findings = analysed_sequence({"none": 4.04, "uniform": 4.06, "others": 4.05, "nmt": 4.055})
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0, 1, 4000)
    arrays = {
        "confidence": confidence,
        "correct": rng.uniform(0, 1, 4000) < confidence,
        "gap": rng.normal(8, 1, 4000),
    }
    captions = {}

    def save_figure(name, figure, caption):
        line = figure.axes[0].lines[1]  # the first arm's reliability curve (after the diagonal)
        captions[name] = (caption, len(line.get_xdata()))
        return {"name": name}

    seq.section(findings, lambda key: arrays, save_figure, {"config": {"n_bins": n_bins}})
    caption, points = captions["sequence_reliability_gap"]
    assert f"{n_bins} equal-width bins" in caption
    assert points == n_bins  # every bin holds >= 20 of the 4000 tokens
