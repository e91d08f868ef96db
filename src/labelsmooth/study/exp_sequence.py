"""The ``sequence`` experiment: token-level smoothing of a small Transformer language model.

Where most users meet label smoothing: a token-level loss over a vocabulary, with padding.

* **Data** (:mod:`labelsmooth.study.text`): English text (``pydoc_data.topics`` or
  ``--text FILE``), word tokens, a vocabulary of at most ``sequence_vocab`` (K) from the
  training documents, a split by document fixed with seed 0 (the same for every study
  seed), paragraphs cut at ``sequence_length`` and padded at the end; padded targets are
  ``-100`` (``ignore_index``) and count in no loss and no metric.
* **Model**: a causal Transformer LM (``nn.TransformerEncoder`` with a causal mask, pre-norm,
  learned positions, ``sequence_width``, ``sequence_layers``, 4 heads, dropout 0.1, the output
  matrix tied to the embedding), trained with Adam at ``lr`` for ``sequence_epochs`` (gradient
  norm clipped at 1), batches of ``batch_size`` pieces. The seed sets the initialisation and
  the batch order (paired across arms).
* **Loss**: :func:`labelsmooth.linear_cross_entropy` on the hidden states and the (tied)
  output matrix, so the (tokens, K) logits are never materialised in training. Arms: eps 0;
  each eps > 0 of ``sequence_eps`` in style ``uniform`` and ``others``; and the NMT
  criterion (OpenNMT-py's / the Annotated Transformer's): style ``others`` with ``<pad>``
  given no smoothing mass (``exclude_classes``) and the KL divergence to the smoothed target
  (``kl=True``), which is the smoothed cross-entropy minus the target's entropy, a constant
  per token; it is computed so (:func:`sequence_loss`) and equals
  ``labelsmooth.cross_entropy(..., kl=True)`` on the materialised logits.
* **Checkpoint**: the epoch with the lowest validation token NLL (unsmoothed, whatever the
  arm's loss). **Temperature**: T fitted on the validation tokens' NLL; a T at a bound, or
  one that does not lower the validation NLL, is flagged and not applied.
* **Metrics** on the test tokens (non-pad only): token NLL, perplexity exp(NLL), token
  accuracy, token ECE (``n_bins`` equal-width bins), the mean logit gap (largest logit minus
  the mean of the others, over the K - 1 classes that can be targets: ``<pad>`` never is)
  and the theoretical gap of the arm's smoothed target; the same after temperature scaling.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import metrics, streaming
from ..functional import cross_entropy
from ..kernels.linear import linear_cross_entropy
from .config import ConfigError, StudyConfig
from .data import Split
from .experiments import Plan, Run, RunContext
from .findings import Findings, Group, Row, _words, chance_count, choose, select, validation_margin
from .outputs import TEMPERATURE_BOUNDS, Arrays, Metrics
from .sections import LoadArrays, SaveFigure, Section, Table
from .stats import Comparison, format_interval
from .text import (
    IGNORE_INDEX,
    PAD,
    TokenSplits,
    batch,
    load_corpus,
    prepare_splits,
    text_digest,
)
from .train import TrainingDivergedError

EXPERIMENT = "sequence"
SETTING = "main"
STYLES = ("none", "uniform", "others", "nmt")
PARAMS: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    (EXPERIMENT, SETTING): {"eps": (), "style": STYLES},
}
HEADS = 4
DROPOUT = 0.1
CLIP_NORM = 1.0
EVAL_PIECES = 256  # pieces per forward pass when evaluating
CHUNK_ROWS = 4096  # token rows per block of materialised logits when measuring
# One training token-epoch (with its share of validation and measurement) in the unit of
# Run.cost, one MLP example-epoch: ~110 us against ~14 us with one thread at the default sizes.
COST_PER_TOKEN = 8.0
COMPARED = (
    "token_nll",
    "ts_token_nll",
    "perplexity",
    "token_accuracy",
    "token_ece",
    "ts_token_ece",
    "logit_gap",
)
TS_LABELS = {
    "ts_token_nll": ("token NLL after TS", 3),
    "ts_token_ece": ("token ECE after TS", 3),
    "temperature": ("T", 2),
    "theoretical_gap": ("gap at the loss minimum", 2),
}


# ----------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _splits(
    text: str, vocab: int, length: int, max_tokens: int, val_fraction: float, digest: str
) -> TokenSplits | None:
    corpus = load_corpus(text)
    if corpus is None:
        return None
    if corpus.fingerprint != digest:
        raise ConfigError(f"--text: {text} changed while it was read")
    return prepare_splits(corpus, vocab, length, max_tokens, val_fraction)


def token_splits(config: StudyConfig) -> TokenSplits | None:
    """The study's token splits (cached per process by the text's contents); None when the
    built-in corpus (``pydoc_data``) is missing. Raises :class:`ConfigError` for a bad
    ``--text`` file."""
    digest = text_digest(config.text)
    if digest is None:
        return None
    return _splits(
        config.text,
        config.sequence_vocab,
        config.sequence_length,
        config.sequence_max_tokens,
        config.validation_fraction,
        digest,
    )


def corpus_fingerprint(config: StudyConfig) -> str:
    """A hash of the text's contents (the file of ``--text``, or the built-in documentation);
    ``"none"`` when the built-in corpus is missing. Raises :class:`ConfigError` for a bad
    file, before any training."""
    digest = text_digest(config.text)
    token_splits(config)  # a file too small for the experiment fails here, before training
    return "none" if digest is None else digest


# ----------------------------------------------------------------------------------------------
# The model and its loss
# ----------------------------------------------------------------------------------------------


def heads_for(width: int) -> int:
    """Attention heads: ``HEADS``, or the largest of 2 and 1 that divides ``width``."""
    return next(h for h in (HEADS, 2, 1) if width % h == 0)


class TinyLM(nn.Module):
    """A causal Transformer language model with learned positions and a tied output matrix."""

    def __init__(self, vocab: int, width: int, layers: int, length: int) -> None:
        super().__init__()
        heads = heads_for(width)
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Embedding(length, width)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, DROPOUT, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    @property
    def head_weight(self) -> Tensor:
        """The (K, width) output matrix (the embedding: tied)."""
        return self.embed.weight

    def forward(self, inputs: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, width) hidden states; position t sees tokens <= t only,
        so padding at the end of a row changes nothing before it."""
        steps = inputs.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(steps, device=inputs.device)
        x = self.embed(inputs) + self.position(torch.arange(steps, device=inputs.device))
        return self.norm(self.encoder(x, mask=mask, is_causal=True))


def target_entropy(eps: float, num_classes: int) -> float:
    """Entropy of the NMT criterion's smoothed target: 1 - eps on the label, eps / (K' - 1) on
    each other kept class, K' = K - 1 (``<pad>`` excluded)."""
    if eps == 0:
        return 0.0
    kept = num_classes - 1
    return -(1 - eps) * math.log(1 - eps) - eps * math.log(eps / (kept - 1))


def sequence_loss(hidden: Tensor, weight: Tensor, target: Tensor, eps: float, style: str) -> Tensor:
    """The training loss of an arm, mean over non-ignored tokens, through
    :func:`labelsmooth.linear_cross_entropy` (no (tokens, K) logits). ``style``: ``none``
    (eps 0), ``uniform``, ``others``, or ``nmt`` (others, ``<pad>`` excluded, KL: the smoothed
    cross-entropy minus the target's entropy)."""
    if style == "none" or eps == 0:
        return linear_cross_entropy(hidden, weight, target, 0.0, ignore_index=IGNORE_INDEX)
    if style == "nmt":
        loss = linear_cross_entropy(
            hidden,
            weight,
            target,
            eps,
            style="others",
            exclude_classes=[PAD],
            ignore_index=IGNORE_INDEX,
        )
        if bool((target != IGNORE_INDEX).any()):
            loss = loss - target_entropy(eps, weight.shape[0])
        return loss
    return linear_cross_entropy(hidden, weight, target, eps, style=style, ignore_index=IGNORE_INDEX)


def reference_loss(logits: Tensor, target: Tensor, eps: float, style: str) -> Tensor:
    """:func:`sequence_loss` on materialised logits with :func:`labelsmooth.cross_entropy`
    (the tests' oracle)."""
    flat, labels = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
    if style == "none" or eps == 0:
        return cross_entropy(flat, labels, 0.0)
    if style == "nmt":
        return cross_entropy(flat, labels, eps, style="others", kl=True, exclude_classes=[PAD])
    return cross_entropy(flat, labels, eps, style=style)


def theoretical_gap(eps: float, style: str, num_classes: int) -> float:
    """The logit gap at the minimum of the arm's loss for a token whose label is certain,
    measured over the K - 1 classes other than ``<pad>``: the log ratio of the smoothed
    target on the label to that on another class."""
    if style == "nmt":
        return metrics.theoretical_gap(eps, num_classes - 1, "others")
    return metrics.theoretical_gap(eps, num_classes, style)


# ----------------------------------------------------------------------------------------------
# Training and measurement
# ----------------------------------------------------------------------------------------------


def _batches(pieces: Sequence[list[int]], size: int) -> list[tuple[Tensor, Tensor]]:
    return [batch(pieces[i : i + size]) for i in range(0, len(pieces), size)]


@torch.no_grad()
def token_states(model: TinyLM, pieces: Sequence[list[int]], device: str) -> tuple[Tensor, Tensor]:
    """(hidden states (N, width), targets (N,)) of the non-pad target positions, in order."""
    model.eval()
    hidden, targets = [], []
    for inputs, target in _batches(pieces, EVAL_PIECES):
        states = model(inputs.to(device))
        keep = target != IGNORE_INDEX
        hidden.append(states[keep.to(device)].float().cpu())
        targets.append(target[keep])
    return torch.cat(hidden), torch.cat(targets)


def _mean_nll(hidden: Tensor, weight: Tensor, target: Tensor) -> float:
    with torch.no_grad():
        return float(linear_cross_entropy(hidden, weight, target, 0.0))


def fit_token_temperature(logits: Tensor, target: Tensor) -> float:
    """The T minimising the NLL of ``softmax(logits / T)``, as
    :func:`labelsmooth.metrics.fit_temperature` (same objective and bounds) but fast for K in
    the thousands: safeguarded Newton steps on beta = 1/T over float32 logits a block of rows
    at a time. The NLL is convex in beta, with slope E_p[z] - z_y and curvature Var_p[z]; a
    step that leaves the bracket of the root is replaced by bisection (in log beta)."""
    target_logits = logits.gather(1, target[:, None])[:, 0].double()
    count = len(logits)

    def slope_curvature(beta: float) -> tuple[float, float]:
        slope = curvature = 0.0
        for start in range(0, count, CHUNK_ROWS):
            block = logits[start : start + CHUNK_ROWS]
            probs = torch.softmax(beta * block, dim=1)
            mean = (probs * block).sum(1, dtype=torch.float64)
            square = (probs * block * block).sum(1, dtype=torch.float64)
            slope += float((mean - target_logits[start : start + CHUNK_ROWS]).sum())
            curvature += float((square - mean * mean).clamp_min(0).sum())
        return slope / count, curvature / count

    if bool((logits.amax(1) == logits.amin(1)).all()):
        return 1.0  # the NLL does not depend on T
    lowest, highest = TEMPERATURE_BOUNDS
    low, high = 1.0 / highest, 1.0 / lowest  # beta bracket
    if slope_curvature(low)[0] >= 0:
        return float(highest)
    if slope_curvature(high)[0] <= 0:
        return float(lowest)
    beta = 1.0
    for _ in range(100):
        slope, curvature = slope_curvature(beta)
        if slope < 0:
            low = beta
        else:
            high = beta
        step = beta - slope / curvature if curvature > 0 else math.nan
        if not low < step < high:
            step = math.sqrt(low * high)  # bisection in log beta
        if abs(step - beta) <= 1e-10 * beta or high - low <= 1e-12 * high:
            beta = step
            break
        beta = step
    return float(min(max(1.0 / beta, lowest), highest))


def measure_tokens(
    hidden: Tensor, weight: Tensor, target: Tensor, n_bins: int, temperature: float = 1.0
) -> tuple[Metrics, dict[str, np.ndarray]]:
    """Token NLL, perplexity, accuracy, ECE, confidence and mean logit gap (over the classes
    other than ``<pad>``) of ``softmax(hidden @ weight.T / temperature)``, plus the per-token
    confidence, correctness and gap; logits are materialised ``CHUNK_ROWS`` rows at a time."""
    ece = streaming.CalibrationError(n_bins, from_logits=True)
    nll = correct = confidence = gap = 0.0
    per_token: dict[str, list[np.ndarray]] = {"confidence": [], "correct": [], "gap": []}
    with torch.no_grad():
        for start in range(0, len(target), CHUNK_ROWS):
            labels = target[start : start + CHUNK_ROWS]
            logits = (hidden[start : start + CHUNK_ROWS] @ weight.T).double() / temperature
            nll += float(cross_entropy(logits, labels, 0.0, reduction="sum"))
            ece.update(logits, labels)
            top = logits.softmax(1).max(1)
            hits = (top.indices == labels).double()
            gaps = metrics.logit_gap(logits[:, PAD + 1 :])
            correct += float(hits.sum())
            confidence += float(top.values.sum())
            gap += float(gaps.sum())
            per_token["confidence"].append(top.values.float().numpy())
            per_token["correct"].append(hits.bool().numpy())
            per_token["gap"].append(gaps.float().numpy())
    count = len(target)
    mean_nll = nll / count
    result = {
        "token_nll": mean_nll,
        "perplexity": math.exp(min(mean_nll, 700.0)),
        "token_accuracy": correct / count,
        "token_ece": float(ece.compute()),
        "confidence": confidence / count,
        "logit_gap": gap / count,
    }
    return result, {name: np.concatenate(parts) for name, parts in per_token.items()}


def train_lm(
    splits: TokenSplits, config: StudyConfig, eps: float, style: str, seed: int
) -> tuple[TinyLM, int, list[float], dict[str, Tensor]]:
    """Trains one model; returns (the best validation epoch's model, that epoch, validation
    token NLL per epoch, the final epoch's weights). Raises TrainingDivergedError."""
    device = torch.device(config.device)
    torch.manual_seed(seed)
    model = TinyLM(
        splits.num_classes, config.sequence_width, config.sequence_layers, config.sequence_length
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.sequence_lr)
    generator = torch.Generator().manual_seed(seed)
    val_pieces = splits.val
    history: list[float] = []
    best_state, best_epoch, best_nll = None, 0, math.inf
    for epoch in range(1, config.sequence_epochs + 1):
        model.train()
        order = torch.randperm(len(splits.train), generator=generator).tolist()
        pieces = [splits.train[i] for i in order]
        for inputs, target in _batches(pieces, config.sequence_batch_size):
            inputs, target = inputs.to(device), target.to(device)
            loss = sequence_loss(model(inputs), model.head_weight, target, eps, style)
            if not bool(torch.isfinite(loss)):
                raise TrainingDivergedError(f"non-finite training loss in epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
            optimizer.step()
        hidden, target = token_states(model, val_pieces, config.device)
        val_nll = _mean_nll(hidden, model.head_weight.detach().float().cpu(), target)
        if not math.isfinite(val_nll):
            raise TrainingDivergedError(f"non-finite validation loss in epoch {epoch}")
        history.append(val_nll)
        if val_nll < best_nll:
            best_nll, best_epoch = val_nll, epoch
            best_state = copy.deepcopy(model.state_dict())
    final_state = copy.deepcopy(model.state_dict())
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return model, best_epoch, history, final_state


def run_sequence(
    splits: TokenSplits, config: StudyConfig, eps: float, style: str, seed: int, keep: bool
) -> tuple[Metrics, Arrays | None]:
    """One run: train, then every metric of the kept model on the test tokens."""
    start = time.perf_counter()
    model, best_epoch, history, final_state = train_lm(splits, config, eps, style, seed)
    seconds = time.perf_counter() - start
    weight = model.head_weight.detach().float().cpu()
    val_hidden, val_target = token_states(model, splits.val, config.device)
    test_hidden, test_target = token_states(model, splits.test, config.device)
    for name, value in (("validation", val_hidden), ("test", test_hidden)):
        if not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(f"non-finite hidden states on the {name} tokens")
    with torch.no_grad():
        val_logits = val_hidden @ weight.T
    temperature = fit_token_temperature(val_logits, val_target)
    val_nll = _mean_nll(val_hidden, weight, val_target)
    val_nll_ts = _mean_nll(val_hidden / temperature, weight, val_target)
    del val_logits
    low, high = TEMPERATURE_BOUNDS
    usable = low * (1 + 1e-6) < temperature < high * (1 - 1e-6) and val_nll_ts < val_nll
    applied = temperature if usable else 1.0
    result, per_token = measure_tokens(test_hidden, weight, test_target, config.n_bins)
    scaled, _ = measure_tokens(test_hidden, weight, test_target, config.n_bins, applied)
    result.update({f"ts_{name}": value for name, value in scaled.items()})
    final_nll = result["token_nll"]
    if best_epoch != config.sequence_epochs:
        final = copy.deepcopy(model)
        final.load_state_dict(final_state)
        final_hidden, final_target = token_states(final, splits.test, config.device)
        final_nll = _mean_nll(final_hidden, weight_of(final), final_target)
    sizes = splits.sizes()
    result.update(
        {
            "val_token_nll": val_nll,
            "val_token_nll_ts": val_nll_ts if usable else val_nll,
            "temperature": temperature,
            "temperature_applied": applied,
            "temperature_ok": float(usable),
            "best_epoch": float(best_epoch),
            "epochs": float(config.sequence_epochs),
            "final_token_nll": final_nll,
            "num_classes": float(splits.num_classes),
            "unknown_rate": splits.unknown_rate,
            "n_train_tokens": float(sizes["n_train"]),
            "n_val_tokens": float(sizes["n_val"]),
            "n_test_tokens": float(sizes["n_test"]),
            "train_seconds": seconds,
        }
    )
    if eps > 0:
        result["theoretical_gap"] = theoretical_gap(eps, style, splits.num_classes)
    if not keep:
        return result, None
    arrays: Arrays = {
        **per_token,
        "val_history": np.array(history),
        "temperature": np.array(applied),
    }
    return result, arrays


def weight_of(model: TinyLM) -> Tensor:
    return model.head_weight.detach().float().cpu()


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


def arms(config: StudyConfig) -> list[tuple[float, str]]:
    """(eps, style) of every arm; the baseline first."""
    return [(0.0, "none")] + [
        (eps, style) for eps in config.sequence_eps if eps > 0 for style in STYLES[1:]
    ]


def _execute(
    config: StudyConfig, eps: float, style: str, seed: int, keep: bool, fingerprint: str
) -> Any:
    def execute(_: RunContext) -> tuple[Metrics, Arrays | None]:
        splits = token_splits(config)
        if splits is None or splits.fingerprint != fingerprint:
            raise ConfigError("the sequence experiment's text changed while the study ran")
        return run_sequence(splits, config, eps, style, seed, keep)

    return execute


def build(data: Split, config: StudyConfig, plan: Plan) -> None:
    splits = token_splits(config)
    if splits is None:
        plan.notes.append(
            "The sequence experiment needs a text: this Python has no pydoc_data.topics, so "
            "it was skipped (give one with --text FILE)."
        )
        return
    for eps in config.sequence_eps:
        if eps < 0:
            raise ConfigError(
                f"sequence_eps: {eps} is negative; the sequence experiment compares eps >= 0 "
                "(eps 0 is always run)"
            )
        if eps > 0 and eps > (splits.num_classes - 2) / (splits.num_classes - 1):
            raise ConfigError(
                f"sequence_eps: {eps} is too large for style others with K = "
                f"{splits.num_classes} classes (<pad> excluded: at most (K-2)/(K-1))"
            )
    sizes = splits.sizes()
    plan.settings[EXPERIMENT] = {
        "description": splits.name,
        "num_classes": splits.num_classes,
        "unknown_rate": splits.unknown_rate,
        "documents": list(splits.documents),
        "epochs": config.sequence_epochs,
        **sizes,
    }
    cost = sizes["n_train"] * config.sequence_epochs * COST_PER_TOKEN
    for eps, style in arms(config):
        for seed in config.seeds:
            keep = seed == config.seeds[0]
            plan.runs.append(
                Run(
                    key=f"{EXPERIMENT}|{SETTING}|{style}|{eps:g}|{seed}",
                    experiment=EXPERIMENT,
                    setting=SETTING,
                    params={"eps": eps, "style": style},
                    seed=seed,
                    execute=_execute(config, eps, style, seed, keep, splits.fingerprint),
                    cost=cost,
                )
            )


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------

STYLE_WORDS = {
    "uniform": "uniform",
    "others": "others",
    "nmt": "NMT criterion: others, <pad> excluded, KL",
}


def label(params: dict[str, Any]) -> str:
    eps = params.get("eps", 0)
    if eps == 0:
        return "baseline (eps=0)"
    return f"eps={eps:g} ({STYLE_WORDS.get(params.get('style'), params.get('style'))})"


def short(params: dict[str, Any]) -> str:
    eps = params.get("eps", 0)
    return "eps=0" if eps == 0 else f"eps={eps:g} {params.get('style')}"


def _diverged_sentence(groups: Sequence[Group], seeds: int) -> str:
    planned = seeds * len(groups)
    failed = [(g, len(g.diverged)) for g in groups if g.diverged]
    if not failed:
        return f"No run diverged ({planned} runs)."
    parts = ", ".join(f"{n} of {label(g.params)}" for g, n in failed)
    total = sum(n for _, n in failed)
    return (
        f"{total} of {planned} runs diverged (non-finite loss or outputs) and are left out of "
        f"the means and the paired comparisons: {parts}."
    )


def analyse(findings: Findings, groups: Sequence[Group]) -> None:
    runs = select(groups, EXPERIMENT, SETTING)
    baseline = next((g for g in runs if g.params.get("eps") == 0), None)
    if baseline is None:
        return
    smoothed = [g for g in runs if g.params.get("eps") != 0]
    rows: list[Row] = []
    sentences: list[str] = []
    summary_arms = []
    for group in [baseline, *smoothed]:
        comparisons: dict[str, Any] = {}
        if group is not baseline:
            for metric in COMPARED:
                ts = metric.startswith("ts_")
                comparisons[metric] = findings.compare(
                    EXPERIMENT,
                    SETTING,
                    group,
                    baseline,
                    metric,
                    arm_label=short(group.params) + (" + TS" if ts else ""),
                    baseline_label="eps=0" + (" + TS" if ts else ""),
                )
        values = {
            m: group.mean(m)
            for m in (
                *COMPARED,
                "theoretical_gap",
                "temperature",
                "val_token_nll",
                "val_token_nll_ts",
                "best_epoch",
            )
        }
        rows.append(Row(label(group.params), values, comparisons, note=_note(group)))
        summary_arms.append(
            {
                "arm": short(group.params),
                "eps": group.params.get("eps"),
                "style": group.params.get("style"),
                "n_seeds": group.n_seeds,
                "diverged": len(group.diverged),
                **{m: _json(values[m]) for m in values},
            }
        )
        if group is not baseline:
            c = comparisons
            sentences.append(
                f"Against the baseline, {label(group.params)} "
                f"{_words(c['token_nll'], 'token_nll')}, "
                f"{_words(c['perplexity'], 'perplexity')}, "
                f"{_words(c['token_accuracy'], 'token_accuracy')}, "
                f"{_words(c['token_ece'], 'token_ece')} and "
                f"{_words(c['logit_gap'], 'logit_gap')}; after temperature scaling of both it "
                f"{_words(c['ts_token_nll'], 'token_nll')} and "
                f"{_words(c['ts_token_ece'], 'token_ece')}."
            )
    chosen = choose(smoothed, "val_token_nll_ts", prefer=lambda g: g.params.get("eps", 0))
    choice: dict[str, Any] = {"selected_on": "validation"}
    if chosen is not None:
        ts_nll = findings.compare(
            EXPERIMENT,
            SETTING,
            chosen,
            baseline,
            "token_nll",
            arm_metric="ts_token_nll",
            baseline_metric="ts_token_nll",
            arm_label=f"chosen smoothing ({short(chosen.params)}) + TS",
            baseline_label="eps=0 + TS",
            chosen=True,
        )
        accuracy = findings.compare(
            EXPERIMENT,
            SETTING,
            chosen,
            baseline,
            "token_accuracy",
            arm_label=f"chosen smoothing ({short(chosen.params)})",
            chosen=True,
        )
        seeds = findings.seeds
        against_baseline = validation_margin(chosen, baseline, seeds, "val_token_nll_ts")[0]
        runner_up = choose(
            [g for g in smoothed if g is not chosen],
            "val_token_nll_ts",
            prefer=lambda g: g.params.get("eps", 0),
        )
        baseline_lowest = all(
            baseline.mean("val_token_nll_ts") < g.mean("val_token_nll_ts") for g in smoothed
        )
        within = (
            ""
            if against_baseline.significant or math.isnan(against_baseline.ci_low)
            else ", an interval that includes 0"
        )
        if baseline_lowest:
            preferred = (
                " Validation preferred no smoothing: the baseline's "
                f"{baseline.mean('val_token_nll_ts'):.4f} is below every smoothing arm's; the "
                f"chosen arm's minus the baseline's is {_margin_words(against_baseline)}{within}"
                ", so this choice is among the smoothing arms only."
            )
        else:
            preferred = (
                f" The baseline's validation value is {baseline.mean('val_token_nll_ts'):.4f}; "
                f"the chosen arm's minus the baseline's is {_margin_words(against_baseline)}"
                f"{within}."
            )
        over_runner_up = None
        if runner_up is not None:
            over_runner_up = validation_margin(chosen, runner_up, seeds, "val_token_nll_ts")[0]
            lower = sum(
                1
                for a, b in zip(
                    chosen.values("val_token_nll_ts", seeds),
                    runner_up.values("val_token_nll_ts", seeds),
                    strict=True,
                )
                if a is not None and b is not None and a < b
            )
            runner_words = (
                f" The runner-up, {label(runner_up.params)}, had "
                f"{runner_up.mean('val_token_nll_ts'):.4f}: the chosen arm's minus the "
                f"runner-up's is {_margin_words(over_runner_up)}, lower on {lower} of "
                f"{over_runner_up.n_seeds} seeds."
            )
        else:
            runner_words = ""
        sentences.append(
            f"Among the smoothing arms, the one chosen on validation token NLL after "
            f"temperature scaling is {label(chosen.params)} (validation "
            f"{chosen.mean('val_token_nll_ts'):.4f}).{preferred}{runner_words} On the test "
            f"tokens, with temperature scaling of both, it {_words(ts_nll, 'token_nll')}; it "
            f"{_words(accuracy, 'token_accuracy')}."
        )
        choice.update(
            {
                "arm": short(chosen.params),
                "eps": chosen.params.get("eps"),
                "style": chosen.params.get("style"),
                "criterion": "validation token NLL after temperature scaling",
                "val_token_nll_ts": _json(chosen.mean("val_token_nll_ts")),
                "baseline_val_token_nll_ts": _json(baseline.mean("val_token_nll_ts")),
                # validation preferred no smoothing: the baseline's value is below every arm's
                "baseline_lowest_on_validation": baseline_lowest,
                "val_minus_baseline": against_baseline.as_dict(),
                "runner_up": None if runner_up is None else short(runner_up.params),
                "val_minus_runner_up": (
                    None if over_runner_up is None else over_runner_up.as_dict()
                ),
                "ts_token_nll_vs_baseline_ts": ts_nll.as_dict(),
                "token_accuracy_vs_baseline": accuracy.as_dict(),
            }
        )
    gaps = "; ".join(
        f"{label(g.params)} {g.mean('logit_gap'):.2f}"
        + (
            f" (at the minimum of its loss: {g.mean('theoretical_gap'):.2f})"
            if g.params.get("eps")
            else ""
        )
        for g in [baseline, *smoothed]
    )
    sentences.append(
        f"Mean logit gap on the test tokens (largest logit minus the mean of the others): "
        f"{gaps}. The value at the minimum is that of a context whose next token is certain; "
        f"where the next token is uncertain, the loss is minimised at a smaller gap."
    )
    finished = [m for g in [baseline, *smoothed] for m in g.metrics.values() if "epochs" in m]
    last = sum(1 for m in finished if m.get("best_epoch") == m["epochs"])
    if finished and last == len(finished):
        sentences.append(
            f"Every run kept its last epoch ({int(finished[0]['epochs'])}): the validation "
            "token NLL was still falling, so these models are not trained to convergence, "
            "and more epochs (sequence_epochs) may change the comparisons."
        )
    elif finished:
        sentences.append(
            f"{last} of {len(finished)} runs kept their last epoch; the others stopped "
            "improving on validation earlier."
        )
    intervals = len(smoothed) * len(COMPARED)
    if intervals:
        sentences.append(
            f"These are {intervals} intervals ({len(smoothed)} arms x {len(COMPARED)} metrics); "
            f"{chance_count(intervals)} would exclude 0 by chance alone if smoothing changed "
            "nothing."
        )
    sentences.append(_diverged_sentence([baseline, *smoothed], len(findings.seeds)))
    first = baseline.metrics[min(baseline.metrics)] if baseline.metrics else {}
    findings.sections[EXPERIMENT] = {
        "rows": rows,
        "sentences": sentences,
        "baseline": baseline,
        "arms": smoothed,
        "chosen": chosen,
        "intervals": intervals,
    }
    findings.experiments[EXPERIMENT] = {
        "num_classes": _json(first.get("num_classes")),
        "unknown_rate": _json(first.get("unknown_rate")),
        "n_train_tokens": _json(first.get("n_train_tokens")),
        "n_val_tokens": _json(first.get("n_val_tokens")),
        "n_test_tokens": _json(first.get("n_test_tokens")),
        "checkpoint": "best validation epoch by token NLL (unsmoothed)",
        "chosen": choice,
        "arms": summary_arms,
        "intervals": intervals,
        "diverged": sum(len(g.diverged) for g in [baseline, *smoothed]),
    }


def _margin_words(comparison: Comparison) -> str:
    if math.isnan(comparison.mean_delta):
        return "no paired seeds"
    return f"{comparison.mean_delta:+.4f} ({format_interval(comparison, 4)}, paired by seed)"


def _json(value: Any) -> Any:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _note(group: Group) -> str:
    notes = []
    flagged = sum(1 for m in group.metrics.values() if m.get("temperature_ok", 1) < 1)
    if flagged:
        notes.append(f"T flagged and not applied in {flagged} of {group.n_seeds} seeds")
    if group.diverged:
        notes.append(f"{len(group.diverged)} diverged")
    notes.append(f"mean best epoch {group.mean('best_epoch'):.1f}")
    return "; ".join(notes)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _intro(study: dict[str, Any], findings: Findings) -> str:
    config = study.get("config", {})
    info = study.get("settings", {}).get(EXPERIMENT, {})
    summary = findings.experiments.get(EXPERIMENT, {})
    docs = info.get("documents") or ["?", "?", "?"]
    k = info.get("num_classes", summary.get("num_classes", "?"))
    unknown = info.get("unknown_rate", summary.get("unknown_rate"))
    unknown_text = f"{100 * unknown:.1f}%" if isinstance(unknown, (int, float)) else "?"
    max_tokens = config.get("sequence_max_tokens", 0)
    capped = (
        f" (capped at about {max_tokens} tokens in all, each split its share)" if max_tokens else ""
    )
    positive = [f"{e:g}" for e in config.get("sequence_eps", []) if e > 0]
    if not positive:
        eps = "no eps > 0 (sequence_eps has none)"
    elif len(positive) == 1:
        eps = f"eps {positive[0]}"
    else:
        eps = f"each eps in {', '.join(positive)}"
    return (
        f"A causal Transformer language model trained on {info.get('description', 'a text')}. "
        f"Tokens: lower-cased words, numbers and punctuation; vocabulary K = {k} (the most "
        f"frequent training tokens seen at least twice, at most "
        f"{config.get('sequence_vocab', '?')}, with <pad>, <unk> and the paragraph boundary "
        f"<s>); {unknown_text} of the test tokens are <unk>. Split by document with seed 0, "
        f"the same for every seed: {docs[0]} / {docs[1]} / {docs[2]} documents, "
        f"{info.get('n_train', '?')} / {info.get('n_val', '?')} / {info.get('n_test', '?')} "
        f"target tokens for training / validation / test{capped}. Paragraphs are cut into "
        f"pieces of at most {config.get('sequence_length', '?')} tokens and padded at the "
        f"end; padded positions are ignore_index (-100) in the loss and in every metric. "
        f"Model: {config.get('sequence_layers', '?')} pre-norm Transformer layers of width "
        f"{config.get('sequence_width', '?')} with a causal mask, learned positions, "
        f"{heads_for(int(config.get('sequence_width', HEADS)))} heads, dropout {DROPOUT:g}, "
        f"output matrix tied to the embedding; Adam at "
        f"lr {config.get('sequence_lr', '?')}, {config.get('sequence_batch_size', '?')} pieces "
        f"per batch, "
        f"gradient norm clipped at {CLIP_NORM:g}, {config.get('sequence_epochs', '?')} "
        f"epochs. The training loss is labelsmooth.linear_cross_entropy on the hidden states "
        f"and the output matrix (no logits materialised), for eps 0 and {eps} in "
        f"style uniform, style others, and the NMT criterion (OpenNMT-py's: others, <pad> "
        f"given no smoothing mass, KL divergence, which is the smoothed cross-entropy minus "
        f"a constant). Kept checkpoint: the epoch with the lowest validation token NLL. "
        f"Temperature T fitted on the validation tokens' NLL (flagged and not applied at a "
        f"bound or when it does not lower the validation NLL). Metrics on the test tokens; "
        f"each arm is compared with eps 0 of the same seed (initialisation and batch order), "
        f"mean difference over seeds with a Student-t 95% interval. The logit gap is taken "
        f"over the K - 1 classes other than <pad>; its value at the minimum of each arm's loss "
        f"is log(target on the label / target on another class)."
    )


def _figure(findings: Findings, load_arrays: LoadArrays, n_bins: int) -> Any:
    from matplotlib.figure import Figure

    section = findings.sections[EXPERIMENT]
    groups = [section["baseline"], *section["arms"]]
    figure = Figure(figsize=(10, 4))
    left, right = figure.subplots(1, 2)
    left.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    top = 0.0
    for index, group in enumerate(groups):
        key = group.first_key()
        if key is None:
            continue
        try:
            arrays = load_arrays(key)
        except (FileNotFoundError, KeyError, OSError):
            continue
        if "confidence" not in arrays:
            continue
        color = f"C{index}"
        confidence, correct = arrays["confidence"], arrays["correct"].astype(float)
        edges = np.linspace(0, 1, n_bins + 1)
        which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
        xs, ys = [], []
        for b in range(n_bins):
            inside = which == b
            if inside.sum() >= 20:
                xs.append(confidence[inside].mean())
                ys.append(correct[inside].mean())
        left.plot(xs, ys, marker="o", markersize=3, color=color, label=label(group.params))
        gaps = arrays["gap"]
        right.hist(gaps, bins=60, histtype="step", density=True, color=color)
        top = max(top, float(np.quantile(gaps, 0.99)))
        theory = group.mean("theoretical_gap")
        if math.isfinite(theory):
            right.axvline(theory, color=color, linestyle="--", linewidth=1)
    left.set_xlabel("confidence (test tokens, first seed)")
    left.set_ylabel("accuracy")
    left.set_title("reliability (bins of >= 20 tokens)")
    left.legend(fontsize=7)
    right.set_xlabel("logit gap (dashed: at the minimum of the loss)")
    right.set_ylabel("density")
    right.set_title("per-token logit gap")
    figure.tight_layout()
    return figure


def section(
    findings: Findings, load_arrays: LoadArrays, save_figure: SaveFigure, study: dict[str, Any]
) -> Section | list[Section] | None:
    found = findings.sections.get(EXPERIMENT)
    if found is None:
        return None
    table = Table(
        "Test tokens: each arm against eps 0 (paired by seed)",
        "arm",
        [
            "token_nll",
            "perplexity",
            "token_accuracy",
            "token_ece",
            "ts_token_nll",
            "ts_token_ece",
            "temperature",
            "logit_gap",
            "theoretical_gap",
        ],
        found["rows"],
        labels=TS_LABELS,
    )
    n_bins = max(1, int(study.get("config", {}).get("n_bins", 15)))
    figures = [
        save_figure(
            "sequence_reliability_gap",
            _figure(findings, load_arrays, n_bins),
            f"Left: accuracy against confidence of the test tokens (first seed, {n_bins} "
            "equal-width bins, the study's n_bins). Right: each test token's logit gap, with "
            "the gap at the minimum of the arm's loss dashed.",
        )
    ]
    return Section(
        key=EXPERIMENT,
        title="Token-level smoothing of a Transformer language model",
        intro=_intro(study, findings),
        sentences=list(found["sentences"]),
        tables=[table],
        figures=figures,
    )


__all__ = [
    "PARAMS",
    "TinyLM",
    "analyse",
    "build",
    "corpus_fingerprint",
    "measure_tokens",
    "reference_loss",
    "section",
    "sequence_loss",
    "token_splits",
]
