// attn/tensor.h: a dense, contiguous, row-major tensor of float32 or bool.
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

enum class DType : uint8_t { kFloat32, kBool };

// "[2, 3, 4]"
std::string shape_str(const Shape& shape);
// "float32" / "bool"
const char* dtype_name(DType dtype);
// Product of the sizes; throws ShapeError on a negative size or on overflow past 2^62 elements.
int64_t shape_numel(const Shape& shape);

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
  size_t nbytes() const { return static_cast<size_t>(numel_) * (dtype_ == DType::kFloat32 ? 4 : 1); }

  // Typed access; throw DTypeError when the dtype does not match.
  float* f32();
  const float* f32() const;
  uint8_t* b8();
  const uint8_t* b8() const;
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

}  // namespace attn
