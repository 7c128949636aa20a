#include "io/dtype.h"

#include <bit>
#include <cstring>
#include <limits>
#include <string>

#include "common/error.h"

namespace hylo {

// safetensors data is little-endian and we reinterpret it with memcpy; a big-endian host would need byte
// swaps everywhere, which nobody here runs.
static_assert(std::endian::native == std::endian::little, "hylo assumes a little-endian host");
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "hylo assumes IEEE-754 binary32");

namespace {

struct DTypeDesc {
  DType dtype;
  std::string_view name;  // the exact spelling in safetensors headers
  std::size_t size;
};

constexpr DTypeDesc kDTypes[] = {
    {DType::kBool, "BOOL", 1}, {DType::kU8, "U8", 1},          {DType::kI8, "I8", 1},          {DType::kU16, "U16", 2},
    {DType::kI16, "I16", 2},   {DType::kF16, "F16", 2},        {DType::kBF16, "BF16", 2},      {DType::kI32, "I32", 4},
    {DType::kU32, "U32", 4},   {DType::kF32, "F32", 4},        {DType::kF64, "F64", 8},        {DType::kI64, "I64", 8},
    {DType::kU64, "U64", 8},   {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

const DTypeDesc& describe(DType dtype) {
  for (const DTypeDesc& d : kDTypes) {
    if (d.dtype == dtype) return d;
  }
  // Only reachable with an enum value cast from an out-of-range integer.
  throw Error(ErrorKind::kInternal, "", "", "invalid DType value " + std::to_string(static_cast<int>(dtype)));
}

std::uint32_t f32_bits(float value) { return std::bit_cast<std::uint32_t>(value); }
float f32_from_bits(std::uint32_t bits) { return std::bit_cast<float>(bits); }

}  // namespace

std::optional<DType> parse_dtype(std::string_view name) {
  for (const DTypeDesc& d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

std::string_view dtype_name(DType dtype) { return describe(dtype).name; }
std::size_t dtype_size(DType dtype) { return describe(dtype).size; }

bool is_float_weight_dtype(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16;
}

// ---- bf16: the top 16 bits of a binary32 ----------------------------------------------------------------

float bf16_to_f32(std::uint16_t bits) { return f32_from_bits(static_cast<std::uint32_t>(bits) << 16); }

std::uint16_t f32_to_bf16(float value) {
  const std::uint32_t x = f32_bits(value);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: keep sign and the top payload bits, force the quiet bit so truncation can't produce infinity.
    return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  }
  // Round to nearest even on the 16 dropped bits: add 0x7FFF plus the lsb of the kept part. A carry out of
  // the mantissa correctly bumps the exponent, and the largest finite values round up to infinity.
  const std::uint32_t lsb = (x >> 16) & 1u;
  return static_cast<std::uint16_t>((x + 0x7FFFu + lsb) >> 16);
}

// ---- f16: IEEE binary16 (1 sign, 5 exponent with bias 15, 10 mantissa) --------------------------------

float f16_to_f32(std::uint16_t bits) {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exp = (bits >> 10) & 0x1Fu;
  const std::uint32_t mant = bits & 0x3FFu;
  if (exp == 0x1F) {
    // Inf or NaN: the 10-bit payload moves to the top of the 23-bit mantissa, so NaN stays NaN.
    return f32_from_bits(sign | 0x7F800000u | (mant << 13));
  }
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24 is exact in binary32 (mant has at most 10 significant bits).
    const float magnitude = static_cast<float>(mant) * 0x1p-24f;
    return f32_from_bits(sign | f32_bits(magnitude));
  }
  // Normal: rebias the exponent from 15 to 127.
  return f32_from_bits(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

std::uint16_t f32_to_f16(float value) {
  const std::uint32_t x = f32_bits(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7FFFFFFFu;

  if (ax > 0x7F800000u) {  // NaN: quiet, keep the top 9 payload bits
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
  }
  // 65520 (0x477FF000) is halfway between the largest finite f16 65504 (odd mantissa) and 65536: ties go to
  // even, i.e. to infinity. Everything from there up, including infinity itself, becomes infinity.
  if (ax >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);

  if (ax >= 0x38800000u) {  // >= 2^-14: normal f16
    // Rebias 127 -> 15, then round away the low 13 mantissa bits to nearest even. A carry into the exponent
    // is the correct result (e.g. 2047.9 -> 2048); overflow to infinity was handled above.
    const std::uint32_t rebiased = ax - ((127u - 15u) << 23);
    const std::uint32_t lsb = (rebiased >> 13) & 1u;
    return static_cast<std::uint16_t>(sign | ((rebiased + 0xFFFu + lsb) >> 13));
  }
  // 2^-25 is exactly halfway between 0 and the smallest subnormal 2^-24: ties to even give 0.
  if (ax <= 0x33000000u) return sign;

  // Subnormal f16: the result is the full 24-bit significand scaled to units of 2^-24, i.e. shifted right by
  // (126 - e) where e is the biased f32 exponent (102..112 here, so the shift is 14..24), rounded to even.
  // A round-up to 0x400 yields the smallest normal, which is the correct encoding.
  const std::uint32_t e = ax >> 23;
  const std::uint32_t significand = (ax & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126u - e;
  std::uint32_t q = significand >> shift;
  const std::uint32_t rem = significand & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<std::uint16_t>(sign | q);
}

// ---- bulk conversion ------------------------------------------------------------------------------------
// Sources and destinations inside an mmapped safetensors file have no alignment guarantee, so every
// element goes through memcpy (which compiles to a plain unaligned load/store).

void convert_to_f32(DType dtype, const void* src, float* dst, std::size_t count) {
  const auto* in = static_cast<const unsigned char*>(src);
  switch (dtype) {
    case DType::kF32:
      if (count != 0) std::memcpy(dst, in, count * sizeof(float));
      return;
    case DType::kBF16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return;
    case DType::kF16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return;
    default:
      throw Error(ErrorKind::kInternal, "", std::string(dtype_name(dtype)),
                  "convert_to_f32 supports only F32, BF16 and F16");
  }
}

void convert_from_f32(DType dtype, const float* src, void* dst, std::size_t count) {
  auto* out = static_cast<unsigned char*>(dst);
  switch (dtype) {
    case DType::kF32:
      if (count != 0) std::memcpy(out, src, count * sizeof(float));
      return;
    case DType::kBF16:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t h = f32_to_bf16(src[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    case DType::kF16:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t h = f32_to_f16(src[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    default:
      throw Error(ErrorKind::kInternal, "", std::string(dtype_name(dtype)),
                  "convert_from_f32 supports only F32, BF16 and F16");
  }
}

}  // namespace hylo
