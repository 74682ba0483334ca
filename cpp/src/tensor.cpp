#include "vae_deploy/tensor.hpp"

#include <sstream>
#include <utility>

namespace vae {

std::size_t numel(const Shape& shape) {
  std::size_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw Error("shape " + to_string(shape) + " has a dynamic or negative axis; a size is needed");
    n *= static_cast<std::size_t>(d);
  }
  return n;
}

std::string to_string(const Shape& shape) {
  std::ostringstream s;
  s << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s << ", ";
    if (shape[i] < 0)
      s << '?';
    else
      s << shape[i];
  }
  s << ']';
  return s.str();
}

Shape batched(int64_t n, const Shape& per_example) {
  Shape s{n};
  s.insert(s.end(), per_example.begin(), per_example.end());
  return s;
}

Tensor::Tensor(Shape shape_) : shape(std::move(shape_)), data(numel(shape)) {}

Tensor::Tensor(Shape shape_, std::vector<float> data_) : shape(std::move(shape_)), data(std::move(data_)) {
  if (data.size() != numel(shape))
    throw Error("tensor of shape " + to_string(shape) + " needs " + std::to_string(numel(shape)) +
                " values, got " + std::to_string(data.size()));
}

}  // namespace vae
