"""The sequence experiment's corpus: English text, word tokens, a document-level split.

* **Text.** ``pydoc_data.topics`` (the Python documentation that ships with every Python, one
  document per topic), or a user's UTF-8 file (``--text FILE``), whose documents are its
  paragraphs (blocks separated by a blank line).
* **Tokens.** Lower-cased words (letters, with an inner apostrophe), digit runs, and every
  other non-space character as a token of its own. The vocabulary is built from the
  training documents only: the ``vocab - 3`` most frequent tokens seen at least twice there
  (ties: alphabetical) plus ``<pad>`` (0, never a target), ``<unk>`` (1) and ``<s>`` (2, the
  boundary token that opens and closes each paragraph). A token seen once in training is
  ``<unk>``, so the model meets ``<unk>`` as a target, as it will on the test split.
* **Split.** By document, never inside one: the documents are shuffled with seed 0; the first
  ones go to the test split until it holds ``test_fraction`` of the tokens, the next to the
  validation split until it holds ``val_fraction``, the rest to training. The split is the
  same for every study seed.
* **Segments.** Each paragraph ``<s> w1 ... wn <s>`` is cut into pieces of at most
  ``length + 1`` tokens that overlap by one, so each piece is an (input, target) pair of at
  most ``length`` positions and every target token is predicted exactly once. Batches pad
  the pieces at the end; padded targets are ``IGNORE_INDEX`` (-100).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .config import ConfigError

PAD, UNK, BOUNDARY = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<s>")
IGNORE_INDEX = -100
# A text must give at least this many tokens and documents (one per split at least).
MIN_TOKENS = 200
MIN_DOCUMENTS = 3
TEST_FRACTION = 0.15
# A training token seen fewer times is <unk>.
MIN_COUNT = 2
MAX_TEXT_BYTES = 256 * 1024 * 1024

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|\d+|[^\sa-z\d]")
_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n")

BUILTIN_NAME = "pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """Documents of paragraphs of tokens (strings), in the text's own order."""

    name: str
    documents: tuple[tuple[tuple[str, ...], ...], ...]
    fingerprint: str

    @property
    def num_tokens(self) -> int:
        return sum(len(p) for d in self.documents for p in d)


def tokenize(text: str) -> list[str]:
    """Lower-cased word, number and punctuation tokens of ``text``.

    >>> tokenize("The \\"if\\" statement, isn't it? 42")
    ['the', '"', 'if', '"', 'statement', ',', "isn't", 'it', '?', '42']
    """
    return _TOKEN.findall(text.lower())


def paragraphs(text: str) -> list[tuple[str, ...]]:
    """The non-empty paragraphs (blocks between blank lines) of ``text``, tokenised."""
    out = []
    for block in _PARAGRAPH.split(text.replace("\r\n", "\n")):
        tokens = tuple(tokenize(block))
        if tokens:
            out.append(tokens)
    return out


def _builtin_documents() -> list[str] | None:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return None
    return [topics[name] for name in sorted(topics)]


def read_text_file(path: str) -> str:
    """The UTF-8 contents of ``path``; a ConfigError naming the path and the problem."""
    file = Path(path)
    try:
        size = file.stat().st_size
        if file.is_dir():
            raise ConfigError(f"--text: {path} is a directory, not a text file")
        if size > MAX_TEXT_BYTES:
            raise ConfigError(f"--text: {path} has {size} bytes; at most {MAX_TEXT_BYTES} are read")
        raw = file.read_bytes()
    except FileNotFoundError as err:
        raise ConfigError(f"--text: {path} does not exist") from err
    except OSError as err:
        raise ConfigError(f"--text: cannot read {path} ({err.strerror or err})") from err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"--text: {path} is not UTF-8 text (byte {err.start}: {err.reason})"
        ) from err


def _digest(parts: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:16]


def text_digest(text: str) -> str | None:
    """A hash of the contents of the ``text`` setting's corpus (the file, or the built-in
    documentation; None when ``pydoc_data`` is missing); ConfigError for a bad file."""
    if text:
        return _digest([read_text_file(text)])
    raw = _builtin_documents()
    return None if raw is None else _digest(raw)


def load_corpus(text: str) -> Corpus | None:
    """The corpus of the ``text`` setting ("" = the built-in documentation; None when
    ``pydoc_data`` is missing). A user file that is missing, unreadable, not UTF-8 or too
    small raises :class:`ConfigError`."""
    if text:
        contents = read_text_file(text)
        documents = [(p,) for p in paragraphs(contents)]
        name = f"the file {Path(text).name} (one document per paragraph)"
        digest = _digest([contents])
    else:
        raw = _builtin_documents()
        if raw is None:
            return None
        documents = [tuple(paragraphs(doc)) for doc in raw]
        documents = [d for d in documents if d]
        name = f"{BUILTIN_NAME} (the Python documentation, one document per topic)"
        digest = _digest(raw)
    corpus = Corpus(name, tuple(documents), digest)
    count = corpus.num_tokens
    if len(corpus.documents) < MIN_DOCUMENTS or count < MIN_TOKENS:
        where = f"--text: {text}" if text else BUILTIN_NAME
        raise ConfigError(
            f"{where} is too small for the sequence experiment: {count} tokens in "
            f"{len(corpus.documents)} paragraphs; at least {MIN_TOKENS} tokens in "
            f"{MIN_DOCUMENTS} paragraphs separated by blank lines are needed"
        )
    return corpus


def split_documents(
    corpus: Corpus, val_fraction: float, test_fraction: float = TEST_FRACTION
) -> tuple[list[int], list[int], list[int]]:
    """(train, validation, test) document indices: shuffled with seed 0, test filled first to
    ``test_fraction`` of the tokens, then validation, the rest to training; each split gets
    at least one document."""
    sizes = [sum(len(p) for p in d) for d in corpus.documents]
    order = list(range(len(sizes)))
    random.Random(0).shuffle(order)
    total = sum(sizes)
    test: list[int] = []
    val: list[int] = []
    position = 0
    for part, fraction in ((test, test_fraction), (val, val_fraction)):
        while position < len(order) - 1 and (
            not part or sum(sizes[i] for i in part) < fraction * total
        ):
            if part and len(order) - position <= 1:
                break
            part.append(order[position])
            position += 1
    train = order[position:]
    if not train:  # pragma: no cover - guarded by MIN_DOCUMENTS and the loop bound
        train = [val.pop()]
    return train, val, test


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # index -> token, specials first

    @property
    def size(self) -> int:
        return len(self.words)

    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}


def build_vocabulary(paragraphs: Sequence[tuple[str, ...]], size: int) -> Vocabulary:
    """The ``size - 3`` most frequent tokens of ``paragraphs`` seen at least ``MIN_COUNT``
    times (ties: alphabetical) after the three specials."""
    counts: Counter[str] = Counter()
    for paragraph in paragraphs:
        counts.update(paragraph)
    ranked = sorted(
        (item for item in counts.items() if item[1] >= MIN_COUNT),
        key=lambda item: (-item[1], item[0]),
    )
    return Vocabulary(SPECIALS + tuple(word for word, _ in ranked[: max(0, size - 3)]))


def segments(
    paragraphs: Sequence[tuple[str, ...]], vocab: Vocabulary, length: int
) -> list[list[int]]:
    """Pieces of at most ``length + 1`` token ids (overlapping by one) of every paragraph."""
    index = vocab.index()
    out: list[list[int]] = []
    for paragraph in paragraphs:
        ids = [BOUNDARY, *(index.get(w, UNK) for w in paragraph), BOUNDARY]
        for start in range(0, len(ids) - 1, length):
            out.append(ids[start : start + length + 1])
    return out


def cap_paragraphs(
    paragraphs: Sequence[tuple[str, ...]], max_targets: int
) -> list[tuple[str, ...]]:
    """The first paragraphs holding at most ``max_targets`` target tokens (a paragraph of n
    tokens has n + 1: its words and the closing ``<s>``), at least one paragraph."""
    kept: list[tuple[str, ...]] = []
    count = 0
    for paragraph in paragraphs:
        if kept and count + len(paragraph) + 1 > max_targets:
            break
        kept.append(paragraph)
        count += len(paragraph) + 1
    return kept


def batch(pieces: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of shape (B, T): inputs padded with ``PAD``, targets with
    ``IGNORE_INDEX``; T is the longest piece's length - 1."""
    width = max(len(p) for p in pieces) - 1
    inputs = torch.full((len(pieces), width), PAD, dtype=torch.long)
    targets = torch.full((len(pieces), width), IGNORE_INDEX, dtype=torch.long)
    for row, piece in enumerate(pieces):
        n = len(piece) - 1
        inputs[row, :n] = torch.tensor(piece[:-1])
        targets[row, :n] = torch.tensor(piece[1:])
    return inputs, targets


def count_targets(pieces: Sequence[list[int]]) -> int:
    return sum(len(p) - 1 for p in pieces)


@dataclass(frozen=True)
class TokenSplits:
    """The corpus cut into (input, target) pieces per split, with what the report states."""

    name: str
    vocab: Vocabulary
    train: list[list[int]]
    val: list[list[int]]
    test: list[list[int]]
    documents: tuple[int, int, int]  # documents per split
    unknown_rate: float  # fraction of test target tokens that are <unk>
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return self.vocab.size

    def sizes(self) -> dict[str, int]:
        return {
            "n_train": count_targets(self.train),
            "n_val": count_targets(self.val),
            "n_test": count_targets(self.test),
        }


def prepare_splits(
    corpus: Corpus, vocab_size: int, length: int, max_tokens: int, val_fraction: float
) -> TokenSplits:
    """Split by document; ``max_tokens`` > 0 keeps about that many target tokens in all, each
    split its share (its first paragraphs in split order); the vocabulary comes from the kept
    training paragraphs; then the pieces."""
    split = split_documents(corpus, val_fraction)
    parts = [[p for i in part for p in corpus.documents[i]] for part in split]
    if max_tokens:
        sizes = [sum(len(p) + 1 for p in part) for part in parts]
        if sum(sizes) > max_tokens:
            parts = [
                cap_paragraphs(part, max(1, round(max_tokens * size / sum(sizes))))
                for part, size in zip(parts, sizes, strict=True)
            ]
    vocab = build_vocabulary(parts[0], vocab_size)
    pieces = [segments(part, vocab, length) for part in parts]
    targets = [t for piece in pieces[2] for t in piece[1:]]
    unknown = sum(1 for t in targets if t == UNK) / max(1, len(targets))
    return TokenSplits(
        corpus.name,
        vocab,
        pieces[0],
        pieces[1],
        pieces[2],
        (len(split[0]), len(split[1]), len(split[2])),
        unknown,
        corpus.fingerprint,
    )


__all__ = [
    "BOUNDARY",
    "IGNORE_INDEX",
    "PAD",
    "UNK",
    "Corpus",
    "TokenSplits",
    "Vocabulary",
    "batch",
    "build_vocabulary",
    "cap_paragraphs",
    "load_corpus",
    "prepare_splits",
    "segments",
    "split_documents",
    "text_digest",
    "tokenize",
]
