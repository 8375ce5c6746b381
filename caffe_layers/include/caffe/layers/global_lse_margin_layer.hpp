#ifndef CAFFE_GLOBAL_LSE_MARGIN_LAYER_HPP_
#define CAFFE_GLOBAL_LSE_MARGIN_LAYER_HPP_

#include <stdint.h>

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/syncedmem.hpp"

namespace caffe {

/**
 * @brief happynear's (caffe-windows) GlobalLSEMargin, AM-Softmax's
 *        `prototxt/auto/face_train_test_auto`: an additive margin on the
 *        target cosine that the layer estimates from the batches, and a
 *        learned scale, with the fork's `scale_param { filler min_value
 *        max_value }`.
 *
 * @param bottom input Blob vector (length 2 or 3)
 *   -# @f$ (N \times C \times \ldots) @f$ the cosines x; the axes from 1 on
 *      are flattened into C >= 2 classes per sample
 *   -# the N labels, in @f$ [0, C) @f$
 *   -# (optional) the N feature norms r_i (Normalize's second top): they
 *      replace s as each sample's scale (the fork's "original norm" mode)
 * @param top output Blob vector (length 1 or 2)
 *   -# the shape of bottom[0]: @f$ s_i x_{ij} @f$, and
 *      @f$ s_i (x_{iy_i} - m) @f$ at the targets when m > 0
 *   -# (optional) shape (5), the fork's statistics: s (with 3 bottoms the
 *      mean r_i), the mean target cosine, the mean LSE_i, the mean of
 *      max(-1, largest non-target cosine), and m
 *
 * The layer's blobs are s (shape 1; `scale_param.filler`, else 30; learned:
 * lr_mult 1, or 0 with 3 bottoms, decay_mult 0 unless `param` says
 * otherwise) and m (shape 1, from 0, lr_mult 0: the forward pass sets it).
 * Each forward pass first clamps s in place to [min_value, max_value]
 * (defaults 0 and FLT_MAX), then takes each sample's margin
 * @f$ x_{iy_i} - \mathrm{LSE}_i @f$,
 * @f$ \mathrm{LSE}_i = \frac{1}{s_i} \log \sum_{j \ne y_i} e^{s_i x_{ij}} @f$,
 * and moves m towards the batch's mode of those margins (mean shift with a
 * 0.1 window; faceops/fork_margins.h, global_lse_margin_update, which says
 * where it departs from the fork: never an endless loop).  As in the fork
 * m is updated in both phases (the TEST net shares the blob) and is in
 * snapshots.  Backward takes m as a constant, as the fork does:
 * bottom diff = s_i top diff, s's diff (accumulated) and the norms' diff
 * @f$ \sum_j \delta_{ij} (x_{ij} - m [j = y_i, m > 0]) @f$.
 * The fork has only a GPU implementation; here the CPU code runs in both
 * modes (in GPU mode through Caffe's fallback, the blobs synchronised to the
 * host), since m needs the batch's margins on the host.  Not in place.
 */
template <typename Dtype>
class GlobalLSEMarginLayer : public Layer<Dtype> {
 public:
  explicit GlobalLSEMarginLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "GlobalLSEMargin"; }
  virtual inline int MinBottomBlobs() const { return 2; }
  virtual inline int MaxBottomBlobs() const { return 3; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }
  /// The labels take no gradient, even with force_backward.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index != 1;
  }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// Sample i's scale: s, or its feature norm (bottom[2]).
  Dtype SampleScale(const vector<Blob<Dtype>*>& bottom, int i) const;

  bool feature_norms_;  // 3 bottoms: the fork's original_norm_
  Dtype min_scale_;
  Dtype max_scale_;
  int num_;             // N
  int num_classes_;     // C
  vector<double> margins_;            // x_iy - LSE_i of the last pass
  shared_ptr<SyncedMemory> labels_;   // int64 copy of bottom[1]
};

}  // namespace caffe

#endif  // CAFFE_GLOBAL_LSE_MARGIN_LAYER_HPP_
