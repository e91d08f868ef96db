"""Runs the study's plan: resumable, atomic on disk, with a progress bar.

``results.jsonl`` holds one line per finished run and is replaced atomically (written to a
temporary file, flushed, fsynced, renamed) after every run, so an interrupt never leaves a
half-written line and never loses a finished run. Arrays that the figures need are saved the
same way under ``arrays/``. Re-running the same command skips the runs already in the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from .. import __version__
from .config import StudyConfig
from .experiments import Arrays, Run, RunContext, timed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def versions() -> dict[str, str]:
    return {
        "labelsmooth": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


class ResultStore:
    """The runs finished so far, backed by ``results.jsonl`` in ``directory``.

    With ``writable=False`` (the ranks other than 0 of a data-parallel study) nothing is
    written: results and arrays are kept in memory only.
    """

    def __init__(self, directory: str | Path, *, writable: bool = True) -> None:
        self.directory = Path(directory)
        self.writable = writable
        self._memory_arrays: dict[str, Arrays] = {}
        self.path = self.directory / "results.jsonl"
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self.records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}: line {number} is not JSON ({err})") from err
        self._keys = {record["key"] for record in self.records}

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._keys.add(record["key"])
        if not self.writable:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        atomic_write_bytes(self.path, text.encode())

    def arrays_path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.directory / "arrays" / f"{digest}.npz"

    def save_arrays(self, key: str, arrays: Arrays) -> None:
        if not self.writable:
            self._memory_arrays[key] = arrays
            return
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(self.arrays_path(key), buffer.getvalue())

    def load_arrays(self, key: str) -> Arrays:
        if key in self._memory_arrays:
            return self._memory_arrays[key]
        path = self.arrays_path(key)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: the arrays of run {key!r} are missing; delete the "
                f"run from results.jsonl to recompute it"
            )
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """``[ 12/150]  8% | run label | elapsed 0:15 | remaining ~2:40`` on stderr."""

    def __init__(self, total: int, done: int, *, quiet: bool, stream: TextIO | None = None):
        self.total, self.done, self.quiet = total, done, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.computed = 0

    def show(self, label: str) -> None:
        if self.quiet:
            return
        elapsed = time.perf_counter() - self.start
        remaining = "?"
        if self.computed:
            left = self.total - self.done
            remaining = "~" + _clock(elapsed / self.computed * left)
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"[{bar}] {self.done:>{len(str(self.total))}}/{self.total} | {label} | "
            f"elapsed {_clock(elapsed)} | remaining {remaining}"
        )
        if self.interactive:
            columns = 120
            self.stream.write("\r" + line[:columns].ljust(columns))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1
        self.computed += 1

    def close(self) -> None:
        if not self.quiet and self.interactive:
            self.stream.write("\n")
            self.stream.flush()


def execute_plan(
    runs: Iterable[Run],
    store: ResultStore,
    config: StudyConfig,
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> int:
    """Runs what is not in ``store`` yet; returns the number of runs computed now."""
    runs = list(runs)
    keys = [run.key for run in runs]
    if len(set(keys)) != len(keys):
        raise RuntimeError("the study plan has duplicate run keys")
    pending = [run for run in runs if run.key not in store]
    progress = Progress(len(runs), len(runs) - len(pending), quiet=quiet, stream=stream)
    context = RunContext(store.load_arrays)
    info = versions()
    try:
        for run in pending:
            progress.show(run.label)
            metrics, arrays, seconds = timed(run, context)
            if arrays is not None:
                store.save_arrays(run.key, arrays)
            store.add(
                {
                    "key": run.key,
                    "experiment": run.experiment,
                    "setting": run.setting,
                    "params": run.params,
                    "seed": run.seed,
                    "metrics": metrics,
                    "seconds": round(seconds, 3),
                    "config": config.as_dict(),
                    "versions": info,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
            progress.advance()
        progress.show("done")
    finally:
        progress.close()
    return len(pending)
