// Element types of safetensors files and conversion of the float ones to float32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace hylo {

// Every dtype name the safetensors format defines. Only F32, BF16 and F16 hold model weights in hylo;
// the others parse (so a file that carries e.g. an I64 step counter is understood) and are rejected
// where a weight is expected.
enum class DType { kBool, kU8, kI8, kU16, kI16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64, kF8E4M3, kF8E5M2 };

// Exact, case-sensitive parse of the safetensors spelling ("F32", "BF16", ...); nullopt when unknown.
std::optional<DType> parse_dtype(std::string_view name);
std::string_view dtype_name(DType dtype);
std::size_t dtype_size(DType dtype);
bool is_float_weight_dtype(DType dtype);  // F32, BF16, F16

// IEEE-exact conversions. bf16/f16 -> f32 is exact; f32 -> bf16 rounds to nearest even (NaN stays NaN).
float bf16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_bf16(float value);
float f16_to_f32(std::uint16_t bits);
std::uint16_t f32_to_f16(float value);

// Converts `count` elements of F32/BF16/F16 at `src` (any alignment, little-endian) to float32.
void convert_to_f32(DType dtype, const void* src, float* dst, std::size_t count);
// Converts float32 to F32/BF16/F16 bytes at `dst` (any alignment).
void convert_from_f32(DType dtype, const float* src, void* dst, std::size_t count);

}  // namespace hylo
