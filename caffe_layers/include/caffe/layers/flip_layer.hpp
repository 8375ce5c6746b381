#ifndef CAFFE_FLIP_LAYER_HPP_
#define CAFFE_FLIP_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief happynear's (caffe-windows) Flip, NormFace's
 *        `example_of_mirror_face`: the mirror image of each sample,
 *        `flip_param { flip_width flip_height }` (defaults true, false: the
 *        fork's).
 *
 * @param bottom input Blob vector (length 1)
 *   -# @f$ (N \times C \times H \times W) @f$, at most 4 axes (missing axes
 *      count as 1, Caffe's legacy shape, as in the fork)
 * @param top output Blob vector (length 1)
 *   -# the same shape: @f$ y_{nchw} = x_{nc h' w'} @f$ with
 *      @f$ w' = W - 1 - w @f$ when flip_width (else w) and
 *      @f$ h' = H - 1 - h @f$ when flip_height (else h)
 *      (faceops/fork_margins.h, flip_source)
 *
 * Backward flips the top diff back (the exact gradient).  Not in place.
 */
template <typename Dtype>
class FlipLayer : public Layer<Dtype> {
 public:
  explicit FlipLayer(const LayerParameter& param) : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "Flip"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  bool flip_width_;
  bool flip_height_;
  int height_;  // H
  int width_;   // W
};

}  // namespace caffe

#endif  // CAFFE_FLIP_LAYER_HPP_
