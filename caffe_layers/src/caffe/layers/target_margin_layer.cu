#include <vector>

#include "faceops/margin_softmax.h"

#include "caffe/layers/target_margin_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The faceops kernels run on Caffe's stream, the default one (NULL).
template <typename Dtype>
void TargetMarginLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  if (!Applies()) {
    if (!in_place_) top[0]->CopyFrom(*bottom[0]);
    return;
  }
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  if (in_place_) cosine_.CopyFrom(*bottom[0]);
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::target_margin_forward<Dtype>(
        Cosines(*bottom[0]).gpu_data(),
        static_cast<const int64_t*>(labels_->gpu_data()), num_, num_classes_,
        m1_, m2_, m3_, top[0]->mutable_gpu_data(), NULL);
  });
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
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
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::target_margin_backward<Dtype>(
        Cosines(*bottom[0]).gpu_data(),
        static_cast<const int64_t*>(labels_->gpu_data()), top[0]->gpu_diff(),
        num_, num_classes_, m1_, m2_, m3_, bottom[0]->mutable_gpu_diff(),
        NULL);
  });
}

INSTANTIATE_LAYER_GPU_FUNCS(TargetMarginLayer);

}  // namespace caffe
