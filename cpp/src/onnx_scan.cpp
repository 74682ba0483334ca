// A minimal protobuf wire-format reader, enough for onnx_scan.hpp. Each message is a sequence
// of (tag, value) records; tag = field_number << 3 | wire_type, where wire type 0 is a varint,
// 1 a fixed 8 bytes, 2 a length-prefixed byte string (strings, bytes, sub-messages, packed
// repeated numbers) and 5 a fixed 4 bytes (https://protobuf.dev/programming-guides/encoding/).
#include "vae_deploy/onnx_scan.hpp"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <set>
#include <string_view>

#include "vae_deploy/tensor.hpp"

namespace vae {

namespace {

// onnx/onnx.proto field numbers.
namespace f {
constexpr uint32_t kModelGraph = 7, kModelMetadata = 14, kModelFunctions = 25;
constexpr uint32_t kGraphNode = 1, kGraphInitializer = 5, kGraphSparseInitializer = 15;
constexpr uint32_t kNodeInput = 1, kNodeName = 3, kNodeOpType = 4, kNodeAttribute = 5;
constexpr uint32_t kAttrT = 5, kAttrG = 6, kAttrTensors = 10, kAttrGraphs = 11, kAttrSparse = 22, kAttrSparses = 23;
constexpr uint32_t kTensorFloat = 4, kTensorInt32 = 5, kTensorInt64 = 7, kTensorName = 8, kTensorRaw = 9,
                   kTensorExternal = 13, kTensorLocation = 14;
constexpr uint32_t kSparseValues = 1, kSparseIndices = 2;
constexpr uint32_t kFunctionNode = 7;
constexpr uint32_t kEntryKey = 1, kEntryValue = 2;
}  // namespace f

constexpr int kMaxDepth = 64;  // nested subgraphs; deeper is refused rather than overflowing the stack

struct Field {
  uint32_t number = 0;
  uint32_t wire = 0;
  uint64_t varint = 0;     // wire types 0, 1, 5
  std::string_view bytes;  // wire type 2
};

class Reader {
 public:
  Reader(std::string_view data, const std::string& name) : data_(data), name_(name) {}

  /// The next field, or false at the end of the message.
  bool next(Field& out) {
    if (pos_ >= data_.size()) return false;
    const uint64_t tag = varint();
    out.number = static_cast<uint32_t>(tag >> 3);
    out.wire = static_cast<uint32_t>(tag & 7);
    if (out.number == 0) fail("field number 0");
    switch (out.wire) {
      case 0: out.varint = varint(); break;
      case 1: out.varint = fixed(8); break;
      case 5: out.varint = fixed(4); break;
      case 2: {
        const uint64_t len = varint();
        if (len > data_.size() - pos_) fail("a length-delimited field runs past the end");
        out.bytes = data_.substr(pos_, static_cast<std::size_t>(len));
        pos_ += static_cast<std::size_t>(len);
        break;
      }
      default: fail("unsupported wire type " + std::to_string(out.wire));
    }
    return true;
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw Error(name_ + ": not a well-formed ONNX ModelProto (" + what + " at byte " + std::to_string(pos_) + ")");
  }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) fail("a truncated varint");
      const auto b = static_cast<unsigned char>(data_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    fail("a varint longer than 10 bytes");
  }

  uint64_t fixed(std::size_t n) {
    if (data_.size() - pos_ < n) fail("a truncated fixed-size field");
    uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(data_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }

  std::string_view data_;
  const std::string& name_;
  std::size_t pos_ = 0;
};

struct Node {
  std::string name, op_type;
  std::vector<std::string> inputs;
};

class Scanner {
 public:
  explicit Scanner(const std::string& name) : name_(name) {}

  OnnxScan run(std::string_view model) {
    Reader r(model, name_);
    Field fd;
    while (r.next(fd)) {
      if (fd.wire != 2) continue;
      if (fd.number == f::kModelGraph) graph(fd.bytes, 0);
      else if (fd.number == f::kModelFunctions) function(fd.bytes);
      else if (fd.number == f::kModelMetadata) metadata(fd.bytes);
    }
    // Dropout is random in training mode: a third input that is not a constant false.
    // Like the Python check, constants are the initializers of any graph.
    for (const Node& n : nodes_) {
      if (is_random_op(n.op_type)) {
        scan_.random_ops.push_back(n.op_type + " (" + (n.name.empty() ? "unnamed" : n.name) + ")");
      } else if (n.op_type == "Dropout" && n.inputs.size() > 2 && !n.inputs[2].empty()) {
        const auto it = constant_truthy_.find(n.inputs[2]);
        if (it == constant_truthy_.end() || it->second)
          scan_.random_ops.push_back("Dropout in training mode (" + (n.name.empty() ? "unnamed" : n.name) + ")");
      }
    }
    std::sort(scan_.external_data.begin(), scan_.external_data.end());
    scan_.external_data.erase(std::unique(scan_.external_data.begin(), scan_.external_data.end()),
                              scan_.external_data.end());
    return std::move(scan_);
  }

 private:
  void graph(std::string_view bytes, int depth) {
    Reader r(bytes, name_);
    if (depth > kMaxDepth) r.fail("subgraphs nested deeper than " + std::to_string(kMaxDepth));
    Field fd;
    while (r.next(fd)) {
      if (fd.wire != 2) continue;
      if (fd.number == f::kGraphNode) node(fd.bytes, depth);
      else if (fd.number == f::kGraphInitializer) tensor(fd.bytes, true);
      else if (fd.number == f::kGraphSparseInitializer) sparse(fd.bytes);
    }
  }

  void function(std::string_view bytes) {
    Reader r(bytes, name_);
    Field fd;
    while (r.next(fd))
      if (fd.wire == 2 && fd.number == f::kFunctionNode) node(fd.bytes, 0);
  }

  void node(std::string_view bytes, int depth) {
    Reader r(bytes, name_);
    Node n;
    Field fd;
    while (r.next(fd)) {
      if (fd.wire != 2) continue;
      if (fd.number == f::kNodeInput) n.inputs.emplace_back(fd.bytes);
      else if (fd.number == f::kNodeName) n.name = std::string(fd.bytes);
      else if (fd.number == f::kNodeOpType) n.op_type = std::string(fd.bytes);
      else if (fd.number == f::kNodeAttribute) attribute(fd.bytes, depth);
    }
    nodes_.push_back(std::move(n));
  }

  void attribute(std::string_view bytes, int depth) {
    Reader r(bytes, name_);
    Field fd;
    while (r.next(fd)) {
      if (fd.wire != 2) continue;
      if (fd.number == f::kAttrG || fd.number == f::kAttrGraphs) graph(fd.bytes, depth + 1);
      else if (fd.number == f::kAttrT || fd.number == f::kAttrTensors) tensor(fd.bytes, false);
      else if (fd.number == f::kAttrSparse || fd.number == f::kAttrSparses) sparse(fd.bytes);
    }
  }

  void sparse(std::string_view bytes) {
    Reader r(bytes, name_);
    Field fd;
    while (r.next(fd))
      if (fd.wire == 2 && (fd.number == f::kSparseValues || fd.number == f::kSparseIndices)) tensor(fd.bytes, false);
  }

  // Records external data locations; for an initializer, whether its value is nonzero
  // anywhere (unknown, e.g. external: assume it is, like the Python check).
  void tensor(std::string_view bytes, bool initializer) {
    Reader r(bytes, name_);
    Field fd;
    std::string name;
    bool truthy = false, external = false;
    while (r.next(fd)) {
      if (fd.number == f::kTensorName && fd.wire == 2) {
        name = std::string(fd.bytes);
      } else if (fd.number == f::kTensorRaw && fd.wire == 2) {
        truthy |= std::any_of(fd.bytes.begin(), fd.bytes.end(), [](char c) { return c != 0; });
      } else if (fd.number == f::kTensorFloat || fd.number == f::kTensorInt32 || fd.number == f::kTensorInt64) {
        // packed (wire type 2) or not: a nonzero value has a nonzero byte (-0.0f aside, which is falsy
        // in numpy too but never stored for a bool flag)
        if (fd.wire == 2) truthy |= std::any_of(fd.bytes.begin(), fd.bytes.end(), [](char c) { return c != 0; });
        else truthy |= fd.varint != 0;
      } else if (fd.number == f::kTensorLocation && fd.wire == 0) {
        external |= fd.varint == 1;  // DataLocation EXTERNAL
      } else if (fd.number == f::kTensorExternal && fd.wire == 2) {
        const auto entry = key_value(fd.bytes);
        if (entry.first == "location") locations_.push_back(entry.second);
      }
    }
    if (external) scan_.external_data.insert(scan_.external_data.end(), locations_.begin(), locations_.end());
    locations_.clear();
    if (initializer && !name.empty()) constant_truthy_[name] = truthy || external;
  }

  void metadata(std::string_view bytes) {
    auto kv = key_value(bytes);
    scan_.metadata[kv.first] = kv.second;
  }

  std::pair<std::string, std::string> key_value(std::string_view bytes) {
    Reader r(bytes, name_);
    Field fd;
    std::pair<std::string, std::string> kv;
    while (r.next(fd)) {
      if (fd.wire != 2) continue;
      if (fd.number == f::kEntryKey) kv.first = std::string(fd.bytes);
      else if (fd.number == f::kEntryValue) kv.second = std::string(fd.bytes);
    }
    return kv;
  }

  const std::string& name_;
  OnnxScan scan_;
  std::vector<Node> nodes_;
  std::vector<std::string> locations_;
  std::map<std::string, bool> constant_truthy_;
};

}  // namespace

bool is_random_op(const std::string& op_type) {
  static const std::set<std::string> ops = {"RandomNormal", "RandomNormalLike", "RandomUniform",
                                            "RandomUniformLike", "Multinomial", "Bernoulli"};
  return ops.count(op_type) > 0;
}

OnnxScan scan_onnx(const std::string& bytes, const std::string& name) {
  return Scanner(name).run(std::string_view(bytes));
}

}  // namespace vae
