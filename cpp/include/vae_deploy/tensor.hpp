// Shapes, a float32 tensor that owns its data, and the library's one exception type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vae {

/// Every error this library raises. Messages name what was expected and what was found.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A tensor shape. -1 marks a dynamic axis (only in per-example shapes read from metadata).
using Shape = std::vector<int64_t>;

/// Number of elements of a shape (1 for a scalar). Throws Error on a dynamic or negative axis.
std::size_t numel(const Shape& shape);

/// "[16, 1, 8, 8]"; a dynamic axis prints as "?".
std::string to_string(const Shape& shape);

/// {n, per_example...}.
Shape batched(int64_t n, const Shape& per_example);

/// A dense float32 tensor in row-major (C) order.
struct Tensor {
  Shape shape;
  std::vector<float> data;

  Tensor() = default;
  /// Zero-filled.
  explicit Tensor(Shape shape_);
  /// Throws Error when data.size() != numel(shape).
  Tensor(Shape shape_, std::vector<float> data_);
};

}  // namespace vae
