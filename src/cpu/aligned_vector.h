// Internal: std::vector whose storage starts on a 64-byte boundary (one cache line, one zmm register).
// glibc's malloc aligns to 16 bytes only, and a large block (mmap'd) starts at a page + 16: every 512-bit load
// of a kernel buffer in a plain std::vector<float> then straddled two cache lines, which Intel cores (two
// 512-bit loads a cycle, each from one line) pay for where Zen 4 (which splits them in halves anyway) barely does.
// Per instruction-set target, as simd.h's functions: std::vector's members (resize, the destructor) are instantiated
// for this allocator in every kernel build, and an AVX-512 copy merged by the linker into an AVX2 caller would
// fault there; a distinct allocator type per target keeps each build's copies its own.
#pragma once

#include <cstddef>
#include <new>
#include <vector>

#include "cpu/simd.h"  // ATTN_SIMD_NS

namespace attn::detail {
inline namespace ATTN_SIMD_NS {

template <class T>
struct CacheAlignedAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAlignedAllocator() = default;
  template <class U>
  CacheAlignedAllocator(const CacheAlignedAllocator<U>&) {}  // NOLINT: rebinding is implicit by design
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }
  template <class U>
  bool operator==(const CacheAlignedAllocator<U>&) const {
    return true;
  }
};

template <class T>
using AlignedVector = std::vector<T, CacheAlignedAllocator<T>>;

}  // namespace ATTN_SIMD_NS
}  // namespace attn::detail
