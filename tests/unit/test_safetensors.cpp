// Safetensors reader, writer and checkpoint directories against the RELIABILITY.md catalogue: every
// malformed input is a typed hylo::Error naming the file (and the tensor where there is one); valid corner
// cases (out-of-order offsets, zero tensors, rank 0, zero-size, unaligned data) load.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <csignal>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/error.h"
#include "io/safetensors.h"

namespace hylo {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

constexpr const char* kDisplay = "bad.safetensors";

// [u64 LE N][header][data_bytes of a deterministic pattern]; `n` overrides the length field.
Bytes make_file(std::string_view header, std::uint64_t data_bytes = 0, std::optional<std::uint64_t> n = {}) {
  Bytes out(8 + header.size() + data_bytes);
  const std::uint64_t len = n.value_or(header.size());
  std::memcpy(out.data(), &len, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (std::uint64_t i = 0; i < data_bytes; ++i)
    out[8 + header.size() + i] = static_cast<std::byte>((i * 7 + 1) & 0xFF);
  return out;
}

Bytes raw_bytes(std::size_t n) { return Bytes(n, std::byte{0x41}); }

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape, std::uint64_t b,
                  std::uint64_t e) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}";
}

std::string nested(std::size_t depth, const std::string& open, const std::string& inner, const std::string& close) {
  std::string s;
  s.reserve(depth * (open.size() + close.size()) + inner.size());
  for (std::size_t i = 0; i < depth; ++i) s += open;
  s += inner;
  for (std::size_t i = 0; i < depth; ++i) s += close;
  return s;
}

struct BadCase {
  std::string name;  // test name suffix
  Bytes bytes;
  std::string key;       // must appear in the message (tensor name), empty if none
  std::string fragment;  // identifies which check fired
};

std::vector<BadCase> bad_cases() {
  std::vector<BadCase> c;
  const std::string w8 = entry("w", "F32", "[2]", 0, 8);  // a valid 8-byte tensor
  // -- size and header length --
  c.push_back({"Empty", {}, "", "too small"});
  for (std::size_t n = 1; n <= 7; ++n) c.push_back({"Size" + std::to_string(n), raw_bytes(n), "", "too small"});
  c.push_back({"HeaderLenZero", make_file(""), "", "found nothing"});
  c.push_back({"HeaderLenMax", make_file("{}", 0, ~std::uint64_t{0}), "", "exceeds the limit"});
  c.push_back({"HeaderLenOnePastEof", make_file("{}", 0, 3), "", "runs past the end"});
  c.push_back({"HeaderLenOverLimit", make_file("{}", 0, 100'000'001), "", "exceeds the limit"});
  c.push_back({"HeaderLenAtLimitPastEof", make_file("{}", 0, 100'000'000), "", "runs past the end"});
  c.push_back({"HeaderOnlySpaces", make_file("        "), "", "found nothing"});
  // -- encoding and JSON shape --
  c.push_back({"InvalidUtf8Byte", make_file("{\"w\xff\":1}"), "", "not valid UTF-8"});
  c.push_back({"OverlongUtf8", make_file("{\"\xc0\xaf\":1}"), "", "not valid UTF-8"});
  c.push_back({"Utf8Surrogate", make_file("{\"\xed\xa0\x80\":1}"), "", "not valid UTF-8"});
  c.push_back({"Utf8AboveMax", make_file("{\"\xf4\x90\x80\x80\":1}"), "", "not valid UTF-8"});
  c.push_back({"Utf8Truncated", make_file("{\"a\":\"\xe2\x82\"}"), "", "not valid UTF-8"});
  c.push_back({"ArrayHeader", make_file("[]"), "", "must be a JSON object"});
  c.push_back({"StringHeader", make_file("\"x\""), "", "must be a JSON object"});
  c.push_back({"ByteOrderMark", make_file("\xef\xbb\xbf{}"), "", "must be a JSON object"});
  c.push_back({"LeadingSpace", make_file(" {}"), "", "must be a JSON object"});
  c.push_back({"TrailingGarbage", make_file("{} x"), "", "not valid JSON"});
  c.push_back({"TwoObjects", make_file("{}{}"), "", "not valid JSON"});
  c.push_back({"TrailingNewline", make_file("{}\n"), "", "only spaces"});
  c.push_back({"TrailingTab", make_file("{}  \t  "), "", "only spaces"});
  c.push_back({"NulPadding", make_file(std::string("{}\0\0\0\0\0\0", 8)), "", "NUL byte"});
  // nlohmann's lexer stops at NUL: without an explicit check this would parse as "{}" and hide the rest.
  c.push_back({"NulThenJson", make_file(std::string("{}\0{\"w\":1}", 10)), "", "NUL byte"});
  c.push_back({"TruncatedJson", make_file("{\"w\":{\"dtype\":\"F32\""), "w", "not valid JSON"});
  c.push_back({"Depth100kObjects", make_file(nested(100000, "{\"a\":", "1", "}")), "", "nests deeper"});
  c.push_back({"Depth100kArrays", make_file("{\"a\":" + nested(100000, "[", "", "]") + "}"), "a", "nests deeper"});
  c.push_back({"HugeKey", make_file("{\"" + std::string(70000, 'k') + "\":1}"), "", "has a key of"});
  std::string long_array = "{\"w\":[";
  for (int i = 0; i < 70000; ++i) long_array += "0,";
  long_array += "0]}";
  c.push_back({"LongArray", make_file(long_array), "w", "array longer than"});
  // -- duplicate keys --
  c.push_back({"DuplicateTensorName", make_file("{" + w8 + "," + w8 + "}", 8), "w", "twice"});
  c.push_back({"DuplicateKeyInEntry",
               make_file("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "w",
               "twice"});
  c.push_back(
      {"DuplicateMetadataKey", make_file("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}"), "__metadata__", "twice"});
  c.push_back(
      {"DuplicateMetadataObject", make_file("{\"__metadata__\":{},\"__metadata__\":{}}"), "__metadata__", "twice"});
  // -- dtype --
  c.push_back({"UnknownDtype", make_file("{" + entry("w", "F128", "[2]", 0, 8) + "}", 8), "w", "unknown dtype"});
  c.push_back({"LowerCaseDtype", make_file("{" + entry("w", "f32", "[2]", 0, 8) + "}", 8), "w", "unknown dtype"});
  c.push_back({"DtypeNotString", make_file("{\"w\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "w",
               "dtype must be a string"});
  // -- shape --
  c.push_back({"NegativeDim", make_file("{" + entry("w", "F32", "[-2]", 0, 8) + "}", 8), "w", "negative"});
  c.push_back({"FloatDim", make_file("{" + entry("w", "F32", "[2.0]", 0, 8) + "}", 8), "w", "non-integer"});
  c.push_back({"BoolDim", make_file("{" + entry("w", "F32", "[true]", 0, 8) + "}", 8), "w", "non-number"});
  c.push_back({"StringDim", make_file("{" + entry("w", "F32", "[\"2\"]", 0, 8) + "}", 8), "w", "non-number"});
  c.push_back({"DimOverInt64", make_file("{" + entry("w", "F32", "[9223372036854775808]", 0, 8) + "}", 8), "w",
               "does not fit in int64"});
  c.push_back({"DimOverUint64", make_file("{" + entry("w", "F32", "[100000000000000000000]", 0, 8) + "}", 8), "w",
               "non-integer"});
  c.push_back({"NumelOverflow",
               make_file("{" + entry("w", "F32", "[4611686018427387904,4611686018427387904]", 0, 8) + "}", 8), "w",
               "overflows 64 bits"});
  c.push_back(
      {"BytesOverflow", make_file("{" + entry("w", "F32", "[4611686018427387904]", 0, 8) + "}", 8), "w", "byte size"});
  c.push_back({"Rank9", make_file("{" + entry("w", "F32", "[1,1,1,1,1,1,1,1,2]", 0, 8) + "}", 8), "w", "rank 9"});
  c.push_back({"ShapeNotArray", make_file("{" + entry("w", "F32", "2", 0, 8) + "}", 8), "w", "shape must be an array"});
  // -- entry structure --
  c.push_back(
      {"MissingDataOffsets", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8), "w", "missing 'data_offsets'"});
  c.push_back({"MissingDtype", make_file("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8), "w", "missing 'dtype'"});
  c.push_back(
      {"MissingShape", make_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8), "w", "missing 'shape'"});
  c.push_back({"ExtraKey", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"extra\":1}}", 8),
               "w", "unexpected key 'extra'"});
  c.push_back({"EntryNotObject", make_file("{\"w\":5}"), "w", "must be an object"});
  // -- offsets --
  c.push_back({"OffsetsThree", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4,8]}}", 8), "w",
               "data_offsets must be an array"});
  c.push_back({"OffsetsOne", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8]}}", 8), "w",
               "data_offsets must be an array"});
  c.push_back({"OffsetsNegative", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", 8),
               "w", "negative"});
  c.push_back({"OffsetsFloat", make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}", 8), "w",
               "non-integer"});
  c.push_back({"OffsetsOverUint64",
               make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,18446744073709551616]}}", 8), "w",
               "non-integer"});
  c.push_back({"EndBeforeBegin", make_file("{" + entry("w", "F32", "[0]", 8, 0) + "}", 8), "w", "before begin"});
  c.push_back({"Hole", make_file("{" + w8 + "," + entry("b", "F32", "[2]", 12, 20) + "}", 20), "b", "hole"});
  c.push_back({"Overlap", make_file("{" + w8 + "," + entry("b", "F32", "[2]", 4, 12) + "}", 12), "b", "overlaps"});
  c.push_back({"SameRangeTwice", make_file("{" + w8 + "," + entry("b", "F32", "[2]", 0, 8) + "}", 8), "", "overlaps"});
  c.push_back({"FirstNotAtZero", make_file("{" + entry("w", "F32", "[2]", 4, 12) + "}", 12), "w", "expected 0"});
  c.push_back({"ZeroSizePastEnd", make_file("{" + w8 + "," + entry("z", "F32", "[0]", 16, 16) + "}", 8), "z", "hole"});
  c.push_back({"SizeOffByOne", make_file("{" + entry("w", "F32", "[2]", 0, 9) + "}", 9), "w", "needs 8"});
  c.push_back({"SizeOffByOneShort", make_file("{" + entry("w", "F32", "[2]", 0, 7) + "}", 7), "w", "needs 8"});
  c.push_back({"TruncatedData", make_file("{" + w8 + "}", 7), "w", "past the end of the data section"});
  c.push_back({"TrailingBytes", make_file("{" + w8 + "}", 9), "w", "1 trailing bytes"});
  c.push_back({"NoTensorsButData", make_file("{}", 4), "", "4 trailing bytes"});
  // -- metadata --
  c.push_back({"MetadataNonString", make_file("{\"__metadata__\":{\"k\":1}}"), "__metadata__.k", "must be strings"});
  c.push_back({"MetadataNested", make_file("{\"__metadata__\":{\"k\":{}}}"), "__metadata__.k", "must be strings"});
  c.push_back({"MetadataNotObject", make_file("{\"__metadata__\":\"x\"}"), "__metadata__", "must be an object"});
  c.push_back({"MetadataNull", make_file("{\"__metadata__\":null}"), "__metadata__", "must be an object"});
  return c;
}

class BadFile : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadFile, IsRejectedWithTypedError) {
  const BadCase& bc = GetParam();
  try {
    SafetensorsFile::parse(bc.bytes, kDisplay);
    FAIL() << "accepted a malformed file";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kSafetensors) << msg;
    EXPECT_EQ(e.file(), kDisplay);
    EXPECT_NE(msg.find(kDisplay), std::string::npos) << msg;
    if (!bc.key.empty()) {
      EXPECT_NE(msg.find("[" + bc.key), std::string::npos) << "tensor not named: " << msg;
    }
    EXPECT_NE(msg.find(bc.fragment), std::string::npos) << "expected '" << bc.fragment << "' in: " << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(Catalogue, BadFile, ::testing::ValuesIn(bad_cases()),
                         [](const ::testing::TestParamInfo<BadCase>& p) { return p.param.name; });

// ---- valid corner cases ---------------------------------------------------------------------------------

float f32_at(const Bytes& file, std::uint64_t offset) {
  float f;
  std::memcpy(&f, file.data() + offset, 4);
  return f;
}

TEST(SafetensorsValid, OutOfOrderButContiguous) {
  const std::string header = "{" + entry("b", "F32", "[2]", 8, 16) + "," + entry("a", "F32", "[2]", 0, 8) + "}";
  const Bytes file = make_file(header, 16);
  const SafetensorsFile st = SafetensorsFile::parse(file, "ok.safetensors");
  ASSERT_EQ(st.tensors().size(), 2u);
  EXPECT_EQ(st.tensors()[0].name, "b");  // header order is kept
  EXPECT_EQ(st.tensors()[1].name, "a");
  const std::uint64_t data = 8 + header.size();
  const std::vector<float> b = st.read_f32("b");
  EXPECT_EQ(b, (std::vector<float>{f32_at(file, data + 8), f32_at(file, data + 12)}));
  EXPECT_EQ(st.bytes(*st.find("a")).data(), file.data() + data);
}

TEST(SafetensorsValid, ZeroTensors) {
  for (const std::string header : {"{}", "{}      ", "{\"__metadata__\":{}}", "{\"__metadata__\":{\"a\":\"b\"}}"}) {
    const Bytes file = make_file(header);
    const SafetensorsFile st = SafetensorsFile::parse(file, "ok.safetensors");
    EXPECT_TRUE(st.tensors().empty());
    EXPECT_EQ(st.find("a"), nullptr);
  }
  const SafetensorsFile st = SafetensorsFile::parse(make_file("{\"__metadata__\":{\"a\":\"b\",\"\":\"\"}}"), "m");
  EXPECT_EQ(st.metadata(), (std::map<std::string, std::string>{{"a", "b"}, {"", ""}}));
}

TEST(SafetensorsValid, RankZeroAndZeroSize) {
  const std::string header = "{" + entry("empty_first", "F16", "[0,3]", 0, 0) + "," +
                             entry("scalar", "F32", "[]", 0, 4) + "," + entry("empty_mid", "BF16", "[5,0]", 4, 4) +
                             "," + entry("v", "BF16", "[2]", 4, 8) + "," + entry("empty_end", "F32", "[0]", 8, 8) + "}";
  const Bytes file = make_file(header, 8);
  const SafetensorsFile st = SafetensorsFile::parse(file, "ok.safetensors");
  ASSERT_EQ(st.tensors().size(), 5u);
  const TensorInfo& scalar = *st.find("scalar");
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.numel, 1u);
  EXPECT_EQ(st.read_f32("scalar"), std::vector<float>{f32_at(file, 8 + header.size())});
  EXPECT_EQ(st.find("empty_mid")->numel, 0u);
  EXPECT_EQ(st.find("empty_mid")->shape, (std::vector<std::int64_t>{5, 0}));
  EXPECT_TRUE(st.read_f32("empty_end").empty());
  EXPECT_EQ(st.bytes(*st.find("empty_first")).size(), 0u);
}

// The data section of a hand-made file starts at 8 + N for any N; nothing may assume 4-byte alignment.
TEST(SafetensorsValid, UnalignedData) {
  for (const std::string pad : {"", " ", "  ", "   "}) {
    const std::string header = "{" + entry("w", "F32", "[3]", 0, 12) + "," + entry("h", "F16", "[1]", 12, 14) + "," +
                               entry("b", "BF16", "[1]", 14, 16) + "}" + pad;
    Bytes file = make_file(header, 16);
    const std::uint64_t data = 8 + header.size();
    const float values[3] = {1.5f, -2.25f, 1e-3f};
    std::memcpy(file.data() + data, values, 12);
    const std::uint16_t h = 0x3C00, b = 0xC040;  // 1.0 in F16, -3.0 in BF16
    std::memcpy(file.data() + data + 12, &h, 2);
    std::memcpy(file.data() + data + 14, &b, 2);
    const SafetensorsFile st = SafetensorsFile::parse(file, "ok.safetensors");
    EXPECT_EQ(st.read_f32("w"), (std::vector<float>{1.5f, -2.25f, 1e-3f}));
    EXPECT_EQ(st.read_f32("h"), std::vector<float>{1.0f});
    EXPECT_EQ(st.read_f32("b"), std::vector<float>{-3.0f});
  }
}

// Bytes produced by the reference implementation (python safetensors 0.8 serialize): BF16 + zero-size F32,
// sorted by the reference writer's own order, metadata first, padded with one space.
TEST(SafetensorsValid, ReferenceWriterBytes) {
  const std::string text =
      "{\"__metadata__\":{\"k\":\"v\"},\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[0,0]},\"x\":{"
      "\"dtype\":"
      "\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}} ";
  Bytes file = make_file(text, 4);
  const unsigned char data[4] = {0x80, 0x3F, 0x00, 0x40};
  std::memcpy(file.data() + 8 + text.size(), data, 4);
  ASSERT_EQ(text.size(), 0x88u);
  const SafetensorsFile st = SafetensorsFile::parse(file, "ref.safetensors");
  EXPECT_EQ(st.read_f32("x"), (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(st.metadata().at("k"), "v");
}

TEST(SafetensorsValid, UnicodeNamesAndEscapes) {
  const std::string header = "{" + entry("h\xc3\xa9llo.\xe2\x9c\x93", "F32", "[1]", 0, 4) +
                             ",\"a\\u00e9\\n\":{\"dtype\":"
                             "\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}";
  const SafetensorsFile st = SafetensorsFile::parse(make_file(header, 6), "ok.safetensors");
  EXPECT_NE(st.find("h\xc3\xa9llo.\xe2\x9c\x93"), nullptr);
  EXPECT_NE(st.find("a\xc3\xa9\n"), nullptr);
}

TEST(SafetensorsValid, NonFloatDtypeIsCheckpointErrorOnRead) {
  const SafetensorsFile st =
      SafetensorsFile::parse(make_file("{" + entry("step", "I64", "[1]", 0, 8) + "}", 8), "s.st");
  EXPECT_EQ(st.find("step")->dtype, DType::kI64);
  try {
    st.read_f32("step");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCheckpoint);
    EXPECT_EQ(e.key(), "step");
    EXPECT_NE(std::string(e.what()).find("s.st"), std::string::npos);
  }
  try {
    st.read_f32("missing");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCheckpoint);
    EXPECT_EQ(e.key(), "missing");
  }
}

TEST(SafetensorsValid, ForeignTensorInfoIsNotReadOutOfBounds) {
  const SafetensorsFile st = SafetensorsFile::parse(make_file("{" + entry("w", "F32", "[2]", 0, 8) + "}", 8), "a.st");
  TensorInfo foreign = *st.find("w");
  foreign.begin = 4;
  foreign.end = 12;
  EXPECT_THROW(st.bytes(foreign), Error);
}

// Random corruptions of a valid file: each must load or throw hylo::Error; never crash or read out of
// bounds (the sanitizer build makes the second half of that claim checkable).
TEST(SafetensorsValid, MutatedFilesNeverCrash) {
  const std::string header = "{\"__metadata__\":{\"format\":\"pt\"}," + entry("a", "F32", "[2,2]", 0, 16) + "," +
                             entry("b", "BF16", "[3]", 16, 22) + "," + entry("c", "F16", "[]", 22, 24) + "}";
  const Bytes base = make_file(header, 24);
  std::mt19937_64 rng(12345);
  int accepted = 0;
  for (int iter = 0; iter < 10000; ++iter) {
    Bytes b = base;
    const int kind = static_cast<int>(rng() % 4);
    if (kind == 0) {
      b[rng() % b.size()] = static_cast<std::byte>(rng());
    } else if (kind == 1) {
      b.resize(rng() % b.size());
    } else if (kind == 2) {
      b.insert(b.begin() + static_cast<std::ptrdiff_t>(rng() % b.size()), static_cast<std::byte>(rng()));
    } else {
      const char printable[] = "{}[]\":,0123456789-.eE FBUI";
      b[8 + rng() % header.size()] = static_cast<std::byte>(printable[rng() % (sizeof printable - 1)]);
    }
    // Heap copy sized exactly, so any overread is an ASan report.
    const std::unique_ptr<std::byte[]> exact(new std::byte[b.size() + 1]);
    std::memcpy(exact.get(), b.data(), b.size());
    try {
      const SafetensorsFile st = SafetensorsFile::parse(std::span<const std::byte>(exact.get(), b.size()), "m");
      for (const TensorInfo& t : st.tensors()) {
        if (is_float_weight_dtype(t.dtype)) {
          std::vector<float> out(t.numel);
          st.read_f32(t, out.data());
        }
      }
      ++accepted;
    } catch (const Error&) {
    }
  }
  EXPECT_GT(accepted, 0);  // some mutations (data bytes) leave a valid file
}

// 100k tensors: the parser and the tiling check must stay near-linear (nlohmann's callback parser is
// quadratic in the number of keys of one object).
TEST(SafetensorsValid, ManyTensorsParseQuickly) {
  std::string header = "{";
#ifdef __SANITIZE_ADDRESS__
  const std::size_t n = 20000;
#else
  const std::size_t n = 100000;
#endif
  for (std::size_t i = 0; i < n; ++i) {
    if (i) header += ',';
    header += entry("t" + std::to_string(i), "U8", "[1]", i, i + 1);
  }
  header += "}";
  const Bytes file = make_file(header, n);
  // A header of many tensors parses (linear-time SAX parser; nlohmann's callback mode took minutes here).
  // Timings are not asserted: the time is printed for the record.
  const auto t0 = std::chrono::steady_clock::now();
  const SafetensorsFile st = SafetensorsFile::parse(file, "many.safetensors");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("parsed %zu tensors in %.3f s\n", n, s);
  EXPECT_EQ(st.tensors().size(), n);
  EXPECT_EQ(st.find("t" + std::to_string(n - 1))->begin, n - 1);
}

// ---- files on disk --------------------------------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "hylo_st_XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

void write_bytes(const fs::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}
Bytes read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  Bytes b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

template <typename F>
Error expect_error(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected hylo::Error";
  return Error(ErrorKind::kInternal, "", "", "no error");
}

bool contains(const Error& e, const std::string& s) { return std::string(e.what()).find(s) != std::string::npos; }

TEST(SafetensorsOpen, FilesOnDisk) {
  TempDir dir;
  write_bytes(dir / "empty.safetensors", {});
  Error e = expect_error([&] { SafetensorsFile::open(dir / "empty.safetensors"); });
  EXPECT_EQ(e.kind(), ErrorKind::kSafetensors);
  EXPECT_TRUE(contains(e, (dir / "empty.safetensors").string()));

  e = expect_error([&] { SafetensorsFile::open(dir / "missing.safetensors"); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_TRUE(contains(e, "missing.safetensors"));

  e = expect_error([&] { SafetensorsFile::open(dir.path()); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_TRUE(contains(e, "not a regular file"));

  write_bytes(dir / "trunc.safetensors", make_file("{" + entry("w", "F32", "[2]", 0, 8) + "}", 5));
  e = expect_error([&] { SafetensorsFile::open(dir / "trunc.safetensors"); });
  EXPECT_EQ(e.kind(), ErrorKind::kSafetensors);
  EXPECT_EQ(e.key(), "w");

  const Bytes good = make_file("{" + entry("w", "F32", "[2]", 0, 8) + "}", 8);
  write_bytes(dir / "good.safetensors", good);
  SafetensorsFile st = SafetensorsFile::open(dir / "good.safetensors");
  const SafetensorsFile moved = std::move(st);  // the mapping moves with it
  EXPECT_EQ(moved.read_f32("w").size(), 2u);
  EXPECT_EQ(moved.display_name(), (dir / "good.safetensors").string());
}

// ---- checkpoint directories -----------------------------------------------------------------------------

// Writes an F32 file holding the named 1-D tensors of 2 elements each, values derived from the name.
void write_shard(const fs::path& p, const std::vector<std::string>& names) {
  std::vector<TensorSpec> specs;
  for (const auto& n : names) specs.push_back({n, DType::kF32, {2}});
  write_safetensors(p, specs, {}, [](const TensorSpec& s, std::span<std::byte> out) {
    const float v[2] = {static_cast<float>(s.name.size()), static_cast<float>(s.name[0])};
    std::memcpy(out.data(), v, 8);
  });
}

void write_index(const fs::path& dir, const std::string& weight_map_body) {
  write_text(dir / "model.safetensors.index.json",
             "{\"metadata\": {\"total_size\": 123},\n \"weight_map\": {" + weight_map_body + "}}\n");
}

TEST(Checkpoint, ShardedLoads) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x", "y"});
  write_shard(dir / "b.safetensors", {"z"});
  write_index(dir.path(), R"("x": "a.safetensors", "y": "./a.safetensors", "z": "b.safetensors")");
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path());
  EXPECT_EQ(ck.files().size(), 2u);  // "./a" and "a" are one file
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"x", "y", "z"}));
  const auto* z = ck.find("z");
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z->file->read_f32(z->info->name), (std::vector<float>{1.0f, 'z'}));
  EXPECT_EQ(ck.find("q"), nullptr);
  // Moving keeps entries valid.
  SafetensorsCheckpoint ck2 = SafetensorsCheckpoint::open(dir.path());
  const SafetensorsCheckpoint moved = std::move(ck2);
  EXPECT_EQ(moved.find("x")->file->read_f32(moved.find("x")->info->name), (std::vector<float>{1.0f, 'x'}));
}

TEST(Checkpoint, SingleFileAndIndexPreferred) {
  TempDir dir;
  write_shard(dir / "model.safetensors", {"only"});
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).names(), std::vector<std::string>{"only"});
  write_shard(dir / "s.safetensors", {"sharded"});
  write_index(dir.path(), R"("sharded": "s.safetensors")");
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).names(), std::vector<std::string>{"sharded"});
}

TEST(Checkpoint, SymlinkInsideDirectoryIsAllowed) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x", "y"});
  fs::create_symlink("a.safetensors", dir / "alias.safetensors");
  write_index(dir.path(), R"("x": "alias.safetensors", "y": "a.safetensors")");
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).files().size(), 1u);
}

struct CkptCase {
  std::string name;
  ErrorKind kind;
  std::string key;                    // tensor the message must name ("" if none)
  std::vector<std::string> mentions;  // further substrings the message must contain
};

void expect_ckpt_error(const fs::path& dir, const CkptCase& c) {
  SCOPED_TRACE(c.name);
  const Error e = expect_error([&] { SafetensorsCheckpoint::open(dir); });
  EXPECT_EQ(e.kind(), c.kind) << e.what();
  if (c.kind == ErrorKind::kSafetensors) {
    EXPECT_TRUE(contains(e, "model.safetensors.index.json")) << e.what();
  }
  if (!c.key.empty()) {
    EXPECT_TRUE(contains(e, "[" + c.key)) << e.what();
  }
  for (const auto& m : c.mentions) EXPECT_TRUE(contains(e, m)) << "missing '" << m << "' in " << e.what();
}

TEST(Checkpoint, MissingShard) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x"});
  write_index(dir.path(), R"("x": "a.safetensors", "y": "gone.safetensors")");
  expect_ckpt_error(dir.path(),
                    {"missing shard", ErrorKind::kSafetensors, "y", {"gone.safetensors", "does not exist"}});
}

TEST(Checkpoint, DotDotPath) {
  TempDir outer;
  fs::create_directory(outer / "model");
  write_shard(outer / "escape.safetensors", {"x"});
  write_index(outer / "model", R"("x": "../escape.safetensors")");
  expect_ckpt_error(outer / "model", {"dotdot", ErrorKind::kSafetensors, "x", {"'..'"}});
  // Even a '..' that would come back inside is refused: the rule is simple and checkable.
  write_shard(outer / "model" / "a.safetensors", {"x"});
  fs::create_directory(outer / "model" / "sub");
  write_index(outer / "model", R"("x": "sub/../a.safetensors")");
  expect_ckpt_error(outer / "model", {"inner dotdot", ErrorKind::kSafetensors, "x", {"'..'"}});
}

TEST(Checkpoint, AbsolutePath) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x"});
  write_index(dir.path(), "\"x\": \"" + (dir / "a.safetensors").string() + "\"");
  expect_ckpt_error(dir.path(), {"absolute", ErrorKind::kSafetensors, "x", {"absolute path"}});
}

TEST(Checkpoint, SymlinkEscapingDirectory) {
  TempDir outer;
  fs::create_directory(outer / "model");
  fs::create_directory(outer / "elsewhere");
  write_shard(outer / "elsewhere" / "real.safetensors", {"x"});
  fs::create_symlink("../elsewhere/real.safetensors", outer / "model" / "link.safetensors");
  write_index(outer / "model", R"("x": "link.safetensors")");
  expect_ckpt_error(outer / "model", {"file symlink", ErrorKind::kSafetensors, "x", {"outside the model directory"}});
  fs::create_directory_symlink("../elsewhere", outer / "model" / "subdir");
  write_index(outer / "model", R"("x": "subdir/real.safetensors")");
  expect_ckpt_error(outer / "model", {"dir symlink", ErrorKind::kSafetensors, "x", {"outside the model directory"}});
}

TEST(Checkpoint, TensorInTwoShards) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x", "y"});
  write_shard(dir / "b.safetensors", {"y", "z"});
  write_index(dir.path(), R"("x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors")");
  expect_ckpt_error(dir.path(),
                    {"two shards", ErrorKind::kSafetensors, "y", {"two shards", "a.safetensors", "b.safetensors"}});
}

TEST(Checkpoint, TensorInDifferentShardThanIndexSays) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x"});
  write_shard(dir / "b.safetensors", {"y"});
  write_index(dir.path(), R"("x": "b.safetensors", "y": "b.safetensors", "w": "a.safetensors")");
  expect_ckpt_error(dir.path(), {"misplaced", ErrorKind::kSafetensors, "", {"a.safetensors", "b.safetensors"}});
  write_index(dir.path(), R"("x": "b.safetensors", "y": "b.safetensors")");
  // a.safetensors is not listed at all now, so x is simply absent from b.
  expect_ckpt_error(dir.path(), {"absent", ErrorKind::kSafetensors, "x", {"b.safetensors", "does not contain"}});
  write_index(dir.path(), R"("x": "b.safetensors", "y": "a.safetensors")");
  expect_ckpt_error(dir.path(), {"swapped", ErrorKind::kSafetensors, "x", {"a.safetensors", "b.safetensors"}});
}

TEST(Checkpoint, TensorInShardButNotInIndex) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x", "extra"});
  write_index(dir.path(), R"("x": "a.safetensors")");
  expect_ckpt_error(dir.path(), {"unlisted", ErrorKind::kSafetensors, "extra", {"a.safetensors", "does not list"}});
}

TEST(Checkpoint, MissingBothFiles) {
  TempDir dir;
  expect_ckpt_error(dir.path(), {"empty dir",
                                 ErrorKind::kCheckpoint,
                                 "",
                                 {dir.path().string(), "model.safetensors.index.json", "model.safetensors"}});
  expect_ckpt_error(dir / "nope", {"no dir", ErrorKind::kCheckpoint, "", {"nope", "does not exist"}});
}

TEST(Checkpoint, MalformedIndex) {
  TempDir dir;
  write_shard(dir / "a.safetensors", {"x"});
  const auto idx = dir / "model.safetensors.index.json";
  write_text(idx, R"({"weight_map": {"x": "a.safetensors", "x": "a.safetensors"}})");
  expect_ckpt_error(dir.path(), {"dup in weight_map", ErrorKind::kSafetensors, "weight_map.x", {"twice"}});
  write_text(idx, R"({"weight_map": {"x": "a.safetensors"}, "weight_map": {}})");
  expect_ckpt_error(dir.path(), {"dup top-level", ErrorKind::kSafetensors, "weight_map", {"twice"}});
  write_text(idx, R"([{"weight_map": {}}])");
  expect_ckpt_error(dir.path(), {"array", ErrorKind::kSafetensors, "", {"must be a JSON object"}});
  write_text(idx, R"({"metadata": {}})");
  expect_ckpt_error(dir.path(), {"no weight_map", ErrorKind::kSafetensors, "weight_map", {"needs a 'weight_map'"}});
  write_text(idx, R"({"weight_map": {"x": 3}})");
  expect_ckpt_error(dir.path(), {"non-string", ErrorKind::kSafetensors, "x", {"file name string"}});
  write_text(idx, R"({"weight_map": {"x": "a.safetensors"}, "format": "pt"})");
  expect_ckpt_error(dir.path(), {"unknown key", ErrorKind::kSafetensors, "format", {"unexpected top-level key"}});
  write_text(idx, R"({"weight_map": {"x": "a.safetensors")");
  expect_ckpt_error(dir.path(), {"truncated", ErrorKind::kSafetensors, "", {"not valid JSON"}});
  write_text(idx, R"({"weight_map": {"x": ""}})");
  expect_ckpt_error(dir.path(), {"empty name", ErrorKind::kSafetensors, "x", {"empty file name"}});
  fs::create_directory(dir / "sub");
  write_text(idx, R"({"weight_map": {"x": "sub"}})");
  expect_ckpt_error(dir.path(), {"directory", ErrorKind::kSafetensors, "x", {"not a regular file"}});
  write_text(idx, "{\"weight_map\": {\"x\": \"a.safetensors\"}}\n\n");  // trailing newlines are fine in an index
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).names(), std::vector<std::string>{"x"});
}

TEST(Checkpoint, CorruptShardNamesTheShard) {
  TempDir dir;
  write_bytes(dir / "a.safetensors", make_file("{" + entry("x", "F32", "[2]", 0, 8) + "}", 6));
  write_index(dir.path(), R"("x": "a.safetensors")");
  const Error e = expect_error([&] { SafetensorsCheckpoint::open(dir.path()); });
  EXPECT_EQ(e.kind(), ErrorKind::kSafetensors);
  EXPECT_TRUE(contains(e, "a.safetensors"));
  EXPECT_EQ(e.key(), "x");
}

// ---- writer ---------------------------------------------------------------------------------------------

// Deterministic bytes for a tensor: depends on name and position, so misplaced data is detected.
std::byte pattern(const std::string& name, std::size_t i) {
  std::uint64_t h = 1469598103934665603ull;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  h ^= i * 0x9E3779B97F4A7C15ull;
  h ^= h >> 29;
  return static_cast<std::byte>(h & 0xFF);
}

const TensorFill kPatternFill = [](const TensorSpec& s, std::span<std::byte> out) {
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = pattern(s.name, i);
};

void expect_pattern(const SafetensorsFile& f, const TensorInfo& t) {
  const auto bytes = f.bytes(t);
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    ASSERT_EQ(bytes[i], pattern(t.name, i)) << t.name << " byte " << i;
  }
}

std::vector<TensorSpec> assorted_specs() {
  return {{"z.first", DType::kF32, {3, 5}},
          {"a.bf16", DType::kBF16, {7}},
          {"scalar", DType::kF16, {}},
          {"empty", DType::kF32, {0, 4}},
          {"rank8", DType::kU8, {1, 2, 1, 2, 1, 2, 1, 3}},
          {"step", DType::kI64, {1}},
          {"odd", DType::kF16, {3}}};
}

TEST(Writer, RoundTripIsBitIdentical) {
  TempDir dir;
  const auto path = dir / "t.safetensors";
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "h\xc3\xa9llo \"quoted\""}};
  const std::vector<TensorSpec> specs = assorted_specs();
  std::size_t calls = 0;
  write_safetensors(path, specs, meta, [&](const TensorSpec& s, std::span<std::byte> out) {
    ++calls;
    kPatternFill(s, out);
  });
  EXPECT_EQ(calls, specs.size());
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  const SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), specs.size());
  for (std::size_t i = 0; i < f.tensors().size(); ++i) {
    const TensorInfo& t = f.tensors()[i];
    const TensorSpec& s = specs[i];
    EXPECT_EQ(t.name, s.name);  // spec order kept
    EXPECT_EQ(t.dtype, s.dtype);
    EXPECT_EQ(t.shape, s.shape);
    expect_pattern(f, t);
  }
  EXPECT_EQ(f.metadata(), meta);

  // Layout: header length a multiple of 8, padded with spaces, metadata first, contiguous offsets.
  const Bytes raw = read_bytes(path);
  std::uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header(reinterpret_cast<const char*>(raw.data() + 8), n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{", 0), 0u);
  const std::size_t close = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);
  EXPECT_LT(n - close - 1, 8u);
}

TEST(Writer, ExactHeaderBytes) {
  TempDir dir;
  const auto path = dir / "t.safetensors";
  write_safetensors(path, {{"a", DType::kF32, {2}}, {"b", DType::kBF16, {}}}, {}, kPatternFill);
  const Bytes raw = read_bytes(path);
  const std::string expected =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"BF16\",\"shape\":[],"
      "\"data_offsets\":[8,10]}}";
  std::uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  ASSERT_EQ(n, (expected.size() + 7) / 8 * 8);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(raw.data() + 8), n),
            expected + std::string(n - expected.size(), ' '));
  EXPECT_EQ(raw.size(), 8 + n + 10);
}

TEST(Writer, EmptyFile) {
  TempDir dir;
  write_safetensors(dir / "e.safetensors", {}, {}, kPatternFill);
  const Bytes raw = read_bytes(dir / "e.safetensors");
  EXPECT_EQ(raw.size(), 16u);  // "{}" padded to 8
  EXPECT_TRUE(SafetensorsFile::open(dir / "e.safetensors").tensors().empty());
}

struct FillFailure : std::runtime_error {
  FillFailure() : std::runtime_error("fill failed on purpose") {}
};

TEST(Writer, FailureMidFillLeavesNoFile) {
  TempDir dir;
  const auto path = dir / "t.safetensors";
  int calls = 0;
  const TensorFill failing = [&](const TensorSpec& s, std::span<std::byte> out) {
    if (++calls == 3) throw FillFailure();
    kPatternFill(s, out);
  };
  EXPECT_THROW(write_safetensors(path, assorted_specs(), {}, failing), FillFailure);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  EXPECT_TRUE(fs::is_empty(dir.path()));

  // An existing file under the final name survives a failed rewrite untouched.
  write_safetensors(path, {{"old", DType::kF32, {1}}}, {}, kPatternFill);
  const Bytes before = read_bytes(path);
  calls = 0;
  EXPECT_THROW(write_safetensors(path, assorted_specs(), {}, failing), FillFailure);
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
}

TEST(Writer, FillSeesExactlySizedZeroedBuffer) {
  TempDir dir;
  std::vector<std::size_t> sizes;
  write_safetensors(dir / "t.safetensors", {{"big", DType::kF32, {100}}, {"small", DType::kF16, {3}}}, {},
                    [&](const TensorSpec&, std::span<std::byte> out) {
                      sizes.push_back(out.size());
                      for (std::byte b : out) ASSERT_EQ(b, std::byte{0});
                      std::fill(out.begin(), out.end(), std::byte{0xEE});  // dirty the reused buffer
                    });
  EXPECT_EQ(sizes, (std::vector<std::size_t>{400, 6}));
}

TEST(Writer, InvalidRequests) {
  TempDir dir;
  const auto path = dir / "t.safetensors";
  const std::vector<std::pair<std::vector<TensorSpec>, std::string>> bad = {
      {{{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}, "a"},
      {{{"neg", DType::kF32, {-1}}}, "neg"},
      {{{"r9", DType::kF32, {1, 1, 1, 1, 1, 1, 1, 1, 1}}}, "r9"},
      {{{"__metadata__", DType::kF32, {1}}}, "__metadata__"},
      {{{"", DType::kF32, {1}}}, ""},
      {{{"huge", DType::kF64, {std::int64_t{1} << 40, std::int64_t{1} << 40}}}, "huge"},
      {{{"bad\xff", DType::kF32, {1}}}, ""},
  };
  for (const auto& item : bad) {
    const std::vector<TensorSpec>& specs = item.first;
    const std::string& key = item.second;
    const Error e = expect_error([&] { write_safetensors(path, specs, {}, kPatternFill); });
    EXPECT_EQ(e.kind(), ErrorKind::kSafetensors) << e.what();
    EXPECT_TRUE(contains(e, path.string())) << e.what();
    if (!key.empty()) {
      EXPECT_EQ(e.key(), key);
    }
  }
  const Error e = expect_error([&] { write_safetensors(path, {}, {{"k", "\xc3"}}, kPatternFill); });
  EXPECT_EQ(e.kind(), ErrorKind::kSafetensors);
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// Lowers this process's file-size soft limit for a scope; SIGXFSZ is ignored so write() returns EFBIG.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    ::getrlimit(RLIMIT_FSIZE, &saved_);
    old_handler_ = std::signal(SIGXFSZ, SIG_IGN);
    rlimit lowered = saved_;
    lowered.rlim_cur = bytes;
    ::setrlimit(RLIMIT_FSIZE, &lowered);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    std::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  void (*old_handler_)(int) = nullptr;
};

TEST(Writer, IoErrorsNameThePath) {
  TempDir dir;
  const auto missing = dir / "no_such_dir" / "t.safetensors";
  Error e = expect_error([&] { write_safetensors(missing, assorted_specs(), {}, kPatternFill); });
  EXPECT_EQ(e.kind(), ErrorKind::kIo);
  EXPECT_TRUE(contains(e, missing.string()));

  // Out of space: a file-size limit makes write() fail part-way (EFBIG) the way a full disk does (ENOSPC).
  {
    const auto path = dir / "full.safetensors";
    FileSizeLimit limit(4096);
    e = expect_error([&] { write_safetensors(path, {{"big", DType::kF32, {100000}}}, {}, kPatternFill); });
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
    EXPECT_TRUE(contains(e, path.string()));
    EXPECT_TRUE(contains(e, "write failed")) << e.what();
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
  }

  // A symlink left where the temporary file goes is replaced, not written through.
  {
    const auto path = dir / "t2.safetensors";
    write_text(dir / "victim.txt", "untouched");
    fs::create_symlink(dir / "victim.txt", path.string() + ".tmp");
    write_safetensors(path, assorted_specs(), {}, kPatternFill);
    const Bytes victim = read_bytes(dir / "victim.txt");
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(victim.data()), victim.size()), "untouched");
    EXPECT_EQ(SafetensorsFile::open(path).tensors().size(), assorted_specs().size());
  }

  // A read-only directory (root bypasses permission checks, so only meaningful for other users).
  if (::geteuid() != 0) {
    fs::create_directory(dir / "ro");
    fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    e = expect_error([&] { write_safetensors(dir / "ro" / "t.safetensors", {}, {}, kPatternFill); });
    EXPECT_EQ(e.kind(), ErrorKind::kIo);
  }
}

TEST(Writer, CheckpointSharding) {
  TempDir dir;
  // Five 100-byte tensors with a 250-byte limit: [a b] [c d] [e].
  std::vector<TensorSpec> specs;
  for (const char* n : {"a", "b", "c", "d", "e"}) specs.push_back({n, DType::kF32, {25}});
  write_safetensors_checkpoint(dir.path(), specs, {{"format", "pt"}}, kPatternFill, 250);
  for (const char* f : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                        "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  }
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  EXPECT_EQ(SafetensorsFile::open(dir / "model-00002-of-00003.safetensors").tensors().size(), 2u);
  EXPECT_EQ(SafetensorsFile::open(dir / "model-00003-of-00003.safetensors").tensors()[0].name, "e");

  const Bytes idx = read_bytes(dir / "model.safetensors.index.json");
  const std::string idx_text(reinterpret_cast<const char*>(idx.data()), idx.size());
  EXPECT_NE(idx_text.find("\"total_size\": 500"), std::string::npos) << idx_text;
  EXPECT_NE(idx_text.find("\"d\": \"model-00002-of-00003.safetensors\""), std::string::npos) << idx_text;

  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c", "d", "e"}));
  for (const auto& n : ck.names()) expect_pattern(*ck.find(n)->file, *ck.find(n)->info);
  EXPECT_EQ(ck.find("a")->file->metadata().at("format"), "pt");

  // A tensor above the limit gets a shard of its own; tensors are never split.
  TempDir dir2;
  write_safetensors_checkpoint(dir2.path(),
                               {{"s1", DType::kU8, {10}}, {"big", DType::kU8, {300}}, {"s2", DType::kU8, {10}}}, {},
                               kPatternFill, 100);
  const SafetensorsCheckpoint ck2 = SafetensorsCheckpoint::open(dir2.path());
  EXPECT_EQ(ck2.files().size(), 3u);
  EXPECT_EQ(ck2.find("big")->file->tensors().size(), 1u);
}

TEST(Writer, CheckpointRewritesStayConsistent) {
  TempDir dir;
  std::vector<TensorSpec> specs;
  for (const char* n : {"a", "b", "c"}) specs.push_back({n, DType::kF32, {25}});
  // Sharded first (3 shards), then everything fits (total == limit): one file, index and shards removed.
  write_safetensors_checkpoint(dir.path(), specs, {}, kPatternFill, 100);
  EXPECT_TRUE(fs::exists(dir / "model-00003-of-00003.safetensors"));
  write_text(dir / "unrelated.txt", "keep me");
  write_safetensors_checkpoint(dir.path(), specs, {}, kPatternFill, 300);
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model-00001-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "unrelated.txt"));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).files().size(), 1u);
  // Back to 2 shards: the single file is superseded and removed.
  write_safetensors_checkpoint(dir.path(), specs, {}, kPatternFill, 200);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint::open(dir.path()).files().size(), 2u);

  // A failure in the second shard leaves no index, so the directory cannot open as a half-old checkpoint.
  int calls = 0;
  EXPECT_THROW(write_safetensors_checkpoint(
                   dir.path(), specs, {},
                   [&](const TensorSpec& s, std::span<std::byte> out) {
                     if (++calls == 2) throw FillFailure();
                     kPatternFill(s, out);
                   },
                   100),
               FillFailure);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model-00002-of-00003.safetensors"));
  EXPECT_EQ(expect_error([&] { SafetensorsCheckpoint::open(dir.path()); }).kind(), ErrorKind::kCheckpoint);
}

TEST(Writer, ManyTensorsRoundTrip) {
  TempDir dir;
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 20000; ++i) specs.push_back({"layer." + std::to_string(i) + ".w", DType::kBF16, {1}});
  const auto t0 = std::chrono::steady_clock::now();
  write_safetensors_checkpoint(dir.path(), specs, {}, kPatternFill, 16000);
  const SafetensorsCheckpoint ck = SafetensorsCheckpoint::open(dir.path());
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(ck.names().size(), specs.size());
  EXPECT_EQ(ck.files().size(), 3u);  // 40000 bytes over 16000-byte shards
  EXPECT_LT(s, 30.0);
}

}  // namespace
}  // namespace hylo
