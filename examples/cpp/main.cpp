// dccnn_register: run an exported DCCNN-LSTM-Reg ONNX model with the ONNX Runtime C++ API.
//
// usage: dccnn_register MODEL.onnx MOVING.raw FIXED.raw FORWARD.raw INVERSE.raw
//
// Inputs: float32 volumes, C order (D, H, W) = the model grid (metadata "grid_shape"),
// already resampled and normalised as docs/deploy.md describes (`dccnn export-raw` writes them).
// Outputs: float32 displacements (3, D, H, W), voxel units of the model grid, channel k moves
// array axis k; warp(x, u)(p) = x(p + u(p)).
#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<float> read_raw(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const auto bytes = static_cast<size_t>(in.tellg());
  if (bytes != count * sizeof(float))
    throw std::runtime_error(path + ": expected " + std::to_string(count * sizeof(float)) +
                             " bytes (float32 grid), got " + std::to_string(bytes));
  std::vector<float> data(count);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(bytes));
  return data;
}

void write_raw(const std::string& path, const float* data, size_t count) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
  if (!out) throw std::runtime_error(path + ": cannot write");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: " << argv[0] << " MODEL.onnx MOVING.raw FIXED.raw FORWARD.raw INVERSE.raw\n";
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "dccnn");
    Ort::SessionOptions options;
    options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    Ort::Session session(env, argv[1], options);

    // The static input shape (1, 1, D, H, W) is the model grid.
    const std::vector<int64_t> shape = session.GetInputTypeInfo(0).GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 5) throw std::runtime_error(std::string(argv[1]) + ": input is not 5-D");
    const size_t voxels = static_cast<size_t>(shape[2] * shape[3] * shape[4]);

    Ort::AllocatorWithDefaultOptions allocator;
    Ort::ModelMetadata meta = session.GetModelMetadata();
    auto units = meta.LookupCustomMetadataMapAllocated("displacement_units", allocator);
    std::cout << "grid " << shape[2] << "x" << shape[3] << "x" << shape[4]
              << ", displacement units: " << (units ? units.get() : "voxel") << "\n";

    std::vector<float> moving = read_raw(argv[2], voxels);
    std::vector<float> fixed = read_raw(argv[3], voxels);
    Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> inputs;
    inputs.push_back(Ort::Value::CreateTensor<float>(cpu, moving.data(), voxels, shape.data(), shape.size()));
    inputs.push_back(Ort::Value::CreateTensor<float>(cpu, fixed.data(), voxels, shape.data(), shape.size()));

    const char* input_names[] = {"moving", "fixed"};
    const char* output_names[] = {"forward_displacement", "inverse_displacement"};
    auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, inputs.data(), 2, output_names, 2);

    for (size_t i = 0; i < 2; ++i) {
      const auto info = outputs[i].GetTensorTypeAndShapeInfo();
      write_raw(argv[4 + i], outputs[i].GetTensorData<float>(), info.GetElementCount());
    }
    std::cout << "wrote " << argv[4] << " and " << argv[5] << " (3 x " << voxels << " float32 each)\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
