// The building blocks of the CUDA attention kernels (sm_80 and later): the tensor-core instruction
// mma.sync m16n8k16 (bf16/fp16 in, fp32 accumulate), ldmatrix fragment loads, cp.async tile copies into
// XOR-swizzled shared memory, and the fast base-2 exponential.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4·g + t:
//   A 16×16 (row-major): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16×8  (B[k][n]):   b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C 16×8:              c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace attn::cuda::detail {

// Packs two floats into the element type's pair (first in the low half).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// c[16×8] += a[16×16] · b[16×8]
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8×8 matrices of 16-bit elements; lanes 8·m .. 8·m+7 give matrix m's row addresses.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// The same, each matrix transposed: lane 4·g + t receives M[2t][g], M[2t+1][g].
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global → shared, asynchronous; `valid` false writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// 2^x (ex2.approx: relative error ~2⁻²², 2^−inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// A [rows, kCols] tile of 16-bit elements in shared memory, 16-byte chunks XOR-swizzled by row so that the eight
// rows an ldmatrix reads (and the chunks a warp's cp.async writes) fall in different banks.
template <int kCols>
struct SwizzledTile {
  static_assert(kCols % 64 == 0, "a row must hold at least 8 chunks of 16 bytes");
  static constexpr int kChunks = kCols / 8;
  static constexpr int kRowBytes = kCols * 2;
  // element offset of chunk `chunk` (8 elements) of row `row`
  __device__ __forceinline__ static int offset(int row, int chunk) { return row * kCols + ((chunk ^ (row & 7)) << 3); }
  // ldmatrix addressing without a register per (row, chunk): a lane's part of the byte offset, for a lane that reads
  // row r (< 16) at chunk c (0 or 1) of a 16-row, 2-chunk block; the block at row `row0` (a multiple of 8) and even
  // chunk `chunk0` is then at lane_part ^ (chunk0 << 4) + row0 · kRowBytes (the XOR only touches the chunk bits).
  __device__ __forceinline__ static uint32_t lane_part(int r, int c) { return r * kRowBytes + ((c ^ (r & 7)) << 4); }
  __device__ __forceinline__ static uint32_t address(uint32_t base, uint32_t lane, int row0, int chunk0) {
    return base + row0 * kRowBytes + (lane ^ (chunk0 << 4));
  }
};

// The three lane patterns of an ldmatrix.x4 over a 16 × 16 block (rows r, chunks c):
//   A:  the A operand (16 rows × k 16):                     r = lane % 16,                 c = lane / 16
//   B:  two 8-column B operands, rows = n (non-transposed):  r = 8·(lane / 16) + lane % 8,  c = (lane / 8) % 2
//   Bt: two 8-column B operands, rows = k (transposed):      r = 8·((lane / 8) % 2) + lane % 8, c = lane / 16
template <int kCols>
struct LaneParts {
  uint32_t a, b, bt;
  __device__ __forceinline__ explicit LaneParts(int lane)
      : a(SwizzledTile<kCols>::lane_part(lane % 16, lane / 16)),
        b(SwizzledTile<kCols>::lane_part(8 * (lane / 16) + lane % 8, (lane / 8) % 2)),
        bt(SwizzledTile<kCols>::lane_part(8 * ((lane / 8) % 2) + lane % 8, lane / 16)) {}
};

// Copies rows [row0, row0 + kRows) of a [*, kCols] global matrix (row stride `ld` elements) into a swizzled
// tile; rows at or past `rows_end`, and rows r with hidden[r] set (a key-padding row: K and V of padding keys,
// which may hold anything, NaN included, never reach a product), become zeros. All kThreads threads call it; the
// caller commits.
template <int kRows, int kCols, int kThreads, typename T>
__device__ __forceinline__ void load_tile_async(T* tile, const T* g, int64_t ld, int row0, int rows_end, int tid,
                                                const uint8_t* hidden = nullptr) {
  constexpr int kChunks = kCols / 8;
  const uint32_t base = smem_u32(tile);
  constexpr int kSteps = (kRows * kChunks + kThreads - 1) / kThreads;
#pragma unroll
  for (int step = 0; step < kSteps; ++step) {
    const int c = tid + step * kThreads;
    if (kRows * kChunks % kThreads != 0 && c >= kRows * kChunks) break;
    const int r = c / kChunks, ch = c % kChunks;
    const bool valid = row0 + r < rows_end && (hidden == nullptr || !hidden[row0 + r]);
    const T* src = valid ? g + (row0 + r) * ld + ch * 8 : g;
    cp_async_16(base + 2u * SwizzledTile<kCols>::offset(r, ch), src, valid);
  }
}

// Quad (the 4 lanes sharing an accumulator row) reductions.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Is key j visible to query i under the causal/window range and the key-padding mask? (j < Lk assumed checked.)
struct MaskRule {
  bool causal;
  int offset, window;
  const uint8_t* pad;  // this batch's [Lk] row, or null
  __device__ __forceinline__ bool visible(int i, int j) const {
    if (pad != nullptr && pad[j]) return false;
    if (!causal) return true;
    const int last = i + offset;
    return j <= last && (window <= 0 || j > last - window);
  }
};

}  // namespace attn::cuda::detail
