// gpupool_emu.h: lets the host g++ compile CUDA C device code for gpupool's CPU emulator.
//
// emu_kernels.py prepends `#include "gpupool_emu.h"` to a module's CUDA C source and appends one
// GPUPOOL_EMU_EXPORT(...) line per kernel. Everything here has internal linkage (one module is one
// translation unit, and modules are loaded side by side into one worker process); only the
// launchers are exported.
//
// Execution model (design notes, "CPU emulator"):
// * a device pointer is a host address, so kernels read and write host memory directly;
// * blocks run one after another, which is what makes `__shared__` = function-static storage valid;
// * in a module that mentions __syncthreads() anywhere, every kernel runs the threads of a block as
//   host threads joined by a std::barrier, one set of threads reused for every block of the launch;
// * in any other module the threads of a block run as a plain loop, and when the module declares
//   no __shared__ memory its blocks are spread over the host's cores;
// * launches of one module are serialised by a mutex, so launch-wide state can be plain globals.
//
// emu_kernels.py also runs the preprocessor over the source once with GPUPOOL_EMU_SCAN defined, to
// find the kernels and barriers in what the compiler will really see. Only the feature macros
// below exist then, so that `#if` picks the same branches as in the compilation while CUDA's
// keywords stay in the text. The stub CUDA headers in emu_include/ include this file.
#ifndef GPUPOOL_EMU_H
#define GPUPOOL_EMU_H

#define __CUDACC__ 1
#define __CUDA_ARCH__ 800
#define __CUDACC_VER_MAJOR__ 12
#define __CUDACC_VER_MINOR__ 0
#define __GPUPOOL_EMU__ 1

#define CUDART_PI_F 3.141592654f
#define CUDART_PI 3.1415926535897931
#define CUDART_INF_F (std::numeric_limits<float>::infinity())
#define CUDART_INF (std::numeric_limits<double>::infinity())
#define CUDART_NAN_F (std::numeric_limits<float>::quiet_NaN())
#define CUDART_NAN (std::numeric_limits<double>::quiet_NaN())

#ifndef GPUPOOL_EMU_SCAN

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <cfloat>
#include <climits>
#include <concepts>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// CUDA C keywords. System headers spell the noinline attribute `__noinline__`, so that macro must
// stay empty; `__restrict__` is already a g++ keyword.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

// ---------------------------------------------------------------------------------------------
// Vector types, with CUDA's alignments (2 and 4 components align to their size, up to 16 bytes).
namespace gpupool_emu {
constexpr std::size_t vector_alignment(std::size_t element, std::size_t count) {
  return count == 3 ? element : std::min<std::size_t>(element * count, 16);
}
}  // namespace gpupool_emu

#define GPUPOOL_EMU_VECTORS(NAME, T)                                                            \
  struct alignas(::gpupool_emu::vector_alignment(sizeof(T), 1)) NAME##1 { T x; };               \
  struct alignas(::gpupool_emu::vector_alignment(sizeof(T), 2)) NAME##2 { T x, y; };             \
  struct alignas(::gpupool_emu::vector_alignment(sizeof(T), 3)) NAME##3 { T x, y, z; };          \
  struct alignas(::gpupool_emu::vector_alignment(sizeof(T), 4)) NAME##4 { T x, y, z, w; };       \
  static inline NAME##1 make_##NAME##1(T x) { return {x}; }                                      \
  static inline NAME##2 make_##NAME##2(T x, T y) { return {x, y}; }                              \
  static inline NAME##3 make_##NAME##3(T x, T y, T z) { return {x, y, z}; }                      \
  static inline NAME##4 make_##NAME##4(T x, T y, T z, T w) { return {x, y, z, w}; }

GPUPOOL_EMU_VECTORS(char, signed char)
GPUPOOL_EMU_VECTORS(uchar, unsigned char)
GPUPOOL_EMU_VECTORS(short, short)
GPUPOOL_EMU_VECTORS(ushort, unsigned short)
GPUPOOL_EMU_VECTORS(int, int)
GPUPOOL_EMU_VECTORS(uint, unsigned int)
GPUPOOL_EMU_VECTORS(long, long)
GPUPOOL_EMU_VECTORS(ulong, unsigned long)
GPUPOOL_EMU_VECTORS(longlong, long long)
GPUPOOL_EMU_VECTORS(ulonglong, unsigned long long)
GPUPOOL_EMU_VECTORS(float, float)
GPUPOOL_EMU_VECTORS(double, double)

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

// ---------------------------------------------------------------------------------------------
// Half precision: __half is the compiler's _Float16, which has arithmetic of its own.
using __half = _Float16;
using half = __half;
struct alignas(4) __half2 {
  __half x, y;
};
using half2 = __half2;

// CUDA's raw bit patterns of halves (CuPy's float16 goes through them). In CUDA __half converts
// to and from __half_raw; __half is a built-in type here, so __half_raw does both conversions.
struct __half_raw {
  unsigned short x;
  __half_raw() = default;
  constexpr __half_raw(unsigned short bits) : x(bits) {}
  // A template, so that an int converts to the bits and not to a half.
  template <class H>
    requires std::same_as<H, __half>
  __half_raw(H h) : x(std::bit_cast<unsigned short>(h)) {}
  operator __half() const { return std::bit_cast<__half>(x); }
};
struct __half2_raw {
  unsigned short x, y;
  __half2_raw() = default;
  constexpr __half2_raw(unsigned short low, unsigned short high) : x(low), y(high) {}
  __half2_raw(__half2 h)
      : x(std::bit_cast<unsigned short>(h.x)), y(std::bit_cast<unsigned short>(h.y)) {}
  operator __half2() const { return {std::bit_cast<__half>(x), std::bit_cast<__half>(y)}; }
};

static inline __half __float2half(float f) { return static_cast<__half>(f); }
static inline __half __float2half_rn(float f) { return static_cast<__half>(f); }
static inline float __half2float(__half h) { return static_cast<float>(h); }
static inline __half __int2half_rn(int i) { return static_cast<__half>(i); }
static inline unsigned short __half_as_ushort(__half h) { return std::bit_cast<unsigned short>(h); }
static inline __half __ushort_as_half(unsigned short u) { return std::bit_cast<__half>(u); }
static inline __half __hadd(__half a, __half b) { return a + b; }
static inline __half __hsub(__half a, __half b) { return a - b; }
static inline __half __hmul(__half a, __half b) { return a * b; }
static inline __half __hdiv(__half a, __half b) { return a / b; }
static inline __half __hfma(__half a, __half b, __half c) {
  return static_cast<__half>(fmaf(a, b, c));
}
static inline __half __hneg(__half a) { return -a; }
static inline __half __habs(__half a) { return a < 0 ? -a : a; }
// NaN-ignoring, as CUDA's (and fmaxf): a NaN operand gives the other one.
static inline __half __hmax(__half a, __half b) { return a != a ? b : (a < b ? b : a); }
static inline __half __hmin(__half a, __half b) { return a != a ? b : (b < a ? b : a); }
static inline bool __hisnan(__half a) { return a != a; }
static inline int __hisinf(__half a) { return std::isinf(float(a)) ? (a > 0 ? 1 : -1) : 0; }
static inline __half __short2half_rn(short i) { return static_cast<__half>(i); }
static inline __half __uint2half_rn(unsigned i) { return static_cast<__half>(i); }
static inline __half hsqrt(__half a) { return static_cast<__half>(sqrtf(a)); }
static inline __half hrsqrt(__half a) { return static_cast<__half>(1.0f / sqrtf(a)); }
static inline __half hexp(__half a) { return static_cast<__half>(expf(a)); }
static inline __half hexp2(__half a) { return static_cast<__half>(exp2f(a)); }
static inline __half hlog(__half a) { return static_cast<__half>(logf(a)); }
static inline __half hlog2(__half a) { return static_cast<__half>(log2f(a)); }
static inline __half hlog10(__half a) { return static_cast<__half>(log10f(a)); }
static inline __half hsin(__half a) { return static_cast<__half>(sinf(a)); }
static inline __half hcos(__half a) { return static_cast<__half>(cosf(a)); }
static inline __half hceil(__half a) { return static_cast<__half>(ceilf(a)); }
static inline __half hfloor(__half a) { return static_cast<__half>(floorf(a)); }
static inline __half htrunc(__half a) { return static_cast<__half>(truncf(a)); }
static inline __half hrint(__half a) { return static_cast<__half>(nearbyintf(a)); }
static inline __half hrcp(__half a) { return static_cast<__half>(1.0f / static_cast<float>(a)); }
static inline bool __heq(__half a, __half b) { return a == b; }
static inline bool __hne(__half a, __half b) { return a != b; }
static inline bool __hlt(__half a, __half b) { return a < b; }
static inline bool __hle(__half a, __half b) { return a <= b; }
static inline bool __hgt(__half a, __half b) { return a > b; }
static inline bool __hge(__half a, __half b) { return a >= b; }
static inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
static inline __half2 __float2half2_rn(float a) { return {__half(a), __half(a)}; }
static inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
static inline float __low2float(__half2 h) { return h.x; }
static inline float __high2float(__half2 h) { return h.y; }
static inline __half2 __hadd2(__half2 a, __half2 b) { return {a.x + b.x, a.y + b.y}; }
static inline __half2 __hmul2(__half2 a, __half2 b) { return {a.x * b.x, a.y * b.y}; }
static inline __half2 __halves2half2(__half low, __half high) { return {low, high}; }
static inline __half __low2half(__half2 h) { return h.x; }
static inline __half __high2half(__half2 h) { return h.y; }

// ---------------------------------------------------------------------------------------------
// Launch-wide state. Launches of one module are serialised, so it is plain globals except for the
// two indices that differ per emulated thread.
namespace gpupool_emu {
namespace {

enum Status : int {
  kSuccess = 0,
  kLaunchOutOfResources = 701,
  kAssert = 710,
  kLaunchFailure = 719,
};

// Thrown by assert() and __trap(): CUDA stops the thread there, and so do we.
struct KernelAbort {
  int status;
  std::string message;
};

struct LaunchContext;

// Runs once per barrier phase, before any thread is released, so that every thread reads the
// same outcome of the phase: whether to stop (none leaves while others still wait on the barrier),
// whether the block is over, and the predicate count of __syncthreads_count/_and/_or.
struct PhaseEnd {
  LaunchContext* ctx;
  void operator()() noexcept;
};

struct LaunchContext {
  dim3 grid;
  dim3 block;
  unsigned long long blocks;
  unsigned block_threads;
  std::barrier<PhaseEnd>* barrier = nullptr;
  std::atomic<int> status{kSuccess};
  std::atomic<bool> stop{false};
  // Threads of the current block that returned: they count as arrived at every later barrier of
  // their block, as on a GPU, by waiting on the barrier until the block is over.
  std::atomic<unsigned> finished{0};
  std::atomic<int> votes{0};  // true predicates given to the barrier of the current phase
  // The outcome of the last phase, written by PhaseEnd.
  bool stop_seen = false;
  bool block_done = false;
  int vote_count = 0;
  int voters = 0;  // threads still running the kernel
  std::string message;

  // Records the first failure of the launch and asks every host thread to stop.
  void fail(int code, std::string what) {
    int expected = kSuccess;
    if (status.compare_exchange_strong(expected, code)) message = std::move(what);
    stop.store(true);
  }
};

void PhaseEnd::operator()() noexcept {
  unsigned finished = ctx->finished.load();
  ctx->stop_seen = ctx->stop.load();
  ctx->block_done = finished == ctx->block_threads;
  if (ctx->block_done) ctx->finished.store(0);
  ctx->vote_count = ctx->votes.exchange(0);
  ctx->voters = static_cast<int>(ctx->block_threads - finished);
}

std::mutex g_launch_mutex;
LaunchContext* g_ctx = nullptr;
// The launch's dynamic shared memory: `extern __shared__ T name[];` becomes a reference to it.
unsigned char* g_dynamic_shared = nullptr;
dim3 g_block_dim;
dim3 g_grid_dim;

}  // namespace
}  // namespace gpupool_emu

// The CUDA built-in variables.
namespace {
thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
const dim3& blockDim = gpupool_emu::g_block_dim;
const dim3& gridDim = gpupool_emu::g_grid_dim;
constexpr int warpSize = 32;
}  // namespace

namespace gpupool_emu {
namespace {

[[noreturn]] void abort_thread(int code, const char* what) {
  char text[512];
  snprintf(text, sizeof text, "%s (block [%u,%u,%u], thread [%u,%u,%u])", what, blockIdx.x,
           blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
  throw KernelAbort{code, text};
}

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const char* func) {
  char text[512];
  snprintf(text, sizeof text,
           "%s:%d: %s: block: [%u,%u,%u], thread: [%u,%u,%u] Assertion `%s` failed.", file, line,
           func, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, expr);
  fprintf(stderr, "%s\n", text);
  throw KernelAbort{kAssert, text};
}

// A barrier is always there: a module that mentions __syncthreads runs all its kernels with one.
int sync_count(int predicate) {
  if (predicate) g_ctx->votes.fetch_add(1, std::memory_order_relaxed);
  g_ctx->barrier->arrive_and_wait();
  return g_ctx->vote_count;
}

}  // namespace
}  // namespace gpupool_emu

#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) \
  ((e) ? (void)0 : ::gpupool_emu::assert_fail(#e, __FILE__, __LINE__, __PRETTY_FUNCTION__))
#endif

static inline void __syncthreads() { gpupool_emu::g_ctx->barrier->arrive_and_wait(); }
static inline int __syncthreads_count(int predicate) { return gpupool_emu::sync_count(predicate); }
static inline int __syncthreads_and(int predicate) {
  int count = gpupool_emu::sync_count(predicate);  // before voters: that is the phase's outcome
  return count == gpupool_emu::g_ctx->voters;
}
static inline int __syncthreads_or(int predicate) {
  return gpupool_emu::sync_count(predicate) != 0;
}
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] static inline void __trap() {
  gpupool_emu::abort_thread(gpupool_emu::kLaunchFailure, "__trap() called");
}
[[noreturn]] static inline void __brkpt() {
  gpupool_emu::abort_thread(gpupool_emu::kLaunchFailure, "__brkpt() called");
}
template <class T>
static inline T __ldg(const T* p) {
  return *p;
}

// ---------------------------------------------------------------------------------------------
// Atomics, with CUDA's signatures (the second operand converts to the pointee type) on
// std::atomic_ref. Types without a native fetch operation go through a compare-exchange loop.
namespace gpupool_emu {
namespace {
template <class T, class F>
T atomic_update(T* address, F next) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load();
  while (!ref.compare_exchange_weak(old, next(old))) {
  }
  return old;
}
}  // namespace
}  // namespace gpupool_emu

template <class T>
static inline T atomicAdd(T* address, std::type_identity_t<T> value) {
  std::atomic_ref<T> ref(*address);
  if constexpr (requires { ref.fetch_add(value); }) {
    return ref.fetch_add(value);
  } else {
    return gpupool_emu::atomic_update(address, [&](T old) { return T(old + value); });
  }
}
template <class T>
static inline T atomicSub(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_sub(value);
}
template <class T>
static inline T atomicExch(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).exchange(value);
}
template <class T>
static inline T atomicMin(T* address, std::type_identity_t<T> value) {
  return gpupool_emu::atomic_update(address, [&](T old) { return value < old ? value : old; });
}
template <class T>
static inline T atomicMax(T* address, std::type_identity_t<T> value) {
  return gpupool_emu::atomic_update(address, [&](T old) { return old < value ? value : old; });
}
static inline unsigned atomicInc(unsigned* address, unsigned limit) {
  return gpupool_emu::atomic_update(address,
                                    [&](unsigned old) { return old >= limit ? 0u : old + 1; });
}
static inline unsigned atomicDec(unsigned* address, unsigned limit) {
  return gpupool_emu::atomic_update(
      address, [&](unsigned old) { return (old == 0 || old > limit) ? limit : old - 1; });
}
template <class T>
static inline T atomicCAS(T* address, std::type_identity_t<T> compare,
                          std::type_identity_t<T> value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value);
  return compare;
}
template <class T>
static inline T atomicAnd(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_and(value);
}
template <class T>
static inline T atomicOr(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_or(value);
}
template <class T>
static inline T atomicXor(T* address, std::type_identity_t<T> value) {
  return std::atomic_ref<T>(*address).fetch_xor(value);
}

#define GPUPOOL_EMU_SCOPED_ATOMIC(OP) \
  template <class T, class... V>      \
  static inline T OP##_block(T* address, V... values) { return OP(address, values...); } \
  template <class T, class... V>      \
  static inline T OP##_system(T* address, V... values) { return OP(address, values...); }
GPUPOOL_EMU_SCOPED_ATOMIC(atomicAdd)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicSub)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicExch)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicMin)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicMax)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicCAS)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicAnd)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicOr)
GPUPOOL_EMU_SCOPED_ATOMIC(atomicXor)
#undef GPUPOOL_EMU_SCOPED_ATOMIC

// ---------------------------------------------------------------------------------------------
// Math. <math.h> already puts the C library (sqrtf, expf, sincosf, exp10f...) and the float
// overloads in the global namespace; these are CUDA's additions.
// On floating-point operands CUDA's min and max are fminf/fmaxf: a NaN operand gives the other.
template <class A, class B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
static inline auto min(A a, B b) {
  using R = decltype(a + b);
  if constexpr (std::is_floating_point_v<R>) {
    return std::fmin(static_cast<R>(a), static_cast<R>(b));
  } else {
    return static_cast<R>(b) < static_cast<R>(a) ? static_cast<R>(b) : static_cast<R>(a);
  }
}
template <class A, class B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
static inline auto max(A a, B b) {
  using R = decltype(a + b);
  if constexpr (std::is_floating_point_v<R>) {
    return std::fmax(static_cast<R>(a), static_cast<R>(b));
  } else {
    return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(b) : static_cast<R>(a);
  }
}
static inline unsigned umin(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned umax(unsigned a, unsigned b) { return a < b ? b : a; }
static inline long long llmin(long long a, long long b) { return a < b ? a : b; }
static inline long long llmax(long long a, long long b) { return a < b ? b : a; }
static inline unsigned long long ullmin(unsigned long long a, unsigned long long b) {
  return a < b ? a : b;
}
static inline unsigned long long ullmax(unsigned long long a, unsigned long long b) {
  return a < b ? b : a;
}

// glibc declares (without exporting) its own __expf, __sinf... so CUDA's fast intrinsics of those
// names have to be macros.
#define __expf(x) expf(x)
#define __exp10f(x) exp10f(x)
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __sincosf(x, s, c) sincosf(x, s, c)
#define __powf(x, y) powf(x, y)
static inline float __fdividef(float x, float y) { return x / y; }
static inline float fdividef(float x, float y) { return x / y; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
static inline double rcbrt(double x) { return 1.0 / cbrt(x); }
static inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }
static inline float saturate(float x) { return __saturatef(x); }
static inline float sinpif(float x) { return static_cast<float>(sin(M_PI * x)); }
static inline float cospif(float x) { return static_cast<float>(cos(M_PI * x)); }
static inline double sinpi(double x) { return sin(M_PI * x); }
static inline double cospi(double x) { return cos(M_PI * x); }
static inline void sincospif(float x, float* s, float* c) { *s = sinpif(x); *c = cospif(x); }
static inline float normcdff(float x) { return 0.5f * erfcf(-x * static_cast<float>(M_SQRT1_2)); }
static inline double normcdf(double x) { return 0.5 * erfc(-x * M_SQRT1_2); }
static inline double erfinv(double y) {
  // Giles' single-precision starting point, then Newton steps on erf in double precision.
  if (y <= -1.0) return y == -1.0 ? -INFINITY : NAN;
  if (y >= 1.0) return y == 1.0 ? INFINITY : NAN;
  double w = -log((1.0 - y) * (1.0 + y));
  double x;
  if (w < 5.0) {
    w -= 2.5;
    double p = 2.81022636e-08;
    for (double c : {3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                     -0.00125372503, -0.00417768164, 0.246640727, 1.50140941}) {
      p = c + p * w;
    }
    x = p * y;
  } else {
    w = sqrt(w) - 3.0;
    double p = -0.000200214257;
    for (double c : {0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                     -0.0076224613, 0.00943887047, 1.00167406, 2.83297682}) {
      p = c + p * w;
    }
    x = p * y;
  }
  for (int i = 0; i < 2; ++i) x -= (erf(x) - y) / (M_2_SQRTPI * exp(-x * x));
  return x;
}
static inline float erfinvf(float y) { return static_cast<float>(erfinv(y)); }
static inline double erfcinv(double y) { return erfinv(1.0 - y); }
static inline float erfcinvf(float y) { return static_cast<float>(erfinv(1.0 - y)); }
static inline double normcdfinv(double p) { return -M_SQRT2 * erfcinv(2.0 * p); }
static inline float normcdfinvf(float p) { return static_cast<float>(normcdfinv(p)); }

static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline float __frsqrt_rn(float a) { return 1.0f / sqrtf(a); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dsub_rn(double a, double b) { return a - b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __ddiv_rn(double a, double b) { return a / b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline double __drcp_rn(double a) { return 1.0 / a; }
static inline double __dsqrt_rn(double a) { return sqrt(a); }

// Floating-point to integer conversions saturate on a GPU (NaN gives 0), where a C++ cast of a
// value out of range is undefined behaviour: round in double (exact for every source type), then
// clamp. A double of the integer's largest value may round up past it, hence the >=.
namespace gpupool_emu {
namespace {
template <class I>
I saturate(double rounded) {
  using limits = std::numeric_limits<I>;
  if (rounded != rounded) return 0;
  if (rounded <= static_cast<double>(limits::min())) return limits::min();
  if (rounded >= static_cast<double>(limits::max())) return limits::max();
  return static_cast<I>(rounded);
}
}  // namespace
}  // namespace gpupool_emu

#define GPUPOOL_EMU_TO_INTEGER(FROM, F, TO, I)                                  \
  static inline I __##FROM##2##TO##_rn(F x) {                                   \
    return gpupool_emu::saturate<I>(nearbyint(static_cast<double>(x)));         \
  }                                                                             \
  static inline I __##FROM##2##TO##_rz(F x) {                                   \
    return gpupool_emu::saturate<I>(trunc(static_cast<double>(x)));             \
  }                                                                             \
  static inline I __##FROM##2##TO##_rd(F x) {                                   \
    return gpupool_emu::saturate<I>(floor(static_cast<double>(x)));             \
  }                                                                             \
  static inline I __##FROM##2##TO##_ru(F x) {                                   \
    return gpupool_emu::saturate<I>(ceil(static_cast<double>(x)));              \
  }
#define GPUPOOL_EMU_TO_INTEGERS(FROM, F)         \
  GPUPOOL_EMU_TO_INTEGER(FROM, F, int, int)       \
  GPUPOOL_EMU_TO_INTEGER(FROM, F, uint, unsigned) \
  GPUPOOL_EMU_TO_INTEGER(FROM, F, ll, long long)  \
  GPUPOOL_EMU_TO_INTEGER(FROM, F, ull, unsigned long long)
GPUPOOL_EMU_TO_INTEGERS(float, float)
GPUPOOL_EMU_TO_INTEGERS(double, double)
GPUPOOL_EMU_TO_INTEGERS(half, __half)
GPUPOOL_EMU_TO_INTEGER(half, __half, short, short)
GPUPOOL_EMU_TO_INTEGER(half, __half, ushort, unsigned short)
#undef GPUPOOL_EMU_TO_INTEGERS
#undef GPUPOOL_EMU_TO_INTEGER
static inline float __int2float_rn(int x) { return static_cast<float>(x); }
static inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
static inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
static inline float __double2float_rn(double x) { return static_cast<float>(x); }
static inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
static inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
static inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
static inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
static inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
static inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
static inline int __double2hiint(double x) {
  return static_cast<int>(__double_as_longlong(x) >> 32);
}
static inline int __double2loint(double x) { return static_cast<int>(__double_as_longlong(x)); }
static inline double __hiloint2double(int hi, int lo) {
  return __longlong_as_double(static_cast<long long>(
      (static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) |
      static_cast<unsigned>(lo)));
}

static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
static inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
static inline unsigned long long __brevll(unsigned long long x) {
  return (static_cast<unsigned long long>(__brev(static_cast<unsigned>(x))) << 32) |
         __brev(static_cast<unsigned>(x >> 32));
}
static inline int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }
static inline unsigned __umul24(unsigned a, unsigned b) {
  return (a & 0xFFFFFFu) * (b & 0xFFFFFFu);
}
static inline int __mulhi(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) * b) >> 32);
}
static inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
static inline long long __mul64hi(long long a, long long b) {
  return static_cast<long long>((static_cast<__int128>(a) * b) >> 64);
}
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}
static inline int __hadd(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) + b) >> 1);
}
static inline int __rhadd(int a, int b) {
  return static_cast<int>((static_cast<long long>(a) + b + 1) >> 1);
}
static inline unsigned __uhadd(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) + b) >> 1);
}
static inline unsigned __urhadd(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<unsigned long long>(a) + b + 1) >> 1);
}
static inline unsigned __sad(int a, int b, unsigned c) {
  long long difference = static_cast<long long>(a) - b;
  return c + static_cast<unsigned>(difference < 0 ? -difference : difference);
}
static inline unsigned __usad(unsigned a, unsigned b, unsigned c) {
  return c + (a > b ? a - b : b - a);
}
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  unsigned long long bytes = (static_cast<unsigned long long>(y) << 32) | x;
  unsigned result = 0;
  for (int i = 0; i < 4; ++i) {
    unsigned selector = (s >> (4 * i)) & 7u;
    result |= static_cast<unsigned>((bytes >> (8 * selector)) & 0xFFu) << (8 * i);
  }
  return result;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned shift) {
  unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>((v << (shift & 31u)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned shift) {
  unsigned long long v = (static_cast<unsigned long long>(hi) << 32) | lo;
  return static_cast<unsigned>(v >> (shift & 31u));
}

// ---------------------------------------------------------------------------------------------
// Launching.
namespace gpupool_emu {
namespace {

// Kernel parameters, deduced from the kernel's own type so that Python never parses C++ types.
template <class F>
struct Params;
template <class... P>
struct Params<void (*)(P...)> {
  using Tuple = std::tuple<std::remove_cvref_t<P>...>;
  static constexpr int count = sizeof...(P);

  static void sizes(std::size_t* out) {
    const std::size_t each[] = {sizeof(std::remove_cvref_t<P>)..., 0};
    std::copy(each, each + count, out);
  }
  template <std::size_t... I>
  static Tuple unpack(void* const* args, std::index_sequence<I...>) {
    return Tuple(*static_cast<const std::remove_cvref_t<P>*>(args[I])...);
  }
  static Tuple unpack(void* const* args) { return unpack(args, std::index_sequence_for<P...>{}); }
};
template <class... P>
struct Params<void (*)(P...) noexcept> : Params<void (*)(P...)> {};

constexpr std::size_t kThreadStack = 1 << 20;  // CUDA allows at most 512 KiB of local memory
// A host thread is worth starting only for at least this many emulated threads of work.
constexpr unsigned long long kThreadsPerWorker = 4096;

uint3 unflatten(unsigned long long index, const dim3& extent) {
  return {static_cast<unsigned>(index % extent.x),
          static_cast<unsigned>(index / extent.x % extent.y),
          static_cast<unsigned>(index / extent.x / extent.y)};
}

unsigned host_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(CPU_COUNT(&set), 1);
  return 1;
}

template <class Body>
struct TeamMember {
  Body* body;
  std::atomic<int>* gate;
  unsigned index;
};

template <class Body>
void* team_entry(void* raw) {
  auto* member = static_cast<TeamMember<Body>*>(raw);
  member->gate->wait(0);
  if (member->gate->load() > 0) (*member->body)(member->index);
  return nullptr;
}

// Runs body(0) .. body(n-1) on n host threads, the calling thread being number 0. Nothing runs
// before every thread has started, so a block whose threads cannot all be started does not hang
// on its barrier: when need_all is set it runs nowhere (returns false), otherwise it runs on the
// threads that did start. body must not throw.
template <class Body>
bool run_team(unsigned n, Body& body, bool need_all) {
  std::vector<TeamMember<Body>> members(n);
  std::vector<pthread_t> threads;
  threads.reserve(n);
  std::atomic<int> gate{0};
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, kThreadStack);
  for (unsigned i = 1; i < n; ++i) {
    members[i] = {&body, &gate, i};
    pthread_t thread;
    if (pthread_create(&thread, &attr, team_entry<Body>, &members[i]) != 0) break;
    threads.push_back(thread);
  }
  pthread_attr_destroy(&attr);
  bool go = threads.size() + 1 == n || !need_all;
  gate.store(go ? 1 : -1);
  gate.notify_all();
  if (go) body(0);
  for (pthread_t thread : threads) pthread_join(thread, nullptr);
  return go;
}

// Runs one emulated thread; false when it aborted (the launch has recorded why).
template <auto K, class Tuple>
bool run_thread(LaunchContext& ctx, const Tuple& args) {
  try {
    std::apply(K, args);
    return true;
  } catch (const KernelAbort& abort) {
    ctx.fail(abort.status, abort.message);
  } catch (const std::exception& error) {
    ctx.fail(kLaunchFailure, std::string("C++ exception in kernel: ") + error.what());
  } catch (...) {
    ctx.fail(kLaunchFailure, "C++ exception in kernel");
  }
  return false;
}

template <auto K, class Tuple>
bool run_block_as_loop(LaunchContext& ctx, const Tuple& args) {
  for (unsigned z = 0; z < ctx.block.z; ++z) {
    for (unsigned y = 0; y < ctx.block.y; ++y) {
      for (unsigned x = 0; x < ctx.block.x; ++x) {
        threadIdx = {x, y, z};
        if (!run_thread<K>(ctx, args)) return false;
      }
    }
  }
  return true;
}

// A kernel without __syncthreads: each block's threads are a loop, and the blocks are handed
// out in chunks to as many host threads as pay off (one, when blocks share static __shared__).
template <auto K, bool SharedStatics, class Tuple>
void run_independent(LaunchContext& ctx, const Tuple& args) {
  unsigned long long workers = 1;
  if (!SharedStatics) {
    workers = std::min<unsigned long long>(
        {host_cores(), ctx.blocks, ctx.blocks * ctx.block_threads / kThreadsPerWorker});
    workers = std::max<unsigned long long>(workers, 1);
  }
  unsigned long long chunk = std::max<unsigned long long>(ctx.blocks / (workers * 16), 1);
  std::atomic<unsigned long long> next{0};
  auto body = [&](unsigned) {
    while (!ctx.stop.load(std::memory_order_relaxed)) {
      unsigned long long first = next.fetch_add(chunk);
      if (first >= ctx.blocks) return;
      unsigned long long last = std::min(first + chunk, ctx.blocks);
      for (unsigned long long b = first; b < last; ++b) {
        blockIdx = unflatten(b, ctx.grid);
        if (!run_block_as_loop<K>(ctx, args)) return;
      }
    }
  };
  run_team(static_cast<unsigned>(workers), body, false);
}

// A kernel of a module with __syncthreads: one host thread per CUDA thread of a block, reused
// block after block. A thread that returns keeps arriving at the barrier (standing in for the
// barriers it skips) until every thread of the block has returned; only then does the next block
// start, so that the block's static __shared__ memory is free.
template <auto K, class Tuple>
void run_cooperative(LaunchContext& ctx, const Tuple& args) {
  std::barrier<PhaseEnd> barrier(ctx.block_threads, PhaseEnd{&ctx});
  ctx.barrier = &barrier;
  auto body = [&](unsigned index) {
    threadIdx = unflatten(index, ctx.block);
    for (unsigned long long b = 0; b < ctx.blocks; ++b) {
      blockIdx = unflatten(b, ctx.grid);
      if (!run_thread<K>(ctx, args)) break;
      ctx.finished.fetch_add(1);
      do {
        barrier.arrive_and_wait();
      } while (!ctx.block_done && !ctx.stop_seen);
      if (ctx.stop_seen) break;
    }
    // A thread that stops early leaves the barrier, which releases threads of its block still
    // inside the kernel (they stop at the end of it); after the last block nobody waits any more.
    barrier.arrive_and_drop();
  };
  if (!run_team(ctx.block_threads, body, true)) {
    ctx.fail(kLaunchOutOfResources, "could not start " + std::to_string(ctx.block_threads) +
                                        " host threads to emulate a block");
  }
}

template <auto K, bool Cooperative, bool SharedStatics>
int launch(const unsigned* grid, const unsigned* block, std::size_t shared_bytes,
           void* const* raw_args, char* error, std::size_t error_size) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  LaunchContext ctx;
  ctx.grid = dim3(grid[0], grid[1], grid[2]);
  ctx.block = dim3(block[0], block[1], block[2]);
  ctx.blocks = 1ull * grid[0] * grid[1] * grid[2];
  ctx.block_threads = block[0] * block[1] * block[2];
  g_grid_dim = ctx.grid;
  g_block_dim = ctx.block;
  g_ctx = &ctx;
  try {
    struct alignas(16) Chunk {
      unsigned char bytes[16];
    };
    std::vector<Chunk> shared(shared_bytes / 16 + 1);
    g_dynamic_shared = shared.front().bytes;
    const auto args = Params<decltype(K)>::unpack(raw_args);
    if constexpr (Cooperative) {
      run_cooperative<K>(ctx, args);
    } else {
      run_independent<K, SharedStatics>(ctx, args);
    }
  } catch (const std::exception& failure) {
    ctx.fail(kLaunchOutOfResources, failure.what());
  }
  g_ctx = nullptr;
  g_dynamic_shared = nullptr;
  fflush(stdout);
  snprintf(error, error_size, "%s", ctx.message.c_str());
  return ctx.status.load();
}

}  // namespace
}  // namespace gpupool_emu

#define GPUPOOL_EMU_API extern "C" __attribute__((visibility("default")))
#define GPUPOOL_EMU_EXPORT(ID, KERNEL, COOPERATIVE, SHARED_STATICS)                          \
  GPUPOOL_EMU_API int gpupool_launch_##ID(const unsigned* grid, const unsigned* block,       \
                                          std::size_t shared_bytes, void* const* args,       \
                                          char* error, std::size_t error_size) {             \
    return ::gpupool_emu::launch<&KERNEL, COOPERATIVE, SHARED_STATICS>(                      \
        grid, block, shared_bytes, args, error, error_size);                                 \
  }                                                                                          \
  GPUPOOL_EMU_API int gpupool_num_args_##ID() {                                              \
    return ::gpupool_emu::Params<decltype(&KERNEL)>::count;                                  \
  }                                                                                          \
  GPUPOOL_EMU_API void gpupool_arg_sizes_##ID(std::size_t* out) {                            \
    ::gpupool_emu::Params<decltype(&KERNEL)>::sizes(out);                                    \
  }

#endif  // GPUPOOL_EMU_SCAN
#endif  // GPUPOOL_EMU_H
