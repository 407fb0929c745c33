// Stands in for CUDA's cooperative groups: the thread block and its tiles of up to 32 lanes
// (a warp's lanes meet at their operations, see gpupool_emu.h's FiberTeam). Grid-wide groups
// have no meaning on the emulator and are refused before compiling.
#ifndef GPUPOOL_EMU_COOPERATIVE_GROUPS_H
#define GPUPOOL_EMU_COOPERATIVE_GROUPS_H
#include "../gpupool_emu.h"

#ifndef GPUPOOL_EMU_SCAN
namespace cooperative_groups {

namespace details {
inline unsigned linear_rank() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
}  // namespace details

class thread_block {
 public:
  void sync() const { __syncthreads(); }
  unsigned long long thread_rank() const { return details::linear_rank(); }
  unsigned long long size() const { return 1ull * blockDim.x * blockDim.y * blockDim.z; }
  unsigned long long num_threads() const { return size(); }
  dim3 group_index() const { return dim3(blockIdx.x, blockIdx.y, blockIdx.z); }
  dim3 thread_index() const { return dim3(threadIdx.x, threadIdx.y, threadIdx.z); }
  dim3 group_dim() const { return blockDim; }
  dim3 dim_threads() const { return blockDim; }
};

inline thread_block this_thread_block() { return thread_block(); }
inline void sync(const thread_block& block) { block.sync(); }

template <unsigned Size>
class thread_block_tile {
  static_assert(Size > 0 && Size <= 32 && (Size & (Size - 1)) == 0,
                "tiles of a power of two lanes, at most 32");

 public:
  // The lanes of this tile, as a mask over the warp.
  unsigned mask() const {
    const unsigned bits = Size == 32 ? 0xffffffffu : ((1u << Size) - 1);
    return bits << (details::linear_rank() % 32 / Size * Size);
  }
  void sync() const { __syncwarp(mask()); }
  unsigned thread_rank() const { return details::linear_rank() % Size; }
  static constexpr unsigned size() { return Size; }
  static constexpr unsigned num_threads() { return Size; }
  unsigned meta_group_rank() const { return details::linear_rank() / Size; }
  unsigned meta_group_size() const {
    return static_cast<unsigned>((thread_block().size() + Size - 1) / Size);
  }
  template <class T>
  T shfl(T var, int src) const { return __shfl_sync(mask(), var, src, Size); }
  template <class T>
  T shfl_up(T var, unsigned delta) const { return __shfl_up_sync(mask(), var, delta, Size); }
  template <class T>
  T shfl_down(T var, unsigned delta) const { return __shfl_down_sync(mask(), var, delta, Size); }
  template <class T>
  T shfl_xor(T var, int lane_mask) const { return __shfl_xor_sync(mask(), var, lane_mask, Size); }
  int any(int predicate) const { return __ballot_sync(mask(), predicate) != 0; }
  int all(int predicate) const { return __ballot_sync(mask(), predicate) == (mask() & __activemask()); }
  unsigned ballot(int predicate) const {
    return (__ballot_sync(mask(), predicate) & mask()) >> (details::linear_rank() % 32 / Size * Size);
  }
};

template <unsigned Size, class Parent>
thread_block_tile<Size> tiled_partition(const Parent&) {
  return thread_block_tile<Size>();
}

template <class T>
struct plus {
  T operator()(const T& a, const T& b) const { return a + b; }
};
template <class T>
struct less {
  T operator()(const T& a, const T& b) const { return b < a ? b : a; }
};
template <class T>
struct greater {
  T operator()(const T& a, const T& b) const { return a < b ? b : a; }
};
template <class T>
struct bit_and {
  T operator()(const T& a, const T& b) const { return a & b; }
};
template <class T>
struct bit_or {
  T operator()(const T& a, const T& b) const { return a | b; }
};
template <class T>
struct bit_xor {
  T operator()(const T& a, const T& b) const { return a ^ b; }
};

// cg::reduce over a tile: every lane gets the reduction of the tile's values.
template <unsigned Size, class T, class Op>
T reduce(const thread_block_tile<Size>& tile, T value, Op op) {
  for (unsigned offset = Size / 2; offset > 0; offset /= 2) {
    value = op(value, tile.shfl_xor(value, static_cast<int>(offset)));
  }
  return value;
}

}  // namespace cooperative_groups
#endif  // GPUPOOL_EMU_SCAN
#endif  // GPUPOOL_EMU_COOPERATIVE_GROUPS_H
