#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/flip_layer.hpp"

namespace caffe {

template <typename Dtype>
void FlipLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  flip_width_ = this->layer_param_.flip_param().flip_width();
  flip_height_ = this->layer_param_.flip_param().flip_height();
}

template <typename Dtype>
void FlipLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_NE(top[0], bottom[0]) << "Flip layer '" << this->layer_param_.name()
      << "': in-place use (top = bottom) is not supported; give the top "
      << "another name";
  CHECK_LE(bottom[0]->num_axes(), 4) << "Flip layer '"
      << this->layer_param_.name() << "': bottom[0] has "
      << bottom[0]->num_axes() << " axes; expected (N, C, H, W), at most 4";
  height_ = bottom[0]->height();
  width_ = bottom[0]->width();
  top[0]->ReshapeLike(*bottom[0]);
}

template <typename Dtype>
void FlipLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype* x = bottom[0]->cpu_data();
  Dtype* y = top[0]->mutable_cpu_data();
  for (int i = 0; i < top[0]->count(); ++i) {
    y[i] = x[faceops::fork::flip_source(i, height_, width_, flip_height_,
        flip_width_)];
  }
}

template <typename Dtype>
void FlipLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const Dtype* dy = top[0]->cpu_diff();
  Dtype* dx = bottom[0]->mutable_cpu_diff();
  for (int i = 0; i < bottom[0]->count(); ++i) {
    dx[i] = dy[faceops::fork::flip_source(i, height_, width_, flip_height_,
        flip_width_)];
  }
}

#ifdef CPU_ONLY
STUB_GPU(FlipLayer);
#endif

INSTANTIATE_CLASS(FlipLayer);
REGISTER_LAYER_CLASS(Flip);

}  // namespace caffe
