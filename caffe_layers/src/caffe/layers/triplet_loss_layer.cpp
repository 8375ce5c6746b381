#include <vector>

#include "faceops/triplet_loss.h"

#include "caffe/layers/triplet_loss_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void TripletLossLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  mines_ = bottom.size() == 2;
  switch (this->layer_param_.triplet_loss_param().mining()) {
  case TripletLossParameter_Mining_SEMIHARD:
    mining_ = faceops::TripletMining::kSemihard;
    break;
  case TripletLossParameter_Mining_HARD:
    mining_ = faceops::TripletMining::kHard;
    break;
  case TripletLossParameter_Mining_ALL:
    mining_ = faceops::TripletMining::kAll;
    break;
  }
  diffs_.resize(mines_ ? 1 : 3);
  for (int i = 0; i < diffs_.size(); ++i) {
    diffs_[i].reset(new Blob<Dtype>());
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  static const char* names[] = {"anchor", "positive", "negative"};
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  if (mines_) {
    CHECK_EQ(bottom[1]->count(), num_) << "TripletLoss layer '"
        << this->layer_param_.name() << "': bottom[1] (label) holds "
        << bottom[1]->count() << " values; expected one per row of "
        << "bottom[0] (features), " << num_;
  } else {
    for (int i = 1; i < 3; ++i) {
      CHECK(bottom[i]->shape() == bottom[0]->shape()) << "TripletLoss layer '"
          << this->layer_param_.name() << "': bottom[" << i << "] ("
          << names[i] << ") has shape " << bottom[i]->shape_string()
          << "; expected the shape of bottom[0] (anchor), "
          << bottom[0]->shape_string();
    }
  }
  top[0]->Reshape(vector<int>());
  for (int i = 0; i < diffs_.size(); ++i) {
    diffs_[i]->ReshapeLike(*bottom[i]);
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const Dtype margin = this->layer_param_.triplet_loss_param().margin();
  if (mines_) {
    FaceopsLabels(this->layer_param_, *bottom[1], 0, &labels_);
    FaceopsCall(this->layer_param_, [&] {
      faceops::cpu::triplet_loss<Dtype>(bottom[0]->cpu_data(),
          static_cast<const int64_t*>(labels_->cpu_data()), num_, dim_,
          margin, mining_, this->layer_param_.triplet_loss_param().squared(),
          top[0]->mutable_cpu_data(), diffs_[0]->mutable_cpu_data());
    });
  } else {
    FaceopsCall(this->layer_param_, [&] {
      faceops::cpu::triplet_loss_explicit<Dtype>(bottom[0]->cpu_data(),
          bottom[1]->cpu_data(), bottom[2]->cpu_data(), num_, dim_, margin,
          top[0]->mutable_cpu_data(), diffs_[0]->mutable_cpu_data(),
          diffs_[1]->mutable_cpu_data(), diffs_[2]->mutable_cpu_data());
    });
  }
}

template <typename Dtype>
void TripletLossLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (mines_ && propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  for (int i = 0; i < diffs_.size(); ++i) {
    if (propagate_down[i]) {
      caffe_cpu_scale(diffs_[i]->count(), top[0]->cpu_diff()[0],
          diffs_[i]->cpu_data(), bottom[i]->mutable_cpu_diff());
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(TripletLossLayer);
#endif

INSTANTIATE_CLASS(TripletLossLayer);
REGISTER_LAYER_CLASS(TripletLoss);

}  // namespace caffe
