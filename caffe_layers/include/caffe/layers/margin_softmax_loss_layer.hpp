#ifndef CAFFE_MARGIN_SOFTMAX_LOSS_LAYER_HPP_
#define CAFFE_MARGIN_SOFTMAX_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The combined margin softmax loss (Deng, Guo, Xue and Zafeiriou,
 *        "ArcFace", CVPR 2019, eq. 4): ArcFace, CosFace / AM-Softmax and
 *        SphereFace in one layer that owns the class weights, in place of
 *        Normalize + normalised InnerProduct + margin + Scale +
 *        SoftmaxWithLoss.  Computed by the faceops core
 *        (faceops/margin_softmax.h).
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times \ldots) @f$
 *      the features; the axes from margin_softmax_loss_param.axis (default 1)
 *      on are flattened into one vector @f$ x_i @f$ of length @f$ D @f$ per
 *      sample (the axes before it index the @f$ N @f$ samples)
 *   -# @f$ (N \times \ldots) @f$, @f$ N @f$ values in total
 *      the labels @f$ y_i \in [0, C) @f$, @f$ C @f$ = num_output
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$
 *      the loss @f$
 *        E = \frac{1}{N} \sum_{i=1}^N \left[ \log \sum_{j=1}^C
 *            e^{z_{ij}} - z_{i y_i} \right] @f$ with
 *      @f$ z_{ij} = s \cos\theta_{ij} @f$ for @f$ j \ne y_i @f$,
 *      @f$ z_{i y_i} = s \, \psi(\cos\theta_{i y_i}) @f$,
 *      @f$ \cos\theta_{ij} = \frac{x_i \cdot w_j}{||x_i|| \, ||w_j||} @f$ and
 *      @f$ \psi = \cos(m_1 \theta + m_2) - m_3 @f$ (continued past
 *      @f$ m_1 \theta + m_2 = \pi @f$ as SphereFace does, so that it keeps
 *      decreasing; see faceops/margin_softmax.h)
 *
 * The layer owns one blob, the class weights @f$ w @f$, @f$ (C \times D) @f$,
 * filled by margin_softmax_loss_param.weight_filler (xavier when not given).
 * margin_softmax_loss_param gives @f$ s @f$ (64), @f$ m_1 @f$ (1),
 * @f$ m_2 @f$ (0.5), @f$ m_3 @f$ (0): ArcFace by default; @f$ m_2 = 0,
 * m_3 = 0.35 @f$ is CosFace, @f$ m_1 = 4, m_2 = 0 @f$ SphereFace.
 *
 * Backward: the features' diff is @f$ \partial E / \partial x @f$ times the
 * top diff (loss_weight); the weight's diff accumulates
 * @f$ \partial E / \partial w @f$ times the top diff.  The labels take no
 * gradient.
 */
template <typename Dtype>
class MarginSoftmaxLossLayer : public LossLayer<Dtype> {
 public:
  explicit MarginSoftmaxLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "MarginSoftmaxLoss"; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  int num_classes_;  // C
  int axis_;
  int num_;          // N
  int dim_;          // D
  Dtype scale_, m1_, m2_, m3_;
  shared_ptr<SyncedMemory> labels_;  // int64 copy of bottom[1]
  // dE/dx and dE/dw, written by Forward in the TRAIN phase (the core computes
  // them with the loss) and by Backward otherwise.
  Blob<Dtype> feature_diff_, weight_diff_;
  bool diffs_current_;
};

}  // namespace caffe

#endif  // CAFFE_MARGIN_SOFTMAX_LOSS_LAYER_HPP_
