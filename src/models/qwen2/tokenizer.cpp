#include "models/qwen2/tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/text_file.h"

namespace fastvar::qwen2 {

namespace {

using json = nlohmann::json;

// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves,
// the other 68 bytes to U+0100.. in byte order, each as its UTF-8 string.
std::vector<std::string> byte_symbols() {
  std::vector<int> cp(256, -1);
  for (int b = '!'; b <= '~'; ++b) cp[b] = b;
  for (int b = 0xA1; b <= 0xAC; ++b) cp[b] = b;
  for (int b = 0xAE; b <= 0xFF; ++b) cp[b] = b;
  int next = 256;
  for (int b = 0; b < 256; ++b)
    if (cp[b] < 0) cp[b] = next++;
  std::vector<std::string> out(256);
  for (int b = 0; b < 256; ++b) icu::UnicodeString(UChar32(cp[b])).toUTF8String(out[b]);
  return out;
}

// The Split pattern with ICU's \s widened to Unicode White_Space (ICU's \s
// lacks U+000B and U+0085, which the Rust regex engines count as space).
icu::UnicodeString icu_pattern(const std::string& p) {
  std::string out;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == '\\' && i + 1 < p.size()) {
      if (p[i + 1] == 's') {
        out += "\\p{White_Space}";
        ++i;
        continue;
      }
      if (p[i + 1] == 'S') {
        out += "\\P{White_Space}";
        ++i;
        continue;
      }
      out += p[i];
      out += p[++i];
      continue;
    }
    out += p[i];
  }
  return icu::UnicodeString::fromUTF8(out);
}

const json& field(const json& j, const char* key, const std::string& label) {
  auto it = j.find(key);
  if (it == j.end()) fail("%s: missing '%s'", label.c_str(), key);
  return *it;
}

}  // namespace

struct Qwen2Tokenizer::Impl {
  std::unordered_map<std::string, int32_t> vocab;
  std::unordered_map<std::string, int32_t> ranks;  // "a b" -> merge rank (tokens hold no raw space)
  std::vector<std::pair<std::string, int32_t>> added;  // longest first
  std::unique_ptr<icu::RegexPattern> split;
  bool nfc = false, ignore_merges = false;
  int32_t size = 0;
  std::vector<std::string> bytes = byte_symbols();

  void bpe(const std::string& piece, std::vector<int32_t>& out) const;
  void encode_text(const std::string& text, std::vector<int32_t>& out) const;
};

void Qwen2Tokenizer::Impl::bpe(const std::string& piece, std::vector<int32_t>& out) const {
  std::string mapped;
  std::vector<std::string> sym;
  for (unsigned char c : piece) {
    sym.push_back(bytes[c]);
    mapped += bytes[c];
  }
  if (ignore_merges) {
    auto it = vocab.find(mapped);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Merge the lowest-ranked adjacent pair, all its occurrences left to right,
  // until no adjacent pair has a merge.
  while (sym.size() > 1) {
    int32_t best = INT32_MAX;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = ranks.find(sym[i] + " " + sym[i + 1]);
      if (it != ranks.end()) best = std::min(best, it->second);
    }
    if (best == INT32_MAX) break;
    std::vector<std::string> merged;
    for (size_t i = 0; i < sym.size(); ++i) {
      if (i + 1 < sym.size()) {
        auto it = ranks.find(sym[i] + " " + sym[i + 1]);
        if (it != ranks.end() && it->second == best) {
          merged.push_back(sym[i] + sym[i + 1]);
          ++i;
          continue;
        }
      }
      merged.push_back(sym[i]);
    }
    sym.swap(merged);
  }
  for (const std::string& s : sym) {
    auto it = vocab.find(s);
    if (it == vocab.end()) fail("Qwen2 tokenizer: token '%s' is not in the vocabulary", printable(s, 40).c_str());
    out.push_back(it->second);
  }
}

void Qwen2Tokenizer::Impl::encode_text(const std::string& text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  icu::UnicodeString u = icu::UnicodeString::fromUTF8(text);
  UErrorCode st = U_ZERO_ERROR;
  if (nfc) {
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(st);
    if (U_FAILURE(st)) fail("Qwen2 tokenizer: ICU has no NFC normaliser (%s)", u_errorName(st));
    u = n->normalize(u, st);
    if (U_FAILURE(st)) fail("Qwen2 tokenizer: NFC failed (%s)", u_errorName(st));
  }
  std::unique_ptr<icu::RegexMatcher> m(split->matcher(u, st));
  if (U_FAILURE(st)) fail("Qwen2 tokenizer: %s", u_errorName(st));
  auto piece = [&](int32_t b, int32_t e) {
    std::string s;
    u.tempSubString(b, e - b).toUTF8String(s);
    bpe(s, out);
  };
  // Split with the "Isolated" behaviour: matches and the text between them are pieces.
  int32_t at = 0;
  while (m->find(st) && U_SUCCESS(st)) {
    const int32_t b = m->start(st), e = m->end(st);
    if (e == b) continue;  // the Qwen2 pattern matches no empty string; others may
    if (b > at) piece(at, b);
    piece(b, e);
    at = e;
  }
  if (U_FAILURE(st)) fail("Qwen2 tokenizer: regex failed (%s)", u_errorName(st));
  if (at < u.length()) piece(at, u.length());
}

Qwen2Tokenizer::Qwen2Tokenizer() : impl_(std::make_unique<Impl>()) {}
Qwen2Tokenizer::~Qwen2Tokenizer() = default;
Qwen2Tokenizer::Qwen2Tokenizer(Qwen2Tokenizer&&) noexcept = default;
Qwen2Tokenizer& Qwen2Tokenizer::operator=(Qwen2Tokenizer&&) noexcept = default;

Qwen2Tokenizer::Qwen2Tokenizer(const std::string& path) : Qwen2Tokenizer() {
  std::filesystem::path p(path);
  std::error_code ec;
  if (std::filesystem::is_directory(p, ec)) p /= "tokenizer.json";
  *this = from_json_text(io::read_text_file(p.string(), size_t(256) << 20), p.string());
}

Qwen2Tokenizer Qwen2Tokenizer::from_json_text(const std::string& text, const std::string& label) {
  const char* lb = label.c_str();
  json j = io::parse_json_object(text, label);
  Qwen2Tokenizer t;
  Impl& im = *t.impl_;

  const json& model = field(j, "model", label);
  if (!model.is_object() || model.value("type", std::string()) != "BPE")
    fail("%s: model.type must be \"BPE\" (a byte-level BPE tokenizer such as Qwen2's)", lb);
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(k) && !model[k].is_null() && model[k] != "")
      fail("%s: model.%s is not supported (Qwen2 has none)", lb, k);
  if (model.value("byte_fallback", false)) fail("%s: model.byte_fallback is not supported (Qwen2 has none)", lb);
  im.ignore_merges = model.value("ignore_merges", false);
  const json& vocab = field(model, "vocab", label);
  if (!vocab.is_object() || vocab.empty()) fail("%s: model.vocab must be a non-empty object", lb);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= (1 << 24))
      fail("%s: vocabulary id of '%s' is not an integer in [0, 2^24)", lb, printable(it.key(), 40).c_str());
    const int32_t id = it.value().get<int32_t>();
    im.vocab.emplace(it.key(), id);
    im.size = std::max(im.size, id + 1);
  }
  const json& merges = field(model, "merges", label);
  if (!merges.is_array()) fail("%s: model.merges must be an array", lb);
  int32_t rank = 0;
  for (const json& mj : merges) {
    std::string a, b;
    if (mj.is_string()) {  // "a b" (tokenizers < 0.20)
      const std::string s = mj.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == s.size() || s.find(' ', sp + 1) != std::string::npos)
        fail("%s: merge %d '%s' is not two tokens separated by one space", lb, rank, printable(s, 40).c_str());
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (mj.is_array() && mj.size() == 2 && mj[0].is_string() && mj[1].is_string()) {  // ["a", "b"]
      a = mj[0].get<std::string>();
      b = mj[1].get<std::string>();
      if (a.empty() || b.empty() || a.find(' ') != std::string::npos || b.find(' ') != std::string::npos)
        fail("%s: merge %d holds an empty token or a raw space (not byte-level BPE)", lb, rank);
    } else {
      fail("%s: merge %d is neither \"a b\" nor [\"a\", \"b\"]", lb, rank);
    }
    im.ranks.emplace(a + " " + b, rank++);  // the first of duplicate merges keeps its rank
  }

  if (j.contains("added_tokens")) {
    const json& added = j["added_tokens"];
    if (!added.is_array()) fail("%s: added_tokens must be an array", lb);
    for (const json& a : added) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id") ||
          !a["id"].is_number_integer() || a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= (1 << 24))
        fail("%s: an added token needs a string 'content' and an id in [0, 2^24)", lb);
      const std::string content = a["content"].get<std::string>();
      for (const char* k : {"lstrip", "rstrip", "single_word"})
        if (a.value(k, false))
          fail("%s: added token '%s' has %s set, which is not supported (Qwen2's have none)", lb,
               printable(content, 40).c_str(), k);
      if (content.empty()) fail("%s: an added token is empty", lb);
      const int32_t id = a["id"].get<int32_t>();
      im.added.emplace_back(content, id);
      im.size = std::max(im.size, id + 1);
    }
    std::stable_sort(im.added.begin(), im.added.end(),
                     [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  }

  const json norm = j.value("normalizer", json());
  if (!norm.is_null()) {
    if (!norm.is_object() || norm.value("type", std::string()) != "NFC")
      fail("%s: normalizer %s is not supported (Qwen2 uses NFC)", lb, printable(norm.dump(), 60).c_str());
    im.nfc = true;
  }
  // Qwen2's pre-tokenizer: Sequence[Split(Regex, Isolated), ByteLevel(no prefix space, no regex)].
  const json& pre = field(j, "pre_tokenizer", label);
  const json* split = nullptr;
  bool byte_level = false;
  if (pre.is_object() && pre.value("type", std::string()) == "Sequence" && pre.contains("pretokenizers") &&
      pre["pretokenizers"].is_array() && pre["pretokenizers"].size() == 2) {
    split = &pre["pretokenizers"][0];
    const json& bl = pre["pretokenizers"][1];
    byte_level = bl.is_object() && bl.value("type", std::string()) == "ByteLevel" &&
                 !bl.value("add_prefix_space", false) && !bl.value("use_regex", true);
  }
  if (!split || !byte_level || !split->is_object() || split->value("type", std::string()) != "Split" ||
      split->value("behavior", std::string()) != "Isolated" || split->value("invert", false) ||
      !split->contains("pattern") || !(*split)["pattern"].is_object() || !(*split)["pattern"].contains("Regex") ||
      !(*split)["pattern"]["Regex"].is_string())
    fail("%s: unsupported pre_tokenizer (expected Qwen2's: a Split regex, Isolated, then ByteLevel without a "
         "prefix space)", lb);
  const std::string pattern = (*split)["pattern"]["Regex"].get<std::string>();
  UParseError pe;
  UErrorCode st = U_ZERO_ERROR;
  im.split.reset(icu::RegexPattern::compile(icu_pattern(pattern), 0, pe, st));
  if (U_FAILURE(st) || !im.split)
    fail("%s: the pre-tokenizer regex does not compile (%s at offset %d)", lb, u_errorName(st), pe.offset);
  for (int b = 0; b < 256; ++b)
    if (!im.vocab.count(im.bytes[b]))
      fail("%s: the vocabulary lacks the byte symbol of 0x%02x (not a byte-level BPE vocabulary)", lb, b);
  return t;
}

std::vector<int32_t> Qwen2Tokenizer::encode(const std::string& text) const {
  std::string roundtrip;
  icu::UnicodeString::fromUTF8(text).toUTF8String(roundtrip);
  if (roundtrip != text) fail("prompt is not valid UTF-8: '%s'", printable(text, 80).c_str());
  std::vector<int32_t> out;
  // Added tokens are split out first, on the raw text (leftmost, then longest).
  size_t at = 0, from = 0;
  while (at < text.size()) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    for (const auto& a : impl_->added)
      if (text.compare(at, a.first.size(), a.first) == 0) {
        hit = &a;
        break;  // longest first
      }
    if (!hit) {
      ++at;
      continue;
    }
    impl_->encode_text(text.substr(from, at - from), out);
    out.push_back(hit->second);
    at += hit->first.size();
    from = at;
  }
  impl_->encode_text(text.substr(from), out);
  return out;
}

int32_t Qwen2Tokenizer::token_id(const std::string& token) const {
  for (const auto& a : impl_->added)
    if (a.first == token) return a.second;
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

int32_t Qwen2Tokenizer::size() const { return impl_->size; }

}  // namespace fastvar::qwen2
