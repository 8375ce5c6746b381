#include <cmath>
#include <vector>

#include "faceops/fork_margins.h"
#include "faceops/normface.h"

#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/util/faceops_caffe_fields.hpp"
#include "caffe/util/faceops_fillers.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
void FaceopsFillGaussianUnitBall(Blob<Dtype>* blob) {
  CHECK_GT(blob->count(), 0) << "gaussian_unitball filler: the blob is empty";
  const int rows = blob->shape(0), cols = blob->count(1);
  caffe_rng_gaussian<Dtype>(blob->count(), Dtype(0), Dtype(1), blob->mutable_cpu_data());
  Dtype* data = blob->mutable_cpu_data();
  for (int i = 0; i < rows; ++i) {
    faceops::fork::normalize_weight_row(data + i * cols, cols);
  }
}

void FaceopsCheckSoftmaxNormalizeType(const LayerParameter& param) {
  CHECK(param.softmax_param().normalize_type() == "Softmax") << param.type()
      << " layer '" << param.name() << "': softmax_param.normalize_type is \""
      << param.softmax_param().normalize_type() << "\"; faceops supports only "
      << "\"Softmax\" (the default: Caffe's softmax), not caffe-windows' "
      << "\"L2\" / \"L1\" normalisation in place of the softmax";
}

template <typename Dtype>
void FaceopsClampScale(const LayerParameter& param, Blob<Dtype>* scale) {
  const ScaleParameter& p = param.scale_param();
  if (!p.has_min_value() && !p.has_max_value()) return;
  CHECK(!(p.has_min_value() && p.has_max_value() && p.min_value() > p.max_value()))
      << "Scale layer '" << param.name() << "': scale_param.min_value ("
      << p.min_value() << ") is above max_value (" << p.max_value() << ")";
  CHECK(!std::isnan(p.min_value()) && !std::isnan(p.max_value()))
      << "Scale layer '" << param.name() << "': scale_param.min_value / max_value is NaN";
  Dtype* data = scale->mutable_cpu_data();
  for (int i = 0; i < scale->count(); ++i) {
    data[i] = faceops::normface::clamp_scale<Dtype>(data[i], p.has_min_value(),
        Dtype(p.min_value()), p.has_max_value(), Dtype(p.max_value()));
  }
}

template <typename Dtype>
void FaceopsAccuracyMinIsBetter(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top, int top_k, bool has_ignore_label,
    int ignore_label, int label_axis) {
  const int outer = bottom[0]->count(0, label_axis);
  const int inner = bottom[0]->count(label_axis + 1);
  const int classes = bottom[0]->shape(label_axis);
  const int dim = bottom[0]->count() / outer;
  const Dtype* scores = bottom[0]->cpu_data();
  const Dtype* labels = bottom[1]->cpu_data();
  std::vector<int> hits(classes, 0), seen(classes, 0);
  int correct = 0, count = 0;
  for (int i = 0; i < outer; ++i) {
    for (int j = 0; j < inner; ++j) {
      const int label = static_cast<int>(labels[i * inner + j]);
      if (has_ignore_label && label == ignore_label) continue;
      CHECK(label >= 0 && label < classes) << "Accuracy: label " << label
          << " is outside [0, " << classes << ")";
      ++seen[label];
      if (faceops::normface::in_top_k(scores + i * dim + j, classes, inner, label, top_k, true)) {
        ++correct;
        ++hits[label];
      }
      ++count;
    }
  }
  top[0]->mutable_cpu_data()[0] = count == 0 ? Dtype(0) : Dtype(correct) / count;
  if (top.size() > 1) {
    Dtype* per_class = top[1]->mutable_cpu_data();
    for (int c = 0; c < classes; ++c) {
      per_class[c] = seen[c] == 0 ? Dtype(0) : Dtype(hits[c]) / seen[c];
    }
  }
}

template <typename Dtype>
void FaceopsFillParameter(const LayerParameter& param, Blob<Dtype>* blob) {
  if (!param.parameter_param().has_blob_filler()) return;
  shared_ptr<Filler<Dtype> > filler(GetFiller<Dtype>(param.parameter_param().blob_filler()));
  filler->Fill(blob);
}

#define FACEOPS_INSTANTIATE_FIELDS(Dtype)                                          \
  template void FaceopsFillGaussianUnitBall<Dtype>(Blob<Dtype>*);                  \
  template void FaceopsClampScale<Dtype>(const LayerParameter&, Blob<Dtype>*);     \
  template void FaceopsAccuracyMinIsBetter<Dtype>(const vector<Blob<Dtype>*>&,     \
      const vector<Blob<Dtype>*>&, int, bool, int, int);                            \
  template void FaceopsFillParameter<Dtype>(const LayerParameter&, Blob<Dtype>*);
FACEOPS_INSTANTIATE_FIELDS(float)
FACEOPS_INSTANTIATE_FIELDS(double)

}  // namespace caffe
