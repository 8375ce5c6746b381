#include <cfloat>
#include <cmath>
#include <vector>

#include "faceops/fork_margins.h"
#include "faceops/normface.h"

#include "caffe/filler.hpp"
#include "caffe/layers/global_lse_margin_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"

namespace caffe {

template <typename Dtype>
void GlobalLSEMarginLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  feature_norms_ = bottom.size() == 3;
  const ScaleParameter& param = this->layer_param_.scale_param();
  min_scale_ = param.has_min_value() ? Dtype(param.min_value()) : Dtype(0);
  max_scale_ = param.has_max_value() ? Dtype(param.max_value()) : Dtype(FLT_MAX);
  CHECK(min_scale_ <= max_scale_) << "GlobalLSEMargin layer '"
      << this->layer_param_.name() << "': scale_param.min_value (" << min_scale_
      << ") is above max_value (" << max_scale_ << ")";
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(2);
    this->blobs_[0].reset(new Blob<Dtype>(vector<int>(1, 1)));  // s
    if (param.has_filler()) {
      shared_ptr<Filler<Dtype> > filler(GetFiller<Dtype>(param.filler()));
      filler->Fill(this->blobs_[0].get());
    } else {
      this->blobs_[0]->mutable_cpu_data()[0] = Dtype(30);
    }
    this->blobs_[1].reset(new Blob<Dtype>(vector<int>(1, 1)));  // m
    this->blobs_[1]->mutable_cpu_data()[0] = Dtype(0);
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
  // The fork's learning rates when the prototxt gives none: s learned (not
  // with feature norms, which replace it), m set by the forward pass only.
  if (this->layer_param_.param_size() == 0) {
    ParamSpec* spec = this->layer_param_.add_param();
    spec->set_lr_mult(feature_norms_ ? 0.f : 1.f);
    spec->set_decay_mult(0.f);
  }
  if (this->layer_param_.param_size() == 1) {
    ParamSpec* spec = this->layer_param_.add_param();
    spec->set_lr_mult(0.f);
    spec->set_decay_mult(0.f);
  }
}

template <typename Dtype>
void GlobalLSEMarginLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const string layer = "GlobalLSEMargin layer '" + this->layer_param_.name() + "': ";
  CHECK_NE(top[0], bottom[0]) << layer << "in-place use (top = bottom) is not "
      << "supported; give the top another name";
  num_ = bottom[0]->shape(0);
  CHECK_GT(num_, 0) << layer << "bottom[0] (cosines) has no samples";
  num_classes_ = bottom[0]->count() / num_;
  CHECK_GE(num_classes_, 2) << layer << "bottom[0] has " << num_classes_
      << " class per sample; expected at least 2 (the margin compares the "
      << "target with the others)";
  CHECK_EQ(bottom[1]->count(), num_) << layer << "bottom[1] (label) has "
      << bottom[1]->count() << " values; expected one per sample, N = " << num_;
  if (feature_norms_) {
    CHECK_EQ(bottom[2]->count(), num_) << layer << "bottom[2] (feature norms) "
        << "has " << bottom[2]->count() << " values; expected one per sample, "
        << "N = " << num_;
  }
  top[0]->ReshapeLike(*bottom[0]);
  if (top.size() == 2) top[1]->Reshape(vector<int>(1, 5));
  margins_.resize(num_);
}

template <typename Dtype>
Dtype GlobalLSEMarginLayer<Dtype>::SampleScale(
    const vector<Blob<Dtype>*>& bottom, int i) const {
  return feature_norms_ ? bottom[2]->cpu_data()[i] : this->blobs_[0]->cpu_data()[0];
}

template <typename Dtype>
void GlobalLSEMarginLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  const int64_t* labels = static_cast<const int64_t*>(labels_->cpu_data());
  Dtype* s = this->blobs_[0]->mutable_cpu_data();
  s[0] = faceops::normface::clamp_scale(s[0], true, min_scale_, true, max_scale_);
  const Dtype* x = bottom[0]->cpu_data();
  double scale_sum = 0, target_sum = 0, lse_sum = 0, max_negative_sum = 0;
  for (int i = 0; i < num_; ++i) {
    const Dtype* row = x + i * num_classes_;
    const double scale = SampleScale(bottom, i);
    const double lse = faceops::fork::global_lse_negatives(row, num_classes_,
        labels[i], scale);
    margins_[i] = row[labels[i]] - lse;
    scale_sum += scale;
    target_sum += row[labels[i]];
    lse_sum += lse;
    max_negative_sum += faceops::fork::global_lse_max_negative(row,
        num_classes_, labels[i]);
  }
  Dtype* m = this->blobs_[1]->mutable_cpu_data();
  m[0] = faceops::fork::global_lse_margin_update(margins_.data(), num_, m[0]);
  Dtype* out = top[0]->mutable_cpu_data();
  for (int i = 0; i < num_; ++i) {
    const Dtype scale = SampleScale(bottom, i);
    for (int j = 0; j < num_classes_; ++j) {
      const int k = i * num_classes_ + j;
      out[k] = scale * faceops::fork::global_lse_cosine(x[k], j == labels[i], m[0]);
    }
  }
  if (top.size() == 2) {
    Dtype* statistics = top[1]->mutable_cpu_data();
    statistics[0] = scale_sum / num_;
    statistics[1] = target_sum / num_;
    statistics[2] = lse_sum / num_;
    statistics[3] = max_negative_sum / num_;
    statistics[4] = m[0];
  }
}

template <typename Dtype>
void GlobalLSEMarginLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  const int64_t* labels = static_cast<const int64_t*>(labels_->cpu_data());
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* top_diff = top[0]->cpu_diff();
  const Dtype m = this->blobs_[1]->cpu_data()[0];
  const bool scale_diff = feature_norms_ ? propagate_down[2]
                                         : this->param_propagate_down(0);
  Dtype* bottom_diff = propagate_down[0] ? bottom[0]->mutable_cpu_diff() : NULL;
  Dtype s_diff = 0;
  for (int i = 0; i < num_; ++i) {
    const Dtype scale = SampleScale(bottom, i);
    Dtype row_diff = 0;  // d top_i / d s_i is top_i / s_i
    for (int j = 0; j < num_classes_; ++j) {
      const int k = i * num_classes_ + j;
      if (bottom_diff) bottom_diff[k] = scale * top_diff[k];
      row_diff += top_diff[k] * faceops::fork::global_lse_cosine(x[k], j == labels[i], m);
    }
    if (feature_norms_ && scale_diff) bottom[2]->mutable_cpu_diff()[i] = row_diff;
    s_diff += row_diff;
  }
  if (!feature_norms_ && scale_diff) this->blobs_[0]->mutable_cpu_diff()[0] += s_diff;
}

INSTANTIATE_CLASS(GlobalLSEMarginLayer);
REGISTER_LAYER_CLASS(GlobalLSEMargin);

}  // namespace caffe
