// Line-by-line input to the attn command line never loses work: a bad line of standard input costs only
// itself (reported on stderr with its number, an empty line or a row of NaN in its place, a non-zero exit
// status at the end), --strict stops before writing anything, a phrase outside the numbers task's grammar
// is translated with a warning, and no command leaves a partial output file behind.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "attn/io/npy.h"
#include "cli_util.h"
#include "test_util.h"

namespace attn {
namespace {

namespace fs = std::filesystem;
using test::CliResult;

class CliLines : public test::Cli {
 protected:
  // Every line of `text`, without the newlines.
  static std::vector<std::string> lines(const std::string& text) {
    std::vector<std::string> out;
    for (size_t at = 0; at < text.size();) {
      const size_t nl = text.find('\n', at);
      out.push_back(text.substr(at, nl == std::string::npos ? std::string::npos : nl - at));
      at = nl == std::string::npos ? text.size() : nl + 1;
    }
    return out;
  }
  // No temporary or partial file left in the test's directory.
  void expect_no_temporaries() const {
    for (const auto& e : fs::directory_iterator(dir_)) {
      const std::string name = e.path().filename().string();
      EXPECT_EQ(name.find(".partial"), std::string::npos) << name;
      EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
    }
  }
};

bool failed_cleanly(const CliResult& r) { return r.status > 0 && r.status < 128; }

TEST_F(CliLines, TranslateKeepsTheGoodLinesAroundABadOne) {
  write("in.txt", "one hundred\nand\none hundred one\n");  // the issue's example
  CliResult r = run("translate < " + path("in.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "一百\n\n一百零一\n") << r.err;
  EXPECT_NE(r.err.find("line 2: unknown word 'and'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1 of 3 lines failed"), std::string::npos) << r.err;

  // several kinds of bad line (empty, misspelt, too long), one output line per input line
  std::string too_long;
  for (int i = 0; i < 70; ++i) too_long += "one ";
  write("mixed.txt", "ten\n\nelevn\n" + too_long + "\nfifteen\n");
  r = run("translate --beam 2 < " + path("mixed.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "十\n\n\n\n十五\n") << r.err;
  for (const char* needle : {"line 2: the input is empty", "line 3: unknown word 'elevn'",
                             "line 4: the input has 70 words", "3 of 5 lines failed (lines 2, 3, 4)"})
    EXPECT_NE(r.err.find(needle), std::string::npos) << needle << "\n" << r.err;
  EXPECT_EQ(r.err.find("line 1"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("line 5"), std::string::npos) << r.err;

  write("allbad.txt", "and\n");
  r = run("translate < " + path("allbad.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "\n");
}

// Standard input is read from descriptor 0 where it stands: reopening /dev/stdin had started a file the shell had
// partly read over from its beginning (translating its first line again) and had failed for a socket (ENXIO), what a
// parent such as Node.js hands its children.
TEST_F(CliLines, TranslateReadsStandardInputWhereItStandsSocketsIncluded) {
  write("in.txt", "one\ntwo\n");
  const std::string after_first_line = "{ IFS= read -r skipped; " + std::string(ATTN_BINARY) + " translate; } < " +
                                       path("in.txt") + " > " + path("stdout") + " 2> " + path("stderr");
  ASSERT_EQ(std::system(after_first_line.c_str()), 0) << slurp(path("stderr"));
  EXPECT_EQ(slurp(path("stdout")), "\xe4\xba\x8c\n");  // 二, the second line's alone

  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const std::string out = path("stdout"), err = path("stderr");  // (before the fork: the child only calls into the OS)
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::dup2(sv[0], 0);
    ::close(sv[0]), ::close(sv[1]);
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644),
              e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1), ::dup2(e, 2);
    ::execl(ATTN_BINARY, ATTN_BINARY, "translate", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(sv[0]);
  const std::string text = "one\ntwo\n";
  ASSERT_EQ(::write(sv[1], text.data(), text.size()), static_cast<ssize_t>(text.size()));
  ::close(sv[1]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << slurp(path("stderr"));
  EXPECT_EQ(slurp(path("stdout")), "\xe4\xb8\x80\n\xe4\xba\x8c\n");  // 一, 二
}

TEST_F(CliLines, TranslateStrictStopsAtTheFirstBadLineBeforePrintingAnything) {
  write("in.txt", "one hundred\nand\nelevn\none hundred one\n");
  const CliResult r = run("translate --strict < " + path("in.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("line 2: unknown word 'and'"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("line 3"), std::string::npos) << "stops at the first: " << r.err;
}

TEST_F(CliLines, TranslateWarnsAboutPhrasesOutsideTheGrammarAndStillTranslates) {
  CliResult r = run("translate \"one million million\"");
  EXPECT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(lines(r.out).size(), 1u) << r.out;
  EXPECT_FALSE(lines(r.out)[0].empty());
  EXPECT_NE(r.err.find("warning"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1000000000000"), std::string::npos) << r.err;

  write("in.txt", "ten\nninety nine hundred\none hundred one\n");
  r = run("translate < " + path("in.txt"));
  EXPECT_EQ(r.status, 0) << r.err;
  const std::vector<std::string> out = lines(r.out);
  ASSERT_EQ(out.size(), 3u) << r.out;
  EXPECT_EQ(out[0], "十");
  EXPECT_FALSE(out[1].empty());
  EXPECT_EQ(out[2], "一百零一");
  EXPECT_NE(r.err.find("warning: line 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\"nine thousand nine hundred\""), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("line 1"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("line 3"), std::string::npos) << r.err;

  r = run("translate --strict < " + path("in.txt"));  // --strict: an error, before any output
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("line 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--strict"), std::string::npos) << r.err;
  r = run("translate --strict ninety nine hundred");
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "");

  r = run("translate nine thousand nine hundred");  // the canonical phrase: no word on stderr
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.out, "九千九百\n");
  EXPECT_EQ(r.err, "");
}

TEST_F(CliLines, TranslateNormalisesCaseSpacingAndCrlf) {
  // a UTF-8 byte-order mark before line 1 is no part of it (it had made "three" an unknown word)
  write("in.txt", "\xEF\xBB\xBF  Three HUNDRED\ttwelve \r\nTEN\r\n");
  const CliResult r = run("translate --strict < " + path("in.txt"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "三百一十二\n十\n");
  EXPECT_EQ(r.err, "") << "normalised input is inside the grammar";
}

// Control characters from the input reach the terminal escaped: an unknown word holding ESC [2J (clear the screen)
// or a C1 control had been printed raw inside the error.
TEST_F(CliLines, ControlCharactersInErrorsAreEscaped) {
  write("in.txt",
        "ten\none \x1b[2J\ntwo \xc2\x9b"
        "5m\n");
  for (const std::string& flags : {std::string(), std::string(" --strict")}) {
    const CliResult r = run("translate" + flags + " < " + path("in.txt"));
    EXPECT_TRUE(failed_cleanly(r)) << r.status;
    EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("\xc2\x9b"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("\\x1B[2j"), std::string::npos) << r.err;  // (lower-cased as the input is)
    if (flags.empty()) {
      EXPECT_NE(r.err.find("\\u009B5m"), std::string::npos) << r.err;
    }
  }
}

// An argument CLI11 refuses is quoted in its message: escaped too (CLI11's own message had printed it raw).
TEST_F(CliLines, ControlCharactersInParseErrorsAreEscaped) {
  for (const std::string& args : {std::string("bench sdpa --heads \"$(printf '\\033[2J')\""),
                                  std::string("bench sdpa --heads 1 \"x$(printf '\\033[2J')\"")}) {
    const CliResult r = run(args);
    EXPECT_TRUE(failed_cleanly(r)) << r.status;
    EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("\\x1B[2J"), std::string::npos) << r.err;
  }
}

// Bytes that are not UTF-8 are named by offset, never echoed raw: translate's line fails as not UTF-8 (its unknown
// word had been printed as it came), similar leaves the line out of the ranking (it had ranked it) and refuses such a
// query.
TEST_F(CliLines, TextThatIsNotUtf8IsReportedNotEchoedOrRanked) {
  write("in.txt", "ten\none \xff\xfe\nfifteen\n");
  CliResult r = run("translate < " + path("in.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "十\n\n十五\n") << r.err;
  EXPECT_NE(r.err.find("line 2: not valid UTF-8 (byte 0xFF at offset 4)"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("\xff"), std::string::npos) << r.err;
  const std::string model = " --model " + std::string(ATTN_MINILM_DIR);
  write("s.txt", "A man is eating food.\nA man \xff is eating.\n\nA man is riding a horse.\n");
  r = run("similar" + model + " \"A person eats a meal\" < " + path("s.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(lines(r.out).size(), 2u) << r.out;  // the two good sentences, ranked
  EXPECT_EQ(r.out.find("\xff"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("line 2: not valid UTF-8"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1 of 4 lines failed"), std::string::npos) << r.err;
  r = run("similar" + model + " \"a \xff query\" < " + path("s.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("the query: not valid UTF-8"), std::string::npos) << r.err;
}

TEST_F(CliLines, EmbedGivesARowOfNanForABadLineAndKeepsTheRest) {
  const std::string model = " --model " + std::string(ATTN_MINILM_DIR);
  CliResult r = run("embed" + model + " \"the cat sat\" \"a dog ran\" --out " + path("want.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  const Tensor want = io::read_npy(path("want.npy"));  // [2, 384]

  write("in.txt", "the cat sat\n\xff\xfe not UTF-8\na dog ran\n");
  r = run("embed" + model + " --out " + path("e.npy") + " < " + path("in.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_NE(r.err.find("line 2: not valid UTF-8 (byte 0xFF at offset 0)"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1 of 3 lines failed"), std::string::npos) << r.err;
  const Tensor e = io::read_npy(path("e.npy"));
  ASSERT_EQ(e.shape(), (Shape{3, 384}));
  for (int64_t d = 0; d < 384; ++d) {
    EXPECT_TRUE(std::isnan(e.f32()[384 + d])) << d;
    EXPECT_NEAR(e.f32()[d], want.f32()[d], 1e-5) << d;
    EXPECT_NEAR(e.f32()[2 * 384 + d], want.f32()[384 + d], 1e-5) << d;
  }
  expect_no_temporaries();

  r = run("embed" + model + " < " + path("in.txt"));  // text output: three rows, the second NaN
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  const std::vector<std::string> rows = lines(r.out);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[1].rfind("nan nan ", 0), 0u) << rows[1].substr(0, 40);
  EXPECT_EQ(rows[0].find("nan"), std::string::npos);
}

// --quantize int8: the dense layers' int8 copies (tests/lowp_models_test.cc bounds their distance to float32); with
// --dtype bf16 a usage error before any output.
TEST_F(CliLines, EmbedQuantizeInt8IsCloseToFloat32AndExcludesBf16) {
  const std::string model = " --model " + std::string(ATTN_MINILM_DIR);
  CliResult r = run("embed" + model + " \"the cat sat\" --out " + path("f32.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  r = run("embed" + model + " --quantize int8 \"the cat sat\" --out " + path("int8.npy"));
  ASSERT_EQ(r.status, 0) << r.err;
  const Tensor a = io::read_npy(path("f32.npy")), b = io::read_npy(path("int8.npy"));
  ASSERT_EQ(b.shape(), (Shape{1, 384}));
  double dot = 0.0, diff = 0.0;
  for (int64_t d = 0; d < 384; ++d) dot += a.f32()[d] * b.f32()[d], diff += std::fabs(a.f32()[d] - b.f32()[d]);
  EXPECT_GE(dot, 0.96);  // both L2-normalised: the cosine
  EXPECT_GT(diff, 0.0);  // the int8 path ran
  r = run("embed" + model + " --quantize int8 --dtype bf16 \"the cat sat\" --out " + path("both.npy"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_NE(r.err.find("--dtype bf16 and --quantize int8 exclude each other"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(path("both.npy")));
}

TEST_F(CliLines, EmbedStrictWritesNothingAndLeavesAnOldFileAlone) {
  write("in.txt", "the cat sat\n\xc3\x28 broken\n");
  write("e.npy", "the previous contents");
  const CliResult r = run("embed --strict --model " + std::string(ATTN_MINILM_DIR) + " --out " + path("e.npy") + " < " +
                          path("in.txt"));
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_NE(r.err.find("line 2: not valid UTF-8 (byte 0xC3 at offset 0)"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(path("e.npy")), "the previous contents");
  expect_no_temporaries();
}

TEST_F(CliLines, VizWritesBothFilesOrNeither) {
  for (const std::string& png : {path("nodir/map.png") + " ", path("map.png") + " --png-map no.such.map"}) {
    const CliResult r = run("viz \"three hundred twelve\" --out " + path("page.html") + " --png " + png);
    EXPECT_TRUE(failed_cleanly(r)) << png << ": " << r.status;
    EXPECT_FALSE(fs::exists(path("page.html"))) << png;
    EXPECT_FALSE(fs::exists(path("map.png"))) << png;
    expect_no_temporaries();
  }
  const CliResult r = run("viz \"Three Hundred Twelve\" --out " + path("page.html") + " --png " + path("map.png"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, "三百一十二\n");
  EXPECT_TRUE(fs::exists(path("page.html")) && fs::exists(path("map.png")));
  expect_no_temporaries();
}

// A translation cut at the model's max_len (no end-of-sentence in time) is drawn: its decoder input is max_len tokens,
// the last one produced never fed back (one more had been refused by the forward, where attn translate printed it).
TEST_F(CliLines, VizDrawsATranslationCutAtMaxLen) {
  const fs::path model = path("short_model");
  fs::create_directories(model);
  for (const auto& entry : fs::directory_iterator(ATTN_SOURCE_MODEL_DIR))
    if (entry.path().filename() != "config.json") fs::create_symlink(entry.path(), model / entry.path().filename());
  std::string config = slurp(std::string(ATTN_SOURCE_MODEL_DIR) + "/config.json");
  const size_t at = config.find("\"max_len\":");
  ASSERT_NE(at, std::string::npos);
  const size_t end = config.find_first_of(",}", at);
  write("short_model/config.json", config.substr(0, at) + "\"max_len\": 10" + config.substr(end));
  const std::string text = "\"nine hundred ninety nine thousand nine hundred ninety nine\"";
  const CliResult translated = run("translate --model " + model.string() + " " + text);
  ASSERT_EQ(translated.status, 0) << translated.err;
  const CliResult drawn = run("viz --model " + model.string() + " " + text + " --out " + path("cut.html"));
  EXPECT_EQ(drawn.status, 0) << drawn.err;
  EXPECT_EQ(drawn.out, translated.out);
  EXPECT_TRUE(fs::exists(path("cut.html")));
}

// The random map draws to --png alone too (it had tried to rename a page that was never written), and a failed PNG
// leaves neither file.
TEST_F(CliLines, VizRandomMapWritesThePngAlone) {
  CliResult r = run("viz --random-map 40 --png " + path("random.png"));
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(slurp(path("random.png")).substr(1, 3), "PNG");
  r = run("viz --random-map 40 --out " + path("r.html") + " --png " + path("r.png") + " --png-head 3");
  EXPECT_TRUE(failed_cleanly(r)) << r.status;
  EXPECT_NE(r.err.find("--png-head 3"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("r.html")) || fs::exists(path("r.png")));
  expect_no_temporaries();
}

// Options that would do nothing are refused (they had been ignored), text that is not UTF-8 never reaches a page, a
// model path holding "<!--<script" cannot blank the page (the inline data has no "<"), and output that cannot reach
// standard output is a failure (a full disk had exited 0).
TEST_F(CliLines, VizRefusesIdleOptionsAndEscapesItsData) {
  const std::string bert = " --model " + std::string(ATTN_MINILM_DIR);
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"five --out " + path("a.html") + " --png-head 2", "give --png"},
           {"five --out " + path("a.html") + " --png-map x", "give --png"},
           {"--random-map -3 --png " + path("a.png"), "--random-map must be in [1, 8192]"},
           {"five --random-map 4 --png " + path("a.png"), "no text"},
           // checked against the model's names and heads before any work (it had been after the whole page)
           {"five --png " + path("a.png") + " --png-map nope", "it has encoder.layers.0.self_attn"},
           {"five --png " + path("a.png") + " --png-head 9", "--png-head 9: the model has 4 heads"},
           {"--random-map 4 --png " + path("a.png") + " --png-map x", "(it has random)"},
           {"hello --beam 3 --out " + path("a.html") + bert, "--beam is for a translation model"},
           {"\"caf\xe9\" --out " + path("a.html") + bert, "the text: not valid UTF-8"},
           // whitespace alone is no text (it had drawn [CLS] [SEP]); a missing folder fails before the work (after it)
           {"\"   \" --out " + path("a.html") + bert, "give the text"},
           {"five --out " + path("no_such_folder/a.html"), "its folder"}}) {
    const CliResult r = run("viz " + args);
    EXPECT_TRUE(failed_cleanly(r)) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(path("a.html")) || fs::exists(path("a.png")));
  fs::create_directory_symlink(ATTN_MINILM_DIR, path("m<!--<script>"));
  const CliResult r = run("viz hello --out " + path("p.html") + " --model '" + path("m<!--<script>") + "'");
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string page = slurp(path("p.html"));
  EXPECT_EQ(page.find("<!--<script"), std::string::npos);
  EXPECT_NE(page.find("\\u003c!--\\u003cscript"), std::string::npos);
  // U+2028 escaped inside the script; bytes that are not UTF-8 as U+FFFD (JSON's dump had thrown, naming nothing)
  fs::create_directory_symlink(ATTN_MINILM_DIR, path("m\xe2\x80\xa8\xff"));
  const CliResult odd = run("viz hello --out " + path("q.html") + " --model '" + path("m\xe2\x80\xa8\xff") + "'");
  ASSERT_EQ(odd.status, 0) << odd.err;
  const std::string script = slurp(path("q.html")).substr(slurp(path("q.html")).find("<script"));
  EXPECT_EQ(script.find("\xe2\x80\xa8"), std::string::npos);
  EXPECT_NE(script.find("\\u2028\xef\xbf\xbd"), std::string::npos);
  const int raw =
      std::system((std::string(ATTN_BINARY) + " explain >/dev/full 2>" + path("full.err")).c_str());  // not run()'s
  EXPECT_TRUE(WIFEXITED(raw) && WEXITSTATUS(raw) > 0 && WEXITSTATUS(raw) < 128) << raw;
  EXPECT_NE(slurp(path("full.err")).find("writing standard output failed"), std::string::npos);
}

// Options that cannot apply (the checkpoint's recipe beside --resume), and outputs that would collide, are refused
// before any work; the loss log never replaces
// a checkpoint file, and a failed run removes only a log it opened itself.
TEST_F(CliLines, IdleOptionsAndCollidingOutputsAreRefused) {
  const auto tiny_with = [](int heads) {
    return " --steps 2 --train-examples 16 --batch-size 8 --d-model 8 --heads " + std::to_string(heads) +
           " --d-ff 8 --encoder-layers 1 --decoder-layers 1 --eval-every 0 --no-progress";
  };
  const std::string tiny = tiny_with(2);
  write("keep.partial", "someone else's\n");
  for (const auto& [args, needle] : std::vector<std::pair<std::string, std::string>>{
           {"train" + tiny + " --out " + path("ck") + " --loss-log " + path("ck/train_state.json"), "--out's"},
           {"train" + tiny_with(3) + " --out " + path("ck") + " --loss-log " + path("heads.log"), "num_heads = 3"},
           {"train" + tiny + " --bucket-mb -1", "--bucket-mb"},
           // its FILE.partial exists: someone else's, refused before the work (it had been overwritten, then removed)
           {"train" + tiny + " --out " + path("ck2") + " --loss-log " + path("keep"), "keep.partial exists"},
           // a resumed run's model is the checkpoint's: a flag that would change it is refused, not ignored
           {"train --resume " + path("ck") + " --steps 4 --heads 2 --dropout 0", "--heads, --dropout"},
           {"sdpa --q q.npy --k k.npy --v v.npy --out " + path("o.npy") + " --ring-layout zigzag", "--ring-layout"},
           {"bench sdpa --batch 0 --no-peak", "--batch"},
           {"bench mha --len 0", "--len"},  // (it had timed empty calls at 0 GFLOP/s, exit 0)
           {"sdpa --q q.npy --k k.npy --v v.npy --out \"\"", "--out: an empty path"}}) {
    const CliResult r = run(args);
    EXPECT_TRUE(failed_cleanly(r)) << args;
    EXPECT_NE(r.err.find(needle), std::string::npos) << args << ": " << r.err;
  }
  EXPECT_FALSE(fs::exists(path("ck/train_state.json")) || fs::exists(path("o.npy")));
  EXPECT_EQ(slurp(path("keep.partial")), "someone else's\n");  // not this run's: left alone
  // ... and refused before any work: no banner, no step (it had been found at the first step's log line)
  const CliResult partial = run("train" + tiny + " --out " + path("ck3") + " --loss-log " + path("keep"));
  EXPECT_TRUE(failed_cleanly(partial));
  EXPECT_EQ(partial.err.find("training numbers-en-zh"), std::string::npos) << partial.err;
  // a log whose name is near NAME_MAX (255 bytes): its FILE.partial is io::sibling_path's shorter name (FILE +
  // ".partial" had been too long to create, and the run failed at its first step)
  const std::string long_log = path(std::string(250, 'l'));
  const CliResult long_name = run("train" + tiny + " --out " + path("ck4") + " --loss-log " + long_log);
  ASSERT_EQ(long_name.status, 0) << long_name.err;
  EXPECT_EQ(slurp(long_log).substr(0, 2), "1 ");
  // an option greedy decoding has no use for is named on stderr (a warning, as Hugging Face's generate), not refused
  const CliResult greedy = run("translate --length-penalty 0.6 one hundred");
  EXPECT_EQ(greedy.status, 0) << greedy.err;
  EXPECT_NE(greedy.err.find("--length-penalty"), std::string::npos) << greedy.err;
  EXPECT_EQ(run("translate --beam 2 --length-penalty 0.6 one hundred").err.find("--length-penalty"), std::string::npos);
}

// A resumed run continues its loss log as an uninterrupted run's reads: the lines up to the checkpoint's step, then
// its own (it had held its own steps alone), also from the FILE.partial a killed run left (which had blocked --resume).
TEST_F(CliLines, AResumedRunContinuesItsLossLog) {
  const auto tiny = [](int steps, int eval_every = 0) {
    return " --steps " + std::to_string(steps) +
           " --train-examples 16 --batch-size 8 --d-model 8 --heads 2 --d-ff 8 --encoder-layers 1 "
           "--decoder-layers 1 --no-progress --eval-every " +
           std::to_string(eval_every);
  };
  ASSERT_EQ(run("train" + tiny(4) + " --out " + path("straight") + " --loss-log " + path("straight.log")).status, 0);
  const std::string straight = slurp(path("straight.log"));
  ASSERT_EQ(std::count(straight.begin(), straight.end(), '\n'), 4) << straight;
  for (const bool killed : {false, true}) {
    const std::string dir = path(killed ? "killed" : "finished"), log = path(killed ? "killed.log" : "finished.log");
    ASSERT_EQ(run("train" + tiny(2) + " --out " + dir + " --loss-log " + log).status, 0);
    if (killed) {  // a resumed run killed at its fourth step: its steps 3 and a half-written 4 after the first two
      write("killed.log.partial", slurp(log) + "3 1.5\n4 1.");
      fs::remove(log);
    }
    const CliResult r = run("train --resume " + dir + " --steps 4 --no-progress --loss-log " + log);
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(slurp(log), straight) << (killed ? "killed" : "finished");
    EXPECT_FALSE(fs::exists(log + ".partial"));
  }
  // a run killed for real (SIGKILL, mid-run): its FILE.partial holds every finished step's line (it had been buffered:
  // up to 4 KB of lines lost), and --resume from its last checkpoint continues it without a gap
  const std::string tiny_forever = tiny(1000000, 1) + " --threads 1";
  const std::string killed = path("sigkill"), killed_log = path("sigkill.log");
  int64_t at = 0;
  CliResult resumed;
  // (a kill that lands between a checkpoint's renames, a few microseconds a step, leaves files of two saves, which
  // --resume rightly refuses: then once more)
  for (int attempt = 0; attempt < 3; ++attempt) {
    fs::remove_all(killed), fs::remove(killed_log), fs::remove(killed_log + ".partial");
    std::system(("timeout -s KILL 3 " + std::string(ATTN_BINARY) + " train" + tiny_forever + " --out " + killed +
                 " --loss-log " + killed_log + " >/dev/null 2>&1")
                    .c_str());
    ASSERT_TRUE(fs::exists(killed_log + ".partial"));
    ASSERT_FALSE(fs::exists(killed_log));
    const std::string state = slurp(killed + "/train_state.json");
    at = std::stoll(state.substr(state.find("\"step\":") + 7));
    ASSERT_GT(at, 0) << state;
    resumed = run("train --resume " + killed + " --steps " + std::to_string(at + 2) + " --no-progress --loss-log " +
                  killed_log);
    if (resumed.err.find("different saves") == std::string::npos) break;
  }
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  std::istringstream lines(slurp(killed_log));
  int64_t expected = 1, step = 0;
  std::string loss;
  while (lines >> step >> loss) EXPECT_EQ(step, expected++);
  EXPECT_EQ(expected, at + 3) << "the log's steps: 1 to " << expected - 1 << ", the checkpoint's " << at;
  // a FILE.partial that is a link (to someone's file) is never taken over, not even by --resume: it had been truncated
  write("target.txt", "someone's\n");
  fs::create_symlink(path("target.txt"), path("linked.log.partial"));
  const CliResult linked =
      run("train --resume " + path("finished") + " --steps 5 --no-progress --loss-log " + path("linked.log"));
  EXPECT_TRUE(failed_cleanly(linked)) << linked.err;
  EXPECT_EQ(slurp(path("target.txt")), "someone's\n");
  // the log may not be a file of the checkpoint resumed from (it had replaced its train_state.json at the end)
  const std::string state_before = slurp(path("finished") + "/train_state.json");
  const CliResult onto_state = run("train --resume " + path("finished") + " --out " + path("elsewhere") +
                                   " --steps 5 --no-progress --loss-log " + path("finished") + "/train_state.json");
  EXPECT_TRUE(failed_cleanly(onto_state)) << onto_state.err;
  EXPECT_NE(onto_state.err.find("--resume's train_state.json"), std::string::npos) << onto_state.err;
  EXPECT_EQ(slurp(path("finished") + "/train_state.json"), state_before);
}

// A sentence-transformers directory whose modules.json keeps the Transformer in a folder of its own (older saves:
// 0_Transformer) is a --model for embed (it had been refused: no config.json at its top).
TEST_F(CliLines, EmbedTakesAModelWhoseTransformerLivesInAFolder) {
  const fs::path model(ATTN_MINILM_DIR), dir = path("older_save");
  fs::create_directories(dir / "0_Transformer");
  for (const auto& entry : fs::directory_iterator(model)) {
    const std::string name = entry.path().filename().string();
    if (name != "modules.json")
      fs::create_symlink(entry.path(), (name == "1_Pooling" ? dir : dir / "0_Transformer") / name);
  }
  write("older_save/modules.json", R"([{"type": "sentence_transformers.models.Transformer", "path": "0_Transformer"},
      {"type": "sentence_transformers.models.Pooling", "path": "1_Pooling"},
      {"type": "sentence_transformers.models.Normalize", "path": "2_Normalize"}])");
  const CliResult moved = run("embed --model " + dir.string() + " \"A man is eating food.\"");
  ASSERT_EQ(moved.status, 0) << moved.err;
  const CliResult direct = run("embed --model " + model.string() + " \"A man is eating food.\"");
  ASSERT_EQ(direct.status, 0) << direct.err;
  EXPECT_EQ(moved.out, direct.out);
  // weights as pytorch_model.bin alone: refused with the conversion to run (it had been "needs model.safetensors")
  fs::create_directories(path("bin_only"));
  for (const char* name : {"config.json", "vocab.txt"}) fs::create_symlink(model / name, path("bin_only") + "/" + name);
  fs::create_symlink(model / "model.safetensors", path("bin_only") + "/pytorch_model.bin");
  const CliResult bin_only = run("embed --model " + path("bin_only") + " \"A man is eating food.\"");
  EXPECT_TRUE(failed_cleanly(bin_only)) << bin_only.status;
  EXPECT_NE(bin_only.err.find("save_pretrained"), std::string::npos) << bin_only.err;
}

// similar prints each ranked line whole: a NUL byte inside a line had cut it there (printf's %s).
TEST_F(CliLines, SimilarPrintsLinesWhole) {
  write("s.txt", std::string("A man is eating food.\nA man\0 is riding a horse.\n", 48));
  const CliResult r = run("similar --model " + std::string(ATTN_MINILM_DIR) + " \"A person eats\" < " + path("s.txt"));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find(std::string("A man\0 is riding a horse.\n", 26)), std::string::npos) << r.out;
}

}  // namespace
}  // namespace attn
