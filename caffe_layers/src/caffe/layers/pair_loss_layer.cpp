#include <vector>

#include "faceops/pair_loss.h"

#include "caffe/layers/pair_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void PairLossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(1);
    this->blobs_[0].reset(new Blob<Dtype>(vector<int>(1, 1)));
    this->blobs_[0]->mutable_cpu_data()[0] =
        this->layer_param_.pair_loss_param().theta();
  }
  CHECK_EQ(this->blobs_[0]->count(), 1) << "PairLoss layer '"
      << this->layer_param_.name() << "': expected one threshold theta, got "
      << this->blobs_[0]->shape_string();
  this->param_propagate_down_.resize(this->blobs_.size(), true);
  theta_diff_.Reshape(vector<int>(1, 1));
}

template <typename Dtype>
void PairLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  CHECK_EQ(bottom[1]->count(), num_) << "PairLoss layer '"
      << this->layer_param_.name() << "': bottom[1] (label) holds "
      << bottom[1]->count() << " values; expected one per row of "
      << "bottom[0] (features), " << num_;
  top[0]->Reshape(vector<int>());
  feature_diff_.ReshapeLike(*bottom[0]);
}

template <typename Dtype>
void PairLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], 0, &labels_);
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::pair_loss<Dtype>(bottom[0]->cpu_data(),
        static_cast<const int64_t*>(labels_->cpu_data()), num_, dim_,
        this->blobs_[0]->cpu_data(), top[0]->mutable_cpu_data(),
        feature_diff_.mutable_cpu_data(), theta_diff_.mutable_cpu_data());
  });
}

template <typename Dtype>
void PairLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  const Dtype top_diff = top[0]->cpu_diff()[0];
  if (this->param_propagate_down_[0]) {
    caffe_axpy(1, top_diff, theta_diff_.cpu_data(),
        this->blobs_[0]->mutable_cpu_diff());
  }
  if (propagate_down[0]) {
    caffe_cpu_scale(feature_diff_.count(), top_diff,
        feature_diff_.cpu_data(), bottom[0]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(PairLossLayer);
#endif

INSTANTIATE_CLASS(PairLossLayer);
REGISTER_LAYER_CLASS(PairLoss);

}  // namespace caffe
