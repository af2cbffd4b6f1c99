// The backward kernels: FlashAttention-2's backward on mma.sync tensor cores, in three named steps.
//   1. bwd_preprocess:  Δ_i = Σ_d dO_id · O_id                                     (one warp per row)
//   2. flash_bwd_kernel: one CTA per kBc keys of one (b, kv head), looping over the query heads of its group and
//      their query tiles of kBr rows; each warp owns 16 keys and keeps their dK, dV in registers:
//        Sᵀ = K·Qᵀ → Pᵀ = 2^(Sᵀ·scale·log2 e − lse·log2 e)   (the forward's weights, recomputed)
//        dV += Pᵀ·dO;   dPᵀ = V·dOᵀ;   dSᵀ = Pᵀ ∘ (dPᵀ − Δ);   dK += dSᵀ·Q
//        dQ += dS·K  through shared memory (dSᵀ of all warps) and float32 atomics into a workspace
//      so GQA's dK/dV are summed over the group inside the CTA, without atomics or copies.
//   3. bwd_convert_dq:  dq = scale · dq_accum in the element type.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/flash_common.cuh"
#include "cuda/flash_params.h"

namespace attn::cuda::detail {
namespace {

// Tile sizes: kWarps warps of 16 keys each (kBc keys per CTA), kBr queries per step. The ATTN_BWD_* macros exist for
// bench/cuda_tile_sweep.sh.
#ifndef ATTN_BWD_WARPS
#define ATTN_BWD_WARPS 8
#define ATTN_BWD_BR 64
#endif
template <int kD>
struct BwdTraits {
  static constexpr int kWarps = ATTN_BWD_WARPS, kBc = 16 * kWarps, kBr = ATTN_BWD_BR;
  // the dQ product's warp grid: kDqRowWarps × kDqColWarps over [kBr, D]
  static constexpr int kDqRowWarps = kBr / 16, kDqColWarps = kWarps / kDqRowWarps;
};

template <int kD>
constexpr int bwd_smem_bytes() {
  using Tr = BwdTraits<kD>;
  return (2 * Tr::kBc * kD + 4 * Tr::kBr * kD + Tr::kBc * Tr::kBr) * 2 + 4 * Tr::kBr * 4;
}

// Δ_i = Σ_d dO_id · O_id   delta: [B, H, Lq]
template <typename T, int kD>
__global__ void bwd_preprocess(const FlashParams p) {
  const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= p.B * p.H * p.Lq) return;
  const int i = row % p.Lq, bh = row / p.Lq, h = bh % p.H, b = bh / p.H;
  const T* o = static_cast<const T*>(p.out) + b * p.out_sb + h * p.out_sh + i * p.out_sl;
  const T* d = static_cast<const T*>(p.d_out) + b * p.do_sb + h * p.do_sh + i * p.do_sl;
  float acc = 0.0f;
#pragma unroll
  for (int c = lane; c < kD; c += 32) acc += static_cast<float>(o[c]) * static_cast<float>(d[c]);
#pragma unroll
  for (int s = 16; s > 0; s /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, s);
  if (lane == 0) p.delta[row] = acc;
}

template <typename T, int kD>
__global__ void bwd_convert_dq(const FlashParams p) {
  const int64_t n = static_cast<int64_t>(p.B) * p.H * p.Lq * kD;
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < n;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = x % kD;
    const int64_t row = x / kD;
    const int i = row % p.Lq, bh = row / p.Lq, h = bh % p.H, b = bh / p.H;
    static_cast<T*>(p.dq)[b * p.dq_sb + h * p.dq_sh + i * p.dq_sl + d] = T(p.dq_accum[x] * p.scale);
  }
}

// The warp-level products the backward is made of (each warp owns 16 rows of its result):
// acc[16 × 8·kN8] = A[row0 .. row0 + 16, 0 .. kK) · B[0 .. 8·kN8, 0 .. kK)ᵀ, A and B swizzled [*, kK] tiles in shared
// memory (Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ).
template <typename T, int kK, int kN8>
__device__ __forceinline__ void warp_gemm_abt(float (&acc)[kN8][4], uint32_t a_tile, uint32_t b_tile,
                                              const LaneParts<kK>& lp, int row0) {
  using Tile = SwizzledTile<kK>;
#pragma unroll
  for (int nt = 0; nt < kN8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;
#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks) {
    uint32_t a[4];
    ldmatrix_x4(a, Tile::address(a_tile, lp.a, row0, 2 * ks));
#pragma unroll
    for (int np = 0; np < kN8 / 2; ++np) {
      uint32_t bt[4];
      ldmatrix_x4(bt, Tile::address(b_tile, lp.b, np * 16, 2 * ks));
      mma_16816<T>(acc[2 * np], a, bt[0], bt[1]);
      mma_16816<T>(acc[2 * np + 1], a, bt[2], bt[3]);
    }
  }
}

// acc[16 × kN] += P[16 × kK] · B[0 .. kK, 0 .. kN): P in accumulator registers (C layout, packed into A operands),
// B a swizzled row-major [kK, kN] tile read by transposed ldmatrix (dV += Pᵀ·dO and dK += dSᵀ·Q). After each
// 16-column step of P, each_step(ks, a) sees the packed operand (the dK product stores dSᵀ from it).
template <typename T, int kK, int kN, typename F>
__device__ __forceinline__ void warp_gemm_pb(float (&acc)[kN / 8][4], const float (&pm)[kK / 8][4], uint32_t b_tile,
                                             const LaneParts<kN>& lp, F&& each_step) {
  using Tile = SwizzledTile<kN>;
#pragma unroll
  for (int ks = 0; ks < kK / 16; ++ks) {
    uint32_t a[4] = {pack2<T>(pm[2 * ks][0], pm[2 * ks][1]), pack2<T>(pm[2 * ks][2], pm[2 * ks][3]),
                     pack2<T>(pm[2 * ks + 1][0], pm[2 * ks + 1][1]), pack2<T>(pm[2 * ks + 1][2], pm[2 * ks + 1][3])};
#pragma unroll
    for (int dp = 0; dp < kN / 16; ++dp) {
      uint32_t bt[4];
      ldmatrix_x4_trans(bt, Tile::address(b_tile, lp.bt, ks * 16, 2 * dp));
      mma_16816<T>(acc[2 * dp], a, bt[0], bt[1]);
      mma_16816<T>(acc[2 * dp + 1], a, bt[2], bt[3]);
    }
    each_step(ks, a);
  }
}

template <typename T, int kD>
__global__ void __launch_bounds__(BwdTraits<kD>::kWarps * 32, 1) flash_bwd_kernel(const FlashParams p) {
  using Tr = BwdTraits<kD>;
  constexpr int kBr = Tr::kBr, kBc = Tr::kBc, kWarps = Tr::kWarps, kThreads = kWarps * 32;
  constexpr int kQTiles = kBr / 8;  // 8-query tiles of Sᵀ
  constexpr int kDTiles = kD / 8;   // 8-column tiles of dK, dV
  using Tile = SwizzledTile<kD>;
  using STile = SwizzledTile<kBr>;  // dSᵀ: [kBc keys, kBr queries]

  extern __shared__ __align__(128) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);                       // sK: [kBc, D]
  T* sV = sK + kBc * kD;                                    // sV: [kBc, D]
  T* sQ = sV + kBc * kD;                                    // sQ: [2][kBr, D]  (double-buffered)
  T* sdO = sQ + 2 * kBr * kD;                               // sdO: [2][kBr, D]
  T* sdS = sdO + 2 * kBr * kD;                              // sdS: [kBc, kBr]  dSᵀ
  float* sLse = reinterpret_cast<float*>(sdS + kBc * kBr);  // sLse: [2][kBr]  lse·log2 e (+inf: no weight)
  float* sDelta = sLse + 2 * kBr;                           // sDelta: [2][kBr]

  const int n_block = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int n0 = n_block * kBc;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
  const MaskRule rule{p.causal, p.offset, p.window,
                      p.key_padding ? p.key_padding + static_cast<int64_t>(b) * p.Lk : nullptr};

  const T* k = static_cast<const T*>(p.k) + b * p.k_sb + hk * p.k_sh;
  const T* v = static_cast<const T*>(p.v) + b * p.v_sb + hk * p.v_sh;
  load_tile_async<kBc, kD, kThreads>(sK, k, p.k_sl, n0, p.Lk, tid, rule.pad);
  load_tile_async<kBc, kD, kThreads>(sV, v, p.v_sl, n0, p.Lk, tid, rule.pad);

  // The queries that see any of these keys: [q_lo, q_hi).
  const int last_key = min(n0 + kBc, p.Lk) - 1;
  int q_lo = 0, q_hi = p.Lq;
  if (p.causal) {
    q_lo = max(0, n0 - p.offset);
    if (p.window > 0) q_hi = max(0, min(p.Lq, last_key - p.offset + p.window));
  }
  const int blk_lo = q_lo / kBr, blk_hi = q_lo < q_hi ? (q_hi + kBr - 1) / kBr : blk_lo;
  const int blocks = blk_hi - blk_lo, steps = blocks * p.group;

  // Copies step `it`'s query tile (Q, dO async; lse, Δ by plain loads) into buffer `buf`.
  auto load_queries = [&](int it, int buf) {
    const int h = hk * p.group + it / blocks, q0 = (blk_lo + it % blocks) * kBr;
    const T* q = static_cast<const T*>(p.q) + b * p.q_sb + h * p.q_sh;
    const T* d = static_cast<const T*>(p.d_out) + b * p.do_sb + h * p.do_sh;
    load_tile_async<kBr, kD, kThreads>(sQ + buf * kBr * kD, q, p.q_sl, q0, p.Lq, tid);
    load_tile_async<kBr, kD, kThreads>(sdO + buf * kBr * kD, d, p.do_sl, q0, p.Lq, tid);
    const int64_t row0 = (static_cast<int64_t>(b) * p.H + h) * p.Lq;
    if (tid < kBr) {
      const int i = q0 + tid;
      const float l = i < p.Lq ? p.lse[row0 + i] : -INFINITY;
      sLse[buf * kBr + tid] = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
    } else if (tid < 2 * kBr) {
      const int i = q0 + tid - kBr;
      sDelta[buf * kBr + tid - kBr] = i < p.Lq ? p.delta[row0 + i] : 0.0f;
    }
  };
  if (steps > 0) load_queries(0, 0);
  cp_async_commit();

  float acc_dk[kDTiles][4], acc_dv[kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < kDTiles; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[dt][e] = acc_dv[dt][e] = 0.0f;

  const uint32_t sK_u = smem_u32(sK), sV_u = smem_u32(sV), sdS_u = smem_u32(sdS);
  const int key_row = warp * 16;  // this warp's keys within the tile
  const LaneParts<kD> lp(lane);
  const LaneParts<kBr> lps(lane);
  const int dq_row = (warp % Tr::kDqRowWarps) * 16, dq_col = (warp / Tr::kDqRowWarps) * (kD / Tr::kDqColWarps);

  for (int it = 0; it < steps; ++it) {
    const int buf = it & 1;
    const int h = hk * p.group + it / blocks, q0 = (blk_lo + it % blocks) * kBr;
    if (it + 1 < steps) load_queries(it + 1, buf ^ 1);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();  // this step's Q, dO, lse, Δ are in
    const uint32_t sQ_u = smem_u32(sQ + buf * kBr * kD), sdO_u = smem_u32(sdO + buf * kBr * kD);
    const float* lse2 = sLse + buf * kBr;
    const float* delta = sDelta + buf * kBr;

    // Sᵀ = K·Qᵀ   s: [kQTiles] tiles of 16 keys × 8 queries
    float s[kQTiles][4];
    warp_gemm_abt<T, kD, kQTiles>(s, sK_u, sQ_u, lp, key_row);
    // Pᵀ = 2^(Sᵀ·scale·log2 e − lse·log2 e), 0 where hidden
    const bool needs_mask =
        n0 + kBc > p.Lk || rule.pad != nullptr ||
        (p.causal && (n0 + kBc - 1 > q0 + p.offset || (p.window > 0 && n0 <= q0 + kBr - 1 + p.offset - p.window)));
#pragma unroll
    for (int nt = 0; nt < kQTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int qi = nt * 8 + 2 * t4 + e % 2;
        float pe = fast_exp2(fmaf(s[nt][e], p.scale_log2, -lse2[qi]));
        if (needs_mask) {
          const int j = n0 + key_row + g + 8 * (e / 2);
          if (j >= p.Lk || !rule.visible(q0 + qi, j)) pe = 0.0f;
        }
        s[nt][e] = pe;
      }
    // dV += Pᵀ·dO   (B = dO[query][d])
    warp_gemm_pb<T, kBr, kD>(acc_dv, s, sdO_u, lp, [](int, const uint32_t(&)[4]) {});
    // dPᵀ = V·dOᵀ
    float dp_acc[kQTiles][4];
    warp_gemm_abt<T, kD, kQTiles>(dp_acc, sV_u, sdO_u, lp, key_row);
    // dSᵀ = Pᵀ ∘ (dPᵀ − Δ) (in units of the scores before scaling; dK and dQ take the scale at the end)
#pragma unroll
    for (int nt = 0; nt < kQTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] *= dp_acc[nt][e] - delta[nt * 8 + 2 * t4 + e % 2];
    // dK += dSᵀ·Q   (B = Q[query][d]), storing this warp's dSᵀ rows for dQ on the way: rows key_row + g (+8),
    // queries 16ks + 2t4 (+8)
    warp_gemm_pb<T, kBr, kD>(acc_dk, s, sQ_u, lp, [&](int ks, const uint32_t(&a)[4]) {
      T* r0 = sdS + STile::offset(key_row + g, 2 * ks) + 2 * t4;
      T* r1 = sdS + STile::offset(key_row + g + 8, 2 * ks) + 2 * t4;
      T* r2 = sdS + STile::offset(key_row + g, 2 * ks + 1) + 2 * t4;
      T* r3 = sdS + STile::offset(key_row + g + 8, 2 * ks + 1) + 2 * t4;
      *reinterpret_cast<uint32_t*>(r0) = a[0];
      *reinterpret_cast<uint32_t*>(r1) = a[1];
      *reinterpret_cast<uint32_t*>(r2) = a[2];
      *reinterpret_cast<uint32_t*>(r3) = a[3];
    });
    __syncthreads();  // dSᵀ of every warp is in

    // dQ[q0 + dq_row .. +16, dq_col .. + D/kDqColWarps] += dS·K   (A = dS by transposed ldmatrix of dSᵀ)
    constexpr int kQdTiles = kD / Tr::kDqColWarps / 8;
    float acc_dq[kQdTiles][4];
#pragma unroll
    for (int dt = 0; dt < kQdTiles; ++dt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_dq[dt][e] = 0.0f;
#pragma unroll
    for (int ks = 0; ks < kBc / 16; ++ks) {
      uint32_t a[4];
      ldmatrix_x4_trans(a, STile::address(sdS_u, lps.b, ks * 16, dq_row / 8));
#pragma unroll
      for (int dp = 0; dp < kQdTiles / 2; ++dp) {
        uint32_t bk[4];
        ldmatrix_x4_trans(bk, Tile::address(sK_u, lp.bt, ks * 16, dq_col / 8 + 2 * dp));
        mma_16816<T>(acc_dq[2 * dp], a, bk[0], bk[1]);
        mma_16816<T>(acc_dq[2 * dp + 1], a, bk[2], bk[3]);
      }
    }
    float* dq = p.dq_accum + ((static_cast<int64_t>(b) * p.H + h) * p.Lq) * kD;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int i = q0 + dq_row + g + 8 * half;
      if (i < p.Lq) {
#pragma unroll
        for (int dt = 0; dt < kQdTiles; ++dt) {
          float* dst = dq + static_cast<int64_t>(i) * kD + dq_col + dt * 8 + 2 * t4;
#if __CUDA_ARCH__ >= 900  // one vector atomic for the pair: +17% backward on an H200
          atomicAdd(reinterpret_cast<float2*>(dst), make_float2(acc_dq[dt][2 * half], acc_dq[dt][2 * half + 1]));
#else
          atomicAdd(dst, acc_dq[dt][2 * half]);
          atomicAdd(dst + 1, acc_dq[dt][2 * half + 1]);
#endif
        }
      }
    }
    __syncthreads();  // every warp is done with this step's buffers and dSᵀ
  }
  cp_async_wait<0>();

  // dK = scale · Σ dSᵀ·Q, dV = Σ Pᵀ·dO, for the keys inside the sequence
  T* dk = static_cast<T*>(p.dk) + b * p.dk_sb + hk * p.dk_sh;
  T* dv = static_cast<T*>(p.dv) + b * p.dv_sb + hk * p.dv_sh;
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int j = n0 + key_row + g + 8 * half;
    if (j >= p.Lk) continue;
#pragma unroll
    for (int dt = 0; dt < kDTiles; ++dt) {
      *reinterpret_cast<uint32_t*>(dk + j * p.dk_sl + dt * 8 + 2 * t4) =
          pack2<T>(acc_dk[dt][2 * half] * p.scale, acc_dk[dt][2 * half + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(dv + j * p.dv_sl + dt * 8 + 2 * t4) =
          pack2<T>(acc_dv[dt][2 * half], acc_dv[dt][2 * half + 1]);
    }
  }
}

template <typename T, int kD>
int launch_backward(const FlashParams& p) {
  using Tr = BwdTraits<kD>;
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  const int64_t rows = static_cast<int64_t>(p.B) * p.H * p.Lq;
  // (each launch only where its grid is not empty: Lq = 0 has no query rows, Lk = 0 no key blocks)
  cudaError_t err = cudaMemsetAsync(p.dq_accum, 0, rows * kD * sizeof(float), stream);
  if (err != cudaSuccess) return err;
  if (rows > 0) bwd_preprocess<T, kD><<<(rows + 7) / 8, 256, 0, stream>>>(p);
  constexpr int smem = bwd_smem_bytes<kD>();
  auto kernel = flash_bwd_kernel<T, kD>;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.Lk + Tr::kBc - 1) / Tr::kBc, p.Hkv, p.B);
  if (p.Lk > 0) kernel<<<grid, Tr::kWarps * 32, smem, stream>>>(p);
  const int64_t blocks = (rows * kD + 255) / 256;
  if (rows > 0)
    bwd_convert_dq<T, kD><<<static_cast<unsigned>(blocks < 65535 * 8 ? blocks : 65535 * 8), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

int flash_backward_smem_bytes(int D) { return D == 64 ? bwd_smem_bytes<64>() : bwd_smem_bytes<128>(); }

int flash_backward(const FlashParams& p, bool bf16) {
  if (p.D == 64) return bf16 ? launch_backward<__nv_bfloat16, 64>(p) : launch_backward<__half, 64>(p);
  return bf16 ? launch_backward<__nv_bfloat16, 128>(p) : launch_backward<__half, 128>(p);
}

}  // namespace attn::cuda::detail
