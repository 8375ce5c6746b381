#ifndef CAFFE_NORMALIZE_LAYER_HPP_
#define CAFFE_NORMALIZE_LAYER_HPP_

#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief L2 normalisation of each sample's feature vector, compatible with
 *        happynear's Normalize layer (caffe-windows; NormFace, Wang, Xiang,
 *        Cheng and Yuille, ACM MM 2017).  Computed by the faceops core
 *        (faceops/margin_softmax.h, normalize_rows and its backward).
 *
 * @param bottom input Blob vector (length 1)
 *   -# @f$ (N \times D) @f$ or @f$ (N \times D \times 1 \times 1) @f$
 *      the features @f$ x_i @f$
 * @param top output Blob vector (length 1 or 2)
 *   -# the shape of bottom[0]:
 *      @f$ \hat x_i = \frac{x_i}{\max(||x_i||_2, 10^{-12})} @f$
 *   -# (optional) @f$ (N \times 1) @f$ or @f$ (N \times 1 \times 1 \times 1)
 *      @f$: the norms @f$ ||x_i||_2 @f$
 *
 * Backward: the features' diff is
 * @f$ \frac{g_i - \hat x_i (\hat x_i \cdot g_i)}{||x_i||} @f$ for the top
 * diff @f$ g_i @f$; with the second top and normalize_param.bp_norm, plus
 * the norms' diff times @f$ \partial ||x_i|| / \partial x_i = \hat x_i @f$.
 *
 * normalize_param: only normalize_type "L2" and fix_gradient false are
 * supported (anything else stops Caffe with an error), and only one vector
 * per sample: the fork also normalises (N x C x H x W) blobs over C at each
 * of the H x W positions, which this layer refuses.  The fork adds 1e-6 (CPU)
 * or 1e-12 (GPU) to the squared norm; faceops floors the norm at 1e-12.
 */
template <typename Dtype>
class NormalizeLayer : public Layer<Dtype> {
 public:
  explicit NormalizeLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "Normalize"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
  virtual inline int MinTopBlobs() const { return 1; }
  virtual inline int MaxTopBlobs() const { return 2; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// The norms: top[1] when given, else norm_.
  Blob<Dtype>* Norms(const vector<Blob<Dtype>*>& top) {
    return top.size() == 2 ? top[1] : &norm_;
  }

  int num_;  // N
  int dim_;  // D
  bool bp_norm_;
  Blob<Dtype> norm_;
};

}  // namespace caffe

#endif  // CAFFE_NORMALIZE_LAYER_HPP_
