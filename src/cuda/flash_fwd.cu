// The forward kernel: FlashAttention-2 on mma.sync tensor cores. One CTA computes kBr query rows of one (b, h),
// each of its warps 16·kMTiles rows, streaming the keys in tiles of kBc with an online softmax in registers:
//   S = Q·Kᵀ (scores, base 2: scale·log2 e)  →  mask  →  m = rowmax, P = 2^(S − m), l += rowsum P  →  O += P·V
// and at the end O /= l, lse = (m + log2 l)·ln 2. K and V tiles arrive through a ring of shared-memory slots
// (cp.async), step t + 1's while step t computes.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/flash_common.cuh"
#include "cuda/flash_params.h"

namespace attn::cuda::detail {
namespace {

// Tile sizes (flash-attention's kernel traits): kBr query rows, kBc keys per step, kWarps warps, kMinBlocks CTAs per
// multiprocessor the registers are budgeted for. kStages: 1 = one K and one V buffer (V[t] copied during S of
// step t, K[t + 1] during P·V, two barriers a step); n ≥ 2 = n K/V buffers in a ring (the copies of step t + n − 1
// are issued at step t and run during n − 1 steps, one barrier a step). kLazyRescale: O is rescaled only when some
// row of the warp has a new maximum.
// The ATTN_FWD* macros exist for bench/cuda_tile_sweep.sh (a variant defines a head size's whole group); the
// defaults are what it chose on an H200 (docs/performance/gpu.md).
#ifndef ATTN_FWD64_BR
#define ATTN_FWD64_BR 128
#define ATTN_FWD64_BC 64
#define ATTN_FWD64_WARPS 4
#define ATTN_FWD64_MINB 1
#define ATTN_FWD64_LAZY 0
#endif
#ifndef ATTN_FWD128_BR
#define ATTN_FWD128_BR 128
#define ATTN_FWD128_BC 32
#define ATTN_FWD128_WARPS 4
#define ATTN_FWD128_MINB 1
#define ATTN_FWD128_LAZY 1
#endif
#ifndef ATTN_FWD_STAGES
#define ATTN_FWD_STAGES 2
#endif
template <int kD>
struct FwdTraits;
template <>
struct FwdTraits<64> {
  static constexpr int kBr = ATTN_FWD64_BR, kBc = ATTN_FWD64_BC, kWarps = ATTN_FWD64_WARPS;
  static constexpr int kMinBlocks = ATTN_FWD64_MINB, kStages = ATTN_FWD_STAGES;
  static constexpr bool kLazyRescale = ATTN_FWD64_LAZY;
};
template <>
struct FwdTraits<128> {
  static constexpr int kBr = ATTN_FWD128_BR, kBc = ATTN_FWD128_BC, kWarps = ATTN_FWD128_WARPS;
  static constexpr int kMinBlocks = ATTN_FWD128_MINB, kStages = ATTN_FWD_STAGES;
  static constexpr bool kLazyRescale = ATTN_FWD128_LAZY;
};

template <typename T, int kD>
constexpr int fwd_smem_bytes() {
  using Tr = FwdTraits<kD>;
  return (Tr::kBr + 2 * Tr::kStages * Tr::kBc) * kD * 2;
}

// x[0] = reduce(x[0 .. n)) pairwise (log2 n dependent steps); n a power of two
template <int kN, typename Op>
__device__ __forceinline__ float tree_reduce(float (&x)[kN], Op op) {
#pragma unroll
  for (int w = kN / 2; w >= 1; w /= 2)
#pragma unroll
    for (int i = 0; i < w; ++i) x[i] = op(x[i], x[i + w]);
  return x[0];
}

template <typename T, int kD>
__global__ void __launch_bounds__(FwdTraits<kD>::kWarps * 32, FwdTraits<kD>::kMinBlocks)
    flash_fwd_kernel(const FlashParams p) {
  using Tr = FwdTraits<kD>;
  constexpr int kBr = Tr::kBr, kBc = Tr::kBc, kWarps = Tr::kWarps, kThreads = kWarps * 32, kStages = Tr::kStages;
  constexpr int kMTiles = kBr / (16 * kWarps);  // 16-row tiles per warp
  constexpr int kNTiles = kBc / 8;              // 8-key score tiles
  constexpr int kDTiles = kD / 8;               // 8-column output tiles
  using Tile = SwizzledTile<kD>;

  extern __shared__ __align__(128) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);  // sQ: [kBr, D]
  T* sK = sQ + kBr * kD;               // sK: [kStages][kBc, D]
  T* sV = sK + kStages * kBc * kD;     // sV: [kStages][kBc, D]

  const int m_block = gridDim.x - 1 - blockIdx.x;  // the longest causal rows first
  const int h = blockIdx.y, b = blockIdx.z, hk = h / p.group;
  const int m0 = m_block * kBr;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;

  const T* q = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;   // q: [Lq, D]
  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh;  // k: [Lk, D]
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh;  // v: [Lk, D]
  const MaskRule rule{p.causal, p.offset, p.window,
                      p.key_padding ? p.key_padding + static_cast<int64_t>(b) * p.Lk : nullptr};

  // The keys any of this CTA's rows can see: [key_lo, key_hi).
  const int last_row = min(m0 + kBr, p.Lq) - 1;
  int key_lo = 0, key_hi = p.Lk;
  if (p.causal) {
    key_hi = max(0, min(p.Lk, last_row + p.offset + 1));
    if (p.window > 0) key_lo = max(0, m0 + p.offset - p.window + 1);
  }
  const int tile_lo = key_lo / kBc, tile_hi = key_lo < key_hi ? (key_hi + kBc - 1) / kBc : tile_lo;

  // Copies step `tile`'s K (and, with a ring, V) into ring slot `slot`.
  auto load_kv = [&](int tile, int slot) {
    load_tile_async<kBc, kD, kThreads>(sK + slot * kBc * kD, k, p.k_sl, tile * kBc, p.Lk, tid, rule.pad);
    if constexpr (kStages >= 2)
      load_tile_async<kBc, kD, kThreads>(sV + slot * kBc * kD, v, p.v_sl, tile * kBc, p.Lk, tid, rule.pad);
  };
  load_tile_async<kBr, kD, kThreads>(sQ, q, p.q_sl, m0, p.Lq, tid);
  if (tile_lo < tile_hi) load_kv(tile_lo, 0);
  cp_async_commit();
  // the ring's first kStages − 1 steps, one commit group each (empty groups past the end keep the count uniform)
#pragma unroll
  for (int ahead = 1; ahead < kStages - 1; ++ahead) {
    if (tile_lo + ahead < tile_hi) load_kv(tile_lo + ahead, ahead);
    cp_async_commit();
  }

  float acc_o[kMTiles][kDTiles][4];
  float row_max[kMTiles][2], row_sum[kMTiles][2];  // row g and g + 8 of each tile; sums are this lane's share
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] = 0.0f;
    row_max[mt][0] = row_max[mt][1] = -INFINITY;
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }
  const uint32_t sQ_u = smem_u32(sQ);
  const int warp_row0 = warp * 16 * kMTiles;
  const LaneParts<kD> lp(lane);

  for (int tile = tile_lo; tile < tile_hi; ++tile) {
    const int n0 = tile * kBc, slot = kStages >= 2 ? (tile - tile_lo) % kStages : 0;
    const uint32_t sK_u = smem_u32(sK + slot * kBc * kD), sV_u = smem_u32(sV + slot * kBc * kD);
    cp_async_wait<kStages >= 2 ? kStages - 2 : 0>();
    __syncthreads();  // K[tile] (and V[tile] with a ring) is in; every warp is done with step tile − 1
    if constexpr (kStages >= 2) {
      const int ahead = tile + kStages - 1;  // into the slot step tile − 1 used
      if (ahead < tile_hi) load_kv(ahead, (ahead - tile_lo) % kStages);
    } else {
      load_tile_async<kBc, kD, kThreads>(sV, v, p.v_sl, n0, p.Lk, tid, rule.pad);
    }
    cp_async_commit();

    // S = Q·Kᵀ   s: [kMTiles][kNTiles] tiles of 16×8
    float s[kMTiles][kNTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) ldmatrix_x4(a[mt], Tile::address(sQ_u, lp.a, warp_row0 + mt * 16, 2 * ks));
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        uint32_t bk[4];  // keys np·16 .. +15: b0, b1 of tile 2np, then of tile 2np + 1
        ldmatrix_x4(bk, Tile::address(sK_u, lp.b, np * 16, 2 * ks));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816<T>(s[mt][2 * np], a[mt], bk[0], bk[1]);
          mma_16816<T>(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
        }
      }
    }

    // Mask: only tiles at the sequence's end, on the causal/window boundary, or with key padding.
    const bool needs_mask =
        n0 + kBc > p.Lk || rule.pad != nullptr ||
        (p.causal && (n0 + kBc - 1 > m0 + p.offset || (p.window > 0 && n0 <= last_row + p.offset - p.window)));
    if (needs_mask) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int i = m0 + warp_row0 + mt * 16 + g + 8 * (e / 2), j = n0 + nt * 8 + 2 * t4 + e % 2;
            if (j >= p.Lk || !rule.visible(i, j)) s[mt][nt][e] = -INFINITY;
          }
    }

    // Online softmax, base 2: m = max(m, rowmax S·scale·log2 e), P = 2^(S·scale·log2 e − m), l = l·α + rowsum P
    float alpha[kMTiles][2];
    bool new_max = false;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float part[kNTiles];
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) part[nt] = fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]);
        const float mx = quad_max(tree_reduce(part, [](float x, float y) { return fmaxf(x, y); })) * p.scale_log2;
        const float m_new = fmaxf(row_max[mt][half], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with nothing visible yet stays at 0
        new_max |= m_new != row_max[mt][half];
        alpha[mt][half] = fast_exp2(row_max[mt][half] - m_use);  // exactly 1 when the maximum did not move
        row_max[mt][half] = m_new;
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          s[mt][nt][2 * half] = fast_exp2(fmaf(s[mt][nt][2 * half], p.scale_log2, -m_use));
          s[mt][nt][2 * half + 1] = fast_exp2(fmaf(s[mt][nt][2 * half + 1], p.scale_log2, -m_use));
          part[nt] = s[mt][nt][2 * half] + s[mt][nt][2 * half + 1];
        }
        row_sum[mt][half] =
            row_sum[mt][half] * alpha[mt][half] + tree_reduce(part, [](float x, float y) { return x + y; });
      }
    if (!Tr::kLazyRescale || __any_sync(0xffffffffu, new_max)) {
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc_o[mt][dt][e] *= alpha[mt][e / 2];
    }

    if constexpr (kStages == 1) {
      cp_async_wait<0>();
      __syncthreads();  // V[tile] is in; every warp is done with K[tile]
      if (tile + 1 < tile_hi) load_tile_async<kBc, kD, kThreads>(sK, k, p.k_sl, n0 + kBc, p.Lk, tid, rule.pad);
      cp_async_commit();
    }

    // O += P·V: P from the score registers (C layout → A layout), V by transposed ldmatrix.
#pragma unroll
    for (int ks = 0; ks < kBc / 16; ++ks) {
      uint32_t a[kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        a[mt][0] = pack2<T>(s[mt][2 * ks][0], s[mt][2 * ks][1]);
        a[mt][1] = pack2<T>(s[mt][2 * ks][2], s[mt][2 * ks][3]);
        a[mt][2] = pack2<T>(s[mt][2 * ks + 1][0], s[mt][2 * ks + 1][1]);
        a[mt][3] = pack2<T>(s[mt][2 * ks + 1][2], s[mt][2 * ks + 1][3]);
      }
#pragma unroll
      for (int dp = 0; dp < kDTiles / 2; ++dp) {
        uint32_t bv[4];  // b0, b1 of d tile 2dp, then of 2dp + 1
        ldmatrix_x4_trans(bv, Tile::address(sV_u, lp.bt, ks * 16, 2 * dp));
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
          mma_16816<T>(acc_o[mt][2 * dp], a[mt], bv[0], bv[1]);
          mma_16816<T>(acc_o[mt][2 * dp + 1], a[mt], bv[2], bv[3]);
        }
      }
    }
  }
  cp_async_wait<0>();

  // Epilogue: O /= l (0 for a row with nothing visible), lse = (m + log2 l) · ln 2.
  T* o = static_cast<T*>(p.o) + b * p.o_sb + h * p.o_sh;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const float l = quad_sum(row_sum[mt][half]);
      const int i = m0 + warp_row0 + mt * 16 + g + 8 * half;
      if (i >= p.Lq) continue;
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      T* orow = o + i * p.o_sl;
#pragma unroll
      for (int dt = 0; dt < kDTiles; ++dt)
        *reinterpret_cast<uint32_t*>(orow + dt * 8 + 2 * t4) =
            pack2<T>(acc_o[mt][dt][2 * half] * inv, acc_o[mt][dt][2 * half + 1] * inv);
      if (p.lse != nullptr && t4 == 0)
        p.lse[(static_cast<int64_t>(b) * p.H + h) * p.Lq + i] =
            l > 0.0f ? (row_max[mt][half] + __log2f(l)) * 0.69314718055994531f : -INFINITY;
    }
}

template <typename T, int kD>
int launch_forward(const FlashParams& p) {
  using Tr = FwdTraits<kD>;
  constexpr int smem = fwd_smem_bytes<T, kD>();
  auto kernel = flash_fwd_kernel<T, kD>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.Lq + Tr::kBr - 1) / Tr::kBr, p.H, p.B);
  kernel<<<grid, Tr::kWarps * 32, smem, static_cast<cudaStream_t>(p.stream)>>>(p);
  return cudaGetLastError();
}

}  // namespace

int flash_forward_smem_bytes(int D) { return D == 64 ? fwd_smem_bytes<__half, 64>() : fwd_smem_bytes<__half, 128>(); }

int flash_forward(const FlashParams& p, bool bf16) {
  if (p.D == 64) return bf16 ? launch_forward<__nv_bfloat16, 64>(p) : launch_forward<__half, 64>(p);
  return bf16 ? launch_forward<__nv_bfloat16, 128>(p) : launch_forward<__half, 128>(p);
}

}  // namespace attn::cuda::detail
