#include <vector>

#include "faceops/fork_margins.h"
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
  if (!in_place_) caffe_copy(top[0]->count(), bottom[0]->gpu_data(),
      top[0]->mutable_gpu_data());
  MarginForward_gpu(Cosines(*bottom[0]).gpu_data(),
      static_cast<const int64_t*>(labels_->gpu_data()),
      top[0]->mutable_gpu_data());
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
  MarginBackward_gpu(Cosines(*bottom[0]).gpu_data(),
      static_cast<const int64_t*>(labels_->gpu_data()), top[0]->gpu_diff(),
      bottom[0]->mutable_gpu_diff());
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::MarginForward_gpu(const Dtype* cosine,
    const int64_t* labels, Dtype* top) {
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::target_margin_forward<Dtype>(cosine, labels, num_,
        num_classes_, m1_, m2_, m3_, top, NULL);
  });
}

template <typename Dtype>
void TargetMarginLayer<Dtype>::MarginBackward_gpu(const Dtype* cosine,
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) {
  FaceopsCall(this->layer_param_, [&] {
    faceops::cuda::target_margin_backward<Dtype>(cosine, labels, top_diff,
        num_, num_classes_, m1_, m2_, m3_, bottom_diff, NULL);
  });
}

// One thread per sample: only its target element changes.
template <typename Dtype>
__global__ void CosinAddmTargets(int num, int num_classes, Dtype m,
    const Dtype* cosine, const int64_t* labels, Dtype* top) {
  CUDA_KERNEL_LOOP(i, num) {
    const int target = i * num_classes + labels[i];
    top[target] = faceops::fork::cosin_addm_forward(cosine[target], m);
  }
}

template <typename Dtype>
__global__ void CosinAddmTargetDiffs(int num, int num_classes, Dtype m,
    const Dtype* cosine, const int64_t* labels, const Dtype* top_diff,
    Dtype* bottom_diff) {
  CUDA_KERNEL_LOOP(i, num) {
    const int target = i * num_classes + labels[i];
    bottom_diff[target] = top_diff[target] *
        faceops::fork::cosin_addm_derivative(cosine[target], m);
  }
}

template <typename Dtype>
__global__ void LabelSpecificAddTargets(int num, int num_classes, Dtype bias,
    const Dtype* cosine, const int64_t* labels, Dtype* top) {
  CUDA_KERNEL_LOOP(i, num) {
    const int target = i * num_classes + labels[i];
    top[target] = faceops::fork::label_specific_add(cosine[target], bias);
  }
}

template <typename Dtype>
void CosinAddmLayer<Dtype>::MarginForward_gpu(const Dtype* cosine,
    const int64_t* labels, Dtype* top) {
  // NOLINT_NEXT_LINE(whitespace/operators)
  CosinAddmTargets<Dtype><<<CAFFE_GET_BLOCKS(this->num_),
      CAFFE_CUDA_NUM_THREADS>>>(this->num_, this->num_classes_, this->m2_,
      cosine, labels, top);
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void CosinAddmLayer<Dtype>::MarginBackward_gpu(const Dtype* cosine,
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) {
  const int count = this->num_ * this->num_classes_;
  if (bottom_diff != top_diff) caffe_copy(count, top_diff, bottom_diff);
  // NOLINT_NEXT_LINE(whitespace/operators)
  CosinAddmTargetDiffs<Dtype><<<CAFFE_GET_BLOCKS(this->num_),
      CAFFE_CUDA_NUM_THREADS>>>(this->num_, this->num_classes_, this->m2_,
      cosine, labels, top_diff, bottom_diff);
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  this->UpdateBias(top);
  TargetMarginLayer<Dtype>::Forward_gpu(bottom, top);
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::MarginForward_gpu(const Dtype* cosine,
    const int64_t* labels, Dtype* top) {
  // NOLINT_NEXT_LINE(whitespace/operators)
  LabelSpecificAddTargets<Dtype><<<CAFFE_GET_BLOCKS(this->num_),
      CAFFE_CUDA_NUM_THREADS>>>(this->num_, this->num_classes_, bias_,
      cosine, labels, top);
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void LabelSpecificAddLayer<Dtype>::MarginBackward_gpu(const Dtype* cosine,
    const int64_t* labels, const Dtype* top_diff, Dtype* bottom_diff) {
  if (bottom_diff != top_diff) {
    caffe_copy(this->num_ * this->num_classes_, top_diff, bottom_diff);
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(TargetMarginLayer);
template void CosinAddmLayer<float>::MarginForward_gpu(const float*,
    const int64_t*, float*);
template void CosinAddmLayer<double>::MarginForward_gpu(const double*,
    const int64_t*, double*);
template void CosinAddmLayer<float>::MarginBackward_gpu(const float*,
    const int64_t*, const float*, float*);
template void CosinAddmLayer<double>::MarginBackward_gpu(const double*,
    const int64_t*, const double*, double*);
template void LabelSpecificAddLayer<float>::Forward_gpu(
    const vector<Blob<float>*>&, const vector<Blob<float>*>&);
template void LabelSpecificAddLayer<double>::Forward_gpu(
    const vector<Blob<double>*>&, const vector<Blob<double>*>&);
template void LabelSpecificAddLayer<float>::MarginForward_gpu(const float*,
    const int64_t*, float*);
template void LabelSpecificAddLayer<double>::MarginForward_gpu(
    const double*, const int64_t*, double*);
template void LabelSpecificAddLayer<float>::MarginBackward_gpu(const float*,
    const int64_t*, const float*, float*);
template void LabelSpecificAddLayer<double>::MarginBackward_gpu(
    const double*, const int64_t*, const double*, double*);

}  // namespace caffe
