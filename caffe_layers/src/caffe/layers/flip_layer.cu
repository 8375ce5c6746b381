#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/flip_layer.hpp"

namespace caffe {

// One thread per element, over the same fork_margins.h map as the CPU.
template <typename Dtype>
__global__ void FlipElements(int count, int height, int width,
    bool flip_height, bool flip_width, const Dtype* in, Dtype* out) {
  CUDA_KERNEL_LOOP(i, count) {
    out[i] = in[faceops::fork::flip_source(i, height, width, flip_height,
        flip_width)];
  }
}

template <typename Dtype>
void FlipLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int count = top[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  FlipElements<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, height_, width_, flip_height_, flip_width_, bottom[0]->gpu_data(),
      top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void FlipLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const int count = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  FlipElements<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, height_, width_, flip_height_, flip_width_, top[0]->gpu_diff(),
      bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(FlipLayer);

}  // namespace caffe
