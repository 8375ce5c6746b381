#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/general_triplet_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// happynear's GeneralTripletLoss over distances (N x C) to class centres.
template <typename TypeParam>
class GeneralTripletLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // 4 samples x 4 classes; every row has active hinges (margin 0.2), its
  // largest well apart from the next, and no hinge within 0.05 of its kink.
  GeneralTripletLossLayerTest()
      : distance_(new Blob<Dtype>(4, 4, 1, 1)), label_(new Blob<Dtype>(4, 1, 1, 1)),
        loss_(new Blob<Dtype>()), mean_distance_(new Blob<Dtype>()) {
    const Dtype d[] = {1.0, 0.5, 1.5, 0.9,    // label 0: hinges 0.7, 0.3
                       0.4, 1.2, 2.0, 1.6,    // label 1: hinge 1.0
                       0.3, 0.2, 0.9, 2.2,    // label 2: hinges 0.8, 0.9
                       1.9, 0.6, 0.1, 1.4};   // label 3: hinges 1.0, 1.5
    const Dtype y[] = {0, 1, 2, 3};
    caffe_copy(16, d, distance_->mutable_cpu_data());
    caffe_copy(4, y, label_->mutable_cpu_data());
    bottom_.push_back(distance_);
    bottom_.push_back(label_);
    top_.push_back(loss_);
  }
  virtual ~GeneralTripletLossLayerTest() {
    delete distance_;
    delete label_;
    delete loss_;
    delete mean_distance_;
  }

  Blob<Dtype>* const distance_;
  Blob<Dtype>* const label_;
  Blob<Dtype>* const loss_;
  Blob<Dtype>* const mean_distance_;
  vector<Blob<Dtype>*> bottom_, top_;
};

TYPED_TEST_CASE(GeneralTripletLossLayerTest, TestDtypesAndDevices);

// The defaults (margin 0.2, every active hinge) and the second top, against
// a float64 reference.
TYPED_TEST(GeneralTripletLossLayerTest, TestForward) {
  typedef typename TypeParam::Dtype Dtype;
  this->top_.push_back(this->mean_distance_);
  LayerParameter param;
  param.add_loss_weight(1);  // one per top, as a loss layer's two tops need
  param.add_loss_weight(0);
  param.mutable_general_triplet_loss_param()->set_negative_weight(2);
  GeneralTripletLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  layer.Forward(this->bottom_, this->top_);
  double loss = 0, positive = 0, negative = 0;
  for (int i = 0; i < 4; ++i) {
    const double same = this->distance_->cpu_data()[i * 4 + i];
    positive += same;
    for (int j = 0; j < 4; ++j) {
      if (j == i) continue;
      const double d = this->distance_->cpu_data()[i * 4 + j];
      loss += 2 * std::max(0.0, same + 0.2 - d);
      negative += d;
    }
  }
  EXPECT_NEAR(this->loss_->cpu_data()[0], loss / 4, 1e-5);
  EXPECT_NEAR(this->mean_distance_->cpu_data()[0], positive / 4, 1e-5);
  EXPECT_NEAR(this->mean_distance_->cpu_data()[1], negative / 4 / 3, 1e-5);
}

// hardest_only, add_center_loss false, pw = nw: the fork's gradient is exact.
TYPED_TEST(GeneralTripletLossLayerTest, TestGradientHardestOnly) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_general_triplet_loss_param()->set_hardest_only(true);
  param.mutable_general_triplet_loss_param()->set_add_center_loss(false);
  GeneralTripletLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  layer.Forward(this->bottom_, this->top_);
  // Per row the largest hinge: 0.7, 1.0, 0.9, 1.5.
  EXPECT_NEAR(this->loss_->cpu_data()[0], (0.7 + 1.0 + 0.9 + 1.5) / 4, 1e-5);
  GradientChecker<Dtype> checker(1e-3, 1e-2, 1701);
  checker.CheckGradientExhaustive(&layer, this->bottom_, this->top_, 0);
}

// The fork's gradient without hardest_only: the positive gets pw once per
// row, not nw per active hinge; with add_center_loss also in a row with no
// active hinge (a centre-loss gradient for a term the loss does not have).
TYPED_TEST(GeneralTripletLossLayerTest, TestForkGradient) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* d = this->distance_->mutable_cpu_data();
  d[1 * 4 + 0] = 3;  // row 1: no active hinge left
  LayerParameter param;  // add_center_loss defaults to true
  GeneralTripletLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  layer.Forward(this->bottom_, this->top_);
  this->loss_->mutable_cpu_diff()[0] = 1;
  layer.Backward(this->top_, vector<bool>{true, false}, this->bottom_);
  const Dtype* g = this->distance_->cpu_diff();
  EXPECT_NEAR(g[0 * 4 + 0], 0.25, 1e-6);   // two active hinges, pw once
  EXPECT_NEAR(g[0 * 4 + 1], -0.25, 1e-6);
  EXPECT_NEAR(g[0 * 4 + 2], 0, 1e-6);
  EXPECT_NEAR(g[0 * 4 + 3], -0.25, 1e-6);
  EXPECT_NEAR(g[1 * 4 + 1], 0.25, 1e-6);   // no hinge: add_center_loss's pw
  EXPECT_NEAR(g[1 * 4 + 0], 0, 1e-6);
  LayerParameter no_center;
  no_center.mutable_general_triplet_loss_param()->set_add_center_loss(false);
  GeneralTripletLossLayer<Dtype> plain(no_center);
  plain.SetUp(this->bottom_, this->top_);
  plain.Forward(this->bottom_, this->top_);
  plain.Backward(this->top_, vector<bool>{true, false}, this->bottom_);
  EXPECT_NEAR(this->distance_->cpu_diff()[1 * 4 + 1], 0, 1e-6);
  EXPECT_NEAR(this->distance_->cpu_diff()[0 * 4 + 0], 0.25, 1e-6);
}

// positive_first: a row whose positive distance exceeds the bound keeps only
// the positive's gradient pw, and no negative term.
TYPED_TEST(GeneralTripletLossLayerTest, TestPositiveFirst) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  param.mutable_general_triplet_loss_param()->set_positive_first(true);
  param.mutable_general_triplet_loss_param()->set_positive_upper_bound(1.1);
  GeneralTripletLossLayer<Dtype> layer(param);
  layer.SetUp(this->bottom_, this->top_);
  layer.Forward(this->bottom_, this->top_);
  // Row 1 (1.2) and row 3 (1.4) exceed 1.1: rows 0 and 2 remain.
  EXPECT_NEAR(this->loss_->cpu_data()[0], (0.7 + 0.3 + 0.8 + 0.9) / 4, 1e-5);
  this->loss_->mutable_cpu_diff()[0] = 1;
  layer.Backward(this->top_, vector<bool>{true, false}, this->bottom_);
  const Dtype expected_row1[] = {0, 0.25, 0, 0};
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(this->distance_->cpu_diff()[4 + j], expected_row1[j], 1e-6);
}

}  // namespace caffe
