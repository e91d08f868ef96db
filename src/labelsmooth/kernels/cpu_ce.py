r"""``impl="compiled"``: the fused rows as a small C++ library, built on first use.

Why not ``torch.utils.cpp_extension.load_inline``: that needs ninja and compiles the torch
headers (tens of seconds on a 2-core machine, every cold CI run). The kernel needs none of
torch: it reads raw row-major buffers. So it is plain C++17, compiled by the system compiler
(``$CXX``, else ``c++``) in about a second into a shared library that is loaded with
:mod:`ctypes` (which releases the GIL during the call). No extra Python package is needed.

* Cache: ``$LABELSMOOTH_CACHE_DIR``, else ``$XDG_CACHE_HOME/labelsmooth``, else
  ``~/.cache/labelsmooth`` (else a private per-user ``labelsmooth-<uid>`` directory under the
  system temporary directory, used only if no other user owns or can write it). The file name hashes
  the source, the compiler's version, the flags and the CPU's feature flags, so a shared home
  directory never hands a library built with ``-march=native`` to a different CPU. The build
  writes to a temporary name and renames it, so concurrent first uses (pytest-xdist, several
  ranks) are safe.
* Flags: ``-O3 -march=native -fopenmp-simd`` (``omp simd`` pragmas vectorise the reductions
  without ``-ffast-math``, which would break the -inf handling); retried without
  ``-march=native`` where the compiler rejects it.
* Threads: rows are split into ``torch.get_num_threads()`` contiguous ranges, one
  ``std::thread`` each (no second OpenMP runtime next to the one torch ships).
* Numerics: float32 accumulation for float32/bfloat16/float16 logits (float64 for float64);
  ``exp`` is a vectorisable Cephes polynomial (about 1 ulp; arguments are always ``<= 0``,
  below -87.3 it returns 0), ``tanh`` (soft-cap) an odd polynomial near 0 and
  ``(1 - e^{-2|u|}) / (1 + e^{-2|u|})`` elsewhere; row sums are blocked (float within blocks
  of 2048, double across). bf16/fp16 gradients are rounded to nearest even.
* Memory: per thread two scratch rows of K accumulators; the gradient row is finished in
  scratch and then stored, with streaming stores when the destination pages are already
  resident (see :func:`_resident`).

:func:`available` compiles (once per process; the library is cached on disk) and says whether
it worked; ``impl="auto"`` uses it for large CPU problems and otherwise falls back to the
chunked path, with one ``RuntimeWarning`` that says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .fused import CHUNKED, RowPlan, fused_rows, grad_rows

if TYPE_CHECKING:
    from ..functional import CrossEntropyProblem

__all__ = ["available", "build_error", "compiled", "library_path"]

_SOURCE = r"""
// labelsmooth fused label-smoothed cross-entropy rows (see labelsmooth/kernels/cpu_ce.py).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>
#if defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

struct BadClassIndex {};  // a target >= K (validate=False): refuse, never index out of bounds

inline float as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t as_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

struct F32 {
  using S = float; using A = float;
  static inline A load(S v) { return v; }
  static inline S store(A v) { return v; }
};
struct F64 {
  using S = double; using A = double;
  static inline A load(S v) { return v; }
  static inline S store(A v) { return v; }
};
struct BF16 {
  using S = uint16_t; using A = float;
  static inline A load(S v) { return as_float(uint32_t(v) << 16); }
  static inline S store(A v) {  // round to nearest even, NaN stays a (quiet) NaN
    uint32_t u = as_bits(v);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (u & 0x7fffffffu) > 0x7f800000u ? uint16_t((u >> 16) | 0x40u) : uint16_t(rounded);
  }
};
struct F16 {  // IEEE half <-> float without _Float16 (F. Giesen's branch-free conversions)
  using S = uint16_t; using A = float;
  static inline A load(S h) {
    const uint32_t shifted_exp = 0x7c00u << 13;
    uint32_t o = uint32_t(h & 0x7fffu) << 13;
    uint32_t e = o & shifted_exp;
    o += (127u - 15u) << 23;
    uint32_t inf_nan = o + ((128u - 16u) << 23);
    uint32_t denorm = as_bits(as_float(o + (1u << 23)) - as_float(113u << 23));
    uint32_t r = e == shifted_exp ? inf_nan : (e == 0 ? denorm : o);
    return as_float(r | (uint32_t(h & 0x8000u) << 16));
  }
  static inline S store(A f) {  // round to nearest even
    const uint32_t denorm_magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    uint32_t u = as_bits(f);
    uint32_t sign = u & 0x80000000u;
    u ^= sign;
    uint32_t special = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
    uint32_t denorm = as_bits(as_float(u) + as_float(denorm_magic)) - denorm_magic;
    uint32_t normal = (u + (uint32_t(15 - 127) << 23) + 0xfffu + ((u >> 13) & 1u)) >> 13;
    uint32_t o = u >= (143u << 23) ? special : (u < (113u << 23) ? denorm : normal);
    return uint16_t(o | (sign >> 16));
  }
};

// exp for arguments <= 0 (Cephes expf): vectorisable, about 1 ulp, 0 below -87.3.
inline float vexp(float x) {
  const float lo = -87.33654475f;
  float xc = x < lo ? lo : x;
  float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - n * 0.693359375f;
  r = r - n * (-2.12194440e-4f);
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  float scale = as_float(uint32_t(int32_t(n) + 127) << 23);
  float result = y * scale;
  return x < lo ? 0.0f : result;
}
inline double vexp(double x) { return std::exp(x); }

inline float vtanh(float x) {
  float a = x < 0.0f ? -x : x;
  float e = vexp(-2.0f * a);
  float big = (1.0f - e) / (1.0f + e);
  float x2 = x * x;
  float small = a * (1.0f + x2 * (-0.333333333333f + x2 * (0.133333333333f
              + x2 * (-0.0539682539683f + x2 * 0.0218694885362f))));
  float t = a < 0.125f ? small : big;
  return x < 0.0f ? -t : t;
}
inline double vtanh(double x) { return std::tanh(x); }

struct Args {
  const void* x; void* grad;
  int64_t rows; int64_t cols;
  const int64_t* target;
  const void* coef; const void* wy; const void* klc; const void* wb; const void* mass;
  double b; double z_loss; double softcap;
  const void* gp; const void* gy; const void* gw; const void* gz;
  void* loss; void* nll; void* lse;
  int32_t format; int32_t threads; int32_t stream; int32_t pad;
};

constexpr int64_t kBlock = 2048;

template <class F, bool STORE, bool WB>
inline void sums(const typename F::A* z, typename F::A* e, const typename F::A* wb, int64_t k,
                 typename F::A shift, double* total, double* weighted) {
  using A = typename F::A;
  double t = 0.0, w = 0.0;
  for (int64_t c0 = 0; c0 < k; c0 += kBlock) {
    const int64_t c1 = std::min(k, c0 + kBlock);
    A tb = 0, wbsum = 0;
#pragma omp simd reduction(+ : tb, wbsum)
    for (int64_t c = c0; c < c1; ++c) {
      A v = vexp(z[c] - shift);
      if (STORE) e[c] = v;
      tb += v;
      if (WB) {
        A m = wb[c];
        wbsum += m == A(0) ? A(0) : m * z[c];
      } else {
        wbsum += z[c];
      }
    }
    t += double(tb);
    w += double(wbsum);
  }
  *total = t;
  *weighted = w;
}

template <class F, bool WB, bool CAP>
inline void grad_values(const typename F::A* z, typename F::A* e, const typename F::A* wb,
                        int64_t k, typename F::A scale, typename F::A wm, typename F::A b,
                        typename F::A inv_cap) {
  using A = typename F::A;
  const A wbs = wm * b;
#pragma omp simd
  for (int64_t c = 0; c < k; ++c) {
    A v = e[c] * scale - (WB ? wm * wb[c] : wbs);
    if (CAP) {
      A t = z[c] * inv_cap;
      v *= A(1) - t * t;
    }
    e[c] = v;
  }
}

// Copies a finished gradient row out. Streaming (non-temporal) stores where available: the
// gradient is written once and not read again here, so it need not be read into the cache
// first (that read would be a third of the memory traffic).
inline void stream_copy(void* dst, const void* src, size_t bytes) {
  char* d = static_cast<char*>(dst);
  const char* s = static_cast<const char*>(src);
#if defined(__AVX__)
  size_t head = (32 - (reinterpret_cast<uintptr_t>(d) & 31)) & 31;
  if (head > bytes) head = bytes;
  std::memcpy(d, s, head);
  size_t i = head;
  for (; i + 32 <= bytes; i += 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i)));
  }
  std::memcpy(d + i, s + i, bytes - i);
#else
  std::memcpy(d, s, bytes);
#endif
}

inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}

template <class F>
inline void store_row(typename F::S* out, const typename F::A* values, typename F::S* staging,
                      int64_t k, bool stream) {
  using S = typename F::S;
  if (!stream) {
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) out[c] = F::store(values[c]);
  } else if constexpr (std::is_same<S, typename F::A>::value) {
    stream_copy(out, values, size_t(k) * sizeof(S));
  } else {
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) staging[c] = F::store(values[c]);
    stream_copy(out, staging, size_t(k) * sizeof(S));
  }
}

template <class F>
void run_rows(const Args& a, int64_t r0, int64_t r1) {
  using S = typename F::S;
  using A = typename F::A;
  const int64_t k = a.cols;
  const S* x = static_cast<const S*>(a.x);
  S* grad = static_cast<S*>(a.grad);
  const A* coef = static_cast<const A*>(a.coef);
  const A* wy = static_cast<const A*>(a.wy);
  const A* klc = static_cast<const A*>(a.klc);
  const A* wb = static_cast<const A*>(a.wb);
  const A* gp = static_cast<const A*>(a.gp);
  const A* gy = static_cast<const A*>(a.gy);
  const A* gw = static_cast<const A*>(a.gw);
  const A* gz = static_cast<const A*>(a.gz);
  A* loss = static_cast<A*>(a.loss);
  A* nll = static_cast<A*>(a.nll);
  A* lse_out = static_cast<A*>(a.lse);
  const A mass = *static_cast<const A*>(a.mass);
  const A b = A(a.b), zl = A(a.z_loss), cap = A(a.softcap);
  const A inv_cap = cap > A(0) ? A(1) / cap : A(0);
  const A ninf = -std::numeric_limits<A>::infinity();
  std::vector<A> zbuf(k), ebuf(grad ? k : 0);
  std::vector<S> sbuf(grad && !std::is_same<S, A>::value ? k : 0);
  A* z = zbuf.data();
  A* e = ebuf.data();
  S* staging = sbuf.data();
  for (int64_t r = r0; r < r1; ++r) {
    const S* xr = x + r * k;
    S* gr = grad ? grad + r * k : nullptr;
    const int64_t y = a.target[r];
    if (y < 0) {  // ignored: contributes nothing
      if (loss) loss[r] = A(0);
      if (nll) nll[r] = A(0);
      if (lse_out) lse_out[r] = A(0);
      if (gr) {
        for (int64_t c = 0; c < k; ++c) gr[c] = F::store(A(0));
      }
      continue;
    }
    if (y >= k) throw BadClassIndex{};
    A m = ninf;
    if (cap > A(0)) {
#pragma omp simd reduction(max : m)
      for (int64_t c = 0; c < k; ++c) {
        A v = cap * vtanh(F::load(xr[c]) * inv_cap);
        z[c] = v;
        m = v > m ? v : m;
      }
    } else {
#pragma omp simd reduction(max : m)
      for (int64_t c = 0; c < k; ++c) {
        A v = F::load(xr[c]);
        z[c] = v;
        m = v > m ? v : m;
      }
    }
    const A shift = m == ninf ? A(0) : m;
    double total, weighted;
    if (gr && wb) sums<F, true, true>(z, e, wb, k, shift, &total, &weighted);
    else if (gr) sums<F, true, false>(z, e, wb, k, shift, &total, &weighted);
    else if (wb) sums<F, false, true>(z, e, wb, k, shift, &total, &weighted);
    else sums<F, false, false>(z, e, wb, k, shift, &total, &weighted);
    if (!wb) weighted = b == A(0) ? 0.0 : double(b) * weighted;
    const A lse = shift + A(std::log(total));
    const A gap = lse - z[y];
    A value = (coef[r] == A(0) ? A(0) : coef[r] * gap) - A(weighted);
    if (mass != A(0)) value += mass * lse;
    if (klc) value += klc[r];
    if (zl != A(0)) value += zl * lse * lse;
    if (loss) loss[r] = value;
    if (nll) nll[r] = wy[r] == A(0) ? A(0) : wy[r] * gap;
    if (lse_out) lse_out[r] = lse;
    if (!gr) continue;
    const A zc = gz ? gz[r] : A(2) * zl;
    const A pc = zc == A(0) ? gp[r] : gp[r] + zc * lse;
    const A scale = pc / A(total);
    const A wm = gw ? gw[r] : A(1);
    A vy = e[y] * scale - wm * (wb ? wb[y] : b) - gy[r];
    if (cap > A(0)) {
      A t = z[y] * inv_cap;
      vy *= A(1) - t * t;
    }
    if (wb && cap > A(0)) grad_values<F, true, true>(z, e, wb, k, scale, wm, b, inv_cap);
    else if (wb) grad_values<F, true, false>(z, e, wb, k, scale, wm, b, inv_cap);
    else if (cap > A(0)) grad_values<F, false, true>(z, e, wb, k, scale, wm, b, inv_cap);
    else grad_values<F, false, false>(z, e, wb, k, scale, wm, b, inv_cap);
    e[y] = vy;
    store_row<F>(gr, e, staging, k, a.stream != 0);
  }
  stream_fence();
}

template <class Fn>
int parallel_rows(int64_t rows, int64_t cols, int32_t threads, Fn fn) {
  int64_t n = std::max<int64_t>(1, std::min<int64_t>(threads, rows));
  if (rows * cols < (int64_t(1) << 15)) n = 1;
  const int64_t step = (rows + n - 1) / std::max<int64_t>(n, 1);
  std::vector<int> failed(n, 0);
  auto work = [&](int64_t i) {
    try {
      fn(i * step, std::min(rows, (i + 1) * step));
    } catch (const BadClassIndex&) {
      failed[i] = 3;
    } catch (...) {
      failed[i] = 1;
    }
  };
  std::vector<std::thread> pool;
  try {
    for (int64_t i = 1; i < n; ++i) pool.emplace_back(work, i);
  } catch (...) {
    for (auto& t : pool) t.join();
    return 2;
  }
  work(0);
  for (auto& t : pool) t.join();
  for (int f : failed) if (f) return f;
  return 0;
}

template <class F>
void scale_rows(void* grad, const void* factor, int64_t r0, int64_t r1, int64_t k) {
  using S = typename F::S;
  using A = typename F::A;
  S* g = static_cast<S*>(grad);
  const A* f = static_cast<const A*>(factor);
  for (int64_t r = r0; r < r1; ++r) {
    S* gr = g + r * k;
    const A s = f[r];
#pragma omp simd
    for (int64_t c = 0; c < k; ++c) gr[c] = F::store(F::load(gr[c]) * s);
  }
}

}  // namespace

extern "C" int ls_ce_rows(const Args* a) {
  if (a->rows <= 0) return 0;
  return parallel_rows(a->rows, a->cols, a->threads, [a](int64_t r0, int64_t r1) {
    switch (a->format) {
      case 0: run_rows<F32>(*a, r0, r1); break;
      case 1: run_rows<F64>(*a, r0, r1); break;
      case 2: run_rows<BF16>(*a, r0, r1); break;
      case 3: run_rows<F16>(*a, r0, r1); break;
      default: throw 0;
    }
  });
}

extern "C" int ls_scale_rows(int32_t format, void* grad, const void* factor, int64_t rows,
                             int64_t cols, int32_t threads) {
  if (rows <= 0) return 0;
  return parallel_rows(rows, cols, threads, [=](int64_t r0, int64_t r1) {
    switch (format) {
      case 0: scale_rows<F32>(grad, factor, r0, r1, cols); break;
      case 1: scale_rows<F64>(grad, factor, r0, r1, cols); break;
      case 2: scale_rows<BF16>(grad, factor, r0, r1, cols); break;
      case 3: scale_rows<F16>(grad, factor, r0, r1, cols); break;
      default: throw 0;
    }
  });
}

extern "C" int ls_abi_version() { return 1; }
"""

_FORMATS = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_BASE_FLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp-simd", "-pthread"]


class _Args(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        ("grad", ctypes.c_void_p),
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("target", ctypes.c_void_p),
        ("coef", ctypes.c_void_p),
        ("wy", ctypes.c_void_p),
        ("klc", ctypes.c_void_p),
        ("wb", ctypes.c_void_p),
        ("mass", ctypes.c_void_p),
        ("b", ctypes.c_double),
        ("z_loss", ctypes.c_double),
        ("softcap", ctypes.c_double),
        ("gp", ctypes.c_void_p),
        ("gy", ctypes.c_void_p),
        ("gw", ctypes.c_void_p),
        ("gz", ctypes.c_void_p),
        ("loss", ctypes.c_void_p),
        ("nll", ctypes.c_void_p),
        ("lse", ctypes.c_void_p),
        ("format", ctypes.c_int32),
        ("threads", ctypes.c_int32),
        ("stream", ctypes.c_int32),
        ("pad", ctypes.c_int32),
    ]


_lock = threading.Lock()
_state: dict[str, object] = {}


def _cache_dir() -> Path:
    explicit = os.environ.get("LABELSMOOTH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "labelsmooth"


def _fallback_dir() -> Path:
    """A per-user directory under the system temporary directory (used when the cache is not
    writable)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"labelsmooth-{uid}"


def _private(directory: Path) -> bool:
    """``directory`` is absent, or ours and writable by nobody else: a library found there was
    not planted by another user of a shared temporary directory."""
    try:
        status = directory.stat()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if hasattr(os, "getuid") and status.st_uid != os.getuid():
        return False
    return not status.st_mode & 0o022


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    return None


def _build() -> Path:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set $CXX, or install g++ or clang++)")
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False, timeout=60
    ).stdout
    errors = []
    for arch in (["-march=native"], []):
        flags = _BASE_FLAGS + arch
        key = "\n".join([_SOURCE, compiler, version, " ".join(flags), _cpu_flags()])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        for directory in (_cache_dir(), _fallback_dir()):
            if directory == _fallback_dir() and not _private(directory):
                errors.append(f"{directory}: owned or writable by another user; not used")
                continue
            target = directory / f"labelsmooth_ce_{digest}.so"
            if target.exists():
                return target
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                work = Path(tempfile.mkdtemp(prefix="build_", dir=directory))
            except OSError as err:
                errors.append(f"{directory}: {err}")
                continue
            try:
                source = work / "labelsmooth_ce.cpp"
                source.write_text(_SOURCE)
                built = work / target.name
                result = subprocess.run(
                    [compiler, *flags, str(source), "-o", str(built)],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=600,
                )
                if result.returncode != 0:
                    errors.append(f"{' '.join(flags)}: {result.stderr.strip()[-2000:]}")
                    break  # the same flags fail in any directory: try the next flags
                os.replace(built, target)
                return target
            finally:
                shutil.rmtree(work, ignore_errors=True)
    raise RuntimeError("could not compile the fused cross-entropy kernel:\n" + "\n".join(errors))


def _library() -> ctypes.CDLL:
    """The loaded library; compiles it on first use. Raises RuntimeError if that fails."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        if "error" in _state:
            raise RuntimeError(str(_state["error"]))
        try:
            path = _build()
            lib = ctypes.CDLL(str(path))
            lib.ls_ce_rows.argtypes = [ctypes.POINTER(_Args)]
            lib.ls_ce_rows.restype = ctypes.c_int
            lib.ls_scale_rows.argtypes = [
                ctypes.c_int32,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int64,
                ctypes.c_int64,
                ctypes.c_int32,
            ]
            lib.ls_scale_rows.restype = ctypes.c_int
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _state["error"] = err
            raise RuntimeError(str(err)) from err
        _state["lib"], _state["path"] = lib, path
        return lib


def available() -> bool:
    """True when the kernel compiles and loads here (compiles at the first call, then cached)."""
    try:
        _library()
    except RuntimeError as err:
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(
                f"labelsmooth: impl='compiled' is unavailable, falling back ({err})",
                RuntimeWarning,
                stacklevel=2,
            )
        return False
    return True


def build_error() -> str | None:
    """Why the kernel is unavailable, or None (after :func:`available` was called)."""
    error = _state.get("error")
    return None if error is None else str(error)


def library_path() -> Path | None:
    """Where the compiled library lives (None before the first successful build)."""
    path = _state.get("path")
    return path if isinstance(path, Path) else None


def _resident(tensor: Tensor) -> bool:
    """Whether the page in the middle of ``tensor`` is already in memory (Linux ``mincore``).

    Decides how the kernel writes the gradient: fresh pages (a new ``mmap``, the usual case
    for a large buffer with glibc) are best written with ordinary stores, which land in the
    cache lines the kernel has just zeroed; pages a caching allocator hands back are best
    written with streaming stores, which skip reading the old contents. Either is correct.
    """
    libc = _state.get("libc")
    if libc is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
            libc.mincore.restype = ctypes.c_int
        except (OSError, AttributeError):
            libc = False
        _state["libc"] = libc
    if not libc or tensor.numel() == 0:
        return False
    page = mmap.PAGESIZE
    middle = tensor.data_ptr() + tensor.numel() * tensor.element_size() // 2
    status = ctypes.create_string_buffer(1)
    if libc.mincore(middle - middle % page, page, status) != 0:  # type: ignore[union-attr]
        return False
    return bool(status.raw[0] & 1)


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class CompiledBackend:
    """The C++ rows on CPU tensors of dtype float32, float64, bfloat16 or float16."""

    name = "compiled"

    def run(
        self, x: Tensor, plan: RowPlan, grad: Tensor | None, g: Tensor | None, h: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        lib = _library()
        assert plan.target is not None and plan.coef is not None and plan.wy is not None
        m, k = x.shape
        loss = torch.empty(m, dtype=plan.dtype)
        nll = torch.empty_like(loss)
        gp, gy, gw, gz = grad_rows(plan, g, h)
        args = _Args(
            x=x.data_ptr(),
            grad=_pointer(grad),
            rows=m,
            cols=k,
            target=plan.target.data_ptr(),
            coef=plan.coef.data_ptr(),
            wy=plan.wy.data_ptr(),
            klc=_pointer(plan.klc),
            wb=_pointer(plan.wb),
            mass=plan.mass.data_ptr(),
            b=plan.b,
            z_loss=plan.z_loss,
            softcap=plan.softcap or 0.0,
            gp=gp.data_ptr(),
            gy=gy.data_ptr(),
            gw=_pointer(gw),
            gz=_pointer(gz),
            loss=loss.data_ptr(),
            nll=nll.data_ptr(),
            lse=None,
            format=_FORMATS[x.dtype],
            threads=torch.get_num_threads(),
            stream=int(grad is not None and grad.data_ptr() != x.data_ptr() and _resident(grad)),
        )
        status = lib.ls_ce_rows(ctypes.byref(args))
        if status == 3:
            raise ValueError(
                f"target contains a class index >= num_classes={k} (validate=False skipped "
                f"the check); class indices must be in [0, {k - 1}] or equal ignore_index"
            )
        if status != 0:
            raise RuntimeError(f"labelsmooth compiled kernel failed (status {status})")
        return loss, nll

    def scale_(self, grad: Tensor, factor: Tensor) -> None:
        lib = _library()
        m, k = grad.shape
        factor = factor.to(dtype=torch.float64 if grad.dtype == torch.float64 else torch.float32)
        factor = factor.contiguous()
        status = lib.ls_scale_rows(
            _FORMATS[grad.dtype], grad.data_ptr(), factor.data_ptr(), m, k, torch.get_num_threads()
        )
        if status != 0:
            raise RuntimeError(f"labelsmooth compiled kernel failed (status {status})")


COMPILED = CompiledBackend()


def compiled(problem: CrossEntropyProblem, need_nll: bool) -> tuple[Tensor, Tensor | None]:
    """``impl="compiled"``: the fused C++ kernel for CPU tensors (index targets).

    Probability targets take the chunked path (the same fused autograd function in eager
    torch). Raises ``ValueError`` for tensors that are not on the CPU and ``RuntimeError``
    when the kernel cannot be compiled here (``impl="auto"`` falls back instead).
    """
    device = problem.logits.device
    if device.type != "cpu":
        raise ValueError(
            f"impl='compiled' is the CPU kernel, but input is on {device}; use impl='triton' "
            f"or impl='chunked' (or impl='auto')"
        )
    if problem.soft or problem.logits.dtype not in _FORMATS:
        return fused_rows(problem, need_nll, CHUNKED)
    _library()
    return fused_rows(problem, need_nll, COMPILED)
