#ifndef CAFFE_FOCAL_LOSS_LAYER_HPP_
#define CAFFE_FOCAL_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/loss_layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief The softmax focal loss of xialuxi/arcface-caffe's cosin_add_m
 *        prototxt (zimenglan-sysu-512/Focal-Loss's FocalLoss layer; Lin et
 *        al., ICCV 2017, eq. 5): focal_loss_param { type gamma alpha beta }.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C \times \ldots) @f$ the logits @f$ x @f$; the class
 *      axis is softmax_param.axis (1 by default), as in SoftmaxWithLoss
 *   -# the labels, one per logit vector, in @f$ [0, C) @f$
 * @param top output Blob vector (length 1 or 2)
 *   -# (1) the loss
 *      @f$ \frac{1}{\nu} \sum_i -\alpha (1 - p_i)^\gamma \log \max(p_i, \mathrm{FLT\_MIN}) @f$,
 *      @f$ p_i @f$ the softmax probability of sample i's label and
 *      @f$ \nu @f$ the loss_param normalization (VALID by default:
 *      the samples not ignored), as SoftmaxWithLoss
 *   -# (optional) the probabilities, shape of bottom[0]
 *
 * The per-sample math is faceops/fork_margins.h's focal_loss_term and
 * focal_loss_logit_scale: the fork's gradient, which is the exact derivative
 * (its (1 - p) in a denominator floored at 1e-10), except that where p
 * underflows to 0 the fork's gradient is NaN and this layer's its limit.
 * loss_param.ignore_label and normalization as in the fork.  type LINEAR,
 * which the fork parses but never computes, stops Caffe with an error; beta
 * is LINEAR's and unused.  alpha must be > 0 and gamma >= 0 (the fork's checks).
 */
template <typename Dtype>
class FocalLossLayer : public LossLayer<Dtype> {
 public:
  explicit FocalLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "FocalLoss"; }
  virtual inline int ExactNumTopBlobs() const { return -1; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// The loss_param normalizer for `valid_count` samples not ignored.
  Dtype Normalizer(int valid_count) const;
  /// Checks the labels (whole numbers in [0, C) unless ignored).
  void CheckLabels(const Blob<Dtype>& label) const;

  shared_ptr<Layer<Dtype> > softmax_layer_;
  Blob<Dtype> prob_;
  vector<Blob<Dtype>*> softmax_bottom_vec_;
  vector<Blob<Dtype>*> softmax_top_vec_;
  Blob<Dtype> sample_loss_;   // per-sample loss (GPU path)
  Blob<Dtype> sample_valid_;  // 1 where not ignored (GPU path)
  Dtype alpha_, gamma_;
  bool has_ignore_label_;
  int ignore_label_;
  LossParameter_NormalizationMode normalization_;
  int softmax_axis_, outer_num_, inner_num_;
};

}  // namespace caffe

#endif  // CAFFE_FOCAL_LOSS_LAYER_HPP_
