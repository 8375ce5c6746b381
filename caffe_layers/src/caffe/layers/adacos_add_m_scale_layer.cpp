#include <cmath>
#include <vector>

#include "faceops/fork_margins.h"

#include "caffe/layers/adacos_add_m_scale_layer.hpp"
#include "caffe/util/faceops_bridge.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void AdaCosAddmScaleLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const AdaCosAddmScaleParameter& param =
      this->layer_param_.adacos_add_m_scale_param();
  CHECK(std::isfinite(param.m())) << "AdaCosAddmScale layer '"
      << this->layer_param_.name() << "': adacos_add_m_scale_param.m is "
      << param.m() << "; expected a finite margin";
  CHECK(param.num_classes() > 2 && std::isfinite(param.num_classes()))
      << "AdaCosAddmScale layer '" << this->layer_param_.name()
      << "': adacos_add_m_scale_param.num_classes is " << param.num_classes()
      << "; expected a finite number > 2 (the initial scale is "
      << "sqrt(2) log(num_classes - 1))";
  m_ = param.m();
  update_scale_ = param.update_scale();
  scale_ = faceops::fork::adacos_initial_scale(param.num_classes());
}

template <typename Dtype>
void AdaCosAddmScaleLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  CHECK_NE(top[0], bottom[0]) << "AdaCosAddmScale layer '"
      << this->layer_param_.name() << "': in-place use (top = bottom) is not "
      << "supported; give the top another name";
  num_ = bottom[0]->shape(0);
  CHECK_GT(num_, 0) << "AdaCosAddmScale layer '" << this->layer_param_.name()
      << "': bottom[0] (cosines) has no samples";
  num_classes_ = bottom[0]->count() / num_;
  CHECK_EQ(bottom[1]->count(), num_) << "AdaCosAddmScale layer '"
      << this->layer_param_.name() << "': bottom[1] (label) has "
      << bottom[1]->count() << " values; expected one per sample, N = " << num_;
  top[0]->ReshapeLike(*bottom[0]);
  if (top.size() == 2) top[1]->Reshape(vector<int>(1, 1));
}

template <typename Dtype>
void AdaCosAddmScaleLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  FaceopsLabels(this->layer_param_, *bottom[1], num_classes_, &labels_);
  const int64_t* labels = static_cast<const int64_t*>(labels_->cpu_data());
  const Dtype* cosine = bottom[0]->cpu_data();
  if (update_scale_) {
    scale_ = faceops::fork::adacos_scale(cosine, labels, num_, num_classes_,
        scale_);
    CHECK(std::isfinite(scale_)) << "AdaCosAddmScale layer '"
        << this->layer_param_.name() << "': the adaptive scale became "
        << scale_ << " (bottom[0] holds NaN or infinite cosines?)";
  }
  const Dtype scale = static_cast<Dtype>(scale_);
  Dtype* out = top[0]->mutable_cpu_data();
  caffe_cpu_scale(bottom[0]->count(), scale, cosine, out);
  for (int i = 0; i < num_; ++i) {
    const int target = i * num_classes_ + labels[i];
    out[target] = scale * faceops::fork::cosin_addm_forward(cosine[target], m_);
  }
  if (top.size() == 2) top[1]->mutable_cpu_data()[0] = scale;
}

template <typename Dtype>
void AdaCosAddmScaleLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  if (propagate_down[1]) {
    LOG(FATAL) << this->type()
               << " Layer cannot backpropagate to label inputs.";
  }
  if (!propagate_down[0]) return;
  const int64_t* labels = static_cast<const int64_t*>(labels_->cpu_data());
  const Dtype* cosine = bottom[0]->cpu_data();
  const Dtype* top_diff = top[0]->cpu_diff();
  Dtype* bottom_diff = bottom[0]->mutable_cpu_diff();
  const Dtype scale = static_cast<Dtype>(scale_);
  caffe_cpu_scale(bottom[0]->count(), scale, top_diff, bottom_diff);
  for (int i = 0; i < num_; ++i) {
    const int target = i * num_classes_ + labels[i];
    bottom_diff[target] *= faceops::fork::cosin_addm_derivative(cosine[target], m_);
  }
}

INSTANTIATE_CLASS(AdaCosAddmScaleLayer);
REGISTER_LAYER_CLASS(AdaCosAddmScale);

}  // namespace caffe
