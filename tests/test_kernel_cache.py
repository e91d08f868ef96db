"""The C++ kernel's on-disk cache (``labelsmooth.kernels._build``): nothing another local user
could have written is loaded, nothing damaged is ever mapped, a full disk moves on.

Most tests build a tiny stand-in library that has the kernel's three symbols (fast to
compile); the ones that go through ``cross_entropy`` build the real kernel. Each test gets its
own cache directories.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import labelsmooth as ls
from labelsmooth.kernels import _build, cpu_ce

ROOT = Path(__file__).resolve().parent.parent
COMPILER = cpu_ce._compiler()
pytestmark = pytest.mark.skipif(COMPILER is None, reason="no C++ compiler")

# The kernel's interface with no work behind it: loads and passes cpu_ce._configure.
STUB = (
    f'extern "C" int ls_abi_version() {{ return {cpu_ce._ABI_VERSION}; }}\n'
    'extern "C" int ls_ce_rows(const void*) { return 0; }\n'
    'extern "C" int ls_scale_rows(int, void*, const void*, long, long, int) { return 0; }\n'
)
NO_SYMBOLS = 'extern "C" int labelsmooth_something_else() { return 0; }\n'


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Private primary and fallback directories, a fresh process state, builds counted."""
    primary, fallback = tmp_path / "cache", tmp_path / "fallback"
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", str(primary))
    monkeypatch.setattr(_build, "fallback_dir", lambda: fallback)
    monkeypatch.setattr(_build, "_built_digests", set())
    monkeypatch.setattr(cpu_ce, "_state", {})
    builds: list[list[str]] = []
    compile_ = _build._compile

    def counting(compiler, flags, text, timeout):
        builds.append(list(flags))
        return compile_(compiler, flags, text, timeout)

    monkeypatch.setattr(_build, "_compile", counting)
    return primary, fallback, builds


def _load(text: str = STUB):
    assert COMPILER is not None
    variants = cpu_ce._variants(COMPILER, text)[1:]  # without -march=native: one build
    return _build.load(variants, COMPILER, text, cpu_ce._configure)


def _forget_builds(monkeypatch):
    """As a new process: digests of this process's own builds are not trusted any more."""
    monkeypatch.setattr(_build, "_built_digests", set())


# --------------------------------------------------------------------------------------------
# directories
# --------------------------------------------------------------------------------------------


def test_a_valid_cached_library_is_reused(cache, monkeypatch):
    primary, _, builds = cache
    _, path = _load()
    assert path.parent == primary and len(builds) == 1
    assert stat.S_IMODE(primary.stat().st_mode) == 0o700
    recorded = Path(f"{path}.sha256").read_text().strip()
    assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not stat.S_IMODE(path.stat().st_mode) & 0o022
    _forget_builds(monkeypatch)
    _, again = _load()
    assert again == path and len(builds) == 1  # verified against the recorded digest


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_directory_writable_by_others_is_refused(cache, mode):
    primary, fallback, _ = cache
    primary.mkdir()
    primary.chmod(mode)
    with pytest.raises(PermissionError, match="writable by group or others"):
        _build.open_private_dir(primary)
    _, path = _load()
    assert path.parent == fallback
    assert not list(primary.iterdir())


def test_a_directory_of_another_user_is_refused(cache, monkeypatch):
    primary, _, _ = cache
    primary.mkdir(mode=0o700)
    real_uid = os.getuid()
    monkeypatch.setattr(_build, "_uid", lambda: real_uid + 1)  # everything is someone else's
    with pytest.raises(PermissionError, match=r"owned by uid \d+, not by this user"):
        _build.open_private_dir(primary)
    with pytest.raises(RuntimeError, match="no usable cache directory"):
        _load()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_directory_chowned_to_another_user_is_refused(cache):
    primary, fallback, _ = cache
    primary.mkdir(mode=0o700)
    os.chown(primary, 12345, -1)
    with pytest.raises(PermissionError, match="owned by uid 12345"):
        _build.open_private_dir(primary)
    _, path = _load()
    assert path.parent == fallback


def test_a_symlinked_directory_is_refused(cache, tmp_path):
    primary, fallback, _ = cache
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    primary.symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        _build.open_private_dir(primary)
    _, path = _load()
    assert path.parent == fallback
    assert not list(elsewhere.iterdir())


def test_relative_cache_paths_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("LABELSMOOTH_CACHE_DIR", "relative/cache")
    first, fallback = _build.cache_candidates()
    assert first.refused and "relative cache path" in first.refused
    assert fallback.refused is None and fallback.path.is_absolute()

    # HOME unset for a uid without a passwd entry: "~" stays unexpanded.
    monkeypatch.delenv("LABELSMOOTH_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)
    first, _ = _build.cache_candidates()
    assert first.path == Path("~/.cache/labelsmooth") and first.refused

    # A relative XDG_CACHE_HOME is ignored (XDG base directory specification).
    monkeypatch.setenv("XDG_CACHE_HOME", "relative-xdg")
    first, _ = _build.cache_candidates()
    assert first.refused and "relative-xdg" not in str(first.path)

    monkeypatch.setattr(_build, "_built_digests", set())
    assert COMPILER is not None
    variants = cpu_ce._variants(COMPILER, STUB)[1:]
    _, path = _build.load(variants, COMPILER, STUB, cpu_ce._configure)
    assert path.is_absolute() and path.parent == fallback.path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no "./~" created


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _replaced(path: Path, before: os.stat_result) -> bool:
    now = path.lstat()
    return stat.S_ISREG(now.st_mode) and now.st_ino != before.st_ino


def test_a_group_writable_library_is_rebuilt(cache, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    path.chmod(0o664)
    before = path.lstat()
    _forget_builds(monkeypatch)
    fd = _build.open_private_dir(path.parent)
    try:
        assert _build._load_cached(fd, path.parent, path.name, cpu_ce._configure) == (
            None,
            "writable by group or others (mode 664)",
        )
    finally:
        os.close(fd)
    _, again = _load()
    assert again == path and len(builds) == 2 and _replaced(path, before)
    assert not stat.S_IMODE(path.stat().st_mode) & 0o022


def test_a_library_of_another_user_is_rebuilt(cache, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    before = path.lstat()
    _forget_builds(monkeypatch)
    real_fstat = os.fstat

    def foreign_files(fd):  # regular files appear to belong to uid 12345
        status = real_fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return status
        fields = list(status)
        fields[stat.ST_UID] = 12345
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", foreign_files)
    with pytest.raises(RuntimeError, match="owned by uid 12345"):
        _load()  # rebuilt, but the new file "belongs" to 12345 as well: nothing is loaded
    monkeypatch.setattr(os, "fstat", real_fstat)
    assert len(builds) == 2 and _replaced(path, before)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_library_chowned_to_another_user_is_rebuilt(cache, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    os.chown(path, 12345, -1)
    before = path.lstat()
    _forget_builds(monkeypatch)
    _, again = _load()
    assert again == path and len(builds) == 2 and _replaced(path, before)
    assert path.stat().st_uid == os.getuid()


def test_a_symlinked_library_is_rebuilt(cache, tmp_path, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    planted = tmp_path / "planted.so"
    planted.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(planted)
    before = path.lstat()
    _forget_builds(monkeypatch)
    _, again = _load()
    assert again == path and len(builds) == 2 and _replaced(path, before)


def test_a_wrong_recorded_digest_means_a_rebuild(cache, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    digest = Path(f"{path}.sha256")
    digest.write_text("0" * 64 + "\n")
    before = path.lstat()
    _forget_builds(monkeypatch)
    _, again = _load()
    assert again == path and len(builds) == 2 and _replaced(path, before)
    assert digest.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_missing_recorded_digest_means_a_rebuild(cache, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    Path(f"{path}.sha256").unlink()
    _forget_builds(monkeypatch)
    _load()
    assert len(builds) == 2 and Path(f"{path}.sha256").exists()


def test_a_library_without_the_symbols_is_rebuilt(cache, tmp_path, monkeypatch):
    _, _, builds = cache
    _, path = _load()
    assert COMPILER is not None
    other = _build._compile(COMPILER, cpu_ce._BASE_FLAGS, NO_SYMBOLS, 600)
    # Replace the file (a new inode), as a build or an attacker would: rewriting it in place
    # would corrupt the library this process has already mapped from it.
    staged = tmp_path / "staged.so"
    staged.write_bytes(other)  # loads fine, digest recorded, but not the kernel
    os.replace(staged, path)
    Path(f"{path}.sha256").write_text(hashlib.sha256(other).hexdigest())
    _forget_builds(monkeypatch)
    count = len(builds)
    lib, again = _load()
    assert again == path and len(builds) == count + 1
    assert lib.ls_abi_version() == cpu_ce._ABI_VERSION and path.read_bytes() != other


def test_a_truncated_library_is_rebuilt_not_crashed(tmp_path):
    """A truncated library would die with SIGBUS once mapped; it must be rebuilt instead."""
    env = {**os.environ, "LABELSMOOTH_CACHE_DIR": str(tmp_path / "cache")}
    script = textwrap.dedent(
        """
        import torch, labelsmooth as ls
        from labelsmooth.kernels import cpu_ce
        assert cpu_ce.available(), cpu_ce.build_error()
        x = torch.randn(64, 1100, requires_grad=True)
        y = torch.randint(0, 1100, (64,))
        ls.cross_entropy(x, y, impl="auto").backward()
        reference = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
        torch.testing.assert_close(ls.cross_entropy(x, y, impl="compiled"), reference)
        print(cpu_ce.library_path())
        """
    )

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-c", script],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    first = run()
    assert first.returncode == 0, first.stderr[-3000:]
    path = Path(first.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    with open(path, "r+b") as handle:  # as after a crash or a full disk, without the rename
        handle.truncate(size // 3)
    second = run()
    assert second.returncode == 0, (second.returncode, second.stderr[-3000:])
    assert Path(second.stdout.strip().splitlines()[-1]) == path
    assert path.stat().st_size == size


def test_a_build_without_the_symbols_falls_back_with_one_warning(cache, monkeypatch):
    _, _, builds = cache
    monkeypatch.setattr(_build, "source", lambda name: NO_SYMBOLS)
    x = torch.randn(64, ls.kernels.AUTO_MIN_ELEMENTS // 64 + 1, requires_grad=True)
    y = torch.randint(0, x.shape[1], (64,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss = ls.cross_entropy(x, y, impl="auto")
            loss.backward()
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in runtime]
    assert "impl='compiled' is unavailable, falling back" in str(runtime[0].message)
    assert "freshly built library does not load" in (cpu_ce.build_error() or "")
    assert len(builds) == 1  # not rebuilt over and over
    expected = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    with pytest.raises(RuntimeError, match="freshly built library"):
        ls.cross_entropy(x, y, impl="compiled")


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_cache_moves_on_to_the_fallback(cache, monkeypatch, code):
    primary, fallback, builds = cache
    primary.mkdir(mode=0o700)
    primary_inode = primary.stat().st_ino
    write = _build._write_file

    def failing(dir_fd, name, data):
        if os.fstat(dir_fd).st_ino == primary_inode:
            raise OSError(code, os.strerror(code))
        write(dir_fd, name, data)

    monkeypatch.setattr(_build, "_write_file", failing)
    _, path = _load()
    assert path.parent == fallback and len(builds) == 1  # compiled once for both
    assert not list(primary.iterdir())
    _forget_builds(monkeypatch)
    _, again = _load()  # the next process finds the fallback's copy without compiling
    assert again == path and len(builds) == 1


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    fd = _build.open_private_dir(directory)
    real_fsync = os.fsync

    def no_space(target):
        raise OSError(errno.ENOSPC, "No space left on device")

    try:
        monkeypatch.setattr(os, "fsync", no_space)
        with pytest.raises(OSError, match="No space left"):
            _build._install(fd, "lib.so", b"\x7fELF" + b"\0" * 100)
        monkeypatch.setattr(os, "fsync", real_fsync)
    finally:
        os.close(fd)
    assert not list(directory.iterdir())


def test_installation_is_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    fd = _build.open_private_dir(directory)
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(target):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(target).st_mode) else "fsync-file")
        real_fsync(target)

    def rename(*args, **kwargs):
        events.append(f"rename {args[1]}")
        real_rename(*args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    try:
        _build._install(fd, "lib.so", b"data")
    finally:
        os.close(fd)
    assert events == [
        "fsync-file",
        "rename lib.so.sha256",
        "fsync-file",
        "rename lib.so",
        "fsync-dir",
    ]
    assert (directory / "lib.so").read_bytes() == b"data"
