#include <cmath>
#include <cstdint>
#include <vector>

#include "faceops/normface.h"

#include "caffe/layers/general_contrastive_loss_layer.hpp"

namespace caffe {

namespace {
template <typename Dtype>
faceops::normface::ContrastiveParams<Dtype> ContrastiveParamsOf(
    const GeneralContrastiveParameter& p, Dtype negative_margin) {
  faceops::normface::ContrastiveParams<Dtype> c;
  c.positive_margin = p.positive_margin();
  c.negative_margin = negative_margin;
  c.positive_weight = p.positive_weight();
  c.negative_weight = p.negative_weight();
  c.normalize_negative_set = p.has_normalize_negative();
  c.normalize_negative = p.normalize_negative();
  c.positive_outlier_thresh = p.positive_outlier_thresh();
  c.max_negative_only = p.max_negative_only();
  c.max_positive_only = p.max_positive_only();
  c.positive_first = p.positive_first();
  c.positive_upper_bound = p.positive_upper_bound();
  c.exp_negative_weight = p.exp_negative_weight();
  return c;
}
}  // namespace

template <typename Dtype>
void GeneralContrastiveLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const GeneralContrastiveParameter& p = this->layer_param_.general_contrastive_loss_param();
  const float values[] = {p.positive_margin(), p.negative_margin(), p.positive_weight(),
      p.negative_weight(), p.normalize_negative(), p.positive_outlier_thresh(),
      p.positive_upper_bound(), p.max_negative_margin()};
  for (float v : values) {
    CHECK(std::isfinite(v)) << "GeneralContrastiveLoss layer '" << this->layer_param_.name()
        << "': general_contrastive_loss_param has a non-finite value (" << v << ")";
  }
  CHECK(!p.has_normalize_negative() || p.normalize_negative() > 0)
      << "GeneralContrastiveLoss layer '" << this->layer_param_.name()
      << "': normalize_negative must be > 0 (it divides), got " << p.normalize_negative();
}

template <typename Dtype>
void GeneralContrastiveLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  CHECK_GE(dim_, 2) << "GeneralContrastiveLoss layer '" << this->layer_param_.name()
      << "': bottom[0] must be samples x classes with at least 2 classes";
  CHECK_EQ(bottom[1]->count(), num_) << "GeneralContrastiveLoss layer '"
      << this->layer_param_.name() << "': one label per sample expected";
  if (top.size() == 2) {
    top[1]->Reshape(vector<int>(1,
        this->layer_param_.general_contrastive_loss_param().add_intra_mae() ? 3 : 2));
  }
  terms_.ReshapeLike(*bottom[0]);
  labels_.resize(num_);
  max_negative_.resize(num_);
}

template <typename Dtype>
void GeneralContrastiveLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const GeneralContrastiveParameter& p = this->layer_param_.general_contrastive_loss_param();
  const Dtype* label = bottom[1]->cpu_data();
  for (int i = 0; i < num_; ++i) {
    const int64_t y = static_cast<int64_t>(label[i]);
    CHECK(Dtype(y) == label[i] && y >= 0 && y < dim_) << "GeneralContrastiveLoss layer '"
        << this->layer_param_.name() << "': label " << label[i] << " of sample " << i
        << " is not an integer in [0, " << dim_ << ")";
    labels_[i] = y;
  }
  negative_margin_ = p.negative_margin() + (p.add_intra_mae() ? intra_mae_ : Dtype(0));
  Dtype positive_sum, negative_sum;
  const Dtype loss = faceops::normface::general_contrastive_forward(bottom[0]->cpu_data(),
      labels_.data(), num_, dim_, ContrastiveParamsOf(p, negative_margin_),
      terms_.mutable_cpu_data(), max_negative_.data(), &max_positive_, &positive_sum,
      &negative_sum);
  intra_mae_ = faceops::normface::intra_mae_update(intra_mae_, positive_sum, num_,
      Dtype(p.max_negative_margin()));
  top[0]->mutable_cpu_data()[0] = loss;
  if (top.size() == 2) {
    Dtype* distances = top[1]->mutable_cpu_data();
    distances[0] = positive_sum / num_;
    distances[1] = negative_sum / num_ / (dim_ - 1);
    if (p.add_intra_mae()) distances[2] = intra_mae_;
  }
}

template <typename Dtype>
void GeneralContrastiveLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  CHECK(!propagate_down[1]) << "GeneralContrastiveLoss layer '"
      << this->layer_param_.name() << "' cannot back-propagate to the labels";
  if (!propagate_down[0]) return;
  const GeneralContrastiveParameter& p = this->layer_param_.general_contrastive_loss_param();
  faceops::normface::general_contrastive_backward(bottom[0]->cpu_data(), labels_.data(),
      num_, dim_, ContrastiveParamsOf(p, negative_margin_), max_negative_.data(),
      max_positive_, top[0]->cpu_diff()[0],
      bottom[0]->mutable_cpu_diff());
}

INSTANTIATE_CLASS(GeneralContrastiveLossLayer);
REGISTER_LAYER_CLASS(GeneralContrastiveLoss);

}  // namespace caffe
