#include <cmath>
#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/filler.hpp"
#include "caffe/layers/margin_inner_product_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/faceops_inner_product.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const MarginInnerProductParameter& param =
      this->layer_param_.margin_inner_product_param();
  CHECK_GT(param.num_output(), 0) << "MarginInnerProduct layer '"
      << this->layer_param_.name()
      << "': margin_inner_product_param.num_output must be > 0";
  m_ = static_cast<int>(param.type()) + 1;
  num_classes_ = param.num_output();
  iteration_ = param.iteration();
  as_fork_ = !param.exact_gradient();
  const int axis = bottom[0]->CanonicalAxisIndex(param.axis());
  dim_ = bottom[0]->count(axis);
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(1);
    vector<int> weight_shape(2);
    weight_shape[0] = num_classes_;
    weight_shape[1] = dim_;
    this->blobs_[0].reset(new Blob<Dtype>(weight_shape));
    FillerParameter filler_param = param.weight_filler();
    if (!param.has_weight_filler()) filler_param.set_type("xavier");
    shared_ptr<Filler<Dtype> > filler(GetFiller<Dtype>(filler_param));
    filler->Fill(this->blobs_[0].get());
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int axis = bottom[0]->CanonicalAxisIndex(
      this->layer_param_.margin_inner_product_param().axis());
  CHECK_EQ(bottom[0]->count(axis), dim_) << "MarginInnerProduct layer '"
      << this->layer_param_.name() << "': bottom[0] has shape "
      << bottom[0]->shape_string() << "; expected " << dim_
      << " values per sample from axis " << axis;
  num_ = bottom[0]->count(0, axis);
  CHECK_EQ(bottom[1]->count(), num_) << "MarginInnerProduct layer '"
      << this->layer_param_.name() << "': bottom[1] (label) holds "
      << bottom[1]->count() << " values; expected one per sample, " << num_;
  vector<int> top_shape = bottom[0]->shape();
  top_shape.resize(axis + 1);
  top_shape[axis] = num_classes_;
  top[0]->Reshape(top_shape);
  if (top.size() == 2) top[1]->Reshape(vector<int>(1, 1));
  x_norm_.Reshape(vector<int>(1, num_));
  inner_product_.Reshape(vector<int>(1, num_));
  scaled_diff_.Reshape(vector<int>(1, num_ * num_classes_));
  target_factors_.Reshape(vector<int>(1, 2 * num_));
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::BeginForward(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const MarginInnerProductParameter& param =
      this->layer_param_.margin_inner_product_param();
  ++iteration_;
  lambda_ = faceops::fork::sphereface_lambda<Dtype>(param.base(),
      param.gamma(), param.power(), param.lambda_min(), iteration_);
  if (top.size() == 2) top[1]->mutable_cpu_data()[0] = lambda_;
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::CheckFeatureNorms() const {
  const Dtype* norms = x_norm_.cpu_data();
  for (int i = 0; i < num_; ++i) {
    CHECK(norms[i] > 0 && std::isfinite(norms[i])) << "MarginInnerProduct layer '"
        << this->layer_param_.name() << "': bottom[0] (features) row " << i
        << " has norm " << norms[i] << "; expected nonzero, finite features";
  }
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  BeginForward(bottom, top);
  FaceopsNormalizeWeight_cpu(this->layer_param_, this->blobs_[0].get(), false);
  const Dtype* x = bottom[0]->cpu_data();
  Dtype* x_norm = x_norm_.mutable_cpu_data();
  for (int i = 0; i < num_; ++i) {
    x_norm[i] = faceops::row_norm(x + i * dim_, dim_,
        caffe_cpu_dot(dim_, x + i * dim_, x + i * dim_)).norm;
  }
  CheckFeatureNorms();
  Dtype* logits = top[0]->mutable_cpu_data();
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, num_, num_classes_, dim_,
      Dtype(1), x, this->blobs_[0]->cpu_data(), Dtype(0), logits);
  const int64_t* labels = static_cast<const int64_t*>(labels_->cpu_data());
  Dtype* inner_product = inner_product_.mutable_cpu_data();
  for (int i = 0; i < num_; ++i) {
    Dtype& target = logits[i * num_classes_ + labels[i]];
    inner_product[i] = target;
    target = faceops::fork::sphereface_target_logit(target, x_norm[i], m_,
        lambda_);
  }
}

template <typename Dtype>
void MarginInnerProductLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  const Dtype* g = top[0]->cpu_diff();
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* weight = this->blobs_[0]->cpu_data();
  const Dtype* x_norm = x_norm_.cpu_data();
  const Dtype* inner_product = inner_product_.cpu_data();
  const int64_t* labels = static_cast<const int64_t*>(labels_->cpu_data());
  Dtype* scaled = scaled_diff_.mutable_cpu_data();
  caffe_copy(num_ * num_classes_, g, scaled);
  Dtype* factors = target_factors_.mutable_cpu_data();
  for (int i = 0; i < num_; ++i) {
    const int target = i * num_classes_ + labels[i];
    faceops::fork::sphereface_target_backward(g[target], inner_product[i],
        x_norm[i], m_, lambda_, as_fork_, &factors[2 * i],
        &factors[2 * i + 1], &scaled[target]);
  }
  if (this->param_propagate_down_[0]) {
    caffe_cpu_gemm<Dtype>(CblasTrans, CblasNoTrans, num_classes_, dim_, num_,
        Dtype(1), scaled, x, Dtype(1), this->blobs_[0]->mutable_cpu_diff());
    if (!as_fork_) FaceopsProjectWeightDiff_cpu(this->blobs_[0].get());
  }
  if (propagate_down[0]) {
    Dtype* x_diff = bottom[0]->mutable_cpu_diff();
    caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, num_, dim_, num_classes_,
        Dtype(1), g, weight, Dtype(0), x_diff);
    for (int i = 0; i < num_; ++i) {
      caffe_axpy(dim_, factors[2 * i], weight + labels[i] * dim_,
          x_diff + i * dim_);
      caffe_axpy(dim_, factors[2 * i + 1], x + i * dim_, x_diff + i * dim_);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(MarginInnerProductLayer);
#endif

INSTANTIATE_CLASS(MarginInnerProductLayer);
REGISTER_LAYER_CLASS(MarginInnerProduct);

}  // namespace caffe
