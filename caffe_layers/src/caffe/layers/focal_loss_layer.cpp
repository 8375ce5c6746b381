#include <algorithm>
#include <cmath>
#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layer_factory.hpp"
#include "caffe/layers/focal_loss_layer.hpp"
#include "caffe/util/faceops_caffe_fields.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void FocalLossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const FocalLossParameter& param = this->layer_param_.focal_loss_param();
  CHECK(param.type() == FocalLossParameter_Type_ORIGIN) << "FocalLoss layer '"
      << this->layer_param_.name() << "': focal_loss_param.type "
      << FocalLossParameter_Type_Name(param.type()) << " is not supported "
      << "(the fork parses it but computes ORIGIN); use type: ORIGIN";
  CHECK(param.alpha() > 0 && std::isfinite(param.alpha()))
      << "FocalLoss layer '" << this->layer_param_.name()
      << "': focal_loss_param.alpha is " << param.alpha()
      << "; expected a finite number > 0";
  CHECK(param.gamma() >= 0 && std::isfinite(param.gamma()))
      << "FocalLoss layer '" << this->layer_param_.name()
      << "': focal_loss_param.gamma is " << param.gamma()
      << "; expected a finite number >= 0";
  alpha_ = param.alpha();
  gamma_ = param.gamma();
  FaceopsCheckSoftmaxNormalizeType(this->layer_param_);

  LayerParameter softmax_param(this->layer_param_);
  softmax_param.set_type("Softmax");
  softmax_layer_ = LayerRegistry<Dtype>::CreateLayer(softmax_param);
  softmax_bottom_vec_.assign(1, bottom[0]);
  softmax_top_vec_.assign(1, &prob_);
  softmax_layer_->SetUp(softmax_bottom_vec_, softmax_top_vec_);

  has_ignore_label_ = this->layer_param_.loss_param().has_ignore_label();
  if (has_ignore_label_) {
    ignore_label_ = this->layer_param_.loss_param().ignore_label();
  }
  if (!this->layer_param_.loss_param().has_normalization() &&
      this->layer_param_.loss_param().has_normalize()) {
    normalization_ = this->layer_param_.loss_param().normalize() ?
        LossParameter_NormalizationMode_VALID :
        LossParameter_NormalizationMode_BATCH_SIZE;
  } else {
    normalization_ = this->layer_param_.loss_param().normalization();
  }
}

template <typename Dtype>
void FocalLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  softmax_layer_->Reshape(softmax_bottom_vec_, softmax_top_vec_);
  softmax_axis_ =
      bottom[0]->CanonicalAxisIndex(this->layer_param_.softmax_param().axis());
  outer_num_ = bottom[0]->count(0, softmax_axis_);
  inner_num_ = bottom[0]->count(softmax_axis_ + 1);
  CHECK_EQ(outer_num_ * inner_num_, bottom[1]->count()) << "FocalLoss layer '"
      << this->layer_param_.name() << "': bottom[1] (label) has "
      << bottom[1]->count() << " values; expected one per logit vector, "
      << outer_num_ * inner_num_ << " for bottom[0] of shape "
      << bottom[0]->shape_string() << " (class axis " << softmax_axis_ << ")";
  if (top.size() >= 2) top[1]->ReshapeLike(*bottom[0]);
  sample_loss_.Reshape(vector<int>(1, outer_num_ * inner_num_));
  sample_valid_.Reshape(vector<int>(1, outer_num_ * inner_num_));
}

template <typename Dtype>
Dtype FocalLossLayer<Dtype>::Normalizer(int valid_count) const {
  Dtype normalizer;
  switch (normalization_) {
    case LossParameter_NormalizationMode_FULL:
      normalizer = Dtype(outer_num_ * inner_num_);
      break;
    case LossParameter_NormalizationMode_VALID:
      normalizer = Dtype(valid_count);
      break;
    case LossParameter_NormalizationMode_BATCH_SIZE:
      normalizer = Dtype(outer_num_);
      break;
    case LossParameter_NormalizationMode_NONE:
      normalizer = Dtype(1);
      break;
    default:
      LOG(FATAL) << "FocalLoss layer '" << this->layer_param_.name()
          << "': unknown normalization mode "
          << LossParameter_NormalizationMode_Name(normalization_);
  }
  // As SoftmaxWithLoss: no NaN when every sample is ignored.
  return std::max(Dtype(1.0), normalizer);
}

template <typename Dtype>
void FocalLossLayer<Dtype>::CheckLabels(const Blob<Dtype>& label) const {
  const Dtype* values = label.cpu_data();
  const int channels = prob_.shape(softmax_axis_);
  for (int i = 0; i < label.count(); ++i) {
    if (has_ignore_label_ && values[i] == ignore_label_) continue;
    CHECK(values[i] == std::floor(values[i]) && values[i] >= 0 &&
          values[i] < channels) << "FocalLoss layer '"
        << this->layer_param_.name() << "': bottom[1] (label) holds "
        << values[i] << " at index " << i << "; expected class indices in [0, "
        << channels << ")";
  }
}

template <typename Dtype>
void FocalLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CheckLabels(*bottom[1]);
  softmax_layer_->Forward(softmax_bottom_vec_, softmax_top_vec_);
  const Dtype* prob = prob_.cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  const int dim = prob_.count() / outer_num_;
  Dtype loss = 0;
  int valid = 0;
  for (int i = 0; i < outer_num_; ++i) {
    for (int j = 0; j < inner_num_; ++j) {
      const int label_value = static_cast<int>(label[i * inner_num_ + j]);
      if (has_ignore_label_ && label_value == ignore_label_) continue;
      loss += faceops::fork::focal_loss_term(
          prob[i * dim + label_value * inner_num_ + j], alpha_, gamma_);
      ++valid;
    }
  }
  top[0]->mutable_cpu_data()[0] = loss / Normalizer(valid);
  if (top.size() == 2) top[1]->ShareData(prob_);
}

template <typename Dtype>
void FocalLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) return;
  const Dtype* prob = prob_.cpu_data();
  const Dtype* label = bottom[1]->cpu_data();
  Dtype* diff = bottom[0]->mutable_cpu_diff();
  const int dim = prob_.count() / outer_num_;
  const int channels = prob_.shape(softmax_axis_);
  int valid = 0;
  for (int i = 0; i < outer_num_; ++i) {
    for (int j = 0; j < inner_num_; ++j) {
      const int label_value = static_cast<int>(label[i * inner_num_ + j]);
      Dtype* sample = diff + i * dim + j;
      if (has_ignore_label_ && label_value == ignore_label_) {
        for (int c = 0; c < channels; ++c) sample[c * inner_num_] = 0;
        continue;
      }
      const Dtype* p = prob + i * dim + j;
      const Dtype target = p[label_value * inner_num_];
      const Dtype q = faceops::fork::focal_loss_logit_scale(target, alpha_, gamma_);
      for (int c = 0; c < channels; ++c) sample[c * inner_num_] = q * p[c * inner_num_];
      sample[label_value * inner_num_] = q * (target - 1);
      ++valid;
    }
  }
  caffe_scal(prob_.count(), top[0]->cpu_diff()[0] / Normalizer(valid), diff);
}

#ifdef CPU_ONLY
STUB_GPU(FocalLossLayer);
#endif

INSTANTIATE_CLASS(FocalLossLayer);
REGISTER_LAYER_CLASS(FocalLoss);

}  // namespace caffe
