// Thread counts (OpenMP), shared by the kernels and the layers above them.
#pragma once

#include <omp.h>

namespace attn::detail {

// At most 4 threads a processor: more only oversubscribes, and a team of 100000 had overflowed libgomp's stack.
inline int capped_threads(int n) { return n < 4 * omp_get_num_procs() ? n : 4 * omp_get_num_procs(); }

// requested > 0: that many threads (capped_threads); 0: OpenMP's default (OMP_NUM_THREADS or all cores).
inline int resolve_threads(int requested) { return requested > 0 ? capped_threads(requested) : omp_get_max_threads(); }

// Sets OpenMP's thread count for a scope: the kernels' default and the pool OpenBLAS and oneDNN (OpenMP builds)
// run their GEMMs on. 0 leaves it alone.
class ThreadScope {
 public:
  explicit ThreadScope(int n) : saved_(omp_get_max_threads()), set_(n > 0) {
    if (set_) omp_set_num_threads(capped_threads(n));
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
