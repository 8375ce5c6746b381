#ifndef CAFFE_UTIL_FACEOPS_INNER_PRODUCT_HPP_
#define CAFFE_UTIL_FACEOPS_INNER_PRODUCT_HPP_

#include "caffe/blob.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief `inner_product_param { normalize: true }`, the field the Caffe face
 *        forks (happynear's caffe-windows, AM-Softmax, NormFace, arcface-caffe,
 *        CombinedMargin) add to Caffe's InnerProduct; faceops' installer calls
 *        these from Caffe's own InnerProductLayer.
 *
 * Each forward pass rescales every weight row in place to
 * @f$ w_j / \sqrt{\|w_j\|^2 + 10^{-12}} @f$, as the forks do, so the outputs
 * are @f$ x \cdot \hat w_j @f$ (cosines when x is normalised too) and a
 * snapshot holds unit rows.  Backward then removes the radial part of each
 * row's diff, @f$ \delta_j - (\hat w_j \cdot \delta_j) \hat w_j @f$: the
 * gradient with respect to the stored row of a function of
 * @f$ w_j / \|w_j\| @f$.  The forks keep the radial part, which the next
 * forward pass's rescaling removes to first order in the learning rate.
 * A zero row stays zero.  `transpose: true` with `normalize: true` is an error.
 */
template <typename Dtype>
void FaceopsNormalizeWeight_cpu(const LayerParameter& param,
    Blob<Dtype>* weight, bool transpose);
template <typename Dtype>
void FaceopsProjectWeightDiff_cpu(Blob<Dtype>* weight);
template <typename Dtype>
void FaceopsNormalizeWeight_gpu(const LayerParameter& param,
    Blob<Dtype>* weight, bool transpose);
template <typename Dtype>
void FaceopsProjectWeightDiff_gpu(Blob<Dtype>* weight);

}  // namespace caffe

#endif  // CAFFE_UTIL_FACEOPS_INNER_PRODUCT_HPP_
