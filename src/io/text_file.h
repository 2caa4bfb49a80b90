// Small text files of a model folder (config.json, weight indexes): read
// whole, only when they are regular files of a bounded size, so that a FIFO
// never blocks and a huge file is refused before it is read.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace fastvar::io {

// The contents of `path`; throws fastvar::Error when it is missing, not a
// regular file, or larger than `max_bytes`.
std::string read_text_file(const std::string& path, size_t max_bytes = 64u << 20);

// `text` as a JSON object; a syntax error or another top-level value is a
// one-line fastvar::Error naming `label`.
nlohmann::json parse_json_object(const std::string& text, const std::string& label);

}  // namespace fastvar::io
