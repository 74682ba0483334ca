// What the contract needs to know about an ONNX file, read from its bytes before ONNX Runtime
// sees them. The runtime's API cannot list a graph's nodes, so this walks the protobuf wire
// format of ModelProto directly (field numbers from onnx/onnx.proto), with no protobuf library.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace vae {

struct OnnxScan {
  /// Every random operator, as "OpType (node name)" (Python's vae_deploy.contract.random_ops).
  std::vector<std::string> random_ops;
  /// Every external_data "location" a tensor refers to, relative to the ONNX file's folder.
  std::vector<std::string> external_data;
  /// ModelProto.metadata_props.
  std::map<std::string, std::string> metadata;
};

/// The operators whose output is not a function of their inputs (Dropout is random only in
/// training mode, checked separately).
bool is_random_op(const std::string& op_type);

/// Walks the main graph, every subgraph (If/Loop/Scan bodies) and every local function.
/// `name` only labels errors. Throws Error when the bytes are not a well-formed ModelProto.
OnnxScan scan_onnx(const std::string& bytes, const std::string& name);

}  // namespace vae
