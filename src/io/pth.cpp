// torch.save reader. A .pth file is a zip archive (entries stored, not
// deflated) holding <dir>/data.pkl, a pickle of the state_dict, and one raw
// little-endian record <dir>/data/<key> per storage.
//
// The pickle is interpreted by a small restricted machine, never by anything
// that can call code: it knows the opcodes torch.save emits and a whitelist of
// six kinds of globals, and builds plain values (dicts, tuples, tensors). Any
// other global is refused by name as soon as it is seen, so a checkpoint
// crafted to run `os.system` fails to load instead of running it.
#include <algorithm>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <unordered_map>

#include "core/error.h"
#include "io/tensor_file.h"

namespace fastvar::io {
namespace {

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }
uint32_t le32(const uint8_t* p) { return le16(p) | static_cast<uint32_t>(le16(p + 2)) << 16; }
uint64_t le64(const uint8_t* p) { return le32(p) | static_cast<uint64_t>(le32(p + 4)) << 32; }

// Untrusted names are printed escaped and clipped so each message stays on one line.
std::string clip(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out += (c >= 0x20 && c < 0x7f) ? std::string(1, static_cast<char>(c))
                                   : strprintf("\\x%02x", c);
  }
  return s.size() > 80 ? out + "..." : out;
}

// ---------------------------------------------------------------------------
// Zip: only what torch's writer produces (stored entries, optional zip64,
// optional data descriptors). Sizes come from the central directory because
// torch writes data descriptors and leaves the local header sizes zero. CRCs
// are not checked: that would read every byte of a multi-GB file up front.

struct Span {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

struct Zip {
  std::map<std::string, Span> records;
  std::string first;  // name of the first central directory entry
};

constexpr uint32_t kEocdSig = 0x06054b50, kEocd64Sig = 0x06064b50, kLocatorSig = 0x07064b50;
constexpr uint32_t kCentralSig = 0x02014b50, kLocalSig = 0x04034b50;

Zip read_zip(const uint8_t* buf, size_t size, const char* fn) {
  if (size < 22) fail("%s: truncated zip archive (%zu bytes)", fn, size);
  // The end-of-central-directory record sits at the end, before an optional
  // comment of up to 64 KiB; scan back for its signature.
  size_t eocd = size;
  size_t lo = size > 22 + 0xffff ? size - 22 - 0xffff : 0;
  for (size_t p = size - 22 + 1; p-- > lo;) {
    if (le32(buf + p) == kEocdSig && p + 22 + le16(buf + p + 20) <= size) {
      eocd = p;
      break;
    }
  }
  if (eocd == size) fail("%s: no zip end-of-central-directory record (truncated file?)", fn);

  uint64_t disk = le16(buf + eocd + 4), cd_disk = le16(buf + eocd + 6);
  uint64_t count = le16(buf + eocd + 10);
  uint64_t cd_size = le32(buf + eocd + 12), cd_off = le32(buf + eocd + 16);
  if (eocd >= 20 && le32(buf + eocd - 20) == kLocatorSig) {
    // zip64: the locator right before the EOCD points at the zip64 EOCD
    // record, which carries the real 64-bit counts and offsets.
    uint64_t rec = le64(buf + eocd - 20 + 8);
    if (rec > eocd - 20 || eocd - 20 - rec < 56 || le32(buf + rec) != kEocd64Sig)
      fail("%s: corrupt zip64 end-of-central-directory record", fn);
    disk = le32(buf + rec + 16);
    cd_disk = le32(buf + rec + 20);
    count = le64(buf + rec + 32);
    cd_size = le64(buf + rec + 40);
    cd_off = le64(buf + rec + 48);
  }
  if (disk != 0 || cd_disk != 0) fail("%s: multi-disk zip archives are not supported", fn);
  if (cd_off > size || cd_size > size - cd_off)
    fail("%s: zip central directory lies outside the file (truncated file?)", fn);
  if (count > cd_size / 46) fail("%s: truncated zip central directory", fn);

  Zip zip;
  const uint8_t* p = buf + cd_off;
  const uint8_t* end = p + cd_size;
  for (uint64_t i = 0; i < count; ++i) {
    if (end - p < 46 || le32(p) != kCentralSig) fail("%s: corrupt zip central directory", fn);
    uint16_t flags = le16(p + 8), method = le16(p + 10);
    uint64_t csize = le32(p + 20), usize = le32(p + 24), local = le32(p + 42);
    size_t nlen = le16(p + 28), xlen = le16(p + 30), clen = le16(p + 32);
    if (static_cast<size_t>(end - p) < 46 + nlen + xlen + clen)
      fail("%s: truncated zip central directory", fn);
    std::string name(reinterpret_cast<const char*>(p + 46), nlen);
    const std::string shown = clip(name);
    const char* en = shown.c_str();

    // The zip64 extra field holds, in this order, whichever of the 32-bit
    // fields above were saturated to 0xffffffff.
    const uint8_t* x = p + 46 + nlen;
    const uint8_t* xend = x + xlen;
    while (xend - x >= 4) {
      uint16_t id = le16(x), len = le16(x + 2);
      if (xend - x - 4 < len) fail("%s: zip entry '%s' has a corrupt extra field", fn, en);
      if (id == 0x0001) {
        const uint8_t* q = x + 4;
        auto take = [&](uint64_t* v) {
          if (*v != 0xffffffffu) return;
          if (x + 4 + len - q < 8) fail("%s: zip entry '%s' has a short zip64 field", fn, en);
          *v = le64(q);
          q += 8;
        };
        take(&usize);
        take(&csize);
        take(&local);
      }
      x += 4 + len;
    }

    if (flags & 1) fail("%s: zip entry '%s' is encrypted", fn, en);
    if (method != 0)
      fail("%s: zip entry '%s' is compressed (method %u); only stored entries are supported, "
           "as written by torch.save", fn, en, method);
    if (csize != usize) fail("%s: zip entry '%s' has inconsistent sizes", fn, en);
    if (local > size || size - local < 30 || le32(buf + local) != kLocalSig)
      fail("%s: zip entry '%s' has a corrupt local header", fn, en);
    // The local header's own name and extra lengths decide where data starts;
    // torch pads the extra field so that storages are 64-byte aligned.
    uint64_t data = local + 30 + le16(buf + local + 26) + le16(buf + local + 28);
    if (data > size || usize > size - data)
      fail("%s: zip entry '%s' extends past the end of the file (truncated file?)", fn, en);
    if (i == 0) zip.first = name;
    if (!zip.records.emplace(name, Span{buf + data, static_cast<size_t>(usize)}).second)
      fail("%s: duplicate zip entry '%s'", fn, en);
    p += 46 + nlen + xlen + clen;
  }
  return zip;
}

// ---------------------------------------------------------------------------
// Restricted pickle machine.

enum class Kind : uint8_t {
  None, Bool, Int, Float, Str, Tuple, List, Dict, Global, Storage, Tensor
};
enum class Fn : uint8_t { OrderedDict, RebuildTensor, RebuildParameter, StorageClass };

const char* kind_name(Kind k) {
  static const char* const kNames[] = {"None", "bool", "int",     "float",   "str",   "tuple",
                                       "list", "dict", "global", "storage", "tensor"};
  return kNames[static_cast<int>(k)];
}

// Values live in an arena owned by the machine and refer to each other by raw
// pointer: a pickle can build reference cycles (a list that contains itself),
// which must neither leak nor recurse.
struct Value {
  Kind kind = Kind::None;
  Fn fn = Fn::OrderedDict;   // Global
  DType dtype = DType::F32;  // Global storage class, Storage, Tensor
  int64_t i = 0;             // Bool, Int; Storage numel; Tensor index
  const uint8_t* ptr = nullptr;  // Storage record bytes
  std::string s;                 // Str (interned), Storage key
  std::vector<Value*> items;     // Tuple, List; Dict as key, value, key, value, ...
};

struct Tensor {
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data;
  size_t nbytes;
};

struct StorageClass {
  const char* name;
  DType dtype;
};
constexpr StorageClass kStorageClasses[] = {
    {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16},  {"BFloat16Storage", DType::BF16},
    {"DoubleStorage", DType::F64}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
    {"ShortStorage", DType::I16}, {"CharStorage", DType::I8},   {"ByteStorage", DType::U8},
    {"BoolStorage", DType::Bool}};

// Bounds on what a hostile pickle can make us allocate. A state_dict needs
// roughly twenty objects per tensor, so the object cap allows ~200k tensors.
constexpr size_t kMaxValues = size_t{1} << 22;
constexpr size_t kMaxDims = 64;

class Unpickler {
 public:
  Unpickler(const uint8_t* p, size_t n, const Zip& zip, const std::string& prefix,
            size_t file_size, const char* fn)
      : p_(p), n_(n), zip_(zip), prefix_(prefix), fn_(fn),
        owned_budget_(2 * static_cast<uint64_t>(file_size) + (1u << 20)) {}

  Value* run();
  std::vector<Tensor> tensors;
  std::vector<std::unique_ptr<uint8_t[]>> owned;  // contiguous copies of strided tensors

 private:
  [[noreturn]] void bad(const char* what) {
    fail("%s: corrupt data.pkl: %s at byte %zu", fn_, what, op_pos_);
  }
  const uint8_t* take(size_t k) {
    if (n_ - pos_ < k) fail("%s: truncated data.pkl (pickle ends inside an opcode)", fn_);
    const uint8_t* q = p_ + pos_;
    pos_ += k;
    return q;
  }
  std::string line();

  Value* make(Kind k) {
    if (arena_.size() >= kMaxValues) fail("%s: data.pkl holds too many objects", fn_);
    arena_.emplace_back().kind = k;
    return &arena_.back();
  }
  Value* make_int(int64_t v) {
    Value* x = make(Kind::Int);
    x->i = v;
    return x;
  }
  Value* make_str(const uint8_t* q, size_t k);

  // The stack above the innermost MARK is the current frame: ops may only pop
  // from it, as in CPython's unpickler.
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Value* top() {
    if (stack_.size() <= floor()) bad("stack underflow");
    return stack_.back();
  }
  Value* pop() {
    Value* v = top();
    stack_.pop_back();
    return v;
  }
  std::vector<Value*> pop_mark() {
    if (marks_.empty()) bad("no MARK on the stack");
    std::vector<Value*> items(stack_.begin() + static_cast<ptrdiff_t>(marks_.back()),
                              stack_.end());
    stack_.resize(marks_.back());
    marks_.pop_back();
    return items;
  }
  Value* get_memo(uint32_t k) {
    auto it = memo_.find(k);
    if (it == memo_.end()) bad("memo key not found");
    return it->second;
  }

  Value* global(const std::string& module, const std::string& name);
  void set_item(Value* dict, Value* key, Value* val);
  Value* reduce(Value* callable, Value* args);
  Value* persistent_load(Value* pid);
  Value* rebuild_tensor(const std::vector<Value*>& a);

  const uint8_t* p_;
  size_t n_;
  const Zip& zip_;
  const std::string& prefix_;
  const char* fn_;
  uint64_t owned_budget_;
  size_t pos_ = 0, op_pos_ = 0;
  std::deque<Value> arena_;  // a deque never moves its elements
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, Value*> memo_;
  // Strings are interned so that dict keys compare by pointer: re-looking up
  // a long key costs O(1), not O(length), however often the pickle repeats it.
  std::unordered_map<std::string_view, Value*> strings_;
  // (dict, key) -> index of the key in dict->items, for SETITEM's replace semantics.
  std::map<std::tuple<const Value*, Kind, int64_t, const Value*>, size_t> dict_index_;
};

Value* Unpickler::make_str(const uint8_t* q, size_t k) {
  std::string_view sv(reinterpret_cast<const char*>(q), k);
  auto it = strings_.find(sv);
  if (it != strings_.end()) return it->second;
  Value* v = make(Kind::Str);
  v->s.assign(sv);
  strings_.emplace(v->s, v);  // keyed by a view of the arena-owned string
  return v;
}

std::string Unpickler::line() {
  const void* nl = std::memchr(p_ + pos_, '\n', n_ - pos_);
  if (!nl) fail("%s: truncated data.pkl (GLOBAL name without a newline)", fn_);
  size_t k = static_cast<size_t>(static_cast<const uint8_t*>(nl) - (p_ + pos_));
  std::string s(reinterpret_cast<const char*>(take(k)), k);
  pos_ += 1;
  return s;
}

Value* Unpickler::global(const std::string& module, const std::string& name) {
  auto make_fn = [&](Fn fn, DType dtype = DType::F32) {
    Value* g = make(Kind::Global);
    g->fn = fn;
    g->dtype = dtype;
    return g;
  };
  if (module == "collections" && name == "OrderedDict") return make_fn(Fn::OrderedDict);
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") return make_fn(Fn::RebuildTensor);
  if (module == "torch._utils" && name == "_rebuild_parameter")
    return make_fn(Fn::RebuildParameter);
  if (module == "torch") {
    for (const StorageClass& c : kStorageClasses)
      if (name == c.name) return make_fn(Fn::StorageClass, c.dtype);
    if (name.size() > 7 && name.compare(name.size() - 7, 7, "Storage") == 0)
      fail("%s: unsupported tensor storage type 'torch.%s'", fn_, clip(name).c_str());
  }
  fail("%s: refusing pickle global '%s.%s' (only torch state_dict globals are allowed)", fn_,
       clip(module).c_str(), clip(name).c_str());
}

void Unpickler::set_item(Value* dict, Value* key, Value* val) {
  if (dict->kind != Kind::Dict) bad("SETITEM on a non-dict");
  // Str keys are interned, so the pointer identifies the key; ints by value.
  std::tuple<const Value*, Kind, int64_t, const Value*> k;
  if (key->kind == Kind::Str)
    k = {dict, Kind::Str, 0, key};
  else if (key->kind == Kind::Int || key->kind == Kind::Bool)
    k = {dict, Kind::Int, key->i, nullptr};
  else
    bad("unsupported dict key type");
  auto [it, inserted] = dict_index_.emplace(k, dict->items.size());
  if (inserted) {
    dict->items.push_back(key);
    dict->items.push_back(val);
  } else {
    dict->items[it->second + 1] = val;  // Python keeps the original position
  }
}

Value* Unpickler::persistent_load(Value* pid) {
  // torch writes ('storage', StorageClass, key, location, numel).
  const std::vector<Value*>& a = pid->items;
  if (pid->kind != Kind::Tuple || a.size() != 5 || a[0]->kind != Kind::Str ||
      a[0]->s != "storage" || a[1]->kind != Kind::Global || a[1]->fn != Fn::StorageClass ||
      a[2]->kind != Kind::Str || a[3]->kind != Kind::Str || a[4]->kind != Kind::Int ||
      a[4]->i < 0)
    bad("unsupported persistent id (expected a torch storage reference)");
  auto rec = zip_.records.find(prefix_ + "data/" + a[2]->s);
  if (rec == zip_.records.end())
    fail("%s: missing storage record '%sdata/%s'", fn_, clip(prefix_).c_str(),
         clip(a[2]->s).c_str());
  uint64_t need;
  if (__builtin_mul_overflow(static_cast<uint64_t>(a[4]->i), dtype_size(a[1]->dtype), &need) ||
      need > rec->second.size)
    fail("%s: storage '%s' holds %zu bytes, fewer than %lld %s elements", fn_,
         clip(a[2]->s).c_str(), rec->second.size, static_cast<long long>(a[4]->i),
         dtype_name(a[1]->dtype));
  Value* st = make(Kind::Storage);
  st->dtype = a[1]->dtype;
  st->i = a[4]->i;
  st->ptr = rec->second.data;
  st->s = a[2]->s;
  return st;
}

Value* Unpickler::rebuild_tensor(const std::vector<Value*>& a) {
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
  //                    backward_hooks[, metadata])
  if (a.size() != 6 && a.size() != 7) bad("_rebuild_tensor_v2 expects 6 or 7 arguments");
  const Value* st = a[0];
  if (st->kind != Kind::Storage || a[1]->kind != Kind::Int || a[1]->i < 0 ||
      a[2]->kind != Kind::Tuple || a[3]->kind != Kind::Tuple ||
      a[2]->items.size() != a[3]->items.size() ||
      (a[4]->kind != Kind::Bool && a[4]->kind != Kind::Int) || a[5]->kind != Kind::Dict)
    bad("malformed _rebuild_tensor_v2 arguments");
  size_t nd = a[2]->items.size();
  if (nd > kMaxDims) bad("tensor has too many dimensions");
  std::vector<int64_t> size(nd), stride(nd);
  for (size_t d = 0; d < nd; ++d) {
    const Value* sz = a[2]->items[d];
    const Value* sd = a[3]->items[d];
    if (sz->kind != Kind::Int || sd->kind != Kind::Int || sz->i < 0 || sd->i < 0)
      bad("tensor size and stride must be non-negative ints");
    size[d] = sz->i;
    stride[d] = sd->i;
  }
  const int64_t offset = a[1]->i;
  const size_t isz = dtype_size(st->dtype);
  int64_t numel = 1;
  for (int64_t d : size)
    if (__builtin_mul_overflow(numel, d, &numel)) bad("tensor size overflows");
  // Row-major strides, ignoring size-1 dims (torch calls those contiguous too).
  bool contiguous = true;
  if (numel > 0) {
    int64_t expect = 1;  // a suffix product of size, so bounded by numel
    for (size_t d = nd; d-- > 0;) {
      if (size[d] != 1 && stride[d] != expect) contiguous = false;
      expect *= size[d];
    }
  }
  uint64_t nbytes;
  if (__builtin_mul_overflow(static_cast<uint64_t>(numel), isz, &nbytes) ||
      nbytes > std::numeric_limits<size_t>::max())
    bad("tensor size overflows");
  int64_t last = offset;  // storage index of the final element
  if (numel > 0) {
    for (size_t d = 0; d < nd; ++d) {
      int64_t span;
      if (__builtin_mul_overflow(size[d] - 1, stride[d], &span) ||
          __builtin_add_overflow(last, span, &last))
        bad("tensor view overflows");
    }
    if (last >= st->i)
      fail("%s: tensor view (offset %lld, last element %lld) reaches past the end of storage "
           "'%s' (%lld elements)", fn_, static_cast<long long>(offset),
           static_cast<long long>(last), clip(st->s).c_str(), static_cast<long long>(st->i));
  }

  Tensor t{st->dtype, size, st->ptr, static_cast<size_t>(nbytes)};
  if (numel > 0 && contiguous) {
    t.data = st->ptr + static_cast<size_t>(offset) * isz;  // zero copy
  } else if (numel > 0) {
    // A strided view (e.g. a transposed weight) is gathered into a contiguous
    // copy. Overlapping strides can describe far more elements than the file
    // holds, so copies share a budget tied to the file size.
    if (nbytes > owned_budget_)
      fail("%s: strided tensors would need more memory than the checkpoint holds", fn_);
    owned_budget_ -= nbytes;
    owned.push_back(std::make_unique<uint8_t[]>(static_cast<size_t>(nbytes)));
    uint8_t* dst = owned.back().get();
    std::vector<int64_t> idx(nd, 0);
    int64_t src = offset;
    for (int64_t e = 0; e < numel; ++e) {
      std::memcpy(dst + static_cast<size_t>(e) * isz, st->ptr + static_cast<size_t>(src) * isz,
                  isz);
      for (size_t d = nd; d-- > 0;) {  // odometer over the index, last dim fastest
        if (++idx[d] < size[d]) {
          src += stride[d];
          break;
        }
        src -= stride[d] * (size[d] - 1);
        idx[d] = 0;
      }
    }
    t.data = dst;
  }
  Value* v = make(Kind::Tensor);
  v->dtype = t.dtype;
  v->i = static_cast<int64_t>(tensors.size());
  tensors.push_back(std::move(t));
  return v;
}

Value* Unpickler::reduce(Value* callable, Value* args) {
  if (callable->kind != Kind::Global) bad("REDUCE on a non-callable");
  if (args->kind != Kind::Tuple) bad("REDUCE arguments are not a tuple");
  const std::vector<Value*>& a = args->items;
  switch (callable->fn) {
    case Fn::OrderedDict:
      if (!a.empty()) bad("OrderedDict with arguments is not supported");
      return make(Kind::Dict);
    case Fn::RebuildTensor:
      return rebuild_tensor(a);
    case Fn::RebuildParameter:
      // _rebuild_parameter(data, requires_grad, backward_hooks): just the data.
      if (a.size() != 3 || a[0]->kind != Kind::Tensor) bad("malformed _rebuild_parameter call");
      return a[0];
    case Fn::StorageClass:
      break;
  }
  bad("storage classes cannot be called");
}

Value* Unpickler::run() {
  Value* none = make(Kind::None);
  Value* yes = make(Kind::Bool);
  yes->i = 1;
  Value* no = make(Kind::Bool);
  auto tuple = [&](std::vector<Value*> items) {
    Value* t = make(Kind::Tuple);
    t->items = std::move(items);
    return t;
  };

  while (pos_ < n_) {
    op_pos_ = pos_;
    uint8_t op = p_[pos_++];
    switch (op) {
      case 0x80:  // PROTO
        if (*take(1) > 5) bad("unsupported pickle protocol");
        break;
      case 0x95:  // FRAME: a length hint for buffered readers; meaningless here
        take(8);
        break;
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        std::string name = line();
        stack_.push_back(global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL (protocol 4)
        Value* name = pop();
        Value* module = pop();
        if (module->kind != Kind::Str || name->kind != Kind::Str)
          bad("STACK_GLOBAL needs two strings");
        stack_.push_back(global(module->s, name->s));
        break;
      }
      case 'q':  // BINPUT
        memo_[*take(1)] = top();
        break;
      case 'r':  // LONG_BINPUT
        memo_[le32(take(4))] = top();
        break;
      case 0x94: {  // MEMOIZE (protocol 4)
        Value* v = top();
        memo_[static_cast<uint32_t>(memo_.size())] = v;
        break;
      }
      case 'h':  // BINGET
        stack_.push_back(get_memo(*take(1)));
        break;
      case 'j':  // LONG_BINGET
        stack_.push_back(get_memo(le32(take(4))));
        break;
      case '(':  // MARK
        marks_.push_back(stack_.size());
        break;
      case ')':  // EMPTY_TUPLE
        stack_.push_back(tuple({}));
        break;
      case 't':  // TUPLE
        stack_.push_back(tuple(pop_mark()));
        break;
      case 0x85:  // TUPLE1
      case 0x86:  // TUPLE2
      case 0x87: {  // TUPLE3
        std::vector<Value*> items(op - 0x84);
        for (size_t k = items.size(); k-- > 0;) items[k] = pop();
        stack_.push_back(tuple(std::move(items)));
        break;
      }
      case '}':  // EMPTY_DICT
        stack_.push_back(make(Kind::Dict));
        break;
      case ']':  // EMPTY_LIST
        stack_.push_back(make(Kind::List));
        break;
      case 'a': {  // APPEND
        Value* v = pop();
        Value* list = top();
        if (list->kind != Kind::List) bad("APPEND to a non-list");
        list->items.push_back(v);
        break;
      }
      case 'e': {  // APPENDS
        std::vector<Value*> items = pop_mark();
        Value* list = top();
        if (list->kind != Kind::List) bad("APPENDS to a non-list");
        list->items.insert(list->items.end(), items.begin(), items.end());
        break;
      }
      case 's': {  // SETITEM
        Value* v = pop();
        Value* k = pop();
        set_item(top(), k, v);
        break;
      }
      case 'u': {  // SETITEMS
        std::vector<Value*> items = pop_mark();
        if (items.size() % 2) bad("SETITEMS with an odd number of items");
        Value* dict = top();
        for (size_t k = 0; k < items.size(); k += 2) set_item(dict, items[k], items[k + 1]);
        break;
      }
      case 'X': {  // BINUNICODE
        size_t k = le32(take(4));
        stack_.push_back(make_str(take(k), k));
        break;
      }
      case 0x8c:  // SHORT_BINUNICODE
      case 'U': {  // SHORT_BINSTRING
        size_t k = *take(1);
        stack_.push_back(make_str(take(k), k));
        break;
      }
      case 'T': {  // BINSTRING: the length is a signed int32
        uint32_t k = le32(take(4));
        if (k > 0x7fffffffu) bad("negative BINSTRING length");
        stack_.push_back(make_str(take(k), k));
        break;
      }
      case 'J':  // BININT
        stack_.push_back(make_int(static_cast<int32_t>(le32(take(4)))));
        break;
      case 'K':  // BININT1
        stack_.push_back(make_int(*take(1)));
        break;
      case 'M':  // BININT2
        stack_.push_back(make_int(le16(take(2))));
        break;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        size_t k = *take(1);
        if (k > 8) bad("integer too large");
        const uint8_t* q = take(k);
        uint64_t u = 0;
        for (size_t b = 0; b < k; ++b) u |= static_cast<uint64_t>(q[b]) << (8 * b);
        if (k > 0 && k < 8 && (q[k - 1] & 0x80)) u |= ~uint64_t{0} << (8 * k);  // sign-extend
        stack_.push_back(make_int(static_cast<int64_t>(u)));
        break;
      }
      case 'N':  // NONE
        stack_.push_back(none);
        break;
      case 0x88:  // NEWTRUE
        stack_.push_back(yes);
        break;
      case 0x89:  // NEWFALSE
        stack_.push_back(no);
        break;
      case 'G':  // BINFLOAT: nothing in a state_dict reads a float's value
        take(8);
        stack_.push_back(make(Kind::Float));
        break;
      case 'R': {  // REDUCE
        Value* args = pop();
        Value* callable = pop();
        stack_.push_back(reduce(callable, args));
        break;
      }
      case 'Q':  // BINPERSID
        stack_.push_back(persistent_load(pop()));
        break;
      case 'b': {  // BUILD: only OrderedDict.__setstate__ of state_dict's _metadata
        Value* state = pop();
        if (top()->kind != Kind::Dict || state->kind != Kind::Dict)
          bad("BUILD is only supported for a state_dict's _metadata");
        break;
      }
      case '.':  // STOP
        return pop();
      default:
        fail("%s: unsupported pickle opcode 0x%02x ('%s') at byte %zu of data.pkl; only "
             "torch.save(state_dict) pickles are supported", fn_, op,
             clip(std::string(1, static_cast<char>(op))).c_str(), op_pos_);
    }
  }
  fail("%s: truncated data.pkl (no STOP opcode)", fn_);
}

}  // namespace

std::unique_ptr<TensorFile> TensorFile::parse_pth(const uint8_t* buf, size_t size,
                                                  const std::string& name) {
  const char* fn = name.c_str();
  Zip zip = read_zip(buf, size, fn);
  if (zip.records.empty()) fail("%s: empty zip archive", fn);
  size_t slash = zip.first.find('/');
  if (slash == std::string::npos || slash == 0)
    fail("%s: zip entry '%s' is not inside a top-level folder (not a torch.save checkpoint)", fn,
         clip(zip.first).c_str());
  const std::string prefix = zip.first.substr(0, slash + 1);
  auto pkl = zip.records.find(prefix + "data.pkl");
  if (pkl == zip.records.end())
    fail("%s: no '%sdata.pkl' record (not a torch.save checkpoint)", fn, clip(prefix).c_str());
  auto order = zip.records.find(prefix + "byteorder");
  if (order != zip.records.end()) {
    std::string bo(reinterpret_cast<const char*>(order->second.data), order->second.size);
    if (bo != "little")
      fail("%s: checkpoint byte order is '%s'; only little-endian checkpoints are supported", fn,
           clip(bo).c_str());
  }

  Unpickler vm(pkl->second.data, pkl->second.size, zip, prefix, size, fn);
  const Value* root = vm.run();
  if (root->kind != Kind::Dict)
    fail("%s: checkpoint holds a %s, not a dict of tensors (save model.state_dict())", fn,
         kind_name(root->kind));

  std::unique_ptr<TensorFile> f(new TensorFile);
  f->path_ = name;
  f->format_ = "pth";
  // Some releases wrap the state_dict (Infinity's VAE: {"vae": state_dict}, training
  // checkpoints: {"model": ..., "epoch": 3}). When the top level holds no tensor,
  // take the one entry under a known wrapper key that is a dict.
  bool has_tensor = false;
  for (size_t k = 1; k < root->items.size(); k += 2) has_tensor |= root->items[k]->kind == Kind::Tensor;
  if (!has_tensor) {
    for (const char* wrapper : {"state_dict", "model", "vae", "module", "ema"}) {
      for (size_t k = 0; k < root->items.size(); k += 2) {
        const Value* key = root->items[k];
        if (key->kind == Kind::Str && key->s == wrapper && root->items[k + 1]->kind == Kind::Dict) {
          f->metadata_["wrapped_in"] = wrapper;
          root = root->items[k + 1];
          break;
        }
      }
      if (f->metadata_.count("wrapped_in")) break;
    }
  }
  for (size_t k = 0; k < root->items.size(); k += 2) {
    const Value* key = root->items[k];
    const Value* val = root->items[k + 1];
    if (key->kind != Kind::Str)
      fail("%s: checkpoint dict has a non-string key (%s); expected tensor names (save "
           "model.state_dict())", fn, kind_name(key->kind));
    if (val->kind != Kind::Tensor)
      fail("%s: '%s' is a %s, not a tensor; only flat state_dicts are supported (save "
           "model.state_dict())", fn, clip(key->s).c_str(), kind_name(val->kind));
    const Tensor& t = vm.tensors[static_cast<size_t>(val->i)];
    TensorEntry e;
    e.name = key->s;
    e.dtype = t.dtype;
    e.shape = t.shape;
    e.data = t.data;
    e.nbytes = t.nbytes;
    f->add_tensor(std::move(e));
  }
  for (auto& o : vm.owned) f->owned_.push_back(std::move(o));
  return f;
}

}  // namespace fastvar::io
