#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/norm_l2_layer.hpp"

namespace caffe {

template <typename Dtype>
void NormL2Layer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_NE(top[0], bottom[0]) << "NormL2 layer '" << this->layer_param_.name()
      << "': in-place use (top = bottom) is not supported; give the top "
      << "another name";
  CHECK_GE(bottom[0]->num_axes(), 1) << "NormL2 layer '"
      << this->layer_param_.name() << "': bottom[0] (features) has no axes";
  num_ = bottom[0]->shape(0);
  dim_ = num_ > 0 ? bottom[0]->count() / num_ : 0;
  top[0]->ReshapeLike(*bottom[0]);
}

template <typename Dtype>
void NormL2Layer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype* x = bottom[0]->cpu_data();
  Dtype* y = top[0]->mutable_cpu_data();
  for (int i = 0; i < num_; ++i) {
    faceops::fork::norml2_row(x + i * dim_, dim_, y + i * dim_);
  }
}

template <typename Dtype>
void NormL2Layer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* y = top[0]->cpu_data();
  const Dtype* dy = top[0]->cpu_diff();
  Dtype* dx = bottom[0]->mutable_cpu_diff();
  for (int i = 0; i < num_; ++i) {
    faceops::fork::norml2_row_backward(x + i * dim_, y + i * dim_,
        dy + i * dim_, dim_, dx + i * dim_);
  }
}

#ifdef CPU_ONLY
STUB_GPU(NormL2Layer);
#endif

INSTANTIATE_CLASS(NormL2Layer);
REGISTER_LAYER_CLASS(NormL2);

}  // namespace caffe
