#include "io/hf_index.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/text_file.h"

namespace fastvar::io {

namespace {
// Released indexes are a few hundred KB (a few thousand tensors).
constexpr size_t kMaxIndexBytes = 64u << 20;
constexpr size_t kMaxIndexEntries = 1u << 18;
}  // namespace

std::map<std::string, std::string> parse_weight_index(const std::string& text, const std::string& label) {
  const char* lb = label.c_str();
  if (text.size() > kMaxIndexBytes) fail("%s: %zu bytes, larger than the %zu byte limit of an index", lb, text.size(), kMaxIndexBytes);
  nlohmann::json j = parse_json_object(text, label);
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    fail("%s has no 'weight_map' object", lb);
  const nlohmann::json& m = j["weight_map"];
  if (m.size() > kMaxIndexEntries) fail("%s: %zu entries, more than the limit of %zu", lb, m.size(), kMaxIndexEntries);
  std::map<std::string, std::string> out;
  for (auto it = m.begin(); it != m.end(); ++it) {
    if (!it.value().is_string()) fail("%s: the entry of '%s' is not a file name", lb, printable(it.key(), 80).c_str());
    const std::string f = it.value().get<std::string>();
    // Shard names come from the file: refuse anything that escapes the folder.
    if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos || f.find('\0') != std::string::npos)
      fail("%s: invalid shard name '%s' for '%s'", lb, printable(f, 80).c_str(), printable(it.key(), 80).c_str());
    out.emplace(it.key(), f);
  }
  return out;
}

std::map<std::string, std::string> read_weight_index(const std::string& path) {
  return parse_weight_index(read_text_file(path, kMaxIndexBytes), path);
}

}  // namespace fastvar::io
