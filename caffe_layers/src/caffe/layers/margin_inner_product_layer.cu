#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/margin_inner_product_layer.hpp"
#include "caffe/util/faceops_inner_product.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
__global__ void MarginInnerProductNorms(int num, int dim, const Dtype* x,
    Dtype* norms) {
  CUDA_KERNEL_LOOP(i, num) {
    Dtype squared = 0;
    for (int k = 0; k < dim; ++k) squared += x[i * dim + k] * x[i * dim + k];
    norms[i] = faceops::row_norm(x + i * dim, dim, squared).norm;
  }
}

template <typename Dtype>
__global__ void MarginInnerProductTargets(int num, int num_classes, int m,
    Dtype lambda, const int64_t* labels, const Dtype* norms, Dtype* logits,
    Dtype* inner_product) {
  CUDA_KERNEL_LOOP(i, num) {
    Dtype* target = logits + i * num_classes + labels[i];
    inner_product[i] = *target;
    *target = faceops::fork::sphereface_target_logit(*target, norms[i], m,
        lambda);
  }
}

template <typename Dtype>
__global__ void MarginInnerProductTargetDiffs(int num, int num_classes, int m,
    Dtype lambda, bool as_fork, const int64_t* labels, const Dtype* g,
    const Dtype* inner_product, const Dtype* norms, Dtype* factors,
    Dtype* scaled) {
  CUDA_KERNEL_LOOP(i, num) {
    const int target = i * num_classes + labels[i];
    faceops::fork::sphereface_target_backward(g[target], inner_product[i],
        norms[i], m, lambda, as_fork, &factors[2 * i], &factors[2 * i + 1],
        &scaled[target]);
  }
}

// x_diff[i] += g_w[i] w[y_i] + g_x[i] x[i]
template <typename Dtype>
__global__ void MarginInnerProductFeatureDiffs(int count, int dim,
    const int64_t* labels, const Dtype* factors, const Dtype* weight,
    const Dtype* x, Dtype* x_diff) {
  CUDA_KERNEL_LOOP(index, count) {
    const int i = index / dim, k = index % dim;
    x_diff[index] += factors[2 * i] * weight[labels[i] * dim + k] +
        factors[2 * i + 1] * x[index];
  }
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  BeginForward(bottom, top);
  FaceopsNormalizeWeight_gpu(this->layer_param_, this->blobs_[0].get(), false);
  const Dtype* x = bottom[0]->gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  MarginInnerProductNorms<Dtype><<<CAFFE_GET_BLOCKS(num_),
      CAFFE_CUDA_NUM_THREADS>>>(num_, dim_, x, x_norm_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  CheckFeatureNorms();
  Dtype* logits = top[0]->mutable_gpu_data();
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, num_, num_classes_, dim_,
      Dtype(1), x, this->blobs_[0]->gpu_data(), Dtype(0), logits);
  // NOLINT_NEXT_LINE(whitespace/operators)
  MarginInnerProductTargets<Dtype><<<CAFFE_GET_BLOCKS(num_),
      CAFFE_CUDA_NUM_THREADS>>>(num_, num_classes_, m_, lambda_,
      static_cast<const int64_t*>(labels_->gpu_data()), x_norm_.gpu_data(),
      logits, inner_product_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  const Dtype* g = top[0]->gpu_diff();
  const Dtype* x = bottom[0]->gpu_data();
  const Dtype* weight = this->blobs_[0]->gpu_data();
  const int64_t* labels = static_cast<const int64_t*>(labels_->gpu_data());
  Dtype* scaled = scaled_diff_.mutable_gpu_data();
  caffe_copy(num_ * num_classes_, g, scaled);
  // NOLINT_NEXT_LINE(whitespace/operators)
  MarginInnerProductTargetDiffs<Dtype><<<CAFFE_GET_BLOCKS(num_),
      CAFFE_CUDA_NUM_THREADS>>>(num_, num_classes_, m_, lambda_, as_fork_,
      labels, g, inner_product_.gpu_data(), x_norm_.gpu_data(),
      target_factors_.mutable_gpu_data(), scaled);
  CUDA_POST_KERNEL_CHECK;
  if (this->param_propagate_down_[0]) {
    caffe_gpu_gemm<Dtype>(CblasTrans, CblasNoTrans, num_classes_, dim_, num_,
        Dtype(1), scaled, x, Dtype(1), this->blobs_[0]->mutable_gpu_diff());
    if (!as_fork_) FaceopsProjectWeightDiff_gpu(this->blobs_[0].get());
  }
  if (propagate_down[0]) {
    Dtype* x_diff = bottom[0]->mutable_gpu_diff();
    caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num_, dim_, num_classes_,
        Dtype(1), g, weight, Dtype(0), x_diff);
    // NOLINT_NEXT_LINE(whitespace/operators)
    MarginInnerProductFeatureDiffs<Dtype><<<CAFFE_GET_BLOCKS(num_ * dim_),
        CAFFE_CUDA_NUM_THREADS>>>(num_ * dim_, dim_, labels,
        target_factors_.gpu_data(), weight, x, x_diff);
    CUDA_POST_KERNEL_CHECK;
  }
}

INSTANTIATE_LAYER_GPU_FUNCS(MarginInnerProductLayer);

}  // namespace caffe
