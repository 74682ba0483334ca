// The export contract (export/README.md) as the C++ consumer enforces it before it opens a
// session, like every other consumer (Python's vae_deploy.contract.check_export):
//
//  * paths: every file manifest.json lists, and every external_data location of the graph,
//    is a relative path that resolves (symlinks followed) to a regular file inside the folder;
//  * checksums: the graph and its external data are listed, and their size and sha256 match;
//  * determinism: no random operator anywhere in the graph (onnx_scan.hpp);
//  * shapes: the graph's metadata agrees with the manifest's model section (the graph's
//    declared inputs and outputs are checked against the metadata when the session opens).
#pragma once

#include <string>

#include "vae_deploy/tensor.hpp"

namespace vae {

/// One ONNX file of an export that passed the checks, with the bytes that were checked: open
/// the session from these bytes, not from the path, so what runs is what was hashed.
struct VerifiedModel {
  std::string path;   ///< folder/name
  std::string bytes;  ///< the file's content, as hashed and scanned
  Shape input_shape;  ///< from manifest.json's model section
  Shape latent_shape;
};

/// The lowercase hex SHA-256 of `data` (OpenSSL EVP).
std::string sha256_hex(const std::string& data);

/// Checks `folder/name` (e.g. "decoder.onnx", expected role `role`) against folder/manifest.json.
/// Throws Error naming every broken rule, on one line.
VerifiedModel verify_export_file(const std::string& folder, const std::string& name, const std::string& role);

}  // namespace vae
