#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/accuracy_layer.hpp"
#include "caffe/layers/parameter_layer.hpp"
#include "caffe/layers/scale_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// The fields happynear's caffe-windows (NormFace) adds to Caffe's own
// filler, Scale, Accuracy and Parameter, as faceops' installer patches them.
template <typename TypeParam>
class NormFaceFieldsTest : public MultiDeviceTest<TypeParam> {};

TYPED_TEST_CASE(NormFaceFieldsTest, TestDtypesAndDevices);

template <typename Dtype>
void ExpectUnitRows(const Blob<Dtype>& blob) {
  const int rows = blob.shape(0), cols = blob.count(1);
  for (int i = 0; i < rows; ++i) {
    double squared = 0;
    for (int k = 0; k < cols; ++k) squared += double(blob.cpu_data()[i * cols + k]) * blob.cpu_data()[i * cols + k];
    EXPECT_NEAR(squared, 1.0, 1e-5) << "row " << i;
  }
}

// gaussian_unitball: unit rows, with directions that differ (not a constant).
TYPED_TEST(NormFaceFieldsTest, TestGaussianUnitBallFiller) {
  typedef typename TypeParam::Dtype Dtype;
  Caffe::set_random_seed(1701);
  FillerParameter param;
  param.set_type("gaussian_unitball");
  param.set_std(100);  // not read: the rows are unit whatever std is
  Blob<Dtype> blob(10, 3, 2, 1);
  shared_ptr<Filler<Dtype> > filler(GetFiller<Dtype>(param));
  filler->Fill(&blob);
  ExpectUnitRows(blob);
  double distinct = 0;
  for (int k = 0; k < 6; ++k) distinct += std::fabs(blob.cpu_data()[k] - blob.cpu_data()[6 + k]);
  EXPECT_GT(distinct, 1e-3);
  int negatives = 0;
  for (int k = 0; k < blob.count(); ++k) negatives += blob.cpu_data()[k] < 0;
  EXPECT_GT(negatives, 10);  // Gaussian, not positive_unitball
  EXPECT_LT(negatives, 50);
}

// parameter_param { blob_filler }: the blob is filled at set-up; without it
// it stays zero (Caffe's behaviour).
TYPED_TEST(NormFaceFieldsTest, TestParameterBlobFiller) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_parameter_param()->mutable_shape()->add_dim(5);
  param.mutable_parameter_param()->mutable_shape()->add_dim(3);
  Blob<Dtype> top_blob;
  vector<Blob<Dtype>*> bottom, top(1, &top_blob);
  {
    ParameterLayer<Dtype> plain(param);
    plain.SetUp(bottom, top);
    for (int k = 0; k < 15; ++k) EXPECT_EQ(plain.blobs()[0]->cpu_data()[k], 0);
  }
  param.mutable_parameter_param()->mutable_blob_filler()->set_type("gaussian_unitball");
  ParameterLayer<Dtype> filled(param);
  filled.SetUp(bottom, top);
  filled.Forward(bottom, top);
  ExpectUnitRows(*filled.blobs()[0]);
  for (int k = 0; k < 15; ++k) EXPECT_EQ(top_blob.cpu_data()[k], filled.blobs()[0]->cpu_data()[k]);
}

// scale_param { min_value max_value }: the scale is clamped in place at the
// forward pass, and the output uses the clamped scale.
TYPED_TEST(NormFaceFieldsTest, TestScaleMinMaxValue) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> x(4, 3, 1, 1), y;
  for (int k = 0; k < 12; ++k) x.mutable_cpu_data()[k] = Dtype(k - 5) / 4;
  vector<Blob<Dtype>*> bottom(1, &x), top(1, &y);
  LayerParameter param;
  param.mutable_scale_param()->set_num_axes(0);
  param.mutable_scale_param()->mutable_filler()->set_value(0.001);
  param.mutable_scale_param()->set_min_value(0.01);
  ScaleLayer<Dtype> lower(param);
  lower.SetUp(bottom, top);
  EXPECT_NEAR(lower.blobs()[0]->cpu_data()[0], 0.001, 1e-9);  // the filler's value
  lower.Forward(bottom, top);
  EXPECT_NEAR(lower.blobs()[0]->cpu_data()[0], 0.01, 1e-9);
  for (int k = 0; k < 12; ++k) EXPECT_NEAR(y.cpu_data()[k], 0.01 * x.cpu_data()[k], 1e-7);
  param.mutable_scale_param()->mutable_filler()->set_value(50);
  param.mutable_scale_param()->set_max_value(20);
  ScaleLayer<Dtype> upper(param);
  upper.SetUp(bottom, top);
  upper.Forward(bottom, top);
  EXPECT_NEAR(upper.blobs()[0]->cpu_data()[0], 20, 1e-6);
  for (int k = 0; k < 12; ++k) EXPECT_NEAR(y.cpu_data()[k], 20 * x.cpu_data()[k], 1e-5);
  // Within the bounds nothing changes, and the gradient is Scale's own.
  param.mutable_scale_param()->mutable_filler()->set_value(10);
  ScaleLayer<Dtype> inside(param);
  inside.SetUp(bottom, top);
  inside.Forward(bottom, top);
  EXPECT_NEAR(inside.blobs()[0]->cpu_data()[0], 10, 1e-6);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&inside, bottom, top);
}

TYPED_TEST(NormFaceFieldsTest, TestScaleMinAboveMaxIsAnError) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> x(2, 3, 1, 1), y;
  vector<Blob<Dtype>*> bottom(1, &x), top(1, &y);
  LayerParameter param;
  param.set_name("cosine_scale");
  param.mutable_scale_param()->set_num_axes(0);
  param.mutable_scale_param()->set_min_value(2);
  param.mutable_scale_param()->set_max_value(1);
  ScaleLayer<Dtype> layer(param);
  layer.SetUp(bottom, top);
  EXPECT_DEATH(layer.Forward(bottom, top), "'cosine_scale': scale_param.min_value .* above max_value");
}

// accuracy_param { min_is_better: true }: the smallest score (a distance)
// is the prediction; ties rank by class index (the fork's sort).
TYPED_TEST(NormFaceFieldsTest, TestAccuracyMinIsBetter) {
  typedef typename TypeParam::Dtype Dtype;
  // 4 samples x 3 classes of distances.
  const Dtype distances[] = {0.1, 0.5, 0.9,   // label 0: nearest, hit
                             0.2, 0.4, 0.3,   // label 1: third nearest
                             0.7, 0.7, 0.9,   // label 1: tie with class 0, second
                             0.6, 0.6, 0.9};  // label 0: tie with class 1, first
  const Dtype labels[] = {0, 1, 1, 0};
  Blob<Dtype> scores(4, 3, 1, 1), label(4, 1, 1, 1), accuracy, per_class;
  caffe_copy(12, distances, scores.mutable_cpu_data());
  caffe_copy(4, labels, label.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom, top;
  bottom.push_back(&scores);
  bottom.push_back(&label);
  top.push_back(&accuracy);
  top.push_back(&per_class);
  LayerParameter param;
  param.mutable_accuracy_param()->set_min_is_better(true);
  AccuracyLayer<Dtype> top1(param);
  top1.SetUp(bottom, top);
  top1.Forward(bottom, top);
  EXPECT_NEAR(accuracy.cpu_data()[0], 0.5, 1e-6);  // samples 0 and 3
  EXPECT_NEAR(per_class.cpu_data()[0], 1.0, 1e-6);
  EXPECT_NEAR(per_class.cpu_data()[1], 0.0, 1e-6);
  EXPECT_NEAR(per_class.cpu_data()[2], 0.0, 1e-6);
  param.mutable_accuracy_param()->set_top_k(2);
  AccuracyLayer<Dtype> top2(param);
  top2.SetUp(bottom, top);
  top2.Forward(bottom, top);
  EXPECT_NEAR(accuracy.cpu_data()[0], 0.75, 1e-6);  // sample 2 too
  param.mutable_accuracy_param()->set_top_k(1);
  param.mutable_accuracy_param()->set_ignore_label(1);
  AccuracyLayer<Dtype> ignoring(param);
  ignoring.SetUp(bottom, top);
  ignoring.Forward(bottom, top);
  EXPECT_NEAR(accuracy.cpu_data()[0], 1.0, 1e-6);  // samples 0 and 3 only
  // min_is_better: false is Caffe's own (largest is best).
  LayerParameter plain;
  AccuracyLayer<Dtype> largest(plain);
  largest.SetUp(bottom, top);
  largest.Forward(bottom, top);
  EXPECT_NEAR(accuracy.cpu_data()[0], 0.25, 1e-6);  // sample 1 only
}

}  // namespace caffe
