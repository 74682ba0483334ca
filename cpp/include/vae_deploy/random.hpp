// Seeded standard-normal numbers for z ~ N(0, I), reproducible across platforms.
#pragma once

#include <cstdint>
#include <random>

#include "vae_deploy/tensor.hpp"

namespace vae {

/// N(0, 1) float32 numbers: std::mt19937_64 (whose output sequence the C++ standard fixes)
/// seeded with `seed`, two 53-bit uniforms u1, u2 in (0, 1) per pair, and the Box-Muller
/// transform r = sqrt(-2 ln u1), z0 = r cos(2 pi u2), z1 = r sin(2 pi u2), in double, then
/// rounded to float. Unlike std::normal_distribution (whose algorithm each standard library
/// picks) this gives the same numbers with any compiler, up to the last bit of libm's
/// log/sin/cos. It is not numpy's generator: use --z-file for bit-exact comparisons.
class NormalSampler {
 public:
  explicit NormalSampler(uint64_t seed) : rng_(seed) {}
  float next();
  void fill(float* first, float* last);

 private:
  double uniform();  // in (0, 1): never 0, so log() is finite
  std::mt19937_64 rng_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

/// z ~ N(0, I) of shape [n, *latent_shape], drawn in row-major order from NormalSampler(seed).
Tensor sample_latents(const Shape& latent_shape, int64_t n, uint64_t seed);

}  // namespace vae
