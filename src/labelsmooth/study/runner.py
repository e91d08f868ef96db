"""Runs the study's plan: resumable, atomic on disk, in parallel worker processes.

``results.jsonl`` holds one line per finished run and is replaced atomically (written to a
temporary file, flushed, fsynced, renamed) after every run, so an interrupt never leaves a
half-written line and never loses a finished run. Arrays that the figures need are saved the
same way under ``arrays/``. Only the parent process writes; workers return their results.

A study folder holds one configuration: ``study.json`` records it with its fingerprint, and
:class:`StudyFolder` refuses a different one. An exclusive lock (``.lock``) keeps a second
study out of a folder in use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import platform
import queue
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from .. import __version__
from .config import ConfigError, StudyConfig
from .experiments import Arrays, Run, RunContext, timed
from .train import TrainingDivergedError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never a part.

    The file gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not
    the 0600 of the temporary file it is renamed from.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def versions() -> dict[str, str]:
    return {
        "labelsmooth": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------------------------
# The output folder: one configuration, one study at a time
# ----------------------------------------------------------------------------------------------


class FolderInUseError(ConfigError):
    """Another study holds the folder's lock."""


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    changed = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            changed.append(f"{name} {_show(old.get(name))} -> {_show(new.get(name))}")
    return "; ".join(changed[:4]) + (f" (and {len(changed) - 4} more)" if len(changed) > 4 else "")


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "unset" if value is None else str(value)


class StudyFolder:
    """``--out``: holds ``study.json`` (configuration and fingerprint) and a lock.

    Use as a context manager: entering takes the lock (``FolderInUseError`` if another process has
    it) and checks or writes ``study.json`` (``ConfigError`` naming what differs if the folder
    holds another configuration).
    """

    def __init__(
        self, directory: str | Path, config: StudyConfig, data_fingerprint: str, info: dict
    ) -> None:
        self.directory = Path(directory)
        self.config = config
        self.data_fingerprint = data_fingerprint
        self.fingerprint = config.fingerprint(data_fingerprint)
        self.info = info
        self._lock: TextIO | None = None

    def __enter__(self) -> StudyFolder:
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"--out: {self.directory} exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._check_or_write()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _acquire(self) -> None:
        path = self.directory / ".lock"
        handle = open(path, "a+")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FolderInUseError(
                    f"--out {self.directory} is in use by another study (pid {pid}); wait for "
                    "it to finish or use --out NEW"
                ) from err
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.seek(0)
                self._lock.truncate()
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _check_or_write(self) -> None:
        path = self.directory / "study.json"
        settings = self.config.numeric_settings()
        if path.exists():
            try:
                stored = json.loads(path.read_text())
                fingerprint = stored["fingerprint"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ConfigError(f"--out: {path} is not a labelsmooth study.json") from err
            if fingerprint == self.fingerprint:
                return
            difference = _describe_difference(stored.get("config", {}), settings)
            if stored.get("data_fingerprint") != self.data_fingerprint:
                difference = "; ".join(filter(None, ["the data set's contents", difference]))
            raise ConfigError(
                f"--out {self.directory} holds a study with another configuration "
                f"({difference or 'fingerprint ' + fingerprint}); use --out NEW, or delete "
                "the folder to start over"
            )
        if (self.directory / "results.jsonl").exists():
            raise ConfigError(
                f"--out {self.directory} holds results without a study.json (an older "
                "labelsmooth); use --out NEW"
            )
        atomic_write_json(
            path,
            {
                "fingerprint": self.fingerprint,
                "data_fingerprint": self.data_fingerprint,
                "config": settings,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "versions": versions(),
                **self.info,
            },
        )


def read_study_json(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "study.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def data_fingerprint(*arrays: Any) -> str:
    """A hash of the data's contents (tensors or arrays), shapes and dtypes included."""
    digest = hashlib.sha256()
    for array in arrays:
        value = np.ascontiguousarray(
            array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        )
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


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
        self._by_key = {record["key"]: record for record in self.records}

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def status(self, key: str) -> str | None:
        record = self._by_key.get(key)
        return None if record is None else record.get("status", "ok")

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._by_key[record["key"]] = record
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


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


def clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """``[####......] 12/150 | run label | elapsed 0:15 | remaining ~2:40`` on stderr."""

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
            remaining = "~" + clock(elapsed / self.computed * left)
        width = 20
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"[{bar}] {self.done:>{len(str(self.total))}}/{self.total} | {label} | "
            f"elapsed {clock(elapsed)} | remaining {remaining}"
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


# ----------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------

Outcome = tuple[str, dict[str, Any] | None, Arrays | None, float, str | None]


def run_one(run: Run, context: RunContext) -> Outcome:
    """(status, metrics, arrays, seconds, error) of one run; divergence is an outcome."""
    start = time.perf_counter()
    try:
        metrics, arrays, seconds = timed(run, context)
    except TrainingDivergedError as err:
        return "diverged", None, None, time.perf_counter() - start, str(err)
    return "ok", metrics, arrays, seconds, None


# Worker processes rebuild the plan from the configuration (runs are closures, which do not
# pickle) and execute runs by key; they never write to the study folder.
_WORKER_RUNS: dict[str, Run] = {}
_WORKER_DIRECTORY: Path | None = None


def _worker_init(config: StudyConfig, directory: str, threads: int) -> None:
    global _WORKER_DIRECTORY
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if threads:
        torch.set_num_threads(threads)
    from .experiments import plan
    from .main import prepare_data

    data, _ = prepare_data(config)
    _WORKER_RUNS.update({run.key: run for run in plan(data, config).runs})
    _WORKER_DIRECTORY = Path(directory)


def _worker_run(key: str) -> tuple[str, Outcome]:
    assert _WORKER_DIRECTORY is not None, "the worker was not initialised"
    store = ResultStore(_WORKER_DIRECTORY, writable=False)  # reads the teachers' arrays
    return key, run_one(_WORKER_RUNS[key], RunContext(store.load_arrays))


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def execute_plan(
    runs: Iterable[Run],
    store: ResultStore,
    config: StudyConfig,
    *,
    fingerprint: str = "",
    quiet: bool = False,
    stream: TextIO | None = None,
    workers: int = 1,
) -> int:
    """Runs what is not in ``store`` yet; returns the number of runs computed now.

    With ``workers > 1`` the runs execute in that many spawned processes (one torch thread
    each by default); a run starts once the runs it depends on have finished. Results are
    written by this process only, one atomic replacement of ``results.jsonl`` per run.
    """
    runs = list(runs)
    keys = [run.key for run in runs]
    if len(set(keys)) != len(keys):
        raise RuntimeError("the study plan has duplicate run keys")
    pending = [run for run in runs if run.key not in store]
    progress = Progress(len(runs), len(runs) - len(pending), quiet=quiet, stream=stream)
    info = versions()
    settings = config.as_dict()

    def record(run: Run, outcome: Outcome) -> None:
        status, metrics, arrays, seconds, error = outcome
        if arrays is not None:
            store.save_arrays(run.key, arrays)
        entry = {
            "key": run.key,
            "fingerprint": fingerprint,
            "status": status,
            "experiment": run.experiment,
            "setting": run.setting,
            "params": run.params,
            "seed": run.seed,
            "metrics": metrics,
            "seconds": round(seconds, 3),
            "config": settings,
            "versions": info,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if error is not None:
            entry["error"] = error
        store.add(entry)
        progress.advance()
        if workers > 1:
            progress.show(run.label + (" (diverged)" if status == "diverged" else ""))

    def blocked_by_failure(run: Run) -> str | None:
        for key in run.depends_on:
            if store.status(key) == "diverged":
                return f"the run it depends on ({key}) diverged"
        return None

    try:
        if workers <= 1 or len(pending) <= 1:
            context = RunContext(store.load_arrays)
            for run in pending:
                progress.show(run.label)
                reason = blocked_by_failure(run)
                if reason is not None:
                    record(run, ("diverged", None, None, 0.0, reason))
                    continue
                record(run, run_one(run, context))
        else:
            _execute_parallel(pending, store, config, workers, record, blocked_by_failure)
        progress.show("done")
    finally:
        progress.close()
    return len(pending)


def _execute_parallel(
    pending: list[Run],
    store: ResultStore,
    config: StudyConfig,
    workers: int,
    record: Callable[[Run, Outcome], None],
    blocked_by_failure: Callable[[Run], str | None],
) -> None:
    by_key = {run.key: run for run in pending}
    waiting = list(pending)
    finished: queue.Queue = queue.Queue()
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(
        min(workers, len(pending)),
        initializer=_worker_init,
        initargs=(config, str(store.directory), config.threads),
    )
    in_flight = 0
    try:
        while waiting or in_flight:
            ready = [run for run in waiting if all(key in store for key in run.depends_on)]
            for run in ready:
                waiting.remove(run)
                reason = blocked_by_failure(run)
                if reason is not None:
                    record(run, ("diverged", None, None, 0.0, reason))
                    continue
                pool.apply_async(
                    _worker_run,
                    (run.key,),
                    callback=finished.put,
                    error_callback=lambda err, key=run.key: finished.put((key, err)),
                )
                in_flight += 1
            if not in_flight:
                if waiting:  # pragma: no cover - a dependency outside the plan
                    raise RuntimeError(f"runs wait for runs not in the plan: {waiting[0].key}")
                break
            while True:
                try:
                    key, outcome = finished.get(timeout=0.5)
                    break
                except queue.Empty:
                    continue
            in_flight -= 1
            if isinstance(outcome, BaseException):
                raise outcome
            record(by_key[key], outcome)
        pool.close()
    finally:
        pool.terminate()
        pool.join()
