#include <vector>

#include "caffe/layers/channel_scale_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void ChannelScaleLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK(!this->layer_param_.channel_scale_param().global_scale())
      << "ChannelScale layer '" << this->layer_param_.name()
      << "': channel_scale_param.global_scale is not supported by faceops; "
      << "scale by a bottom (e.g. Normalize's norms top) instead";
}

template <typename Dtype>
void ChannelScaleLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_GE(bottom[0]->num_axes(), 2) << "ChannelScale layer '"
      << this->layer_param_.name() << "': bottom[0] has shape "
      << bottom[0]->shape_string() << "; expected (N x C x ...)";
  num_ = bottom[0]->shape(0);
  channels_ = bottom[0]->shape(1);
  positions_ = bottom[0]->count(2);
  CHECK_EQ(bottom[1]->count(), num_ * positions_) << "ChannelScale layer '"
      << this->layer_param_.name() << "': bottom[1] (scales) holds "
      << bottom[1]->count() << " values; expected one per sample and "
      << "position of bottom[0] " << bottom[0]->shape_string() << ", "
      << num_ * positions_;
  top[0]->ReshapeLike(*bottom[0]);
}

template <typename Dtype>
void ChannelScaleLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype* x = bottom[0]->cpu_data();
  Dtype* y = top[0]->mutable_cpu_data();
  if (!this->layer_param_.channel_scale_param().do_forward()) {
    caffe_copy(bottom[0]->count(), x, y);
    return;
  }
  const Dtype* scale = bottom[1]->cpu_data();
  for (int n = 0; n < num_; ++n) {
    for (int c = 0; c < channels_; ++c) {
      const int offset = (n * channels_ + c) * positions_;
      caffe_mul(positions_, scale + n * positions_, x + offset, y + offset);
    }
  }
}

template <typename Dtype>
void ChannelScaleLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const ChannelScaleParameter& param = this->layer_param_.channel_scale_param();
  const Dtype* g = top[0]->cpu_diff();
  const Dtype* scale = bottom[1]->cpu_data();
  if (propagate_down[1]) {
    const Dtype* x = bottom[0]->cpu_data();
    Dtype* scale_diff = bottom[1]->mutable_cpu_diff();
    caffe_set(num_ * positions_, Dtype(0), scale_diff);
    if (param.do_backward_scale()) {
      for (int n = 0; n < num_; ++n) {
        for (int c = 0; c < channels_; ++c) {
          const int offset = (n * channels_ + c) * positions_;
          for (int s = 0; s < positions_; ++s) {
            scale_diff[n * positions_ + s] += x[offset + s] * g[offset + s];
          }
        }
      }
    }
  }
  if (propagate_down[0]) {
    Dtype* x_diff = bottom[0]->mutable_cpu_diff();
    if (!param.do_backward_feature()) {
      caffe_copy(bottom[0]->count(), g, x_diff);
      return;
    }
    for (int n = 0; n < num_; ++n) {
      for (int c = 0; c < channels_; ++c) {
        const int offset = (n * channels_ + c) * positions_;
        caffe_mul(positions_, scale + n * positions_, g + offset,
            x_diff + offset);
      }
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(ChannelScaleLayer);
#endif

INSTANTIATE_CLASS(ChannelScaleLayer);
REGISTER_LAYER_CLASS(ChannelScale);

}  // namespace caffe
