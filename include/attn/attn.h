// attn/attn.h: everything a consumer of attn needs.
#pragma once

#include "attn/attention.h"
#include "attn/error.h"
#include "attn/io/npy.h"
#include "attn/io/safetensors.h"
#include "attn/layers/multi_head_attention.h"
#include "attn/tensor.h"
#include "attn/version.h"
