#ifndef CAFFE_UTIL_FACEOPS_CAFFE_FIELDS_HPP_
#define CAFFE_UTIL_FACEOPS_CAFFE_FIELDS_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief The fields happynear's caffe-windows (NormFace) adds to Caffe's own
 *        layers; faceops' installer calls these from Caffe's Scale, Accuracy
 *        and Parameter layers.
 *
 * - `scale_param { min_value max_value }`: at the start of each forward pass
 *   the scale (the layer's blob, or the second bottom) is clamped in place to
 *   [min_value, max_value], as in the fork; the solver's next step starts
 *   from the clamped value.  (The GPU forward clamps through the CPU copy:
 *   the scale is small.)
 * - `accuracy_param { min_is_better: true }`: the prediction is the class of
 *   the smallest score (a distance), top_k smallest for top_k.  A class
 *   ranks before the true class when its score is smaller, or equal with a
 *   smaller index (the fork's sort of (score, index) pairs).  ignore_label,
 *   axis and the per-class second top work as in Caffe.  The GPU forward
 *   computes it on the CPU.
 * - `parameter_param { blob_filler }`: the Parameter layer's blob is filled
 *   by it at set-up (Caffe leaves it zero).
 * - `softmax_param { normalize_type }` (SoftmaxWithLoss, FocalLoss): the
 *   fork's "Softmax", its default, is Caffe's own softmax; its "L2" and "L1"
 *   replace the softmax by a Normalize layer inside the loss, which faceops
 *   does not implement: any other value stops Caffe with the field's name.
 */
void FaceopsCheckSoftmaxNormalizeType(const LayerParameter& param);

template <typename Dtype>
void FaceopsClampScale(const LayerParameter& param, Blob<Dtype>* scale);

template <typename Dtype>
void FaceopsAccuracyMinIsBetter(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top, int top_k, bool has_ignore_label,
    int ignore_label, int label_axis);

template <typename Dtype>
void FaceopsFillParameter(const LayerParameter& param, Blob<Dtype>* blob);

}  // namespace caffe

#endif  // CAFFE_UTIL_FACEOPS_CAFFE_FIELDS_HPP_
