// Per-kernel time of a lite_direct MindIR in MindSpore Lite, by kernel type (README "Performance").
//
// Why: the roofline goal needs to know how much of a window's model time is GEMM and how much is
// everything else; Lite's kernel callbacks time each kernel in a plain process (no Serving).
//
// Build and run (scripts/setup.sh has built .stack/):
//   g++ -std=c++17 -O2 -D_GLIBCXX_USE_CXX11_ABI=0 -I.stack/shim bench/lite_profile.cpp -o /tmp/lite_profile
//       -L.stack/lite/lib -lmindspore-extendrt_python -Wl,-rpath,$PWD/.stack/lite/lib   (one command line)
//   LD_LIBRARY_PATH=.stack/lite/lib /tmp/lite_profile MODEL.mindir THREADS LENGTH [LENGTH ...]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/types.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kRuns = 3;  // timed runs per length, after one warm-up

double milliseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Window-like inputs: ids spread over the vocabulary, every position real, one segment.
void fill_inputs(std::vector<mindspore::MSTensor> &inputs, int64_t length) {
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto *data = static_cast<int32_t *>(inputs[i].MutableData());
    for (int64_t k = 0; k < length; ++k) data[k] = i == 0 ? 1000 + static_cast<int32_t>((k * 7919) % 29000) : i == 1;
  }
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.mindir THREADS LENGTH [LENGTH ...]\n", argv[0]);
    return 2;
  }
  auto context = std::make_shared<mindspore::Context>();
  context->SetThreadNum(std::atoi(argv[2]));
  context->MutableDeviceInfo().push_back(std::make_shared<mindspore::CPUDeviceInfo>());
  mindspore::Model model;
  if (model.Build(argv[1], mindspore::kMindIR, context) != mindspore::kSuccess) {
    std::fprintf(stderr, "MindSpore Lite cannot load %s\n", argv[1]);
    return 1;
  }
  for (int a = 3; a < argc; ++a) {
    const int64_t length = std::atoll(argv[a]);
    auto inputs = model.GetInputs();
    const std::vector<int64_t> shape = {1, length};
    if (model.Resize(inputs, {shape, shape, shape}) != mindspore::kSuccess) {
      std::fprintf(stderr, "cannot resize to [1, %lld]\n", static_cast<long long>(length));
      return 1;
    }
    inputs = model.GetInputs();
    fill_inputs(inputs, length);
    std::vector<mindspore::MSTensor> outputs;
    model.Predict(inputs, &outputs);  // warm-up
    double plain = 1e30;
    for (int r = 0; r < kRuns; ++r) {
      const auto start = Clock::now();
      model.Predict(inputs, &outputs);
      plain = std::min(plain, milliseconds_since(start));
    }
    std::map<std::string, double> total_ms;
    std::map<std::string, int> calls;
    Clock::time_point kernel_start;
    mindspore::MSKernelCallBack before = [&](const std::vector<mindspore::MSTensor> &,
                                             const std::vector<mindspore::MSTensor> &,
                                             const mindspore::MSCallBackParam &) {
      kernel_start = Clock::now();
      return true;
    };
    mindspore::MSKernelCallBack after = [&](const std::vector<mindspore::MSTensor> &,
                                            const std::vector<mindspore::MSTensor> &,
                                            const mindspore::MSCallBackParam &kernel) {
      total_ms[kernel.node_type] += milliseconds_since(kernel_start);
      ++calls[kernel.node_type];
      return true;
    };
    for (int r = 0; r < kRuns; ++r) model.Predict(inputs, &outputs, before, after);
    std::vector<std::pair<double, std::string>> rows;
    double kernels = 0;
    for (const auto &entry : total_ms) {
      rows.emplace_back(entry.second / kRuns, entry.first);
      kernels += entry.second / kRuns;
    }
    std::sort(rows.rbegin(), rows.rend());
    std::printf("length %lld: fastest plain run %.1f ms; kernels timed one by one %.1f ms (mean of %d runs)\n",
                static_cast<long long>(length), plain, kernels, kRuns);
    for (const auto &row : rows) {
      std::printf("  %-22s %8.2f ms  x%d\n", row.second.c_str(), row.first, calls[row.second] / kRuns);
    }
  }
  return 0;
}
