#include <vector>

#include "faceops/pair_loss.h"

#include "caffe/layers/pair_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The faceops kernels run on Caffe's stream, the default one (NULL).
template <typename Dtype>
void PairLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], 0, &labels_);
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::pair_loss<Dtype>(bottom[0]->gpu_data(),
        static_cast<const int64_t*>(labels_->gpu_data()), num_, dim_,
        this->blobs_[0]->gpu_data(), top[0]->mutable_gpu_data(),
        feature_diff_.mutable_gpu_data(), theta_diff_.mutable_gpu_data(),
        NULL);
  });
}

template <typename Dtype>
void PairLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  const Dtype top_diff = top[0]->cpu_diff()[0];
  if (this->param_propagate_down_[0]) {
    caffe_gpu_axpy(1, top_diff, theta_diff_.gpu_data(),
        this->blobs_[0]->mutable_gpu_diff());
  }
  if (propagate_down[0]) {
    caffe_gpu_scale(feature_diff_.count(), top_diff,
        feature_diff_.gpu_data(), bottom[0]->mutable_gpu_diff());
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(PairLossLayer);

}  // namespace caffe
