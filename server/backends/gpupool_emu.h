// gpupool_emu.h: lets the host g++ compile CUDA C device code for gpupool's CPU emulator.
//
// emu_kernels.py prepends `#include "gpupool_emu.h"` to a module's CUDA C source and appends one
// GPUPOOL_EMU_EXPORT(...) line per kernel. Everything here has internal linkage (one module is one
// translation unit, and modules are loaded side by side into one worker process); only the
// launchers are exported.
//
// Execution model (design notes, "The emulator backend"):
// * a device pointer is a host address, so kernels read and write host memory directly;
// * a host thread runs one block at a time, to its end; `__shared__` is static thread_local
//   storage, and dynamic shared memory a buffer of each host thread, so that blocks running at once
//   on different host threads have their own;
// * in a module that mentions __syncthreads() anywhere, every kernel runs the threads of a block as
//   fibers on one host thread (FiberTeam below: each with its own stack, __syncthreads() switches
//   to the next), and the blocks are spread over the host's cores;
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
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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
#define __shared__ static thread_local
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

struct LaunchContext {
  dim3 grid;
  dim3 block;
  unsigned long long blocks;
  unsigned block_threads;
  std::size_t shared_bytes;
  std::atomic<int> status{kSuccess};
  std::atomic<bool> stop{false};
  std::string message;

  // Records the first failure of the launch and asks every host thread to stop.
  void fail(int code, std::string what) {
    int expected = kSuccess;
    if (status.compare_exchange_strong(expected, code)) message = std::move(what);
    stop.store(true);
  }
};

std::mutex g_launch_mutex;
// The dynamic shared memory of the block that this host thread runs: `extern __shared__ T
// name[];` becomes a thread_local reference to it, as static __shared__ storage is thread_local.
thread_local unsigned char* g_dynamic_shared = nullptr;
dim3 g_block_dim;
dim3 g_grid_dim;

}  // namespace
}  // namespace gpupool_emu

// The CUDA built-in variables. threadIdx is set for each emulated thread by whoever runs it (the
// plain loop, or the fiber scheduler on every switch), blockIdx for each block.
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

}  // namespace
}  // namespace gpupool_emu

// ---------------------------------------------------------------------------------------------
// Fibers. In a module with barriers each CUDA thread of a block is a fiber (its own stack, run on
// the host thread that runs the block); __syncthreads() switches to the next fiber of the block.
//
// On x86-64 the switch is the few instructions below: it saves the callee-saved registers and the
// SSE/x87 control words on the fiber's own stack, stores the stack pointer, loads the next one and
// restores the same from there. It is an out-of-line function the compiler cannot see into, so a
// kernel reloads memory (shared arrays, threadIdx) after every barrier. A fiber starts in
// gpupool_emu_fiber_start, which calls the entry function placed in r12 of its first frame; no
// unwinding goes past it (.cfi_undefined rip ends the stack). Elsewhere, or with
// GPUPOOL_EMU_UCONTEXT defined, ucontext's swapcontext does the same at the cost of a system call
// (sigprocmask) per switch. Neither switches a CET shadow stack, which Linux enables for a
// process only on request.
#if defined(__x86_64__) && !defined(GPUPOOL_EMU_UCONTEXT)
#define GPUPOOL_EMU_ASM_FIBERS 1
asm(R"(
  .text
  .p2align 4
  .globl gpupool_emu_fiber_switch
  .hidden gpupool_emu_fiber_switch
  .type gpupool_emu_fiber_switch, @function
gpupool_emu_fiber_switch:
  .cfi_startproc
  pushq %rbp
  .cfi_adjust_cfa_offset 8
  pushq %rbx
  .cfi_adjust_cfa_offset 8
  pushq %r12
  .cfi_adjust_cfa_offset 8
  pushq %r13
  .cfi_adjust_cfa_offset 8
  pushq %r14
  .cfi_adjust_cfa_offset 8
  pushq %r15
  .cfi_adjust_cfa_offset 8
  subq $8, %rsp
  .cfi_adjust_cfa_offset 8
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  .cfi_adjust_cfa_offset -8
  popq %r15
  .cfi_adjust_cfa_offset -8
  popq %r14
  .cfi_adjust_cfa_offset -8
  popq %r13
  .cfi_adjust_cfa_offset -8
  popq %r12
  .cfi_adjust_cfa_offset -8
  popq %rbx
  .cfi_adjust_cfa_offset -8
  popq %rbp
  .cfi_adjust_cfa_offset -8
  ret
  .cfi_endproc
  .size gpupool_emu_fiber_switch, .-gpupool_emu_fiber_switch

  .p2align 4
  .globl gpupool_emu_fiber_start
  .hidden gpupool_emu_fiber_start
  .type gpupool_emu_fiber_start, @function
gpupool_emu_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  callq *%r12
  ud2
  .cfi_endproc
  .size gpupool_emu_fiber_start, .-gpupool_emu_fiber_start
)");
extern "C" __attribute__((visibility("hidden"))) void gpupool_emu_fiber_switch(void** save,
                                                                               void* load);
extern "C" __attribute__((visibility("hidden"))) void gpupool_emu_fiber_start();
#else
#define GPUPOOL_EMU_ASM_FIBERS 0
#include <ucontext.h>
#endif

namespace gpupool_emu {
namespace {

struct FiberContext {
#if GPUPOOL_EMU_ASM_FIBERS
  void* sp = nullptr;
#else
  ucontext_t uc;  // points into itself: never moved once made
#endif
};

// Suspends the running code into `from` and resumes `to`.
inline void fiber_switch(FiberContext& from, FiberContext& to) {
#if GPUPOOL_EMU_ASM_FIBERS
  gpupool_emu_fiber_switch(&from.sp, to.sp);
#else
  swapcontext(&from.uc, &to.uc);
#endif
}

// Makes `context` start entry() on the stack [low, low + size) when first switched to.
void fiber_make(FiberContext& context, unsigned char* low, std::size_t size, void (*entry)()) {
#if GPUPOOL_EMU_ASM_FIBERS
  auto top = reinterpret_cast<std::uintptr_t>(low + size) & ~std::uintptr_t{15};
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 16) - 8;  // see the switch above
  std::uint32_t mxcsr = __builtin_ia32_stmxcsr();
  std::uint16_t x87 = 0;
  asm volatile("fnstcw %0" : "=m"(x87));
  frame[0] = mxcsr | (std::uint64_t{x87} << 32);
  frame[1] = frame[2] = frame[3] = 0;                            // r15, r14, r13
  frame[4] = reinterpret_cast<std::uint64_t>(entry);             // r12
  frame[5] = frame[6] = 0;                                       // rbx, rbp
  frame[7] = reinterpret_cast<std::uint64_t>(&gpupool_emu_fiber_start);  // return address
  frame[8] = 0;
  context.sp = frame;
#else
  getcontext(&context.uc);
  context.uc.uc_stack.ss_sp = low;
  context.uc.uc_stack.ss_size = size;
  context.uc.uc_link = nullptr;
  makecontext(&context.uc, entry, 0);
#endif
}

enum class FiberState : unsigned char { kReady, kAtBarrier, kAtWarp, kExited };

struct Fiber {
  FiberContext context;
  uint3 index;      // its threadIdx
  unsigned lane;    // its lane in its warp (linear thread index % 32)
  unsigned warp;    // its warp in the block (linear thread index / 32)
  FiberState state = FiberState::kReady;
};

// What the lanes of one warp exchange at a warp-level operation (shuffle, vote, match, reduce,
// __syncwarp): each lane that arrives leaves its value and what it asks for; once every lane the
// masks name that is still in the kernel has arrived, the answers are worked out for all of them
// at once (so that a lane going on to the next operation cannot overwrite a value another lane has
// yet to read) and they all go on.
enum class WarpOp : unsigned char {
  kSync, kShuffle, kBallot, kMatchAny, kMatchAll, kAdd, kMin, kMax, kAnd, kOr, kXor
};

struct Warp {
  unsigned arrived = 0;  // lanes at the current operation
  unsigned named = 0;    // the lanes their masks name
  WarpOp op[32];
  bool is_signed[32];
  std::uint64_t in[32];
  unsigned source[32];   // for a shuffle: the lane to read (itself when out of range)
  std::uint64_t out[32];
};

// The threads of one block as fibers, on one host thread, block after block. A scheduler on the
// host thread runs the ready fibers in turn, each until it waits or returns: at __syncthreads() a
// fiber waits for every fiber still in the kernel (fibers that returned count as arrived, as on a
// GPU); at a warp-level operation it waits for the lanes of its warp that the operation names. A
// fiber that returns waits, parked, for the next block, which starts all the fibers again from the
// kernel's beginning. Waits that can never end (a warp operation naming a lane that waits at a
// barrier) end the launch with an error instead of hanging.
struct FiberTeam {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  unsigned current = 0;   // the running fiber
  unsigned live = 0;      // fibers not returned
  unsigned at_barrier = 0;
  int votes = 0;          // true predicates given to the barrier of the current phase
  int vote_count = 0;     // the outcome of the last phase
  int voters = 0;         // fibers at the barrier of the last phase (not returned)
  FiberContext host;      // the scheduler
  void (*body)(const void*) = nullptr;  // runs one CUDA thread; must not throw
  const void* data = nullptr;
  unsigned char* stacks = nullptr;
  std::size_t mapped = 0;

  FiberTeam() = default;
  FiberTeam(const FiberTeam&) = delete;
  FiberTeam& operator=(const FiberTeam&) = delete;
  ~FiberTeam() {
    if (stacks) munmap(stacks, mapped);
  }

  Fiber& self() { return fibers[current]; }

  // Called by the running fiber: it waits in `state` (or has returned) until the scheduler
  // resumes it.
  void wait(FiberState state) {
    Fiber& fiber = self();
    fiber.state = state;
    fiber_switch(fiber.context, host);
  }

  // The lanes of warp `w` still in the kernel.
  unsigned live_lanes(unsigned w) const {
    unsigned mask = 0;
    for (unsigned i = w * 32; i < fibers.size() && i < w * 32 + 32; ++i) {
      if (fibers[i].state != FiberState::kExited) mask |= 1u << (i % 32);
    }
    return mask;
  }

  // Answers warp w's operation once every lane it needs has arrived.
  void complete(unsigned w) {
    Warp& warp = warps[w];
    if (!warp.arrived) return;
    unsigned needed = warp.named & live_lanes(w);
    if ((warp.arrived & needed) != needed) return;
    const unsigned lanes = warp.arrived;
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l) {
      if ((lanes >> l & 1u) && warp.in[l]) ballot |= 1u << l;
    }
    for (unsigned l = 0; l < 32; ++l) {
      if (!(lanes >> l & 1u)) continue;
      std::uint64_t result = 0;
      switch (warp.op[l]) {
        case WarpOp::kSync:
          break;
        case WarpOp::kShuffle: {
          unsigned from = warp.source[l];
          result = (from < 32 && (lanes >> from & 1u)) ? warp.in[from] : warp.in[l];
          break;
        }
        case WarpOp::kBallot:
          result = ballot;
          break;
        case WarpOp::kMatchAny:
        case WarpOp::kMatchAll: {
          unsigned same = 0;
          for (unsigned o = 0; o < 32; ++o) {
            if ((lanes >> o & 1u) && warp.in[o] == warp.in[l]) same |= 1u << o;
          }
          result = warp.op[l] == WarpOp::kMatchAny ? same : (same == lanes ? lanes : 0);
          break;
        }
        default:
          result = reduce(warp, lanes, l);
      }
      warp.out[l] = result;
      fibers[w * 32 + l].state = FiberState::kReady;
    }
    warp.arrived = warp.named = 0;
  }

  static std::uint64_t reduce(const Warp& warp, unsigned lanes, unsigned l) {
    bool first = true;
    std::uint64_t acc = 0;
    for (unsigned o = 0; o < 32; ++o) {
      if (!(lanes >> o & 1u)) continue;
      std::uint64_t v = warp.in[o];
      if (first) {
        acc = v;
        first = false;
        continue;
      }
      const bool s = warp.is_signed[l];
      const auto as_signed = [](std::uint64_t x) { return static_cast<std::int32_t>(x); };
      switch (warp.op[l]) {
        case WarpOp::kAdd:
          acc = static_cast<std::uint32_t>(acc + v);
          break;
        case WarpOp::kMin:
          acc = s ? (as_signed(v) < as_signed(acc) ? v : acc) : std::min(acc, v);
          break;
        case WarpOp::kMax:
          acc = s ? (as_signed(v) > as_signed(acc) ? v : acc) : std::max(acc, v);
          break;
        case WarpOp::kAnd:
          acc &= v;
          break;
        case WarpOp::kOr:
          acc |= v;
          break;
        default:
          acc ^= v;
      }
    }
    return acc;
  }

  // Runs every thread of the current block (blockIdx) to its end; false when the block can
  // never end (its fibers wait for each other).
  bool run_block() {
    for (Fiber& fiber : fibers) fiber.state = FiberState::kReady;
    for (Warp& warp : warps) warp.arrived = warp.named = 0;
    live = static_cast<unsigned>(fibers.size());
    at_barrier = 0;
    votes = 0;
    for (;;) {
      bool ran = false;
      for (unsigned i = 0; i < fibers.size(); ++i) {
        Fiber& fiber = fibers[i];
        if (fiber.state != FiberState::kReady) continue;
        ran = true;
        current = i;
        threadIdx = fiber.index;
        fiber_switch(host, fiber.context);
        if (fiber.state == FiberState::kAtBarrier) {
          ++at_barrier;
        } else {
          if (fiber.state == FiberState::kExited) --live;
          complete(fiber.warp);  // an arrival, or a lane the others no longer wait for
        }
      }
      if (live == 0) return true;
      if (ran) continue;
      if (at_barrier != live) return false;
      for (Fiber& fiber : fibers) {
        if (fiber.state == FiberState::kAtBarrier) fiber.state = FiberState::kReady;
      }
      vote_count = votes;
      votes = 0;
      voters = static_cast<int>(live);
      at_barrier = 0;
    }
  }
};

thread_local FiberTeam* g_team = nullptr;

[[noreturn]] void fiber_main() noexcept {
  FiberTeam* team = g_team;
  for (;;) {
    team->body(team->data);
    team->wait(FiberState::kExited);
  }
}

std::size_t page_size() {
  long size = sysconf(_SC_PAGESIZE);
  return size > 0 ? static_cast<std::size_t>(size) : 4096;
}

// Bytes of stack per fiber: GPUPOOL_EMU_STACK_KIB, 256 KiB by default, at least 16 KiB.
std::size_t fiber_stack_bytes() {
  std::size_t kib = 256;
  if (const char* text = getenv("GPUPOOL_EMU_STACK_KIB")) {
    char* end = nullptr;
    unsigned long long value = strtoull(text, &end, 10);
    if (end != text && *end == '\0') kib = std::clamp<unsigned long long>(value, 16, 1 << 20);
  }
  std::size_t page = page_size();
  return (kib * 1024 + page - 1) / page * page;
}

// Linux 6.13's guard regions: pages that fault on access, without splitting the mapping.
constexpr int kMadvGuardInstall = 102;  // MADV_GUARD_INSTALL, newer than most headers
std::atomic<bool> g_guard_regions{true};  // until the kernel refuses them

// Makes the page at `low` fault on access: a guard region where the kernel has them, else (when
// `split` allows splitting the mapping) an inaccessible mapping. Best effort: without one, a
// stack overflow overwrites the next fiber's stack instead of faulting.
void install_guard(unsigned char* low, std::size_t page, bool split) {
  if (g_guard_regions.load(std::memory_order_relaxed)) {
    if (madvise(low, page, kMadvGuardInstall) == 0) return;
    g_guard_regions.store(false, std::memory_order_relaxed);
  }
  if (split) mprotect(low, page, PROT_NONE);
}

// Makes `team` the fibers of a block of `block` threads, each with `stack` bytes of stack and a
// guard page below it (see install_guard; `split` allows guards that split the mapping). False
// when the memory could not be had.
bool make_team(FiberTeam& team, const dim3& block, std::size_t stack, bool split,
               void (*body)(const void*), const void* data) {
  const unsigned n = block.x * block.y * block.z;
  const std::size_t page = page_size();
  const std::size_t each = stack + page;
  void* memory = mmap(nullptr, each * n, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (memory == MAP_FAILED) return false;
  team.stacks = static_cast<unsigned char*>(memory);
  team.mapped = each * n;
  team.fibers = std::vector<Fiber>(n);
  team.warps = std::vector<Warp>((n + 31) / 32);
  team.body = body;
  team.data = data;
  for (unsigned i = 0; i < n; ++i) {
    unsigned char* low = team.stacks + i * each;
    install_guard(low, page, split);
    team.fibers[i].index = {i % block.x, i / block.x % block.y, i / block.x / block.y};
    team.fibers[i].lane = i % 32;
    team.fibers[i].warp = i / 32;
    fiber_make(team.fibers[i].context, low + page, stack, &fiber_main);
  }
  return true;
}

// __syncthreads and friends: only kernels of a module with barriers call them, and those always
// run as fibers.
int sync_count(int predicate) {
  FiberTeam* team = g_team;
  if (predicate) ++team->votes;
  team->wait(FiberState::kAtBarrier);
  return team->vote_count;
}

// One lane's part in a warp-level operation: waits for the lanes `mask` names, returns its answer.
std::uint64_t warp_exchange(unsigned mask, WarpOp op, std::uint64_t value, unsigned source = 32,
                            bool is_signed = false) {
  FiberTeam* team = g_team;
  Fiber& fiber = team->self();
  Warp& warp = team->warps[fiber.warp];
  const unsigned lane = fiber.lane;
  warp.op[lane] = op;
  warp.is_signed[lane] = is_signed;
  warp.in[lane] = value;
  warp.source[lane] = source;
  warp.arrived |= 1u << lane;
  warp.named |= mask;
  team->wait(FiberState::kAtWarp);
  return warp.out[lane];
}

unsigned lane_id() { return g_team->self().lane; }

// The lane `__shfl_sync` reads: `target` within the lane's own segment of `width` lanes.
unsigned shuffle_source(int target, int width) {
  const unsigned w = (width <= 0 || width > 32) ? 32u : static_cast<unsigned>(width);
  return lane_id() / w * w + static_cast<unsigned>(target) % w;
}

template <class T>
std::uint64_t to_bits(T value) {
  static_assert(sizeof(T) <= 8, "warp shuffles move values of at most 8 bytes");
  std::uint64_t bits = 0;
  memcpy(&bits, &value, sizeof(T));
  return bits;
}

template <class T>
T from_bits(std::uint64_t bits) {
  T value;
  memcpy(&value, &bits, sizeof(T));
  return value;
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

static inline void __syncthreads() {
  gpupool_emu::g_team->wait(gpupool_emu::FiberState::kAtBarrier);
}

// Warp-level primitives: the lanes of a warp meet (see FiberTeam), so shuffles, votes and warp
// reductions give a GPU's results. Only kernels of a module that uses them or a barrier call
// them, and those always run as fibers.
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
  gpupool_emu::warp_exchange(mask, gpupool_emu::WarpOp::kSync, 0);
}
static inline unsigned __activemask() {
  gpupool_emu::FiberTeam* team = gpupool_emu::g_team;
  return team->live_lanes(team->self().warp);
}
template <class T>
static inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
  unsigned source = gpupool_emu::shuffle_source(srcLane, width);
  return gpupool_emu::from_bits<T>(gpupool_emu::warp_exchange(
      mask, gpupool_emu::WarpOp::kShuffle, gpupool_emu::to_bits(var), source));
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const unsigned lane = gpupool_emu::lane_id();
  const unsigned w = (width <= 0 || width > 32) ? 32u : static_cast<unsigned>(width);
  const unsigned source = lane % w >= delta ? lane - delta : lane;
  return gpupool_emu::from_bits<T>(gpupool_emu::warp_exchange(
      mask, gpupool_emu::WarpOp::kShuffle, gpupool_emu::to_bits(var), source));
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  const unsigned lane = gpupool_emu::lane_id();
  const unsigned w = (width <= 0 || width > 32) ? 32u : static_cast<unsigned>(width);
  const unsigned source = lane % w + delta < w ? lane + delta : lane;
  return gpupool_emu::from_bits<T>(gpupool_emu::warp_exchange(
      mask, gpupool_emu::WarpOp::kShuffle, gpupool_emu::to_bits(var), source));
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
  const unsigned lane = gpupool_emu::lane_id();
  const unsigned w = (width <= 0 || width > 32) ? 32u : static_cast<unsigned>(width);
  const unsigned target = lane ^ static_cast<unsigned>(laneMask);
  // a lane may read earlier segments of `width` lanes, not later ones (it then keeps its own)
  const unsigned source = target < 32 && target / w <= lane / w ? target : lane;
  return gpupool_emu::from_bits<T>(gpupool_emu::warp_exchange(
      mask, gpupool_emu::WarpOp::kShuffle, gpupool_emu::to_bits(var), source));
}
static inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(
      gpupool_emu::warp_exchange(mask, gpupool_emu::WarpOp::kBallot, predicate != 0));
}
static inline int __any_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) != 0;
}
static inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == (mask & __activemask());
}
static inline int __uni_sync(unsigned mask, int predicate) {
  unsigned votes = __ballot_sync(mask, predicate);
  return votes == 0 || votes == (mask & __activemask());
}
template <class T>
static inline unsigned __match_any_sync(unsigned mask, T value) {
  return static_cast<unsigned>(gpupool_emu::warp_exchange(
      mask, gpupool_emu::WarpOp::kMatchAny, gpupool_emu::to_bits(value)));
}
template <class T>
static inline unsigned __match_all_sync(unsigned mask, T value, int* pred) {
  unsigned result = static_cast<unsigned>(gpupool_emu::warp_exchange(
      mask, gpupool_emu::WarpOp::kMatchAll, gpupool_emu::to_bits(value)));
  *pred = result != 0;
  return result;
}
#define GPUPOOL_EMU_WARP_REDUCE(NAME, OP)                                                       static inline unsigned NAME(unsigned mask, unsigned value) {                                    return static_cast<unsigned>(gpupool_emu::warp_exchange(mask, OP, value));                  }                                                                                             static inline int NAME(unsigned mask, int value) {                                              return static_cast<int>(gpupool_emu::warp_exchange(                                               mask, OP, static_cast<std::uint32_t>(value), 32, true));                                }
GPUPOOL_EMU_WARP_REDUCE(__reduce_add_sync, gpupool_emu::WarpOp::kAdd)
GPUPOOL_EMU_WARP_REDUCE(__reduce_min_sync, gpupool_emu::WarpOp::kMin)
GPUPOOL_EMU_WARP_REDUCE(__reduce_max_sync, gpupool_emu::WarpOp::kMax)
#undef GPUPOOL_EMU_WARP_REDUCE
static inline unsigned __reduce_and_sync(unsigned mask, unsigned value) {
  return static_cast<unsigned>(gpupool_emu::warp_exchange(mask, gpupool_emu::WarpOp::kAnd, value));
}
static inline unsigned __reduce_or_sync(unsigned mask, unsigned value) {
  return static_cast<unsigned>(gpupool_emu::warp_exchange(mask, gpupool_emu::WarpOp::kOr, value));
}
static inline unsigned __reduce_xor_sync(unsigned mask, unsigned value) {
  return static_cast<unsigned>(gpupool_emu::warp_exchange(mask, gpupool_emu::WarpOp::kXor, value));
}
static inline int __syncthreads_count(int predicate) { return gpupool_emu::sync_count(predicate); }
static inline int __syncthreads_and(int predicate) {
  int count = gpupool_emu::sync_count(predicate);  // before voters: that is the phase's outcome
  return count == gpupool_emu::g_team->voters;
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

// Host threads run the scheduler and, in the plain loop, the kernel itself.
constexpr std::size_t kThreadStack = 1 << 20;  // CUDA allows at most 512 KiB of local memory
// A host thread is worth starting only for at least this many emulated threads of work.
constexpr unsigned long long kThreadsPerWorker = 4096;
// Guard pages made inaccessible with mprotect split the mapping, and the kernel allows a process
// only so many mappings (vm.max_map_count, 65530 by default) for malloc, threads and all: above
// this many fibers in a launch they go without (guard regions have no such cost).
constexpr unsigned long long kMaxSplitGuards = 16384;

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
  unsigned index;
};

template <class Body>
void* team_entry(void* raw) {
  auto* member = static_cast<TeamMember<Body>*>(raw);
  (*member->body)(member->index);
  return nullptr;
}

// Runs body(0) .. body(n-1) on up to n host threads, the calling thread being number 0; those
// that cannot be started are left out (the others take over their share of the blocks). body
// must not throw.
template <class Body>
void run_team(unsigned n, Body& body) {
  std::vector<TeamMember<Body>> members(n);
  std::vector<pthread_t> threads;
  threads.reserve(n);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, kThreadStack);
  for (unsigned i = 1; i < n; ++i) {
    members[i] = {&body, i};
    pthread_t thread;
    if (pthread_create(&thread, &attr, team_entry<Body>, &members[i]) != 0) break;
    threads.push_back(thread);
  }
  pthread_attr_destroy(&attr);
  body(0);
  for (pthread_t thread : threads) pthread_join(thread, nullptr);
}

// How many host threads share the blocks of a launch: as many as pay off, up to one per core.
unsigned long long worker_count(const LaunchContext& ctx) {
  unsigned long long workers = std::min<unsigned long long>(
      {host_cores(), ctx.blocks, ctx.blocks * ctx.block_threads / kThreadsPerWorker});
  return std::max<unsigned long long>(workers, 1);
}

// Each host thread's own dynamic shared memory, for as long as it runs blocks of the launch.
struct DynamicShared {
  struct alignas(16) Chunk {
    unsigned char bytes[16];
  };
  std::vector<Chunk> memory;
  explicit DynamicShared(std::size_t bytes) : memory(bytes / 16 + 1) {
    g_dynamic_shared = memory.front().bytes;
  }
  DynamicShared(const DynamicShared&) = delete;
  DynamicShared& operator=(const DynamicShared&) = delete;
  ~DynamicShared() { g_dynamic_shared = nullptr; }
};

// Runs run_block(b) for the blocks this host thread takes from `next`, until all are taken or
// the launch stops; run_block returns false to stop this host thread.
template <class RunBlock>
void take_blocks(LaunchContext& ctx, std::atomic<unsigned long long>& next,
                 unsigned long long chunk, RunBlock run_block) {
  while (!ctx.stop.load(std::memory_order_relaxed)) {
    unsigned long long first = next.fetch_add(chunk);
    if (first >= ctx.blocks) return;
    unsigned long long last = std::min(first + chunk, ctx.blocks);
    for (unsigned long long b = first; b < last; ++b) {
      blockIdx = unflatten(b, ctx.grid);
      if (!run_block()) return;
    }
  }
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

// Runs `body` on the host threads of a launch, each with its own dynamic shared memory; body
// must not throw, and what this throws (memory) ends only that host thread.
template <class Body>
void run_workers(LaunchContext& ctx, unsigned long long workers, Body body) {
  auto worker = [&](unsigned index) {
    try {
      DynamicShared shared(ctx.shared_bytes);
      body(index);
    } catch (const std::exception& failure) {
      ctx.fail(kLaunchOutOfResources, failure.what());
    }
  };
  run_team(static_cast<unsigned>(workers), worker);
}

// A kernel without __syncthreads: each block's threads are a loop, and the blocks are handed
// out in chunks to as many host threads as pay off (one, when the module has __shared__ memory:
// a kernel may then rely on blocks running one after another).
template <auto K, bool SharedStatics, class Tuple>
void run_independent(LaunchContext& ctx, const Tuple& args) {
  unsigned long long workers = SharedStatics ? 1 : worker_count(ctx);
  std::atomic<unsigned long long> next{0};
  unsigned long long chunk = std::max<unsigned long long>(ctx.blocks / (workers * 16), 1);
  run_workers(ctx, workers, [&](unsigned) {
    take_blocks(ctx, next, chunk, [&] { return run_block_as_loop<K>(ctx, args); });
  });
}

template <auto K, class Tuple>
struct FiberWork {
  LaunchContext* ctx;
  const Tuple* args;
  static void run(const void* raw) {
    auto* work = static_cast<const FiberWork*>(raw);
    run_thread<K>(*work->ctx, *work->args);
  }
};

// A kernel of a module with __syncthreads: the threads of a block are fibers of one host thread
// (see FiberTeam), and the blocks are handed out to as many host threads as pay off, each with
// its own fibers. Static __shared__ storage is thread_local, so blocks on different host threads
// do not share it. After a failure the blocks running finish and no others start.
template <auto K, class Tuple>
void run_cooperative(LaunchContext& ctx, const Tuple& args) {
  unsigned long long workers = worker_count(ctx);
  const std::size_t stack = fiber_stack_bytes();
  const bool split = workers * ctx.block_threads <= kMaxSplitGuards;
  const FiberWork<K, Tuple> work{&ctx, &args};
  std::atomic<unsigned long long> next{0};
  unsigned long long chunk = std::max<unsigned long long>(ctx.blocks / (workers * 16), 1);
  run_workers(ctx, workers, [&](unsigned) {
    FiberTeam team;
    if (!make_team(team, ctx.block, stack, split, &FiberWork<K, Tuple>::run, &work)) {
      ctx.fail(kLaunchOutOfResources,
               "could not map " + std::to_string(ctx.block_threads) + " fiber stacks of " +
                   std::to_string(stack / 1024) + " KiB (GPUPOOL_EMU_STACK_KIB)");
      return;
    }
    g_team = &team;
    take_blocks(ctx, next, chunk, [&] {
      if (team.run_block()) return true;
      ctx.fail(kLaunchFailure,
               "threads of a block wait for each other forever (a warp operation naming a lane"
               " that waits at __syncthreads, or the reverse)");
      return false;
    });
    g_team = nullptr;
  });
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
  ctx.shared_bytes = shared_bytes;
  g_grid_dim = ctx.grid;
  g_block_dim = ctx.block;
  try {
    const auto args = Params<decltype(K)>::unpack(raw_args);
    if constexpr (Cooperative) {
      run_cooperative<K>(ctx, args);
    } else {
      run_independent<K, SharedStatics>(ctx, args);
    }
  } catch (const std::exception& failure) {
    ctx.fail(kLaunchOutOfResources, failure.what());
  }
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
