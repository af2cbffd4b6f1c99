// Thread counts (OpenMP), shared by the kernels and the layers above them.
#pragma once

#include <omp.h>

namespace attn::detail {

// requested > 0: that many threads; 0: OpenMP's default (OMP_NUM_THREADS or all cores).
inline int resolve_threads(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

// Sets OpenMP's thread count for a scope: the kernels' default and the pool OpenBLAS and oneDNN (OpenMP builds)
// run their GEMMs on. 0 leaves it alone.
class ThreadScope {
 public:
  explicit ThreadScope(int n) : saved_(omp_get_max_threads()), set_(n > 0) {
    if (set_) omp_set_num_threads(n);
  }
  ~ThreadScope() {
    if (set_) omp_set_num_threads(saved_);
  }
  ThreadScope(const ThreadScope&) = delete;
  ThreadScope& operator=(const ThreadScope&) = delete;

 private:
  int saved_;
  bool set_;
};

}  // namespace attn::detail
