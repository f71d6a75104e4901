// C interface over the MindSpore Lite 2.0 C++ API for one BERT question-answering MindIR,
// called from Python through ctypes (bert_squad/runtimes/lite_direct.py).
//
// Why: Lite can resize a model whose graph holds no sequence-length constant (see
// bert_squad/model/network.py) to the exact [batch, length] of each call, so one copy of the
// weights serves every window length with no padding. The Python API of Lite 2.0 exists
// only for CPython 3.7; its C++ libraries work from any Python through this file.
//
// Build (scripts/setup.sh does it): g++ -std=c++17 -O2 -fPIC -shared -D_GLIBCXX_USE_CXX11_ABI=0
//   -I<lite include parent> bert_lite.cpp -L<lite lib> -lmindspore-extendrt_python
// The old std::string ABI matches the wheel's libraries. Errors never cross the C boundary
// as exceptions: every function fills `error` and returns null or non-zero instead.
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "include/api/context.h"
#include "include/api/model.h"
#include "include/api/status.h"
#include "include/api/types.h"

namespace {

using mindspore::DataType;

struct Handle {
  mindspore::Model model;
  int64_t batch = 0;   // the export batch: Resize can change the length, not the batch
  int64_t length = 0;  // the length the model is sized for now; 0 after a failed Resize
  std::mutex lock;     // Resize and Predict of one model must not interleave
};

void set_error(char *error, size_t error_size, const std::string &text) {
  if (error == nullptr || error_size == 0) return;
  std::strncpy(error, text.c_str(), error_size - 1);
  error[error_size - 1] = '\0';
}

// Empty when the model has the BERT QA signature: int32 [batch, seq] x 3 -> float32 [batch, seq] x 2.
std::string signature_problem(mindspore::Model &model) {
  auto inputs = model.GetInputs();
  auto outputs = model.GetOutputs();
  if (inputs.size() != 3 || outputs.size() != 2) {
    return "it has " + std::to_string(inputs.size()) + " inputs and " + std::to_string(outputs.size()) +
           " outputs; a BERT question-answering MindIR has 3 (input_ids, input_mask, token_type_id) and 2";
  }
  for (auto &input : inputs) {
    if (input.DataType() != DataType::kNumberTypeInt32 || input.Shape().size() != 2) {
      return "input " + input.Name() + " is not int32 [batch, seq]";
    }
  }
  for (auto &output : outputs) {
    if (output.DataType() != DataType::kNumberTypeFloat32) return "output " + output.Name() + " is not float32";
  }
  return "";
}

}  // namespace

extern "C" {

// Load the MindIR at `model_path` for CPU inference on `threads` threads, bound to the `core_count`
// cores in `cores` when there are any (workers side by side each keep to their own cores).
// Returns null and fills `error` on failure.
void *bert_lite_create(const char *model_path, int threads, const int *cores, int core_count, char *error,
                       size_t error_size) {
  const std::string path = model_path == nullptr ? "" : model_path;
  try {
    auto context = std::make_shared<mindspore::Context>();
    context->SetThreadNum(threads);
    if (cores != nullptr && core_count > 0) context->SetThreadAffinity(std::vector<int>(cores, cores + core_count));
    context->MutableDeviceInfo().push_back(std::make_shared<mindspore::CPUDeviceInfo>());
    auto handle = std::make_unique<Handle>();
    auto status = handle->model.Build(path, mindspore::kMindIR, context);
    if (status != mindspore::kSuccess) {
      set_error(error, error_size, "MindSpore Lite cannot load " + path + ": " + status.ToString() +
                                       " Is it a complete MindIR written by bert-squad-export? Lite's log on"
                                       " stderr says more.");
      return nullptr;
    }
    auto problem = signature_problem(handle->model);
    if (!problem.empty()) {
      set_error(error, error_size, path + " is not a BERT question-answering model: " + problem);
      return nullptr;
    }
    auto shape = handle->model.GetInputs()[0].Shape();
    handle->batch = shape[0];
    handle->length = shape[1];
    return handle.release();
  } catch (const std::exception &e) {
    set_error(error, error_size, "MindSpore Lite cannot load " + path + ": " + e.what());
    return nullptr;
  }
}

// The batch size the model was exported with (every call must use it).
int64_t bert_lite_batch(void *opaque) { return static_cast<Handle *>(opaque)->batch; }

// Score int32 [batch, length] ids, mask and segments into float32 [batch, length] start and
// end. The model is resized only when `length` differs from the previous call's.
// Returns 0, or non-zero with `error` filled.
int bert_lite_predict(void *opaque, const int32_t *ids, const int32_t *mask, const int32_t *segments,
                      int64_t batch, int64_t length, float *start, float *end, char *error, size_t error_size) {
  auto *handle = static_cast<Handle *>(opaque);
  try {
    std::lock_guard<std::mutex> guard(handle->lock);
    if (batch != handle->batch || length <= 0) {
      set_error(error, error_size, "the model takes [" + std::to_string(handle->batch) + ", length >= 1] inputs, " +
                                       "got [" + std::to_string(batch) + ", " + std::to_string(length) + "]");
      return 1;
    }
    auto inputs = handle->model.GetInputs();
    if (length != handle->length) {
      const std::vector<int64_t> shape = {batch, length};
      handle->length = 0;
      auto status = handle->model.Resize(inputs, {shape, shape, shape});
      if (status != mindspore::kSuccess) {
        set_error(error, error_size, "MindSpore Lite cannot resize the model to [" + std::to_string(batch) + ", " +
                                         std::to_string(length) + "]: " + status.ToString());
        return 2;
      }
      handle->length = length;
      inputs = handle->model.GetInputs();
    }
    const size_t count = static_cast<size_t>(batch * length);
    const int32_t *sources[3] = {ids, mask, segments};
    for (int i = 0; i < 3; ++i) {
      void *target = inputs[i].MutableData();
      if (target == nullptr || inputs[i].DataSize() != count * sizeof(int32_t)) {
        set_error(error, error_size, "MindSpore Lite input " + inputs[i].Name() + " holds " +
                                         std::to_string(inputs[i].DataSize()) + " bytes, expected " +
                                         std::to_string(count * sizeof(int32_t)));
        return 3;
      }
      std::memcpy(target, sources[i], count * sizeof(int32_t));
    }
    std::vector<mindspore::MSTensor> outputs;
    auto status = handle->model.Predict(inputs, &outputs);
    if (status != mindspore::kSuccess) {
      set_error(error, error_size, "MindSpore Lite prediction failed: " + status.ToString());
      return 4;
    }
    float *targets[2] = {start, end};
    for (int i = 0; i < 2; ++i) {
      if (outputs.size() != 2 || outputs[i].DataSize() != count * sizeof(float)) {
        set_error(error, error_size, "MindSpore Lite returned outputs of an unexpected size");
        return 5;
      }
      std::memcpy(targets[i], outputs[i].Data().get(), count * sizeof(float));
    }
    return 0;
  } catch (const std::exception &e) {
    set_error(error, error_size, std::string("MindSpore Lite prediction failed: ") + e.what());
    return 6;
  }
}

void bert_lite_destroy(void *opaque) { delete static_cast<Handle *>(opaque); }

}  // extern "C"
