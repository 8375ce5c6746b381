#include <cmath>
#include <cstdint>
#include <vector>

#include "faceops/normface.h"

#include "caffe/layers/general_triplet_loss_layer.hpp"

namespace caffe {

namespace {
template <typename Dtype>
faceops::normface::TripletParams<Dtype> TripletParamsOf(const GeneralTripletParameter& p) {
  faceops::normface::TripletParams<Dtype> t;
  t.margin = p.margin();
  t.add_center_loss = p.add_center_loss();
  t.hardest_only = p.hardest_only();
  t.positive_first = p.positive_first();
  t.positive_upper_bound = p.positive_upper_bound();
  t.positive_weight = p.positive_weight();
  t.negative_weight = p.negative_weight();
  return t;
}
}  // namespace

template <typename Dtype>
void GeneralTripletLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const GeneralTripletParameter& p = this->layer_param_.general_triplet_loss_param();
  const float values[] = {p.margin(), p.positive_upper_bound(), p.positive_weight(),
      p.negative_weight()};
  for (float v : values) {
    CHECK(std::isfinite(v)) << "GeneralTripletLoss layer '" << this->layer_param_.name()
        << "': general_triplet_loss_param has a non-finite value (" << v << ")";
  }
}

template <typename Dtype>
void GeneralTripletLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::Reshape(bottom, top);
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  CHECK_GE(dim_, 2) << "GeneralTripletLoss layer '" << this->layer_param_.name()
      << "': bottom[0] must be samples x classes with at least 2 classes";
  CHECK_EQ(bottom[1]->count(), num_) << "GeneralTripletLoss layer '"
      << this->layer_param_.name() << "': one label per sample expected";
  if (top.size() == 2) top[1]->Reshape(vector<int>(1, 2));
  terms_.ReshapeLike(*bottom[0]);
  labels_.resize(num_);
  hardest_.resize(num_);
}

template <typename Dtype>
void GeneralTripletLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const Dtype* label = bottom[1]->cpu_data();
  for (int i = 0; i < num_; ++i) {
    const int64_t y = static_cast<int64_t>(label[i]);
    CHECK(Dtype(y) == label[i] && y >= 0 && y < dim_) << "GeneralTripletLoss layer '"
        << this->layer_param_.name() << "': label " << label[i] << " of sample " << i
        << " is not an integer in [0, " << dim_ << ")";
    labels_[i] = y;
  }
  Dtype positive_sum, negative_sum;
  top[0]->mutable_cpu_data()[0] = faceops::normface::general_triplet_forward(
      bottom[0]->cpu_data(), labels_.data(), num_, dim_,
      TripletParamsOf<Dtype>(this->layer_param_.general_triplet_loss_param()),
      terms_.mutable_cpu_data(), hardest_.data(), &positive_sum, &negative_sum);
  if (top.size() == 2) {
    top[1]->mutable_cpu_data()[0] = positive_sum / num_;
    top[1]->mutable_cpu_data()[1] = negative_sum / num_ / (dim_ - 1);
  }
}

template <typename Dtype>
void GeneralTripletLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  CHECK(!propagate_down[1]) << "GeneralTripletLoss layer '"
      << this->layer_param_.name() << "' cannot back-propagate to the labels";
  if (!propagate_down[0]) return;
  faceops::normface::general_triplet_backward(bottom[0]->cpu_data(), labels_.data(), num_,
      dim_, TripletParamsOf<Dtype>(this->layer_param_.general_triplet_loss_param()),
      terms_.cpu_data(), hardest_.data(), top[0]->cpu_diff()[0],
      bottom[0]->mutable_cpu_diff());
}

INSTANTIATE_CLASS(GeneralTripletLossLayer);
REGISTER_LAYER_CLASS(GeneralTripletLoss);

}  // namespace caffe
