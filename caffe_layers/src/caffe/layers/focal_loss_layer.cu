#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/focal_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

// One thread per logit vector, over the same fork_margins.h functions as the
// CPU.  Its loss term is >= 0, so the sum is an asum.
template <typename Dtype>
__global__ void FocalLossTerms(int count, int dim, int inner_num,
    const Dtype* prob, const Dtype* label, bool has_ignore_label,
    int ignore_label, Dtype alpha, Dtype gamma, Dtype* loss, Dtype* valid) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = index / inner_num, j = index % inner_num;
    const int label_value = static_cast<int>(label[index]);
    if (has_ignore_label && label_value == ignore_label) {
      loss[index] = 0;
      valid[index] = 0;
    } else {
      loss[index] = faceops::fork::focal_loss_term(
          prob[i * dim + label_value * inner_num + j], alpha, gamma);
      valid[index] = 1;
    }
  }
}

template <typename Dtype>
__global__ void FocalLossDiffs(int count, int dim, int inner_num, int channels,
    const Dtype* prob, const Dtype* label, bool has_ignore_label,
    int ignore_label, Dtype alpha, Dtype gamma, Dtype* diff) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = index / inner_num, j = index % inner_num;
    const int label_value = static_cast<int>(label[index]);
    Dtype* sample = diff + i * dim + j;
    const Dtype* p = prob + i * dim + j;
    if (has_ignore_label && label_value == ignore_label) {
      for (int c = 0; c < channels; ++c) sample[c * inner_num] = 0;
    } else {
      const Dtype target = p[label_value * inner_num];
      const Dtype q = faceops::fork::focal_loss_logit_scale(target, alpha, gamma);
      for (int c = 0; c < channels; ++c) sample[c * inner_num] = q * p[c * inner_num];
      sample[label_value * inner_num] = q * (target - 1);
    }
  }
}

template <typename Dtype>
void FocalLossLayer<Dtype>::Forward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CheckLabels(*bottom[1]);
  softmax_layer_->Forward(softmax_bottom_vec_, softmax_top_vec_);
  const int count = outer_num_ * inner_num_;
  // NOLINT_NEXT_LINE(whitespace/operators)
  FocalLossTerms<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, prob_.count() / outer_num_, inner_num_, prob_.gpu_data(),
      bottom[1]->gpu_data(), has_ignore_label_, ignore_label_, alpha_, gamma_,
      sample_loss_.mutable_gpu_data(), sample_valid_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype loss, valid;
  caffe_gpu_asum(count, sample_loss_.gpu_data(), &loss);
  caffe_gpu_asum(count, sample_valid_.gpu_data(), &valid);
  top[0]->mutable_cpu_data()[0] = loss / Normalizer(static_cast<int>(valid));
  if (top.size() == 2) top[1]->ShareData(prob_);
}

template <typename Dtype>
void FocalLossLayer<Dtype>::Backward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) return;
  const int count = outer_num_ * inner_num_;
  // NOLINT_NEXT_LINE(whitespace/operators)
  FocalLossDiffs<Dtype><<<CAFFE_GET_BLOCKS(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, prob_.count() / outer_num_, inner_num_, prob_.shape(softmax_axis_),
      prob_.gpu_data(), bottom[1]->gpu_data(), has_ignore_label_,
      ignore_label_, alpha_, gamma_, bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
  Dtype valid;
  caffe_gpu_asum(count, sample_valid_.gpu_data(), &valid);
  caffe_gpu_scal(prob_.count(),
      top[0]->cpu_diff()[0] / Normalizer(static_cast<int>(valid)),
      bottom[0]->mutable_gpu_diff());
}

INSTANTIATE_LAYER_GPU_FUNCS(FocalLossLayer);

}  // namespace caffe
