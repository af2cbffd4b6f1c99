// The CUDA kernels' contract (flash-attention's Flash_fwd_params): one struct with every size resolved, every
// stride explicit and every check done by src/cuda/attention_cuda.cc. Plain C++ (no CUDA headers): the host
// code builds it and the launchers in flash_fwd.cu / flash_bwd.cu take it by value.
#pragma once

#include <cstdint>

namespace attn::cuda::detail {

struct FlashParams {
  int B = 0, H = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0;
  int group = 1;  // H / Hkv: query head h reads kv head h / group
  // q: [B, H, Lq, D], k/v: [B, Hkv, Lk, D], o: [B, H, Lq, D]; strides in elements, d contiguous
  const void* q = nullptr;
  int64_t q_sb = 0, q_sh = 0, q_sl = 0;
  const void* k = nullptr;
  int64_t k_sb = 0, k_sh = 0, k_sl = 0;
  const void* v = nullptr;
  int64_t v_sb = 0, v_sh = 0, v_sl = 0;
  void* o = nullptr;
  int64_t o_sb = 0, o_sh = 0, o_sl = 0;
  float* lse = nullptr;                  // lse: [B, H, Lq] contiguous, natural log
  const uint8_t* key_padding = nullptr;  // [B, Lk], 1 = padding

  float scale = 1.0f;       // multiplies q·k
  float scale_log2 = 1.0f;  // scale · log2(e): the kernels' scores are in base 2
  bool causal = false;
  int offset = 0;  // key j is causally visible to query i iff j <= i + offset (0 top-left, Lk − Lq bottom-right)
  int window = 0;  // > 0: also j > i + offset − window

  // backward only
  const void* out = nullptr;  // out: [B, H, Lq, D]
  int64_t out_sb = 0, out_sh = 0, out_sl = 0;
  const void* d_out = nullptr;  // d_out: [B, H, Lq, D]
  int64_t do_sb = 0, do_sh = 0, do_sl = 0;
  void* dq = nullptr;  // dq: [B, H, Lq, D] (q's layout may differ: own strides)
  int64_t dq_sb = 0, dq_sh = 0, dq_sl = 0;
  void* dk = nullptr;  // dk: [B, Hkv, Lk, D]
  int64_t dk_sb = 0, dk_sh = 0, dk_sl = 0;
  void* dv = nullptr;  // dv: [B, Hkv, Lk, D]
  int64_t dv_sb = 0, dv_sh = 0, dv_sl = 0;
  float* dq_accum = nullptr;  // [B, H, Lq, D] contiguous float32 workspace, zeroed by the launcher
  float* delta = nullptr;     // [B, H, Lq] contiguous: Δ_i = Σ_d dO_id · O_id

  void* stream = nullptr;  // cudaStream_t
};

// Launchers (flash_fwd.cu, flash_bwd.cu): bf16 = true for bfloat16, false for float16. They return the CUDA
// error code of the launch (0 = cudaSuccess); the caller turns it into an exception.
int flash_forward(const FlashParams& p, bool bf16);
int flash_backward(const FlashParams& p, bool bf16);
// The dynamic shared memory (bytes per block) each kernel asks for at head size D (64 or 128), checked against the
// device's opt-in limit before a launch.
int flash_forward_smem_bytes(int D);
int flash_backward_smem_bytes(int D);

}  // namespace attn::cuda::detail
