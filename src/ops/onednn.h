// Internal: the few oneDNN calls whose C API changed between oneDNN 2 (Debian 12's libdnnl-dev 2.6) and oneDNN 3
// (Debian 13's 3.7): a memory descriptor was a struct its user owned and filled, and is now an opaque handle the
// library creates and destroys; a matmul's operation descriptor is gone, its primitive descriptor made in one call.
// The same source builds against either (DNNL_VERSION_MAJOR): CI builds against Debian 12's 2.6, and the whole
// attn_tests suite passed linked against oneDNN 3.2 from PyPI (onednn-devel-cpu-gomp 2023.2, session 31).
#pragma once

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_version.h>

#include <cstdint>
#include <string>
#include <utility>

#include "attn/error.h"

namespace attn::ops::onednn {

inline void check(dnnl_status_t s, const char* who, const char* what) {
  if (s != dnnl_success)
    throw Error(std::string(who) + ": oneDNN " + what + " failed (status " + std::to_string(static_cast<int>(s)) + ")");
}

// A 2-D memory descriptor, owned: desc() is what both versions' functions take (the struct's address, or the
// handle). Move-only.
class MemoryDesc {
 public:
  MemoryDesc() = default;
  // dims [rows, cols] (either may be DNNL_RUNTIME_DIM_VAL) of `type` in layout `tag`
  MemoryDesc(int64_t rows, int64_t cols, dnnl_data_type_t type, dnnl_format_tag_t tag) {
    const dnnl_dims_t dims = {rows, cols};
#if DNNL_VERSION_MAJOR >= 3
    check(dnnl_memory_desc_create_with_tag(&md_, 2, dims, type, tag), "MemoryDesc", "memory descriptor creation");
#else
    check(dnnl_memory_desc_init_by_tag(&md_, 2, dims, type, tag), "MemoryDesc", "memory descriptor creation");
#endif
  }
  // A copy of the descriptor a primitive descriptor reports for `what` (dnnl_query_weights_md, ...), which outlives it.
  static MemoryDesc queried(const_dnnl_primitive_desc_t pd, dnnl_query_t what) {
    MemoryDesc m;
#if DNNL_VERSION_MAJOR >= 3
    check(dnnl_memory_desc_clone(&m.md_, dnnl_primitive_desc_query_md(pd, what, 0)), "MemoryDesc",
          "memory descriptor query");
#else
    m.md_ = *dnnl_primitive_desc_query_md(pd, what, 0);
#endif
    return m;
  }
  MemoryDesc(MemoryDesc&& other) noexcept : md_(other.md_) {
#if DNNL_VERSION_MAJOR >= 3
    other.md_ = nullptr;
#endif
  }
  MemoryDesc& operator=(MemoryDesc&& other) noexcept {
    std::swap(md_, other.md_);
    return *this;
  }
  MemoryDesc(const MemoryDesc&) = delete;
  MemoryDesc& operator=(const MemoryDesc&) = delete;
  ~MemoryDesc() {
#if DNNL_VERSION_MAJOR >= 3
    if (md_) dnnl_memory_desc_destroy(md_);
#endif
  }
#if DNNL_VERSION_MAJOR >= 3
  const_dnnl_memory_desc_t desc() const { return md_; }

 private:
  dnnl_memory_desc_t md_ = nullptr;
#else
  const dnnl_memory_desc_t* desc() const { return &md_; }

 private:
  dnnl_memory_desc_t md_{};
#endif
};

// The primitive descriptor of y = a · b (+ bias, when given) on `engine`.
inline dnnl_status_t matmul_primitive_desc(dnnl_primitive_desc_t* pd, dnnl_engine_t engine, const MemoryDesc& a,
                                           const MemoryDesc& b, const MemoryDesc* bias, const MemoryDesc& y,
                                           const_dnnl_primitive_attr_t attr) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl_matmul_primitive_desc_create(pd, engine, a.desc(), b.desc(), bias ? bias->desc() : nullptr, y.desc(),
                                           attr);
#else
  dnnl_matmul_desc_t md;
  const dnnl_status_t s = dnnl_matmul_desc_init(&md, a.desc(), b.desc(), bias ? bias->desc() : nullptr, y.desc());
  return s != dnnl_success ? s : dnnl_primitive_desc_create(pd, &md, attr, engine, nullptr);
#endif
}

// Whether the effective ISA (ONEDNN_MAX_CPU_ISA included) has VNNI, AVX-512's or AVX's: each ISA's mask holds every
// bit of the ISAs below it, and the masks' values differ between the versions, so by name.
inline bool effective_isa_has_vnni() {
  const auto isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  const auto has = [isa](dnnl_cpu_isa_t level) { return (isa & static_cast<unsigned>(level)) == level; };
  return has(dnnl_cpu_isa_avx512_core_vnni) || has(dnnl_cpu_isa_avx2_vnni);
}

// Whether the effective ISA has AVX-512 (avx512_core): oneDNN's int8 GEMM driver takes s8 x s8 natively only there;
// below it, gemm_s8s8s32 shifts a copy of one operand to u8 and sums the other in plain loops on every call.
inline bool effective_isa_has_avx512_core() {
  const auto isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  const auto level = static_cast<unsigned>(dnnl_cpu_isa_avx512_core);
  return (isa & level) == level;
}

}  // namespace attn::ops::onednn
