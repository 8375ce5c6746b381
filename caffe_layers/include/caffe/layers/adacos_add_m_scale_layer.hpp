#ifndef CAFFE_ADACOS_ADD_M_SCALE_LAYER_HPP_
#define CAFFE_ADACOS_ADD_M_SCALE_LAYER_HPP_

#include <stdint.h>

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

namespace caffe {

/**
 * @brief xialuxi/arcface-caffe's AdaCosAddmScale (its AdaCos/ prototxt):
 *        CosinAddm's ArcFace margin on each target cosine, then every logit
 *        times the adaptive scale s of AdaCos (Zhang et al., CVPR 2019),
 *        recomputed at each forward pass as the fork does:
 *        adacos_add_m_scale_param { m num_classes transform_test }.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times C \times \ldots) @f$ the cosines; the axes from 1 on are
 *      flattened into C classes per sample
 *   -# the N labels, in @f$ [0, C) @f$
 * @param top output Blob vector (length 1 or 2)
 *   -# the shape of bottom[0]: @f$ s \cos\theta_{ij} @f$, and
 *      @f$ s \psi(\cos\theta_{i y_i}) @f$ at the targets, @f$ \psi @f$ the
 *      fork's CosinAddm (faceops/fork_margins.h, cosin_addm_forward)
 *   -# (optional, faceops) shape (1): the scale s of this pass
 *
 * s starts at @f$ \sqrt{2} \log(\mathrm{num\_classes} - 1) @f$ and each
 * forward pass sets it to @f$ \log B / \cos(\min(\bar\theta, \pi/4)) @f$ from
 * the previous s (fork_margins.h, adacos_scale, which names the fork's two
 * departures from the paper, kept here: the mean angle over all cosines, and
 * B with 1 per sample for the target).  As in the fork the margin and the
 * update apply in the TEST phase too (transform_test has no effect), each
 * net (TRAIN, TEST) has its own s, and s is not in snapshots.
 * adacos_add_m_scale_param.update_scale false (faceops) keeps s at its
 * initial value.  Backward takes s as a constant:
 * bottom diff = s top diff, times the fork's @f$ d\psi/d\cos\theta @f$ at the
 * targets (cosin_addm_derivative).  The fork's arccos of a cosine above 1 is
 * NaN; here it is clamped.  Not in place.
 */
template <typename Dtype>
class AdaCosAddmScaleLayer : public Layer<Dtype> {
 public:
  explicit AdaCosAddmScaleLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "AdaCosAddmScale"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }
  /// The labels take no gradient, even with force_backward.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index != 1;
  }

 protected:
  /// GPU mode runs these through Caffe's fallback (the blobs are synced to
  /// the host): s needs a reduction over all N x C cosines on the host.
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  Dtype m_;
  double scale_;      // s of the last forward pass (the next one starts from it)
  bool update_scale_;
  int num_;           // N
  int num_classes_;   // C
  shared_ptr<SyncedMemory> labels_;  // int64 copy of bottom[1]
};

}  // namespace caffe

#endif  // CAFFE_ADACOS_ADD_M_SCALE_LAYER_HPP_
