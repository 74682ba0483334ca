#include "vae_deploy/image.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>

namespace vae {

bool is_image_shape(const Shape& s) { return s.size() == 3 && (s[0] == 1 || s[0] == 3) && s[1] != 0 && s[2] != 0; }

void write_image_grid(const std::string& path, const Tensor& batch) {
  const Shape& s = batch.shape;
  if (s.size() != 4 || !is_image_shape({s[1], s[2], s[3]}) || s[0] < 1)
    throw Error("cannot write an image grid of " + to_string(s) + ": expected [N, C, H, W] with C 1 or 3");
  const auto n = static_cast<std::size_t>(s[0]), c = static_cast<std::size_t>(s[1]),
             h = static_cast<std::size_t>(s[2]), w = static_cast<std::size_t>(s[3]);
  const auto cols = static_cast<std::size_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  const std::size_t rows = (n + cols - 1) / cols;
  const std::size_t width = cols * (w + 1) + 1, height = rows * (h + 1) + 1;

  std::string pixels(width * height * c, static_cast<char>(128));
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t x0 = 1 + (i % cols) * (w + 1), y0 = 1 + (i / cols) * (h + 1);
    for (std::size_t y = 0; y < h; ++y)
      for (std::size_t x = 0; x < w; ++x)
        for (std::size_t ch = 0; ch < c; ++ch) {
          const float v = batch.data[((i * c + ch) * h + y) * w + x];
          const float clamped = std::isnan(v) ? 0.0f : std::clamp(v, 0.0f, 1.0f);
          pixels[((y0 + y) * width + x0 + x) * c + ch] = static_cast<char>(std::lround(clamped * 255.0f));
        }
  }

  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw Error("cannot open " + path + " for writing");
  f << (c == 1 ? "P5" : "P6") << '\n' << width << ' ' << height << "\n255\n";
  f.write(pixels.data(), static_cast<std::streamsize>(pixels.size()));
  if (!f) throw Error("error writing " + path);
}

}  // namespace vae
