#include "attn/tensor.h"

#include "tensor_unfilled.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "attn/error.h"
#include "attn/half.h"

namespace attn {

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kBool: return "bool";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "?";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBool: return 1;
    case DType::kBFloat16:
    case DType::kFloat16: return 2;
  }
  return 1;
}

DType parse_dtype(const std::string& name) {
  if (name == "f32" || name == "float32") return DType::kFloat32;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "f16" || name == "float16") return DType::kFloat16;
  throw ArgumentError("dtype must be f32, bf16 or f16 (float32, bfloat16, float16), got '" + name + "'");
}

// At most 2^60 elements: their bytes (up to 4 each) then fit in a size_t with room for alignment, where 2^62 float32s
// had wrapped nbytes() to 0 (a header-only file or a bench flag then got a 128-byte buffer written far past its end).
int64_t shape_numel(const Shape& shape) {
  for (int64_t s : shape)
    if (s < 0) throw ShapeError("shape " + shape_str(shape) + " has a negative size");
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;  // {2^31, 2^31, 0} holds nothing
  int64_t n = 1;
  for (int64_t s : shape) {
    if (n > (int64_t{1} << 60) / s)
      throw ShapeError("shape " + shape_str(shape) + " has too many elements (more than 2^60)");
    n *= s;
  }
  return n;
}

int64_t product_within(std::initializer_list<int64_t> factors, int64_t limit) {
  // a zero factor makes it 0 whatever the others are ({2^30, 2^30, 0} had overflowed before it reached the 0)
  if (std::find(factors.begin(), factors.end(), 0) != factors.end()) return 0;
  int64_t n = 1;
  for (const int64_t f : factors)
    if (__builtin_mul_overflow(n, f, &n) || n > limit) return -1;
  return n;
}

namespace {
#if defined(__SANITIZE_ADDRESS__)
#define ATTN_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ATTN_ADDRESS_SANITIZER 1
#endif
#endif

// A tensor of kHugePagesFrom bytes or more asks the kernel for 2 MB pages (transparent huge pages, where the kernel's
// policy is `madvise`, as Debian's and Ubuntu's are; `always` gives them anyway, `never` none), for the whole 2 MB
// pages inside it. glibc maps a block above its mmap threshold fresh on every allocation (the threshold grows with the
// blocks freed, to 32 MB at most; smaller blocks come from the heap, where the advice is harmless), and each 4 KB page
// of a fresh mapping faults on its first write: a backward whose dK and dV take 128 MB (H 32, 4 queries over
// 4096 keys, D 128) spent two thirds of its time in page faults; a forward whose output takes 32 MB (B·H 256, L 256,
// D 128) 19% (Zen 5, 1 thread, same-built A/B: 2.7× and +21% with them). Where the kernel's THP defrag policy compacts
// memory on such a fault (`madvise`), a fault may wait for that; ATTN_HUGE_PAGES=0 keeps 4 KB pages.
// (PyTorch asks the same with THP_MEM_ALLOC_ENABLE=1, which bench/malloc_policy.py gives the peer.)
constexpr size_t kHugePagesFrom = size_t{4} << 20;
[[maybe_unused]] void ask_for_huge_pages([[maybe_unused]] void* p, [[maybe_unused]] size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* env = std::getenv("ATTN_HUGE_PAGES");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  if (!enabled || nbytes < kHugePagesFrom) return;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge;
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + nbytes) / kHuge * kHuge;
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice: a refusal changes nothing
#endif
}

// A tensor's storage, 64-byte aligned: zeros (Tensor's constructor), or left unfilled for a kernel that writes every
// element (detail::unfilled_tensor), then NaN bits (0xFF bytes) under AddressSanitizer and without NDEBUG, so that an
// element left unwritten fails the tests rather than reading as whatever the allocator handed over.
enum class Fill { kZeros, kUnfilled };
[[noreturn]] void allocation_failed(size_t nbytes, const Shape& shape, DType dtype) {
  throw AllocationError("Tensor: cannot allocate " + std::to_string(nbytes) + " bytes for shape " + shape_str(shape) +
                        " of " + dtype_name(dtype));
}
std::shared_ptr<std::byte> allocate(size_t nbytes, Fill fill, const Shape& shape, DType dtype) {
#ifdef ATTN_ADDRESS_SANITIZER
  // Under AddressSanitizer (scripts/sanitize.sh, the fuzzers) a tensor gets exactly its bytes, so a kernel that reads
  // or writes one element past a tensor is reported; the calloc below leaves 64–191 bytes of slack that would hide it
  // (and that a borrowed NumPy or torch buffer does not have).
  void* exact = nullptr;
  if (posix_memalign(&exact, 64, nbytes == 0 ? 1 : nbytes) != 0) allocation_failed(nbytes, shape, dtype);
  std::memset(exact, fill == Fill::kZeros ? 0 : 0xFF, nbytes);
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(exact), [](std::byte* q) { std::free(q); });
#else
  // calloc, aligned by hand: a large block comes as fresh zero pages the kernel maps on first touch, so a tensor
  // never written (an inference model's gradients) costs no memset and no memory; reused heap memory is memset
  const size_t rounded = (nbytes + 63) / 64 * 64 + 64;  // never zero, a multiple of the alignment
  void* p = fill == Fill::kZeros ? std::calloc(rounded + 64, 1) : std::malloc(rounded + 64);
  if (p == nullptr) allocation_failed(nbytes, shape, dtype);
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(p) + 63) / 64 * 64;
  ask_for_huge_pages(p, rounded + 64);
#ifndef NDEBUG
  if (fill == Fill::kUnfilled) std::memset(reinterpret_cast<void*>(aligned), 0xFF, nbytes);
#endif
  return std::shared_ptr<std::byte>(reinterpret_cast<std::byte*>(aligned), [p](std::byte*) { std::free(p); });
#endif
}
}  // namespace

namespace {
// A dtype the library knows: a value cast from elsewhere had been sized as 1 byte an element, and to_dtype wrote 2.
void check_known(DType dtype, const char* who, const Shape& shape) {
  if (dtype != DType::kFloat32 && dtype != DType::kBool && dtype != DType::kBFloat16 && dtype != DType::kFloat16)
    throw DTypeError(std::string(who) + ": dtype " + std::to_string(static_cast<int>(dtype)) +
                     " is not a DType (float32, bool, bfloat16, float16), shape " + shape_str(shape));
}
}  // namespace

Tensor::Tensor(Shape shape, DType dtype) : shape_(std::move(shape)), dtype_(dtype) {
  check_known(dtype, "Tensor", shape_);
  numel_ = shape_numel(shape_);
  storage_ = allocate(nbytes(), Fill::kZeros, shape_, dtype_);
}

Tensor detail::unfilled_tensor(Shape shape, DType dtype) {
  check_known(dtype, "unfilled_tensor", shape);
  const int64_t numel = shape_numel(shape);
  const std::shared_ptr<std::byte> storage =
      allocate(static_cast<size_t>(numel) * dtype_size(dtype), Fill::kUnfilled, shape, dtype);
  return Tensor::borrow(std::move(shape), dtype, storage.get(), storage);
}

Tensor Tensor::from_floats(Shape shape, const std::vector<float>& values) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))  // before the allocation (a 2^40 shape had tried it)
    throw ShapeError("Tensor::from_floats: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  Tensor t(std::move(shape), DType::kFloat32);
  if (!values.empty()) std::memcpy(t.f32(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_bools(Shape shape, const std::vector<uint8_t>& values) {
  if (static_cast<int64_t>(values.size()) != shape_numel(shape))  // before the allocation (a 2^40 shape had tried it)
    throw ShapeError("Tensor::from_bools: " + std::to_string(values.size()) + " values for shape " + shape_str(shape));
  Tensor t(std::move(shape), DType::kBool);
  for (size_t i = 0; i < values.size(); ++i) t.b8()[i] = values[i] ? 1 : 0;
  return t;
}

Tensor Tensor::borrow(Shape shape, DType dtype, void* data, std::shared_ptr<void> owner) {
  check_known(dtype, "Tensor::borrow", shape);
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  if (data == nullptr) {
    if (t.numel_ != 0) throw ArgumentError("Tensor::borrow: null data for shape " + shape_str(t.shape_));
    t.storage_ = allocate(0, Fill::kZeros, t.shape_, dtype);
    return t;
  }
  // aliasing constructor: shares owner's lifetime, points at data
  t.storage_ = std::shared_ptr<std::byte>(std::move(owner), static_cast<std::byte*>(data));
  return t;
}

int64_t Tensor::dim(int i) const {
  const int r = rank();
  const int j = i < 0 ? i + r : i;
  if (j < 0 || j >= r)
    throw ShapeError("Tensor::dim(" + std::to_string(i) + ") on a tensor of shape " + shape_str(shape_));
  return shape_[static_cast<size_t>(j)];
}

float* Tensor::f32() {
  if (dtype_ != DType::kFloat32) throw DTypeError(std::string("expected a float32 tensor, got ") + dtype_name(dtype_));
  return reinterpret_cast<float*>(storage_.get());
}
const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }
uint8_t* Tensor::b8() {
  if (dtype_ != DType::kBool) throw DTypeError(std::string("expected a bool tensor, got ") + dtype_name(dtype_));
  return reinterpret_cast<uint8_t*>(storage_.get());
}
const uint8_t* Tensor::b8() const { return const_cast<Tensor*>(this)->b8(); }
uint16_t* Tensor::bf16() {
  if (dtype_ != DType::kBFloat16)
    throw DTypeError(std::string("expected a bfloat16 tensor, got ") + dtype_name(dtype_));
  return reinterpret_cast<uint16_t*>(storage_.get());
}
const uint16_t* Tensor::bf16() const { return const_cast<Tensor*>(this)->bf16(); }
uint16_t* Tensor::f16() {
  if (dtype_ != DType::kFloat16) throw DTypeError(std::string("expected a float16 tensor, got ") + dtype_name(dtype_));
  return reinterpret_cast<uint16_t*>(storage_.get());
}
const uint16_t* Tensor::f16() const { return const_cast<Tensor*>(this)->f16(); }

Tensor Tensor::reshape(Shape shape) const {
  if (shape_numel(shape) != numel_)
    throw ShapeError("Tensor::reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::clone() const {
  if (!defined()) return Tensor();
  Tensor t(shape_, dtype_);
  std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

Tensor to_dtype(const Tensor& t, DType dtype) {
  if (!t.defined()) throw ArgumentError("to_dtype: the tensor is empty (undefined)");
  if (t.dtype() == dtype) return t;
  check_known(dtype, "to_dtype", t.shape());
  if (t.dtype() == DType::kBool || dtype == DType::kBool)
    throw DTypeError(std::string("to_dtype: cannot convert ") + dtype_name(t.dtype()) + " to " + dtype_name(dtype) +
                     " (shape " + shape_str(t.shape()) + ")");
  const Tensor wide = t.dtype() == DType::kFloat32 ? t : Tensor(t.shape(), DType::kFloat32);
  const int64_t n = t.numel();
  if (t.dtype() == DType::kBFloat16) {
    const uint16_t* s = t.bf16();
    float* d = const_cast<Tensor&>(wide).f32();
    for (int64_t i = 0; i < n; ++i) d[i] = bf16_to_float(s[i]);
  } else if (t.dtype() == DType::kFloat16) {
    const uint16_t* s = t.f16();
    float* d = const_cast<Tensor&>(wide).f32();
    for (int64_t i = 0; i < n; ++i) d[i] = f16_to_float(s[i]);
  }
  if (dtype == DType::kFloat32) return wide;
  Tensor out(t.shape(), dtype);
  const float* s = wide.f32();
  auto* d = static_cast<uint16_t*>(out.raw());
  if (dtype == DType::kBFloat16)
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(s[i]);
  else
    for (int64_t i = 0; i < n; ++i) d[i] = float_to_f16(s[i]);
  return out;
}

}  // namespace attn
