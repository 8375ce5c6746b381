#include <vector>

#include "faceops/fork_margins.h"
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
  if (!in_place_) caffe_copy(top[0]->count(), bottom[0]->cpu_data(),
      top[0]->mutable_cpu_data());
  MarginForward_cpu(Cosines(*bottom[0]).cpu_data(),
      static_cast<const int64_t*>(labels_->cpu_data()),
      top[0]->mutable_cpu_data());
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
  MarginBackward_cpu(Cosines(*bottom[0]).cpu_data(),
      static_cast<const int64_t*>(labels_->cpu_data()), top[0]->cpu_diff(),
      bottom[0]->mutable_cpu_diff());
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::MarginForward_cpu(const Dtype* cosine,
    const int64_t* labels, Dtype* top) {
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::target_margin_forward<Dtype>(cosine, labels, num_,
        num_classes_, m1_, m2_, m3_, top);
  });
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::MarginBackward_cpu(const Dtype* cosine,
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) {
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::target_margin_backward<Dtype>(cosine, labels, top_diff,
        num_, num_classes_, m1_, m2_, m3_, bottom_diff);
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

// The fork's CPU code: only the target element changes, the derivative is
// taken from the cosine before any clamping.
template <typename Dtype>
void CosinAddmLayer<Dtype>::MarginForward_cpu(const Dtype* cosine,
    const int64_t* labels, Dtype* top) {
  for (int i = 0; i < this->num_; ++i) {
    const int target = i * this->num_classes_ + labels[i];
    top[target] = faceops::fork::cosin_addm_forward(cosine[target], this->m2_);
  }
}

template <typename Dtype>
void CosinAddmLayer<Dtype>::MarginBackward_cpu(const Dtype* cosine,
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) {
  const int count = this->num_ * this->num_classes_;
  if (bottom_diff != top_diff) caffe_copy(count, top_diff, bottom_diff);
  for (int i = 0; i < this->num_; ++i) {
    const int target = i * this->num_classes_ + labels[i];
    bottom_diff[target] = top_diff[target] *
        faceops::fork::cosin_addm_derivative(cosine[target], this->m2_);
  }
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::ReadMargins() {
  const LabelSpecificAddParameter& param =
      this->layer_param_.label_specific_add_param();
  this->m1_ = 1;
  this->m2_ = 0;
  this->m3_ = 0;
  this->transform_test_ = param.transform_test();
  bias_ = param.bias();
  iteration_ = param.iteration();
  if (param.has_bias_base()) {
    CHECK_LE(param.bias_min(), param.bias_max()) << "LabelSpecificAdd layer '"
        << this->layer_param_.name() << "': label_specific_add_param.bias_min ("
        << param.bias_min() << ") must be <= bias_max (" << param.bias_max()
        << ")";
  }
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  TargetMarginLayer<Dtype>::Reshape(bottom, top);
  if (top.size() == 2) top[1]->Reshape(vector<int>(1, 1));
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::UpdateBias(
    const vector<Blob<Dtype>*>& top) {
  const LabelSpecificAddParameter& param =
      this->layer_param_.label_specific_add_param();
  if (this->Applies() && param.has_bias_base()) {
    bias_ = faceops::fork::annealed_bias<Dtype>(param.bias_base(),
        param.bias_gamma(), param.bias_power(), param.bias_min(),
        param.bias_max(), iteration_);
    ++iteration_;
  }
  if (top.size() == 2) top[1]->mutable_cpu_data()[0] = bias_;
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  UpdateBias(top);
  TargetMarginLayer<Dtype>::Forward_cpu(bottom, top);
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::MarginForward_cpu(const Dtype* cosine,
    const int64_t* labels, Dtype* top) {
  for (int i = 0; i < this->num_; ++i) {
    const int target = i * this->num_classes_ + labels[i];
    top[target] = faceops::fork::label_specific_add(cosine[target], bias_);
  }
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::MarginBackward_cpu(const Dtype* cosine,
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) {
  if (bottom_diff != top_diff) {
    caffe_copy(this->num_ * this->num_classes_, top_diff, bottom_diff);
  }
}

#ifdef CPU_ONLY
STUB_GPU(TargetMarginLayer);
STUB_GPU_FORWARD(LabelSpecificAddLayer, Forward);
// The margin hooks' GPU variants, called only from the stubbed GPU passes.
#define FACEOPS_STUB_MARGIN_GPU(classname) \
template <typename Dtype> \
void classname<Dtype>::MarginForward_gpu(const Dtype* cosine, \
    const int64_t* labels, Dtype* top) { NO_GPU; } \
template <typename Dtype> \
void classname<Dtype>::MarginBackward_gpu(const Dtype* cosine, \
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) { \
  NO_GPU; \
}
FACEOPS_STUB_MARGIN_GPU(TargetMarginLayer)
FACEOPS_STUB_MARGIN_GPU(CosinAddmLayer)
FACEOPS_STUB_MARGIN_GPU(LabelSpecificAddLayer)
#undef FACEOPS_STUB_MARGIN_GPU
#endif

INSTANTIATE_CLASS(TargetMarginLayer);
INSTANTIATE_CLASS(CombinedMarginLayer);
INSTANTIATE_CLASS(CosinAddmLayer);
INSTANTIATE_CLASS(LabelSpecificAddLayer);
REGISTER_LAYER_CLASS(CombinedMargin);
REGISTER_LAYER_CLASS(CosinAddm);
REGISTER_LAYER_CLASS(LabelSpecificAdd);

}  // namespace caffe
