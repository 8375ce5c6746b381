#include <vector>

#include "faceops/normface.h"

#include "caffe/filler.hpp"
#include "caffe/layers/inner_distance_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void InnerDistanceLayer<Dtype>::LayerSetUp(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& /*top*/) {
  const InnerDistanceParameter& p = this->layer_param_.inner_distance_param();
  const std::string& name = this->layer_param_.name();
  CHECK(p.distance_type() == "L2" || p.distance_type() == "L1")
      << "InnerDistance layer '" << name << "': inner_distance_param.distance_type is '"
      << p.distance_type() << "'; expected \"L2\" or \"L1\"";
  CHECK(!p.transpose()) << "InnerDistance layer '" << name
      << "': transpose: true is not supported (the fork's forward ignores it)";
  CHECK(!p.update_center_only()) << "InnerDistance layer '" << name
      << "': update_center_only: true is not supported";
  l1_ = p.distance_type() == "L1";
  K_ = bottom[0]->count(bottom[0]->CanonicalAxisIndex(p.axis()));
  if (bottom.size() == 2) {
    CHECK(!p.normalize()) << "InnerDistance layer '" << name
        << "': normalize: true rescales the layer's own weight; with the weight as "
        << "bottom[1] normalise it before (a Normalize layer), as NormFace does";
    return;
  }
  CHECK_GT(p.num_output(), 0) << "InnerDistance layer '" << name
      << "': with one bottom the layer owns the weight: set inner_distance_param.num_output";
  if (this->blobs_.size() > 0) {
    LOG(INFO) << "Skipping parameter initialization";
  } else {
    this->blobs_.resize(1);
    vector<int> shape(2);
    shape[0] = p.num_output();
    shape[1] = K_;
    this->blobs_[0].reset(new Blob<Dtype>(shape));
    shared_ptr<Filler<Dtype> > filler(GetFiller<Dtype>(p.weight_filler()));
    filler->Fill(this->blobs_[0].get());
  }
  this->param_propagate_down_.resize(this->blobs_.size(), true);
}

template <typename Dtype>
void InnerDistanceLayer<Dtype>::Reshape(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const int axis = bottom[0]->CanonicalAxisIndex(
      this->layer_param_.inner_distance_param().axis());
  CHECK_EQ(bottom[0]->count(axis), K_) << "InnerDistance layer '"
      << this->layer_param_.name() << "': the features changed size";
  const Blob<Dtype>* weight = bottom.size() == 2 ? bottom[1] : this->blobs_[0].get();
  CHECK_GE(weight->num_axes(), 1);
  CHECK_EQ(weight->count(1), K_) << "InnerDistance layer '" << this->layer_param_.name()
      << "': the weight rows have " << weight->count(1) << " values; the features have "
      << K_ << " (bottom[1] must be classes x features)";
  M_ = bottom[0]->count(0, axis);
  N_ = weight->shape(0);
  vector<int> top_shape(bottom[0]->shape().begin(), bottom[0]->shape().begin() + axis);
  top_shape.push_back(N_);
  top[0]->Reshape(top_shape);
}

template <typename Dtype>
void InnerDistanceLayer<Dtype>::Forward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top) {
  const faceops::normface::Distance type =
      l1_ ? faceops::normface::Distance::kL1 : faceops::normface::Distance::kL2;
  if (bottom.size() == 1 && this->layer_param_.inner_distance_param().normalize()) {
    Dtype* w = this->blobs_[0]->mutable_cpu_data();
    for (int n = 0; n < N_; ++n) faceops::normface::inner_distance_normalize_row(w + n * K_, K_);
  }
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* w = (bottom.size() == 2 ? bottom[1] : this->blobs_[0].get())->cpu_data();
  Dtype* t = top[0]->mutable_cpu_data();
  for (int m = 0; m < M_; ++m) {
    for (int n = 0; n < N_; ++n) {
      t[m * N_ + n] = faceops::normface::inner_distance(x + m * K_, w + n * K_, K_, type);
    }
  }
}

template <typename Dtype>
void InnerDistanceLayer<Dtype>::Backward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  const faceops::normface::Distance type =
      l1_ ? faceops::normface::Distance::kL1 : faceops::normface::Distance::kL2;
  const Dtype* g = top[0]->cpu_diff();
  const Dtype* x = bottom[0]->cpu_data();
  Blob<Dtype>* weight = bottom.size() == 2 ? bottom[1] : this->blobs_[0].get();
  const Dtype* w = weight->cpu_data();
  const bool weight_grad = bottom.size() == 2 ? propagate_down[1] : this->param_propagate_down_[0];
  if (weight_grad) {
    Dtype* dw = weight->mutable_cpu_diff();
    // A bottom's diff is set; a parameter's accumulates.
    if (bottom.size() == 2) caffe_set(weight->count(), Dtype(0), dw);
    for (int n = 0; n < N_; ++n) {
      for (int m = 0; m < M_; ++m) {
        const Dtype gmn = g[m * N_ + n];
        for (int k = 0; k < K_; ++k) {
          dw[n * K_ + k] -= gmn * faceops::normface::inner_distance_slope(x[m * K_ + k], w[n * K_ + k], type);
        }
      }
    }
  }
  if (propagate_down[0]) {
    Dtype* dx = bottom[0]->mutable_cpu_diff();
    caffe_set(bottom[0]->count(), Dtype(0), dx);
    for (int m = 0; m < M_; ++m) {
      for (int n = 0; n < N_; ++n) {
        const Dtype gmn = g[m * N_ + n];
        for (int k = 0; k < K_; ++k) {
          dx[m * K_ + k] += gmn * faceops::normface::inner_distance_slope(x[m * K_ + k], w[n * K_ + k], type);
        }
      }
    }
  }
}

INSTANTIATE_CLASS(InnerDistanceLayer);
REGISTER_LAYER_CLASS(InnerDistance);

}  // namespace caffe
