#ifndef CAFFE_CENTER_LOSS_LAYER_HPP_
#define CAFFE_CENTER_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The center loss of Wen, Zhang, Li and Qiao, "A Discriminative
 *        Feature Learning Approach for Deep Face Recognition", ECCV 2016
 *        (eq. 2, averaged over the batch), compatible with ydwen/caffe-face.
 *        Computed by the faceops core (faceops/center_loss.h).
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times \ldots) @f$
 *      the features; the axes from center_loss_param.axis (default 1) on
 *      are flattened into one vector @f$ x_i @f$ of length @f$ K @f$ per
 *      sample (the axes before it index the @f$ N @f$ samples)
 *   -# @f$ (N \times \ldots) @f$, @f$ N @f$ values in total
 *      the labels @f$ y_i \in [0, C) @f$, @f$ C @f$ = num_output
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$
 *      the loss @f$
 *        E = \frac{1}{2N} \sum_{i=1}^N \left| \left| x_i - c_{y_i}
 *            \right| \right|_2^2 @f$
 *
 * The layer owns one blob, the centers @f$ c @f$, @f$ (C \times K) @f$,
 * filled by center_loss_param.center_filler.
 *
 * Backward: the features' diff is
 * @f$ \frac{\partial E}{\partial x_i} = \frac{x_i - c_{y_i}}{N} @f$
 * times the top diff.  The centers' diff accumulates the update direction of
 * eq. 4, @f$ \Delta c_j = \frac{\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j} @f$
 * (@f$ n_j @f$ the number of samples of class @f$ j @f$ in the batch),
 * unscaled by loss_weight, so the solver's lr @f$ \times @f$ lr_mult is the
 * paper's @f$ \alpha @f$, as in caffe-face.  The labels take no gradient.
 */
template <typename Dtype>
class CenterLossLayer : public LossLayer<Dtype> {
 public:
  explicit CenterLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "CenterLoss"; }

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
  int dim_;          // K
  shared_ptr<SyncedMemory> labels_;  // int64 copy of bottom[1]
  Blob<Dtype> feature_diff_;         // dE/dx, written by Forward
};

}  // namespace caffe

#endif  // CAFFE_CENTER_LOSS_LAYER_HPP_
