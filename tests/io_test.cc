// .npy and .safetensors: values written by NumPy/PyTorch read back exactly; round trips; every kind
// of corrupt or lying header rejected with FormatError before any allocation it does not back.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cerrno>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "attn/error.h"
#include "attn/io/file.h"
#include "attn/io/npy.h"
#include "attn/io/safetensors.h"
#include "tensor_unfilled.h"
#include "test_util.h"

namespace attn {
namespace {

using test::fixture;

TEST(Npy, ReadsWhatNumPyWrote) {
  const Tensor a = io::read_npy(fixture("npy_v1_f4.npy"));
  ASSERT_EQ(a.shape(), (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(a.f32()[i], static_cast<float>(i) / 7.0f);
  const Tensor b = io::read_npy(fixture("npy_v2_f8.npy"));  // format 2.0, float64 -> float32
  ASSERT_EQ(b.shape(), (Shape{3, 4}));
  for (int i = 0; i < 12; ++i) EXPECT_FLOAT_EQ(b.f32()[i], static_cast<float>(-1.0 + 2.0 * i / 11.0));
  const Tensor c = io::read_npy(fixture("npy_v3_f4.npy"));  // format 3.0
  ASSERT_EQ(c.shape(), (Shape{5}));
  EXPECT_EQ(c.f32()[4], 4.0f);
  const Tensor d = io::read_npy(fixture("npy_bool.npy"));
  ASSERT_EQ(d.dtype(), DType::kBool);
  const uint8_t want[] = {1, 0, 1, 0, 0, 1};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(d.b8()[i], want[i]);
  const Tensor s = io::read_npy(fixture("npy_scalar.npy"));
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(s.f32()[0], 2.5f);
  EXPECT_EQ(io::read_npy(fixture("npy_empty.npy")).shape(), (Shape{0, 3}));
}

TEST(Npy, RejectsWhatItDoesNotSupport) {
  for (const char* name : {"npy_fortran.npy", "npy_big_endian.npy", "npy_int32.npy"}) {
    EXPECT_THROW(io::read_npy(fixture(name)), FormatError) << name;
  }
  try {
    io::read_npy(fixture("npy_int32.npy"));
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("<i4"), std::string::npos) << e.what();
  }
  EXPECT_THROW(io::read_npy("/nonexistent/x.npy"), FormatError);  // a FileError is one
  try {
    io::read_npy("/nonexistent/x.npy");
    ADD_FAILURE() << "read a file that does not exist";
  } catch (const FileError& e) {
    EXPECT_EQ(e.error_number(), ENOENT) << e.what();
  }
  try {
    io::read_safetensors("/");
    ADD_FAILURE() << "read a directory";
  } catch (const FileError& e) {
    EXPECT_EQ(e.error_number(), EISDIR) << e.what();
  }
}

TEST(Npy, RoundTrip) {
  std::mt19937 rng(1);
  for (const Shape& shape : {Shape{}, Shape{7}, Shape{2, 3, 4}, Shape{0, 5}}) {
    const Tensor t = test::random_tensor(shape, rng);
    const auto bytes = io::encode_npy(t);
    EXPECT_EQ((bytes.size() - t.nbytes()) % 64, 0u);  // header padded as NumPy pads it
    const Tensor u = io::parse_npy(bytes.data(), bytes.size(), "mem");
    EXPECT_EQ(u.shape(), shape);
    EXPECT_EQ(test::max_abs_diff(t, u), 0.0);
  }
  const Tensor b = test::random_bool({3, 3}, rng, 0.5);
  const auto bytes = io::encode_npy(b);
  const Tensor c = io::parse_npy(bytes.data(), bytes.size(), "mem");
  ASSERT_EQ(c.dtype(), DType::kBool);
  EXPECT_EQ(std::memcmp(b.raw(), c.raw(), 9), 0);
}

std::vector<uint8_t> npy_with_header(const std::string& dict, size_t data_bytes, int version = 1) {
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(version), 0};
  const size_t n = dict.size();
  out.push_back(static_cast<uint8_t>(n));
  out.push_back(static_cast<uint8_t>(n >> 8));
  if (version > 1) out.push_back(static_cast<uint8_t>(n >> 16)), out.push_back(static_cast<uint8_t>(n >> 24));
  out.insert(out.end(), dict.begin(), dict.end());
  out.resize(out.size() + data_bytes, 0);
  return out;
}

TEST(Npy, LyingHeadersAreRejectedWithoutAllocating) {
  const std::vector<std::pair<std::string, size_t>> bad = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }", 16},          // claims 4 TB
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 16},  // overflow
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 16},  // 20 bytes claimed, 16 held
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 16},  // 12 bytes claimed, 16 held
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }", 16},
      {"{'descr': '<f4', 'fortran_order': False }", 16},                       // no shape
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3,", 16},           // unterminated
      {"{'descr': '<f4, 'fortran_order': False, 'shape': (4,), }", 16},        // bad quotes
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), } junk", 16},  // NumPy's literal_eval refuses these
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (4), }", 16},        // an int, not a tuple
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (4,), }", 16},  // given twice
      {"", 16},
  };
  for (const auto& [dict, data] : bad) {
    const auto bytes = npy_with_header(dict, data);
    EXPECT_THROW(io::parse_npy(bytes.data(), bytes.size(), "mem"), FormatError) << dict;
  }
  // header length past the end of the file, and over the 1 MiB cap
  auto bytes = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 4);
  bytes[8] = 0xff, bytes[9] = 0xff;
  EXPECT_THROW(io::parse_npy(bytes.data(), bytes.size(), "mem"), FormatError);
  auto v2 = npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 4, 2);
  v2[11] = 0x7f;
  EXPECT_THROW(io::parse_npy(v2.data(), v2.size(), "mem"), FormatError);
  // truncated anywhere
  const auto good = io::encode_npy(Tensor::from_floats({3}, {1, 2, 3}));
  for (size_t n = 0; n < good.size(); ++n) EXPECT_THROW(io::parse_npy(good.data(), n, "mem"), FormatError) << n;
  EXPECT_THROW(io::parse_npy(bytes.data(), 3, "mem"), FormatError);
  bytes[0] = 'X';
  EXPECT_THROW(io::parse_npy(bytes.data(), bytes.size(), "mem"), FormatError);
  bytes[0] = 0x93, bytes[6] = 9;  // unknown version
  EXPECT_THROW(io::parse_npy(bytes.data(), bytes.size(), "mem"), FormatError);
}

TEST(Safetensors, ReadsWhatPyTorchWrote) {
  const io::Safetensors st = io::read_safetensors(fixture("mha_self.safetensors"));
  EXPECT_EQ(st.at("mha.in_proj_weight").shape(), (Shape{48, 16}));
  EXPECT_EQ(st.metadata.at("format"), "1");
  EXPECT_THROW(st.at("nope"), MissingTensorError);
  try {
    st.at("nope");
  } catch (const MissingTensorError& e) {
    EXPECT_NE(std::string(e.what()).find("mha.in_proj_weight"), std::string::npos) << "lists what the file has";
  }
}

// A safetensors image with one tensor of the given dtype holding raw bytes.
std::vector<uint8_t> safetensors_image(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8 + header.size());
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(header.size() >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

TEST(Safetensors, HalfPrecisionIsKeptAndWidensExactly) {
  // F16: 1.0 = 0x3c00, -2.0 = 0xc000, 65504 = 0x7bff, smallest subnormal 2^-24 = 0x0001, 0.5 = 0x3800
  const auto f16 = safetensors_image(R"({"x":{"dtype":"F16","shape":[5],"data_offsets":[0,10]}})",
                                     {0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b, 0x01, 0x00, 0x00, 0x38});
  const Tensor x16 = io::parse_safetensors(f16.data(), f16.size(), "mem").at("x");
  ASSERT_EQ(x16.dtype(), DType::kFloat16);  // not widened
  EXPECT_EQ(x16.f16()[2], 0x7bff);
  const Tensor x = to_dtype(x16, DType::kFloat32);
  EXPECT_EQ(x.f32()[0], 1.0f);
  EXPECT_EQ(x.f32()[1], -2.0f);
  EXPECT_EQ(x.f32()[2], 65504.0f);
  EXPECT_EQ(x.f32()[3], std::ldexp(1.0f, -24));
  EXPECT_EQ(x.f32()[4], 0.5f);
  // BF16: 1.0 = 0x3f80, -3.5 = 0xc060
  const auto bf16 =
      safetensors_image(R"({"y":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", {0x80, 0x3f, 0x60, 0xc0});
  const Tensor y16 = io::parse_safetensors(bf16.data(), bf16.size(), "mem").at("y");
  ASSERT_EQ(y16.dtype(), DType::kBFloat16);
  EXPECT_EQ(y16.bf16()[1], 0xc060);
  const Tensor y = to_dtype(y16, DType::kFloat32);
  EXPECT_EQ(y.f32()[0], 1.0f);
  EXPECT_EQ(y.f32()[1], -3.5f);
}

TEST(Safetensors, RoundTripKeepsNamesShapesAndMetadata) {
  std::mt19937 rng(2);
  std::map<std::string, Tensor> m = {{"a", test::random_tensor({2, 3}, rng)},
                                     {"b.weight", test::random_tensor({5}, rng)},
                                     {"mask", test::random_bool({2, 2}, rng, 0.5)}};
  const auto bytes = io::encode_safetensors(m, {{"note", "hello"}});
  const io::Safetensors st = io::parse_safetensors(bytes.data(), bytes.size(), "mem");
  EXPECT_EQ(st.metadata.at("note"), "hello");
  EXPECT_EQ(test::max_abs_diff(st.at("a"), m["a"]), 0.0);
  EXPECT_EQ(test::max_abs_diff(st.at("b.weight"), m["b.weight"]), 0.0);
  EXPECT_EQ(std::memcmp(st.at("mask").raw(), m["mask"].raw(), 4), 0);
  // what the readers would refuse is refused when written: the metadata key as a tensor name (it had overwritten the
  // metadata), more than 32 dimensions, a name that is not UTF-8
  EXPECT_THROW(io::encode_safetensors({{"__metadata__", m["a"]}}), ArgumentError);
  const Tensor deep(Shape(33, 1));
  EXPECT_THROW(io::encode_safetensors({{"deep", deep}}), ArgumentError);
  EXPECT_THROW(io::encode_npy(deep), ArgumentError);
  EXPECT_THROW(io::encode_safetensors({{"caf\xe9", m["a"]}}), ArgumentError);
}

// A name prefix copies out only the tensors it starts (the metadata too); the header is still checked whole: a
// corrupt entry of another name is refused all the same.
TEST(Safetensors, APrefixReadsOnlyItsTensorsButChecksTheWholeFile) {
  std::mt19937 rng(4);
  std::map<std::string, Tensor> m = {{"enc.a", test::random_tensor({2, 3}, rng)},
                                     {"enc.b", test::random_tensor({5}, rng)},
                                     {"encoder.c", test::random_tensor({4}, rng)},
                                     {"dec.a", test::random_tensor({7}, rng)}};
  const auto bytes = io::encode_safetensors(m, {{"note", "hi"}});
  const io::Safetensors st = io::parse_safetensors(bytes.data(), bytes.size(), "mem", "enc.");
  EXPECT_EQ(st.tensors.size(), 2u);
  EXPECT_EQ(test::max_abs_diff(st.at("enc.a"), m["enc.a"]), 0.0);
  EXPECT_EQ(test::max_abs_diff(st.at("enc.b"), m["enc.b"]), 0.0);
  EXPECT_FALSE(st.contains("encoder.c"));
  EXPECT_EQ(st.metadata.at("note"), "hi");
  EXPECT_EQ(io::parse_safetensors(bytes.data(), bytes.size(), "mem", "none.").tensors.size(), 0u);
  EXPECT_EQ(io::parse_safetensors(bytes.data(), bytes.size(), "mem").tensors.size(), 4u);
  const auto dir = test::fresh_temp_path("attn_io_prefix");
  std::filesystem::create_directories(dir);
  const std::unique_ptr<const std::filesystem::path, void (*)(const std::filesystem::path*)> cleanup(
      &dir, [](const std::filesystem::path* d) { std::filesystem::remove_all(*d); });
  const std::string path = (dir / "m.safetensors").string();
  io::write_safetensors(path, m);
  const io::Safetensors dec = io::read_safetensors(path, "dec.");
  EXPECT_EQ(dec.tensors.size(), 1u);
  try {  // a missing name says which names the file was read for
    dec.at("enc.a");
    ADD_FAILURE() << "enc.a found";
  } catch (const MissingTensorError& e) {
    EXPECT_NE(std::string(e.what()).find("starting with 'dec.'"), std::string::npos) << e.what();
  }
  // "b" lies about its shape: refused whatever the prefix
  const auto bad = safetensors_image(
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,8]}})",
      std::vector<uint8_t>(8, 0));
  EXPECT_THROW(io::parse_safetensors(bad.data(), bad.size(), "mem", "a"), FormatError);
  for (
      const char* header :
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"X9","shape":[1],"data_offsets":[4,8]}})",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
       R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})"}) {
    const auto image = safetensors_image(header, std::vector<uint8_t>(8, 0));  // bad dtype, past the data, overlap
    EXPECT_THROW(io::parse_safetensors(image.data(), image.size(), "mem", "a"), FormatError) << header;
  }
}

TEST(Safetensors, CorruptFilesAreRejected) {
  const std::vector<uint8_t> data(16, 0);
  const std::vector<std::string> bad = {
      R"({"x":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,16]}})",  // lies about its size
      R"({"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})",
      R"({"x":{"dtype":"F32","shape":[5],"data_offsets":[0,20]}})",  // offsets past the data
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,4]}})",   // begin > end
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})",  // shape disagrees with offsets
      R"({"x":{"dtype":"U16","shape":[8],"data_offsets":[0,16]}})",  // unsupported dtype
      R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
      R"({"x":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})",
      R"({"x":{"dtype":"F32","shape":[2]}})",
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}})",
      // the tensors must tile the data: two on the same bytes (which had let a small file allocate without bound),
      // a gap, bytes after the last
      R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
      R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      // nested deeper than {name: {shape: [...]}}, an array of more than 64 items, metadata that is not a string
      R"({"x":{"dtype":"F32","shape":[[4]],"data_offsets":[0,16]}})",
      R"({"x":{"dtype":"F32","shape":[4,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,16]}})",
      R"({"__metadata__":{"k":1},"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
      R"({"x":[1,2]})",
      R"([1,2])",
      R"({"x":)",
      "not json at all",
  };
  for (const std::string& h : bad) {
    const auto img = safetensors_image(h, data);
    EXPECT_THROW(io::parse_safetensors(img.data(), img.size(), "mem"), FormatError) << h;
  }
  // refused while parsing, by the guard on what the DOM would hold: an entry that is a long array, and a tensor
  // entry of many keys (each had been read whole, 10-40 bytes of DOM per byte of text, before being rejected)
  std::string long_array = R"({"t":[0)", many_keys = R"({"t":{"dtype":"F32")", scalars = R"({"t0":0)",
              huge_metadata = R"({"__metadata__":{"k":"v")";
  for (int i = 0; i < 100000; ++i) {
    long_array += ",0", many_keys += ",\"a" + std::to_string(i) + "\":0";
    scalars += ",\"t" + std::to_string(i + 1) + "\":0", huge_metadata += ",\"k" + std::to_string(i) + "\":\"v\"";
  }
  for (const auto& [h, needle] : {std::pair{long_array + "]}", std::string("an entry that is an array")},
                                  std::pair{many_keys + "}}", std::string("more than 8 keys")},
                                  std::pair{scalars + "}", std::string("not {dtype, shape, data_offsets}")},
                                  std::pair{huge_metadata + "}}", std::string("more than 65536 keys")}}) {
    const auto img = safetensors_image(h, data);
    try {
      (void)io::parse_safetensors(img.data(), img.size(), "mem");
      ADD_FAILURE() << needle;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  // metadata may hold many keys
  std::string metadata = R"({"__metadata__":{"k0":"v")";
  for (int i = 1; i < 100; ++i) metadata += ",\"k" + std::to_string(i) + "\":\"v\"";
  const auto with_metadata =
      safetensors_image(metadata + R"(},"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data);
  EXPECT_EQ(io::parse_safetensors(with_metadata.data(), with_metadata.size(), "mem").metadata.size(), 100u);
  // empty tensors share the offset they sit at; in any order
  const auto empties = safetensors_image(
      R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
      R"("f":{"dtype":"BF16","shape":[0,3],"data_offsets":[16,16]},"g":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}})",
      data);
  EXPECT_EQ(io::parse_safetensors(empties.data(), empties.size(), "mem").tensors.size(), 4u);
  auto img = safetensors_image(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data);
  EXPECT_NO_THROW(io::parse_safetensors(img.data(), img.size(), "mem"));
  for (size_t n = 0; n < img.size(); ++n)  // every truncation
    EXPECT_THROW(io::parse_safetensors(img.data(), n, "mem"), FormatError) << n;
  img[7] = 0x7f;  // header length 2^62: past the end, never allocated
  EXPECT_THROW(io::parse_safetensors(img.data(), img.size(), "mem"), FormatError);
}

TEST(Io, WritesAreAtomic) {
  const auto dir = test::fresh_temp_path("attn_io_test");
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "x.npy").string();
  io::write_npy(path, Tensor::from_floats({2}, {1, 2}));
  EXPECT_EQ(io::read_npy(path).f32()[1], 2.0f);
  // into a directory that does not exist: throws, leaves nothing behind
  EXPECT_THROW(io::write_npy((dir / "missing" / "y.npy").string(), Tensor::from_floats({1}, {1})), Error);
  EXPECT_FALSE(std::filesystem::exists(dir / "missing"));
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1u);
  // a file replaced keeps its permissions; through a symbolic link the target is replaced and the link stays one
  ::chmod(path.c_str(), 0600);
  io::write_npy(path, Tensor::from_floats({1}, {3}));
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  const std::string link = (dir / "link.npy").string();
  std::filesystem::create_symlink("x.npy", link);
  io::write_npy(link, Tensor::from_floats({1}, {4}));
  EXPECT_TRUE(std::filesystem::is_symlink(link));
  EXPECT_EQ(io::read_npy(path).f32()[0], 4.0f);
  // two outputs naming one file through a link are refused (the second rename had replaced the first output); a
  // dangling link is followed too: its target is created, the link kept
  EXPECT_THROW(io::check_output_paths({{"--out", path}, {"--weights", link}}), ArgumentError);
  const std::string dangling = (dir / "dangling.npy").string();
  std::filesystem::create_symlink("made.npy", dangling);
  io::write_npy(dangling, Tensor::from_floats({1}, {5}));
  EXPECT_TRUE(std::filesystem::is_symlink(dangling));
  EXPECT_EQ(io::read_npy((dir / "made.npy").string()).f32()[0], 5.0f);
  // one file through a linked directory, or ".." after a linked directory (lexically, "sub/.." had been the directory
  // itself): refused; a file of the directory a link's ".." leads to is another file
  std::filesystem::create_directories(dir / "real" / "deep");
  std::filesystem::create_directory_symlink("real", dir / "linkdir");
  std::filesystem::create_directory_symlink("real/deep", dir / "deeplink");
  for (bool exists : {false, true}) {
    if (exists) io::write_npy((dir / "real" / "a.npy").string(), Tensor::from_floats({1}, {1}));
    EXPECT_THROW(io::check_output_paths({{"--out", (dir / "linkdir" / "a.npy").string()},
                                         {"--weights", (dir / "real" / "a.npy").string()}}),
                 ArgumentError)
        << exists;
    EXPECT_THROW(io::check_output_paths({{"--out", (dir / "deeplink" / ".." / "a.npy").string()},
                                         {"--weights", (dir / "real" / "a.npy").string()}}),
                 ArgumentError)
        << exists;
  }
  EXPECT_NO_THROW(io::check_output_paths(
      {{"--out", (dir / "deeplink" / ".." / "b.npy").string()}, {"--weights", (dir / "b.npy").string()}}));
  // a hard link is another name: each rename replaces its own entry, so both outputs are kept
  std::filesystem::create_hard_link(dir / "real" / "a.npy", dir / "hard.npy");
  EXPECT_NO_THROW(io::check_output_paths(
      {{"--out", (dir / "hard.npy").string()}, {"--weights", path}, {"--png", (dir / "real" / "a.npy").string()}}));
  // relative names of a file that does not exist yet ("o.npy" and "./o.npy": one had been made absolute, not the other)
  EXPECT_THROW(
      io::check_output_paths({{"--out", "attn_io_never_written.npy"}, {"--weights", "./attn_io_never_written.npy"}}),
      ArgumentError);
  // a file name near NAME_MAX (255 bytes) is written: its temporary's name had been too long; set-user-ID bits of a
  // replaced file are not carried over
  const std::string long_name = (dir / (std::string(250, 'n') + ".npy")).string();
  io::write_npy(long_name, Tensor::from_floats({1}, {6}));
  EXPECT_EQ(io::read_npy(long_name).f32()[0], 6.0f);
  ::chmod(long_name.c_str(), 04755);
  io::write_npy(long_name, Tensor::from_floats({1}, {7}));
  ASSERT_EQ(::stat(long_name.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  // the stand-in names of long file names: within NAME_MAX with the suffix, cut between UTF-8 characters (a 3-byte
  // "语" would straddle byte 191 here), and different for two names that share their first 200 bytes
  const std::string wide = "x" + [] {
    std::string s;
    for (int i = 0; i < 80; ++i) s += "\xe8\xaf\xad";
    return s;
  }();
  const std::string a = io::sibling_path("d/" + wide + "a", ".partial"),
                    b = io::sibling_path("d/" + wide + "b", ".partial");
  EXPECT_NE(a, b);
  EXPECT_EQ(a.substr(0, 2), "d/");
  EXPECT_LE(a.size() - 2 - 8, 200u);                        // (the name before ".partial")
  EXPECT_EQ(a.find("\xe8\xaf\xad-"), 2 + 1 + 3 * 62) << a;  // "x" + 63 whole characters (190 bytes), then the tag
  EXPECT_EQ(io::sibling_path("d/short.log", ".partial"), "d/short.log.partial");
  // a FIFO (or a device: /dev/stdout) is refused before anything is written, never replaced by a regular file
  const std::string fifo = (dir / "fifo.npy").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THROW(io::write_npy(fifo, Tensor::from_floats({1}, {1})), ArgumentError);
  try {  // (named as a device, not by its folder, which a user may not write to)
    io::check_output_paths({{"--out", "/dev/null"}});
    ADD_FAILURE() << "/dev/null was accepted";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("is not a regular file"), std::string::npos) << e.what();
  }
  ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  std::filesystem::remove_all(dir);
}

// A pipe (a shell's <(...), /dev/stdin) has no size to trust: its bytes are read to the end, as a file's are (it had
// been refused as "cannot determine the file size").
TEST(Io, PipesAreReadToTheirEnd) {
  int ends[2];
  ASSERT_EQ(::pipe(ends), 0);
  const std::string text = "{\"from\": \"a pipe\"}";
  ASSERT_EQ(::write(ends[1], text.data(), text.size()), static_cast<ssize_t>(text.size()));
  ::close(ends[1]);
  EXPECT_EQ(io::read_text("/proc/self/fd/" + std::to_string(ends[0])), text);
  ::close(ends[0]);
  const auto dir = test::fresh_temp_path("attn_io_pipe");
  std::filesystem::create_directories(dir);
  EXPECT_THROW(io::read_file(dir.string()), FormatError);  // a directory: named as one
  EXPECT_THROW(io::read_file((dir / "absent").string()), FormatError);
  std::filesystem::remove_all(dir);
}

// A text (a config, a vocabulary) is read up to a cap: an endless source such as /dev/zero, given where a config was
// expected, is refused once past it instead of read until memory runs out; a file of exactly the cap is read whole.
TEST(Io, TextReadsStopAtTheirCap) {
  const auto path = test::fresh_temp_path("attn_io_cap") / "cap.txt";
  std::filesystem::create_directories(path.parent_path());
  const std::string text(100, 'x');
  io::write_file_atomically(path.string(), std::vector<uint8_t>(text.begin(), text.end()));
  EXPECT_EQ(io::read_text(path.string(), 100), text);
  try {
    io::read_text(path.string(), 99);
    ADD_FAILURE() << "a text past its cap was read";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
  }
  EXPECT_THROW(io::read_text("/dev/zero", 1 << 20), FormatError);
  EXPECT_EQ(io::read_file(path.string()).size(), 100u);  // binary reads take any size
  std::filesystem::remove_all(path.parent_path());
}

// A binary stream is read as far as its header says: /dev/zero given as a .npy or a .safetensors fails at its header
// (both had been read until memory ran out), a valid file followed by an endless stream fails one chunk past its
// stated size, and a valid file from a pipe that ends reads whole.
TEST(Io, StreamsAreReadNoFurtherThanTheirHeaderSays) {
  EXPECT_THROW(io::read_npy("/dev/zero"), FormatError);
  EXPECT_THROW(io::read_safetensors("/dev/zero"), FormatError);
  std::mt19937 rng(1);
  const Tensor t = test::random_tensor({3, 5}, rng);
  const std::vector<uint8_t> npy = io::encode_npy(t), st = io::encode_safetensors({{"t", t}});
  for (const std::vector<uint8_t>* file : {&npy, &st})
    for (bool endless : {false, true}) {
      SCOPED_TRACE(std::string(file == &npy ? "npy" : "safetensors") + (endless ? " then endless zeros" : ""));
      int ends[2];
      ASSERT_EQ(::pipe(ends), 0);
      std::thread writer([&] {
        sigset_t pipe_signal;  // a write after the reader has gone fails with EPIPE instead of killing the test
        sigemptyset(&pipe_signal);
        sigaddset(&pipe_signal, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
        bool ok = ::write(ends[1], file->data(), file->size()) == static_cast<ssize_t>(file->size());
        const std::vector<uint8_t> zeros(1 << 16);
        while (ok && endless) ok = ::write(ends[1], zeros.data(), zeros.size()) > 0;
        ::close(ends[1]);
      });
      const std::string path = "/proc/self/fd/" + std::to_string(ends[0]);
      const auto read = [&] {
        if (file == &npy) return io::read_npy(path);
        return io::read_safetensors(path).at("t");
      };
      if (endless) {
        EXPECT_THROW(read(), FormatError);
      } else {
        EXPECT_EQ(test::max_abs_diff(read(), t), 0.0);
      }
      ::close(ends[0]);  // the writer's next write fails: it ends
      writer.join();
    }
}

// A file's size is no reason to reserve memory before its header is read: a sparse file of a terabyte given as a .npy
// fails at its header (a FormatError naming it; the reservation had been a bad_alloc naming nothing). A named FIFO
// given as a .safetensors is read from the one descriptor opened (opened twice, the writer had been lost between).
TEST(Io, SizesAndFifosAreNotTrustedBeforeTheHeader) {
  const auto dir = test::fresh_temp_path("attn_io_sparse");
  std::filesystem::create_directories(dir);
  const std::string sparse = (dir / "big.npy").string();
  const int fd = ::open(sparse.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  const bool made = ::ftruncate(fd, off_t{1} << 40) == 0;
  ::close(fd);
  if (made) {
    try {
      io::read_npy(sparse);
      ADD_FAILURE() << "a file of zeros was read as a .npy";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(sparse), std::string::npos) << e.what();
    }
  }
  std::filesystem::remove(sparse);
  const std::string fifo = (dir / "weights.safetensors").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  std::mt19937 rng(2);
  const Tensor t = test::random_tensor({4, 3}, rng);
  const std::vector<uint8_t> bytes = io::encode_safetensors({{"t", t}});
  std::thread writer([&] {  // one writer, one open: the reader must see it through
    const int w = ::open(fifo.c_str(), O_WRONLY);
    if (w >= 0) {
      (void)!::write(w, bytes.data(), bytes.size());
      ::close(w);
    }
  });
  struct Join {  // (joined whatever the read does: a joinable thread destroyed would end the whole test binary)
    std::thread& t;
    ~Join() { t.join(); }
  } join{writer};
  EXPECT_EQ(test::max_abs_diff(io::read_safetensors(fifo).at("t"), t), 0.0);
  std::filesystem::remove_all(dir);
}

// Files written together: all or none. A second path that is a directory, or that names the first file again, is
// refused and removes the first's temporary; nothing appears until commit().
TEST(Io, FileSetsAppearTogetherOrNotAtAll) {
  namespace fs = std::filesystem;
  const fs::path dir = test::fresh_temp_path("attn_fileset_test");
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  const std::vector<uint8_t> bytes = {1, 2, 3};
  const auto count = [&] {
    size_t n = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
    return n;
  };
  {
    io::FileSet files;
    files.add("--out", (dir / "a.npy").string(), bytes);
    EXPECT_THROW(files.add("--weights", (dir / "sub").string(), bytes), ArgumentError);
    EXPECT_THROW(files.add("--weights", (dir / "." / "a.npy").string(), bytes), ArgumentError);
  }
  EXPECT_EQ(count(), 1u);  // only "sub": no a.npy, no temporary
  EXPECT_THROW(
      io::check_output_paths({{"--out", (dir / "x").string()}, {"--png", (dir / "sub" / ".." / "x").string()}}),
      ArgumentError);
  io::check_output_paths({{"--out", (dir / "x").string()}, {"--png", ""}, {"--weights", (dir / "y").string()}});
  // an output whose folder does not exist is refused before the work (it had failed as the file was written), unless
  // the caller creates the folder (a checkpoint directory)
  const std::string in_missing = (dir / "no_such_folder" / "x.html").string();
  try {
    io::check_output_paths({{"--html", in_missing}});
    ADD_FAILURE() << "a missing folder was accepted";
  } catch (const ArgumentError& e) {
    EXPECT_NE(std::string(e.what()).find("--html " + in_missing + ": its folder"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("does not exist"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(io::check_output_paths({{"--html", in_missing}}, io::OutputFolders::kMayBeCreated));
  EXPECT_NO_THROW(io::check_output_paths({{"--out", "attn_io_never_written_here.npy"}}));  // the working directory
  {
    io::FileSet files;
    files.add("a", (dir / "a.npy").string(), bytes);
    files.add("b", (dir / "b.npy").string(), bytes);
    EXPECT_FALSE(fs::exists(dir / "a.npy"));
    files.commit();
  }
  EXPECT_EQ(fs::file_size(dir / "a.npy"), 3u);
  EXPECT_EQ(fs::file_size(dir / "b.npy"), 3u);
  EXPECT_EQ(count(), 3u);
  fs::remove_all(dir);
}

// Element counts stop at 2^60, so a tensor's bytes never wrap a size_t (2^62 float32s had made nbytes() 0 and the
// buffer 128 bytes); a zero-element shape with one huge dimension stays valid.
TEST(Tensor, ShapesOfMoreThanTwoToTheSixtyElementsAreRefused) {
  EXPECT_THROW(Tensor({int64_t{1} << 31, int64_t{1} << 31}), ShapeError);
  EXPECT_THROW(Tensor({1, 1, int64_t{1} << 52, 1024}), ShapeError);
  EXPECT_THROW(shape_numel({int64_t{1} << 61}), ShapeError);
  EXPECT_EQ(shape_numel({int64_t{1} << 60}), int64_t{1} << 60);
  EXPECT_EQ(Tensor({int64_t{1} << 52, 0}).numel(), 0);
  EXPECT_EQ(shape_numel({int64_t{1} << 31, int64_t{1} << 31, 0}), 0);  // a zero anywhere: nothing to overflow
  EXPECT_THROW(shape_numel({int64_t{1} << 31, -1, 0}), ShapeError);
}

// A tensor this machine cannot hold (2^58 floats: 1 EiB) is an AllocationError naming its shape and dtype, not a bare
// std::bad_alloc. (Not under AddressSanitizer, whose allocator ends the process on such a request.)
TEST(Tensor, AnAllocationThatFailsNamesTheShape) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer aborts on a request this large";
#else
  for (bool unfilled : {false, true}) {
    try {
      const Shape shape = {int64_t{1} << 29, int64_t{1} << 29};
      const Tensor t = unfilled ? detail::unfilled_tensor(shape) : Tensor(shape);
      ADD_FAILURE() << "1 EiB was allocated";
    } catch (const AllocationError& e) {
      EXPECT_NE(std::string(e.what()).find("[536870912, 536870912]"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("float32"), std::string::npos) << e.what();
    }
  }
#endif
}

// Tensor::borrow, what the Python module's NumPy and torch paths rely on: a view of memory the tensor does not own,
// read and written in place, kept alive by its owner, never copied.
TEST(Tensor, BorrowViewsExternalMemoryWithoutCopying) {
  std::vector<float> external = {1, 2, 3, 4, 5, 6};
  Tensor t = Tensor::borrow({2, 3}, DType::kFloat32, external.data());
  EXPECT_EQ(t.f32(), external.data());
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  t.f32()[4] = 50;
  EXPECT_EQ(external[4], 50);
  const Tensor copy = t;  // copies share storage, as for owned tensors
  EXPECT_EQ(copy.f32(), external.data());
  EXPECT_EQ(t.reshape({3, 2}).f32(), external.data());
  const Tensor deep = t.clone();
  EXPECT_NE(deep.f32(), external.data());
  EXPECT_EQ(deep.f32()[4], 50);

  auto owner = std::make_shared<std::vector<uint8_t>>(std::vector<uint8_t>{1, 0, 1});
  Tensor b = Tensor::borrow({3}, DType::kBool, owner->data(), owner);
  const uint8_t* data = owner->data();
  owner.reset();  // the tensor keeps its owner alive
  EXPECT_EQ(b.b8(), data);
  EXPECT_EQ(b.b8()[2], 1);

  EXPECT_THROW(Tensor::borrow({2}, DType::kFloat32, nullptr), ArgumentError);
  EXPECT_NO_THROW(Tensor::borrow({0, 4}, DType::kFloat32, nullptr));
}

}  // namespace
}  // namespace attn
