#ifndef CAFFE_INNER_DISTANCE_LAYER_HPP_
#define CAFFE_INNER_DISTANCE_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief happynear's InnerDistance (caffe-windows, under NormFace's
 *        prototxts): the distances between the features and each class
 *        weight, @f$ t_{mn} = ||x_m - w_n||^2 @f$ (distance_type "L2") or
 *        @f$ ||x_m - w_n||_1 @f$ ("L1"), as the fork computes them
 *        (faceops/normface.h).
 *
 * @param bottom input Blob vector (length 1 or 2)
 *   -# @f$ (M \times K) @f$ the features (axes from `axis` flattened)
 *   -# optional, @f$ (N \times K) @f$ the class weights (NormFace feeds a
 *      Parameter layer's blob through Normalize); without it the layer owns
 *      an N x K weight, N = num_output, filled by weight_filler, and with
 *      normalize: true rescales its rows in place to unit length at each
 *      forward pass (w / sqrt(||w||^2 + 1e-6)).
 * @param top output Blob vector (length 1)
 *   -# @f$ (M \times N) @f$ the distances
 *
 * Backward is the exact derivative (L1: the sign, 0 at 0); with normalize it
 * is the derivative with respect to the stored (unit) rows, as in the fork,
 * not through the rescaling.  bias_term and bias_filler are parsed and
 * unused, as in the fork (which creates no bias); transpose: true and
 * update_center_only: true are refused.  The GPU path runs the CPU code.
 */
template <typename Dtype>
class InnerDistanceLayer : public Layer<Dtype> {
 public:
  explicit InnerDistanceLayer(const LayerParameter& param) : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "InnerDistance"; }
  virtual inline int MinBottomBlobs() const { return 1; }
  virtual inline int MaxBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  int M_;  // samples
  int K_;  // features per sample
  int N_;  // classes (weight rows)
  bool l1_;
};

}  // namespace caffe

#endif  // CAFFE_INNER_DISTANCE_LAYER_HPP_
