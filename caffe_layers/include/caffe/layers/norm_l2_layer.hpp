#ifndef CAFFE_NORM_L2_LAYER_HPP_
#define CAFFE_NORM_L2_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief xialuxi/arcface-caffe's NormL2 (its AdaCos/ prototxt): each sample's
 *        features divided by @f$ \sqrt{||x_i||^2 + 10^{-7}} @f$, as the fork
 *        computes it (faceops/fork_margins.h, norml2_row and its backward).
 *
 * @param bottom input Blob vector (length 1)
 *   -# @f$ (N \times \ldots) @f$ the features; the axes from 1 on are
 *      flattened into one vector per sample
 * @param top output Blob vector (length 1)
 *   -# the shape of bottom[0]: @f$ y_i = x_i / \sqrt{||x_i||^2 + 10^{-7}} @f$
 *
 * Backward is the exact derivative (the fork's):
 * @f$ (g_i - (y_i \cdot g_i) y_i) / \sqrt{||x_i||^2 + 10^{-7}} @f$.  A zero
 * row gives a zero output and the finite gradient @f$ g_i / \sqrt{10^{-7}} @f$.
 * The layer takes no parameter; unlike Normalize, it has no norms top and
 * keeps the fork's epsilon.  Not in place.
 */
template <typename Dtype>
class NormL2Layer : public Layer<Dtype> {
 public:
  explicit NormL2Layer(const LayerParameter& param) : Layer<Dtype>(param) {}
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "NormL2"; }
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

  int num_;  // N
  int dim_;  // the features per sample
};

}  // namespace caffe

#endif  // CAFFE_NORM_L2_LAYER_HPP_
