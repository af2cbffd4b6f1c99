// attn::cuda's host side (attn/cuda.h): checks every argument once, builds the kernels' FlashParams and launches
// them (src/cuda/flash_fwd.cu, flash_bwd.cu). Also the C entry points of attn/cuda_c.h that Python's ctypes calls.
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

#include "attn/cuda.h"
#include "attn/cuda_c.h"
#include "cuda/flash_params.h"

namespace attn::cuda {
namespace {

constexpr const char* kFn = "attn::cuda::attention";

std::string shape(int64_t a, int64_t b, int64_t c, int64_t d) {
  return std::string("[") + std::to_string(a) + ", " + std::to_string(b) + ", " + std::to_string(c) + ", " +
         std::to_string(d) + "]";
}

void check_tensor(const DeviceTensor& t, const char* name, int64_t heads, int64_t len, int64_t D, int64_t B) {
  if (B * heads * len == 0) return;  // an empty tensor: any pointer and strides (torch keeps a transpose's)
  const std::string what = std::string(kFn) + ": " + name + " " + shape(B, heads, len, D);
  if (t.data == nullptr) throw ArgumentError(what + " is null");
  if (reinterpret_cast<uintptr_t>(t.data) % 16 != 0) throw ArgumentError(what + " is not 16-byte aligned");
  if (t.sb % 8 != 0 || t.sh % 8 != 0 || t.sl % 8 != 0)
    throw ArgumentError(what + " has strides (" + std::to_string(t.sb) + ", " + std::to_string(t.sh) + ", " +
                        std::to_string(t.sl) + ") that are not multiples of 8 elements");
  if (t.sb < 0 || t.sh < 0 || t.sl < 0) throw ArgumentError(what + " has a negative stride");
}

// A tensor the kernels write: no two of its elements at one address (strides of 0, or rows shorter than D, would have
// every block write the same memory). Sufficient and layout-free: sorted by stride, each dimension steps past the
// whole extent of the one inside it (BHLD and BLHD both pass).
void check_written(const DeviceTensor& t, const char* name, int64_t heads, int64_t len, int64_t D, int64_t B) {
  check_tensor(t, name, heads, len, D, B);
  if (B * heads * len == 0) return;  // no element: none can share an address
  std::array<std::pair<int64_t, int64_t>, 4> dims = {
      {{1, D}, {t.sl, len}, {t.sh, heads}, {t.sb, B}}};  // stride, extent
  std::sort(dims.begin(), dims.end());
  int64_t span = 0;  // elements covered by the dimensions inside
  for (const auto& [stride, extent] : dims) {
    if (extent <= 1) continue;
    if (stride < std::max<int64_t>(span, 1))
      throw ArgumentError(std::string(kFn) + ": " + name + " " + shape(B, heads, len, D) + " has strides (" +
                          std::to_string(t.sb) + ", " + std::to_string(t.sh) + ", " + std::to_string(t.sl) +
                          ", 1) under which elements overlap; a written tensor needs each of its own");
    span = stride * extent;
  }
}

detail::FlashParams make_params(const DeviceAttention& p) {
  // as on the CPU, B, Lq and Lk may be 0: no rows (nothing to write), or rows that see no key (0, lse −inf)
  if (p.B < 0 || p.H <= 0 || p.Hkv <= 0 || p.Lq < 0 || p.Lk < 0)
    throw ShapeError(std::string(kFn) + ": sizes B=" + std::to_string(p.B) + " H=" + std::to_string(p.H) +
                     " Hkv=" + std::to_string(p.Hkv) + " Lq=" + std::to_string(p.Lq) + " Lk=" + std::to_string(p.Lk) +
                     ": H and Hkv must be positive, B, Lq and Lk at least 0");
  if (p.D != 64 && p.D != 128)
    throw ShapeError(std::string(kFn) + ": head size D=" + std::to_string(p.D) + " (q " + shape(p.B, p.H, p.Lq, p.D) +
                     "); the GPU kernels support D = 64 and 128");
  if (p.H % p.Hkv != 0)
    throw ShapeError(std::string(kFn) + ": H=" + std::to_string(p.H) + " query heads (q " + shape(p.B, p.H, p.Lq, p.D) +
                     ") is not a multiple of Hkv=" + std::to_string(p.Hkv) + " (k " + shape(p.B, p.Hkv, p.Lk, p.D) +
                     ")");
  // 32-bit row indices inside the kernels, and the grid's y and z dimensions (heads, batch) of at most 65535
  // (each factor is bounded before the products, so that they cannot overflow)
  if (p.H > 65535 || p.B > 65535 || p.Lq >= (int64_t{1} << 30) || p.Lk >= (int64_t{1} << 30) ||
      p.B * p.H * p.Lq >= (int64_t{1} << 31) || p.B * p.Lk >= (int64_t{1} << 31))
    throw ShapeError(std::string(kFn) + ": sizes too large for the GPU kernels (q " + shape(p.B, p.H, p.Lq, p.D) +
                     ", k " + shape(p.B, p.Hkv, p.Lk, p.D) +
                     "): Lq, Lk < 2^30, B·H·Lq and B·Lk < 2^31, B and H <= 65535");
  if (p.dtype != DType::kBFloat16 && p.dtype != DType::kFloat16)
    throw DTypeError(std::string(kFn) + ": dtype must be bfloat16 or float16");
  check_tensor(p.q, "q", p.H, p.Lq, p.D, p.B);
  check_tensor(p.k, "k", p.Hkv, p.Lk, p.D, p.B);
  check_tensor(p.v, "v", p.Hkv, p.Lk, p.D, p.B);
  if (p.window < 0) throw ArgumentError(std::string(kFn) + ": window " + std::to_string(p.window) + " must be >= 0");
  if (p.window > 0 && p.causal == CausalAlignment::kNone)
    throw ArgumentError(std::string(kFn) + ": window " + std::to_string(p.window) + " needs causal masking");
  const float scale = p.scale.value_or(1.0f / std::sqrt(static_cast<float>(p.D)));
  if (!std::isfinite(scale) || scale <= 0.0f)
    throw ArgumentError(std::string(kFn) + ": scale " + std::to_string(scale) + " must be finite and > 0 on the GPU");

  detail::FlashParams f;
  f.B = static_cast<int>(p.B), f.H = static_cast<int>(p.H), f.Hkv = static_cast<int>(p.Hkv);
  f.Lq = static_cast<int>(p.Lq), f.Lk = static_cast<int>(p.Lk), f.D = static_cast<int>(p.D);
  f.group = static_cast<int>(p.H / p.Hkv);
  f.q = p.q.data, f.q_sb = p.q.sb, f.q_sh = p.q.sh, f.q_sl = p.q.sl;
  f.k = p.k.data, f.k_sb = p.k.sb, f.k_sh = p.k.sh, f.k_sl = p.k.sl;
  f.v = p.v.data, f.v_sb = p.v.sb, f.v_sh = p.v.sh, f.v_sl = p.v.sl;
  f.o = p.o.data, f.o_sb = p.o.sb, f.o_sh = p.o.sh, f.o_sl = p.o.sl;
  f.lse = p.lse;
  f.key_padding = p.key_padding;
  f.scale = scale;
  f.scale_log2 = scale * 1.4426950408889634f;
  f.causal = p.causal != CausalAlignment::kNone;
  f.offset = p.causal == CausalAlignment::kBottomRight ? static_cast<int>(p.Lk - p.Lq) : 0;
  f.window = static_cast<int>(std::min<int64_t>(p.window, int64_t{1} << 30));
  f.stream = p.stream;
  return f;
}

void check_cuda(int err, const char* what) {
  if (err != cudaSuccess)
    throw Error(std::string(kFn) + ": " + what + ": " + cudaGetErrorString(static_cast<cudaError_t>(err)));
}

// The kernel needs `bytes` of shared memory per block: more than the current device allows (sm_80 and sm_90 allow
// every kernel here; sm_86, sm_89 and sm_120 allow 99 KB, less than the D = 128 backward's 145 KB) is an error that
// says so, not the launch's "invalid argument".
void check_shared_memory(int bytes, const char* kernel, int64_t D) {
  int device = 0, limit = 0, major = 0, minor = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  if (bytes <= limit) return;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  throw Error(std::string(kFn) + ": the " + kernel + " at D=" + std::to_string(D) + " needs " + std::to_string(bytes) +
              " bytes of shared memory per block; GPU " + std::to_string(device) + " (sm_" + std::to_string(major) +
              std::to_string(minor) + ") allows " + std::to_string(limit) +
              " (A100 and H100-class GPUs, sm_80 and sm_90, run it; D=64 needs less)");
}

}  // namespace

void attention_forward(const DeviceAttention& p) {
  detail::FlashParams f = make_params(p);
  check_written(p.o, "o", p.H, p.Lq, p.D, p.B);
  if (p.B == 0 || p.Lq == 0) return;  // no output row (Lk = 0: the kernel writes 0 and lse −inf)
  check_shared_memory(detail::flash_forward_smem_bytes(f.D), "forward", p.D);
  check_cuda(detail::flash_forward(f, p.dtype == DType::kBFloat16), "forward launch");
}

void attention_backward(const DeviceAttention& p, const DeviceAttentionGrads& g) {
  detail::FlashParams f = make_params(p);
  if (p.lse == nullptr && p.B * p.H * p.Lq > 0)  // (empty, it may be null)
    throw ArgumentError(std::string(kFn) + "_backward: lse [" + std::to_string(p.B) + ", " + std::to_string(p.H) +
                        ", " + std::to_string(p.Lq) + "] from the forward is required");
  check_tensor(g.out, "out", p.H, p.Lq, p.D, p.B);
  check_tensor(g.d_out, "d_out", p.H, p.Lq, p.D, p.B);
  check_written(g.dq, "dq", p.H, p.Lq, p.D, p.B);
  check_written(g.dk, "dk", p.Hkv, p.Lk, p.D, p.B);
  check_written(g.dv, "dv", p.Hkv, p.Lk, p.D, p.B);
  f.out = g.out.data, f.out_sb = g.out.sb, f.out_sh = g.out.sh, f.out_sl = g.out.sl;
  f.d_out = g.d_out.data, f.do_sb = g.d_out.sb, f.do_sh = g.d_out.sh, f.do_sl = g.d_out.sl;
  f.dq = g.dq.data, f.dq_sb = g.dq.sb, f.dq_sh = g.dq.sh, f.dq_sl = g.dq.sl;
  f.dk = g.dk.data, f.dk_sb = g.dk.sb, f.dk_sh = g.dk.sh, f.dk_sl = g.dk.sl;
  f.dv = g.dv.data, f.dv_sb = g.dv.sb, f.dv_sh = g.dv.sh, f.dv_sl = g.dv.sl;
  if (p.B == 0 || (p.Lq == 0 && p.Lk == 0)) return;  // no gradient element (Lq = 0: dk, dv are 0; Lk = 0: dq is 0)
  check_shared_memory(detail::flash_backward_smem_bytes(f.D), "backward", p.D);
  // workspace: dq_accum [B, H, Lq, D] and delta [B, H, Lq], float32, stream-ordered
  const size_t rows = static_cast<size_t>(p.B * p.H * p.Lq);
  cudaStream_t stream = static_cast<cudaStream_t>(p.stream);
  void* work = nullptr;
  check_cuda(cudaMallocAsync(&work, std::max<size_t>(rows * (p.D + 1) * sizeof(float), 1), stream),
             "workspace allocation");
  f.dq_accum = static_cast<float*>(work);
  f.delta = f.dq_accum + rows * p.D;
  const int err = detail::flash_backward(f, p.dtype == DType::kBFloat16);
  cudaFreeAsync(work, stream);
  check_cuda(err, "backward launch");
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace attn::cuda

// ---- C entry points (attn/cuda_c.h) ----
namespace {

attn::cuda::DeviceTensor tensor(const attn_cuda_tensor& t) { return {t.data, t.sb, t.sh, t.sl}; }

attn::cuda::DeviceAttention problem(const attn_cuda_problem* c) {
  if (c == nullptr) throw attn::ArgumentError("attn_cuda: the problem is null");
  attn::cuda::DeviceAttention p;
  p.B = c->B, p.H = c->H, p.Hkv = c->Hkv, p.Lq = c->Lq, p.Lk = c->Lk, p.D = c->D;
  p.dtype = c->dtype == 1 ? attn::cuda::DType::kFloat16 : attn::cuda::DType::kBFloat16;
  if (c->dtype != 0 && c->dtype != 1) throw attn::DTypeError("attn_cuda: dtype code " + std::to_string(c->dtype));
  p.q = tensor(c->q), p.k = tensor(c->k), p.v = tensor(c->v), p.o = tensor(c->o);
  p.lse = c->lse;
  p.key_padding = c->key_padding;
  if (c->causal < 0 || c->causal > 2) throw attn::ArgumentError("attn_cuda: causal code " + std::to_string(c->causal));
  p.causal = static_cast<attn::CausalAlignment>(c->causal);
  p.window = c->window;
  if (c->has_scale) p.scale = c->scale;
  p.stream = c->stream;
  return p;
}

template <typename F>
int guarded(F&& f, char* error, int error_len) {
  auto report = [&](const char* msg) {
    if (error != nullptr && error_len > 0) {
      std::strncpy(error, msg, static_cast<size_t>(error_len) - 1);
      error[error_len - 1] = '\0';
    }
  };
  try {
    f();
    return ATTN_CUDA_OK;
  } catch (const attn::ShapeError& e) {
    report(e.what());
    return ATTN_CUDA_SHAPE_ERROR;
  } catch (const attn::DTypeError& e) {
    report(e.what());
    return ATTN_CUDA_DTYPE_ERROR;
  } catch (const attn::ArgumentError& e) {
    report(e.what());
    return ATTN_CUDA_ARGUMENT_ERROR;
  } catch (const std::exception& e) {
    report(e.what());
    return ATTN_CUDA_RUNTIME_ERROR;
  } catch (...) {  // nothing crosses the C boundary
    report("attn_cuda: an unknown exception");
    return ATTN_CUDA_RUNTIME_ERROR;
  }
}

}  // namespace

extern "C" int attn_cuda_forward(const attn_cuda_problem* p, char* error, int error_len) {
  return guarded([&] { attn::cuda::attention_forward(problem(p)); }, error, error_len);
}

extern "C" int attn_cuda_backward(const attn_cuda_problem* p, const attn_cuda_grads* g, char* error, int error_len) {
  return guarded(
      [&] {
        if (g == nullptr) throw attn::ArgumentError("attn_cuda_backward: the gradients are null");
        attn::cuda::DeviceAttentionGrads grads{tensor(g->out), tensor(g->d_out), tensor(g->dq), tensor(g->dk),
                                               tensor(g->dv)};
        attn::cuda::attention_backward(problem(p), grads);
      },
      error, error_len);
}

extern "C" int attn_cuda_device_count(void) { return attn::cuda::device_count(); }
