// llama.cpp's CPU attention, timed alone: ggml's GGML_OP_FLASH_ATTN_EXT (the op llama.cpp's models run with
// flash attention on) over one graph, for bench/compare_llamacpp.py. Not part of attn's build: that script
// compiles it against a ggml checkout (https://github.com/ggml-org/ggml, or llama.cpp's ggml/).
//
//   ggml_attention --heads H --kv-heads G --len L [--q-len Lq] --head-dim D --kv-type f32|f16 [--causal] --threads T
//                  --repeat R
//
// prints one JSON line: the median, min and max milliseconds of R graph computations after one warm-up, with one
// plan and work buffer made before them (ggml_graph_compute_with_ctx would take a new work buffer from the context on
// every call). Shapes as ggml lays them out: q [D, Lq, H] float32 (Lq = L unless given), k and v [D, L, G] of
// --kv-type, a float16 mask [L, Lq] (0, or -inf for key j > query i: causal, which needs Lq = L; without --causal no
// mask), scale 1/sqrt(D); out [D, H, Lq] float32. (On the CPU the f16 path accumulates P·V in float16: ggml's own
// choice, GGML_PREC_F32 notwithstanding.)
#include <ggml-cpu.h>
#include <ggml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

int run(int argc, char** argv) {
  int64_t H = 8, G = 8, L = 1024, D = 64, Lq = -1;
  int threads = 1, repeat = 5;
  bool causal = false;
  std::string kv_type = "f16";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (a == "--heads")
      H = std::stoll(next());
    else if (a == "--kv-heads")
      G = std::stoll(next());
    else if (a == "--len")
      L = std::stoll(next());
    else if (a == "--q-len")
      Lq = std::stoll(next());
    else if (a == "--head-dim")
      D = std::stoll(next());
    else if (a == "--kv-type")
      kv_type = next();
    else if (a == "--causal")
      causal = true;
    else if (a == "--threads")
      threads = std::stoi(next());
    else if (a == "--repeat")
      repeat = std::stoi(next());
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (kv_type != "f32" && kv_type != "f16") {
    std::fprintf(stderr, "--kv-type: f32 or f16\n");
    return 2;
  }
  const ggml_type kvt = kv_type == "f32" ? GGML_TYPE_F32 : GGML_TYPE_F16;
  if (Lq < 0) Lq = L;
  if (H <= 0 || G <= 0 || H % G != 0 || L <= 0 || Lq <= 0 || D <= 0 || threads <= 0 || repeat <= 0 ||
      (causal && Lq != L)) {
    std::fprintf(stderr,
                 "sizes, threads and --repeat must be positive, --heads a multiple of --kv-heads, and "
                 "--causal needs --q-len equal to --len\n");
    return 2;
  }
  const size_t bytes = static_cast<size_t>(Lq * D * H * 8 + L * D * G * 8 + Lq * L * 2) + (size_t{64} << 20);
  ggml_init_params params{bytes, nullptr, false};
  ggml_context* ctx = ggml_init(params);
  ggml_tensor* q = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, D, Lq, H);
  ggml_tensor* k = ggml_new_tensor_3d(ctx, kvt, D, L, G);
  ggml_tensor* v = ggml_new_tensor_3d(ctx, kvt, D, L, G);
  ggml_tensor* m = causal ? ggml_new_tensor_2d(ctx, GGML_TYPE_F16, L, Lq) : nullptr;
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  const auto fill = [&](ggml_tensor* t) {
    std::vector<float> x(static_cast<size_t>(ggml_nelements(t)));
    for (float& e : x) e = nd(rng);
    if (t->type == GGML_TYPE_F32)
      std::memcpy(t->data, x.data(), x.size() * 4);
    else
      ggml_fp32_to_fp16_row(x.data(), static_cast<ggml_fp16_t*>(t->data), static_cast<int64_t>(x.size()));
  };
  fill(q), fill(k), fill(v);
  if (m) {
    std::vector<float> mask(static_cast<size_t>(Lq * L));
    for (int64_t i = 0; i < Lq; ++i)
      for (int64_t j = 0; j < L; ++j) mask[static_cast<size_t>(i * L + j)] = j <= i ? 0.0f : -INFINITY;
    ggml_fp32_to_fp16_row(mask.data(), static_cast<ggml_fp16_t*>(m->data), Lq * L);
  }
  ggml_tensor* out = ggml_flash_attn_ext(ctx, q, k, v, m, 1.0f / std::sqrt(static_cast<float>(D)), 0.0f, 0.0f);
  ggml_flash_attn_ext_set_prec(out, GGML_PREC_F32);
  ggml_cgraph* gf = ggml_new_graph(ctx);
  ggml_build_forward_expand(gf, out);
  ggml_cplan plan = ggml_graph_plan(gf, threads, nullptr);
  std::vector<uint8_t> work(plan.work_size);
  plan.work_data = work.data();
  std::vector<double> ms;
  for (int r = 0; r <= repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (ggml_graph_compute(gf, &plan) != GGML_STATUS_SUCCESS) {
      std::fprintf(stderr, "ggml_graph_compute failed\n");
      return 1;
    }
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) ms.push_back(t);  // run 0: the warm-up
  }
  std::sort(ms.begin(), ms.end());
  const float* o = static_cast<const float*>(out->data);
  double checksum = 0.0;
  for (int64_t i = 0; i < ggml_nelements(out); ++i) checksum += o[i];
  std::printf("{\"median_ms\": %.4f, \"min_ms\": %.4f, \"max_ms\": %.4f, \"checksum\": %.6g}\n", ms[ms.size() / 2],
              ms.front(), ms.back(), checksum);
  ggml_free(ctx);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // a number that does not parse
    std::fprintf(stderr, "ggml_attention: %s\n", e.what());
    return 2;
  }
}
