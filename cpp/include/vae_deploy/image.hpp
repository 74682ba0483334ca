// A batch of images as one binary PGM (grey) or PPM (colour) picture.
#pragma once

#include <string>

#include "vae_deploy/tensor.hpp"

namespace vae {

/// True for per-example shapes (C, H, W) with C = 1 or 3 (H and W may be dynamic, -1): what
/// write_image_grid can show.
bool is_image_shape(const Shape& per_example);

/// Writes a batch [N, C, H, W] as a grid of ceil(sqrt(N)) columns separated by 1-pixel grey
/// lines: "P5" (PGM) for C = 1, "P6" (PPM) for C = 3, 8 bits. Values are clamped to [0, 1]
/// and scaled to 0..255, which suits Bernoulli probabilities and data scaled to [0, 1].
void write_image_grid(const std::string& path, const Tensor& batch);

}  // namespace vae
