// Inputs the fuzzers (fuzz/run.sh) once found crashing or hanging: each must now parse or throw a
// FormatError, nothing else. Files live in tests/fuzz_regressions/{npy,safetensors}/.
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
    try {
      parse(bytes);
    } catch (const FormatError&) {
    }
    ++n;
  }
  return n;
}

TEST(FuzzRegressions, NpyInputsParseOrThrowFormatError) {
  const int n = replay(std::string(ATTN_FUZZ_REGRESSION_DIR) + "/npy",
                       [](const auto& b) { io::parse_npy(b.data(), b.size(), "fuzz"); });
  std::cout << n << " npy regression inputs\n";
}

TEST(FuzzRegressions, SafetensorsInputsParseOrThrowFormatError) {
  const int n = replay(std::string(ATTN_FUZZ_REGRESSION_DIR) + "/safetensors",
                       [](const auto& b) { io::parse_safetensors(b.data(), b.size(), "fuzz"); });
  std::cout << n << " safetensors regression inputs\n";
}

}  // namespace
}  // namespace attn
