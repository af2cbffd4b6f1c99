/* attn/cuda_c.h: the C entry points of libattn_cuda (attn/cuda.h), for callers without C++ (Python's ctypes in
 * python/attn/cuda.py). The same problem as attn::cuda::DeviceAttention, in plain C fields. Each function returns
 * ATTN_CUDA_OK or an error code and writes the message (naming the argument and shapes) into `error`. */
#ifndef ATTN_CUDA_C_H
#define ATTN_CUDA_C_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  ATTN_CUDA_OK = 0,
  ATTN_CUDA_SHAPE_ERROR = 1,
  ATTN_CUDA_DTYPE_ERROR = 2,
  ATTN_CUDA_ARGUMENT_ERROR = 3,
  ATTN_CUDA_RUNTIME_ERROR = 4
};

/* [B, heads, L, D] in device memory: element (b, h, l, d) at data[b*sb + h*sh + l*sl + d] */
typedef struct {
  void* data;
  int64_t sb, sh, sl;
} attn_cuda_tensor;

typedef struct {
  int64_t B, H, Hkv, Lq, Lk, D;
  int32_t dtype;  /* 0 bfloat16, 1 float16 */
  int32_t causal; /* 0 none, 1 top-left, 2 bottom-right */
  int64_t window;
  int32_t has_scale; /* 0: scale = 1/sqrt(D) */
  float scale;
  attn_cuda_tensor q, k, v, o; /* q, o: [B, H, Lq, D]; k, v: [B, Hkv, Lk, D] */
  float* lse;                  /* [B, H, Lq] float32 contiguous, or NULL (forward) */
  const uint8_t* key_padding;  /* [B, Lk], 1 = padding, or NULL */
  void* stream;                /* cudaStream_t */
} attn_cuda_problem;

typedef struct {
  attn_cuda_tensor out, d_out, dq, dk, dv;
} attn_cuda_grads;

int attn_cuda_forward(const attn_cuda_problem* p, char* error, int error_len);
int attn_cuda_backward(const attn_cuda_problem* p, const attn_cuda_grads* g, char* error, int error_len);
int attn_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif
