// A batch of images as one PNG picture (zlib compresses it; any viewer opens it).
#pragma once

#include <string>

#include "vae_deploy/tensor.hpp"

namespace vae {

/// True for per-example shapes (C, H, W) with C = 1 or 3 (H and W may be dynamic, -1): what
/// write_image_grid can show.
bool is_image_shape(const Shape& per_example);

/// Nearest-neighbour factor that makes a tile at least 64 pixels (an 8x8 digit becomes 64x64),
/// as the Python tools do.
int grid_scale(long long h, long long w);

/// Writes a batch [N, C, H, W] as a PNG grid of ceil(sqrt(N)) columns, each image upscaled by
/// grid_scale() and separated by 1-pixel grey lines: grey (C = 1) or RGB (C = 3), 8 bits.
/// Values are clamped to [0, 1] and scaled to 0..255, which suits Bernoulli probabilities and
/// data scaled to [0, 1].
void write_image_grid(const std::string& path, const Tensor& batch);

/// Encodes 8-bit pixels (rows top to bottom, channels interleaved) as a PNG file's bytes.
std::string encode_png(const std::string& pixels, std::size_t width, std::size_t height, std::size_t channels);

}  // namespace vae
