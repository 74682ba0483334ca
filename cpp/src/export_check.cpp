#include "vae_deploy/export_check.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <system_error>
#include <vector>

#include "vae_deploy/model.hpp"
#include "vae_deploy/onnx_scan.hpp"

namespace fs = std::filesystem;

namespace vae {

namespace {

constexpr std::uintmax_t kMaxManifestBytes = 16u << 20;  // a manifest is a few kB; refuse before reading

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (const auto& i : items) s += (s.empty() ? "" : sep) + i;
  return s;
}

std::string read_file(const fs::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open " + what + " " + path.string());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error("error reading " + what + " " + path.string());
  return bytes;
}

// Python's artifacts.resolve_inside: folder/name when name is relative, has no "..", and
// resolves (symlinks followed) inside the folder; when it exists it must be a regular file.
fs::path resolve_inside(const fs::path& root, const std::string& name, const std::string& what) {
  if (name.empty() || name.find('\0') != std::string::npos) throw Error(what + " name '" + name + "' is not a file name");
  std::string posix = name;
  std::replace(posix.begin(), posix.end(), '\\', '/');
  const bool drive = posix.size() >= 2 && posix[1] == ':';
  if (posix[0] == '/' || drive)
    throw Error(what + " '" + name + "' is an absolute path; an export may only refer to files inside its folder");
  for (const auto& part : fs::path(posix))
    if (part == "..")
      throw Error(what + " '" + name + "' climbs out with '..'; an export may only refer to files inside its folder");
  std::error_code ec;
  const fs::path target = fs::weakly_canonical(root / posix, ec);
  if (ec) throw Error(what + " '" + name + "' cannot be resolved: " + ec.message());
  const auto mismatch = std::mismatch(root.begin(), root.end(), target.begin(), target.end());
  if (mismatch.first != root.end() || target == root)
    throw Error(what + " '" + name + "' resolves to '" + target.string() + "', outside the export folder '" +
                root.string() + "' (a symlink out?)");
  const fs::file_status st = fs::status(target, ec);
  if (!ec && fs::exists(st) && !fs::is_regular_file(st))
    throw Error(what + " '" + name + "' is not a regular file (a folder, FIFO or device)");
  return target;
}

Shape manifest_shape(const nlohmann::json& model, const char* key, const fs::path& manifest) {
  const auto it = model.find(key);
  if (it == model.end() || !it->is_array() || it->empty() ||
      !std::all_of(it->begin(), it->end(), [](const nlohmann::json& d) { return d.is_number_integer(); }))
    throw Error(manifest.string() + ": model." + key + " should be a list of integers; re-export the folder");
  Shape s;
  for (const auto& d : *it) s.push_back(d.get<int64_t>() > 0 ? d.get<int64_t>() : -1);
  return s;
}

struct Manifest {
  fs::path root;
  fs::path path;
  nlohmann::json files;
  Shape input_shape, latent_shape;
};

Manifest load_manifest(const std::string& folder) {
  Manifest m;
  std::error_code ec;
  m.root = fs::canonical(folder, ec);
  if (ec || !fs::is_directory(m.root)) throw Error("model folder not found: " + folder);
  m.path = m.root / "manifest.json";
  const fs::file_status st = fs::symlink_status(m.path, ec);
  if (ec || !fs::exists(st))
    throw Error("no manifest.json in " + folder +
                ": the checksums cannot be checked (is this a vae-deploy export? --no-verify skips the checks)");
  if (!fs::is_regular_file(st)) throw Error(m.path.string() + " is not a regular file");
  if (fs::file_size(m.path) > kMaxManifestBytes)
    throw Error(m.path.string() + " is larger than " + std::to_string(kMaxManifestBytes >> 20) +
                " MiB; a manifest is a few kB");
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(read_file(m.path, "manifest"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(m.path.string() + " is not valid JSON (" + e.what() + ")");
  }
  if (!doc.is_object() || !doc.contains("files") || !doc["files"].is_object() || !doc.contains("model") ||
      !doc["model"].is_object())
    throw Error(m.path.string() + " lacks the 'files' and 'model' objects of a vae-deploy manifest; re-export the folder");
  m.files = doc["files"];
  m.input_shape = manifest_shape(doc["model"], "input_shape", m.path);
  m.latent_shape = manifest_shape(doc["model"], "latent_shape", m.path);
  return m;
}

// Python's artifacts.file_status: "" when the file matches its manifest entry.
std::string file_problem(const fs::path& path, const nlohmann::json& entry, std::string* bytes_out) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return "missing";
  const auto size = fs::file_size(path, ec);
  const auto want_size = entry.value("size", nlohmann::json());
  if (ec || !want_size.is_number_integer() || size != want_size.get<std::uintmax_t>())
    return "size " + std::to_string(size) + " bytes != manifest " + want_size.dump() + " (truncated or replaced)";
  std::string bytes = read_file(path, "export file");
  const auto want_sha = entry.value("sha256", nlohmann::json());
  if (!want_sha.is_string() || sha256_hex(bytes) != want_sha.get<std::string>())
    return "sha256 does not match the manifest (modified after export)";
  if (bytes_out) *bytes_out = std::move(bytes);
  return "";
}

}  // namespace

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw Error("OpenSSL could not compute a SHA-256");
  std::string hex;
  char buf[3];
  for (unsigned int i = 0; i < len; ++i) {
    std::snprintf(buf, sizeof buf, "%02x", md[i]);
    hex += buf;
  }
  return hex;
}

VerifiedModel verify_export_file(const std::string& folder, const std::string& name, const std::string& role) {
  const Manifest m = load_manifest(folder);
  const std::string where = "export folder '" + folder + "' failed its checksum and contract check: ";
  std::vector<std::string> problems;
  // every listed path first: never hash or parse a file outside the folder
  for (const auto& kv : m.files.items()) {
    try {
      resolve_inside(m.root, kv.key(), "manifest file");
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  if (!problems.empty()) throw Error(where + join(problems, "; "));

  if (!m.files.contains(name) || !m.files[name].is_object())
    throw Error(where + name + " is not listed in manifest.json, so its checksum cannot be checked");
  const nlohmann::json& entry = m.files[name];
  VerifiedModel out;
  const fs::path path = resolve_inside(m.root, name, "manifest file");
  out.path = (fs::path(folder) / name).string();
  if (const std::string p = file_problem(path, entry, &out.bytes); !p.empty())
    throw Error(where + name + ": " + p);

  const OnnxScan scan = scan_onnx(out.bytes, name);
  for (const auto& op : scan.random_ops)
    problems.push_back(name + ": random operator " + op +
                       ": outputs would differ between runs (sampling noise belongs in the host)");
  for (const auto& loc : scan.external_data) {
    const std::string rel = (fs::path(name).parent_path() / loc).generic_string();  // beside the graph
    try {
      const fs::path side = resolve_inside(m.root, rel, name + " external data");
      if (!m.files.contains(rel))
        problems.push_back(name + " external data '" + loc +
                           "' is not listed in the manifest, so its checksum cannot be checked");
      else if (const std::string p = file_problem(side, m.files[rel], nullptr); !p.empty())
        problems.push_back(rel + ": " + p);
    } catch (const Error& e) {
      problems.push_back(e.what());
    }
  }
  const auto meta = [&](const char* key) {
    const auto it = scan.metadata.find(std::string("vae_deploy.") + key);
    return it == scan.metadata.end() ? std::string() : it->second;
  };
  for (const auto& [key, want] : {std::pair<const char*, const Shape&>{"input_shape", m.input_shape},
                                  std::pair<const char*, const Shape&>{"latent_shape", m.latent_shape}}) {
    bool ok = false;
    try {
      ok = !meta(key).empty() && parse_shape(meta(key), key) == want;
    } catch (const Error&) {
    }
    if (!ok)
      problems.push_back(name + ": metadata " + key + " is '" + meta(key) + "', manifest says " + to_string(want));
  }
  const std::string listed_role = entry.contains("role") && entry["role"].is_string() ? entry["role"].get<std::string>() : "";
  if (!listed_role.empty() && listed_role != role)
    problems.push_back(name + ": the manifest lists it as a " + listed_role + ", expected a " + role);
  if (!problems.empty()) throw Error(where + join(problems, "; "));
  out.input_shape = m.input_shape;
  out.latent_shape = m.latent_shape;
  return out;
}

}  // namespace vae
