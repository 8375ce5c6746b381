#ifndef CAFFE_PAIR_LOSS_LAYER_HPP_
#define CAFFE_PAIR_LOSS_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The pair loss of the Multibatch method (Tadmor, Wexler, Rosenwein,
 *        Shalev-Shwartz and Shashua, "Learning a Metric Embedding for Face
 *        Recognition using the Multibatch Method", NIPS 2016) over every
 *        ordered pair of the batch, with a learned distance threshold.
 *        Computed by the faceops core (faceops/pair_loss.h).
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C \times H \times W) @f$
 *      the features @f$ x_i @f$, flattened to @f$ K = CHW @f$ values each
 *   -# @f$ (N \times 1 \times 1 \times 1) @f$
 *      the labels; @f$ y_{ij} = 1 @f$ for equal labels, else @f$ -1 @f$
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$
 *      the loss @f$
 *        E = \frac{1}{N^2 - N} \sum_{i \ne j}
 *            \max(0, 1 - y_{ij} (\theta - ||x_i - x_j||_2^2)) @f$
 *
 * The layer owns one blob, the threshold @f$ \theta @f$, shape (1),
 * initialised to pair_loss_param.theta; its diff accumulates
 * @f$ \partial E / \partial \theta @f$ times the top diff, so the solver
 * learns it.  The features' diff is their gradient times the top diff; the
 * labels take no gradient.
 */
template <typename Dtype>
class PairLossLayer : public LossLayer<Dtype> {
 public:
  explicit PairLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "PairLoss"; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  int num_;  // N
  int dim_;  // K
  shared_ptr<SyncedMemory> labels_;  // int64 copy of bottom[1]
  Blob<Dtype> feature_diff_;         // dE/dx, written by Forward
  Blob<Dtype> theta_diff_;           // dE/dtheta, written by Forward
};

}  // namespace caffe

#endif  // CAFFE_PAIR_LOSS_LAYER_HPP_
