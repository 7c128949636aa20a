// GPU toolchain smoke test: the CUDA build (sm_90a + sm_80) runs on the GPU machine, launches are checked,
// and the test skips cleanly (exit 77) where no GPU is present (the CI machine).
#include <cstdio>
#include <vector>

#include "kernels/cuda_check.h"

namespace {

__global__ void axpy(std::int64_t n, float a, const float* x, float* y) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("skip: no CUDA device\n");
    return 77;
  }
  try {
    cudaDeviceProp prop{};
    HYLO_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device 0: %s, sm_%d%d, %d SMs, %.1f GiB\n", prop.name, prop.major, prop.minor,
                prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    const std::int64_t n = (1 << 20) + 3;  // not a multiple of the block
    std::vector<float> x(n), y(n);
    for (std::int64_t i = 0; i < n; ++i) {
      x[i] = static_cast<float>(i % 1000);
      y[i] = 1.0f;
    }
    float *dx = nullptr, *dy = nullptr;
    HYLO_CUDA_CHECK(cudaMalloc(&dx, n * sizeof(float)));
    HYLO_CUDA_CHECK(cudaMalloc(&dy, n * sizeof(float)));
    HYLO_CUDA_CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    HYLO_CUDA_CHECK(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    axpy<<<static_cast<unsigned>((n + 255) / 256), 256>>>(n, 2.0f, dx, dy);
    HYLO_CUDA_LAUNCH_CHECK();
    HYLO_CUDA_CHECK(cudaMemcpy(y.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    HYLO_CUDA_CHECK(cudaFree(dx));
    HYLO_CUDA_CHECK(cudaFree(dy));
    std::int64_t wrong = 0;
    for (std::int64_t i = 0; i < n; ++i) wrong += y[i] != 2.0f * static_cast<float>(i % 1000) + 1.0f;
    std::printf("axpy over %lld elements: %lld wrong\n", static_cast<long long>(n), static_cast<long long>(wrong));
    return wrong == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
