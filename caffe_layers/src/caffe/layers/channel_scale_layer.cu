#include <vector>

#include "caffe/layers/channel_scale_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// out[n, c, s] = scale[n, s] * in[n, c, s]
template <typename Dtype>
__global__ void ChannelScaleForward(int count, int channels, int positions,
    const Dtype* scale, const Dtype* in, Dtype* out) {
  CUDA_KERNEL_LOOP(index, count) {
    const int n = index / (channels * positions), s = index % positions;
    out[index] = scale[n * positions + s] * in[index];
  }
}

// scale_diff[n, s] = sum_c x[n, c, s] g[n, c, s]
template <typename Dtype>
__global__ void ChannelScaleScaleDiff(int count, int channels, int positions,
    const Dtype* x, const Dtype* g, Dtype* scale_diff) {
  CUDA_KERNEL_LOOP(index, count) {
    const int n = index / positions, s = index % positions;
    Dtype sum = 0;
    for (int c = 0; c < channels; ++c) {
      const int at = (n * channels + c) * positions + s;
      sum += x[at] * g[at];
    }
    scale_diff[index] = sum;
  }
}

template <typename Dtype>
void ChannelScaleLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int count = bottom[0]->count();
  if (!this->layer_param_.channel_scale_param().do_forward()) {
    caffe_copy(count, bottom[0]->gpu_data(), top[0]->mutable_gpu_data());
    return;
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  ChannelScaleForward<Dtype><<<CAFFE_GET_BLOCKS(count),
      CAFFE_CUDA_NUM_THREADS>>>(count, channels_, positions_,
      bottom[1]->gpu_data(), bottom[0]->gpu_data(),
      top[0]->mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void ChannelScaleLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const ChannelScaleParameter& param = this->layer_param_.channel_scale_param();
  const int count = bottom[0]->count();
  if (propagate_down[1]) {
    Dtype* scale_diff = bottom[1]->mutable_gpu_diff();
    if (param.do_backward_scale()) {
      // NOLINT_NEXT_LINE(whitespace/operators)
      ChannelScaleScaleDiff<Dtype><<<CAFFE_GET_BLOCKS(num_ * positions_),
          CAFFE_CUDA_NUM_THREADS>>>(num_ * positions_, channels_, positions_,
          bottom[0]->gpu_data(), top[0]->gpu_diff(), scale_diff);
      CUDA_POST_KERNEL_CHECK;
    } else {
      caffe_gpu_set(num_ * positions_, Dtype(0), scale_diff);
    }
  }
  if (propagate_down[0]) {
    if (!param.do_backward_feature()) {
      caffe_copy(count, top[0]->gpu_diff(), bottom[0]->mutable_gpu_diff());
      return;
    }
    // NOLINT_NEXT_LINE(whitespace/operators)
    ChannelScaleForward<Dtype><<<CAFFE_GET_BLOCKS(count),
        CAFFE_CUDA_NUM_THREADS>>>(count, channels_, positions_,
        bottom[1]->gpu_data(), top[0]->gpu_diff(),
        bottom[0]->mutable_gpu_diff());
    CUDA_POST_KERNEL_CHECK;
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(ChannelScaleLayer);

}  // namespace caffe
