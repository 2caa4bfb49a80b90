// Output paths of the CLI verbs (-o, --json, --md), checked before any work.
#pragma once

#include <string>
#include <vector>

namespace fastvar::cli {

// Refuses an output path that could not or must not be written: a missing or
// read-only folder, a directory, anything that is not a regular file (a
// device such as /dev/null, a FIFO, a socket, a symbolic link: the final
// rename would replace it), and any of `inputs` (so an output never
// overwrites a file the run reads). An empty path is "no output" for
// optional outputs unless `required`.
void check_output(const std::string& path, const std::vector<std::string>& inputs, bool required = true);

// The input files of a run: the given paths, and the regular files of `dir`
// when it is a folder (a --t5 folder).
std::vector<std::string> input_files(const std::vector<std::string>& paths, const std::string& dir = "");

}  // namespace fastvar::cli
