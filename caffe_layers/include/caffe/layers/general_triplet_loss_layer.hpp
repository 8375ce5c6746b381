#ifndef CAFFE_GENERAL_TRIPLET_LOSS_LAYER_HPP_
#define CAFFE_GENERAL_TRIPLET_LOSS_LAYER_HPP_

#include <cstdint>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/loss_layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief happynear's GeneralTripletLoss (caffe-windows, NormFace's
 *        normalized_Euclidean_triplet net) over the distances of each sample
 *        to every class centre: the own centre is the positive, every other
 *        centre a negative, @f$ \frac1N \sum_i \sum_{j \ne y_i} n_w
 *        \max(0, d_{iy_i} + m - d_{ij}) @f$, with the fork's
 *        general_triplet_loss_param (margin, add_center_loss, hardest_only,
 *        positive_first, positive_upper_bound, positive_weight,
 *        negative_weight) computed as the fork does.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C) @f$ the distances
 *   -# @f$ (N) @f$ the labels, integers in [0, C)
 * @param top output Blob vector (length 1 or 2)
 *   -# the loss
 *   -# optional: the mean positive distance and the mean negative distance
 *      (no gradient, as in the fork)
 *
 * Backward is the fork's, which is not the derivative of this loss (the
 * positive gets positive_weight once per row, and with add_center_loss also
 * without an active hinge: faceops/normface.h lists it); it is exact with
 * hardest_only, add_center_loss false and positive_weight = negative_weight
 * (GradientChecker-tested there).  The fork's third bottom (per-sample
 * weights) is refused.  The GPU path runs the CPU code.
 */
template <typename Dtype>
class GeneralTripletLossLayer : public LossLayer<Dtype> {
 public:
  explicit GeneralTripletLossLayer(const LayerParameter& param) : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "GeneralTripletLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return -1; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  int num_;
  int dim_;
  std::vector<int64_t> labels_, hardest_;  // hardest_only's negative, -1 for none
  Blob<Dtype> terms_;                      // the forward terms (N x C)
};

}  // namespace caffe

#endif  // CAFFE_GENERAL_TRIPLET_LOSS_LAYER_HPP_
