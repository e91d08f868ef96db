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
import functools
import hashlib
import io
import json
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from .. import __version__
from .config import ConfigError, StudyConfig
from .experiments import Arrays, Run, RunContext, timed
from .registry import params_for, plan
from .train import TrainingDivergedError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StudyFileError(ConfigError):
    """A file of the study folder is unreadable, malformed or cannot be written: reported in one
    line naming the file, exit status 2."""


class OutputError(StudyFileError, OSError):
    """Writing to the output folder failed (read-only, full disk, ...). Files written before
    stay as they were: every write replaces a file atomically."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old or the new file, never a part.

    The file gets the permissions a plain ``open(path, "w")`` would (0666 less the umask), not
    the 0600 of the temporary file it is renamed from. An :class:`OSError` (a read-only folder,
    a full disk) leaves the old file in place and is raised as :class:`OutputError`, a one-line
    message naming the file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
        )
    except OSError as err:
        raise _output_error(path, err) from err
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as err:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, OutputError):
            raise _output_error(path, err) from err
        raise


def _output_error(path: Path, err: OSError) -> OutputError:
    reason = err.strerror or str(err) or type(err).__name__
    error = OutputError(f"cannot write {path} ({reason})")
    error.errno = err.errno
    return error


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
        self,
        directory: str | Path,
        config: StudyConfig,
        data_fingerprint: str,
        info: dict,
        *,
        argument: str = "--out",
    ) -> None:
        self.directory = Path(directory)
        # how the caller names the folder, and a new one, in messages
        self.argument = argument
        self._new = f"{argument} NEW" if argument.startswith("--") else "another folder"
        self.config = config
        self.data_fingerprint = data_fingerprint
        self.fingerprint = config.fingerprint(data_fingerprint)
        self.info = info
        self._lock: TextIO | None = None

    def __enter__(self) -> StudyFolder:
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"{self.argument}: {self.directory} exists and is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _output_error(self.directory, err) from err
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
        try:
            handle = open(path, "a+")  # noqa: SIM115 - held until __exit__
        except OSError as err:
            raise _output_error(path, err) from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            handle.close()
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise FolderInUseError(
                    f"{self.argument} {self.directory} is in use by another study (pid {pid}); "
                    f"wait for it to finish or use {self._new}"
                ) from err
            raise _output_error(path, err) from err
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        except OSError as err:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            raise _output_error(path, err) from err
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
            stored = read_study_json(self.directory)
            fingerprint = stored["fingerprint"]
            if fingerprint == self.fingerprint:
                return
            difference = _describe_difference(stored.get("config", {}), settings)
            old_data = str(stored.get("data_fingerprint")).split("+text:")
            new_data = str(self.data_fingerprint).split("+text:")
            changed = []
            if old_data[0] != new_data[0]:
                changed.append("the data set's contents")
            if old_data[1:] != new_data[1:]:
                changed.append("the sequence experiment's text")
            difference = "; ".join(filter(None, [*changed, difference]))
            raise ConfigError(
                f"{self.argument} {self.directory} holds a study with another configuration "
                f"({difference or 'fingerprint ' + fingerprint}); use {self._new}, or "
                "delete the folder to start over"
            )
        if (self.directory / "results.jsonl").exists():
            raise ConfigError(
                f"{self.argument} {self.directory} holds results without a study.json (an "
                f"older labelsmooth); use {self._new}"
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


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise StudyFileError(
            f"{path} is not a labelsmooth file (not UTF-8 text at byte {err.start})"
        ) from err
    except OSError as err:
        raise StudyFileError(f"cannot read {path} ({err.strerror or err})") from err


def _kind(value: Any) -> str:
    text = json.dumps(value)  # as the file spells it
    return text if len(text) <= 40 else text[:37] + "..."


# study.json: the fields the report reads, and what each must be
_STUDY_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "fingerprint": (str, "a string"),
    "data_fingerprint": (str, "a string"),
    "config": (dict, "an object"),
    "dataset": (str, "a string"),
    "num_classes": (int, "an integer"),
    "class_names": (list, "a list"),
    "multilabel": (bool, "true or false"),
    "planned_runs": (int, "an integer"),
    "notes": (list, "a list"),
    "settings": (dict, "an object"),
    "n_train": (int, "an integer"),
    "n_val": (int, "an integer"),
    "n_test": (int, "an integer"),
}


def read_study_json(directory: str | Path) -> dict[str, Any]:
    """``study.json`` of ``directory`` ({} if absent); :class:`StudyFileError` naming the file
    and the field when it is not JSON or a field has the wrong type."""
    path = Path(directory) / "study.json"
    if not path.exists():
        return {}
    try:
        stored = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise StudyFileError(
            f"{path} is not a labelsmooth study.json (not JSON: {err}); use --out NEW, or "
            "delete the folder to start over"
        ) from err
    problem = None
    if not isinstance(stored, dict):
        problem = f"it holds {_kind(stored)}, not an object"
    elif "fingerprint" not in stored:
        problem = "it has no fingerprint"
    else:
        for name, (kind, words) in _STUDY_FIELDS.items():
            value = stored.get(name)
            if value is None and name != "fingerprint":
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                problem = f"{name} must be {words}, got {_kind(value)}"
                break
        else:
            problem = _study_values_problem(stored)
    if problem is not None:
        raise StudyFileError(
            f"{path} is not a labelsmooth study.json ({problem}); use --out NEW, or delete the "
            "folder to start over"
        )
    return stored


def _study_values_problem(stored: dict[str, Any]) -> str | None:
    if not all(isinstance(n, str) for n in stored.get("class_names") or []):
        return "class_names must be strings"
    if not all(isinstance(n, str) for n in stored.get("notes") or []):
        return "notes must be strings"
    if not all(isinstance(v, dict) for v in (stored.get("settings") or {}).values()):
        return "settings must map each setting to an object"
    return config_problem(stored.get("config") or {})


def config_problem(config: Any) -> str | None:
    """What is wrong with the settings of a study.json or a results line that the report
    uses, or None."""
    if not isinstance(config, dict):
        return f"config must be an object, got {_kind(config)}"
    seeds = config.get("seeds", [0])
    if not isinstance(seeds, list) or not all(_is_int(s) for s in seeds):
        return f"config.seeds must be a list of integers, got {_kind(seeds)}"
    projection = config.get("projection_classes", [0, 1, 2])
    if (
        not isinstance(projection, list)
        or len(projection) != 3
        or not all(_is_int(c) and c >= 0 for c in projection)
    ):
        return f"config.projection_classes must be 3 class indices, got {_kind(projection)}"
    if config.get("select", "accuracy") not in ("accuracy", "nll", "final"):
        return f"config.select must be accuracy, nll or final, got {_kind(config.get('select'))}"
    for name in ("validation_fraction", "n_bins", "epochs", "lr", "width", "depth"):
        value = config.get(name, 1)
        if value is not None and not _is_number(value):
            return f"config.{name} must be a number, got {_kind(value)}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _record_problem(record: Any) -> str | None:
    """What is wrong with one line of results.jsonl, or None (the checks cover every field the
    report reads, so a tampered line is refused here, not deep inside the analysis)."""
    if not isinstance(record, dict):
        return f"it holds {_kind(record)}, not an object"
    for name in ("key", "experiment", "setting"):
        if not isinstance(record.get(name), str):
            return f"{name} must be a string, got {_kind(record.get(name))}"
    if record.get("status", "ok") not in ("ok", "diverged"):
        return f"status must be ok or diverged, got {_kind(record.get('status'))}"
    if not _is_int(record.get("seed")):
        return f"seed must be an integer, got {_kind(record.get('seed'))}"
    if not _is_number(record.get("seconds", 0)):
        return f"seconds must be a number, got {_kind(record.get('seconds'))}"
    params = record.get("params")
    if not isinstance(params, dict):
        return f"params must be an object, got {_kind(params)}"
    required = params_for(record["experiment"], record["setting"])
    if required is None:
        return f"unknown experiment {record['experiment']!r} / setting {record['setting']!r}"
    for name, allowed in required.items():
        value = params.get(name)
        if not (_is_number(value) or (isinstance(value, str) and value in allowed)):
            expected = "one of " + ", ".join(allowed) if name == "variant" else "a number"
            return f"params.{name} must be {expected}, got {_kind(value)}"
    metrics = record.get("metrics")
    if metrics is not None and (
        not isinstance(metrics, dict)
        or not all(v is None or _is_number(v) for v in metrics.values())
    ):
        return "metrics must be an object of numbers (or null)"
    if metrics is None and record.get("status", "ok") == "ok":
        return "a finished run (status ok) needs metrics"
    if "config" in record:
        return config_problem(record["config"])
    return None


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
            for number, line in enumerate(_read_text(self.path).splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    problem: str | None = f"not JSON ({err})"
                else:
                    problem = _record_problem(record)
                if problem is not None:
                    raise StudyFileError(
                        f"{self.path}: line {number} is not a labelsmooth result: {problem}; "
                        "delete that line to recompute the run"
                    )
                self.records.append(record)
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
            raise StudyFileError(
                f"{path}: the arrays of run {key!r} are missing; delete the "
                f"run from results.jsonl to recompute it"
            )
        try:
            with np.load(path, allow_pickle=False) as archive:
                return _Arrays(path, key, {name: archive[name] for name in archive.files})
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise StudyFileError(
                f"{path}: the arrays of run {key!r} cannot be read ({err}); delete the run "
                "from results.jsonl to recompute it"
            ) from err


class _Arrays(dict):
    """The arrays of one run; a missing one is a one-line :class:`StudyFileError`."""

    def __init__(self, path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
        super().__init__(arrays)
        self.path, self.key = path, key

    def __missing__(self, name: str) -> np.ndarray:
        raise StudyFileError(
            f"{self.path}: the arrays of run {self.key!r} lack {name!r}; delete the run from "
            "results.jsonl to recompute it"
        )


# ----------------------------------------------------------------------------------------------
# Progress
# ----------------------------------------------------------------------------------------------


def clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


class Progress:
    """``12/150 | remaining ~2:40 | elapsed 0:15 | [####......] run label`` on stderr: counts
    and time left first, cut to the terminal's width when it is one."""

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
            f"{self.done:>{len(str(self.total))}}/{self.total} | remaining {remaining} | "
            f"elapsed {clock(elapsed)} | [{bar}] {label}"
        )
        if self.interactive:
            columns = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
            self.stream.write("\r" + line[:columns].ljust(columns))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Blanks the interactive line, so that other output can be printed in its place."""
        if not self.quiet and self.interactive:
            columns = max(40, shutil.get_terminal_size((120, 24)).columns - 1)
            self.stream.write("\r" + " " * columns + "\r")
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


# Worker processes rebuild the plan with a planner (runs are closures, which do not pickle; the
# planner is a picklable callable that returns them) and execute runs by key; they never write
# to the study folder.
_WORKER_RUNS: dict[str, Run] = {}
_WORKER_DIRECTORY: Path | None = None

Planner = Callable[[], "list[Run]"]


def plan_from_config(config: StudyConfig) -> list[Run]:
    """The CLI study's runs for ``config`` (the planner of its worker processes)."""
    from .prepare import prepare_data

    data, _ = prepare_data(config)
    return plan(data, config).runs


def _worker_init(planner: Planner, directory: str, threads: int) -> None:
    global _WORKER_DIRECTORY
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if threads:
        torch.set_num_threads(threads)
    _WORKER_RUNS.update({run.key: run for run in planner()})
    _WORKER_DIRECTORY = Path(directory)


def _worker_run(key: str) -> tuple[str, Outcome]:
    assert _WORKER_DIRECTORY is not None, "the worker was not initialised"
    store = ResultStore(_WORKER_DIRECTORY, writable=False)  # reads the teachers' arrays
    return key, run_one(_WORKER_RUNS[key], RunContext(store.load_arrays))


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


BACKENDS = ("local", "ray")


def execute_plan(
    runs: Iterable[Run],
    store: ResultStore,
    config: Any,
    *,
    fingerprint: str = "",
    quiet: bool = False,
    stream: TextIO | None = None,
    workers: int = 1,
    planner: Planner | None = None,
    backend: str = "local",
) -> int:
    """Runs what is not in ``store`` yet; returns the number of runs computed now.

    ``config`` is the study's settings (:class:`StudyConfig` or a sweep's): recorded with
    every result (``as_dict()``); ``threads`` torch threads per worker. With ``workers > 1``
    the runs execute in that many spawned processes, each building the runs with ``planner``
    (a picklable callable; default: the CLI study's plan of ``config``). With
    ``backend="ray"`` they execute as Ray actors on the cluster ``ray.init`` connected to (a
    local one if none). A run starts once the runs it depends on have finished. Results are
    written by this process only, one atomic replacement of ``results.jsonl`` per run.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if planner is None:
        planner = functools.partial(plan_from_config, config)
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
        if backend == "ray" and pending:
            _execute_ray(
                pending, store, planner, config.threads, workers, record, blocked_by_failure
            )
        elif workers <= 1 or len(pending) <= 1:
            context = RunContext(store.load_arrays)
            for run in pending:
                progress.show(run.label)
                reason = blocked_by_failure(run)
                if reason is not None:
                    record(run, ("diverged", None, None, 0.0, reason))
                    continue
                record(run, run_one(run, context))
        else:
            _execute_parallel(
                pending, store, planner, config.threads, workers, record, blocked_by_failure
            )
        progress.show("done")
    finally:
        progress.close()
    return len(pending)


def _execute_parallel(
    pending: list[Run],
    store: ResultStore,
    planner: Planner,
    threads: int,
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
        initargs=(planner, str(store.directory), threads),
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


# ----------------------------------------------------------------------------------------------
# Ray: the same runs as actors on a Ray cluster
# ----------------------------------------------------------------------------------------------


class _RayWorker:
    """One Ray actor: builds the runs once (like a worker process) and executes them by key.
    The arrays of the runs a run depends on travel with the call: a Ray node need not share
    the study folder's file system."""

    def __init__(self, planner: Planner, threads: int) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.runs = {run.key: run for run in planner()}

    def run(self, key: str, arrays: dict[str, Arrays]) -> tuple[str, Outcome]:
        def load(name: str) -> Arrays:
            return arrays[name]

        return key, run_one(self.runs[key], RunContext(load))


def import_ray() -> Any:
    """The ``ray`` module, or :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ConfigError(
            'backend "ray" needs Ray: pip install "labelsmooth[ray]" (or pip install ray)'
        ) from err
    return ray


def _execute_ray(
    pending: list[Run],
    store: ResultStore,
    planner: Planner,
    threads: int,
    workers: int,
    record: Callable[[Run, Outcome], None],
    blocked_by_failure: Callable[[Run], str | None],
) -> None:
    """Runs ``pending`` on ``workers`` Ray actors (``ray.init()`` first if this process is not
    connected to a cluster yet; that local instance is shut down at the end)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        actor = ray.remote(num_cpus=max(1, threads))(_RayWorker)
        actors = [actor.remote(planner, threads) for _ in range(min(max(workers, 1), len(pending)))]
        idle = list(actors)
        by_key = {run.key: run for run in pending}
        waiting = list(pending)
        in_flight: dict[Any, Any] = {}  # future -> actor
        while waiting or in_flight:
            ready = [run for run in waiting if all(key in store for key in run.depends_on)]
            for run in ready:
                if not idle:
                    break
                waiting.remove(run)
                reason = blocked_by_failure(run)
                if reason is not None:
                    record(run, ("diverged", None, None, 0.0, reason))
                    continue
                arrays = {key: store.load_arrays(key) for key in run.depends_on}
                worker = idle.pop()
                in_flight[worker.run.remote(run.key, arrays)] = worker
            if not in_flight:
                if waiting and not any(
                    all(key in store for key in run.depends_on) for run in waiting
                ):  # pragma: no cover - a dependency outside the plan
                    raise RuntimeError(f"runs wait for runs not in the plan: {waiting[0].key}")
                continue
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for future in done:
                idle.append(in_flight.pop(future))
                key, outcome = ray.get(future)
                record(by_key[key], outcome)
    finally:
        if started:
            ray.shutdown()
