// The two halves of an exported VAE (export/README.md is the contract they check):
//
//   VaeEncoder  encoder.onnx   x [N, *input_shape]  -> mu, logvar [N, *latent_shape]
//   VaeDecoder  decoder.onnx   z [N, *latent_shape] -> x_hat [N, *input_shape]
//
// Shapes come from each model's metadata_props (vae_deploy.input_shape, .latent_shape), and
// loading checks them against the graph's own inputs and outputs. This header does not
// include ONNX Runtime's: only src/model.cpp sees it.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "vae_deploy/export_check.hpp"
#include "vae_deploy/tensor.hpp"

namespace vae {

/// The contract version this build reads (metadata vae_deploy.format_version).
inline constexpr int kFormatVersion = 1;

struct SessionConfig {
  int intra_op_threads = 0;  ///< 0: ONNX Runtime's default (one per physical core)
  int inter_op_threads = 1;
};

/// The vae_deploy.* metadata of one exported graph.
struct Metadata {
  int format_version = 0;
  std::string role;        ///< "encoder" or "decoder"
  Shape input_shape;       ///< per example (no batch axis); -1 marks a dynamic axis
  Shape latent_shape;      ///< per example (no batch axis); -1 marks a dynamic axis
  std::string likelihood;  ///< "bernoulli" / "gaussian" (empty when absent)
  std::string family;      ///< "mlp" / "conv" / adapter name (empty when absent)
  std::map<std::string, std::string> props;  ///< every metadata_props entry, as stored
};

/// Parses a metadata shape such as "1,8,8". An entry that is not a positive integer (e.g. "H"
/// or "-1") is a dynamic axis, returned as -1. `what` names the value in error messages.
Shape parse_shape(const std::string& text, const std::string& what);

/// The ONNX Runtime version of the library loaded at run time, e.g. "1.31.1". Throws Error
/// when that library cannot serve the C API version these headers were compiled against.
std::string onnxruntime_version();

namespace detail {
class Graph;
}

/// Posterior q(z|x) = N(mu, exp(logvar)).
struct Posterior {
  Tensor mu;
  Tensor logvar;
};

class VaeEncoder {
 public:
  /// Loads encoder.onnx and checks it against the contract; throws Error naming what is wrong.
  explicit VaeEncoder(const std::string& onnx_path, const SessionConfig& config = {});
  /// Opens the session from the bytes that verify_export_file checked (the contract enforced).
  explicit VaeEncoder(const VerifiedModel& model, const SessionConfig& config = {});
  ~VaeEncoder();
  VaeEncoder(VaeEncoder&&) noexcept;
  VaeEncoder& operator=(VaeEncoder&&) noexcept;

  const Metadata& metadata() const;
  const Shape& input_shape() const { return metadata().input_shape; }
  const Shape& latent_shape() const { return metadata().latent_shape; }

  /// x: [N, *input_shape], N >= 1. Thread-safe.
  Posterior encode(const Tensor& x) const;

 private:
  std::unique_ptr<detail::Graph> graph_;
};

class VaeDecoder {
 public:
  /// Loads decoder.onnx and checks it against the contract; throws Error naming what is wrong.
  explicit VaeDecoder(const std::string& onnx_path, const SessionConfig& config = {});
  /// Opens the session from the bytes that verify_export_file checked (the contract enforced).
  explicit VaeDecoder(const VerifiedModel& model, const SessionConfig& config = {});
  ~VaeDecoder();
  VaeDecoder(VaeDecoder&&) noexcept;
  VaeDecoder& operator=(VaeDecoder&&) noexcept;

  const Metadata& metadata() const;
  const Shape& input_shape() const { return metadata().input_shape; }
  const Shape& latent_shape() const { return metadata().latent_shape; }

  /// z: [N, *latent_shape], N >= 1 -> x_hat: [N, *input_shape]. Thread-safe.
  Tensor decode(const Tensor& z) const;

 private:
  std::unique_ptr<detail::Graph> graph_;
};

}  // namespace vae
