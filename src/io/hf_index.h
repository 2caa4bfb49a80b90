// The weight index of a sharded Hugging Face checkpoint
// (model.safetensors.index.json, pytorch_model.bin.index.json): which shard
// file holds each tensor. The index is untrusted: shard names that leave the
// folder, non-string entries and oversized indexes are refused.
#pragma once

#include <map>
#include <string>

namespace fastvar::io {

// tensor name -> shard file name (a plain name inside the index's folder).
// `label` names the index in messages.
std::map<std::string, std::string> parse_weight_index(const std::string& text, const std::string& label);
std::map<std::string, std::string> read_weight_index(const std::string& path);

}  // namespace fastvar::io
