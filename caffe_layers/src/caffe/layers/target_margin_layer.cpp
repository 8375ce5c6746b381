#include <vector>

#include "faceops/margin_softmax.h"

#include "caffe/layers/target_margin_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void TargetMarginLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  ReadMargins();
  CHECK_GT(m1_, 0) << this->type() << " layer '" << this->layer_param_.name()
      << "': the multiplicative angular margin m1 must be > 0";
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_GE(bottom[0]->num_axes(), 2) << this->type() << " layer '"
      << this->layer_param_.name() << "': bottom[0] (cosines) has shape "
      << bottom[0]->shape_string() << "; expected (N x C)";
  num_ = bottom[0]->shape(0);
  num_classes_ = bottom[0]->count(1);
  CHECK_EQ(bottom[1]->count(), num_) << this->type() << " layer '"
      << this->layer_param_.name() << "': bottom[1] (label) holds "
      << bottom[1]->count() << " values; expected one per row of "
      << "bottom[0] (cosines), " << num_;
  in_place_ = top[0] == bottom[0];
  if (in_place_) {
    cosine_.ReshapeLike(*bottom[0]);
  } else {
    top[0]->ReshapeLike(*bottom[0]);
  }
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  if (!Applies()) {
    if (!in_place_) top[0]->CopyFrom(*bottom[0]);
    return;
  }
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  if (in_place_) cosine_.CopyFrom(*bottom[0]);
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::target_margin_forward<Dtype>(
        Cosines(*bottom[0]).cpu_data(),
        static_cast<const int64_t*>(labels_->cpu_data()), num_, num_classes_,
        m1_, m2_, m3_, top[0]->mutable_cpu_data());
  });
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) return;
  if (!Applies()) {
    if (!in_place_) bottom[0]->CopyFrom(*top[0], true);
    return;
  }
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::target_margin_backward<Dtype>(
        Cosines(*bottom[0]).cpu_data(),
        static_cast<const int64_t*>(labels_->cpu_data()), top[0]->cpu_diff(),
        num_, num_classes_, m1_, m2_, m3_, bottom[0]->mutable_cpu_diff());
  });
}

template <typename Dtype>
void CombinedMarginLayer<Dtype>::ReadMargins() {
  const CombinedMarginParameter& param =
      this->layer_param_.combined_margin_param();
  this->m1_ = param.m1();
  this->m2_ = param.m2();
  this->m3_ = param.m3();
  this->transform_test_ = param.transform_test();
}

template <typename Dtype>
void CosinAddmLayer<Dtype>::ReadMargins() {
  const CosinAddmParameter& param = this->layer_param_.cosin_add_m_param();
  this->m1_ = 1;
  this->m2_ = param.m();
  this->m3_ = 0;
  this->transform_test_ = param.transform_test();
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::ReadMargins() {
  const LabelSpecificAddParameter& param =
      this->layer_param_.label_specific_add_param();
  CHECK(!param.has_bias_base()) << "LabelSpecificAdd layer '"
      << this->layer_param_.name() << "': label_specific_add_param.bias_base "
      << "anneals the bias (with bias_gamma, bias_power, bias_min, bias_max, "
      << "iteration), which faceops does not support; give a fixed bias "
      << "instead (e.g. bias: -0.35) and remove bias_base";
  this->m1_ = 1;
  this->m2_ = 0;
  this->m3_ = -param.bias();
  this->transform_test_ = param.transform_test();
}

#ifdef CPU_ONLY
STUB_GPU(TargetMarginLayer);
#endif

INSTANTIATE_CLASS(TargetMarginLayer);
INSTANTIATE_CLASS(CombinedMarginLayer);
INSTANTIATE_CLASS(CosinAddmLayer);
INSTANTIATE_CLASS(LabelSpecificAddLayer);
REGISTER_LAYER_CLASS(CombinedMargin);
REGISTER_LAYER_CLASS(CosinAddm);
REGISTER_LAYER_CLASS(LabelSpecificAdd);

}  // namespace caffe
