#include <vector>

#include "faceops/triplet_loss.h"

#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// The faceops kernels run on Caffe's stream, the default one (NULL).
template <typename Dtype>
void TripletLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype margin = this->layer_param_.triplet_loss_param().margin();
  if (mines_) {
    FaceopsLabels(this->layer_param_, *bottom[1], 0, &labels_);
    FaceopsCall(this->layer_param_, [&] {
      faceops::cuda::triplet_loss<Dtype>(bottom[0]->gpu_data(),
          static_cast<const int64_t*>(labels_->gpu_data()), num_, dim_,
          margin, mining_, this->layer_param_.triplet_loss_param().squared(),
          top[0]->mutable_gpu_data(), diffs_[0]->mutable_gpu_data(), NULL);
    });
  } else {
    FaceopsCall(this->layer_param_, [&] {
      faceops::cuda::triplet_loss_explicit<Dtype>(bottom[0]->gpu_data(),
          bottom[1]->gpu_data(), bottom[2]->gpu_data(), num_, dim_, margin,
          top[0]->mutable_gpu_data(), diffs_[0]->mutable_gpu_data(),
          diffs_[1]->mutable_gpu_data(), diffs_[2]->mutable_gpu_data(), NULL);
    });
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (mines_ && propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  for (int i = 0; i < diffs_.size(); ++i) {
    if (propagate_down[i]) {
      caffe_gpu_scale(diffs_[i]->count(), top[0]->cpu_diff()[0],
          diffs_[i]->gpu_data(), bottom[i]->mutable_gpu_diff());
    }
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(TripletLossLayer);

}  // namespace caffe
