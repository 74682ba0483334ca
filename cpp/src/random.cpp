#include "vae_deploy/random.hpp"

#include <cmath>

namespace vae {

double NormalSampler::uniform() {
  // The top 53 bits, centred in their interval: (k + 0.5) / 2^53 for k in [0, 2^53).
  return (static_cast<double>(rng_() >> 11) + 0.5) * 0x1.0p-53;
}

float NormalSampler::next() {
  if (has_spare_) {
    has_spare_ = false;
    return static_cast<float>(spare_);
  }
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const double r = std::sqrt(-2.0 * std::log(uniform()));
  const double theta = kTwoPi * uniform();
  spare_ = r * std::sin(theta);
  has_spare_ = true;
  return static_cast<float>(r * std::cos(theta));
}

void NormalSampler::fill(float* first, float* last) {
  for (; first != last; ++first) *first = next();
}

Tensor sample_latents(const Shape& latent_shape, int64_t n, uint64_t seed) {
  if (n < 1) throw Error("the number of samples must be >= 1, got " + std::to_string(n));
  for (int64_t d : latent_shape)
    if (d < 1)
      throw Error("cannot sample latents of shape " + to_string(latent_shape) +
                  ": it has a dynamic axis; give the latents with --z-file");
  Tensor z(batched(n, latent_shape));
  NormalSampler sampler(seed);
  sampler.fill(z.data.data(), z.data.data() + z.data.size());
  return z;
}

}  // namespace vae
