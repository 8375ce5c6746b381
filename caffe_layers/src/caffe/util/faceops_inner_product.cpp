#include <string>
#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/common.hpp"
#include "caffe/util/faceops_inner_product.hpp"
#include "caffe/util/math_functions.hpp"

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

int FaceopsWeightBottomOutputs(const LayerParameter& param, int K,
    const vector<int>& weight_shape) {
  const InnerProductParameter& p = param.inner_product_param();
  const std::string layer = "InnerProduct layer '" + param.name() + "': ";
  CHECK(!p.bias_term()) << layer << "with the weight as bottom[1], set "
      << "inner_product_param.bias_term: false (a bias needs caffe-windows' "
      << "third bottom, which faceops does not support)";
  CHECK(!p.transpose()) << layer << "with the weight as bottom[1], "
      << "inner_product_param.transpose: true is not supported; expected "
      << "bottom[1] of shape (num_output, K)";
  CHECK(!p.normalize()) << layer << "inner_product_param.normalize "
      << "normalises the layer's own weight; with the weight as bottom[1], "
      << "normalise that blob with a Normalize layer instead";
  int count = 1;
  for (int d : weight_shape) count *= d;
  CHECK(!weight_shape.empty() && weight_shape[0] > 0
        && count == weight_shape[0] * K) << layer << "bottom[1] (weight) "
      << "has " << count << " values in " << weight_shape.size()
      << " axes; expected shape (num_output, K) with K = " << K
      << " (bottom[0]'s count from inner_product_param.axis)";
  return weight_shape[0];
}

template <typename Dtype>
void FaceopsWeightBottomForward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top, int M, int N, int K) {
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, M, N, K, Dtype(1),
      bottom[0]->cpu_data(), bottom[1]->cpu_data(), Dtype(0),
      top[0]->mutable_cpu_data());
}

template <typename Dtype>
void FaceopsWeightBottomBackward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom,
    int M, int N, int K) {
  const Dtype* top_diff = top[0]->cpu_diff();
  if (propagate_down[1]) {
    caffe_cpu_gemm<Dtype>(CblasTrans, CblasNoTrans, N, K, M, Dtype(1),
        top_diff, bottom[0]->cpu_data(), Dtype(0), bottom[1]->mutable_cpu_diff());
  }
  if (propagate_down[0]) {
    caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, M, K, N, Dtype(1),
        top_diff, bottom[1]->cpu_data(), Dtype(0), bottom[0]->mutable_cpu_diff());
  }
}

#define FACEOPS_INSTANTIATE_WEIGHT_BOTTOM(Dtype, device)                        \
  template void FaceopsWeightBottomForward_##device<Dtype>(                     \
      const vector<Blob<Dtype>*>&, const vector<Blob<Dtype>*>&, int, int, int); \
  template void FaceopsWeightBottomBackward_##device<Dtype>(                    \
      const vector<Blob<Dtype>*>&, const vector<bool>&,                         \
      const vector<Blob<Dtype>*>&, int, int, int);
FACEOPS_INSTANTIATE_WEIGHT_BOTTOM(float, cpu)
FACEOPS_INSTANTIATE_WEIGHT_BOTTOM(double, cpu)

template void FaceopsNormalizeWeight_cpu<float>(const LayerParameter&,
    Blob<float>*, bool);
template void FaceopsNormalizeWeight_cpu<double>(const LayerParameter&,
    Blob<double>*, bool);
template void FaceopsProjectWeightDiff_cpu<float>(Blob<float>*);
template void FaceopsProjectWeightDiff_cpu<double>(Blob<double>*);

}  // namespace caffe
