#include "vae_deploy/npy.hpp"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <regex>

namespace vae {

namespace {

const char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicLen = 6;

// Reads an unsigned little-endian integer of `n` bytes.
uint64_t read_le(const unsigned char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string field(const std::string& header, const std::string& key, const std::string& value_pattern,
                  const std::string& path) {
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("['\"]" + key + "['\"]\\s*:\\s*" + value_pattern)))
    throw Error(path + ": .npy header has no readable '" + key + "': " + header);
  return m[1].str();
}

}  // namespace

Tensor read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + path);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto* u = reinterpret_cast<const unsigned char*>(bytes.data());

  if (bytes.size() < kMagicLen + 4 || bytes.compare(0, kMagicLen, kMagic) != 0)
    throw Error(path + ": not a .npy file (no \\x93NUMPY magic)");
  const int major = u[kMagicLen];
  if (major < 1 || major > 3)
    throw Error(path + ": .npy format version " + std::to_string(major) + " is not supported (1 to 3 are)");
  const int len_bytes = major == 1 ? 2 : 4;
  const std::size_t header_start = kMagicLen + 2 + static_cast<std::size_t>(len_bytes);
  if (bytes.size() < header_start) throw Error(path + ": truncated .npy header");
  const std::size_t header_len = read_le(u + kMagicLen + 2, len_bytes);
  if (bytes.size() < header_start + header_len) throw Error(path + ": truncated .npy header");
  const std::string header = bytes.substr(header_start, header_len);

  const std::string descr = field(header, "descr", "'([^']*)'", path);
  if (field(header, "fortran_order", "(True|False)", path) == "True")
    throw Error(path + ": array is in Fortran order; save it C-contiguous (np.ascontiguousarray)");
  // Each dimension must be a plain non-negative integer: "(-2, 8)" is refused, not read as
  // [2, 8], and a number too large for the platform is an error, not std::out_of_range.
  Shape shape;
  const std::string dims = field(header, "shape", "\\(([^)]*)\\)", path);
  const std::regex digits("\\d{1,18}");
  std::size_t start = 0;
  while (start <= dims.size()) {
    std::size_t end = dims.find(',', start);
    if (end == std::string::npos) end = dims.size();
    std::string tok = dims.substr(start, end - start);
    tok.erase(0, tok.find_first_not_of(" \t"));
    tok.erase(tok.find_last_not_of(" \t") + 1);
    const bool last = end == dims.size();
    start = end + 1;
    // Python's tuple syntax: "()" and one trailing comma ("(3,)", "(5, 8,)"); "(5, 8,,)" or
    // "(5,,8)" is no tuple and is refused.
    if (tok.empty() && last && (dims.find_first_not_of(" \t") == std::string::npos || !shape.empty())) continue;
    if (tok.empty())
      throw Error(path + ": .npy shape (" + dims + ") has an empty dimension; expected a Python tuple such as (16, 8)");
    if (!std::regex_match(tok, digits))
      throw Error(path + ": .npy shape (" + dims + ") has the dimension '" + tok +
                  "'; expected non-negative integers");
    shape.push_back(std::stoll(tok));
  }

  int size = 0;
  if (descr == "<f4" || descr == ">f4") size = 4;
  if (descr == "<f8" || descr == ">f8") size = 8;
  if (size == 0)
    throw Error(path + ": dtype '" + descr + "' is not supported; expected float32 ('<f4') or float64 ('<f8')");
  const bool little = descr[0] == '<';

  // Compare the declared size with the file before allocating anything, with an overflow
  // check: a 192-byte file must not make us allocate gigabytes.
  const std::size_t have = bytes.size() - header_start - header_len;
  std::size_t need = static_cast<std::size_t>(size);
  for (const auto d : shape) {
    const auto dim = static_cast<std::size_t>(d);
    if (dim != 0 && need > SIZE_MAX / dim)
      throw Error(path + ": array " + to_string(shape) + " is too large to address on this machine");
    need *= dim;
  }
  if (have < need)
    throw Error(path + ": array " + to_string(shape) + " of " + descr + " needs " + std::to_string(need) +
                " data bytes, the file has " + std::to_string(have));
  Tensor t(shape);
  const unsigned char* p = u + header_start + header_len;
  for (float& v : t.data) {
    unsigned char b[8];
    for (int i = 0; i < size; ++i) b[i] = little ? p[i] : p[size - 1 - i];
    if (size == 4) {
      const auto bits = static_cast<uint32_t>(read_le(b, 4));
      std::memcpy(&v, &bits, 4);
    } else {
      const uint64_t bits = read_le(b, 8);
      double d;
      std::memcpy(&d, &bits, 8);
      v = static_cast<float>(d);
    }
    p += size;
  }
  return t;
}

void write_npy(const std::string& path, const Tensor& tensor) {
  if (tensor.data.size() != numel(tensor.shape))
    throw Error("cannot write " + path + ": tensor of shape " + to_string(tensor.shape) + " holds " +
                std::to_string(tensor.data.size()) + " values");
  std::string dims;
  for (int64_t d : tensor.shape) dims += std::to_string(d) + ", ";
  if (tensor.shape.size() > 1) dims.resize(dims.size() - 2);  // "(16, 8)"; but "(16,)" for rank 1
  if (tensor.shape.size() == 1) dims.resize(dims.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const std::size_t preamble = kMagicLen + 2 + 2;
  header.append(63 - (preamble + header.size()) % 64, ' ');  // + '\n' makes the total a multiple of 64
  header += '\n';
  if (header.size() > 0xFFFF) throw Error("cannot write " + path + ": shape too long for .npy format 1.0");

  std::string out(kMagic, kMagicLen);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xFF);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  const std::size_t start = out.size();
  out.resize(start + 4 * tensor.data.size());
  for (std::size_t i = 0; i < tensor.data.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &tensor.data[i], 4);
    for (int b = 0; b < 4; ++b) out[start + 4 * i + static_cast<std::size_t>(b)] = static_cast<char>((bits >> (8 * b)) & 0xFF);
  }

  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw Error("cannot open " + path + " for writing");
  f.write(out.data(), static_cast<std::streamsize>(out.size()));
  if (!f) throw Error("error writing " + path);
}

}  // namespace vae
