#include <vector>

#include "faceops/margin_softmax.h"

#include "caffe/layers/normalize_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void NormalizeLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const NormalizeParameter& param = this->layer_param_.normalize_param();
  CHECK(param.normalize_type() == "L2") << "Normalize layer '"
      << this->layer_param_.name() << "': normalize_param.normalize_type "
      << "must be \"L2\"; faceops does not support \""
      << param.normalize_type() << "\"";
  CHECK(!param.fix_gradient()) << "Normalize layer '"
      << this->layer_param_.name() << "': normalize_param.fix_gradient "
      << "(the gradient without the division by the norm) is not supported";
  bp_norm_ = param.bp_norm() && top.size() == 2;
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_NE(top[0], bottom[0]) << "Normalize layer '"
      << this->layer_param_.name() << "': in-place use (top = bottom) is not "
      << "supported; give the top another name";
  CHECK(bottom[0]->num_axes() >= 2 && bottom[0]->count(2) == 1)
      << "Normalize layer '" << this->layer_param_.name() << "': bottom[0] "
      << "(features) has shape " << bottom[0]->shape_string() << "; expected "
      << "one vector per sample, (N x D) or (N x D x 1 x 1)";
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->shape(1);
  top[0]->ReshapeLike(*bottom[0]);
  vector<int> norm_shape = bottom[0]->shape();
  norm_shape[1] = 1;
  Norms(top)->Reshape(norm_shape);
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::normalize_rows<Dtype>(bottom[0]->cpu_data(), num_, dim_,
        top[0]->mutable_cpu_data(), Norms(top)->mutable_cpu_data());
  });
}

template <typename Dtype>
void NormalizeLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::normalize_rows_backward<Dtype>(top[0]->cpu_data(),
        Norms(top)->cpu_data(), top[0]->cpu_diff(), num_, dim_,
        bottom[0]->mutable_cpu_diff());
  });
  if (bp_norm_) {
    // d||x_i|| / dx_i is the normalised row itself.
    for (int i = 0; i < num_; ++i) {
      caffe_axpy(dim_, top[1]->cpu_diff()[i], top[0]->cpu_data() + i * dim_,
          bottom[0]->mutable_cpu_diff() + i * dim_);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(NormalizeLayer);
#endif

INSTANTIATE_CLASS(NormalizeLayer);
REGISTER_LAYER_CLASS(Normalize);

}  // namespace caffe
