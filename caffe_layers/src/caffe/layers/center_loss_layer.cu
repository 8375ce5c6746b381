#include <vector>

#include "faceops/center_loss.h"

#include "caffe/layers/center_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The faceops kernels run on Caffe's stream, the default one (NULL).
template <typename Dtype>
void CenterLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::center_loss<Dtype>(bottom[0]->gpu_data(),
        static_cast<const int64_t*>(labels_->gpu_data()),
        this->blobs_[0]->gpu_data(), num_, dim_, num_classes_,
        top[0]->mutable_gpu_data(), feature_diff_.mutable_gpu_data(), NULL,
        NULL);
  });
}

template <typename Dtype>
void CenterLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (this->param_propagate_down_[0]) {
    FaceopsCall(this->layer_param_, [&] {
      faceops::cuda::center_update_direction<Dtype>(bottom[0]->gpu_data(),
          static_cast<const int64_t*>(labels_->gpu_data()),
          this->blobs_[0]->gpu_data(), num_, dim_, num_classes_,
          this->blobs_[0]->mutable_gpu_diff(), NULL);
    });
  }
  if (propagate_down[0]) {
    caffe_gpu_scale(feature_diff_.count(), top[0]->cpu_diff()[0],
        feature_diff_.gpu_data(), bottom[0]->mutable_gpu_diff());
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(CenterLossLayer);

}  // namespace caffe
