#include <vector>

#include "faceops/margin_softmax.h"

#include "caffe/filler.hpp"
#include "caffe/layers/margin_softmax_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void MarginSoftmaxLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const MarginSoftmaxLossParameter& param =
      this->layer_param_.margin_softmax_loss_param();
  CHECK(this->layer_param_.has_margin_softmax_loss_param() &&
      param.num_output() > 0) << "MarginSoftmaxLoss layer '"
      << this->layer_param_.name() << "': expected margin_softmax_loss_param "
      << "{ num_output: <number of classes> }";
  CHECK_GT(param.s(), 0) << "MarginSoftmaxLoss layer '"
      << this->layer_param_.name() << "': margin_softmax_loss_param.s (the "
      << "logit scale) must be > 0";
  CHECK_GT(param.m1(), 0) << "MarginSoftmaxLoss layer '"
      << this->layer_param_.name() << "': margin_softmax_loss_param.m1 (the "
      << "multiplicative angular margin) must be > 0";
  num_classes_ = param.num_output();
  scale_ = param.s();
  m1_ = param.m1();
  m2_ = param.m2();
  m3_ = param.m3();
  axis_ = bottom[0]->CanonicalAxisIndex(param.axis());
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(1);
    vector<int> weight_shape(2);
    weight_shape[0] = num_classes_;
    weight_shape[1] = bottom[0]->count(axis_);
    this->blobs_[0].reset(new Blob<Dtype>(weight_shape));
    // Without a weight_filler, xavier: the cosine of a zero row (InnerProduct's
    // default filler) has no direction to learn from.
    FillerParameter filler_param;
    filler_param.set_type("xavier");
    if (param.has_weight_filler()) filler_param = param.weight_filler();
    shared_ptr<Filler<Dtype> > weight_filler(GetFiller<Dtype>(filler_param));
    weight_filler->Fill(this->blobs_[0].get());
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
  weight_diff_.ReshapeLike(*this->blobs_[0]);
  diffs_current_ = false;
}

template <typename Dtype>
void MarginSoftmaxLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  num_ = bottom[0]->count(0, axis_);
  dim_ = bottom[0]->count(axis_);
  CHECK_EQ(dim_, this->blobs_[0]->shape(1)) << "MarginSoftmaxLoss layer '"
      << this->layer_param_.name() << "': bottom[0] (features) has " << dim_
      << " values per sample from axis " << axis_ << "; expected "
      << this->blobs_[0]->shape(1) << ", the weight's width";
  CHECK_EQ(bottom[1]->count(), num_) << "MarginSoftmaxLoss layer '"
      << this->layer_param_.name() << "': bottom[1] (label) holds "
      << bottom[1]->count() << " values; expected one per sample of "
      << "bottom[0] (features), " << num_;
  top[0]->Reshape(vector<int>());
  feature_diff_.ReshapeLike(*bottom[0]);
}

// In the TRAIN phase the core computes the diffs with the loss, which costs
// little more than the loss alone; elsewhere Backward recomputes them.
template <typename Dtype>
void MarginSoftmaxLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  diffs_current_ = this->phase_ == TRAIN;
  FaceopsCall(this->layer_param_, [&] {
    faceops::cpu::margin_softmax_loss<Dtype>(bottom[0]->cpu_data(),
        static_cast<const int64_t*>(labels_->cpu_data()),
        this->blobs_[0]->cpu_data(), num_, dim_, num_classes_, scale_, m1_,
        m2_, m3_, top[0]->mutable_cpu_data(),
        diffs_current_ ? feature_diff_.mutable_cpu_data() : NULL,
        diffs_current_ ? weight_diff_.mutable_cpu_data() : NULL);
  });
}

template <typename Dtype>
void MarginSoftmaxLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0] && !this->param_propagate_down_[0]) return;
  if (!diffs_current_) {
    FaceopsCall(this->layer_param_, [&] {
      faceops::cpu::margin_softmax_loss<Dtype>(bottom[0]->cpu_data(),
          static_cast<const int64_t*>(labels_->cpu_data()),
          this->blobs_[0]->cpu_data(), num_, dim_, num_classes_, scale_, m1_,
          m2_, m3_, top[0]->mutable_cpu_data(),
          feature_diff_.mutable_cpu_data(), weight_diff_.mutable_cpu_data());
    });
    diffs_current_ = true;
  }
  const Dtype top_diff = top[0]->cpu_diff()[0];
  if (this->param_propagate_down_[0]) {
    caffe_axpy(weight_diff_.count(), top_diff, weight_diff_.cpu_data(),
        this->blobs_[0]->mutable_cpu_diff());
  }
  if (propagate_down[0]) {
    caffe_cpu_scale(feature_diff_.count(), top_diff,
        feature_diff_.cpu_data(), bottom[0]->mutable_cpu_diff());
  }
}

#ifdef CPU_ONLY
STUB_GPU(MarginSoftmaxLossLayer);
#endif

INSTANTIATE_CLASS(MarginSoftmaxLossLayer);
REGISTER_LAYER_CLASS(MarginSoftmaxLoss);

}  // namespace caffe
