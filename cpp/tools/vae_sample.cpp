// vae_sample: run an exported VAE from the command line (see usage() and cpp/README.md).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <iostream>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "vae_deploy/export_check.hpp"
#include "vae_deploy/image.hpp"
#include "vae_deploy/model.hpp"
#include "vae_deploy/npy.hpp"
#include "vae_deploy/random.hpp"

namespace {

const char* const kUsage = R"(usage: vae_sample --model DIR [mode] [options]

Runs the ONNX files of a vae-deploy export folder (DIR/encoder.onnx, DIR/decoder.onnx).
Before opening a graph it checks DIR/manifest.json: the file is listed and inside DIR, its
size and sha256 match, it holds no random operator, its shapes agree with the manifest.

modes (default: sample)
  (none)               draw N latents z ~ N(0, I) from --seed and decode them to x_hat
  --z-file Z.npy       decode the latents in Z.npy, [N, *latent_shape] float32/float64
  --x-file X.npy       encode the data in X.npy, [N, *input_shape]: mu goes to --out,
                       logvar to --logvar-out, decode(mu) to --recon-out
  --info               print the models' metadata and the ONNX Runtime version

options
  --n N                number of samples (sample mode; default 16)
  --seed S             seed of the latent generator (sample mode; default 0)
  --out FILE.npy       x_hat (sample, --z-file) or mu (--x-file), float32
  --save-z FILE.npy    sample mode: also write the latents that were decoded
  --logvar-out FILE    --x-file mode: write logvar
  --recon-out FILE     --x-file mode: write decode(mu)
  --grid FILE          write x_hat (or the reconstruction) as a PNG grid (small images upscaled)
  --threads T          intra-op threads of each session (default 0: ONNX Runtime decides;
                       at most 4 per hardware thread and 256)
  --no-verify          skip the manifest checks above (prints a warning); for folders
                       without a manifest, at your own risk
  --repeat R           time R more runs of the mode's work after --warmup W (default 3)
                       and print the median batch latency and samples/s
  -h, --help           this text
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::string model, z_file, x_file, out, save_z, logvar_out, recon_out, grid;
  int64_t n = 16;
  uint64_t seed = 0;
  int threads = 0;
  int repeat = 0, warmup = 3;
  bool info = false;
  bool help = false;
  bool verify = true;
};

// A --threads beyond this only makes ONNX Runtime fail to create its pool (or crash).
int64_t max_threads() {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return std::min<int64_t>(4 * hw, 256);
}

int64_t parse_int(const std::string& flag, const std::string& text, int64_t min,
                  int64_t max = std::numeric_limits<int64_t>::max()) {
  std::size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || v < min || v > max)
    throw UsageError(flag + " needs an integer >= " + std::to_string(min) +
                     (max == std::numeric_limits<int64_t>::max() ? "" : " and <= " + std::to_string(max)) +
                     ", got '" + text + "'");
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> rest(argv + 1, argv + argc);
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const std::string& flag = rest[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= rest.size()) throw UsageError(flag + " needs a value");
      return rest[++i];
    };
    if (flag == "-h" || flag == "--help") {
      a.help = true;
      return a;
    } else if (flag == "--model") a.model = value();
    else if (flag == "--z-file") a.z_file = value();
    else if (flag == "--x-file") a.x_file = value();
    else if (flag == "--out") a.out = value();
    else if (flag == "--save-z") a.save_z = value();
    else if (flag == "--logvar-out") a.logvar_out = value();
    else if (flag == "--recon-out") a.recon_out = value();
    else if (flag == "--grid") a.grid = value();
    else if (flag == "--n") a.n = parse_int(flag, value(), 1);
    else if (flag == "--seed") a.seed = static_cast<uint64_t>(parse_int(flag, value(), 0));
    else if (flag == "--threads") a.threads = static_cast<int>(parse_int(flag, value(), 0, max_threads()));
    else if (flag == "--repeat") a.repeat = static_cast<int>(parse_int(flag, value(), 1));
    else if (flag == "--warmup") a.warmup = static_cast<int>(parse_int(flag, value(), 0));
    else if (flag == "--info") a.info = true;
    else if (flag == "--no-verify") a.verify = false;
    else throw UsageError("unknown argument '" + flag + "'");
  }
  if (a.model.empty()) throw UsageError("--model DIR is required");
  if (!a.z_file.empty() && !a.x_file.empty()) throw UsageError("give --z-file or --x-file, not both");
  if (a.x_file.empty() && (!a.logvar_out.empty() || !a.recon_out.empty()))
    throw UsageError("--logvar-out and --recon-out need --x-file");
  if (!a.save_z.empty() && (!a.z_file.empty() || !a.x_file.empty())) throw UsageError("--save-z is for sample mode");
  if (!a.x_file.empty() && !a.grid.empty() && a.recon_out.empty())
    throw UsageError("--grid in --x-file mode shows the reconstruction: add --recon-out");
  return a;
}

std::string model_file(const std::string& model, const std::string& role) {
  return (std::filesystem::path(model) / (role + ".onnx")).string();
}

// The export contract is checked (export_check.hpp) unless --no-verify; the session then runs
// the very bytes that were checked.
template <class Model>
Model open_model(const Args& a, const std::string& role, const vae::SessionConfig& cfg) {
  if (!a.verify) return Model(model_file(a.model, role), cfg);
  return Model(vae::verify_export_file(a.model, role + ".onnx", role), cfg);
}

// NaN or Inf in a user's array: refused like Python's Runtime (check_finite) does.
void require_finite(const vae::Tensor& t, const std::string& file) {
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < t.data.size(); ++i)
    if (!std::isfinite(t.data[i]) && bad++ == 0) first = i;
  if (bad)
    throw vae::Error(file + ": expected finite values, got " + std::to_string(bad) + " NaN/Inf (first at flat index " +
                     std::to_string(first) + ", shape " + vae::to_string(t.shape) + ")");
}

// Sample mode allocates n latents and n outputs: the bytes are computed (without overflow)
// and compared with the machine's memory before anything is allocated.
void check_sample_size(int64_t n, const vae::Shape& latent_shape, const vae::Shape& input_shape) {
  auto fixed = [](const vae::Shape& s) { return std::all_of(s.begin(), s.end(), [](int64_t d) { return d > 0; }); };
  long double per_example = 0;
  if (fixed(latent_shape)) per_example += static_cast<long double>(vae::numel(latent_shape));
  if (fixed(input_shape)) per_example += static_cast<long double>(vae::numel(input_shape));
  const long double bytes = per_example * 4.0L * static_cast<long double>(n);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const long double memory = pages > 0 && page > 0 ? static_cast<long double>(pages) * page : 0;
  if (memory > 0 && bytes > memory / 2) {
    char text[160];
    std::snprintf(text, sizeof text, "--n %lld needs %.1f GiB for the latents and outputs; this machine has %.1f GiB "
                  "of memory (at most half of it is used): use a smaller --n",
                  static_cast<long long>(n), static_cast<double>(bytes / (1ULL << 30)),
                  static_cast<double>(memory / (1ULL << 30)));
    throw vae::Error(text);
  }
}

void save(const std::string& path, const vae::Tensor& t, const char* what) {
  if (path.empty()) return;
  vae::write_npy(path, t);
  std::cout << "wrote " << what << " " << vae::to_string(t.shape) << " to " << path << '\n';
}

void save_grid(const std::string& path, const vae::Tensor& x) {
  if (path.empty()) return;
  vae::write_image_grid(path, x);
  std::cout << "wrote image grid of " << x.shape[0] << " to " << path << '\n';
}

void print_info(const std::string& model, const std::string& file, bool verify) {
  if (!std::filesystem::exists(file)) return;
  const bool enc = std::filesystem::path(file).stem() == "encoder";
  const std::string role = enc ? "encoder" : "decoder";
  const vae::Metadata m = !verify ? (enc ? vae::VaeEncoder(file).metadata() : vae::VaeDecoder(file).metadata())
                          : enc   ? vae::VaeEncoder(vae::verify_export_file(model, role + ".onnx", role)).metadata()
                                  : vae::VaeDecoder(vae::verify_export_file(model, role + ".onnx", role)).metadata();
  std::cout << file << '\n';
  for (const auto& kv : m.props) std::cout << "  " << kv.first << " = " << kv.second << '\n';
}

// Runs `work` `warmup` times, then `repeat` times under the clock; prints the median batch
// latency and the throughput it implies.
void bench(const std::string& what, int64_t batch, int threads, int warmup, int repeat,
           const std::function<void()>& work) {
  for (int i = 0; i < warmup; ++i) work();
  std::vector<double> ms;
  for (int i = 0; i < repeat; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    work();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2], p95 = ms[std::min(ms.size() - 1, ms.size() * 95 / 100)];
  std::printf("bench: %s batch=%lld threads=%d repeat=%d median_ms=%.4f p95_ms=%.4f samples_per_s=%.1f\n",
              what.c_str(), static_cast<long long>(batch), threads, repeat, median, p95, 1000.0 * batch / median);
}

int run(const Args& a) {
  if (a.help) {
    std::cout << kUsage;
    return 0;
  }
  vae::SessionConfig cfg;
  cfg.intra_op_threads = a.threads;
  if (!a.verify)
    std::cerr << "vae_sample: warning: --no-verify: manifest.json, checksums and the no-random-operator rule are "
                 "not checked\n";

  if (a.info) {
    std::cout << "onnxruntime " << vae::onnxruntime_version() << '\n';
    const std::string enc = model_file(a.model, "encoder"), dec = model_file(a.model, "decoder");
    if (!std::filesystem::exists(enc) && !std::filesystem::exists(dec))
      throw vae::Error("model file not found: neither " + enc + " nor " + dec);
    print_info(a.model, enc, a.verify);
    print_info(a.model, dec, a.verify);
    return 0;
  }

  if (!a.x_file.empty()) {  // encode
    const auto encoder = open_model<vae::VaeEncoder>(a, "encoder", cfg);
    std::optional<vae::VaeDecoder> decoder;
    if (!a.recon_out.empty()) decoder.emplace(open_model<vae::VaeDecoder>(a, "decoder", cfg));
    const vae::Tensor x = vae::read_npy(a.x_file);
    require_finite(x, a.x_file);
    const vae::Posterior q = encoder.encode(x);
    save(a.out, q.mu, "mu");
    save(a.logvar_out, q.logvar, "logvar");
    if (decoder) {
      const vae::Tensor recon = decoder->decode(q.mu);
      save(a.recon_out, recon, "reconstruction");
      save_grid(a.grid, recon);
    }
    if (a.repeat) bench("encode", x.shape[0], a.threads, a.warmup, a.repeat, [&] { encoder.encode(x); });
    return 0;
  }

  const auto decoder = open_model<vae::VaeDecoder>(a, "decoder", cfg);
  if (!a.grid.empty() && !vae::is_image_shape(decoder.input_shape()))
    throw vae::Error("--grid needs an image model (input_shape C,H,W with C 1 or 3), this one has input_shape " +
                     vae::to_string(decoder.input_shape()));
  if (!a.z_file.empty()) {  // decode
    const vae::Tensor z = vae::read_npy(a.z_file);
    require_finite(z, a.z_file);
    const vae::Tensor x = decoder.decode(z);
    save(a.out, x, "x_hat");
    save_grid(a.grid, x);
    if (a.repeat) bench("decode", z.shape[0], a.threads, a.warmup, a.repeat, [&] { decoder.decode(z); });
    return 0;
  }

  // sample
  check_sample_size(a.n, decoder.latent_shape(), decoder.input_shape());
  const vae::Tensor z = vae::sample_latents(decoder.latent_shape(), a.n, a.seed);
  const vae::Tensor x = decoder.decode(z);
  save(a.save_z, z, "z");
  save(a.out, x, "x_hat");
  save_grid(a.grid, x);
  if (a.repeat)
    bench("sample", a.n, a.threads, a.warmup, a.repeat,
          [&] { decoder.decode(vae::sample_latents(decoder.latent_shape(), a.n, a.seed)); });
  return 0;
}

// An error is one line of valid UTF-8: ONNX Runtime's messages span lines, and names read
// from a damaged model may hold any byte. Line breaks become spaces, other control bytes and
// invalid UTF-8 become '?'.
std::string one_line(const std::string& text) {
  std::string out;
  const auto* u = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = u[i];
    if (c == '\n' || c == '\r' || c == '\t') {
      if (!out.empty() && out.back() != ' ') out += ' ';
      ++i;
    } else if (c < 0x20 || c == 0x7f) {
      out += '?';
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else {
      const std::size_t len = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
      bool ok = len > 0 && i + len <= n;
      for (std::size_t k = 1; ok && k < len; ++k) ok = (u[i + k] & 0xc0) == 0x80;
      if (ok) {
        out.append(text, i, len);
        i += len;
      } else {
        out += '?';
        ++i;
      }
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const UsageError& e) {
    std::cerr << "vae_sample: " << one_line(e.what()) << "\n(see vae_sample --help)\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "vae_sample: error: out of memory (std::bad_alloc): the batch does not fit this machine; "
                 "use a smaller --n or input file\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "vae_sample: error: " << one_line(e.what()) << '\n';
    return 1;
  }
}
