// Inputs the fuzzers (fuzz/run.sh) once found crashing or hanging: each must now parse or throw a
// FormatError, nothing else; those named reject_* (tensors sharing bytes, which had been accepted; a header nested
// without bound; ...) must throw it. Files live in tests/fuzz_regressions/{npy,safetensors}/.
#include <filesystem>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/npy.h"
#include "attn/io/safetensors.h"
#include "test_util.h"

namespace attn {
namespace {

template <class Parse>
int replay(const std::string& dir, Parse&& parse) {
  int n = 0;
  if (!std::filesystem::exists(dir)) return 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (!e.is_regular_file() || e.path().filename().string()[0] == '.' || e.path().extension() == ".md") continue;
    const auto bytes = io::read_file(e.path().string());
    const bool must_reject = e.path().filename().string().rfind("reject_", 0) == 0;
    try {
      parse(bytes);
      EXPECT_FALSE(must_reject) << e.path() << " was accepted";
    } catch (const FormatError&) {
    }
    ++n;
  }
  return n;
}

TEST(FuzzRegressions, NpyInputsParseOrThrowFormatError) {
  const int n = replay(std::string(ATTN_FUZZ_REGRESSION_DIR) + "/npy",
                       [](const auto& b) { io::parse_npy(b.data(), b.size(), "fuzz"); });
  EXPECT_GE(n, 3) << "the regression inputs are missing";
}

TEST(FuzzRegressions, SafetensorsInputsParseOrThrowFormatError) {
  const int n = replay(std::string(ATTN_FUZZ_REGRESSION_DIR) + "/safetensors",
                       [](const auto& b) { io::parse_safetensors(b.data(), b.size(), "fuzz"); });
  EXPECT_GE(n, 4) << "the regression inputs are missing";
}

}  // namespace
}  // namespace attn
