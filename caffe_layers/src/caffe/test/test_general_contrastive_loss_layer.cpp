#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/general_contrastive_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// happynear's GeneralContrastiveLoss over distances (N x C) and labels.
template <typename TypeParam>
class GeneralContrastiveLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 6 samples x 4 classes of distances in [0.1, 2.5], none within 0.05 of
  // the default negative margin 1 (the hinges' kinks).
  GeneralContrastiveLossLayerTest()
      : distance_(new Blob<Dtype>(6, 4, 1, 1)), label_(new Blob<Dtype>(6, 1, 1, 1)),
        loss_(new Blob<Dtype>()), mean_distance_(new Blob<Dtype>()) {
    Caffe::set_random_seed(1701);
    FillerParameter filler_param;
    filler_param.set_min(0.1);
    filler_param.set_max(2.5);
    UniformFiller<Dtype> filler(filler_param);
    filler.Fill(distance_);
    Dtype* d = distance_->mutable_cpu_data();
    for (int k = 0; k < distance_->count(); ++k) {
      if (std::fabs(d[k] - 1) < 0.05) d[k] += d[k] < 1 ? -0.1 : 0.1;
    }
    const Dtype labels[] = {0, 1, 2, 3, 1, 0};
    caffe_copy(6, labels, label_->mutable_cpu_data());
    bottom_.push_back(distance_);
    bottom_.push_back(label_);
    top_.push_back(loss_);
  }
  virtual ~GeneralContrastiveLossLayerTest() {
    delete distance_;
    delete label_;
    delete loss_;
    delete mean_distance_;
  }
  Dtype D(int i, int j) { return distance_->cpu_data()[i * 4 + j]; }
  int Y(int i) { return static_cast<int>(label_->cpu_data()[i]); }

  Blob<Dtype>* const distance_;
  Blob<Dtype>* const label_;
  Blob<Dtype>* const loss_;
  Blob<Dtype>* const mean_distance_;
  vector<Blob<Dtype>*> bottom_, top_;
};

TYPED_TEST_CASE(GeneralContrastiveLossLayerTest, TestDtypesAndDevices);

// The defaults (pm 0, nm 1, weights 1, outlier threshold 4) and NormFace's
// mnist second top, against a float64 reference.
TYPED_TEST(GeneralContrastiveLossLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  this->top_.push_back(this->mean_distance_);
  LayerParameter param;
  param.add_loss_weight(1);  // one per top, as a loss layer's two tops need
  param.add_loss_weight(0);
  param.mutable_general_contrastive_loss_param()->set_positive_weight(2);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  layer.Forward(this->bottom_, this->top_);
  double positive = 0, negative = 0;
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 4; ++j) {
      const double d = this->D(i, j);
      if (j == this->Y(i)) positive += std::min(4.0, std::max(0.0, d));
      else negative += std::max(0.0, 1 - d);
    }
  }
  EXPECT_NEAR(this->loss_->cpu_data()[0], (2 * positive + negative) / 6, 1e-5);
  ASSERT_EQ(this->mean_distance_->count(), 2);
  EXPECT_NEAR(this->mean_distance_->cpu_data()[0], positive / 6, 1e-5);
  EXPECT_NEAR(this->mean_distance_->cpu_data()[1], negative / 6 / 3, 1e-5);
}

TYPED_TEST(GeneralContrastiveLossLayerTest, TestGradient) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_general_contrastive_loss_param()->set_negative_weight(0.5);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_, 0);
}

// With the second top (no gradient, as in the fork) the loss's gradient is
// unchanged.
TYPED_TEST(GeneralContrastiveLossLayerTest, TestGradientWithMeanDistanceTop) {
  typedef typename TypeParam::Dtype Dtype;
  this->top_.push_back(this->mean_distance_);
  LayerParameter param;
  param.add_loss_weight(1);  // one per top, as a loss layer's two tops need
  param.add_loss_weight(0);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientSingle(&layer, this->bottom_, this->top_, 0, 0, 0);
}

TYPED_TEST(GeneralContrastiveLossLayerTest, TestGradientExpNegativeWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_general_contrastive_loss_param()->set_exp_negative_weight(true);
  param.mutable_general_contrastive_loss_param()->set_negative_margin(2);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  // No distance within 0.05 of the margin 2.
  Dtype* d = this->distance_->mutable_cpu_data();
  for (int k = 0; k < 24; ++k) {
    if (std::fabs(d[k] - 2) < 0.05) d[k] -= 0.1;
  }
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_, 0);
}

TYPED_TEST(GeneralContrastiveLossLayerTest, TestGradientMaxNegativeOnly) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_general_contrastive_loss_param()->set_max_negative_only(true);
  param.mutable_general_contrastive_loss_param()->set_negative_margin(3);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_, 0);
}

// The fork's max_negative_only starts its search at class 0: in a row of
// label 0 a negative must beat the positive's term, or the row keeps no
// negative.  Row 0 (label 0): positive term 2.0 beats every negative term
// (3 - d <= 2 for d >= 1); row 1 (label 1): the nearest negative is kept.
TYPED_TEST(GeneralContrastiveLossLayerTest, TestMaxNegativeOnlyForkQuirk) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype d[] = {2.0, 1.5, 1.2, 1.8,
                     0.5, 0.3, 2.5, 2.2};
  const Dtype y[] = {0, 1};
  Blob<Dtype> distance(2, 4, 1, 1), label(2, 1, 1, 1), loss;
  caffe_copy(8, d, distance.mutable_cpu_data());
  caffe_copy(2, y, label.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom, top(1, &loss);
  bottom.push_back(&distance);
  bottom.push_back(&label);
  LayerParameter param;
  param.mutable_general_contrastive_loss_param()->set_max_negative_only(true);
  param.mutable_general_contrastive_loss_param()->set_negative_margin(3);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  layer.SetUp(bottom, top);
  layer.Forward(bottom, top);
  // Row 0: positive 2.0 only; row 1: positive 0.3 + nearest negative 3 - 0.5.
  EXPECT_NEAR(loss.cpu_data()[0], (2.0 + 0.3 + 2.5) / 2, 1e-5);
  loss.mutable_cpu_diff()[0] = 1;
  layer.Backward(top, vector<bool>{true, false}, bottom);
  const Dtype expected[] = {0.5, 0, 0, 0, -0.5, 0.5, 0, 0};
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(distance.cpu_diff()[k], expected[k], 1e-6) << k;
}

// positive_first: a row whose positive distance exceeds positive_upper_bound
// loses its negatives (loss and gradient); max_positive_only keeps the
// positive of one row, the one with the smallest term (the fork's test).
TYPED_TEST(GeneralContrastiveLossLayerTest, TestPositiveFirstAndMaxPositiveOnly) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype d[] = {1.5, 0.2, 0.4,
                     0.3, 0.6, 0.7};
  const Dtype y[] = {0, 1};
  Blob<Dtype> distance(2, 3, 1, 1), label(2, 1, 1, 1), loss;
  caffe_copy(6, d, distance.mutable_cpu_data());
  caffe_copy(2, y, label.mutable_cpu_data());
  vector<Blob<Dtype>*> bottom, top(1, &loss);
  bottom.push_back(&distance);
  bottom.push_back(&label);
  LayerParameter param;
  param.mutable_general_contrastive_loss_param()->set_positive_first(true);
  GeneralContrastiveLossLayer<Dtype> first(param);
  first.SetUp(bottom, top);
  first.Forward(bottom, top);
  // Row 0: 1.5 > 1: positive only; row 1: 0.6 + (1 - 0.3) + (1 - 0.7).
  EXPECT_NEAR(loss.cpu_data()[0], (1.5 + 0.6 + 0.7 + 0.3) / 2, 1e-5);
  loss.mutable_cpu_diff()[0] = 1;
  first.Backward(top, vector<bool>{true, false}, bottom);
  const Dtype expected[] = {0.5, 0, 0, -0.5, 0.5, -0.5};
  for (int k = 0; k < 6; ++k) EXPECT_NEAR(distance.cpu_diff()[k], expected[k], 1e-6) << k;

  LayerParameter only;
  only.mutable_general_contrastive_loss_param()->set_max_positive_only(true);
  GeneralContrastiveLossLayer<Dtype> smallest(only);
  smallest.SetUp(bottom, top);
  smallest.Forward(bottom, top);
  // Row 1's positive term 0.6 < row 0's 1.5: only row 1's positive counts.
  EXPECT_NEAR(loss.cpu_data()[0], (0.8 + 0.6 + 0.6 + 0.7 + 0.3) / 2, 1e-5);
}

// add_intra_mae: the running mean positive distance, 0.01 of it per pass,
// joins the negative margin from the next pass on (third value of top 1).
TYPED_TEST(GeneralContrastiveLossLayerTest, TestAddIntraMae) {
  typedef typename TypeParam::Dtype Dtype;
  this->top_.push_back(this->mean_distance_);
  LayerParameter param;
  param.add_loss_weight(1);  // one per top, as a loss layer's two tops need
  param.add_loss_weight(0);
  param.mutable_general_contrastive_loss_param()->set_add_intra_mae(true);
  GeneralContrastiveLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  layer.Forward(this->bottom_, this->top_);
  ASSERT_EQ(this->mean_distance_->count(), 3);
  const double mean_positive = this->mean_distance_->cpu_data()[0];
  EXPECT_NEAR(this->mean_distance_->cpu_data()[2], 0.01 * mean_positive, 1e-6);
  layer.Forward(this->bottom_, this->top_);
  EXPECT_NEAR(this->mean_distance_->cpu_data()[2], 0.0199 * mean_positive, 1e-6);
  const double margin = 1 + 0.01 * mean_positive;
  double negative = 0;
  for (int i = 0; i < 6; ++i) {
    for (int j = 0; j < 4; ++j) {
      if (j != this->Y(i)) negative += std::max(0.0, margin - this->D(i, j));
    }
  }
  EXPECT_NEAR(this->mean_distance_->cpu_data()[1], negative / 6 / 3, 1e-5);
}

TYPED_TEST(GeneralContrastiveLossLayerTest, TestBadLabelIsAnError) {
  typedef typename TypeParam::Dtype Dtype;
  this->label_->mutable_cpu_data()[2] = 4;
  LayerParameter param;
  param.set_name("loss");
  GeneralContrastiveLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  EXPECT_DEATH(layer.Forward(this->bottom_, this->top_),
      "'loss': label 4 of sample 2 is not an integer in \\[0, 4\\)");
}

}  // namespace caffe
