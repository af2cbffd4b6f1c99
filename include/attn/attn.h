// attn/attn.h: everything a consumer of attn needs.
#pragma once

#include "attn/activation.h"
#include "attn/attention.h"
#include "attn/error.h"
#include "attn/generation.h"
#include "attn/io/npy.h"
#include "attn/io/safetensors.h"
#include "attn/layers/decode_cache.h"
#include "attn/layers/multi_head_attention.h"
#include "attn/models/bert.h"
#include "attn/models/transformer.h"
#include "attn/tasks/numbers_en_zh.h"
#include "attn/tensor.h"
#include "attn/text/wordpiece.h"
#include "attn/train/trainer.h"
#include "attn/translator.h"
#include "attn/version.h"
