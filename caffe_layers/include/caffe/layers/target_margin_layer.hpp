#ifndef CAFFE_TARGET_MARGIN_LAYER_HPP_
#define CAFFE_TARGET_MARGIN_LAYER_HPP_

#include <stdint.h>

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

namespace caffe {

/**
 * @brief The target margin alone, for the forks' prototxts that put it
 *        between a normalised InnerProduct (cosines) and Scale +
 *        SoftmaxWithLoss: each sample's target cosine becomes
 *        @f$ \psi(\cos\theta) @f$, the other cosines pass through.  By
 *        default (CombinedMargin) @f$ \psi = \cos(m_1 \theta + m_2) - m_3 @f$
 *        computed by the faceops core (faceops/margin_softmax.h,
 *        target_margin_forward/backward); CosinAddm and LabelSpecificAdd
 *        override the margin hooks with their forks' own math
 *        (faceops/fork_margins.h).  MarginSoftmaxLoss does the whole loss in
 *        one layer.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C \times \ldots) @f$
 *      the cosines @f$ \cos\theta_{ij} @f$; the axes from 1 on are flattened
 *      into @f$ C @f$ classes per sample
 *   -# @f$ (N \times \ldots) @f$, @f$ N @f$ values in total
 *      the labels @f$ y_i \in [0, C) @f$
 * @param top output Blob vector (length 1)
 *   -# @f$ (N \times C \times \ldots) @f$, the shape of bottom[0]
 *      @f$ y_{ij} = \cos\theta_{ij} @f$ for @f$ j \ne y_i @f$,
 *      @f$ y_{i y_i} = \psi(\cos\theta_{i y_i}) @f$, where (CombinedMargin) @f$ \psi @f$ is
 *      continued past @f$ m_1 \theta + m_2 = \pi @f$ as SphereFace does, so
 *      that it keeps decreasing (see faceops/margin_softmax.h); the cosine is
 *      clamped to [-1, 1] first when @f$ m_1 \ne 1 @f$ or @f$ m_2 \ne 0 @f$
 *
 * In the TEST phase the cosines pass through unchanged unless the
 * parameter's transform_test is true.  Backward: the cosines' diff is the
 * top diff, times @f$ d\psi / d\cos\theta @f$ at the targets.  The labels
 * take no gradient.  In-place use (top = bottom[0]) is allowed.
 */
template <typename Dtype>
class TargetMarginLayer : public Layer<Dtype> {
 public:
  explicit TargetMarginLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 1; }
  /// The labels take no gradient, even with force_backward.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index != 1;
  }

 protected:
  /// Sets m1_, m2_, m3_ and transform_test_ from the layer's parameter.
  virtual void ReadMargins() = 0;
  /// top = cosines with the target ones margined (labels: int64, host or
  /// device as the method).  Default: faceops' target_margin_forward.
  virtual void MarginForward_cpu(const Dtype* cosine, const int64_t* labels,
      Dtype* top);
  virtual void MarginForward_gpu(const Dtype* cosine, const int64_t* labels,
      Dtype* top);
  /// The cosines' diff from the top's.  Default: target_margin_backward.
  virtual void MarginBackward_cpu(const Dtype* cosine, const int64_t* labels,
      const Dtype* top_diff, Dtype* bottom_diff);
  virtual void MarginBackward_gpu(const Dtype* cosine, const int64_t* labels,
      const Dtype* top_diff, Dtype* bottom_diff);

  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// Whether Forward applies the margin (not in TEST without transform_test).
  bool Applies() const {
    return this->phase_ != TEST || transform_test_;
  }
  /// The cosines Backward differentiates at: a copy when in place.
  const Blob<Dtype>& Cosines(const Blob<Dtype>& bottom) const {
    return in_place_ ? cosine_ : bottom;
  }

  Dtype m1_, m2_, m3_;
  bool transform_test_;
  bool in_place_;
  int num_;          // N
  int num_classes_;  // C
  shared_ptr<SyncedMemory> labels_;  // int64 copy of bottom[1]
  Blob<Dtype> cosine_;               // bottom[0]'s data when in place
};

/**
 * @brief gehaocool/CombinedMargin-caffe's (and xialuxi/arcface-caffe's)
 *        CombinedMargin: combined_margin_param { m1 m2 m3 transform_test },
 *        @f$ \psi = \cos(m_1 \theta + m_2) - m_3 @f$.  See TargetMarginLayer.
 */
template <typename Dtype>
class CombinedMarginLayer : public TargetMarginLayer<Dtype> {
 public:
  explicit CombinedMarginLayer(const LayerParameter& param)
      : TargetMarginLayer<Dtype>(param) {}
  virtual inline const char* type() const { return "CombinedMargin"; }

 protected:
  virtual void ReadMargins();
};

/**
 * @brief xialuxi/arcface-caffe's CosinAddm (ArcFace):
 *        cosin_add_m_param { m transform_test }, exactly as the fork's CPU
 *        code (faceops/fork_margins.h, cosin_addm_forward/derivative):
 *        @f$ \psi = \cos(\theta + m) @f$ while @f$ \theta < \pi - m @f$,
 *        @f$ \cos\theta - m \sin m @f$ past it (insightface's fallback).
 *        A target "cosine" above 1 (bottom not a true cosine) is taken as 1:
 *        the top is cos m and the gradient passes through with factor 1, as
 *        in the fork, so training stays finite.  (MarginSoftmaxLoss and
 *        CombinedMargin use faceops' exact derivative instead.)
 *        See TargetMarginLayer.
 */
template <typename Dtype>
class CosinAddmLayer : public TargetMarginLayer<Dtype> {
 public:
  explicit CosinAddmLayer(const LayerParameter& param)
      : TargetMarginLayer<Dtype>(param) {}
  virtual inline const char* type() const { return "CosinAddm"; }

 protected:
  virtual void ReadMargins();
  virtual void MarginForward_cpu(const Dtype* cosine, const int64_t* labels,
      Dtype* top);
  virtual void MarginForward_gpu(const Dtype* cosine, const int64_t* labels,
      Dtype* top);
  virtual void MarginBackward_cpu(const Dtype* cosine, const int64_t* labels,
      const Dtype* top_diff, Dtype* bottom_diff);
  virtual void MarginBackward_gpu(const Dtype* cosine, const int64_t* labels,
      const Dtype* top_diff, Dtype* bottom_diff);
};

/**
 * @brief happynear's LabelSpecificAdd (caffe-windows, AM-Softmax):
 *        label_specific_add_param { bias transform_test bias_base bias_gamma
 *        bias_power bias_min bias_max iteration }, as the fork computes it:
 *        the target cosine becomes @f$ \cos\theta + b @f$ where
 *        @f$ \cos\theta > -b @f$ and is unchanged elsewhere; the gradient
 *        passes through unchanged.
 *
 * With bias_base set, the bias is annealed: at the t-th forward pass that
 * applies the margin (t from `iteration`, 0 by default)
 * @f$ b = \min(\max(b_{base} + (1 + \gamma t)^{p} - 1, b_{min}), b_{max}) @f$
 * (faceops/fork_margins.h, annealed_bias).  The count is the layer's own, not
 * saved in snapshots (as in the fork): a resumed run restarts it from
 * `iteration`.  An optional second top (shape 1) gets the bias used.
 */
template <typename Dtype>
class LabelSpecificAddLayer : public TargetMarginLayer<Dtype> {
 public:
  explicit LabelSpecificAddLayer(const LayerParameter& param)
      : TargetMarginLayer<Dtype>(param) {}
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual inline const char* type() const { return "LabelSpecificAdd"; }
  virtual inline int MaxTopBlobs() const { return 2; }

 protected:
  virtual void ReadMargins();
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void MarginForward_cpu(const Dtype* cosine, const int64_t* labels,
      Dtype* top);
  virtual void MarginForward_gpu(const Dtype* cosine, const int64_t* labels,
      Dtype* top);
  virtual void MarginBackward_cpu(const Dtype* cosine, const int64_t* labels,
      const Dtype* top_diff, Dtype* bottom_diff);
  virtual void MarginBackward_gpu(const Dtype* cosine, const int64_t* labels,
      const Dtype* top_diff, Dtype* bottom_diff);
  /// Sets bias_ for this pass (annealed when bias_base is set).
  void UpdateBias(const vector<Blob<Dtype>*>& top);

  Dtype bias_;
  int iteration_;
};

}  // namespace caffe

#endif  // CAFFE_TARGET_MARGIN_LAYER_HPP_
