#ifndef CAFFE_UTIL_FACEOPS_FILLERS_HPP_
#define CAFFE_UTIL_FACEOPS_FILLERS_HPP_

#include "caffe/filler.hpp"

namespace caffe {

/// Fills each row (blob->shape(0) rows of count / shape(0)) with N(0, 1)
/// draws rescaled to w / sqrt(||w||^2 + 1e-12) (caffe_layers/src/caffe/util/).
template <typename Dtype>
void FaceopsFillGaussianUnitBall(Blob<Dtype>* blob);

/**
 * @brief The filler `type: "gaussian_unitball"` of happynear's caffe-windows
 *        (NormFace): Gaussian rows projected onto the unit sphere, so that a
 *        normalised classifier starts with directions uniform on the sphere.
 *        faceops' installer adds it to Caffe's GetFiller.  mean, std and
 *        sparse are not read (the fork draws N(0, 1) whatever they are).
 */
template <typename Dtype>
class FaceopsGaussianUnitBallFiller : public Filler<Dtype> {
 public:
  explicit FaceopsGaussianUnitBallFiller(const FillerParameter& param)
      : Filler<Dtype>(param) {}
  virtual void Fill(Blob<Dtype>* blob) { FaceopsFillGaussianUnitBall(blob); }
};

}  // namespace caffe

#endif  // CAFFE_UTIL_FACEOPS_FILLERS_HPP_
