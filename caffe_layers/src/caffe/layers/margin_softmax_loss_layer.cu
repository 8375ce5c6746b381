#include <vector>

#include "faceops/margin_softmax.h"

#include "caffe/layers/margin_softmax_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The faceops kernels run on Caffe's stream, the default one (NULL).
template <typename Dtype>
void MarginSoftmaxLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  diffs_current_ = this->phase_ == TRAIN;
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::margin_softmax_loss<Dtype>(bottom[0]->gpu_data(),
        static_cast<const int64_t*>(labels_->gpu_data()),
        this->blobs_[0]->gpu_data(), num_, dim_, num_classes_, scale_, m1_,
        m2_, m3_, top[0]->mutable_gpu_data(),
        diffs_current_ ? feature_diff_.mutable_gpu_data() : NULL,
        diffs_current_ ? weight_diff_.mutable_gpu_data() : NULL, NULL);
  });
}

template <typename Dtype>
void MarginSoftmaxLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0] && !this->param_propagate_down_[0]) return;
  if (!diffs_current_) {
    FaceopsCall(this->layer_param_, [&] {
      faceops::cuda::margin_softmax_loss<Dtype>(bottom[0]->gpu_data(),
          static_cast<const int64_t*>(labels_->gpu_data()),
          this->blobs_[0]->gpu_data(), num_, dim_, num_classes_, scale_, m1_,
          m2_, m3_, top[0]->mutable_gpu_data(),
          feature_diff_.mutable_gpu_data(), weight_diff_.mutable_gpu_data(),
          NULL);
    });
    diffs_current_ = true;
  }
  const Dtype top_diff = top[0]->cpu_diff()[0];
  if (this->param_propagate_down_[0]) {
    caffe_gpu_axpy(weight_diff_.count(), top_diff, weight_diff_.gpu_data(),
        this->blobs_[0]->mutable_gpu_diff());
  }
  if (propagate_down[0]) {
    caffe_gpu_scale(feature_diff_.count(), top_diff,
        feature_diff_.gpu_data(), bottom[0]->mutable_gpu_diff());
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(MarginSoftmaxLossLayer);

}  // namespace caffe
