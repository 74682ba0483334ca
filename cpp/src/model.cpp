// The only file that includes ONNX Runtime's headers.
//
// ORT_API_MANUAL_INIT: the C++ API would otherwise fetch its OrtApi table in a static
// initialiser and crash later on a null table when the library at run time is older than
// the headers. Here init_api() asks for it on first use and turns a refusal into an Error.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <utility>

#include "vae_deploy/model.hpp"

namespace vae {

namespace {

constexpr const char* kPrefix = "vae_deploy.";

void init_api() {
  // A function-local static: thread-safe, and retried on the next call if it threw.
  static const bool ready = [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    if (api == nullptr)
      throw Error("the ONNX Runtime library loaded at run time (version " + std::string(base->GetVersionString()) +
                  ") does not provide C API version " + std::to_string(ORT_API_VERSION) +
                  " that this program was compiled against; use onnxruntime >= 1." +
                  std::to_string(ORT_API_VERSION) + " or rebuild against its headers");
    Ort::InitApi(api);
    return true;
  }();
  (void)ready;
}

Ort::Env& env() {
  init_api();
  static Ort::Env instance(ORT_LOGGING_LEVEL_WARNING, "vae_deploy");
  return instance;
}

std::string join(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "'" : ", '") + n + "'";
  return s.empty() ? "none" : s;
}

std::string element_type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    default: return "element type " + std::to_string(static_cast<int>(t));
  }
}

// A graph-declared shape [batch, d1, ...] agrees with the metadata's per-example shape when
// the ranks match and every axis fixed on both sides has the same size.
bool agrees(const Shape& graph, const Shape& per_example) {
  if (graph.size() != per_example.size() + 1) return false;
  for (std::size_t i = 0; i < per_example.size(); ++i) {
    const int64_t g = graph[i + 1], m = per_example[i];
    if (g > 0 && m > 0 && g != m) return false;
  }
  return true;
}

// Like to_string, but the batch axis prints as "N".
std::string batched_string(const Shape& per_example) {
  std::string s = to_string(batched(-1, per_example));
  return "[N" + s.substr(2);
}

}  // namespace

Shape parse_shape(const std::string& text, const std::string& what) {
  Shape shape;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (item.empty()) throw Error(what + " = \"" + text + "\": expected comma-separated sizes such as \"1,8,8\"");
    const bool digits = std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; });
    int64_t size = -1;
    if (digits) {
      try {
        size = std::stoll(item);
      } catch (const std::out_of_range&) {
        throw Error(what + " = \"" + text + "\": size '" + item + "' is out of range");
      }
    }
    shape.push_back(size > 0 ? size : -1);
  }
  if (shape.empty()) throw Error(what + " is empty; expected comma-separated sizes such as \"1,8,8\"");
  return shape;
}

std::string onnxruntime_version() {
  init_api();
  return Ort::GetVersionString();
}

namespace detail {

/// One ONNX session whose metadata, inputs and outputs were checked against the contract.
class Graph {
 public:
  Graph(const std::string& path, const std::string& role, const SessionConfig& config,
        const std::string* bytes = nullptr)
      : path_(path), session_(open(path, config, bytes)) {
    read_metadata(role);
    const bool encoder = role == "encoder";
    input_ = {encoder ? "x" : "z", encoder ? meta_.input_shape : meta_.latent_shape,
              encoder ? "vae_deploy.input_shape" : "vae_deploy.latent_shape"};
    if (encoder)
      outputs_ = {{"mu", meta_.latent_shape, "vae_deploy.latent_shape"},
                  {"logvar", meta_.latent_shape, "vae_deploy.latent_shape"}};
    else
      outputs_ = {{"x_hat", meta_.input_shape, "vae_deploy.input_shape"}};
    check_signature(role);
  }

  const Metadata& metadata() const { return meta_; }

  /// Runs the graph on one batch; returns the outputs in contract order.
  std::vector<Tensor> run(const Tensor& input) const {
    const Shape& shape = input.shape;
    if (!agrees(shape, input_.shape) || shape[0] < 1 ||
        std::any_of(shape.begin(), shape.end(), [](int64_t d) { return d < 1; }))
      throw Error(path_ + ": input '" + input_.name + "' must have shape " + batched_string(input_.shape) +
                  " with N >= 1 (metadata " + input_.key + "), got " + to_string(shape));
    if (input.data.size() != numel(shape))
      throw Error(path_ + ": input '" + input_.name + "' of shape " + to_string(shape) + " needs " +
                  std::to_string(numel(shape)) + " values, got " + std::to_string(input.data.size()));

    // ORT takes a non-const pointer but does not write to inputs.
    Ort::Value in = Ort::Value::CreateTensor<float>(cpu_, const_cast<float*>(input.data.data()), input.data.size(),
                                                    shape.data(), shape.size());
    const char* in_name = input_.name.c_str();
    std::vector<const char*> out_names;
    for (const auto& o : outputs_) out_names.push_back(o.name.c_str());

    std::vector<Ort::Value> values;
    try {
      values = session_.Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, out_names.data(), out_names.size());
    } catch (const Ort::Exception& e) {
      throw Error(path_ + ": inference failed on input " + to_string(shape) + ": " + e.what());
    }

    std::vector<Tensor> result;
    for (std::size_t i = 0; i < values.size(); ++i) {
      const auto info = values[i].GetTensorTypeAndShapeInfo();
      Shape got = info.GetShape();
      const Shape want = batched(shape[0], outputs_[i].shape);
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || !agrees(got, outputs_[i].shape) ||
          got[0] != shape[0])
        throw Error(path_ + ": output '" + outputs_[i].name + "' should be float32 " + to_string(want) +
                    " (metadata " + outputs_[i].key + "), the graph returned " +
                    element_type_name(info.GetElementType()) + " " + to_string(got));
      const float* p = values[i].GetTensorData<float>();
      result.emplace_back(std::move(got), std::vector<float>(p, p + info.GetElementCount()));
    }
    return result;
  }

 private:
  struct Port {
    std::string name;
    Shape shape;      // per example, from the metadata
    std::string key;  // the metadata key that shape came from
  };

  // From `bytes` when given (what was hashed is what runs; external data is read beside the
  // file), else from the path.
  static Ort::Session open(const std::string& path, const SessionConfig& config, const std::string* bytes) {
    if (!bytes && !std::filesystem::is_regular_file(path)) throw Error("model file not found: " + path);
    Ort::Env& e = env();
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(config.intra_op_threads);
    options.SetInterOpNumThreads(config.inter_op_threads);
    options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    try {
      if (bytes) {
        const std::string folder = std::filesystem::path(path).parent_path().string();
        options.AddConfigEntry("session.model_external_initializers_file_folder_path",
                               folder.empty() ? "." : folder.c_str());
        return Ort::Session(e, bytes->data(), bytes->size(), options);
      }
      return Ort::Session(e, path.c_str(), options);
    } catch (const Ort::Exception& ex) {
      throw Error("cannot load ONNX model " + path + ": " + ex.what());
    }
  }

  void read_metadata(const std::string& role) {
    Ort::AllocatorWithDefaultOptions alloc;
    const Ort::ModelMetadata md = session_.GetModelMetadata();
    for (const auto& key : md.GetCustomMetadataMapKeysAllocated(alloc)) {
      const auto value = md.LookupCustomMetadataMapAllocated(key.get(), alloc);
      meta_.props[key.get()] = value ? value.get() : "";
    }
    auto require = [&](const std::string& name) -> const std::string& {
      const auto it = meta_.props.find(kPrefix + name);
      if (it == meta_.props.end())
        throw Error(path_ + ": metadata_props has no '" + kPrefix + name +
                    "'; is this a vae-deploy export (export/README.md)? keys present: " + keys());
      return it->second;
    };
    auto optional = [&](const std::string& name) {
      const auto it = meta_.props.find(kPrefix + name);
      return it == meta_.props.end() ? std::string() : it->second;
    };

    const std::string& version = require("format_version");
    if (version != std::to_string(kFormatVersion))
      throw Error(path_ + ": vae_deploy.format_version is '" + version + "', this program reads version " +
                  std::to_string(kFormatVersion));
    meta_.format_version = kFormatVersion;
    meta_.role = require("role");
    if (meta_.role != role)
      throw Error(path_ + ": expected a " + role + " (vae_deploy.role), the file says '" + meta_.role + "'");
    meta_.input_shape = parse_shape(require("input_shape"), path_ + ": vae_deploy.input_shape");
    meta_.latent_shape = parse_shape(require("latent_shape"), path_ + ": vae_deploy.latent_shape");
    meta_.likelihood = optional("likelihood");
    meta_.family = optional("family");

    const std::string dim = optional("latent_dim");
    const bool fixed = std::all_of(meta_.latent_shape.begin(), meta_.latent_shape.end(), [](int64_t d) { return d > 0; });
    if (!dim.empty() && fixed && dim != std::to_string(numel(meta_.latent_shape)))
      throw Error(path_ + ": vae_deploy.latent_dim is '" + dim + "' but vae_deploy.latent_shape " +
                  to_string(meta_.latent_shape) + " has " + std::to_string(numel(meta_.latent_shape)) + " elements");
  }

  std::string keys() const {
    std::vector<std::string> k;
    for (const auto& kv : meta_.props) k.push_back(kv.first);
    return join(k);
  }

  static std::string describe(const std::string& name, const Ort::TypeInfo& type) {
    if (type.GetONNXType() != ONNX_TYPE_TENSOR) return "'" + name + "' (not a tensor)";
    const auto info = type.GetTensorTypeAndShapeInfo();
    return "'" + name + "' " + element_type_name(info.GetElementType()) + " " + to_string(info.GetShape());
  }

  static bool fits(const Ort::TypeInfo& type, const Shape& per_example) {
    if (type.GetONNXType() != ONNX_TYPE_TENSOR) return false;
    const auto info = type.GetTensorTypeAndShapeInfo();
    return info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && agrees(info.GetShape(), per_example);
  }

  void check_signature(const std::string& role) const {
    Ort::AllocatorWithDefaultOptions alloc;
    std::vector<std::string> in_names, out_names;
    for (std::size_t i = 0; i < session_.GetInputCount(); ++i)
      in_names.emplace_back(session_.GetInputNameAllocated(i, alloc).get());
    for (std::size_t i = 0; i < session_.GetOutputCount(); ++i)
      out_names.emplace_back(session_.GetOutputNameAllocated(i, alloc).get());

    if (in_names.size() != 1 || in_names[0] != input_.name)
      throw Error(path_ + ": a " + role + " must have exactly one input '" + input_.name + "', the graph has " +
                  join(in_names));
    const Ort::TypeInfo in_type = session_.GetInputTypeInfo(0);
    if (!fits(in_type, input_.shape))
      throw Error(path_ + ": input '" + input_.name + "' should be float32 " + batched_string(input_.shape) +
                  " (metadata " + input_.key + "), the graph declares " + describe(input_.name, in_type));

    for (const auto& port : outputs_) {
      const auto it = std::find(out_names.begin(), out_names.end(), port.name);
      if (it == out_names.end())
        throw Error(path_ + ": a " + role + " must have output '" + port.name + "', the graph has " + join(out_names));
      const Ort::TypeInfo type = session_.GetOutputTypeInfo(static_cast<std::size_t>(it - out_names.begin()));
      if (!fits(type, port.shape))
        throw Error(path_ + ": output '" + port.name + "' should be float32 " + batched_string(port.shape) +
                    " (metadata " + port.key + "), the graph declares " + describe(port.name, type));
    }
  }

  std::string path_;
  // Session::Run is thread-safe but not const in the C++ API.
  mutable Ort::Session session_;
  Ort::MemoryInfo cpu_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Metadata meta_;
  Port input_;
  std::vector<Port> outputs_;
};

}  // namespace detail

VaeEncoder::VaeEncoder(const std::string& onnx_path, const SessionConfig& config)
    : graph_(std::make_unique<detail::Graph>(onnx_path, "encoder", config)) {}
VaeEncoder::VaeEncoder(const VerifiedModel& model, const SessionConfig& config)
    : graph_(std::make_unique<detail::Graph>(model.path, "encoder", config, &model.bytes)) {}
VaeEncoder::~VaeEncoder() = default;
VaeEncoder::VaeEncoder(VaeEncoder&&) noexcept = default;
VaeEncoder& VaeEncoder::operator=(VaeEncoder&&) noexcept = default;
const Metadata& VaeEncoder::metadata() const { return graph_->metadata(); }

Posterior VaeEncoder::encode(const Tensor& x) const {
  std::vector<Tensor> out = graph_->run(x);
  return {std::move(out[0]), std::move(out[1])};
}

VaeDecoder::VaeDecoder(const std::string& onnx_path, const SessionConfig& config)
    : graph_(std::make_unique<detail::Graph>(onnx_path, "decoder", config)) {}
VaeDecoder::VaeDecoder(const VerifiedModel& model, const SessionConfig& config)
    : graph_(std::make_unique<detail::Graph>(model.path, "decoder", config, &model.bytes)) {}
VaeDecoder::~VaeDecoder() = default;
VaeDecoder::VaeDecoder(VaeDecoder&&) noexcept = default;
VaeDecoder& VaeDecoder::operator=(VaeDecoder&&) noexcept = default;
const Metadata& VaeDecoder::metadata() const { return graph_->metadata(); }

Tensor VaeDecoder::decode(const Tensor& z) const { return std::move(graph_->run(z)[0]); }

}  // namespace vae
