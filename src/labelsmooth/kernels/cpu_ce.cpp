// labelsmooth: the fused label-smoothed cross-entropy rows of impl="compiled".
//
// Plain C++17, no torch headers: it reads raw row-major buffers. Built at first use by
// labelsmooth/kernels/_build.py and loaded with ctypes by labelsmooth/kernels/cpu_ce.py, whose
// `_Args` structure must match `Args` below field for field. The math is documented in
// labelsmooth/kernels/fused.py; bump ls_abi_version() when the interface changes.
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
  const void* rates;  // per-element eps (per row), or null: wb/b/mass are then unit-rate
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
  const A* rates = static_cast<const A*>(a.rates);
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
    A value = coef[r] == A(0) ? A(0) : coef[r] * gap;
    if (rates) {  // row r's smoothing term: rate * (B1 lse - sum_c w_c b1_c z_c)
      const A rate = rates[r];
      A smooth = -A(weighted);
      if (mass != A(0)) smooth += mass * lse;
      if (rate != A(0)) value += rate * smooth;
    } else {
      value -= A(weighted);
      if (mass != A(0)) value += mass * lse;
    }
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

extern "C" int ls_abi_version() { return 2; }
