// Checkpoint readers: values against fixtures written by real torch
// (tools/make_io_fixtures.py), refusal of malicious pickles, and robustness
// against truncated, corrupted and hand-crafted malformed files.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/tensor_file.h"
#include "test_util.h"

namespace fastvar::io {
namespace {

using json = nlohmann::json;
using namespace std::string_literals;
using Bytes = std::vector<uint8_t>;

const std::string kDir = std::string(FASTVAR_TEST_DATA) + "/io/";
constexpr const char* kMarker = "/tmp/fastvar_pwned_marker";  // see make_io_fixtures.py

Bytes read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

Bytes to_bytes(const std::string& s) { return Bytes(s.begin(), s.end()); }

const json& expected() {
  static const json j = json::parse(read_bytes(kDir + "expected.json"));
  return j;
}

Bytes unhex(const std::string& h) {
  Bytes out;
  for (size_t i = 0; i + 1 < h.size(); i += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(h.substr(i, 2), nullptr, 16)));
  return out;
}

float half_to_float(uint16_t h) {
  int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v = e == 0 ? std::ldexp(static_cast<float>(m), -24)
                   : std::ldexp(static_cast<float>(m | 0x400), e - 25);
  return (h & 0x8000) ? -v : v;  // the fixtures hold no inf/nan
}

// Element i of a tensor as a double, decoded independently of the readers.
double element(const TensorEntry& t, size_t i) {
  const uint8_t* p = t.data + i * dtype_size(t.dtype);
  auto load = [p](auto v) {
    std::memcpy(&v, p, sizeof(v));
    return v;
  };
  switch (t.dtype) {
    case DType::F32: return load(float{});
    case DType::F16: return half_to_float(load(uint16_t{}));
    case DType::BF16: {
      uint32_t u = static_cast<uint32_t>(load(uint16_t{})) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case DType::F64: return load(double{});
    case DType::I64: return static_cast<double>(load(int64_t{}));
    case DType::I32: return load(int32_t{});
    case DType::I16: return load(int16_t{});
    case DType::I8: return load(int8_t{});
    case DType::U8: return load(uint8_t{});
    case DType::Bool: return load(uint8_t{});
  }
  return NAN;
}

// Names in file order, dtypes, shapes, exact bytes and decoded values.
void check_tensors(const TensorFile& f, const json& exp) {
  const json& order = exp["order"];
  ASSERT_EQ(f.tensors().size(), order.size()) << f.path();
  size_t total = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const std::string name = order[k];
    const TensorEntry& t = f.tensors()[k];
    SCOPED_TRACE(f.path() + ": " + name);
    EXPECT_EQ(t.name, name);
    EXPECT_EQ(&f.at(name), &t);
    const json& e = exp["tensors"][name];
    EXPECT_EQ(dtype_name(t.dtype), e["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, e["shape"].get<std::vector<int64_t>>());
    Bytes want = unhex(e["hex"]);
    ASSERT_EQ(t.nbytes, want.size());
    ASSERT_EQ(static_cast<size_t>(t.numel()) * dtype_size(t.dtype), t.nbytes);
    if (t.nbytes) {
      EXPECT_EQ(std::memcmp(t.data, want.data(), t.nbytes), 0);
    }
    const std::vector<double> values = e["values"];
    ASSERT_EQ(values.size(), static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(element(t, i), values[i]) << "at " << i;
    total += t.nbytes;
  }
  EXPECT_EQ(f.total_bytes(), total);
}

// Runs `fn`, which must throw fastvar::Error with a one-line message that
// contains every string in `parts`.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error thrown (expected one mentioning '" << *parts.begin() << "')";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

bool exists(const char* path) {
  struct stat st;
  return stat(path, &st) == 0;
}

TEST(IoDType, NamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::BF16), "BF16");
  EXPECT_STREQ(dtype_name(DType::Bool), "BOOL");
  EXPECT_EQ(dtype_size(DType::F64), 8u);
  EXPECT_EQ(dtype_size(DType::F16), 2u);
  EXPECT_EQ(dtype_size(DType::U8), 1u);
  TensorEntry t;
  EXPECT_EQ(t.numel(), 1);  // a scalar
  EXPECT_EQ(t.shape_str(), "[]");
  t.shape = {3, 4};
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.shape_str(), "[3, 4]");
  t.shape = {2, 0};
  EXPECT_EQ(t.numel(), 0);
}

// ---------------------------------------------------------------------------
// Good files.

TEST(IoPth, StateDictMatchesTorch) {
  for (const char* name : {"state_dict.pth", "state_dict_proto4.pth", "state_dict_zip64.pth"}) {
    auto f = TensorFile::open(kDir + name);
    EXPECT_EQ(f->format(), "pth");
    EXPECT_EQ(f->path(), kDir + name);
    check_tensors(*f, expected()["state_dict"]);
    EXPECT_TRUE(f->metadata().empty());
  }
}

TEST(IoSafetensors, StateDictMatchesTorch) {
  auto f = TensorFile::open(kDir + "state_dict.safetensors");
  EXPECT_EQ(f->format(), "safetensors");
  check_tensors(*f, expected()["state_dict"]);  // file order, not JSON key order
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("source"), "fastvar");
  EXPECT_EQ(f->find("__metadata__"), nullptr);
}

TEST(IoSafetensors, ReleasedPagesAreReadAgainFromTheFile) {
  // A 4 MiB tensor spans whole pages; dropping them (what --dtype bf16 does
  // with the float32 GEMM weights) must leave the data readable and unchanged.
  fastvar::test::TempDir d;
  std::vector<float> v(1 << 20);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i % 977) * 0.5f;
  fastvar::test::write_safetensors(d / "big.safetensors",
                                   {fastvar::test::st_f32("w", {int64_t(v.size())}, v)});
  auto f = TensorFile::open(d / "big.safetensors");
  const TensorEntry& e = f->at("w");
  const float* p = reinterpret_cast<const float*>(e.data);
  ASSERT_EQ(std::memcmp(p, v.data(), e.nbytes), 0);
  f->release_pages(e.data, e.nbytes);
  EXPECT_EQ(std::memcmp(p, v.data(), e.nbytes), 0);
  int local = 0;
  f->release_pages(&local, sizeof(local));  // not in the mapping: ignored
  EXPECT_EQ(local, 0);
}

TEST(IoPth, ContiguousTensorsAreZeroCopy) {
  Bytes buf = read_bytes(kDir + "state_dict.pth");
  auto f = TensorFile::parse_pth(buf.data(), buf.size(), "state_dict.pth");
  const uint8_t* lo = buf.data();
  const uint8_t* hi = lo + buf.size();
  for (const TensorEntry& t : f->tensors()) {
    bool inside = t.data >= lo && t.data + t.nbytes <= hi;
    // proj.weight was saved transposed, so it is the one tensor that is copied.
    EXPECT_EQ(inside, t.name != "proj.weight") << t.name;
  }
  // torch pads records so that storages start 64-byte aligned.
  EXPECT_EQ((f->at("conv.weight").data - lo) % 64, 0);
}

TEST(IoPth, ViewsOfOneStorage) {
  Bytes buf = read_bytes(kDir + "shared.pth");
  auto f = TensorFile::parse_pth(buf.data(), buf.size(), "shared.pth");
  check_tensors(*f, expected()["shared"]);
  // a = t[2:5] and b = t[5:] point into the same record, 3 floats apart.
  EXPECT_EQ(f->at("b").data - f->at("a").data, 3 * 4);
  EXPECT_TRUE(f->at("a").data > buf.data() && f->at("a").data < buf.data() + buf.size());
  EXPECT_EQ(f->at("c").shape, (std::vector<int64_t>{4, 2}));  // a transposed view: copied
}

TEST(IoTensorFile, LookupAndOpenErrors) {
  auto f = TensorFile::open(kDir + "shared.pth");
  EXPECT_EQ(f->find("nope"), nullptr);
  EXPECT_NE(f->find("a"), nullptr);
  expect_error([&] { f->at("nope"); }, {"shared.pth", "nope"});

  expect_error([] { TensorFile::open(kDir + "missing.pth"); }, {"missing.pth", "cannot open"});
  expect_error([] { TensorFile::open(kDir); }, {"directory"});
  char tmp[] = "/tmp/fastvar_empty_XXXXXX";
  int fd = mkstemp(tmp);
  ASSERT_GE(fd, 0);
  close(fd);
  expect_error([&] { TensorFile::open(tmp); }, {tmp, "empty"});
  unlink(tmp);
}

// ---------------------------------------------------------------------------
// Malicious pickles: refused by name, and nothing is ever executed.

TEST(IoPth, RefusesMaliciousGlobals) {
  const std::pair<const char*, const char*> cases[] = {
      {"evil_system.pth", "'os.system'"},
      {"evil_eval.pth", "'builtins.eval'"},
      {"evil_nested.pth", "'subprocess.Popen'"},
  };
  for (const auto& c : cases) {
    unlink(kMarker);
    expect_error([&] { TensorFile::open(kDir + c.first); }, {c.first, c.second, "refusing"});
    EXPECT_FALSE(exists(kMarker)) << c.first;
  }
  // A bare pickle is not a zip, so it goes to the safetensors parser and fails there.
  unlink(kMarker);
  expect_error([] { TensorFile::open(kDir + "evil_raw.pth"); }, {"evil_raw.pth", "bare pickle"});
  EXPECT_FALSE(exists(kMarker));
}

TEST(IoPth, RejectsWhatIsNotAFlatStateDict) {
  // {"model": state_dict} is unwrapped (Infinity's VAE ships as {"vae": ...}).
  auto nested = TensorFile::open(kDir + "nested_model.pth");
  ASSERT_EQ(nested->tensors().size(), 1u);
  EXPECT_EQ(nested->tensors()[0].name, "w");
  EXPECT_EQ(nested->metadata().at("wrapped_in"), "model");
  expect_error([] { TensorFile::open(kDir + "list.pth"); }, {"list.pth", "list", "state_dict()"});
  expect_error([] { TensorFile::open(kDir + "compressed.pth"); },
               {"compressed.pth", "compressed (method 8)"});
}

// ---------------------------------------------------------------------------
// Hand-made safetensors files.

Bytes safetensors(const std::string& header, size_t data_bytes) {
  Bytes out(8);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  out.insert(out.end(), header.begin(), header.end());
  out.resize(out.size() + data_bytes, 0x11);
  return out;
}

void expect_st_error(const Bytes& b, std::initializer_list<std::string> parts) {
  expect_error([&] { TensorFile::parse_safetensors(b.data(), b.size(), "x.safetensors"); },
               parts);
}

TEST(IoSafetensors, Malformed) {
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  auto ok = safetensors("{" + a + "}", 8);
  EXPECT_EQ(TensorFile::parse_safetensors(ok.data(), ok.size(), "x")->tensors().size(), 1u);

  expect_st_error(Bytes(5), {"x.safetensors", "too small"});
  Bytes long_header = safetensors("{}", 0);
  long_header[0] = 200;
  expect_st_error(long_header, {"header length 200 exceeds"});
  Bytes huge_header = safetensors("{}", 0);
  huge_header[7] = 0xff;
  expect_st_error(huge_header, {"exceeds the file size"});
  expect_st_error(safetensors("{" + a, 8), {"not valid JSON"});
  expect_st_error(safetensors("[1]", 0), {"not a JSON object"});
  expect_st_error(safetensors(std::string(100, '[') + std::string(100, ']'), 0), {"nested"});
  expect_st_error(safetensors(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
                  {"'a'", "unsupported dtype"});
  expect_st_error(safetensors("{" + a + "}", 4), {"'a'", "outside the 4 byte data block"});
  expect_st_error(safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                  {"'a'", "need 12"});
  expect_st_error(safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                  {"negative"});
  expect_st_error(safetensors(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
                  {"non-integer"});
  expect_st_error(
      safetensors(R"({"a":{"dtype":"F64","shape":[4611686018427387904,8],"data_offsets":[0,8]}})",
                  8),
      {"too large"});
  expect_st_error(safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8),
                  {"outside"});
  expect_st_error(safetensors(R"({"a":{"dtype":"F32","shape":[2]}})", 8), {"data_offsets"});
  expect_st_error(safetensors("{" + a + "," + a + "}", 8), {"duplicate tensor name 'a'"});
  expect_st_error(
      safetensors("{" + a + R"(,"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", 8),
      {"overlap"});
  expect_st_error(safetensors(R"({"__metadata__":{"k":1}})", 0), {"__metadata__"});
}

TEST(IoSafetensors, FileOrderIsDataOrder) {
  // The JSON DOM sorts keys (a, c, y, z); the data says c, then the empty y
  // and z (which a writer emits before the tensor they share an offset with,
  // ties broken by name), then a.
  auto b = safetensors(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                       R"("z":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},)"
                       R"("y":{"dtype":"F32","shape":[2,0],"data_offsets":[4,4]},)"
                       R"("c":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}})",
                       8);
  auto f = TensorFile::parse_safetensors(b.data(), b.size(), "x");
  std::vector<std::string> names;
  for (const TensorEntry& t : f->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"c", "y", "z", "a"}));
  EXPECT_EQ(f->at("a").data, b.data() + b.size() - 4);
}

// ---------------------------------------------------------------------------
// Hand-made torch zips around hand-assembled pickles.

// Appends little-endian fields given as {value, width in bytes}.
void put(Bytes& b, std::initializer_list<std::pair<uint64_t, int>> fields) {
  for (const auto& [v, n] : fields)
    for (int i = 0; i < n; ++i) b.push_back(i < 8 ? static_cast<uint8_t>(v >> (8 * i)) : 0);
}

// A stored zip with no CRCs (the reader does not check them).
Bytes make_zip(const std::vector<std::pair<std::string, std::string>>& entries,
               uint16_t method = 0, uint16_t flags = 0) {
  Bytes out, cd;
  for (const auto& [name, data] : entries) {
    uint64_t off = out.size();
    // version, flags, method, time + date + crc, sizes, name length, extra length
    put(out, {{0x04034b50, 4}, {20, 2}, {flags, 2}, {method, 2}, {0, 8}, {data.size(), 4},
              {data.size(), 4}, {name.size(), 2}, {0, 2}});
    // ... then comment length, disk, attributes and the local header offset
    put(cd, {{0x02014b50, 4}, {20, 2}, {20, 2}, {flags, 2}, {method, 2}, {0, 8},
             {data.size(), 4}, {data.size(), 4}, {name.size(), 2}, {0, 12},
             {off, 4}});
    out.insert(out.end(), name.begin(), name.end());
    out.insert(out.end(), data.begin(), data.end());
    cd.insert(cd.end(), name.begin(), name.end());
  }
  uint64_t cd_off = out.size();
  out.insert(out.end(), cd.begin(), cd.end());
  put(out, {{0x06054b50, 4}, {0, 4}, {entries.size(), 2}, {entries.size(), 2}, {cd.size(), 4},
            {cd_off, 4}, {0, 2}});
  return out;
}

std::string pint(int64_t v) {  // BININT, or LONG1 for what does not fit in 32 bits
  Bytes b;
  bool small = v >= INT32_MIN && v <= INT32_MAX;
  put(b, {{static_cast<uint64_t>(v), small ? 4 : 8}});
  return (small ? "J"s : "\x8a\x08"s) + std::string(b.begin(), b.end());
}

std::string pstr(const std::string& s) {
  Bytes b;
  put(b, {{s.size(), 4}});
  return "X" + std::string(b.begin(), b.end()) + s;
}

std::string ptuple(const std::vector<int64_t>& v) {
  std::string s = "(";
  for (int64_t x : v) s += pint(x);
  return s + "t";
}

// torch.save's pickle of {name: tensor}, for a tensor view of storage `key`.
std::string tensor_pickle(const std::string& cls, int64_t numel, int64_t offset,
                          const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
  return "\x80\x02" "ccollections\nOrderedDict\n)R(" + pstr("w") +
         "ctorch._utils\n_rebuild_tensor_v2\n((" + pstr("storage") + "ctorch\n" + cls + "\n" +
         pstr("0") + pstr("cpu") + pint(numel) + "tQ" + pint(offset) + ptuple(size) +
         ptuple(stride) + "\x89" "ccollections\nOrderedDict\n)RtRu.";
}

Bytes torch_file(const std::string& pkl, const std::string& storage = std::string(64, '\x01')) {
  return make_zip(
      {{"archive/data.pkl", pkl}, {"archive/data/0", storage}, {"archive/version", "3\n"}});
}

std::unique_ptr<TensorFile> parse(const Bytes& b) {
  return TensorFile::parse_pth(b.data(), b.size(), "x.pth");
}

void expect_pth_error(const Bytes& b, std::initializer_list<std::string> parts) {
  expect_error([&] { parse(b); }, parts);
}

TEST(IoPth, HandMadeTensors) {
  std::string data;
  for (int i = 0; i < 16; ++i) data += static_cast<char>(i);
  auto bytes = [](const TensorEntry& t) { return Bytes(t.data, t.data + t.nbytes); };
  // A view at offset 2 of a 16-byte storage points into the buffer.
  Bytes b1 = torch_file(tensor_pickle("ByteStorage", 16, 2, {2, 3}, {3, 1}), data);
  auto f = parse(b1);
  const TensorEntry& w = f->at("w");
  EXPECT_EQ(w.dtype, DType::U8);
  EXPECT_EQ(w.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(bytes(w), (Bytes{2, 3, 4, 5, 6, 7}));
  EXPECT_TRUE(w.data > b1.data() && w.data < b1.data() + b1.size());
  // Stride 0 (an expanded tensor) and a transposed view are gathered into copies.
  Bytes b2 = torch_file(tensor_pickle("ByteStorage", 16, 1, {3, 2}, {0, 1}), data);
  EXPECT_EQ(bytes(parse(b2)->at("w")), (Bytes{1, 2, 1, 2, 1, 2}));
  Bytes b3 = torch_file(tensor_pickle("ShortStorage", 8, 0, {2, 3}, {1, 2}), data);
  EXPECT_EQ(bytes(parse(b3)->at("w")), (Bytes{0, 1, 4, 5, 8, 9, 2, 3, 6, 7, 10, 11}));
  // Empty tensors need no data.
  Bytes b4 = torch_file(tensor_pickle("FloatStorage", 0, 0, {0, 5}, {5, 1}), "");
  EXPECT_EQ(parse(b4)->at("w").nbytes, 0u);
  // Size-1 dims may have any stride and still count as contiguous (zero copy).
  Bytes b5 = torch_file(tensor_pickle("FloatStorage", 8, 4, {4, 1}, {1, 7}), data + data);
  f = parse(b5);
  EXPECT_EQ(bytes(f->at("w")), to_bytes(data));
  EXPECT_TRUE(f->at("w").data > b5.data() && f->at("w").data < b5.data() + b5.size());
}

TEST(IoPth, HandMadeMalformed) {
  const std::string pro = "\x80\x02";
  auto pickle_only = [](const std::string& pkl) { return torch_file(pkl); };
  expect_pth_error(pickle_only(pro + "\x81."), {"x.pth", "opcode 0x81"});
  expect_pth_error(pickle_only(pro + "h\x05."), {"memo"});
  expect_pth_error(pickle_only(pro + "\x85."), {"underflow"});
  expect_pth_error(pickle_only(pro + "}(\x85."), {"underflow"});  // cannot pop across a MARK
  expect_pth_error(pickle_only(pro + "t."), {"MARK"});
  expect_pth_error(pickle_only(pro + "}"), {"no STOP"});
  expect_pth_error(pickle_only(pro + "X\xff\xff\xff\x7f"), {"truncated data.pkl"});
  expect_pth_error(pickle_only(pro + "]."), {"holds a list", "state_dict()"});
  expect_pth_error(pickle_only(pro + "}K\x01K\x02s."), {"non-string key (int)"});
  expect_pth_error(pickle_only(pro + "ctorch\nComplexFloatStorage\n."),
                   {"unsupported tensor storage type 'torch.ComplexFloatStorage'"});
  expect_pth_error(pickle_only(pro + "ctorch\nFloatStorage\n)R."), {"cannot be called"});
  expect_pth_error(pickle_only(pro + "c__builtin__\ngetattr\n."), {"'__builtin__.getattr'"});
  expect_pth_error(pickle_only(pro + "c\x01\xff\nx\n."), {"'\\x01\\xff.x'"});
  expect_pth_error(pickle_only(pro + "K\x01Q."), {"persistent id"});
  // A list that contains itself must neither leak nor recurse.
  Bytes cycle = pickle_only(pro + "]q\x00h\x00" "a}."s);
  EXPECT_TRUE(parse(cycle)->tensors().empty());

  // Views and storages that do not fit.
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 16, 13, {4}, {1})),
                   {"past the end of storage '0'"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 17, 0, {4}, {1})),
                   {"storage '0' holds 64 bytes"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", INT64_MAX / 2, 0, {4}, {1})),
                   {"holds 64 bytes"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 16, -1, {4}, {1})), {"malformed"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 16, 0, {4}, {-1})), {"non-negative"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 16, 0, {1LL << 20, 1LL << 10},
                                            {0, 0})), {"more memory"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 16, 0, {1LL << 62, 4}, {0, 0})),
                   {"overflows"});
  expect_pth_error(torch_file(tensor_pickle("FloatStorage", 16, 0, {2, 2}, {INT64_MAX, 1})),
                   {"overflows"});

  // Zip-level problems.
  std::string ok = tensor_pickle("FloatStorage", 4, 0, {4}, {1});
  expect_pth_error(make_zip({{"archive/data.pkl", ok}}), {"missing storage record"});
  expect_pth_error(make_zip({{"data.pkl", ok}}), {"top-level folder"});
  expect_pth_error(make_zip({{"archive/version", "3\n"}}), {"no 'archive/data.pkl'"});
  expect_pth_error(make_zip({{"archive/data.pkl", ok}, {"archive/data.pkl", ok}}),
                   {"duplicate zip entry"});
  expect_pth_error(make_zip({{"archive/data.pkl", ok}}, 8), {"compressed (method 8)"});
  expect_pth_error(make_zip({{"archive/data.pkl", ok}}, 0, 1), {"encrypted"});
  expect_pth_error(make_zip({{"archive/data.pkl", ok}, {"archive/byteorder", "big"}}),
                   {"byte order is 'big'"});
  expect_pth_error(make_zip({}), {"empty zip"});
  EXPECT_EQ(parse(make_zip({{"archive/data.pkl", ok},
                            {"archive/data/0", std::string(16, 'x')},
                            {"archive/byteorder", "little"},
                            {"archive/.data/serialization_id", "123"},
                            {"archive/unknown", "ignored"}}))
                ->at("w").nbytes, 16u);
}

// ---------------------------------------------------------------------------
// Robustness: every prefix and many single-byte corruptions of the fixtures
// must either parse or throw fastvar::Error. Each input sits in its own
// exactly-sized heap block, so an ASan build catches any read past its end.

const char* const kFixtures[] = {"state_dict.pth", "state_dict_proto4.pth", "state_dict_zip64.pth",
                                 "shared.pth", "state_dict.safetensors"};

bool is_zip(const Bytes& b) { return b.size() >= 4 && std::memcmp(b.data(), "PK\x03\x04", 4) == 0; }

bool try_parse(const uint8_t* p, size_t n, bool pth) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[n ? n : 1]);
  if (n) std::memcpy(copy.get(), p, n);
  try {
    auto f = pth ? TensorFile::parse_pth(copy.get(), n, "fuzz")
                 : TensorFile::parse_safetensors(copy.get(), n, "fuzz");
    unsigned sum = 0;
    for (const TensorEntry& t : f->tensors()) {
      EXPECT_EQ(static_cast<size_t>(t.numel()) * dtype_size(t.dtype), t.nbytes) << t.name;
      for (size_t i = 0; i < t.nbytes; ++i) sum += t.data[i];  // touch every byte
    }
    (void)sum;
    return true;
  } catch (const Error&) {
    return false;
  }
}

TEST(IoRobustness, EveryTruncationFails) {
  for (const char* name : kFixtures) {
    Bytes b = read_bytes(kDir + name);
    bool pth = is_zip(b);
    for (size_t n = 0; n < b.size(); ++n) {
      EXPECT_FALSE(try_parse(b.data(), n, pth)) << name << " truncated to " << n;
      EXPECT_FALSE(try_parse(b.data(), n, !pth)) << name << " truncated to " << n;
    }
  }
}

TEST(IoRobustness, CorruptedBytesNeverCrash) {
  for (const char* name : kFixtures) {
    Bytes b = read_bytes(kDir + name);
    bool pth = is_zip(b);
    size_t ok = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      const uint8_t orig = b[i];
      for (uint8_t v : {uint8_t(orig ^ 0xff), uint8_t(orig ^ 0x80), uint8_t(orig ^ 0x01)}) {
        b[i] = v;
        ok += try_parse(b.data(), b.size(), pth);
      }
      b[i] = orig;
    }
    EXPECT_GT(ok, 0u) << name;  // flips inside tensor data still parse
  }
}

}  // namespace
}  // namespace fastvar::io
