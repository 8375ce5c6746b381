#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/norm_l2_layer.hpp"

namespace caffe {

// One thread per sample, over the same fork_margins.h functions as the CPU.
template <typename Dtype>
__global__ void NormL2Rows(int num, int dim, const Dtype* x, Dtype* y) {
  CUDA_KERNEL_LOOP(i, num) {
    faceops::fork::norml2_row(x + i * dim, dim, y + i * dim);
  }
}

template <typename Dtype>
__global__ void NormL2RowDiffs(int num, int dim, const Dtype* x,
    const Dtype* y, const Dtype* dy, Dtype* dx) {
  CUDA_KERNEL_LOOP(i, num) {
    faceops::fork::norml2_row_backward(x + i * dim, y + i * dim, dy + i * dim,
        dim, dx + i * dim);
  }
}

template <typename Dtype>
void NormL2Layer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  // NOLINT_NEXT_LINE(whitespace/operators)
  NormL2Rows<Dtype><<<CAFFE_GET_BLOCKS(num_), CAFFE_CUDA_NUM_THREADS>>>(
      num_, dim_, bottom[0]->gpu_data(), top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void NormL2Layer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  // NOLINT_NEXT_LINE(whitespace/operators)
  NormL2RowDiffs<Dtype><<<CAFFE_GET_BLOCKS(num_), CAFFE_CUDA_NUM_THREADS>>>(
      num_, dim_, bottom[0]->gpu_data(), top[0]->gpu_data(),
      top[0]->gpu_diff(), bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(NormL2Layer);

}  // namespace caffe
