// Thread-count resolution shared by the kernels (OpenMP).
#pragma once

#include <omp.h>

namespace attn::detail {

// requested > 0: that many threads; 0: OpenMP's default (OMP_NUM_THREADS or all cores).
inline int resolve_threads(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

}  // namespace attn::detail
