// Small helpers for the examples: random tensors and printing.
#pragma once

#include <attn/attn.h>

#include <cstdio>
#include <random>

inline attn::Tensor random_tensor(attn::Shape shape, unsigned seed) {
  attn::Tensor t(std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = dist(rng);
  return t;
}

// Prints a [rows, cols] block of weights.
inline void print_weights(const char* title, const float* w, int64_t rows, int64_t cols) {
  std::printf("%s\n", title);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) std::printf(" %.3f", static_cast<double>(w[i * cols + j]));
    std::printf("\n");
  }
}
