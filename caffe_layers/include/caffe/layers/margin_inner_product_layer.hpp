#ifndef CAFFE_MARGIN_INNER_PRODUCT_LAYER_HPP_
#define CAFFE_MARGIN_INNER_PRODUCT_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

namespace caffe {

/**
 * @brief wy1iu/sphereface's MarginInnerProduct (A-Softmax: Liu et al.,
 *        "SphereFace", CVPR 2017, eq. 6-7), with its margin_inner_product_param
 *        and its lambda annealing, computed as the fork does
 *        (faceops/fork_margins.h, sphereface_*).
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times K \times \ldots) @f$ the features @f$ x_i @f$, the axes
 *      from `axis` on flattened into K
 *   -# @f$ N @f$ labels @f$ y_i \in [0, C) @f$
 * @param top output Blob vector (length 1 or 2)
 *   -# @f$ (N \times C) @f$: @f$ x_i \cdot \hat w_j @f$ for @f$ j \ne y_i @f$ and
 *      @f$ \frac{\|x_i\| \psi(\cos\theta_{i y_i}) + \lambda x_i \cdot \hat w_{y_i}}
 *      {1 + \lambda} @f$, @f$ \psi = (-1)^k \cos(m\theta) - 2k @f$, m = 1, 2,
 *      3, 4 for type SINGLE, DOUBLE, TRIPLE, QUADRUPLE
 *   -# (optional) shape 1: @f$ \lambda @f$
 *
 * The weight (C x K, `weight_filler`, xavier when none is given) has its rows
 * normalised in place at each forward pass, as in the fork.  Each forward
 * pass (TRAIN or TEST net alike, each its own count) first advances the
 * iteration t, starting from `iteration`, then
 * @f$ \lambda = \max(base (1 + \gamma t)^{-power}, \lambda_{min}) @f$.
 * The count is not saved in snapshots (as in the fork).
 *
 * Backward, as the fork (exact_gradient false): the weight's diff is that
 * of a plain inner product, @f$ g^T x @f$; the target's feature gradient
 * @f$ c_w \hat w + c_x x @f$ (the exact one, see sphereface_target_backward)
 * has @f$ (c_w, c_x) @f$ rescaled to unit length.  exact_gradient true (a
 * faceops field) gives the exact gradients of the forward pass, the weight's
 * with its radial part removed, as for inner_product_param.normalize.
 * A zero feature row is an error (the fork divides by its norm), and so is
 * one with a NaN or Inf, or a norm beyond Dtype's range.  A row whose sum of
 * squares alone overflows (entries near sqrt(max)) gets its norm by
 * faceops::row_norm's rescaling, where the fork's sqrt(inf) gives c = 0.
 */
template <typename Dtype>
class MarginInnerProductLayer : public Layer<Dtype> {
 public:
  explicit MarginInnerProductLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual inline const char* type() const { return "MarginInnerProduct"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index != 1;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  /// Advances the iteration, sets lambda_ (and top[1]), checks the labels.
  void BeginForward(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  /// Stops with an error naming the first zero feature row, if any.
  void CheckFeatureNorms() const;

  int m_;             // 1, 2, 3 or 4
  int num_, dim_, num_classes_;  // N, K, C
  int iteration_;
  Dtype lambda_;
  bool as_fork_;
  Blob<Dtype> x_norm_;          // N: ||x_i||
  Blob<Dtype> inner_product_;   // N: x_i . w_{y_i} before the margin
  Blob<Dtype> scaled_diff_;     // N x C: the top diff with g_weight at targets
  Blob<Dtype> target_factors_;  // N x 2: g_w, g_x of each target
  shared_ptr<SyncedMemory> labels_;  // int64 copy of bottom[1]
};

}  // namespace caffe

#endif  // CAFFE_MARGIN_INNER_PRODUCT_LAYER_HPP_
