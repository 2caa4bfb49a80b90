// safetensors reader: u64 LE header length N, N bytes of JSON, then the data
// block. The header is untrusted: every number is range-checked before it is
// used to form a pointer.
#include <algorithm>
#include <limits>
#include <tuple>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/tensor_file.h"

namespace fastvar::io {
namespace {

using json = nlohmann::json;

// Real headers are a few hundred bytes per tensor; anything beyond this is
// corrupt or hostile and would only make the JSON parser allocate.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
// Legit headers nest three levels deep; the cap keeps a pathological header
// from building a deep DOM.
constexpr int kMaxJsonDepth = 8;
// The largest published checkpoints hold a few thousand tensors per file; a
// header with more entries than this is refused before it is built.
constexpr size_t kMaxHeaderEntries = 1u << 18;

bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kNames[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16},   {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::Bool}};
  for (const auto& [name, t] : kNames) {
    if (s == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

// A JSON integer as a non-negative int64, or -1 if it is anything else.
int64_t as_index(const json& v) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    return u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
               ? static_cast<int64_t>(u)
               : -1;
  }
  if (v.is_number_integer()) return std::max<int64_t>(v.get<int64_t>(), -1);
  return -1;
}

// Keeps untrusted text printable and short so messages stay on one line.
std::string clip(const std::string& s, size_t max = 80) {
  std::string out;
  for (char c : s.substr(0, max)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return s.size() > max ? out + "..." : out;
}

// The first pass over a header: depth, entry count and duplicate keys, each
// checked as the parser goes, so a hostile header is refused after reading
// at most the capped number of entries.
class HeaderScan {
 public:
  explicit HeaderScan(const char* file) : file_(file) {}

  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json::number_integer_t) { return true; }
  bool number_unsigned(json::number_unsigned_t) { return true; }
  bool number_float(json::number_float_t, const json::string_t&) { return true; }
  bool string(json::string_t&) { return true; }
  bool binary(json::binary_t&) { return true; }
  bool start_object(std::size_t) {
    enter();
    keys_.emplace_back();
    return true;
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) {
    enter();
    return true;
  }
  bool end_array() {
    --depth_;
    return true;
  }
  bool key(json::string_t& k) {
    if (depth_ == 1 && ++entries_ > kMaxHeaderEntries)
      fail("%s: safetensors header has more than %zu entries (the limit; real checkpoints "
           "have a few thousand)", file_, kMaxHeaderEntries);
    if (!keys_.back().insert(k).second) {
      if (depth_ == 1) fail("%s: duplicate tensor name '%s'", file_, clip(k).c_str());
      fail("%s: safetensors header has a duplicate key '%s'", file_, clip(k).c_str());
    }
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const json::exception& e) {
    // nlohmann quotes the offending token, which can be long or binary.
    fail("%s: safetensors header is not valid JSON: %s", file_, clip(e.what(), 160).c_str());
  }

 private:
  void enter() {
    if (++depth_ > kMaxJsonDepth)
      fail("%s: safetensors header is nested deeper than %d levels", file_, kMaxJsonDepth);
  }

  const char* file_;
  int depth_ = 0;
  size_t entries_ = 0;
  std::vector<std::unordered_set<std::string>> keys_;  // one set per open object
};

struct Pending {
  TensorEntry entry;
  uint64_t begin = 0, end = 0;
};

}  // namespace

std::unique_ptr<TensorFile> TensorFile::parse_safetensors(const uint8_t* buf, size_t size,
                                                          const std::string& name) {
  const char* fn = name.c_str();
  if (size < 8) fail("%s: too small for a safetensors file (%zu bytes)", fn, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | buf[i];
  if (n > size - 8 && buf[0] == 0x80 && buf[1] <= 5)
    fail("%s: not a zip archive or a safetensors file; looks like a bare pickle (legacy "
         "torch.save format, or plain pickle), which is not supported", fn);
  if (n > size - 8)
    fail("%s: safetensors header length %llu exceeds the file size %zu (truncated, or not a "
         "safetensors file)", fn, static_cast<unsigned long long>(n), size);
  if (n > kMaxHeaderBytes)
    fail("%s: safetensors header of %llu bytes is larger than the %llu byte limit", fn,
         static_cast<unsigned long long>(n), static_cast<unsigned long long>(kMaxHeaderBytes));
  if (n < 2) fail("%s: safetensors header is empty", fn);

  // Pass 1, a SAX scan in linear time: caps the nesting depth and the entry
  // count and finds duplicate keys (nlohmann's DOM keeps only the last one).
  // nlohmann's callback parser is not used: it rescans the parent object after
  // every entry, quadratic in the entry count. Pass 2 builds the DOM, which is
  // linear once the scan has bounded the header.
  const char* text = reinterpret_cast<const char*>(buf + 8);
  json header;
  try {
    HeaderScan scan(fn);
    json::sax_parse(text, text + n, &scan);
    header = json::parse(text, text + n);
  } catch (const json::exception& e) {
    // nlohmann quotes the offending token, which can be long or binary.
    std::string what = e.what();
    fail("%s: safetensors header is not valid JSON: %s", fn, clip(what, 160).c_str());
  }
  if (!header.is_object()) fail("%s: safetensors header is not a JSON object", fn);
  std::unique_ptr<TensorFile> f(new TensorFile);
  f->path_ = name;
  f->format_ = "safetensors";
  const uint8_t* data = buf + 8 + n;
  const uint64_t data_size = size - 8 - n;

  std::vector<Pending> pending;
  pending.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) fail("%s: __metadata__ is not a JSON object", fn);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail("%s: __metadata__ value '%s' is not a string", fn, clip(m.key()).c_str());
        f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    std::string tn = clip(key);
    if (!v.is_object()) fail("%s: tensor '%s' entry is not a JSON object", fn, tn.c_str());
    auto dt = v.find("dtype");
    auto sh = v.find("shape");
    auto off = v.find("data_offsets");
    if (dt == v.end() || sh == v.end() || off == v.end())
      fail("%s: tensor '%s' needs dtype, shape and data_offsets", fn, tn.c_str());

    Pending p;
    p.entry.name = key;
    if (!dt->is_string() || !parse_dtype(dt->get<std::string>(), &p.entry.dtype))
      fail("%s: tensor '%s' has unsupported dtype %s", fn, tn.c_str(), clip(dt->dump()).c_str());
    if (!sh->is_array()) fail("%s: tensor '%s' shape is not an array", fn, tn.c_str());
    // Products are tracked in bytes so that numel * itemsize can never wrap.
    uint64_t nbytes = dtype_size(p.entry.dtype);
    for (const json& d : *sh) {
      int64_t dim = as_index(d);
      if (dim < 0)
        fail("%s: tensor '%s' shape %s has a negative or non-integer dimension", fn, tn.c_str(),
             clip(sh->dump()).c_str());
      if (__builtin_mul_overflow(nbytes, static_cast<uint64_t>(dim), &nbytes))
        fail("%s: tensor '%s' shape %s is too large", fn, tn.c_str(), clip(sh->dump()).c_str());
      p.entry.shape.push_back(dim);
    }
    if (!off->is_array() || off->size() != 2 || as_index((*off)[0]) < 0 ||
        as_index((*off)[1]) < 0)
      fail("%s: tensor '%s' data_offsets must be two non-negative integers", fn, tn.c_str());
    p.begin = static_cast<uint64_t>(as_index((*off)[0]));
    p.end = static_cast<uint64_t>(as_index((*off)[1]));
    if (p.begin > p.end || p.end > data_size)
      fail("%s: tensor '%s' data_offsets [%llu, %llu] are outside the %llu byte data block", fn,
           tn.c_str(), static_cast<unsigned long long>(p.begin),
           static_cast<unsigned long long>(p.end), static_cast<unsigned long long>(data_size));
    if (p.end - p.begin != nbytes)
      fail("%s: tensor '%s' has %llu bytes of data but dtype %s and shape %s need %llu", fn,
           tn.c_str(), static_cast<unsigned long long>(p.end - p.begin),
           dtype_name(p.entry.dtype), p.entry.shape_str().c_str(),
           static_cast<unsigned long long>(nbytes));
    p.entry.data = data + p.begin;
    p.entry.nbytes = static_cast<size_t>(nbytes);
    pending.push_back(std::move(p));
  }

  // JSON objects are unordered; file order is data order, which is the order
  // the writer emitted the tensors in. An empty tensor sorts before the one
  // that starts where it sits (it was written first), then ties go by name.
  std::sort(pending.begin(), pending.end(), [](const Pending& a, const Pending& b) {
    return std::tie(a.begin, a.end, a.entry.name) < std::tie(b.begin, b.end, b.entry.name);
  });
  size_t last = 0;  // the tensor that reaches furthest so far
  for (size_t i = 1; i < pending.size(); ++i) {
    const Pending& p = pending[i];
    if (p.end > p.begin && p.begin < pending[last].end)
      fail("%s: tensors '%s' and '%s' overlap in the data block", fn,
           clip(pending[last].entry.name).c_str(), clip(p.entry.name).c_str());
    if (p.end > pending[last].end) last = i;
  }
  for (Pending& p : pending) f->add_tensor(std::move(p.entry));
  return f;
}

}  // namespace fastvar::io
