#include "vae_deploy/image.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>

namespace vae {

bool is_image_shape(const Shape& s) { return s.size() == 3 && (s[0] == 1 || s[0] == 3) && s[1] != 0 && s[2] != 0; }

int grid_scale(long long h, long long w) {
  const long long side = std::max<long long>(1, std::max(h, w));
  return static_cast<int>(std::max<long long>(1, (64 + side - 1) / side));
}

namespace {

void put_u32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xFF));
}

// A PNG chunk: length, type, data, and the CRC-32 (zlib's) of type and data.
void put_chunk(std::string& out, const char* type, const std::string& data) {
  put_u32(out, static_cast<std::uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  out += body;
  put_u32(out, static_cast<std::uint32_t>(
                   crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

}  // namespace

std::string encode_png(const std::string& pixels, std::size_t width, std::size_t height, std::size_t channels) {
  if (channels != 1 && channels != 3) throw Error("PNG: expected 1 or 3 channels, got " + std::to_string(channels));
  if (pixels.size() != width * height * channels) throw Error("PNG: pixel buffer does not match its size");
  // each row is preceded by its filter type: 0 (none)
  const std::size_t row = width * channels;
  std::string raw;
  raw.reserve((row + 1) * height);
  for (std::size_t y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(pixels, y * row, row);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size, reinterpret_cast<const Bytef*>(raw.data()),
                static_cast<uLong>(raw.size()), Z_BEST_COMPRESSION) != Z_OK)
    throw Error("PNG: zlib could not compress the image");
  packed.resize(packed_size);

  std::string ihdr;
  put_u32(ihdr, static_cast<std::uint32_t>(width));
  put_u32(ihdr, static_cast<std::uint32_t>(height));
  ihdr += std::string{8, static_cast<char>(channels == 1 ? 0 : 2), 0, 0, 0};  // depth, colour type, methods
  std::string out = "\x89PNG\r\n\x1a\n";
  put_chunk(out, "IHDR", ihdr);
  put_chunk(out, "IDAT", packed);
  put_chunk(out, "IEND", "");
  return out;
}

void write_image_grid(const std::string& path, const Tensor& batch) {
  const Shape& s = batch.shape;
  if (s.size() != 4 || !is_image_shape({s[1], s[2], s[3]}) || s[0] < 1)
    throw Error("cannot write an image grid of " + to_string(s) + ": expected [N, C, H, W] with C 1 or 3");
  const auto n = static_cast<std::size_t>(s[0]), c = static_cast<std::size_t>(s[1]),
             h = static_cast<std::size_t>(s[2]), w = static_cast<std::size_t>(s[3]);
  const auto k = static_cast<std::size_t>(grid_scale(s[2], s[3]));
  const std::size_t th = h * k, tw = w * k;
  const auto cols = static_cast<std::size_t>(std::ceil(std::sqrt(static_cast<double>(n))));
  const std::size_t rows = (n + cols - 1) / cols;
  const std::size_t width = cols * (tw + 1) + 1, height = rows * (th + 1) + 1;

  std::string pixels(width * height * c, static_cast<char>(128));
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t x0 = 1 + (i % cols) * (tw + 1), y0 = 1 + (i / cols) * (th + 1);
    for (std::size_t y = 0; y < th; ++y)
      for (std::size_t x = 0; x < tw; ++x)
        for (std::size_t ch = 0; ch < c; ++ch) {
          const float v = batch.data[((i * c + ch) * h + y / k) * w + x / k];
          const float clamped = std::isnan(v) ? 0.0f : std::clamp(v, 0.0f, 1.0f);
          pixels[((y0 + y) * width + x0 + x) * c + ch] = static_cast<char>(std::lround(clamped * 255.0f));
        }
  }

  const std::string png = encode_png(pixels, width, height, c);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw Error("cannot open " + path + " for writing");
  f.write(png.data(), static_cast<std::streamsize>(png.size()));
  if (!f) throw Error("error writing " + path);
}

}  // namespace vae
