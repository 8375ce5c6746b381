#include <vector>

#include "faceops/center_loss.h"

#include "caffe/filler.hpp"
#include "caffe/layers/center_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void CenterLossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const CenterLossParameter& param = this->layer_param_.center_loss_param();
  CHECK(this->layer_param_.has_center_loss_param() && param.num_output() > 0)
      << "CenterLoss layer '" << this->layer_param_.name()
      << "': expected center_loss_param { num_output: <number of classes> }";
  num_classes_ = param.num_output();
  axis_ = bottom[0]->CanonicalAxisIndex(param.axis());
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(1);
    vector<int> center_shape(2);
    center_shape[0] = num_classes_;
    center_shape[1] = bottom[0]->count(axis_);
    this->blobs_[0].reset(new Blob<Dtype>(center_shape));
    shared_ptr<Filler<Dtype> > center_filler(
        GetFiller<Dtype>(param.center_filler()));
    center_filler->Fill(this->blobs_[0].get());
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
}

template <typename Dtype>
void CenterLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  num_ = bottom[0]->count(0, axis_);
  dim_ = bottom[0]->count(axis_);
  CHECK_EQ(dim_, this->blobs_[0]->shape(1)) << "CenterLoss layer '"
      << this->layer_param_.name() << "': bottom[0] (features) has " << dim_
      << " values per sample from axis " << axis_ << "; expected "
      << this->blobs_[0]->shape(1) << ", the centers' width";
  CHECK_EQ(bottom[1]->count(), num_) << "CenterLoss layer '"
      << this->layer_param_.name() << "': bottom[1] (label) holds "
      << bottom[1]->count() << " values; expected one per sample of "
      << "bottom[0] (features), " << num_;
  top[0]->Reshape(vector<int>());
  feature_diff_.ReshapeLike(*bottom[0]);
}

template <typename Dtype>
void CenterLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::center_loss<Dtype>(bottom[0]->cpu_data(),
        static_cast<const int64_t*>(labels_->cpu_data()),
        this->blobs_[0]->cpu_data(), num_, dim_, num_classes_,
        top[0]->mutable_cpu_data(), feature_diff_.mutable_cpu_data(), NULL);
  });
}

template <typename Dtype>
void CenterLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (this->param_propagate_down_[0]) {
    FaceopsCall(this->layer_param_, [&] {
      faceops::cpu::center_update_direction<Dtype>(bottom[0]->cpu_data(),
          static_cast<const int64_t*>(labels_->cpu_data()),
          this->blobs_[0]->cpu_data(), num_, dim_, num_classes_,
          this->blobs_[0]->mutable_cpu_diff());
    });
  }
  if (propagate_down[0]) {
    caffe_cpu_scale(feature_diff_.count(), top[0]->cpu_diff()[0],
        feature_diff_.cpu_data(), bottom[0]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(CenterLossLayer);
#endif

INSTANTIATE_CLASS(CenterLossLayer);
REGISTER_LAYER_CLASS(CenterLoss);

}  // namespace caffe
