"""Builds a small C++ library with the system compiler and caches it on disk, safely.

Used by :mod:`labelsmooth.kernels.cpu_ce` (the source is the package file ``cpu_ce.cpp``).
A cached library is code this process will run, so nothing is loaded that another local user
could have written, and nothing damaged is ever mapped:

* **Directories**, in order: ``$LABELSMOOTH_CACHE_DIR``; else ``$XDG_CACHE_HOME/labelsmooth``
  (a relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification says); else
  ``~/.cache/labelsmooth``; then the fallback ``<system temp>/labelsmooth-<uid>``. A relative
  path is refused (``HOME`` unset for a uid without a passwd entry leaves ``~`` unexpanded,
  which would otherwise be a directory named ``~`` in the working directory). A directory is
  created with mode 0700 if absent and then used only if, opened without following a
  symbolic link, it is a directory owned by the current user and not writable by group or
  others. Refused directories are skipped with the reason recorded.
* **Files**: a cached library is loaded only if it is a regular file (not a symbolic link),
  owned by the current user, not writable by group or others, and its SHA-256 equals the
  digest recorded next to it (``<name>.sha256``, written by the build, with the same checks)
  or the digest of a library this process built. The hash is taken from the open file, and
  on Linux the library is then loaded from that same open file (``/proc/self/fd``), so the
  bytes checked are the bytes loaded. Anything else (missing, truncated, foreign, tampered,
  unloadable, lacking the expected symbols) is rebuilt, never loaded: a truncated library
  would otherwise kill the process with SIGBUS when mapped.
* **Build**: in a private temporary directory (:func:`tempfile.mkdtemp`), with relative file
  names so that builds are reproducible. The result is written to a temporary file in the
  cache directory, ``fsync``-ed, and renamed into place (the digest first, then the library),
  then the directory is ``fsync``-ed: concurrent first uses (pytest-xdist, several ranks)
  never see a partial file. If writing fails (disk full, read-only, no permission) the next
  directory is tried. A freshly built library that lacks the symbols is an error (no second
  rebuild): the caller falls back to another implementation.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["BuildError", "Candidate", "cache_candidates", "fallback_dir", "load", "source"]

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted under the name must not block
_DIGEST_SUFFIX = ".sha256"
_PROC_FD = "/proc/self/fd"

# Digests of the libraries built by this process (accepted even if a concurrent build of
# another process replaced the recorded digest in between).
_built_digests: set[str] = set()
# Descriptors of the libraries loaded through /proc/self/fd (see _dlopen).
_pinned: list[int] = []


class BuildError(RuntimeError):
    """The compiler rejected the source with these flags (another directory will not help)."""


def source(name: str) -> str:
    """The text of the C++ source ``name`` shipped with this package."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


@dataclass(frozen=True)
class Candidate:
    """A cache directory to try; ``refused`` says why it is not used (``None``: try it)."""

    path: Path
    refused: str | None = None


def fallback_dir() -> Path:
    """A per-user directory under the system temporary directory."""
    uid = _uid()
    return Path(tempfile.gettempdir()) / f"labelsmooth-{0 if uid is None else uid}"


def cache_candidates() -> list[Candidate]:
    """The primary cache directory, then the fallback (see the module docstring)."""
    explicit = os.environ.get("LABELSMOOTH_CACHE_DIR")
    if explicit:
        primary, origin = explicit, "LABELSMOOTH_CACHE_DIR"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        if xdg and os.path.isabs(xdg):
            primary, origin = os.path.join(xdg, "labelsmooth"), "XDG_CACHE_HOME"
        else:  # unset, or relative (ignored, as the XDG base directory specification says)
            home = os.path.expanduser("~")
            primary, origin = os.path.join(home, ".cache", "labelsmooth"), "the home directory"
    candidates = []
    if os.path.isabs(primary):
        candidates.append(Candidate(Path(primary)))
    else:
        hint = " (is HOME set?)" if origin == "the home directory" else ""
        reason = f"relative cache path from {origin}{hint}; not used"
        candidates.append(Candidate(Path(primary), reason))
    fallback = fallback_dir()
    if not fallback.is_absolute():
        candidates.append(Candidate(fallback, "relative temporary directory; not used"))
    elif fallback != candidates[0].path:
        candidates.append(Candidate(fallback))
    return candidates


def _foreign(status: os.stat_result) -> str | None:
    """Why a file or directory with this status may hold another user's code (None: it may
    not): owned by someone else, or writable by group or others."""
    uid = _uid()
    if uid is not None and status.st_uid != uid:
        return f"owned by uid {status.st_uid}, not by this user (uid {uid})"
    if status.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(status.st_mode):o})"
    return None


def open_private_dir(path: Path) -> int:
    """Creates ``path`` (mode 0700) if absent and opens it; ``PermissionError`` with the
    reason if it may not be used (a symbolic link, not a directory, or :func:`_foreign`)."""
    with contextlib.suppress(FileExistsError):  # a file, or a dangling symbolic link
        os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR) or os.path.islink(path):
            raise PermissionError(f"{path}: a symbolic link or not a directory; not used") from err
        raise
    status = os.fstat(fd)
    reason = None if stat.S_ISDIR(status.st_mode) else "not a directory"
    reason = reason or _foreign(status)
    if reason is not None:
        os.close(fd)
        raise PermissionError(f"{path}: {reason}; not used")
    return fd


def _open_checked(dir_fd: int, name: str) -> tuple[int | None, str | None]:
    """Opens ``name`` in the directory for reading: (fd, None), or (None, why not)."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, "absent"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, "a symbolic link"
        return None, str(err)
    status = os.fstat(fd)
    reason = None if stat.S_ISREG(status.st_mode) else "not a regular file"
    reason = reason or _foreign(status)
    if reason is not None:
        os.close(fd)
        return None, reason
    return fd, None


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _recorded_digest(dir_fd: int, name: str) -> str | None:
    fd, _ = _open_checked(dir_fd, name + _DIGEST_SUFFIX)
    if fd is None:
        return None
    try:
        return _read_all(fd)[:200].decode("ascii", errors="replace").strip()
    finally:
        os.close(fd)


def _dlopen(fd: int, path: Path, configure: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL:
    """Loads the library open as ``fd`` (on Linux by its descriptor, so that the checked
    bytes are the loaded ones); ``configure`` raises AttributeError if a symbol is missing.

    The loader remembers a library by the name it was opened with, so the duplicated
    descriptor behind ``/proc/self/fd/N`` is never closed once loaded: N is never reused for
    another file in this process (a handful of descriptors at most).
    """
    if not (sys.platform.startswith("linux") and os.path.isdir(_PROC_FD)):
        lib = ctypes.CDLL(str(path))
    else:
        pinned = os.dup(fd)
        try:
            lib = ctypes.CDLL(f"{_PROC_FD}/{pinned}")
        except BaseException:
            os.close(pinned)
            raise
        _pinned.append(pinned)
    configure(lib)
    return lib


def _load_cached(
    dir_fd: int, directory: Path, name: str, configure: Callable[[ctypes.CDLL], None]
) -> tuple[ctypes.CDLL | None, str | None]:
    """The cached library if it passes every check: (lib, None), else (None, why not)."""
    fd, reason = _open_checked(dir_fd, name)
    if fd is None:
        return None, None if reason == "absent" else reason
    try:
        digest = hashlib.sha256(_read_all(fd)).hexdigest()
        recorded = _recorded_digest(dir_fd, name)
        if digest != recorded and digest not in _built_digests:
            why = "no recorded digest" if recorded is None else "digest mismatch"
            return None, f"{why} (damaged or not built here)"
        try:
            return _dlopen(fd, directory / name, configure), None
        except (OSError, AttributeError) as err:
            return None, f"does not load: {err}"
    finally:
        os.close(fd)


def _write_file(dir_fd: int, name: str, data: bytes) -> None:
    """Writes ``name`` atomically: a temporary file, ``fsync``, rename."""
    temporary = f".{name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC
    fd = os.open(temporary, flags, 0o644, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dir_fd)
        raise


def _install(dir_fd: int, name: str, data: bytes) -> None:
    """Puts the library and its digest into the cache directory, durably. Raises OSError (for
    example ENOSPC, EROFS, EACCES), leaving no partial file behind."""
    _write_file(dir_fd, name + _DIGEST_SUFFIX, (hashlib.sha256(data).hexdigest() + "\n").encode())
    _write_file(dir_fd, name, data)
    try:
        os.fsync(dir_fd)  # the renames themselves
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):  # some file systems refuse: harmless
            raise


def _compile(compiler: str, flags: Sequence[str], text: str, timeout: float) -> bytes:
    """Compiles ``text`` in a private temporary directory; the library's bytes."""
    work = tempfile.mkdtemp(prefix="labelsmooth-build-")
    try:
        Path(work, "labelsmooth_ce.cpp").write_text(text, encoding="utf-8")
        result = subprocess.run(
            [compiler, *flags, "labelsmooth_ce.cpp", "-o", "labelsmooth_ce.so"],
            cwd=work,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise BuildError(f"{' '.join(flags)}: {result.stderr.strip()[-2000:]}")
        return Path(work, "labelsmooth_ce.so").read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(
    variants: Sequence[tuple[str, Sequence[str]]],
    compiler: str,
    text: str,
    configure: Callable[[ctypes.CDLL], None],
    *,
    timeout: float = 600.0,
) -> tuple[ctypes.CDLL, Path]:
    """The library for the first ``(file name, flags)`` variant that compiles: a verified
    cached copy from a usable cache directory, else a fresh build installed in the first
    usable directory that takes it.

    Raises RuntimeError with every reason when there is none. A compiler error ends a variant
    (the same flags fail in any directory); a freshly built library that does not load or
    lacks the symbols ends the search (another build would not help).
    """
    errors: list[str] = []
    directories: list[tuple[Path, int]] = []
    try:
        for candidate in cache_candidates():
            if candidate.refused is not None:
                errors.append(f"{candidate.path}: {candidate.refused}")
                continue
            try:
                directories.append((candidate.path, open_private_dir(candidate.path)))
            except PermissionError as err:
                errors.append(str(err))
            except OSError as err:
                errors.append(f"{candidate.path}: {err}")
        if not directories:
            raise RuntimeError(
                "no usable cache directory for the C++ kernel:\n" + "\n".join(errors)
            )
        for name, flags in variants:
            for directory, dir_fd in directories:
                lib, reason = _load_cached(dir_fd, directory, name, configure)
                if lib is not None:
                    return lib, directory / name
                if reason is not None:
                    errors.append(f"{directory / name}: {reason}; rebuilt")
            try:
                built = _compile(compiler, flags, text, timeout)
            except (BuildError, OSError, subprocess.SubprocessError) as err:
                errors.append(str(err))
                continue
            digest = hashlib.sha256(built).hexdigest()
            for directory, dir_fd in directories:
                try:
                    _install(dir_fd, name, built)
                except OSError as err:  # disk full, read-only, ...: the next directory
                    errors.append(f"{directory}: cannot write the library: {err}")
                    continue
                _built_digests.add(digest)
                lib, reason = _load_cached(dir_fd, directory, name, configure)
                if lib is not None:
                    return lib, directory / name
                errors.append(f"{directory / name}: freshly built library {reason}")
                raise RuntimeError("the C++ kernel is unusable:\n" + "\n".join(errors))
    finally:
        for _, dir_fd in directories:
            os.close(dir_fd)
    raise RuntimeError("could not build the C++ kernel:\n" + "\n".join(errors))
