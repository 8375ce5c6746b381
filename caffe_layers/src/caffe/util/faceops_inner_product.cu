#include "faceops/fork_margins.h"

#include "caffe/common.hpp"
#include "caffe/util/faceops_inner_product.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per weight row, as the forks' kernels do.
template <typename Dtype>
__global__ void FaceopsNormalizeWeightRows(int rows, int cols, Dtype* data) {
  CUDA_KERNEL_LOOP(j, rows) {
    faceops::fork::normalize_weight_row(data + j * cols, cols);
  }
}

template <typename Dtype>
__global__ void FaceopsProjectWeightRows(int rows, int cols,
    const Dtype* data, Dtype* diff) {
  CUDA_KERNEL_LOOP(j, rows) {
    faceops::fork::project_out_radial(diff + j * cols, data + j * cols, cols);
  }
}

template <typename Dtype>
void FaceopsNormalizeWeight_gpu(const LayerParameter& param,
    Blob<Dtype>* weight, bool transpose) {
  CHECK(!transpose) << "InnerProduct layer '" << param.name()
      << "': inner_product_param.normalize normalises weight rows "
      << "(num_output x K); it does not support transpose: true";
  const int rows = weight->shape(0), cols = weight->count(1);
  // NOLINT_NEXT_LINE(whitespace/operators)
  FaceopsNormalizeWeightRows<Dtype><<<CAFFE_GET_BLOCKS(rows),
      CAFFE_CUDA_NUM_THREADS>>>(rows, cols, weight->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void FaceopsProjectWeightDiff_gpu(Blob<Dtype>* weight) {
  const int rows = weight->shape(0), cols = weight->count(1);
  // NOLINT_NEXT_LINE(whitespace/operators)
  FaceopsProjectWeightRows<Dtype><<<CAFFE_GET_BLOCKS(rows),
      CAFFE_CUDA_NUM_THREADS>>>(rows, cols, weight->gpu_data(),
      weight->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void FaceopsWeightBottomForward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top, int M, int N, int K) {
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, M, N, K, Dtype(1),
      bottom[0]->gpu_data(), bottom[1]->gpu_data(), Dtype(0),
      top[0]->mutable_gpu_data());
}

template <typename Dtype>
void FaceopsWeightBottomBackward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom,
    int M, int N, int K) {
  const Dtype* top_diff = top[0]->gpu_diff();
  if (propagate_down[1]) {
    caffe_gpu_gemm<Dtype>(CblasTrans, CblasNoTrans, N, K, M, Dtype(1),
        top_diff, bottom[0]->gpu_data(), Dtype(0), bottom[1]->mutable_gpu_diff());
  }
  if (propagate_down[0]) {
    caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, M, K, N, Dtype(1),
        top_diff, bottom[1]->gpu_data(), Dtype(0), bottom[0]->mutable_gpu_diff());
  }
}

template void FaceopsWeightBottomForward_gpu<float>(const vector<Blob<float>*>&,
    const vector<Blob<float>*>&, int, int, int);
template void FaceopsWeightBottomForward_gpu<double>(const vector<Blob<double>*>&,
    const vector<Blob<double>*>&, int, int, int);
template void FaceopsWeightBottomBackward_gpu<float>(const vector<Blob<float>*>&,
    const vector<bool>&, const vector<Blob<float>*>&, int, int, int);
template void FaceopsWeightBottomBackward_gpu<double>(const vector<Blob<double>*>&,
    const vector<bool>&, const vector<Blob<double>*>&, int, int, int);

template void FaceopsNormalizeWeight_gpu<float>(const LayerParameter&,
    Blob<float>*, bool);
template void FaceopsNormalizeWeight_gpu<double>(const LayerParameter&,
    Blob<double>*, bool);
template void FaceopsProjectWeightDiff_gpu<float>(Blob<float>*);
template void FaceopsProjectWeightDiff_gpu<double>(Blob<double>*);

}  // namespace caffe
