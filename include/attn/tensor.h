// attn/tensor.h: a dense, contiguous, row-major tensor of float32, bool, bfloat16 or float16.
//
// bfloat16 and float16 are storage types (uint16_t elements, attn/half.h): scaled_dot_product_attention
// computes on them directly; every other API takes float32 and throws DTypeError naming the argument.
// to_dtype converts (round to nearest even).
//
// Copies share storage (like torch.Tensor); clone() makes a deep copy. Storage is 64-byte aligned so
// SIMD kernels may load rows directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace attn {

using Shape = std::vector<int64_t>;

enum class DType : uint8_t { kFloat32, kBool, kBFloat16, kFloat16 };

// "[2, 3, 4]"
std::string shape_str(const Shape& shape);
// "float32" / "bool" / "bfloat16" / "float16"
const char* dtype_name(DType dtype);
// Bytes per element: 4, 1, 2, 2.
size_t dtype_size(DType dtype);
// The dtype called "float32" | "bf16" | "bfloat16" | "f16" | "float16" (f32 too); ArgumentError otherwise.
DType parse_dtype(const std::string& name);
// Product of the sizes; throws ShapeError on a negative size or on more than 2^60 elements.
int64_t shape_numel(const Shape& shape);
// The product of non-negative factors, or -1 once it would exceed `limit` (never overflowing on the way): for sizes
// a tensor's own does not bound (work counts, caches sized from arguments).
int64_t product_within(std::initializer_list<int64_t> factors, int64_t limit);

class Tensor {
 public:
  // An empty tensor: rank 0, no storage; defined() is false.
  Tensor() = default;
  // A zero-filled tensor of the given shape and dtype.
  explicit Tensor(Shape shape, DType dtype = DType::kFloat32);

  // A float32 tensor holding `values` (values.size() must equal the shape's element count).
  static Tensor from_floats(Shape shape, const std::vector<float>& values);
  // A bool tensor holding `values` (nonzero = true).
  static Tensor from_bools(Shape shape, const std::vector<uint8_t>& values);

  // A tensor over memory it does not own (row-major, `shape`), e.g. a NumPy array's buffer: no copy.
  // `owner`, if given, is kept alive as long as the tensor or any copy of it. Kernels accept any
  // alignment. Throws ArgumentError if data is null for a non-empty shape.
  static Tensor borrow(Shape shape, DType dtype, void* data, std::shared_ptr<void> owner = nullptr);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Size of dimension i; negative i counts from the end (dim(-1) is the last).
  int64_t dim(int i) const;
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }

  // Typed access; throw DTypeError when the dtype does not match.
  float* f32();
  const float* f32() const;
  uint8_t* b8();
  const uint8_t* b8() const;
  uint16_t* bf16();  // bfloat16 bits
  const uint16_t* bf16() const;
  uint16_t* f16();  // IEEE float16 bits
  const uint16_t* f16() const;
  void* raw() { return storage_.get(); }
  const void* raw() const { return storage_.get(); }

  // The same storage seen with another shape of equal element count.
  Tensor reshape(Shape shape) const;
  // A deep copy.
  Tensor clone() const;

 private:
  Shape shape_;
  DType dtype_ = DType::kFloat32;
  int64_t numel_ = 0;
  std::shared_ptr<std::byte> storage_;
};

// `t` converted to `dtype`: float32 -> bfloat16/float16 rounds to nearest even (NaN kept, float16
// overflows to inf), the other way is exact, bfloat16 <-> float16 goes through float32. The same dtype
// returns `t` itself (shared storage, as torch's .to()). Bool in or out throws DTypeError.
Tensor to_dtype(const Tensor& t, DType dtype);

}  // namespace attn
