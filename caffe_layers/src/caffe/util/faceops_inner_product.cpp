#include "faceops/fork_margins.h"

#include "caffe/common.hpp"
#include "caffe/util/faceops_inner_product.hpp"

namespace caffe {

template <typename Dtype>
void FaceopsNormalizeWeight_cpu(const LayerParameter& param,
    Blob<Dtype>* weight, bool transpose) {
  CHECK(!transpose) << "InnerProduct layer '" << param.name()
      << "': inner_product_param.normalize normalises weight rows "
      << "(num_output x K); it does not support transpose: true";
  const int rows = weight->shape(0), cols = weight->count(1);
  Dtype* data = weight->mutable_cpu_data();
  for (int j = 0; j < rows; ++j) {
    faceops::fork::normalize_weight_row(data + j * cols, cols);
  }
}

template <typename Dtype>
void FaceopsProjectWeightDiff_cpu(Blob<Dtype>* weight) {
  const int rows = weight->shape(0), cols = weight->count(1);
  const Dtype* data = weight->cpu_data();
  Dtype* diff = weight->mutable_cpu_diff();
  for (int j = 0; j < rows; ++j) {
    faceops::fork::project_out_radial(diff + j * cols, data + j * cols, cols);
  }
}

template void FaceopsNormalizeWeight_cpu<float>(const LayerParameter&,
    Blob<float>*, bool);
template void FaceopsNormalizeWeight_cpu<double>(const LayerParameter&,
    Blob<double>*, bool);
template void FaceopsProjectWeightDiff_cpu<float>(Blob<float>*);
template void FaceopsProjectWeightDiff_cpu<double>(Blob<double>*);

}  // namespace caffe
