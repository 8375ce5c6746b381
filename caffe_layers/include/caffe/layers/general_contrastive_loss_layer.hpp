#ifndef CAFFE_GENERAL_CONTRASTIVE_LOSS_LAYER_HPP_
#define CAFFE_GENERAL_CONTRASTIVE_LOSS_LAYER_HPP_

#include <cstdint>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/loss_layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief happynear's GeneralContrastiveLoss (caffe-windows, NormFace's
 *        "C-contrastive" loss, Wang et al., ACM MM 2017, sec. 4.2) over the
 *        distances of each sample to every class centre (InnerDistance's
 *        top): the target's distance is pulled below positive_margin, the
 *        others pushed beyond negative_margin,
 *        @f$ \frac1N \sum_i [p_w \min(t, \max(0, d_{iy_i} - p_m))
 *        + n_w \sum_{j \ne y_i} \max(0, n_m - d_{ij})] @f$,
 *        with every option of general_contrastive_loss_param computed as the
 *        fork does, quirks included (faceops/normface.h lists them).
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C) @f$ the distances
 *   -# @f$ (N) @f$ the labels, integers in [0, C)
 * @param top output Blob vector (length 1 or 2)
 *   -# the loss
 *   -# optional: the mean positive term and the mean negative hinge
 *      @f$ \sum \max(0, n_m - d_{ij}) / (N (C - 1)) @f$ (and, with
 *      add_intra_mae, the running mean positive distance).  As in the fork
 *      it has no gradient: a loss_weight on it (NormFace's mnist net sets
 *      one) adds it to the displayed loss only.
 *
 * Backward is the fork's (the derivative of the loss away from the hinges,
 * with the departures normface.h names).  The fork's three-bottom form is
 * refused; `square` is parsed and, as in the fork, not read.  The GPU path
 * runs the CPU code.
 */
template <typename Dtype>
class GeneralContrastiveLossLayer : public LossLayer<Dtype> {
 public:
  explicit GeneralContrastiveLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param), intra_mae_(0) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "GeneralContrastiveLoss"; }
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
  Dtype intra_mae_;        // add_intra_mae's running mean positive distance
  Dtype negative_margin_;  // of the last forward pass
  int64_t max_positive_;                    // max_positive_only's row
  std::vector<int64_t> labels_, max_negative_;  // max_negative_only's classes
  Blob<Dtype> terms_;      // the forward terms (N x C)
};

}  // namespace caffe

#endif  // CAFFE_GENERAL_CONTRASTIVE_LOSS_LAYER_HPP_
