#ifndef CAFFE_TRIPLET_LOSS_LAYER_HPP_
#define CAFFE_TRIPLET_LOSS_LAYER_HPP_

#include <vector>

#include "faceops/triplet_loss.h"

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief The triplet loss, computed by the faceops core
 *        (faceops/triplet_loss.h), in two forms chosen by the number of
 *        bottoms.
 *
 * With two bottoms it mines the triplets in the batch:
 *   -# @f$ (N \times C \times H \times W) @f$ the features @f$ x_i @f$,
 *      flattened to @f$ K = CHW @f$ values each
 *   -# @f$ (N \times 1 \times 1 \times 1) @f$ the labels @f$ y_i @f$;
 *      same label = positive, other label = negative
 * and, with @f$ d_{ij} = ||x_i - x_j||_2^2 @f$ (squared: true) or
 * @f$ ||x_i - x_j||_2 @f$, @f$ m @f$ = margin and
 * @f$ [z]_+ = \max(0, z) @f$, triplet_loss_param.mining picks
 *   - SEMIHARD (Schroff et al., "FaceNet", CVPR 2015, sec. 3.2): the mean
 *     over ordered pairs @f$ (a, p) @f$ of @f$ [d_{ap} - d_{an^*} + m]_+ @f$,
 *     @f$ n^* @f$ the closest negative farther than @f$ p @f$ (else the
 *     farthest negative);
 *   - HARD (Hermans et al., "In Defense of the Triplet Loss", 2017, eq. 5):
 *     the mean over anchors of
 *     @f$ [m + \max_p d_{ap} - \min_n d_{an}]_+ @f$;
 *   - ALL (ibid., eq. 6): the mean over all valid @f$ (a, p, n) @f$ of
 *     @f$ [d_{ap} - d_{an} + m]_+ @f$.
 *
 * With three bottoms (happynear's caffe-windows form), anchor @f$ a_i @f$,
 * positive @f$ p_i @f$ and negative @f$ n_i @f$, each
 * @f$ (N \times C \times H \times W) @f$, the loss is
 * @f$ E = \frac{1}{2N} \sum_{i=1}^N
 *     [m + ||a_i - p_i||_2^2 - ||a_i - n_i||_2^2]_+ @f$.
 *
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss
 *
 * Backward: the diff of each feature bottom is its gradient times the top
 * diff; the labels take no gradient.
 */
template <typename Dtype>
class TripletLossLayer : public LossLayer<Dtype> {
 public:
  explicit TripletLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param), mines_(false) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "TripletLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return -1; }
  virtual inline int MinBottomBlobs() const { return 2; }
  virtual inline int MaxBottomBlobs() const { return 3; }
  /// The label (bottom[1] of the two-bottom form) takes no gradient.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return !(mines_ && bottom_index == 1);
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

  bool mines_;  // two bottoms (features, label): in-batch mining
  int num_;     // N
  int dim_;     // K
  faceops::TripletMining mining_;
  shared_ptr<SyncedMemory> labels_;    // int64 copy of bottom[1] (mining)
  vector<shared_ptr<Blob<Dtype> > > diffs_;  // dE/d bottom[i], by Forward
};

}  // namespace caffe

#endif  // CAFFE_TRIPLET_LOSS_LAYER_HPP_
