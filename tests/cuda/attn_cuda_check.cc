// The GPU attention check (libattn_cuda, attn/cuda.h): every option of the CUDA kernels on small random cases with
// odd sizes, against the math in double precision on the host (forward output and log-sum-exp, and the
// backward's dq, dk, dv, from the same rounded inputs). Also what scripts/gpu_check.sh runs under
// compute-sanitizer. Without a GPU it prints that it was skipped and succeeds (CI has nvcc, not a GPU);
// PyTorch's float64 comparison on the GPU is tests/gpu/test_cuda_torch.py.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attn/cuda.h"
#include "attn/cuda_c.h"

namespace {

using attn::CausalAlignment;
using attn::cuda::DType;

struct Case {
  int B, H, Hkv, Lq, Lk, D;
  CausalAlignment causal;
  int window;
  bool padding;      // key-padding mask (batch 0 keeps every key; the last batch hides all its keys if B > 1)
  bool interleaved;  // [B, L, H, D] layout (strided heads) instead of [B, H, L, D]
  DType dtype;
  bool poison_padding = false;  // padding keys' K and V hold NaN (as torch.empty garbage may): no output or gradient
                                // may see them
};

double round_to(DType t, float x) {
  return t == DType::kBFloat16 ? static_cast<double>(__bfloat162float(__float2bfloat16_rn(x)))
                               : static_cast<double>(__half2float(__float2half_rn(x)));
}
uint16_t bits(DType t, double x) {
  if (t == DType::kBFloat16) {
    __nv_bfloat16 v = __float2bfloat16_rn(static_cast<float>(x));
    return *reinterpret_cast<uint16_t*>(&v);
  }
  __half v = __float2half_rn(static_cast<float>(x));
  return *reinterpret_cast<uint16_t*>(&v);
}
double value(DType t, uint16_t b) {
  if (t == DType::kBFloat16) return __bfloat162float(*reinterpret_cast<__nv_bfloat16*>(&b));
  return __half2float(*reinterpret_cast<__half*>(&b));
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::fprintf(stderr, "CUDA error at %s: %s\n", what, cudaGetErrorString(e));
    std::exit(1);
  }
}

// A [B, heads, L, D] tensor: host values (rounded to the dtype) and its device copy in the case's layout.
struct Tensor4 {
  int B, heads, L, D;
  bool interleaved;
  std::vector<double> host;  // [B, heads, L, D] contiguous
  uint16_t* dev = nullptr;
  attn::cuda::DeviceTensor view() const {
    attn::cuda::DeviceTensor t;
    t.data = dev;
    if (interleaved)
      t.sb = int64_t{L} * heads * D, t.sh = D, t.sl = int64_t{heads} * D;
    else
      t.sb = int64_t{heads} * L * D, t.sh = int64_t{L} * D, t.sl = D;
    return t;
  }
  size_t index(int b, int h, int l, int d) const { return ((size_t(b) * heads + h) * L + l) * D + d; }
  Tensor4(int b, int h, int l, int d, bool inter)
      : B(b), heads(h), L(l), D(d), interleaved(inter), host(size_t(b) * h * l * d) {
    check(cudaMalloc(&dev, std::max<size_t>(host.size() * 2, 16)), "cudaMalloc");  // (an empty tensor too)
  }
  ~Tensor4() { cudaFree(dev); }
  void upload(DType t) {
    std::vector<uint16_t> buf(host.size());
    const auto v = view();
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < heads; ++h)
        for (int l = 0; l < L; ++l)
          for (int d = 0; d < D; ++d) buf[b * v.sb + h * v.sh + l * v.sl + d] = bits(t, host[index(b, h, l, d)]);
    check(cudaMemcpy(dev, buf.data(), buf.size() * 2, cudaMemcpyHostToDevice), "upload");
  }
  std::vector<double> download(DType t) const {
    std::vector<uint16_t> buf(host.size());
    check(cudaMemcpy(buf.data(), dev, buf.size() * 2, cudaMemcpyDeviceToHost), "download");
    std::vector<double> out(host.size());
    const auto v = view();
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < heads; ++h)
        for (int l = 0; l < L; ++l)
          for (int d = 0; d < D; ++d) out[index(b, h, l, d)] = value(t, buf[b * v.sb + h * v.sh + l * v.sl + d]);
    return out;
  }
};

bool visible(const Case& c, const std::vector<uint8_t>& pad, int b, int i, int j) {
  if (c.padding && pad[size_t(b) * c.Lk + j]) return false;
  if (c.causal == CausalAlignment::kNone) return true;
  const int last = i + (c.causal == CausalAlignment::kBottomRight ? c.Lk - c.Lq : 0);
  return j <= last && (c.window <= 0 || j > last - c.window);
}

// max |x − ref| ≤ tol · max |ref| (+ a floor for all-zero tensors)
bool close(const char* name, const std::vector<double>& x, const std::vector<double>& ref, double tol,
           std::string* why) {
  double err = 0, mag = 0;
  for (size_t n = 0; n < x.size(); ++n) {
    if (std::isnan(x[n]) != std::isnan(ref[n])) {
      *why += std::string(" ") + name + " NaN mismatch";
      return false;
    }
    err = std::max(err, std::fabs(x[n] - ref[n]));
    mag = std::max(mag, std::fabs(ref[n]));
  }
  if (err <= tol * mag + 1e-4) return true;
  char buf[160];
  std::snprintf(buf, sizeof buf, " %s: max error %.3g vs max |ref| %.3g (tol %.3g)", name, err, mag, tol);
  *why += buf;
  return false;
}

bool run_case(const Case& c, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Tensor4 q(c.B, c.H, c.Lq, c.D, c.interleaved), k(c.B, c.Hkv, c.Lk, c.D, c.interleaved),
      v(c.B, c.Hkv, c.Lk, c.D, c.interleaved);
  Tensor4 o(c.B, c.H, c.Lq, c.D, c.interleaved), d_out(c.B, c.H, c.Lq, c.D, c.interleaved);
  Tensor4 dq(c.B, c.H, c.Lq, c.D, c.interleaved), dk(c.B, c.Hkv, c.Lk, c.D, c.interleaved),
      dv(c.B, c.Hkv, c.Lk, c.D, c.interleaved);
  for (Tensor4* t : {&q, &k, &v, &d_out})
    for (double& x : t->host) x = round_to(c.dtype, normal(rng));
  std::vector<uint8_t> pad(size_t(c.B) * c.Lk, 0);
  if (c.padding)
    for (int b = 1; b < c.B; ++b)
      for (int j = 0; j < c.Lk; ++j) pad[size_t(b) * c.Lk + j] = (b == c.B - 1) || ((j * 7 + b) % 5 == 0);
  if (c.poison_padding)
    for (int b = 0; b < c.B; ++b)
      for (int hk = 0; hk < c.Hkv; ++hk)
        for (int j = 0; j < c.Lk; ++j)
          if (pad[size_t(b) * c.Lk + j])
            for (int d = 0; d < c.D; ++d) k.host[k.index(b, hk, j, d)] = v.host[v.index(b, hk, j, d)] = NAN;
  for (Tensor4* t : {&q, &k, &v, &d_out}) t->upload(c.dtype);
  uint8_t* pad_dev = nullptr;
  float* lse_dev = nullptr;
  check(cudaMalloc(&pad_dev, std::max<size_t>(pad.size(), 1)), "cudaMalloc");
  check(cudaMemcpy(pad_dev, pad.data(), pad.size(), cudaMemcpyHostToDevice), "upload");
  check(cudaMalloc(&lse_dev, std::max<size_t>(sizeof(float) * c.B * c.H * c.Lq, 4)), "cudaMalloc");

  attn::cuda::DeviceAttention p;
  p.B = c.B, p.H = c.H, p.Hkv = c.Hkv, p.Lq = c.Lq, p.Lk = c.Lk, p.D = c.D, p.dtype = c.dtype;
  p.q = q.view(), p.k = k.view(), p.v = v.view(), p.o = o.view();
  p.lse = lse_dev;
  p.key_padding = c.padding ? pad_dev : nullptr;
  p.causal = c.causal, p.window = c.window;
  attn::cuda::attention_forward(p);
  attn::cuda::attention_backward(p, {o.view(), d_out.view(), dq.view(), dk.view(), dv.view()});
  check(cudaDeviceSynchronize(), "kernels");
  std::vector<float> lse(size_t(c.B) * c.H * c.Lq);
  check(cudaMemcpy(lse.data(), lse_dev, lse.size() * 4, cudaMemcpyDeviceToHost), "download");

  // The reference: the math in double on the rounded inputs.
  const double scale = 1.0 / std::sqrt(double(c.D));
  std::vector<double> ro(o.host.size(), 0), rdq(q.host.size(), 0), rdk(k.host.size(), 0), rdv(v.host.size(), 0);
  std::vector<double> rlse(lse.size());
  const int G = c.H / c.Hkv;
  std::vector<double> s(c.Lk), pr(c.Lk), dp(c.Lk);
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h)
      for (int i = 0; i < c.Lq; ++i) {
        const int hk = h / G;
        double mx = -INFINITY;
        for (int j = 0; j < c.Lk; ++j) {
          s[j] = -INFINITY;
          if (!visible(c, pad, b, i, j)) continue;
          double dot = 0;
          for (int d = 0; d < c.D; ++d) dot += q.host[q.index(b, h, i, d)] * k.host[k.index(b, hk, j, d)];
          s[j] = dot * scale;
          mx = std::max(mx, s[j]);
        }
        const size_t row = (size_t(b) * c.H + h) * c.Lq + i;
        if (mx == -INFINITY) {  // nothing visible: output 0, no gradient
          rlse[row] = -INFINITY;
          continue;
        }
        double sum = 0;
        for (int j = 0; j < c.Lk; ++j) sum += (pr[j] = std::exp(s[j] - mx));
        rlse[row] = mx + std::log(sum);
        for (int j = 0; j < c.Lk; ++j) pr[j] /= sum;
        double delta = 0;
        for (int d = 0; d < c.D; ++d) {
          double acc = 0;
          for (int j = 0; j < c.Lk; ++j)
            if (pr[j] != 0) acc += pr[j] * v.host[v.index(b, hk, j, d)];  // (a hidden key's value is never read)
          ro[o.index(b, h, i, d)] = acc;
          delta += acc * d_out.host[d_out.index(b, h, i, d)];
        }
        for (int j = 0; j < c.Lk; ++j) {
          if (pr[j] == 0) continue;
          double acc = 0;
          for (int d = 0; d < c.D; ++d) acc += d_out.host[d_out.index(b, h, i, d)] * v.host[v.index(b, hk, j, d)];
          const double ds = pr[j] * (acc - delta) * scale;
          for (int d = 0; d < c.D; ++d) {
            rdv[v.index(b, hk, j, d)] += pr[j] * d_out.host[d_out.index(b, h, i, d)];
            rdq[q.index(b, h, i, d)] += ds * k.host[k.index(b, hk, j, d)];
            rdk[k.index(b, hk, j, d)] += ds * q.host[q.index(b, h, i, d)];
          }
        }
      }
  const double tol = c.dtype == DType::kBFloat16 ? 2.5e-2 : 6e-3;
  std::string why;
  bool ok = close("out", o.download(c.dtype), ro, tol, &why);
  std::vector<double> lse_d(lse.begin(), lse.end());
  for (size_t n = 0; n < lse_d.size(); ++n)
    if ((rlse[n] == -INFINITY) != (lse_d[n] == -INFINITY) ||
        (std::isfinite(rlse[n]) && std::fabs(rlse[n] - lse_d[n]) > 1e-3)) {
      char buf[96];
      std::snprintf(buf, sizeof buf, " lse[%zu] = %g, reference %g", n, lse_d[n], rlse[n]);
      why += buf;
      ok = false;
      break;
    }
  ok = close("dq", dq.download(c.dtype), rdq, 2 * tol, &why) && ok;
  ok = close("dk", dk.download(c.dtype), rdk, 2 * tol, &why) && ok;
  ok = close("dv", dv.download(c.dtype), rdv, 2 * tol, &why) && ok;
  std::printf("%s B=%d H=%d Hkv=%d Lq=%d Lk=%d D=%d causal=%s window=%d padding=%d interleaved=%d %s%s\n",
              ok ? "ok  " : "FAIL", c.B, c.H, c.Hkv, c.Lq, c.Lk, c.D, attn::causal_name(c.causal), c.window, c.padding,
              c.interleaved, c.dtype == DType::kBFloat16 ? "bf16" : "f16", why.c_str());
  cudaFree(pad_dev);
  cudaFree(lse_dev);
  return ok;
}

template <typename E, typename F>
bool throws(const char* what, F&& f) {
  try {
    f();
  } catch (const E& e) {
    std::printf("ok   %s throws: %s\n", what, e.what());
    return true;
  } catch (const std::exception& e) {
    std::printf("FAIL %s threw the wrong type: %s\n", what, e.what());
    return false;
  }
  std::printf("FAIL %s did not throw\n", what);
  return false;
}

}  // namespace

// attn::causal_name lives in libattn; this check links only libattn_cuda.
const char* attn::causal_name(CausalAlignment c) {
  return c == CausalAlignment::kNone ? "none" : c == CausalAlignment::kTopLeft ? "top-left" : "bottom-right";
}

// Argument checks happen before any CUDA call: they run (and must pass) on machines without a GPU too.
int check_arguments() {
  int failed = 0;
  attn::cuda::DeviceAttention bad;
  bad.B = 1, bad.H = 1, bad.Hkv = 1, bad.Lq = 4, bad.Lk = 4, bad.D = 96;
  failed += !throws<attn::ShapeError>("D = 96", [&] { attn::cuda::attention_forward(bad); });
  bad.D = 64, bad.H = 3, bad.Hkv = 2;
  failed += !throws<attn::ShapeError>("H = 3, Hkv = 2", [&] { attn::cuda::attention_forward(bad); });
  bad.B = bad.H = bad.Hkv = int64_t{1} << 40;  // B·H·Lq would overflow int64 if formed first
  failed += !throws<attn::ShapeError>("B = H = 2^40", [&] { attn::cuda::attention_forward(bad); });
  bad.B = 1, bad.H = 2, bad.Hkv = 2;
  failed += !throws<attn::ArgumentError>("null q", [&] { attn::cuda::attention_forward(bad); });
  alignas(16) static uint16_t buffer[2 * 4 * 64];
  bad.q = bad.k = bad.v = bad.o = {buffer, 512, 256, 64};  // [1, 2, 4, 64], dense
  bad.q.sl = 60;                                           // rows not 16-byte aligned
  failed += !throws<attn::ArgumentError>("q row stride 60", [&] { attn::cuda::attention_forward(bad); });
  bad.q.sl = 64;
  bad.window = 8;  // a window without causal masking
  failed += !throws<attn::ArgumentError>("window without causal", [&] { attn::cuda::attention_forward(bad); });
  bad.window = 0;
  bad.scale = -1.0f;
  failed += !throws<attn::ArgumentError>("scale -1", [&] { attn::cuda::attention_forward(bad); });
  bad.scale.reset();
  failed += !throws<attn::ArgumentError>("backward without lse", [&] {
    attn::cuda::attention_backward(bad, {bad.o, bad.o, bad.q, bad.k, bad.v});
  });
  // a written tensor whose elements overlap (every block would write the same rows): refused
  bad.o.sh = 0;
  failed += !throws<attn::ArgumentError>("o with head stride 0", [&] { attn::cuda::attention_forward(bad); });
  bad.o.sh = 256, bad.o.sl = 32;  // rows shorter than D
  failed += !throws<attn::ArgumentError>("o with row stride 32 < D", [&] { attn::cuda::attention_forward(bad); });
  bad.o.sl = 64;
  // empty problems (as on the CPU): no batch, or no query rows, is no work and no CUDA call, null tensors included
  attn::cuda::DeviceAttention empty;
  empty.B = 0, empty.H = 2, empty.Hkv = 2, empty.Lq = 4, empty.Lk = 4, empty.D = 64;
  try {
    attn::cuda::attention_forward(empty);
    attn::cuda::attention_backward(empty, {});
    empty.B = 1, empty.Lq = 0, empty.k = empty.v = bad.k;
    empty.q = empty.o = {nullptr, 128, 64, 1};  // an empty transpose's strides, as torch keeps them
    attn::cuda::attention_forward(empty);
    std::printf("ok   B = 0 and Lq = 0 are empty calls\n");
  } catch (const std::exception& e) {
    std::printf("FAIL an empty problem threw: %s\n", e.what());
    ++failed;
  }
  empty.Lq = -1;
  failed += !throws<attn::ShapeError>("Lq = -1", [&] { attn::cuda::attention_forward(empty); });
  // the C entry points: null problems and gradients are errors, not crashes
  char message[128] = "";
  if (attn_cuda_forward(nullptr, message, sizeof message) != ATTN_CUDA_ARGUMENT_ERROR ||
      attn_cuda_backward(nullptr, nullptr, message, sizeof message) != ATTN_CUDA_ARGUMENT_ERROR) {
    std::printf("FAIL: a null problem or gradients was not ATTN_CUDA_ARGUMENT_ERROR (%s)\n", message);
    ++failed;
  }
  return failed;
}

// attn_cuda_check: the argument checks, then the kernels (where there is a GPU). --arguments: the argument checks
// only; --kernels: the kernels only, exit status 77 (CTest's SKIP_RETURN_CODE) without a GPU, so that a machine
// without one shows them skipped, not passed.
int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (!mode.empty() && mode != "--arguments" && mode != "--kernels") {
    std::printf("usage: attn_cuda_check [--arguments | --kernels]\n");
    return 2;
  }
  const int failed_arguments = mode == "--kernels" ? 0 : check_arguments();
  if (mode == "--arguments") {
    std::printf("attn_cuda_check: argument checks %s\n", failed_arguments ? "FAILED" : "passed");
    return failed_arguments ? 1 : 0;
  }
  if (attn::cuda::device_count() == 0) {
    std::printf("attn_cuda_check: kernels SKIPPED (no CUDA device here: compiled, not run)%s\n",
                mode.empty() ? (failed_arguments ? "; argument checks FAILED" : "; argument checks passed") : "");
    return failed_arguments ? 1 : 77;
  }
  const auto none = CausalAlignment::kNone, tl = CausalAlignment::kTopLeft, br = CausalAlignment::kBottomRight;
  const auto bf = DType::kBFloat16, f16 = DType::kFloat16;
  const std::vector<Case> cases = {
      {1, 2, 2, 1, 1, 64, none, 0, false, false, bf},
      {2, 2, 1, 77, 130, 64, none, 0, false, false, bf},
      {1, 4, 2, 130, 77, 128, none, 0, false, true, bf},
      {2, 2, 2, 200, 200, 64, tl, 0, false, false, bf},
      {1, 2, 2, 150, 97, 128, tl, 0, false, false, f16},
      {1, 4, 1, 97, 150, 64, br, 0, false, true, f16},
      {1, 2, 2, 150, 97, 128, br, 0, false, false, bf},  // Lq > Lk: the first rows see nothing
      {1, 2, 2, 257, 257, 64, tl, 33, false, false, bf},
      {2, 4, 2, 65, 300, 128, br, 100, false, false, f16},
      {3, 2, 2, 70, 129, 64, none, 0, true, false, bf},  // the last batch is all padding
      {3, 2, 1, 129, 70, 128, br, 0, true, true, bf},
      {1, 2, 2, 300, 300, 128, none, 0, false, false, f16},
      {3, 2, 2, 70, 200, 64, none, 0, true, false, bf, true},  // NaN in the padding keys' K and V
      {3, 4, 2, 129, 150, 128, br, 0, true, true, f16, true},
      {2, 2, 2, 70, 0, 64, none, 0, false, false, bf},   // no keys: output 0, lse −inf, dq 0
      {2, 2, 1, 0, 70, 128, tl, 0, false, false, f16},   // no queries: dk and dv 0
      {0, 2, 2, 16, 16, 64, none, 0, false, false, bf},  // an empty batch
  };
  std::mt19937 rng(12345);
  int failed = failed_arguments;
  for (const Case& c : cases) failed += !run_case(c, rng);
  std::printf("attn_cuda_check: %s (%d failed)\n", failed ? "FAILED" : "passed", failed);
  return failed ? 1 : 0;
}
