// dtype names and the F32 <-> BF16 / F16 conversions: exhaustive round trips over all 65536 half patterns,
// rounding checked at every tie against an independent reference (exact arithmetic in double, and the
// compiler's _Float16 where available), plus the special values by name.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/error.h"
#include "io/dtype.h"

namespace hylo {
namespace {

float from_bits(std::uint32_t b) { return std::bit_cast<float>(b); }
std::uint32_t bits_of(float f) { return std::bit_cast<std::uint32_t>(f); }

bool bf16_is_nan(std::uint16_t h) { return (h & 0x7F80u) == 0x7F80u && (h & 0x007Fu) != 0; }
bool f16_is_nan(std::uint16_t h) { return (h & 0x7C00u) == 0x7C00u && (h & 0x03FFu) != 0; }

TEST(DType, NamesRoundTripAndAreCaseSensitive) {
  const DType all[] = {DType::kBool, DType::kU8,   DType::kI8,  DType::kU16,    DType::kI16,
                       DType::kF16,  DType::kBF16, DType::kI32, DType::kU32,    DType::kF32,
                       DType::kF64,  DType::kI64,  DType::kU64, DType::kF8E4M3, DType::kF8E5M2};
  for (DType d : all) {
    const auto parsed = parse_dtype(dtype_name(d));
    ASSERT_TRUE(parsed.has_value()) << dtype_name(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(dtype_name(DType::kF8E4M3), "F8_E4M3");
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kF64), 8u);
  EXPECT_EQ(dtype_size(DType::kBool), 1u);
  EXPECT_EQ(dtype_size(DType::kF8E5M2), 1u);
  for (const char* bad : {"f32", "Bf16", "FLOAT32", "float32", "F32 ", " F32", "", "F8_E4M3FN", "C64"}) {
    EXPECT_FALSE(parse_dtype(bad).has_value()) << bad;
  }
  EXPECT_TRUE(is_float_weight_dtype(DType::kF32));
  EXPECT_TRUE(is_float_weight_dtype(DType::kBF16));
  EXPECT_TRUE(is_float_weight_dtype(DType::kF16));
  EXPECT_FALSE(is_float_weight_dtype(DType::kF64));
  EXPECT_FALSE(is_float_weight_dtype(DType::kI64));
}

TEST(DType, Bf16KnownValues) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  // Largest float rounds up past the largest bf16 (0x7F7F) to infinity.
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  // Ties to even: 1 + 2^-8 is halfway between 1 (even) and 1 + 2^-7 (odd).
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808000)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // halfway between odd 0x3F81 and even 0x3F82
  EXPECT_EQ(f32_to_bf16(from_bits(0x3F808001)), 0x3F81);
  // f32 subnormals keep their top bits.
  EXPECT_EQ(f32_to_bf16(from_bits(0x00010000)), 0x0001);
  EXPECT_EQ(bf16_to_f32(0x0001), from_bits(0x00010000));
  // NaN stays NaN, including a signalling NaN whose payload lives only in the dropped bits (naive
  // truncation would turn it into infinity).
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(from_bits(0x7F800001))));
  EXPECT_TRUE(bf16_is_nan(f32_to_bf16(from_bits(0xFF800001))));
  EXPECT_EQ(f32_to_bf16(from_bits(0xFF800001)) & 0x8000, 0x8000);  // sign kept
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));
  EXPECT_TRUE(std::isnan(bf16_to_f32(0xFF81)));
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);  // largest finite
  EXPECT_EQ(f32_to_f16(65519.99f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // tie rounds to even = infinity
  EXPECT_EQ(f32_to_f16(1e10f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xFC00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24 -> even (0)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 units: tie between 1 and 2 -> 2
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -30)), 0x8000);
  EXPECT_EQ(f32_to_f16(from_bits(0x00000001)), 0x0000);  // f32 subnormal underflows
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03FF), std::ldexp(1023.0f, -24));
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bits_of(f16_to_f32(0x8000)), 0x80000000u);
  EXPECT_TRUE(f16_is_nan(f32_to_f16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(f16_is_nan(f32_to_f16(from_bits(0x7F800001))));  // payload only in dropped bits
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0xFE00)));
}

// Every bf16 pattern survives bf16 -> f32 -> bf16 unchanged (NaN may be quieted but stays NaN).
TEST(DType, Bf16ExhaustiveRoundTrip) {
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = bf16_to_f32(h);
    ASSERT_EQ(bits_of(f), b << 16) << std::hex << b;  // bf16 -> f32 is a pure shift
    const std::uint16_t back = f32_to_bf16(f);
    if (bf16_is_nan(h)) {
      ASSERT_TRUE(bf16_is_nan(back)) << std::hex << b;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << b;
    } else {
      ASSERT_EQ(back, h) << std::hex << b;
    }
  }
}

TEST(DType, F16ExhaustiveRoundTrip) {
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = f16_to_f32(h);
    const std::uint16_t back = f32_to_f16(f);
    if (f16_is_nan(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << b;
      ASSERT_TRUE(f16_is_nan(back)) << std::hex << b;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << b;
    } else {
      ASSERT_FALSE(std::isnan(f)) << std::hex << b;
      ASSERT_EQ(back, h) << std::hex << b;
    }
  }
}

// Independent value of a finite or infinite f16 pattern: sign * mantissa * 2^exponent in double.
double f16_reference_value(std::uint16_t h) {
  const int exp = (h >> 10) & 0x1F;
  const int mant = h & 0x3FF;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0x1F) return sign * std::numeric_limits<double>::infinity();
  if (exp == 0) return sign * std::ldexp(static_cast<double>(mant), -24);
  return sign * std::ldexp(static_cast<double>(mant + 1024), exp - 25);
}

TEST(DType, F16ToF32MatchesReferenceValue) {
  for (std::uint32_t b = 0; b <= 0xFFFF; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    if (f16_is_nan(h)) continue;
    ASSERT_EQ(static_cast<double>(f16_to_f32(h)), f16_reference_value(h)) << std::hex << b;
  }
}

// For each pair of adjacent f16 values (same sign), the f32 midpoint is exactly representable (12
// significant bits): the midpoint must round to the even neighbour, one f32 ulp either side to the nearer.
// The pair 0x7BFF / 0x7C00 checks the overflow threshold (65520) and 0x0000 / 0x0001 the underflow one.
TEST(DType, F16RoundingAtEveryTie) {
  for (std::uint32_t sign : {0x0000u, 0x8000u}) {
    for (std::uint32_t m = 0; m < 0x7C00; ++m) {
      const auto lo = static_cast<std::uint16_t>(sign | m);
      const auto hi = static_cast<std::uint16_t>(sign | (m + 1));
      const double lo_v = std::fabs(f16_reference_value(lo));
      const double hi_v = (m + 1 == 0x7C00) ? 65536.0 : std::fabs(f16_reference_value(hi));
      const double mid_d = (lo_v + hi_v) / 2;
      const auto mid = static_cast<float>(mid_d);
      ASSERT_EQ(static_cast<double>(mid), mid_d);  // exact
      const float s = sign ? -1.0f : 1.0f;
      const std::uint16_t even = (m & 1) ? hi : lo;
      ASSERT_EQ(f32_to_f16(s * mid), even) << std::hex << m;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, 0.0f)), lo) << std::hex << m;
      ASSERT_EQ(f32_to_f16(s * std::nextafter(mid, std::numeric_limits<float>::infinity())), hi) << std::hex << m;
    }
  }
}

// Same for bf16: for every finite bf16 pattern, the dropped 16 bits at 0 / 1 / just below half / half /
// just above half / all ones, checked against rounding done in double.
TEST(DType, Bf16RoundingMatchesDoubleReference) {
  for (std::uint32_t top = 0; top <= 0xFFFF; ++top) {
    if ((top & 0x7F80u) == 0x7F80u) continue;  // inf / NaN
    for (std::uint32_t low : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) {
      const float x = from_bits((top << 16) | low);
      const double ax = std::fabs(static_cast<double>(x));
      const std::uint32_t mag = top & 0x7FFFu;
      const double lo_v = std::fabs(static_cast<double>(from_bits(mag << 16)));
      const double hi_v = (mag + 1 == 0x7F80u) ? std::ldexp(1.0, 128) : static_cast<double>(from_bits((mag + 1) << 16));
      std::uint32_t expect_mag;
      if (ax - lo_v < hi_v - ax) {
        expect_mag = mag;
      } else if (ax - lo_v > hi_v - ax) {
        expect_mag = mag + 1;
      } else {
        expect_mag = (mag & 1) ? mag + 1 : mag;
      }
      const auto expect = static_cast<std::uint16_t>((top & 0x8000u) | expect_mag);
      ASSERT_EQ(f32_to_bf16(x), expect) << std::hex << ((top << 16) | low);
    }
  }
}

#if defined(__FLT16_MAX__) && (defined(__x86_64__) || defined(__aarch64__))
// The compiler's _Float16 conversion (IEEE round-to-nearest-even) as a second, independent oracle over a
// sweep of all float bit patterns.
TEST(DType, F16MatchesCompilerFloat16) {
  for (std::uint64_t b = 0; b <= 0xFFFFFFFFull; b += 997) {
    const float x = from_bits(static_cast<std::uint32_t>(b));
    const _Float16 ref = static_cast<_Float16>(x);
    std::uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, 2);
    const std::uint16_t got = f32_to_f16(x);
    if (std::isnan(x)) {
      ASSERT_TRUE(f16_is_nan(got)) << std::hex << b;
    } else {
      ASSERT_EQ(got, ref_bits) << std::hex << b;
    }
  }
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    if (f16_is_nan(static_cast<std::uint16_t>(h))) continue;
    _Float16 v;
    const auto hb = static_cast<std::uint16_t>(h);
    std::memcpy(&v, &hb, 2);
    ASSERT_EQ(bits_of(static_cast<float>(v)), bits_of(f16_to_f32(hb))) << std::hex << h;
  }
}
#endif

// Bulk conversions read and write at odd addresses (safetensors data has no alignment guarantee).
TEST(DType, BulkConversionUnaligned) {
  const std::vector<float> src = {0.0f, -0.0f, 1.0f, -1.5f, 3.14159f, 65504.0f, 1e-6f, -7.25f, 1e30f};
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16}) {
    const std::size_t es = dtype_size(d);
    std::vector<unsigned char> storage(1 + src.size() * es + 1, 0xAB);
    convert_from_f32(d, src.data(), storage.data() + 1, src.size());
    EXPECT_EQ(storage.front(), 0xAB);  // guard bytes untouched
    EXPECT_EQ(storage.back(), 0xAB);
    std::vector<float> dst(src.size());
    convert_to_f32(d, storage.data() + 1, dst.data(), src.size());
    for (std::size_t i = 0; i < src.size(); ++i) {
      float expect = src[i];
      if (d == DType::kBF16) expect = bf16_to_f32(f32_to_bf16(src[i]));
      if (d == DType::kF16) expect = f16_to_f32(f32_to_f16(src[i]));
      EXPECT_EQ(bits_of(dst[i]), bits_of(expect)) << dtype_name(d) << " element " << i;
      std::uint16_t h;
      if (es == 2) {
        std::memcpy(&h, storage.data() + 1 + 2 * i, 2);
        EXPECT_EQ(h, d == DType::kBF16 ? f32_to_bf16(src[i]) : f32_to_f16(src[i]));
      }
    }
  }
}

TEST(DType, BulkConversionZeroCountAndNonFloatDtype) {
  convert_to_f32(DType::kF32, nullptr, nullptr, 0);
  convert_from_f32(DType::kBF16, nullptr, nullptr, 0);
  float f = 0;
  unsigned char raw[8] = {};
  try {
    convert_to_f32(DType::kI64, raw, &f, 1);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
    EXPECT_NE(std::string(e.what()).find("I64"), std::string::npos);
  }
  EXPECT_THROW(convert_from_f32(DType::kU8, &f, raw, 1), Error);
}

}  // namespace
}  // namespace hylo
