#ifndef CAFFE_UTIL_FACEOPS_INNER_PRODUCT_HPP_
#define CAFFE_UTIL_FACEOPS_INNER_PRODUCT_HPP_

#include <vector>

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

/**
 * @brief caffe-windows' InnerProduct with the weight as a second bottom
 *        (NormFace's `combine_softmax_contrastive`: a `Parameter` blob
 *        through `Normalize`): top = x W^T with W = bottom[1], (N x K) with
 *        N = bottom[1]->shape(0) outputs and K = bottom[0]->count(axis).
 *        Backward writes bottom[1]'s diff (top_diff^T x) and bottom[0]'s
 *        (top_diff W), as the fork does; the layer has no blobs.
 *
 * The fork's form with a bias needs a third bottom (its two-bottom form with
 * `bias_term: true` reads a blob it never creates), and its `transpose`
 * takes the output count from the wrong axis, so with a weight bottom
 * `bias_term: true`, `transpose: true` and `normalize: true` (which the fork
 * ignores there) are errors.  Returns N.
 */
int FaceopsWeightBottomOutputs(const LayerParameter& param, int K,
    const vector<int>& weight_shape);
template <typename Dtype>
void FaceopsWeightBottomForward_cpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top, int M, int N, int K);
template <typename Dtype>
void FaceopsWeightBottomBackward_cpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom,
    int M, int N, int K);
template <typename Dtype>
void FaceopsWeightBottomForward_gpu(const vector<Blob<Dtype>*>& bottom,
    const vector<Blob<Dtype>*>& top, int M, int N, int K);
template <typename Dtype>
void FaceopsWeightBottomBackward_gpu(const vector<Blob<Dtype>*>& top,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom,
    int M, int N, int K);

}  // namespace caffe

#endif  // CAFFE_UTIL_FACEOPS_INNER_PRODUCT_HPP_
