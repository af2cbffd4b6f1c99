// Internal: a tensor whose storage is left unfilled, for a kernel that writes every element of it.
#pragma once

#include "attn/tensor.h"

namespace attn::detail {

// Tensor's constructor zero-fills (calloc: free for fresh pages, a memset for memory the allocator reuses); an output a
// kernel then overwrites whole paid that pass twice (8% of a B 64, H 8, L 16, D 64 forward). Under AddressSanitizer
// and in builds without NDEBUG the storage is filled with NaN bits instead, so that an element a kernel leaves
// unwritten fails the tests rather than reading as whatever the allocator left there.
Tensor unfilled_tensor(Shape shape, DType dtype = DType::kFloat32);

}  // namespace attn::detail
